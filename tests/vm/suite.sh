#!/usr/bin/env bash
# Parallel exclusive steps of a suite on different cores, inside ../shared/tools/vm with
# three vCPUs (this host has two: its isolation pool has room for one exclusive step at a
# time), as root in a Delegate=yes service:
#   ../shared/tools/vm run --cpus 3 --share "$PWD" -- bash tests/vm/suite.sh target/debug
# Uses the binaries built on the host. Prints one line per check and "N passed, N failed".
source "$(dirname "$0")/lib.sh" "$@"
leaves

work=$(mktemp -d)
chmod 755 "$work"
sock=$work/d.sock
# CPUs 1 and 2 for exclusive runs; CPU 0 stays the system's.
printf '[runs]\nisolation_cpus = "1-2"\n' > "$work/c.toml"
( echo "$BASHPID" > "$svc/cleanroomd/cgroup.procs"
  exec "$bin/cleanroomd" --config "$work/c.toml" --socket "$sock" --state-dir "$work/state" 2> "$work/log" ) &
daemon=$!
for _ in $(seq 1 300); do "$bin/cleanroomctl" --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done

# Each step holds its core until the other has started (a file each writes in the shared
# working directory, which a file-system clean room keeps): they can only both pass by
# running at once.
cat > "$work/par.toml" <<'TOML'
[suite]
name = "par"
parallel = 2
timeout = "60s"

[[step]]
name = "left"
exclusive = true
shell = "touch left.up; i=0; while [ ! -e right.up ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; test -e right.up && grep Cpus_allowed_list /proc/self/status"

[[step]]
name = "right"
exclusive = true
shell = "touch right.up; i=0; while [ ! -e left.up ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; test -e left.up && grep Cpus_allowed_list /proc/self/status"
TOML
out=$("$bin/cleanroomctl" --socket "$sock" --json test "$work/par.toml" 2>"$work/test.err")
rc=$?
check "both exclusive steps pass, running at once" test "$rc" = 0
cpus=$(echo "$out" | grep -o 'Cpus_allowed_list:\\t[0-9-]*' | sed 's/.*\\t//' | sort | tr '\n' ' ')
check "on different cores (1 and 2): got '$cpus'" test "$cpus" = "1 2 "
[ "$rc" = 0 ] || { cat "$work/test.err"; echo "$out"; tail -n 20 "$work/log"; }

kill -TERM "$daemon"; wait "$daemon" 2>/dev/null
echo "suite vm: $passed passed, $failed failed"
[ "$failed" = 0 ]
