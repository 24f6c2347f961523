#!/usr/bin/env bash
# What a report costs (issue 14): `cleanroomctl report` of the largest report it makes,
# eight batches of 100 repeats each (7 of them compared with the first) and a label's
# history of 100 batches, in each format, timed by hyperfine; and the HTML file's size.
#
#   cargo build --release --workspace --bins && sudo benches/report.sh
#
# The batches are `true` runs in a daemon of its own (its state in a temporary directory,
# removed at the end, the daemon stopped even on failure). Needs hyperfine.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release}
command -v hyperfine >/dev/null || { echo "hyperfine is not installed" >&2; exit 1; }
work=$(mktemp -d /tmp/cleanroom-report.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
: >"$work/empty.toml"
"$bin/cleanroomd" --socket "$work/s.sock" --state-dir "$work/state" --config "$work/empty.toml" \
    2>"$work/log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
ctl() { "$bin/cleanroomctl" --socket "$work/s.sock" "$@"; }
ids=()
for i in $(seq 8); do
    ids+=("$(ctl --json run --repeat 100 --label "b$i" -- true 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["batch"])')")
done
for _ in $(seq 100); do ctl run --repeat 3 --label history -- true >/dev/null 2>&1; done
args=(report "${ids[@]}" --label history)
ctl "${args[@]}" -o "$work/r.html"
echo "HTML report: $(du -k "$work/r.html" | cut -f1) KiB, $(grep -c '<circle' "$work/r.html") points"
hyperfine --warmup 2 --runs 20 --style basic \
    -n html "$bin/cleanroomctl --socket $work/s.sock ${args[*]} -o $work/r.html" \
    -n md "$bin/cleanroomctl --socket $work/s.sock ${args[*]} --format md -o $work/r.md" \
    -n csv "$bin/cleanroomctl --socket $work/s.sock ${args[*]} --format csv -o $work/r.csv" \
    -n 'runs show (one batch)' "$bin/cleanroomctl --socket $work/s.sock runs show ${ids[0]}"
