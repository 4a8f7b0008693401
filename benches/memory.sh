#!/usr/bin/env bash
# Memory per idle client connection, and whether RSS is given back after connection churn.
#
# Per target, two runs on a fresh process each (driven by benches/memory_client.py):
#   keep-alive: baseline RSS after a warm-up; N idle keep-alive connections (one GET each), 2 s
#               and 12 s after they opened (the allocator gives back the burst's buffers);
#               close them; a churn of CHURN connections (BATCH at once: connect, GET, close);
#               RSS again SETTLE_SECONDS later.
#   partial:    N connections sending only `GET / HTTP/1.1\r\nHost: a`, closed by the proxy
#               after HEADER_TIMEOUT; peak RSS (VmHWM) and RSS SETTLE_SECONDS later.
# One nginx backend answers `return 200 "ok\n"` (or a BODY_BYTES file) for every target. All
# on 127.0.0.1.
#
#   bash benches/memory.sh                                   # cutover and haproxy
#   TARGETS=cutover CONNS=500 SETTLE_SECONDS=10 bash benches/memory.sh
#   CUTOVER_BIN=/tmp/a/release/cutover CUTOVER_BIN_B=/tmp/b/release/cutover \
#       TARGETS="cutover cutover-b" bash benches/memory.sh
#   CUTOVER_ENV="MALLOC_ARENA_MAX=2" TARGETS=cutover bash benches/memory.sh
#
# Knobs: TARGETS (cutover cutover-b haproxy), CUTOVER_BIN, CUTOVER_BIN_B, CUTOVER_ENV and
# CUTOVER_B_ENV (space-separated VAR=value for that process, e.g. allocator settings),
# CONNS (default 5000), CHURN (20000), BATCH (2000), WARMUP (1000 requests, over as many
# connections at once as the idle phase opens),
# SETTLE_SECONDS (60), HEADER_TIMEOUT (10 s), THREADS (cutover --threads, 2), MODES
# (keepalive partial), BODY_BYTES (0: a 3-byte answer), KEEP_TMP=1.
# Tables go to stdout, progress to stderr: `bash benches/memory.sh > result.txt`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

CONNS=${CONNS:-5000}
CHURN=${CHURN:-20000}
BATCH=${BATCH:-2000}
WARMUP=${WARMUP:-1000}
SETTLE_SECONDS=${SETTLE_SECONDS:-60}
# cutover's default; at 2 s the first partial heads time out before the last are sent
# (the client opens ~1,200 connections/s here).
HEADER_TIMEOUT=${HEADER_TIMEOUT:-10}
THREADS=${THREADS:-2}
MODES=${MODES:-keepalive partial}
BODY_BYTES=${BODY_BYTES:-0}
CUTOVER_ENV=${CUTOVER_ENV:-}
CUTOVER_B_ENV=${CUTOVER_B_ENV:-}
READY_TIMEOUT=20

abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
CUTOVER_BIN=$(abspath "${CUTOVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover}")
CUTOVER_BIN_B=${CUTOVER_BIN_B:+$(abspath "$CUTOVER_BIN_B")}
TARGETS=${TARGETS:-cutover ${CUTOVER_BIN_B:+cutover-b }haproxy}

BACKEND_PORT=18479
declare -A PORT=([cutover]=18480 [cutover-b]=18482 [haproxy]=18484)
declare -A ADMIN_PORT=([cutover]=18481 [cutover-b]=18483)
declare -A PID=()   # name -> pid of a server we started
PIDS=()             # every server this script started; all killed on exit
CLIENT_PID=""
WORK=""

log() { printf '%s\n' "$*" >&2; }
die() { log "memory.sh: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    if [[ -n $CLIENT_PID ]]; then kill "$CLIENT_PID" 2>/dev/null || true; fi
    stop_trees "${PIDS[@]}"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc -ne 0 || ${KEEP_TMP:-0} == 1 ]]; then log "logs and configs kept in $WORK"
        else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

