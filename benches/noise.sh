#!/usr/bin/env bash
# Noise: the coefficient of variation (CV) of a ~70 ms CPU-bound C benchmark over 30
# repeats while `stress-ng --cpu 2` loads the machine, run plainly and with --exclusive.
#
#   cargo build --release --workspace --bins && sudo benches/noise.sh
#
# Needs gcc and stress-ng (apt-get install stress-ng). Leaves nothing behind: the load is
# stopped and the daemon stops (lowering its shield) even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
command -v stress-ng >/dev/null || { echo "stress-ng is not installed" >&2; exit 1; }
work=$(mktemp -d /tmp/cleanroom-noise.XXXXXX)
pid= load=
cleanup() {
    [ -n "$load" ] && kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/bench.c" <<'C'
#include <stdio.h>
int main(void) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < 60000000UL; i++) x += i ^ (x >> 3);
    printf("%lu\n", x);
    return 0;
}
C
gcc -O1 -o "$work/bench" "$work/bench.c"
chmod 755 "$work" "$work/bench"
printf '[runs]\nshield_exempt_pids = [1]\n' > "$work/c.toml"
"$bin/cleanroomd" --config "$work/c.toml" --socket "$work/d.sock" --state-dir "$work/state" 2>"$work/log" &
pid=$!
for _ in $(seq 1 200); do "$bin/cleanroomctl" --socket "$work/d.sock" ping >/dev/null 2>&1 && break; sleep 0.01; done
ctl() { "$bin/cleanroomctl" --socket "$work/d.sock" "$@"; }
# The CV of wall time, and what the noise report saw over the 30 runs: foreign CPU time on
# the run's CPUs in all and in the worst run, of which irq and steal.
cv() { python3 -c '
import json, sys
r = json.load(sys.stdin)
s = r["stats"]["wall_ms"]
line = "mean %.1f ms, CV %.2f%%, min %.1f, max %.1f" % (s["mean"], s["cv_percent"], s["min"], s["max"])
noise = [x["noise"] for x in r["runs"]]
f = [n["foreign_cpu_ms"] for n in noise if n.get("foreign_cpu_ms") is not None]
if f:
    total = lambda k: sum(n.get(k) or 0 for n in noise)
    line += "; noise: foreign %.1f ms in all, max %.1f ms in a run (irq %.1f, steal %.1f) on CPUs %s" % (
        sum(f), max(f), total("irq_ms"), total("steal_ms"), r["cpus"])
print(line)'; }
echo "idle machine, plain:      $(ctl --json run --repeat 30 --warmup 3 -- "$work/bench" 2>/dev/null | cv)"
stress-ng --cpu 2 --quiet &
load=$!
sleep 1
echo "stress-ng --cpu 2, plain: $(ctl --json run --repeat 30 --warmup 3 -- "$work/bench" 2>/dev/null | cv)"
echo "stress-ng --cpu 2, exclusive: $(ctl --json run --exclusive --repeat 30 --warmup 3 -- "$work/bench" 2>/dev/null | cv)"
echo "stress-ng --cpu 2, exclusive + realtime: $(ctl --json run --exclusive --realtime --repeat 30 --warmup 3 -- "$work/bench" 2>/dev/null | cv)"
