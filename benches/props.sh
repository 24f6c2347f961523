#!/usr/bin/env bash
# The property tests of the journals at full size: the tuning journal
# (daemon/src/tune/props.rs) and the shield journal (daemon/src/run/shield/props.rs),
# 10,000 cases each (PROPTEST_CASES=N for another count), in the test build CI uses.
#
#   benches/props.sh
#
# They touch only fake host roots and stores in temporary directories (on /dev/shm), never
# the real /proc, /sys or cgroups: safe beside other work. Prints, per property, the cases
# run, failures and time (a failure also prints the minimized case and adds its seed to
# daemon/proptest-regressions/), then the total; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${PROPTEST_CASES:-10000}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
nice -n 10 cargo test -p cleanroomd --lib --quiet --no-run
start=$(date +%s.%N)
status=0
PROPTEST_CASES=$cases nice -n 10 cargo test -p cleanroomd --lib --quiet -- \
    --nocapture tune::props:: run::shield::props:: >"$log" 2>&1 || status=$?
end=$(date +%s.%N)
grep -oE 'property [a-z ]+: .*' "$log" || true
if [ "$status" -ne 0 ]; then
    grep -E 'does not hold|minimal failing input' -A 40 "$log" >&2 || cat "$log" >&2
fi
grep -E '^test result' "$log" || true
awk -v s="$start" -v e="$end" -v n="$cases" \
    'BEGIN { printf "total: %.0f s wall clock, %s cases asked per property\n", e - s, n }'
exit "$status"
