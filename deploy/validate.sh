#!/usr/bin/env bash
# Lints everything in deploy/: the Dockerfile (hadolint), the Kubernetes manifests
# (kubernetes-validate, strict), every cutover config shipped here (`cutover check`), the systemd
# unit (systemd-analyze verify, where it exists), and that these files agree with each other.
#
#   VENV         virtualenv for the linters (default .venv-test; made if missing)
#   CUTOVER_BIN  the cutover binary for `cutover check` (default target/debug/cutover)
#
# One line per check; the last line is "deploy: N passed, M failed"; exit 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

VENV=${VENV:-.venv-test}
CUTOVER_BIN=${CUTOVER_BIN:-target/debug/cutover}
# The oldest Kubernetes with preStop `sleep` (no sleep binary in the image), and the newest
# kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)

passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check NAME COMMAND...: a failure prints the command's output below its line.
check() {
    local name=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then
        passed=$((passed + 1))
        echo "ok    $name"
    else
        failed=$((failed + 1))
        echo "FAIL  $name"
        sed 's/^/        /' "$tmp/out"
    fi
}

# Linters that pass while printing (a WARN for an unknown kind, systemd's "Unknown key ...,
# ignoring") have found something: fail on any output as well as on the exit code.
silent() {
    local out status=0
    out=$("$@" 2>&1) || status=$?
    [ -n "$out" ] && printf '%s\n' "$out"
    [ "$status" -eq 0 ] && [ -z "$out" ]
}

print_and_fail() {
    cat "$1"
    return 1
}

install_tools() {
    if [ ! -x "$VENV/bin/python" ]; then
        # Debian's python3 needs python3-venv for this.
        python3 -m venv "$VENV" || return 1
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
}

kube_validate() {
    local args=(--strict --quiet) version
    for version in "${K8S_VERSIONS[@]}"; do args+=(-k "$version"); done
    silent "$VENV/bin/kubernetes-validate" "${args[@]}" "$1"
}

# cutover_check FILE [LABEL LINES COLUMNS]: errors in an extract point into LABEL instead.
cutover_check() {
    local file=$1 label=${2:-} lines=${3:-0} columns=${4:-0}
    if [ ! -x "$CUTOVER_BIN" ]; then
        echo "no cutover binary at $CUTOVER_BIN: run 'cargo build' or set CUTOVER_BIN"
        return 1
    fi
    if [ -z "$label" ]; then
        "$CUTOVER_BIN" check --config "$file"
        return
    fi
    local status=0
    "$CUTOVER_BIN" check --config "$file" >"$tmp/check" 2>&1 || status=$?
    awk -v file="$file" -v label="$label" -v lines="$lines" -v columns="$columns" '
        index($0, file ":") == 1 {
            rest = substr($0, length(file) + 2)
            if (match(rest, /^[0-9]+:[0-9]+/)) {
                split(substr(rest, 1, RLENGTH), at, ":")
                rest = (at[1] + lines) ":" (at[2] + columns) substr(rest, RLENGTH + 1)
            }
            $0 = label ":" rest
        }
        { print }' "$tmp/check"
    return "$status"
}

# systemd-analyze needs ExecStart to exist: verify a copy that runs the built binary instead.
systemd_verify() {
    local unit=$1 bin
    bin=$(readlink -f "$CUTOVER_BIN")
    if [ ! -x "$bin" ]; then
        echo "no cutover binary at $CUTOVER_BIN: run 'cargo build' or set CUTOVER_BIN"
        return 1
    fi
    mkdir -p "$tmp/systemd"
    sed "s#/usr/local/bin/cutover#$bin#g" "$unit" >"$tmp/systemd/${unit##*/}"
    # Only lines about this unit count: a host's own broken units are not ours to fail on.
    local out status=0
    out=$(systemd-analyze verify "$tmp/systemd/${unit##*/}" 2>&1) || status=$?
    out=$(printf '%s\n' "$out" | grep -F "${unit##*/}" | sed "s#$tmp/systemd/${unit##*/}#$unit#g")
    [ -n "$out" ] && printf '%s\n' "$out"
    [ "$status" -eq 0 ] && [ -z "$out" ]
}

check "tools: deploy/requirements.txt into $VENV" install_tools

check "hadolint deploy/Dockerfile" silent "$VENV/bin/hadolint" --no-color --failure-threshold style deploy/Dockerfile
check "docker: Dockerfile agrees with deploy/docker/cutover.yaml" \
    "$VENV/bin/python" deploy/crosscheck.py docker deploy/Dockerfile deploy/docker/cutover.yaml
check "cutover check deploy/docker/cutover.yaml" cutover_check deploy/docker/cutover.yaml

for manifest in deploy/kubernetes/*.yaml; do
    [ "${manifest##*/}" = kustomization.yaml ] && continue # no schema; crosscheck reads it
    check "kubernetes-validate $manifest" kube_validate "$manifest"
done
check "kubernetes: kustomization, Deployment and Service agree with the ConfigMap" \
    "$VENV/bin/python" deploy/crosscheck.py kubernetes deploy/kubernetes
for manifest in deploy/kubernetes/*.yaml; do
    grep -q '^kind: ConfigMap' "$manifest" || continue
    mkdir -p "$tmp/extract"
    if ! "$VENV/bin/python" deploy/crosscheck.py extract "$manifest" "$tmp/extract" >"$tmp/extracted" 2>&1; then
        check "cutover check $manifest" print_and_fail "$tmp/extracted"
        continue
    fi
    while IFS=$'\t' read -r path key lines columns; do
        check "cutover check $manifest data.$key" cutover_check "$path" "$manifest" "$lines" "$columns"
    done <"$tmp/extracted"
done

check "cutover check deploy/systemd/cutover.yaml" cutover_check deploy/systemd/cutover.yaml
check "systemd: unit agrees with deploy/systemd/cutover.yaml" \
    "$VENV/bin/python" deploy/crosscheck.py systemd deploy/systemd/cutover.service deploy/systemd/cutover.yaml
if command -v systemd-analyze >/dev/null; then
    check "systemd-analyze verify deploy/systemd/cutover.service" systemd_verify deploy/systemd/cutover.service
    # Reported, never gated on: the score moves with systemd's version.
    score=$(systemd-analyze security --offline=yes "$tmp/systemd/cutover.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]* [A-Z]*\).*/\1/p')
    [ -n "$score" ] && echo "info  systemd-analyze security: exposure $score"
else
    echo "skip  systemd-analyze verify deploy/systemd/cutover.service (systemd-analyze not installed)"
fi

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
