"""Checks that the deploy files agree with the cutover configs they ship.

Schema linters see each file alone; the mistakes that break a rollout sit between files: a
probe on a port cutover does not listen on, a state_file on a read-only mount, a grace period
shorter than the drain. Each subcommand prints one line per problem and exits 1 if any.

  crosscheck.py extract CONFIGMAP OUTDIR       write each embedded *.yaml; print "path<TAB>key<TAB>line<TAB>column" offsets
  crosscheck.py kubernetes DIR                 kustomization, Deployment, Service vs the ConfigMap
  crosscheck.py docker DOCKERFILE CONFIG       EXPOSE and HEALTHCHECK vs the image's config
  crosscheck.py systemd UNIT CONFIG            StateDirectory and TimeoutStopSec vs the config
"""

import ipaddress
import os
import posixpath
import re
import sys

import yaml

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_TOKEN_ENV = "CUTOVER_ADMIN_TOKEN"


def seconds(text):
    """cutover and systemd durations as used here: 500ms, 30s, 5m, 1h, or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*", str(text))
    if not match:
        raise ValueError(f"cannot read duration {text!r}")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def host_port(addr):
    host, _, port = str(addr).rpartition(":")
    return host.strip("[]"), int(port)


def load_all(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def embedded_configs(configmap_path):
    """(key, text, line and column offsets) for each *.yaml key of each ConfigMap in the file."""
    with open(configmap_path) as f:
        text = f.read()
    found = []
    for node in yaml.compose_all(text):
        if node is None:
            continue
        for key_node, value_node in node.value:
            if key_node.value != "data":
                continue
            for data_key, data_value in value_node.value:
                if data_key.value.endswith((".yaml", ".yml")):
                    # A block scalar's content starts on the line after its indicator, indented.
                    line, indent = 0, 0
                    if data_value.style == "|":
                        line = data_value.start_mark.line + 1
                        first = next(t for t in text.splitlines()[line:] if t.strip())
                        indent = len(first) - len(first.lstrip(" "))
                    found.append((data_key.value, data_value.value, line, indent))
    return found


def extract(configmap_path, outdir):
    for n, (key, text, line, indent) in enumerate(embedded_configs(configmap_path)):
        path = os.path.join(outdir, f"{n}-{key}")
        with open(path, "w") as f:
            f.write(text)
        print(f"{path}\t{key}\t{line}\t{indent}")
    return []


def kubernetes(directory):
    problems = []
    kustomization = load_all(os.path.join(directory, "kustomization.yaml"))[0]
    resources = kustomization.get("resources") or []
    if len(set(resources)) != len(resources):
        problems.append("kustomization.yaml: a resource is listed twice")
    docs = []
    for resource in resources:
        path = os.path.join(directory, resource)
        if not os.path.isfile(path):
            problems.append(f"kustomization.yaml: resource {resource} does not exist")
            continue
        docs += [(resource, doc) for doc in load_all(path)]

    def find(kind):
        return [(f, d) for f, d in docs if d.get("kind") == kind]

    deployments, configmaps, services = find("Deployment"), find("ConfigMap"), find("Service")
    if len(deployments) != 1 or len(configmaps) != 1:
        return problems + ["kustomization.yaml: expected one Deployment and one ConfigMap"]
    _, deployment = deployments[0]
    _, configmap = configmaps[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container.get("args") or []
    config_path = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")), None)
    if config_path is None:
        return problems + ["deployment: container args name no --config FILE"]
    config_key = posixpath.basename(config_path)
    if config_key not in (configmap.get("data") or {}):
        return problems + [f"configmap: no key {config_key} for --config {config_path}"]
    config = yaml.safe_load(configmap["data"][config_key])

    # Every listener's port is a named container port; the admin one must be off loopback.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    listeners = {"http": config.get("listen", "0.0.0.0:8080"),
                 "admin": (config.get("admin") or {}).get("listen", "127.0.0.1:9901")}
    if config.get("flags_api"):
        listeners["flags"] = config["flags_api"].get("listen", "0.0.0.0:8016")
    for name, addr in listeners.items():
        host, port = host_port(addr)
        if ports.get(name) != port:
            problems.append(f"deployment: container port {name!r} is {ports.get(name)}, cutover listens on {addr}")
        if ipaddress.ip_address(host).is_loopback:
            problems.append(f"configmap: {name} listener {addr} is loopback: unreachable from the kubelet and Services")

    # Probes hit the admin listener.
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problems.append(f"deployment: {probe} should GET {path} on the admin port")

    # The token env var cutover reads comes from a Secret.
    token_env = (config.get("admin") or {}).get("token_env", DEFAULT_TOKEN_ENV)
    env = {e["name"]: e for e in container.get("env", [])}
    if "secretKeyRef" not in (env.get(token_env, {}).get("valueFrom") or {}):
        problems.append(f"deployment: ${token_env} is not set from a secretKeyRef")

    # The config is a directory mount (subPath files never update), the state dir is writable.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = container.get("volumeMounts", [])
    config_dir = posixpath.dirname(config_path)
    config_mount = next((m for m in mounts if m["mountPath"].rstrip("/") == config_dir), None)
    if config_mount is None or "subPath" in config_mount:
        problems.append(f"deployment: {config_dir} must be a directory mount of the ConfigMap, without subPath")
    elif (volumes.get(config_mount["name"], {}).get("configMap") or {}).get("name") != configmap["metadata"]["name"]:
        problems.append(f"deployment: {config_dir} is not the ConfigMap {configmap['metadata']['name']}")
    state_file = config.get("state_file", "cutover-state.json")
    if not posixpath.isabs(state_file):
        state_file = posixpath.join(config_dir, state_file)
    state_mount = next((m for m in mounts if posixpath.dirname(state_file) == m["mountPath"].rstrip("/")), None)
    writable = ("emptyDir", "persistentVolumeClaim", "ephemeral")
    if (state_mount is None or state_mount.get("readOnly")
            or not any(k in volumes.get(state_mount["name"], {}) for k in writable)):
        problems.append(f"deployment: state_file {state_file} is not on a writable volume mount")

    # SIGKILL comes terminationGracePeriodSeconds after preStop starts.
    drain = seconds(config.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
    pre_stop = (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain + pre_stop:
        problems.append(f"deployment: terminationGracePeriodSeconds {grace} <= preStop {pre_stop}s + shutdown_timeout {drain:g}s")

    # Services reach only the proxy and flags ports, and select the Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    for file, service in services:
        selector = service["spec"].get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{file}: selector does not match the Deployment's pods")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port.get("port"))
            if target in ("admin", ports.get("admin")):
                problems.append(f"{file}: exposes the admin port; use kubectl port-forward instead")
            elif target not in ports and target not in ports.values():
                problems.append(f"{file}: targetPort {target} is not a container port")
    return problems


def dockerfile_instructions(path):
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    return [line.strip().split(None, 1) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def docker(dockerfile, config_path):
    problems = []
    config = load_all(config_path)[0]
    instructions = dockerfile_instructions(dockerfile)
    exposed = {int(p.split("/")[0]) for op, rest in instructions if op.upper() == "EXPOSE" for p in rest.split()}
    addrs = [config.get("listen", "0.0.0.0:8080"), (config.get("admin") or {}).get("listen", "127.0.0.1:9901")]
    if config.get("flags_api"):
        addrs.append(config["flags_api"].get("listen", "0.0.0.0:8016"))
    for addr in addrs:
        if host_port(addr)[1] not in exposed:
            problems.append(f"Dockerfile: EXPOSE lacks {addr}")
    admin_port = host_port(addrs[1])[1]
    health = " ".join(rest for op, rest in instructions if op.upper() == "HEALTHCHECK")
    if f"127.0.0.1:{admin_port}/healthz" not in health:
        problems.append(f"Dockerfile: HEALTHCHECK does not GET 127.0.0.1:{admin_port}/healthz")
    copies = [rest.split() for op, rest in instructions if op.upper() == "COPY"]
    cmd = " ".join(rest for op, rest in instructions if op.upper() == "CMD")
    into = next((c[-1] for c in copies if os.path.normpath(config_path) in c[:-1]), None)
    if into is None or into not in cmd:
        problems.append(f"Dockerfile: CMD does not run {config_path} (copied to {into})")
    state_file = config.get("state_file", "")
    if not state_file.startswith("/var/lib/cutover/"):
        problems.append(f"{config_path}: state_file should be under /var/lib/cutover, the image's writable dir")
    return problems


def systemd(unit_path, config_path):
    problems = []
    config = load_all(config_path)[0]
    settings = {}
    with open(unit_path) as f:
        for line in f:
            if "=" in line and not line.lstrip().startswith(("#", ";")):
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
    state_dirs = " ".join(settings.get("StateDirectory", [])).split()
    state_file = config.get("state_file", "")
    if not any(state_file.startswith(f"/var/lib/{d}/") for d in state_dirs):
        problems.append(f"{config_path}: state_file {state_file!r} is not under /var/lib/<StateDirectory> (the only writable path)")
    stop = settings.get("TimeoutStopSec", ["90s"])[-1]
    drain = seconds(config.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
    if seconds(stop) <= drain:
        problems.append(f"{unit_path}: TimeoutStopSec {stop} does not exceed shutdown_timeout {drain:g}s")
    if not any("--config" in e or " -c " in e for e in settings.get("ExecStart", [])):
        problems.append(f"{unit_path}: ExecStart names no --config")
    return problems


def main(argv):
    commands = {"extract": (extract, 2), "kubernetes": (kubernetes, 1), "docker": (docker, 2), "systemd": (systemd, 2)}
    if len(argv) < 2 or argv[1] not in commands or len(argv) - 2 != commands[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        problems = commands[argv[1]][0](*argv[2:])
    except (OSError, KeyError, TypeError, ValueError, IndexError, yaml.YAMLError) as err:
        problems = [f"cannot read the files: {type(err).__name__}: {err}"]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
