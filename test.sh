#!/usr/bin/env bash
# Installs what the tests need and runs every test. Used by CI (.ci/run) and by hand.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain comes with the machine; the tests need nothing else yet.
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

# Unit and integration tests (real sockets, real backends, the real binary), plus one pass of
# each benchmark in test mode so benches cannot rot.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets 2>&1 | tee "$log"

# One closing line over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
