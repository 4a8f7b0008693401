#!/usr/bin/env bash
# Load comparison on loopback.
#
# MODE=route (default): cutover proxying a 90/10 sticky split vs HAProxy vs nginx vs the bare
# backend.
# MODE=ofrep: single-flag OFREP evaluations (POST /ofrep/v1/evaluate/flags/new-checkout, a new
# targetingKey per request) vs nginx answering `return 200` with the same JSON, the HTTP floor.
# Each server is pinned to CPU $SERVER_CPU and wrk to CPU $CLIENT_CPU, so the server has exactly
# one core.
#
#   bash benches/load.sh                          # all targets, 3 rounds of 10 s each
#   TARGETS="haproxy nginx direct" DURATION=3 ROUNDS=1 bash benches/load.sh
#   CUTOVER_BIN=/tmp/before CUTOVER_BIN_B=/tmp/after bash benches/load.sh
#   MODE=ofrep bash benches/load.sh
#
# Knobs: MODE (route, ofrep), TARGETS (route: cutover cutover-b haproxy nginx direct; ofrep:
# cutover cutover-b nginx), DURATION (s per wrk run), ROUNDS, CONNECTIONS, CUTOVER_BIN,
# CUTOVER_BIN_B, SPLIT_CHECK (requests used to check the split before loading, 0 = skip),
# PIN (1: taskset servers and wrk; default 1 for ofrep, 0 for route), SERVER_CPU, CLIENT_CPU,
# KEEP_TMP=1.
# SHADOW and SHADOW_B (route mode; for cutover and cutover-b): none (default), or the route
# also shadows 100% of its requests to a candidate that is `healthy` (answers as legacy does),
# `stalled` (accepts connections, never answers) or `down` (nothing listens):
#   CUTOVER_BIN_B=target/release/cutover SHADOW=stalled TARGETS="cutover cutover-b" bash benches/load.sh
# ACCESS_LOG and ACCESS_LOG_B (route mode): none (default), or `file`: the access log on, to
# access.log in the target's own directory:
#   CUTOVER_BIN_B=target/release/cutover ACCESS_LOG=file TARGETS="cutover cutover-b" bash benches/load.sh
# The table goes to stdout, progress to stderr: `bash benches/load.sh > result.txt`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

MODE=${MODE:-route}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
SPLIT_CHECK=${SPLIT_CHECK:-200}
if [[ $MODE == ofrep ]]; then PIN=${PIN:-1}; else PIN=${PIN:-0}; fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
READY_TIMEOUT=20
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}

# Paths given by the caller are relative to the caller's cwd; the default one to the repo.
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DEFAULT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover"
CUTOVER_BIN=$(abspath "${CUTOVER_BIN:-$DEFAULT_BIN}")
CUTOVER_BIN_B=${CUTOVER_BIN_B:+$(abspath "$CUTOVER_BIN_B")}

LEGACY_PORT=18001
NEW_PORT=18002
# Shadow candidates (SHADOW, SHADOW_B).
declare -A CANDIDATE_PORT=([healthy]=18003 [stalled]=18004 [down]=18005)
SHADOW=${SHADOW:-none}
SHADOW_B=${SHADOW_B:-none}
ACCESS_LOG=${ACCESS_LOG:-none}
ACCESS_LOG_B=${ACCESS_LOG_B:-none}
declare -A PORT=([cutover]=18080 [cutover-b]=18081 [haproxy]=18082 [nginx]=18083 [direct]=$LEGACY_PORT)
declare -A ADMIN_PORT=([cutover]=19901 [cutover-b]=19902)
declare -A FLAGS_PORT=([cutover]=18016 [cutover-b]=18017)
declare -A PID=()   # target -> the pid whose process tree we measure
PIDS=()             # every server this script started; all killed on exit
WRK_PID=""          # the wrk run in progress, if any
WORK=""

