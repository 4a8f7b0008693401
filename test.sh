#!/usr/bin/env bash
# Installs what the tests need and runs every test. Used by CI (.ci/run) and by hand.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain comes with the machine. The rest is installed here: Python packages into a
# virtualenv (.venv-test) from tests/python/requirements.txt and deploy/requirements.txt,
# Debian's chromium with apt-get and playwright-core with npm (tests/browser/run.sh), nginx, wrk
# and curl with apt-get (benches/load.sh).
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "test.sh: python3 is required" >&2; exit 1; }

# Unit and integration tests (real sockets, real backends, the real binary), plus one pass of
# each benchmark in test mode so benches cannot rot.
log=$(mktemp)
pylog=$(mktemp)
otherlog=$(mktemp)
trap 'rm -f "$log" "$pylog" "$otherlog"' EXIT
status=0
cargo test --all-targets 2>&1 | tee "$log" || status=1

# The flags API through the real OpenFeature Python SDK and OFREP provider, against the debug
# binary. A failure here is counted and reported in the summary, then fails the script.
[ -x .venv-test/bin/python ] || python3 -m venv .venv-test
.venv-test/bin/python -m pip install --quiet --disable-pip-version-check \
    -r tests/python/requirements.txt
cargo build
PYTHONDONTWRITEBYTECODE=1 CUTOVER_BIN="$PWD/target/debug/cutover" \
    .venv-test/bin/python -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$pylog" ||
    status=1

# The status page in headless Chromium (Debian's chromium, driven by playwright-core from npm),
# then deploy/ through its linters (hadolint, kubernetes-validate, systemd-analyze) and
# `cutover check`. Each ends with one "NAME: N passed, M failed" line.
CUTOVER_BIN="$PWD/target/debug/cutover" bash tests/browser/run.sh 2>&1 | tee "$otherlog" ||
    status=1
VENV=.venv-test CUTOVER_BIN="$PWD/target/debug/cutover" bash deploy/validate.sh 2>&1 |
    tee -a "$otherlog" || status=1

# benches/load.sh for one second in each mode (and once with a stalled shadow candidate) against
# the debug binary (it installs nginx, wrk and curl when missing), and benches/shadow_memory.sh
# with a few copies, so the bench scripts cannot rot: each run must answer without errors.
bench_smoke() { # mode [shadow]
    local out
    out=$(MODE=$1 SHADOW=${2:-none} TARGETS=cutover DURATION=1 ROUNDS=1 SPLIT_CHECK=50 \
        CUTOVER_BIN="$PWD/target/debug/cutover" bash benches/load.sh) || return 1
    printf '%s\n' "$out"
    awk '$1 == "cutover" && $4 == "0" { ok = 1 } END { exit !ok }' <<<"$out"
}
# benches/shadow_memory.sh with a few copies: they must all be in flight, the rest dropped.
shadow_memory_smoke() {
    local out
    out=$(COPIES=200 CUTOVER_BIN="$PWD/target/debug/cutover" bash benches/shadow_memory.sh) ||
        return 1
    printf '%s\n' "$out"
    grep -q '^shadow copies in flight: 200 ' <<<"$out"
}
bench_passed=0
bench_failed=0
for run in "route" "ofrep" "route stalled" "shadow_memory"; do
    if [[ $run == shadow_memory ]]; then
        shadow_memory_smoke && ok=1 || ok=0
    else
        # shellcheck disable=SC2086 # mode and shadow, split on purpose
        bench_smoke $run && ok=1 || ok=0
    fi
    if ((ok)); then
        bench_passed=$((bench_passed + 1))
    else
        bench_failed=$((bench_failed + 1))
        status=1
    fi
done
echo "benches: $bench_passed passed, $bench_failed failed" | tee -a "$otherlog"

# One closing line over every test binary, the Python tests, the browser and deploy checks.
# pytest's closing line reads like "1 failed, 9 passed, 1 error in 0.37s"; errors count as
# failures, and so does any suite that failed without counting a failure (a crash).
awk -v status="$status" '
     FILENAME == ARGV[1] { if (/^test result:/) { passed += $4; failed += $6 }; next }
     FILENAME == ARGV[2] && /^(=+ )?[0-9]+ [a-z]+(, [0-9]+ [a-z]+)* in [0-9.]+s/ {
         line = $0; gsub(/=/, "", line); sub(/ in [0-9.]+s.*$/, "", line); sub(/^ +/, "", line)
         n = split(line, parts, ", ")
         for (i = 1; i <= n; i++) {
             split(parts[i], kv, " ")
             if (kv[2] == "passed") passed += kv[1]
             else if (kv[2] == "failed" || kv[2] == "error" || kv[2] == "errors") failed += kv[1]
         }
         next
     }
     FILENAME == ARGV[3] && /^(browser|deploy|benches): [0-9]+ passed, [0-9]+ failed$/ {
         passed += $2; failed += $4
     }
     END {
         if (status != 0 && failed == 0) failed = 1
         printf "tests: %d passed, %d failed\n", passed, failed
     }' "$log" "$pylog" "$otherlog"
exit "$status"
