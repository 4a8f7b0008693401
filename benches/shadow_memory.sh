#!/usr/bin/env bash
# Memory held by shadow copies in flight: a route copies 100% of its requests to a candidate
# that accepts connections and never answers, with max_inflight COPIES and a timeout longer
# than the run, so COPIES copies stay in flight (the rest are dropped, as they must be).
# RSS is read after a warm-up on an unshadowed route (baseline) and once COPIES copies are in
# flight; the difference over COPIES is the cost of one copy. All on 127.0.0.1.
#
#   bash benches/shadow_memory.sh
#   CUTOVER_BIN=/tmp/x/cutover COPIES=2000 bash benches/shadow_memory.sh
#
# Knobs: CUTOVER_BIN, COPIES (10000), THREADS (cutover --threads, 2), KEEP_TMP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

COPIES=${COPIES:-10000}
THREADS=${THREADS:-2}
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
CUTOVER_BIN=$(abspath "${CUTOVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover}")
BACKEND_PORT=18491
CANDIDATE_PORT=18492
PROXY_PORT=18493
ADMIN_PORT=18494
PIDS=()
WORK=""

log() { printf '%s\n' "$*" >&2; }
die() { log "shadow_memory.sh: $*"; exit 1; }

cleanup() {
    local rc=$?
    stop_trees "${PIDS[@]}"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc -ne 0 || ${KEEP_TMP:-0} == 1 ]]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $COPIES =~ ^[0-9]+$ ]] && ((COPIES > 0 && COPIES <= 100000)) || die "COPIES must be 1..100000"
for tool in nginx wrk curl python3; do command -v "$tool" >/dev/null || die "needs $tool"; done
[[ -x $CUTOVER_BIN ]] || die "no binary at $CUTOVER_BIN (cargo build --release)"
# The candidate and cutover each hold one socket per copy (cutover one per client too).
ulimit -n $((COPIES + 4096)) 2>/dev/null || die "cannot raise the open file limit to $((COPIES + 4096))"

WORK=$(mktemp -d /tmp/cutover-shadow-memory.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/tmp"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

wait_http() { # url
    local i
    for ((i = 0; i < 100; i++)); do curl -fso /dev/null "$1" && return; sleep 0.1; done
    die "$1 did not answer"
}

cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
    server { listen 127.0.0.1:$BACKEND_PORT; return 200 "legacy\n"; }
}
CONF
nginx -p "$WORK/" -e "$WORK/error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
python3 -c "$STALLED_LISTENER" "$CANDIDATE_PORT" >"$WORK/candidate.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/cutover.yaml" <<CONF
listen: 127.0.0.1:$PROXY_PORT
admin: { listen: 127.0.0.1:$ADMIN_PORT }
max_connections: $((COPIES + 1000))
backends:
  legacy: { url: "http://127.0.0.1:$BACKEND_PORT" }
  candidate: { url: "http://127.0.0.1:$CANDIDATE_PORT", connect_timeout: 10s }
routes:
  - name: warm
    match: { path_prefix: /warm }
    split: { legacy: 100 }
  - name: shadowed
    match: { path_prefix: / }
    split: { legacy: 100 }
    shadow: { to: candidate, percent: 100, max_inflight: $COPIES, timeout: 10m }
CONF
env -C "$WORK" RUST_LOG=warn "$CUTOVER_BIN" run --config "$WORK/cutover.yaml" --threads "$THREADS" >"$WORK/cutover.log" 2>&1 &
PIDS+=($!)
CUTOVER_PID=$!
wait_http "http://127.0.0.1:$BACKEND_PORT/"
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"

in_flight() {
    curl -fs "http://127.0.0.1:$ADMIN_PORT/api/routes/shadowed/diffs" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["in_flight"], d["counts"]["dropped"], d["counts"]["timeout"], d["counts"]["error"])'
}

log "warm-up: 5 s on an unshadowed route"
wrk -t1 -c64 -d5s "http://127.0.0.1:$PROXY_PORT/warm" >/dev/null
sleep 2
base=$(rss_kib "$CUTOVER_PID")
log "baseline RSS $base KiB; copying 100% to a stalled candidate until $COPIES are in flight"
wrk -t1 -c64 -d5s "http://127.0.0.1:$PROXY_PORT/orders" >"$WORK/wrk.txt"
for ((i = 0; i < 100; i++)); do
    read -r flying dropped timeouts errors < <(in_flight)
    ((flying >= COPIES)) && break
    sleep 0.2
done
((flying >= COPIES)) || die "only $flying copies in flight (dropped $dropped, timeout $timeouts, error $errors)"
sleep 2
with=$(rss_kib "$CUTOVER_PID")
requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.txt")
rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/wrk.txt")
printf 'shadow copies in flight: %d (max_inflight), to a candidate that never answers\n' "$flying"
printf 'requests sent: %s (%s req/s while copies piled up), copies dropped: %s, timeouts: %s, errors: %s\n' \
    "$requests" "$rps" "$dropped" "$timeouts" "$errors"
awk -v base="$base" -v with="$with" -v n="$flying" 'BEGIN {
    printf "RSS baseline %.1f MiB, with the copies %.1f MiB: %.1f KiB per copy in flight\n",
        base / 1024, with / 1024, (with - base) / n
}'