check_knobs() {
    local k t limit
    for k in CONNS CHURN BATCH WARMUP SETTLE_SECONDS HEADER_TIMEOUT THREADS BODY_BYTES; do
        [[ ${!k} =~ ^[0-9]+$ ]] || die "$k must be a whole number, got '${!k}'"
    done
    ((CONNS > 0 && CHURN > 0 && BATCH > 0 && WARMUP > 0 && HEADER_TIMEOUT > 0)) ||
        die "CONNS, CHURN, BATCH, WARMUP and HEADER_TIMEOUT must be > 0"
    # Client, proxy and backend each need one fd per connection (+ headroom).
    limit=$(ulimit -n)
    ((CONNS + 500 <= limit && BATCH + 500 <= limit)) ||
        die "CONNS=$CONNS / BATCH=$BATCH do not fit the open-file limit $limit (ulimit -n) with headroom"
    for t in $TARGETS; do
        [[ -n ${PORT[$t]:-} ]] || die "unknown target '$t' (known: ${!PORT[*]})"
    done
    for k in $MODES; do [[ $k == keepalive || $k == partial ]] || die "unknown mode '$k'"; done
    if wants cutover; then [[ -x $CUTOVER_BIN ]] || die "CUTOVER_BIN=$CUTOVER_BIN does not exist"; fi
    if wants cutover-b; then
        [[ -n $CUTOVER_BIN_B && -x $CUTOVER_BIN_B ]] || die "target cutover-b needs CUTOVER_BIN_B"
    fi
    command -v nginx >/dev/null || die "needs nginx (apt-get install nginx)"
    command -v curl >/dev/null || die "needs curl"
    if wants haproxy; then command -v haproxy >/dev/null || die "needs haproxy (apt-get install haproxy)"; fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "needs python3 >= 3.11"
}

wants() { [[ " $TARGETS " == *" $1 "* ]]; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() {
    local t p
    port_free $BACKEND_PORT || die "127.0.0.1:$BACKEND_PORT is already in use"
    for t in $TARGETS; do
        for p in ${PORT[$t]} ${ADMIN_PORT[$t]:-}; do
            port_free "$p" || die "127.0.0.1:$p ($t) is already in use"
        done
    done
}

# ---------------------------------------------------------------- processes

spawn() { # name logfile cmd...
    local name=$1 logf=$2
    shift 2
    "$@" >>"$logf" 2>&1 &
    PIDS+=($!)
    PID[$name]=$!
}

unspawn() { # name: stop it and forget it
    local pid=${PID[$1]} p keep=()
    stop_trees "$pid"
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    unset "PID[$1]"
}

wait_ready() { # name url
    local name=$1 url=$2 code deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during startup, see $WORK/$name/log"
        ((SECONDS < deadline)) || die "$name not ready at $url after ${READY_TIMEOUT}s, see $WORK/$name/log"
        sleep 0.1
    done
}

# Enough worker connections for a churn batch: proxies may open one upstream per request.
start_backend() {
    local dir=$WORK/backend answer='return 200 "ok\n";'
    mkdir -p "$dir/tmp" "$dir/www"
    if ((BODY_BYTES)); then
        head -c "$BODY_BYTES" /dev/zero | tr '\0' x >"$dir/www/index.html"
        answer="root $dir/www;"
    fi
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $(($(ulimit -n) - 100)); }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server { listen 127.0.0.1:$BACKEND_PORT backlog=4096; location / { $answer } }
}
EOF
    nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/log" 2>&1 ||
        die "bad nginx config: $(cat "$dir/log")"
    spawn backend "$dir/log" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
    wait_ready backend "http://127.0.0.1:$BACKEND_PORT/"
}

# Idle and request timeouts as long as cutover's (120 s idle, HEADER_TIMEOUT for a head).
start_haproxy() {
    local dir=$WORK/haproxy
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn $((CONNS + BATCH + 1000))

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 120s
    timeout server 30s
    timeout http-request ${HEADER_TIMEOUT}s
    timeout http-keep-alive 120s

frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend be

backend be
    http-reuse always
    server b 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 || die "bad haproxy config: $(cat "$dir/log")"
    spawn haproxy "$dir/log" haproxy -db -f "$dir/haproxy.cfg"
    wait_ready haproxy "http://127.0.0.1:${PORT[haproxy]}/"
}

start_cutover_as() { # name binary env
    local name=$1 bin=$2 envs=$3 dir=$WORK/$1
    mkdir -p "$dir"
    cat >"$dir/cutover.yaml" <<EOF
listen: 127.0.0.1:${PORT[$name]}
client_header_timeout: ${HEADER_TIMEOUT}s
client_idle_timeout: 120s
admin: { listen: 127.0.0.1:${ADMIN_PORT[$name]} }
backends: { b: { url: "http://127.0.0.1:$BACKEND_PORT" } }
routes: [ { name: all, match: { path_prefix: / }, split: { b: 100 } } ]
EOF
    # shellcheck disable=SC2086 # envs is a list of VAR=value words
    spawn "$name" "$dir/log" env -C "$dir" RUST_LOG=warn $envs "$bin" run -c "$dir/cutover.yaml" --threads "$THREADS"
    wait_ready "$name" "http://127.0.0.1:${ADMIN_PORT[$name]}/readyz"
}

start_target() {
    case $1 in
        cutover) start_cutover_as cutover "$CUTOVER_BIN" "$CUTOVER_ENV" ;;
        cutover-b) start_cutover_as cutover-b "$CUTOVER_BIN_B" "$CUTOVER_B_ENV" ;;
        haproxy) start_haproxy ;;
    esac
}