log() { printf '%s\n' "$*" >&2; }
die() { log "load.sh: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup

cleanup() {
    local rc=$?
    if [[ -n $WRK_PID ]]; then kill "$WRK_PID" 2>/dev/null || true; fi
    stop_trees "${PIDS[@]}"
    wait 2>/dev/null || true
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
    local k
    for k in DURATION ROUNDS CONNECTIONS SPLIT_CHECK PIN SERVER_CPU CLIENT_CPU; do
        [[ ${!k} =~ ^[0-9]+$ ]] || die "$k must be a whole number, got '${!k}'"
    done
    ((DURATION > 0 && ROUNDS > 0 && CONNECTIONS > 0)) || die "DURATION, ROUNDS and CONNECTIONS must be > 0"
    case $MODE in
        route | ofrep) ;;
        *) die "MODE=$MODE: use route or ofrep" ;;
    esac
    for k in ACCESS_LOG ACCESS_LOG_B; do
        case ${!k} in
            none) ;;
            file) [[ $MODE == route ]] || die "$k needs MODE=route" ;;
            *) die "$k=${!k}: use none or file" ;;
        esac
    done
    for k in SHADOW SHADOW_B; do
        case ${!k} in
            none) ;;
            healthy | stalled | down) [[ $MODE == route ]] || die "$k needs MODE=route" ;;
            *) die "$k=${!k}: use none, healthy, stalled or down" ;;
        esac
    done
    if ((PIN)); then
        command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
        ((SERVER_CPU != CLIENT_CPU && $(nproc) > SERVER_CPU && $(nproc) > CLIENT_CPU)) ||
            die "SERVER_CPU and CLIENT_CPU must be two different CPUs of the $(nproc) here"
    fi
}

known_targets() {
    case $MODE in
        route) echo "cutover cutover-b haproxy nginx direct" ;;
        ofrep) echo "cutover cutover-b nginx" ;;
    esac
}

default_targets() {
    case $MODE in
        route) echo "cutover ${CUTOVER_BIN_B:+cutover-b }haproxy nginx direct" ;;
        ofrep) echo "cutover ${CUTOVER_BIN_B:+cutover-b }nginx" ;;
    esac
}

check_targets() {
    local t
    for t in $TARGETS; do
        [[ " $(known_targets) " == *" $t "* ]] || die "unknown target '$t' for MODE=$MODE (known: $(known_targets))"
    done
    if wants cutover-b && [[ -z $CUTOVER_BIN_B ]]; then die "target cutover-b needs CUTOVER_BIN_B"; fi
    return 0
}

wants() { [[ " $TARGETS " == *" $1 "* ]]; }

