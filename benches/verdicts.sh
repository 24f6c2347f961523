#!/usr/bin/env bash
# Verdicts you can trust (issue 13): how often each method finds a 3 % slowdown (power),
# how often it calls the identical program slower or faster (false alarms), how often it
# calls the identical program equivalent, and the wall time per comparison, idle and under
# `stress-ng --cpu 2`.
#
#   cargo build --release --workspace --bins && sudo benches/verdicts.sh [TRIALS]
#
# Methods, each on a C loop of ~20 M iterations (new: 3 % more iterations; self: the same
# binary copied, so its executable differs only by name):
#   a  Welch's t-test on two sequential batches of 20 repeats, 2 % threshold (the method
#      before verdicts, computed here from the stored samples)
#   b  the verdict on those same two sequential batches (`runs compare`, between-batch
#      spread from the label's history as it grows over the trials)
#   c  `compare --rounds 20` (interleaved, paired bootstrap)
#   d  `compare --until-decided --rounds 10 --max-rounds 5000 --max-time 60s`
#   e  `compare --metric instructions --rounds 5` (cachegrind: at most 5 repeats a side)
#   f  as d, with `--metric cpu` (the kernel's CPU time of the run instead of wall time)
# Under stress every method runs --exclusive (the shield keeps the load off its core).
# TRIALS defaults to 20 per cell; METHODS (default abcdef) picks the methods. Needs gcc,
# stress-ng and valgrind. Leaves nothing behind: the load is stopped and the daemon stops
# (lowering its shield) even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
summarize() {
python3 - "$1" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
names = {"a": "(a) Welch, sequential", "b": "(b) verdict, sequential", "c": "(c) compare, 20 rounds", "d": "(d) compare --until-decided", "e": "(e) compare --metric instructions, 5 rounds", "f": "(f) compare --until-decided --metric cpu"}
print("| condition | method | power (3 % slower found) | false alarms (self) | equivalent (self) | median s / comparison |")
print("|---|---|---|---|---|---|")
for cond in ("idle", "stress"):
    for m in "abcdef":
        new = [r for r in rows if r[0] == cond and r[1] == m and r[2] == "new"]
        own = [r for r in rows if r[0] == cond and r[1] == m and r[2] == "self"]
        if not new or not own:
            continue
        power = sum(r[3] == "slower" for r in new) / len(new)
        alarms = sum(r[3] in ("slower", "faster") for r in own) / len(own)
        equiv = sum(r[3] == "equivalent" for r in own) / len(own)
        secs = statistics.median(float(r[4]) for r in new + own)
        label = cond if cond == "idle" else "stress-ng --cpu 2, --exclusive"
        print(f"| {label} | {names[m]} | {power:.2f} ({len(new)}) | {alarms:.2f} ({len(own)}) | {equiv:.2f} | {secs:.1f} |")
PY
}
# SUMMARIZE=FILE: only the table of raw lines kept before (several OUT files concatenated).
if [ -n "${SUMMARIZE:-}" ]; then summarize "$SUMMARIZE"; exit 0; fi
bin=${BIN:-target/release}
trials=${1:-20}
methods=${METHODS:-abcdef}
command -v stress-ng >/dev/null || { echo "stress-ng is not installed" >&2; exit 1; }
command -v valgrind >/dev/null || [[ ${METHODS:-abcdef} != *e* ]] || { echo "valgrind is not installed" >&2; exit 1; }
work=$(mktemp -d /tmp/cleanroom-verdicts.XXXXXX)
pid= load=
cleanup() {
    [ -n "$load" ] && kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
cat > "$work/loop.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    unsigned long n = strtoul(argv[1], 0, 10);
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < n; i++) x += i ^ (x >> 3);
    printf("%lu\n", x);
    return 0;
}
C
gcc -O1 -o "$work/old" "$work/loop.c"
cp "$work/old" "$work/same"
chmod 755 "$work" "$work/old" "$work/same"
old=("$work/old" 20000000)
new=("$work/old" 20600000)
same=("$work/same" 20000000)
printf '[runs]\nshield_exempt_pids = [1]\nhistory_limit = 10000\n' > "$work/c.toml"
"$bin/cleanroomd" --config "$work/c.toml" --socket "$work/d.sock" --state-dir "$work/state" 2>"$work/log" &
pid=$!
for _ in $(seq 1 200); do "$bin/cleanroomctl" --socket "$work/d.sock" ping >/dev/null 2>&1 && break; sleep 0.01; done
ctl() { "$bin/cleanroomctl" --socket "$work/d.sock" "$@"; }
now() { date +%s.%N; }

# One line per trial: condition method program verdict seconds (the raw lines are kept in
# $OUT when set).
results=${OUT:-$work/results}
: > "$results"
record() { echo "$1 $2 $3 $4 $5" >> "$results"; }

