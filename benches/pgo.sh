#!/usr/bin/env bash
# Profile-guided build of cutover in two stages:
#   1. build an instrumented binary (-Cprofile-generate);
#   2. run it under the loads of benches/load.sh (MODE=route: the 90/10 sticky split; MODE=ofrep:
#      flag evaluations), plus a pass over the admin API, HTTP/2, request bodies and the
#      requests the hygiene rules refuse, so those paths are laid out as used rather than as cold;
#   3. merge the profiles (llvm-profdata of rustc's own LLVM) and rebuild with -Cprofile-use.
#
#   bash benches/pgo.sh                      # -> target/pgo/cutover
#   OUT=/usr/local/bin/cutover bash benches/pgo.sh
#
# Knobs: OUT (the optimized binary, default target/pgo/cutover), TRAIN_SECONDS (per load.sh
# run, default 10), LLVM_PROFDATA (default: llvm-profdata-<rustc's LLVM major> on PATH, else the
# rustup component llvm-tools, added if missing), KEEP_PROFILES=1 (keep target/pgo/profiles).
# Needs what benches/load.sh needs (nginx, wrk, curl; installed with apt-get when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PGO_DIR=$TARGET_DIR/pgo
OUT=${OUT:-$PGO_DIR/cutover}
TRAIN_SECONDS=${TRAIN_SECONDS:-10}
PROFILES=$PGO_DIR/profiles
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros: only cutover itself
# is instrumented, and only it is optimized with the profile.
HOST=$(rustc -vV | awk '$1 == "host:" { print $2 }')
LLVM_MAJOR=$(rustc -vV | awk '$1 == "LLVM" { split($3, v, "."); print v[1] }')