# apt-get only what the chosen targets need, and only when it is missing.
ensure_tools() {
    local pkgs=()
    command -v nginx >/dev/null || pkgs+=(nginx)
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v curl >/dev/null || pkgs+=(curl)
    if wants haproxy; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
    ((${#pkgs[@]})) || return 0
    log "installing ${pkgs[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2
}

ensure_cutover_bin() {
    [[ -x $CUTOVER_BIN ]] && return 0
    [[ $CUTOVER_BIN == "$DEFAULT_BIN" ]] || die "CUTOVER_BIN=$CUTOVER_BIN does not exist"
    log "no $CUTOVER_BIN: cargo build --release"
    (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release --bin cutover) >&2
    [[ -x $CUTOVER_BIN ]] || die "cargo build did not produce $CUTOVER_BIN"
}

# A port already taken would make us benchmark some other process.
check_ports_free() {
    local t p
    if [[ $MODE == route ]]; then
        for p in $LEGACY_PORT $NEW_PORT; do port_free "$p" || die "127.0.0.1:$p is already in use"; done
    fi
    for t in $TARGETS; do
        for p in ${PORT[$t]} ${ADMIN_PORT[$t]:-} ${FLAGS_PORT[$t]:-}; do
            [[ $t == direct ]] || port_free "$p" || die "127.0.0.1:$p ($t) is already in use"
        done
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- processes

# With PIN=1, servers get CPU $SERVER_CPU and wrk CPU $CLIENT_CPU (children inherit it).
on_server_cpu() { if ((PIN)); then taskset -c "$SERVER_CPU" "$@"; else "$@"; fi; }
on_client_cpu() { if ((PIN)); then taskset -c "$CLIENT_CPU" "$@"; else "$@"; fi; }

spawn() { # name logfile cmd... : start in the background, remember the pid
    local name=$1 logf=$2
    shift 2
    on_server_cpu "$@" >"$logf" 2>&1 &
    PIDS+=($!)
    PID[$name]=$!
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

# Everything nginx would otherwise put under /var (Debian's build) goes to our dir.
nginx_main() { # dir
    cat <<EOF
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 1024; }
EOF
}

nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;  # default 1000 would make wrk and upstreams reconnect
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

start_nginx_with() { # name conf-body-function
    local name=$1 dir=$WORK/$1
    mkdir -p "$dir/tmp"
    { nginx_main "$dir"; echo "http {"; nginx_http_common "$dir"; "$2" "$dir"; echo "}"; } >"$dir/nginx.conf"
    nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/log" 2>&1 ||
        die "bad nginx config for $name: $(cat "$dir/log")"
    spawn "$name" "$dir/log" nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf"
}

backend_servers() {
    cat <<EOF
    server { listen 127.0.0.1:$LEGACY_PORT; return 200 "legacy\n"; }
    server { listen 127.0.0.1:$NEW_PORT; return 200 "new\n"; }
    server { listen 127.0.0.1:${CANDIDATE_PORT[healthy]}; return 200 "legacy\n"; }
EOF
}

# Accepts connections and never answers; each is held until the peer gives up.
start_stalled_candidate() {
    spawn stalled "$WORK/stalled.log" python3 -c "$STALLED_LISTENER" "${CANDIDATE_PORT[stalled]}"
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${CANDIDATE_PORT[stalled]}") 2>/dev/null; then return; fi
        sleep 0.05
    done
    die "the stalled candidate did not start"
}

# One backend shared by every target, so only the proxy in front differs.
start_backend() {
    start_nginx_with backend backend_servers
    wait_ready backend "http://127.0.0.1:$LEGACY_PORT/"
    wait_ready backend "http://127.0.0.1:$NEW_PORT/"
}

start_direct() { PID[direct]=${PID[backend]}; }

# Forwarding headers and Host kept as cutover's contract does, so the peers do similar work.
nginx_proxy_servers() {
    cat <<EOF
    upstream legacy { server 127.0.0.1:$LEGACY_PORT; keepalive 64; keepalive_requests 1000000; }
    upstream new { server 127.0.0.1:$NEW_PORT; keepalive 64; keepalive_requests 1000000; }
    split_clients "\${http_x_user_id}" \$upstream { 90% legacy; * new; }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://\$upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header x-request-id \$request_id;
        }
    }
EOF
}

# The floor for OFREP: the same answer cutover gives, with no evaluation at all.
nginx_ofrep_servers() {
    cat <<EOF
    server {
        listen 127.0.0.1:${PORT[nginx]};
        default_type application/json;
        location / { return 200 '{"key":"new-checkout","reason":"SPLIT","variant":"on","value":true,"metadata":{}}'; }
    }
EOF
}

start_nginx() {
    case $MODE in
        route) start_nginx_with nginx nginx_proxy_servers ;;
        ofrep) start_nginx_with nginx nginx_ofrep_servers ;;
    esac
    wait_ready nginx "$(target_url nginx)"
}

start_haproxy() {
    local dir=$WORK/haproxy
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096  # fits the usual 20000 fd limit (haproxy needs ~2 fds per conn)

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s

frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    option forwardfor
    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt
    http-request set-header x-request-id %[unique-id] unless { req.hdr(x-request-id) -m found }
    default_backend be

backend be
    balance roundrobin
    http-reuse always
    server legacy 127.0.0.1:$LEGACY_PORT weight 90
    server new 127.0.0.1:$NEW_PORT weight 10
EOF
    haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 || die "bad haproxy config: $(cat "$dir/log")"
    # -db: stay in the foreground so the pid is haproxy's own
    spawn haproxy "$dir/log" haproxy -db -f "$dir/haproxy.cfg"
    wait_ready haproxy "$(target_url haproxy)"
}

