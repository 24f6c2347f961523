#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on nightly) for a fixed number of executions,
# one after the other, and prints per target the executions, the crashes found and the
# time taken.
#
#   benches/fuzz.sh [SCALE]
#
# SCALE (a positive integer, default 1) multiplies the executions: 200,000 per target
# times SCALE, so 10^6 in all at the default. Needs the nightly toolchain and
# `cargo install cargo-fuzz --locked`.
#
# Each run is seeded with the in-tree corpus fuzz/corpus/<target>/ and never writes to
# it: what the fuzzer finds goes to a scratch directory (printed at the end), a crashing
# input to fuzz/artifacts/<target>/. libFuzzer stops a target at its first crash, so a
# target has 0 or 1. A crash is a bug: fix it at its cause, then put the input (shrunk
# with `cargo +nightly fuzz tmin TARGET FILE`) in fuzz/corpus/<target>/, where
# daemon/tests/fuzz_corpus.rs replays it on stable with every `cargo test`.
#
# Niced, and one fuzzing process at a time: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=${1:-1}
if ! [[ $scale =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SCALE]  (a positive integer; default 1: 10^6 executions in all)" >&2
    exit 2
fi
runs=$((200000 * scale))

cd fuzz
nice -n 10 cargo +nightly fuzz build >&2
mapfile -t targets < <(cargo +nightly fuzz list)
work=$(mktemp -d /tmp/cleanroom-fuzz.XXXXXX)

printf '%-16s %12s %8s %9s %9s\n' target executions crashes seconds 'exec/s'
total_runs=0
total_crashes=0
start_all=$(date +%s.%N)
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    start=$(date +%s.%N)
    # New inputs go to the first directory (scratch); the in-tree corpus is only read.
    nice -n 10 cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
        -runs="$runs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$work/$t.log" 2>&1 || true
    end=$(date +%s.%N)
    after=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    crashes=$((after - before))
    executed=$(awk '/^stat::number_of_executed_units:/ {n = $2} END {print n + 0}' "$work/$t.log")
    if [ "$executed" -eq 0 ] && [ "$crashes" -eq 0 ]; then
        echo "$t did not run; its log is $work/$t.log" >&2
        tail -n 20 "$work/$t.log" >&2
        exit 1
    fi
    seconds=$(echo "$end - $start" | bc -l)
    printf '%-16s %12d %8d %9.1f %9.0f\n' "$t" "$executed" "$crashes" "$seconds" \
        "$(echo "$executed / $seconds" | bc -l)"
    total_runs=$((total_runs + executed))
    total_crashes=$((total_crashes + crashes))
done
end_all=$(date +%s.%N)
printf '%-16s %12d %8d %9.1f\n' total "$total_runs" "$total_crashes" "$(echo "$end_all - $start_all" | bc -l)"
echo "logs and the inputs found: $work"
if [ "$total_crashes" -gt 0 ]; then
    echo "crashing inputs: fuzz/artifacts/<target>/ (reproduce: cd fuzz && cargo +nightly fuzz run TARGET FILE)" >&2
    exit 1
fi