welch() { python3 - "$1" "$2" <<'PY'
import json, math, sys
def t_sf2(t, df):
    # Two-sided tail of Student's t: I_{df/(df+t^2)}(df/2, 1/2), the regularized incomplete
    # beta by its continued fraction (Numerical Recipes' betacf).
    x = df / (df + t * t); a, b = df / 2.0, 0.5
    def cf(a, b, x):
        qab, qap, qam = a + b, a + 1, a - 1
        c, d = 1.0, 1 - qab * x / qap
        d = 1 / (d if abs(d) > 1e-300 else 1e-300); h = d
        for m in range(1, 300):
            m2 = 2 * m
            aa = m * (b - m) * x / ((qam + m2) * (a + m2))
            d = 1 + aa * d; d = 1 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1 + aa / c if abs(1 + aa / c) > 1e-300 else 1e-300
            h *= d * c
            aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
            d = 1 + aa * d; d = 1 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1 + aa / c if abs(1 + aa / c) > 1e-300 else 1e-300
            de = d * c; h *= de
            if abs(de - 1) < 1e-12: break
        return h
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    front = math.exp(a * math.log(x) + b * math.log(1 - x) - lbeta)
    return front * cf(a, b, x) / a if x < (a + 1) / (a + b + 2) else 1 - front * cf(b, a, 1 - x) / b
a = json.load(open(sys.argv[1]))["samples"]["wall_ms"]
b = json.load(open(sys.argv[2]))["samples"]["wall_ms"]
mean = lambda v: sum(v) / len(v)
var = lambda v: sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)
se2 = var(a) / len(a) + var(b) / len(b)
t = (mean(b) - mean(a)) / math.sqrt(se2)
df = se2 ** 2 / ((var(a) / len(a)) ** 2 / (len(a) - 1) + (var(b) / len(b)) ** 2 / (len(b) - 1))
p = t_sf2(t, df)
change = (mean(b) - mean(a)) / mean(a)
print("slower" if p < 0.05 and change > 0.02 else "faster" if p < 0.05 and change < -0.02 else "no_change")
PY
}

trial() { # condition exclusive-flags program-name program...
    local cond=$1 flags=$2 name=$3; shift 3
    local t0 t1 ra rb
    # a, b: two sequential batches, labelled so the history builds the between-batch spread.
    if [[ $methods == *[ab]* ]]; then
    t0=$(now)
    ctl --json run $flags --label "$cond-old" --repeat 20 --warmup 2 -- "${old[@]}" > "$work/a.json" 2>/dev/null || true
    ctl --json run $flags --label "$cond-$name" --repeat 20 --warmup 2 -- "$@" > "$work/b.json" 2>/dev/null || true
    t1=$(now)
    record "$cond" a "$name" "$(welch "$work/a.json" "$work/b.json")" "$(awk "BEGIN { print $t1 - $t0 }")"
    ra=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["batch"])' "$work/a.json")
    rb=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["batch"])' "$work/b.json")
    record "$cond" b "$name" "$(ctl --json runs compare "$ra" "$rb" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["verdict"])')" "$(awk "BEGIN { print $t1 - $t0 }")"
    fi
    # c: interleaved rounds.
    if [[ $methods == *c* ]]; then
    t0=$(now)
    ctl --json compare $flags --rounds 20 --warmup 2 -- "${old[@]}" :: "$@" > "$work/c.json" 2>/dev/null || true
    t1=$(now)
    record "$cond" c "$name" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sides"][1]["comparison"]["verdict"])' "$work/c.json")" "$(awk "BEGIN { print $t1 - $t0 }")"
    fi
    # d: until decided, within a minute.
    if [[ $methods == *d* ]]; then
    t0=$(now)
    ctl --json compare $flags --rounds 10 --warmup 2 --until-decided --max-rounds 5000 --max-time 60s -- "${old[@]}" :: "$@" > "$work/d.json" 2>/dev/null || true
    t1=$(now)
    record "$cond" d "$name" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sides"][1]["comparison"]["verdict"])' "$work/d.json")" "$(awk "BEGIN { print $t1 - $t0 }")"
    fi
    # f: until decided on CPU time.
    if [[ $methods == *f* ]]; then
    t0=$(now)
    ctl --json compare $flags --rounds 10 --warmup 2 --until-decided --max-rounds 5000 --max-time 60s --metric cpu -- "${old[@]}" :: "$@" > "$work/f.json" 2>/dev/null || true
    t1=$(now)
    record "$cond" f "$name" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sides"][1]["comparison"]["verdict"])' "$work/f.json")" "$(awk "BEGIN { print $t1 - $t0 }")"
    fi
    # e: instructions executed, five rounds.
    if [[ $methods == *e* ]]; then
    t0=$(now)
    ctl --json compare $flags --rounds 5 --warmup 1 --metric instructions -- "${old[@]}" :: "$@" > "$work/e.json" 2>/dev/null || true
    t1=$(now)
    record "$cond" e "$name" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sides"][1]["comparison"]["verdict"])' "$work/e.json")" "$(awk "BEGIN { print $t1 - $t0 }")"
    fi
}

run_condition() { # condition flags
    for i in $(seq 1 "$trials"); do
        trial "$1" "$2" new "${new[@]}"
        trial "$1" "$2" self "${same[@]}"
        echo "$1: trial $i of $trials" >&2
    done
}

run_condition idle ""
stress-ng --cpu 2 --quiet &
load=$!
sleep 1
run_condition stress "--exclusive"
kill "$load"; wait "$load" 2>/dev/null || true; load=

summarize "$results"