write_cutover_config() { # name file
    if [[ $MODE == ofrep ]]; then
        cat >"$2" <<EOF
listen: 127.0.0.1:${PORT[$1]}
admin:
  listen: 127.0.0.1:${ADMIN_PORT[$1]}
flags_api:
  listen: 127.0.0.1:${FLAGS_PORT[$1]}
# A config needs a route; this one is never used.
backends:
  legacy: { url: "http://127.0.0.1:$LEGACY_PORT" }
routes:
  - { name: all, match: { path_prefix: / }, split: { legacy: 100 } }
flags:
  new-checkout:
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - when: { country: { in: [NL, BE] } }
        serve: "on"
      - when: { app_version: { semver_lt: "2.0.0" } }
        serve: "off"
    rollout: { "on": 25, "off": 75 }
EOF
        return
    fi
    local shadow=$SHADOW candidate="" shadowing="" access=$ACCESS_LOG access_log=""
    if [[ $1 == cutover-b ]]; then shadow=$SHADOW_B access=$ACCESS_LOG_B; fi
    if [[ $access == file ]]; then access_log="access_log: { path: access.log }"; fi
    if [[ $shadow != none ]]; then
        candidate="  candidate: { url: \"http://127.0.0.1:${CANDIDATE_PORT[$shadow]}\" }"
        shadowing="    shadow: { to: candidate, percent: 100 }"
    fi
    cat >"$2" <<EOF
listen: 127.0.0.1:${PORT[$1]}
admin:
  listen: 127.0.0.1:${ADMIN_PORT[$1]}
$access_log
backends:
  legacy: { url: "http://127.0.0.1:$LEGACY_PORT" }
  new: { url: "http://127.0.0.1:$NEW_PORT" }
$candidate
routes:
  - name: all
    match: { path_prefix: / }
    split: { legacy: 90, new: 10 }
    sticky: { header: x-user-id }
$shadowing
EOF
}

start_cutover_as() { # name binary
    local name=$1 bin=$2 dir=$WORK/$1
    mkdir -p "$dir"
    write_cutover_config "$name" "$dir/cutover.yaml"
    # cwd = its own dir, so a relative state file of A and B never collide
    spawn "$name" "$dir/log" env -C "$dir" RUST_LOG=warn "$bin" run --config "$dir/cutover.yaml" --threads 1
    wait_ready "$name" "http://127.0.0.1:${ADMIN_PORT[$name]}/readyz"
}

start_cutover() { start_cutover_as cutover "$CUTOVER_BIN"; }
start_cutover_b() { start_cutover_as cutover-b "$CUTOVER_BIN_B"; }

start_target() {
    log "starting $1"
    "start_${1//-/_}"
}

# ---------------------------------------------------------------- mode: what is loaded

target_url() {
    case $MODE in
        route) echo "http://127.0.0.1:${PORT[$1]}/" ;;
        ofrep)
            case $1 in
                nginx) echo "http://127.0.0.1:${PORT[$1]}/ofrep/v1/evaluate/flags/new-checkout" ;;
                *) echo "http://127.0.0.1:${FLAGS_PORT[$1]}/ofrep/v1/evaluate/flags/new-checkout" ;;
            esac ;;
    esac
}

# A new x-user-id on every request: the sticky hash runs each time and users spread 90/10.
write_wrk_script() {
    case $MODE in
        route) cat >"$WORK/wrk.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  wrk.headers["x-user-id"] = "user-" .. n
  return wrk.format()
end
EOF
            ;;
        # Both rules are checked and miss (DE, no app_version), then the rollout hashes a new
        # targetingKey: the whole evaluator runs on every request.
        ofrep) cat >"$WORK/wrk.lua" <<'EOF'
local n = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil,
    '{"context":{"targetingKey":"user-' .. n .. '","country":"DE"}}')
end
EOF
            ;;
    esac
}

# Before loading, check with distinct users that a target really splits: ~10% of users to
# "new" (route), ~25% of targeting keys to "on" (ofrep; nginx's fixed answer is not checked).
split_check() { # target -> percent of answers from "new" / "on"
    local t=$1 cfg=$WORK/split-$1.curl i n pattern
    ((SPLIT_CHECK > 0)) || { echo "-"; return; }
    if [[ $MODE == ofrep && $t == nginx ]]; then echo "-"; return; fi
    for ((i = 1; i <= SPLIT_CHECK; i++)); do
        ((i == 1)) || echo "next"
        printf 'url = "%s"\n' "$(target_url "$t")"
        case $MODE in
            route) printf 'header = "x-user-id: check-%d"\n' "$i" ;;
            ofrep) printf 'header = "content-type: application/json"\ndata = "{\\"context\\":{\\"targetingKey\\":\\"check-%d\\",\\"country\\":\\"DE\\"}}"\n' "$i" ;;
        esac
    done >"$cfg"
    case $MODE in
        route) pattern='^new$' ;;
        ofrep) pattern='"variant":"on"' ;;
    esac
    # Occurrences, not lines: OFREP answers have no trailing newline.
    n=$(curl -s --max-time 30 -K "$cfg" | grep -o "$pattern" | wc -l)
    awk -v n="$n" -v d="$SPLIT_CHECK" 'BEGIN { printf "%.1f", 100 * n / d }'
}

