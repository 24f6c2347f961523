#!/bin/sh
# The soak (not in CI: ~15 minutes for the default 100,000 runs on a 2-core machine):
# builds the release binaries and runs benches/soak.py. Root.
#
#   benches/soak.sh [RUNS]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec python3 benches/soak.py "${1:-100000}" target/release
