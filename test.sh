#!/usr/bin/env bash
# Installs what the tests need and runs every test. Used by CI (.ci/run) and by hand.
set -euo pipefail
cd "$(dirname "$0")"

# The Rust toolchain comes with the machine; the tests need nothing else yet.
command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

# Unit, integration (real sockets, the real binary) and doc tests, plus one pass of each
# benchmark in test mode so benches cannot rot.
cargo test --all-targets
cargo test --doc