# ---------------------------------------------------------------- load and parsing

# CPU time of a process tree so far, in clock ticks: "user system".
cpu_ticks() { # pid
    local p files=()
    for p in $(tree_pids "$1"); do files+=("/proc/$p/stat"); done
    # After the last ')' (the command name may hold spaces), utime and stime are fields 12, 13.
    awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u + 0, s + 0 }' "${files[@]}" 2>/dev/null || echo 0 0
}

run_wrk() { # target round
    local t=$1 out=$WORK/wrk-$1-$2.txt cpu_before
    cpu_before=$(cpu_ticks "${PID[$t]}")
    # In the background and waited for, so a SIGTERM to this script stops it at once.
    on_client_cpu timeout $((DURATION + 30)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -s "$WORK/wrk.lua" "$(target_url "$t")" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || die "wrk against $t failed: $(cat "$out")"
    WRK_PID=""
    kill -0 "${PID[$t]}" 2>/dev/null || die "$t died under load, see $WORK/$t/log"
    local rps p99 errs cpu_us
    rps=$(parse_rps "$out")
    p99=$(parse_p99 "$out")
    errs=$(parse_errors "$out")
    [[ -n $rps && -n $p99 ]] || die "could not parse wrk output: $(cat "$out")"
    # CPU the server spent per answered request: steadier than req/s on a noisy machine.
    # The user-space share is logged too: the kernel's loopback work is the same for every proxy.
    local cpu user_us
    cpu=$(awk -v a="$cpu_before" -v b="$(cpu_ticks "${PID[$t]}")" -v hz="$(getconf CLK_TCK)" \
        -v n="$(parse_requests "$out")" 'BEGIN {
            split(a, x, " "); split(b, y, " "); f = n > 0 ? 1e6 / hz / n : 0
            printf "%.1f %.1f", (y[1] + y[2] - x[1] - x[2]) * f, (y[1] - x[1]) * f }')
    read -r cpu_us user_us <<<"$cpu"
    echo "$rps $p99 $errs $cpu_us" >>"$WORK/res-$t"
    log "  round $2  $(printf '%-10s %10.0f req/s  p99 %7.3f ms  errors %s  cpu %s us/req (user %s)' "$t" "$rps" "$p99" "$errs" "$cpu_us" "$user_us")"
}

parse_rps() { awk '$1 == "Requests/sec:" { print $2 }' "$1"; }

parse_requests() { awk '$2 == "requests" && $3 == "in" { print $1 }' "$1"; }

# From the --latency distribution: "99%   1.23ms"; wrk picks us/ms/s/m/h.
parse_p99() {
    awk '$1 == "99%" {
        v = $2
        if (v ~ /us$/) ms = v / 1000
        else if (v ~ /ms$/) ms = v + 0
        else if (v ~ /s$/) ms = v * 1000
        else if (v ~ /m$/) ms = v * 60000
        else if (v ~ /h$/) ms = v * 3600000
        printf "%.3f\n", ms
    }' "$1"
}

# Non-2xx answers and socket errors: a proxy answering 502 fast must not look good.
parse_errors() {
    awk '/Non-2xx or 3xx responses:/ { e += $NF }
         /Socket errors:/ { gsub(",", ""); e += $4 + $6 + $8 + $10 }
         END { print e + 0 }' "$1"
}

