#!/usr/bin/env bash
# The status page in real headless Chromium against the real binary. Installs Debian's
# chromium when it is missing and the pinned playwright-core (npm ci), then runs
# status_page.test.mjs against CUTOVER_BIN (default target/debug/cutover, from the repo root).
# Ends with one line, `browser: N passed, M failed`, and a non-zero exit on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

give_up() {
  echo "run.sh: $1" >&2
  echo "browser: 0 passed, 1 failed"
  exit 1
}

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2 || give_up "apt-get update failed"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >&2 ||
    give_up "could not install chromium"
fi

bin="${CUTOVER_BIN:-target/debug/cutover}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
[ -x "$bin" ] || give_up "$bin is not there: run cargo build first (or set CUTOVER_BIN)"

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2) || give_up "npm ci failed"

tap="$(mktemp)"
trap 'rm -f "$tap"' EXIT
# One bound on the whole run, on top of the per-test timeouts.
CUTOVER_BIN="$bin" timeout --kill-after=10 300 node --test \
  --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" \
  "$here/status_page.test.mjs"
rc=$?

passed="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$tap" | tail -1)"
failed="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$tap" | tail -1)"
passed="${passed:-0}"
failed="${failed:-0}"
# A crash or a timeout counts as a failure even when no test reported one.
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "browser: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