log() { printf 'pgo.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $TRAIN_SECONDS =~ ^[1-9][0-9]*$ ]] || die "TRAIN_SECONDS must be a whole number > 0"

# The profile format follows LLVM's version: the reader must be the same major as rustc's LLVM.
find_profdata() {
    if [[ -n ${LLVM_PROFDATA:-} ]]; then echo "$LLVM_PROFDATA"; return; fi
    if command -v "llvm-profdata-$LLVM_MAJOR" >/dev/null; then command -v "llvm-profdata-$LLVM_MAJOR"; return; fi
    local sysroot tool
    sysroot=$(rustc --print sysroot)
    tool=$sysroot/lib/rustlib/$HOST/bin/llvm-profdata
    if [[ ! -x $tool ]]; then
        log "no llvm-profdata-$LLVM_MAJOR: adding the rustup component llvm-tools"
        rustup component add llvm-tools >&2 || die "install llvm-$LLVM_MAJOR or the rustup component llvm-tools"
    fi
    echo "$tool"
}

build() { # target-dir rustflags
    (cd "$ROOT" && CARGO_TARGET_DIR=$1 RUSTFLAGS=$2 cargo build --release --locked --bin cutover --target "$HOST") >&2
}

# Admin API, HTTP/2, bodies and refused requests against a running instrumented cutover.
train_edges() { # binary
    local bin=$1 dir port=18190 admin=19990 flags=18990 backend=18191 pid backend_pid i
    dir=$(mktemp -d /tmp/cutover-pgo.XXXXXX)
    python3 -m http.server --bind 127.0.0.1 "$backend" --directory "$dir" >/dev/null 2>&1 &
    backend_pid=$!
    cat >"$dir/cutover.yaml" <<EOF
listen: 127.0.0.1:$port
admin:
  listen: 127.0.0.1:$admin
flags_api:
  listen: 127.0.0.1:$flags
backends:
  legacy: { url: "http://127.0.0.1:$backend" }
  new: { url: "http://127.0.0.1:$backend" }
routes:
  - name: api
    match: { path_prefix: /api, methods: [GET, POST] }
    split: { legacy: 50, new: 50 }
    sticky: { cookie: uid }
  - name: rest
    match: { path_prefix: / }
    split: { legacy: 90, new: 10 }
    sticky: { header: x-user-id }
flags:
  checkout:
    variants: { "on": true, "off": false }
    default: "off"
    rules:
      - when: { country: { in: [NL] } }
        serve: "on"
    rollout: { "on": 25, "off": 75 }
EOF
    echo ok >"$dir/index.html"
    env -C "$dir" RUST_LOG=warn CUTOVER_ADMIN_TOKEN=pgo "$bin" run --config "$dir/cutover.yaml" --threads 1 \
        >"$dir/log" 2>&1 &
    pid=$!
    for ((i = 0; i < 100; i++)); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && break
        sleep 0.1
    done
    local p=http://127.0.0.1:$port f=http://127.0.0.1:$flags a=http://127.0.0.1:$admin
    for ((i = 0; i < 200; i++)); do
        curl -s -o /dev/null "$p/index.html" -H "x-user-id: u$i"
        curl -s -o /dev/null "$p/api/x" -b "uid=u$i" -d "payload $i"
        curl -s -o /dev/null --http2-prior-knowledge "$p/index.html?i=$i"
        curl -s -o /dev/null -X POST "$f/ofrep/v1/evaluate/flags" -H 'content-type: application/json' \
            -d "{\"context\":{\"targetingKey\":\"u$i\",\"country\":\"NL\"}}"
        curl -s -o /dev/null -H 'Transfer-Encoding: chunked' -d "chunk $i" "$p/api/y"
        curl -s -o /dev/null -X DELETE "$p/api/z"
        curl -s -o /dev/null -H 'Host: bad host' "$p/"
        printf 'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' |
            curl -s -o /dev/null --max-time 1 telnet://127.0.0.1:$port || true
    done
    for ((i = 0; i < 20; i++)); do
        curl -s -o /dev/null "$a/metrics"
        curl -s -o /dev/null -H 'authorization: Bearer pgo' "$a/api/status"
        curl -s -o /dev/null "$a/"
    done
    kill -TERM "$pid"
    wait "$pid" || true
    kill "$backend_pid" 2>/dev/null || true
    wait "$backend_pid" 2>/dev/null || true
    rm -rf "$dir"
}

main() {
    local profdata gen_bin merged
    profdata=$(find_profdata)
    "$profdata" --version >/dev/null || die "$profdata does not run"
    rm -rf "$PROFILES"
    mkdir -p "$PROFILES"

    log "stage 1: instrumented build"
    build "$PGO_DIR/generate" "-Cprofile-generate=$PROFILES"
    gen_bin=$PGO_DIR/generate/$HOST/release/cutover

    log "stage 2: training (route and ofrep loads, then the edges)"
    export LLVM_PROFILE_FILE=$PROFILES/cutover-%p-%m.profraw
    # Unpinned: the profile does not depend on it, and a builder may have one CPU or no taskset.
    export PIN=0
    for mode in route ofrep; do
        MODE=$mode TARGETS=cutover CUTOVER_BIN=$gen_bin DURATION=$TRAIN_SECONDS ROUNDS=1 \
            bash "$ROOT/benches/load.sh" >&2
    done
    train_edges "$gen_bin"
    unset LLVM_PROFILE_FILE
    # One per cutover run: the route load, the ofrep load, the edges.
    (($(ls "$PROFILES" | wc -l) >= 3)) || die "training wrote $(ls "$PROFILES" | wc -l) profiles to $PROFILES, not 3"
    rm -f "$PGO_DIR"/cutover-*.profdata

    "$profdata" merge -o "$PGO_DIR/merged.profdata" "$PROFILES"/*.profraw
    # Named by content: cargo does not track the profile file, only RUSTFLAGS, so a new profile
    # must change the flags to be rebuilt with.
    merged=$PGO_DIR/cutover-$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16).profdata
    mv "$PGO_DIR/merged.profdata" "$merged"
    log "merged $(ls "$PROFILES" | wc -l) profiles into $merged"

    log "stage 3: optimized build"
    build "$PGO_DIR/use" "-Cprofile-use=$merged"
    mkdir -p "$(dirname "$OUT")"
    install -m 0755 "$PGO_DIR/use/$HOST/release/cutover" "$OUT"
    [[ ${KEEP_PROFILES:-0} == 1 ]] || rm -rf "$PROFILES"
    log "done: $OUT"
}

main "$@"
