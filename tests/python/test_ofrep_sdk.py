"""The flags API through the real OpenFeature Python SDK and its OFREP provider.

Starts the real binary (``target/debug/cutover``, or ``$CUTOVER_BIN``) on a temporary config whose
listeners are all on 127.0.0.1:0, reads the flags API address from the startup log line, and
evaluates flags of every type with ``client.get_*_details``. Run by ``./test.sh``; by hand:

    .venv-test/bin/python -m pytest -q tests/python
"""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CUTOVER_BIN", REPO / "target" / "debug" / "cutover"))
STARTUP_TIMEOUT = 20.0  # seconds for the "cutover listening" line
CALL_TIMEOUT = 2.0  # seconds for each OFREP request
STOP_TIMEOUT = 10.0  # seconds for a graceful exit after SIGTERM

CONFIG = """\
listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
flags_api:
  listen: 127.0.0.1:0
backends:
  legacy: {url: 'http://127.0.0.1:9'}
routes:
  - {name: all, match: {path_prefix: /}, split: {legacy: 100}}
flags:
  new-checkout:
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - when: { country: { in: [NL, BE] } }
        serve: "on"
    rollout: { "on": 25, "off": 75 }
  banner-text:
    variants: { short: "Hi", long: "Hello there" }
    default: short
  max-items:
    variants: { few: 3, many: 30 }
    default: few
    rules:
      - when: { plan: pro }
        serve: many
  price-factor:
    variants: { normal: 1.0, discount: 0.85 }
    default: normal
    rules:
      - when: { plan: pro }
        serve: discount
  layout:
    variants: { classic: { columns: 2, sidebar: true }, wide: { columns: 3, tags: [a, b] } }
    default: wide
  old-banner:
    variants: { shown: true, hidden: false }
    default: hidden
    kill: true
"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FLAGS_ADDR = re.compile(r"flags=(127\.0\.0\.1:\d+)")


class Cutover:
    """`cutover run` on a temporary config; its stderr is collected by a thread."""

    def __init__(self, config: str):
        self.dir = tempfile.TemporaryDirectory(prefix="cutover-py-")
        path = Path(self.dir.name) / "cutover.yaml"
        path.write_text(config)
        self.lines: list[str] = []
        self.lock = threading.Lock()
        env = dict(os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            errors="replace",
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        # Keeps reading to the end so the server never blocks on a full stderr pipe.
        for line in self.proc.stderr:
            with self.lock:
                self.lines.append(ANSI.sub("", line.rstrip("\n")))

    def logs(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def flags_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for line in self.lines:
                    if "cutover listening" in line:
                        match = FLAGS_ADDR.search(line)
                        if not match:
                            raise AssertionError(f"no flags=127.0.0.1:PORT in {line!r}")
                        return match.group(1)
            code = self.proc.poll()
            if code is not None:
                time.sleep(0.1)  # let the drain thread catch the last lines
                raise AssertionError(f"cutover exited with {code}:\n{self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"cutover did not start within {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            if self.proc.stderr:
                self.proc.stderr.close()
            self.dir.cleanup()


@pytest.fixture(scope="module")
def client():
    assert BIN.is_file(), f"{BIN} is missing: run `cargo build` first"
    cutover = Cutover(CONFIG)
    try:
        address = cutover.flags_address(STARTUP_TIMEOUT)
        api.set_provider(OFREPProvider(f"http://{address}", timeout=CALL_TIMEOUT))
        yield api.get_client("cutover-test")
    finally:
        api.clear_providers()
        cutover.stop()


def ctx(targeting_key=None, **attributes) -> EvaluationContext:
    return EvaluationContext(targeting_key=targeting_key, attributes=attributes)


def check(details, value, variant, reason):
    """Value (with its exact Python type), variant, and reason; no error."""
    got = (details.value, type(details.value), details.variant, details.reason, details.error_code)
    want = (value, type(value), variant, reason, None)
    assert got == want, f"{details}"


def test_boolean_targeting_match(client):
    for country in ("NL", "BE"):
        details = client.get_boolean_details("new-checkout", False, ctx("u1", country=country))
        check(details, True, "on", Reason.TARGETING_MATCH)


def test_boolean_default_without_targeting_key(client):
    # No rule matches and the rollout needs a targeting key.
    details = client.get_boolean_details("new-checkout", True, ctx(country="DE"))
    check(details, False, "off", Reason.DEFAULT)


def test_boolean_rollout_is_a_split(client):
    for user in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        details = client.get_boolean_details("new-checkout", False, ctx(user, country="DE"))
        assert details.reason == Reason.SPLIT, f"{user}: {details}"
        assert details.error_code is None, f"{user}: {details}"
        assert details.variant in ("on", "off"), f"{user}: {details}"
        assert details.value is (details.variant == "on"), f"{user}: {details}"
        # The same key always lands in the same variant.
        again = client.get_boolean_details("new-checkout", False, ctx(user, country="DE"))
        assert (again.variant, again.value) == (details.variant, details.value), user


def test_killed_flag_is_disabled(client):
    details = client.get_boolean_details("old-banner", True, ctx("u1"))
    check(details, False, "hidden", Reason.DISABLED)


def test_string_static(client):
    details = client.get_string_details("banner-text", "fallback", ctx("u1"))
    check(details, "Hi", "short", Reason.STATIC)
    # No evaluation context at all: the provider posts `{}`.
    details = client.get_string_details("banner-text", "fallback")
    check(details, "Hi", "short", Reason.STATIC)


def test_integer(client):
    details = client.get_integer_details("max-items", 0, ctx("u1", plan="pro"))
    check(details, 30, "many", Reason.TARGETING_MATCH)
    details = client.get_integer_details("max-items", 0, ctx("u1", plan="free"))
    check(details, 3, "few", Reason.DEFAULT)


def test_float_keeps_its_type(client):
    # 1.0 must arrive as a JSON float: the provider rejects an integer for a float flag.
    details = client.get_float_details("price-factor", 9.5, ctx("u1"))
    check(details, 1.0, "normal", Reason.DEFAULT)
    details = client.get_float_details("price-factor", 9.5, ctx("u1", plan="pro"))
    check(details, 0.85, "discount", Reason.TARGETING_MATCH)


def test_object(client):
    details = client.get_object_details("layout", {}, ctx("u1"))
    check(details, {"columns": 3, "tags": ["a", "b"]}, "wide", Reason.STATIC)


def test_missing_flag_returns_the_code_default(client):
    details = client.get_boolean_details("no-such-flag", True, ctx("u1"))
    assert details.value is True, f"{details}"
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND, f"{details}"
    assert details.reason == Reason.ERROR, f"{details}"
    details = client.get_string_details("no-such-flag", "fallback", ctx("u1"))
    got = (details.value, details.error_code)
    assert got == ("fallback", ErrorCode.FLAG_NOT_FOUND), f"{details}"


def test_wrong_type_returns_the_code_default(client):
    # Asking for a string flag as an integer is the caller's mistake, reported as TYPE_MISMATCH.
    details = client.get_integer_details("banner-text", 7, ctx("u1"))
    assert (details.value, details.error_code) == (7, ErrorCode.TYPE_MISMATCH), f"{details}"