median() { # column of res file
    awk -v c="$2" '{ print $c }' "$1" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

column_sum() { awk -v c="$2" '{ s += $c } END { print s + 0 }' "$1"; }

# Summed over the process tree (nginx: master + worker).
mem_mb() { # pid field
    local files=() p
    for p in $(tree_pids "$1"); do files+=("/proc/$p/status"); done
    awk -v f="$2:" '$1 == f { s += $2 } END { printf "%.1f", s / 1024 }' "${files[@]}" 2>/dev/null || true
}

# ---------------------------------------------------------------- report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }

declare -A RPS P99 ERRS CPU HWM RSS SPLIT

collect() {
    local t
    for t in $TARGETS; do
        RPS[$t]=$(median "$WORK/res-$t" 1)
        P99[$t]=$(median "$WORK/res-$t" 2)
        ERRS[$t]=$(column_sum "$WORK/res-$t" 3)
        CPU[$t]=$(median "$WORK/res-$t" 4)
        HWM[$t]=$(mem_mb "${PID[$t]}" VmHWM)
        RSS[$t]=$(mem_mb "${PID[$t]}" VmRSS)
    done
}

ratio_line() { # a b
    wants "$1" && wants "$2" || return 0
    printf '%-20s req/s x%s   p99 x%s   cpu/req x%s\n' "$1/$2:" "$(ratio "${RPS[$1]}" "${RPS[$2]}")" \
        "$(ratio "${P99[$1]}" "${P99[$2]}")" "$(ratio "${CPU[$1]}" "${CPU[$2]}")"
}

print_table() {
    local t
    local pinned="not pinned"
    ((PIN)) && pinned="server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
    echo "cutover load comparison: mode=$MODE, wrk -t1 -c$CONNECTIONS -d${DURATION}s x $ROUNDS rounds (interleaved, rotating), $(nproc) cores, $pinned, $(date -u +%Y-%m-%dT%H:%MZ)"
    case $MODE in
        route) echo "split 90/10 on x-user-id (a new id per request); medians over rounds; errors = non-2xx + socket errors, all rounds" ;;
        ofrep) echo "single-flag OFREP POST, 2 rules missed + 25/75 rollout on a new targetingKey per request; nginx = return 200 with the same JSON (the floor); medians over rounds" ;;
    esac
    local share="new %"
    [[ $MODE == ofrep ]] && share="on %"
    printf '%-10s %10s %9s %7s %6s %11s %8s %8s\n' target "req/s" "p99 ms" errors "$share" "cpu us/req" "HWM MB" "RSS MB"
    for t in $TARGETS; do
        printf '%-10s %10.0f %9.3f %7s %6s %11s %8s %8s\n' "$t" "${RPS[$t]}" "${P99[$t]}" "${ERRS[$t]}" \
            "${SPLIT[$t]}" "${CPU[$t]}" "${HWM[$t]}" "${RSS[$t]}"
    done
    ratio_line cutover haproxy
    ratio_line cutover nginx
    ratio_line cutover-b cutover
    if wants direct; then echo "(direct = the backend nginx alone, the ceiling; its memory is the backend's)"; fi
}

# ---------------------------------------------------------------- main

main() {
    check_knobs
    TARGETS=${TARGETS:-$(default_targets)}
    check_targets
    ensure_tools
    if wants cutover; then ensure_cutover_bin; fi
    if wants cutover-b; then [[ -x $CUTOVER_BIN_B ]] || die "CUTOVER_BIN_B=$CUTOVER_BIN_B does not exist"; fi
    check_ports_free

    WORK=$(mktemp -d /tmp/cutover-load.XXXXXX)
    chmod 755 "$WORK" # nginx workers run as nobody
    write_wrk_script

    if [[ $MODE == route ]]; then start_backend; fi
    if [[ $SHADOW == stalled || $SHADOW_B == stalled ]]; then start_stalled_candidate; fi
    local t r
    for t in $TARGETS; do
        start_target "$t"
        SPLIT[$t]=$(split_check "$t")
        log "  $t: ${SPLIT[$t]}% of $SPLIT_CHECK distinct users got new/on"
    done

    # Interleaved, so drift (thermal, neighbours, page cache) hits every target alike, and
    # each round starts one target further on: the slot in the round measurably matters here.
    local order n i
    read -ra order <<<"$TARGETS"
    n=${#order[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do run_wrk "${order[(r - 1 + i) % n]}" "$r"; done
    done

    local t
    for t in $TARGETS; do
        if [[ $t == cutover || $t == cutover-b ]]; then
            curl -s "http://127.0.0.1:${ADMIN_PORT[$t]}/metrics" |
                { grep '^cutover_shadow_requests_total' || true; } | sed "s/^/  $t: /" >&2
        fi
    done
    collect
    print_table
}

main "$@"
