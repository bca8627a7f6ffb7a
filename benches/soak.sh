#!/usr/bin/env bash
# Soak: builds the release binary and the soak example, then runs it (args are passed on).
#   bash benches/soak.sh --minutes 10
# See examples/soak.rs for what it drives and how to read the output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin oauth-refresh-proxy --example soak
exec target/release/examples/soak --bin target/release/oauth-refresh-proxy "$@"
