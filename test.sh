#!/usr/bin/env bash
# Installs what the tests need and runs every test. Used by CI (.ci/run) and by hand.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain comes with the machine; the Python tests install their packages into a
# virtualenv (.venv-test) from tests/python/requirements.txt.
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "test.sh: python3 is required" >&2; exit 1; }

# Unit and integration tests (real sockets, real backends, the real binary), plus one pass of
# each benchmark in test mode so benches cannot rot.
log=$(mktemp)
pylog=$(mktemp)
trap 'rm -f "$log" "$pylog"' EXIT
cargo test --all-targets 2>&1 | tee "$log"

# The flags API through the real OpenFeature Python SDK and OFREP provider, against the debug
# binary. A failure here is counted and reported in the summary, then fails the script.
[ -x .venv-test/bin/python ] || python3 -m venv .venv-test
.venv-test/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/python/requirements.txt
cargo build
py_status=0
PYTHONDONTWRITEBYTECODE=1 CUTOVER_BIN="$PWD/target/debug/cutover" \
    .venv-test/bin/python -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$pylog" ||
    py_status=$?

# One closing line over every test binary and the Python tests. pytest's closing line reads
# like "1 failed, 9 passed, 1 error in 0.37s"; errors count as failures, and so does a pytest
# run that failed without counting a failure (no tests collected, a crash).
awk -v py_status="$py_status" '
     FILENAME == ARGV[1] { if (/^test result:/) { passed += $4; failed += $6 }; next }
     /^(=+ )?[0-9]+ [a-z]+(, [0-9]+ [a-z]+)* in [0-9.]+s/ {
         line = $0; gsub(/=/, "", line); sub(/ in [0-9.]+s.*$/, "", line); sub(/^ +/, "", line)
         n = split(line, parts, ", ")
         for (i = 1; i <= n; i++) {
             split(parts[i], kv, " ")
             if (kv[2] == "passed") pypassed += kv[1]
             else if (kv[2] == "failed" || kv[2] == "error" || kv[2] == "errors") pyfailed += kv[1]
         }
     }
     END {
         if (py_status != 0 && pyfailed == 0) pyfailed = 1
         printf "tests: %d passed, %d failed\n", passed + pypassed, failed + pyfailed
     }' "$log" "$pylog"
exit "$py_status"
