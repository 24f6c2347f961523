#!/usr/bin/env bash
# All control-plane benchmarks: criterion (latency, throughput, client process, start-up)
# and the footprint script (memory, idle wake-ups, cleanroomctl vs tuned-adm).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo bench --bench control_plane
cargo bench --bench tuning
cargo bench --bench runs
benches/footprint.sh
benches/noise.sh