describe() {
    case $1 in
        cutover) echo "$CUTOVER_BIN --threads $THREADS${CUTOVER_ENV:+, env $CUTOVER_ENV}" ;;
        cutover-b) echo "$CUTOVER_BIN_B --threads $THREADS${CUTOVER_B_ENV:+, env $CUTOVER_B_ENV}" ;;
        haproxy) echo "$(haproxy -v | awk 'NR == 1 { print $1, $3 }'), nbthread $THREADS" ;;
    esac
}

# ---------------------------------------------------------------- runs

# One mode on a fresh process; the client's `key value` lines land in $WORK/res-<target>-<mode>.
run_mode() { # target mode
    local t=$1 mode=$2 limit
    log "== $t: $mode"
    start_target "$t"
    # Warm-up, phases, settle, plus generous slack for slow connects.
    limit=$((SETTLE_SECONDS + 300 + CHURN / 50))
    timeout "$limit" python3 "$ROOT/benches/memory_client.py" --port "${PORT[$t]}" --pid "${PID[$t]}" \
        --mode "$mode" --conns "$CONNS" --churn "$CHURN" --batch "$BATCH" --warmup "$WARMUP" \
        --settle "$SETTLE_SECONDS" --wait-close $((HEADER_TIMEOUT + 60)) \
        >"$WORK/res-$t-$mode" 2> >(tee -a "$WORK/client-$t.log" >&2) &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || die "client against $t ($mode) failed, see $WORK/client-$t.log and $WORK/$t/log"
    CLIENT_PID=""
    kill -0 "${PID[$t]}" 2>/dev/null || die "$t died, see $WORK/$t/log"
    unspawn "$t"
}

get() { # target mode key
    awk -v k="$3" '$1 == k { v = $2 } END { print (v == "" ? "-" : v) }' "$WORK/res-$1-$2" 2>/dev/null || echo -
}

mb() { # KiB value or "-"
    awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f", v / 1024 }'
}

print_table() { # target
    local t=$1
    echo
    echo "memory: $t ($(describe "$t")), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
    local body="3-byte answers"
    ((BODY_BYTES)) && body="$BODY_BYTES-byte answers"
    echo "N=$CONNS, churn $CHURN in batches of $BATCH, warm-up $WARMUP requests, settle ${SETTLE_SECONDS}s, header timeout ${HEADER_TIMEOUT}s, $body"
    line() { printf '%-40s %9s %6s  %s\n' "$@"; }
    row() { line "$1" "$(mb "$(get "$t" "$mode" "$2_rss")")" "$(get "$t" "$mode" "$2_fds")" "${3:-}"; }
    line phase "RSS MB" fds note
    local mode=keepalive
    if [[ " $MODES " == *" $mode "* ]]; then
        row "keep-alive: baseline" baseline
        row "keep-alive: $(get "$t" $mode idle_still_open) idle connections" idle \
            "$(get "$t" $mode idle_kib_per_conn) KiB per connection, $(get "$t" $mode idle_errors) errors"
        row "keep-alive: the same, 12 s later" idle_settled \
            "$(get "$t" $mode idle_settled_kib_per_conn) KiB per connection"
        row "keep-alive: idle ones closed" closed
        line "churn: peak (VmHWM)" "$(mb "$(get "$t" $mode churn_hwm)")" "" \
            "$(get "$t" $mode churn_errors) errors, $(get "$t" $mode churn_seconds) s"
        row "churn: done" churned
        row "churn: ${SETTLE_SECONDS}s later" settled "x$(get "$t" $mode settled_ratio) of baseline"
        echo "(with the clients gone, most fds left are idle upstream connections the proxy keeps)"
    fi
    mode=partial # a second fresh process, with its own baseline
    if [[ " $MODES " == *" $mode "* ]]; then
        row "partial: baseline" baseline
        line "partial: peak (VmHWM)" "$(mb "$(get "$t" $mode partial_hwm)")" "" \
            "$(get "$t" $mode partial_max_open) open at most, $(get "$t" $mode partial_kib_per_conn) KiB each"
        row "partial: ${SETTLE_SECONDS}s after closed" partial_settled "x$(get "$t" $mode partial_settled_ratio) of baseline"
    fi
}

# ---------------------------------------------------------------- main

main() {
    check_knobs
    check_ports_free
    WORK=$(mktemp -d /tmp/cutover-memory.XXXXXX)
    chmod 755 "$WORK" # nginx workers run as nobody
    start_backend
    local t m
    for t in $TARGETS; do
        for m in $MODES; do run_mode "$t" "$m"; done
    done
    for t in $TARGETS; do print_table "$t"; done
}

main "$@"
