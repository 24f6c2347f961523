#!/usr/bin/env bash
# End-to-end tests of the cgroup v2 path, run inside ../shared/tools/vm (Debian 12, systemd
# as PID 1, pure cgroup v2), as root in a Delegate=yes service:
#   ../shared/tools/vm run --share "$PWD" -- bash tests/vm/v2.sh target/debug
# Uses the binaries built on the host. Prints one line per check and "N passed, N failed".
source "$(dirname "$0")/lib.sh" "$@"
# field NAME: the value of a top-level scalar field of the JSON object on stdin (the VM has
# no python or jq; cleanroomctl --json prints one compact object).
field() { grep -o "\"$1\":[^,}]*" | head -n1 | cut -d: -f2- | tr -d '"'; }

# The service's cgroup may not hold processes once controllers are enabled for its
# children: this script goes to a leaf of its own, the daemon to another.
leaves
echo "service cgroup $svc: controllers for children: $(cat "$svc/cgroup.subtree_control")"

work=$(mktemp -d)
chmod 755 "$work"
sock=$work/d.sock
mkdir -p "$work/profiles"
printf '[tuning]\nprofile_dirs = ["%s"]\n' "$work/profiles" > "$work/c.toml"
# A profile's partition: CPU 1 kept free, and the boot arguments that go with it.
printf '[partition]\nisolated = "1"\nkernel_args = true\n' > "$work/profiles/part.toml"
# A unit pinned whole (AllowedCPUs= through D-Bus) and its processes' nice value.
printf '[[pin]]\nunit = "crpin-test.service"\ncpus = "1"\nmems = "0"\nnice = 3\n' > "$work/profiles/unitpin.toml"
# A partition with the unit pinned inside it.
printf '[partition]\nisolated = "1"\n[[pin]]\nunit = "crpin-test.service"\ncpus = "1"\n' > "$work/profiles/partpin.toml"
( echo "$BASHPID" > "$svc/cleanroomd/cgroup.procs"
  RUST_LOG=info,cleanroomd::run=debug exec "$bin/cleanroomd" --config "$work/c.toml" --socket "$sock" --state-dir "$work/state" 2> "$work/log" ) &
daemon=$!
for _ in $(seq 1 300); do "$bin/cleanroomctl" --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
ctl() { "$bin/cleanroomctl" --socket "$sock" "$@"; }

check "daemon reports cgroup v2" test "$(ctl --json status | field cgroup)" = v2
check "daemon moved itself into a leaf of its delegated subtree" \
    grep -q "/cleanroomd/daemon$" "/proc/$daemon/cgroup"
runs_base=$(ctl --json status | grep -o '"run_cgroups":\["[^"]*' | cut -d'"' -f4)
check "run cgroups live below the daemon's own" test -n "$runs_base" -a -d "$runs_base"
check "controllers enabled for runs" grep -q memory "$runs_base/cgroup.subtree_control"

out=$(ctl --json run --memory 32M -- sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo ${#x}' 2>/dev/null)
check "memory hog ends with reason oom (memory.max, memory.events)" \
    test "$(echo "$out" | field end_reason)" = oom
peak=$(echo "$out" | field max_rss_kb)
check "peak memory from memory.peak stays under the limit" test "$peak" -gt 0 -a "$peak" -le $((32 * 1024 + 64))

out=$(ctl --json --timeout 2s run --pids 32 -- sh -c 'bomb() { bomb | bomb & }; bomb; sleep 1008.5' 2>/dev/null)
reason=$(echo "$out" | field end_reason)
check "fork bomb contained by pids.max and ended by cgroup.kill" test "$reason" = timeout -o "$reason" = exited
check "no process of the fork bomb survives" test -z "$(pgrep -f 'sleep 1008.5')"

out=$(ctl --json run -- sh -c 'setsid sleep 1009.5 & sleep 1009.5 & echo started' 2>/dev/null)
check "setsid'd and background processes are killed (cgroup.kill)" test "$(echo "$out" | field killed)" -ge 2
check "nothing survives the run" test -z "$(pgrep -f 'sleep 1009.5')"

# A root caller's run sees its own cgroup as the root of the cgroup2 mount.
quota=$(ctl run --cpu-percent 50 -- sh -c 'cat "/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max"' 2>/dev/null)
check "cpu quota written to cpu.max" test "$quota" = "50000 100000"

# Performance counters of the run's cgroup (perf_event_open's cgroup mode on the unified
# hierarchy): the task clock of two busy processes against the CPU time cpu.stat counted.
out=$(ctl --json run --measure counters -- sh -c 'w() { i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; }; w & w & wait' 2>/dev/null)
task=$(echo "$out" | field task_clock_ms)
cpu=$(echo "$out" | awk -v u="$(echo "$out" | field user_ms)" -v s="$(echo "$out" | field sys_ms)" 'BEGIN { print u + s }')
echo "counters: task clock $task ms, cpu.stat $cpu ms, context switches $(echo "$out" | field context_switches)"
check "counters: the cgroup's task clock is the CPU time cpu.stat counted" \
    awk -v t="$task" -v c="$cpu" 'BEGIN { d = t - c; if (d < 0) d = -d; exit !(c > 10 && d <= 0.05 * c + 3) }'
check "counters: page faults counted" test "$(echo "$out" | field page_faults)" -gt 0

# clone3(CLONE_INTO_CGROUP): the command is in its run's cgroup from birth, no migration.
# A root caller's run tries to move itself to the root cgroup first; it is seen from
# outside (inside, a cgroup namespace shows its cgroup as /) while it waits on a fifo (the
# timeouts only keep a run that never starts from hanging the script).
mounts=$(grep -E ' - cgroup2? ' /proc/self/mountinfo)
mkfifo "$work/pid" "$work/done"
ctl run -- sh -c "echo \$\$ > /sys/fs/cgroup/cgroup.procs; cat /proc/self/cgroup; echo \$\$ > $work/pid; read x < $work/done" > "$work/inside" 2>&1 &
client=$!
own=$(cat "/proc/$(timeout 60 cat "$work/pid")/cgroup")
timeout 60 sh -c "echo > '$work/done'"
wait "$client"
case "/sys/fs/cgroup${own#0::}" in "$runs_base"/run-*) in_run=yes ;; *) in_run="no: $own" ;; esac
check "the command runs in its run cgroup" test "$in_run" = yes
check "a root caller's run cannot write cgroup.procs (read-only cgroup2 mount)" \
    grep -q "cgroup.procs: Read-only file system" "$work/inside"
check "a root caller's run sees its cgroup as / (cgroup namespace)" grep -qx "0::/" "$work/inside"
check "the host's cgroup mounts are as they were" test "$(grep -E ' - cgroup2? ' /proc/self/mountinfo)" = "$mounts"
check "the run was born in its cgroup (CLONE_INTO_CGROUP)" grep -q "born_in_cgroup=true" "$work/log"
check "no run had to be moved into its cgroup" sh -c "! grep -q born_in_cgroup=false '$work/log'"

out=$(ctl run --isolate pid,mount,net -- sh -c 'echo $$ /proc/[0-9]*; setsid sleep 1010.5 & (sleep 1010.5 &)' 2>/dev/null)
check "--isolate pid: the command is PID 1, alone in its /proc" test "$out" = "1 /proc/1"
check "--isolate pid: nothing survives PID 1" test -z "$(pgrep -f 'sleep 1010.5')"

# A file-system clean room, cloned straight into its cgroup (no helper): writes vanish,
# --collect copies them out as the caller.
mkdir -p "$work/nobody" && chown nobody "$work/nobody"
out=$(cd "$work" && ctl run --user nobody --isolate fs --cwd / --rw none \
    --collect '/var/tmp/*.log' --collect-to "$work/nobody/got" -- \
    sh -c 'echo made > /var/tmp/r.log; echo gone > /var/tmp/r.txt; touch /etc/cr-vm-marker 2>/dev/null && echo wrote; echo ok' 2>/dev/null)
check "--isolate fs: nobody cannot write /etc in the overlay either" test "$out" = ok
check "--isolate fs: nothing reached the host" test ! -e /var/tmp/r.log -a ! -e /etc/cr-vm-marker
check "--collect copies the matching file, owned by the caller" \
    test "$(cat "$work/nobody/got/var/tmp/r.log" 2>/dev/null)" = made -a "$(stat -c %U "$work/nobody/got/var/tmp/r.log" 2>/dev/null)" = nobody
check "--collect leaves what no pattern matches" test ! -e "$work/nobody/got/var/tmp/r.txt"
check "--isolate fs: nothing of the room is mounted on the host" sh -c "! grep -q '$work/state' /proc/self/mountinfo"

# Exclusive: the shield is a cpuset partition here; the kernel takes the CPU from every
# other cgroup, PID 1 included (systemd is ours to move in this VM).
start_daemon() {
    # Into the leaf the first daemon made (its parent now has controllers for children).
    ( echo "$BASHPID" > "$svc/cleanroomd/daemon/cgroup.procs"
      RUST_LOG=info,cleanroomd::run=debug exec "$bin/cleanroomd" --config "$work/c.toml" --socket "$sock" --state-dir "$work/state" 2>> "$work/log" ) &
    daemon=$!
    for _ in $(seq 1 300); do ctl ping >/dev/null 2>&1 && break; sleep 0.05; done
}
if [ "$(cat /sys/devices/system/cpu/online)" != 0 ]; then
    go=$work/go
    mkfifo "$work/where"
    ctl --json run --exclusive --timeout 20s -- sh -c "echo \$\$ > $work/where; while [ ! -e $go ]; do sleep 0.01; done" > "$work/excl.json" 2>/dev/null &
    client=$!
    for _ in $(seq 1 200); do grep -q "Cpus_allowed_list:.0$" /proc/1/status && break; sleep 0.05; done
    check "while an exclusive run holds CPU 1, PID 1 is kept off it" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    check "a process started outside has CPU 1 excluded" sh -c 'grep -q "Cpus_allowed_list:.0$" /proc/self/status'
    part=$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null | head -n1)
    check "the shield is a cpuset partition (cpuset.cpus.partition = root)" \
        test -n "$part" -a "$(cat "$part/cpuset.cpus.partition" 2>/dev/null)" = root
    check "the kernel took CPU 1 from the root cgroup's effective set" \
        test "$(cat /sys/fs/cgroup/cpuset.cpus.effective)" = 0
    check "the exclusive run lives in the partition" \
        grep -q "^0::/cleanroom-exclusive-.*/run-" "/proc/$(timeout 60 cat "$work/where")/cgroup"
    touch "$go"
    wait "$client"
    check "the result names the partition shield" grep -q '"shield":"partition"' "$work/excl.json"
    check "afterwards PID 1 has every CPU again" grep -q "Cpus_allowed_list:.0-1$" /proc/1/status
    check "and the partition is gone" test ! -e "$part"

    # kill -9 mid-run: the next start ends the run and takes the partition down.
    ctl run --exclusive -- sh -c "touch $work/up; exec sleep 1011.5" >/dev/null 2>&1 &
    client=$!
    for _ in $(seq 1 200); do [ -e "$work/up" ] && break; sleep 0.05; done
    kill -KILL "$daemon"; wait "$daemon" 2>/dev/null; wait "$client" 2>/dev/null
    check "a dead daemon left the CPU shielded" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    start_daemon
    check "the next start lowered the shield (PID 1 has CPU 1 again)" grep -q "Cpus_allowed_list:.0-1$" /proc/1/status
    check "and ended the run left in the partition" test -z "$(pgrep -x sleep -a | grep 1011.5)"
    check "and removed the partition" test -z "$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null)"

    # kill -9 again, then what the service's ExecStopPost= runs: the run ends at once,
    # without waiting for a next start.
    rm -f "$work/up"
    ctl run --exclusive -- sh -c "touch $work/up; exec sleep 1011.6" >/dev/null 2>&1 &
    client=$!
    for _ in $(seq 1 200); do [ -e "$work/up" ] && break; sleep 0.05; done
    kill -KILL "$daemon"; wait "$daemon" 2>/dev/null; wait "$client" 2>/dev/null
    check "a killed daemon left its exclusive run going" test -n "$(pgrep -x sleep -a | grep 1011.6)"
    # From the daemon's cgroup, as systemd runs ExecStopPost= in the service's.
    ( echo "$BASHPID" > "$svc/cleanroomd/daemon/cgroup.procs"
      exec "$bin/cleanroomd" --config "$work/c.toml" --state-dir "$work/state" --cleanup 2>> "$work/log" )
    check "cleanroomd --cleanup ended it" test -z "$(pgrep -x sleep -a | grep 1011.6)"
    check "and lowered the shield" grep -q "Cpus_allowed_list:.0-1$" /proc/1/status
    check "and removed the partition" test -z "$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null)"
    start_daemon

    # A profile's [partition]: the same cpuset partition, held while the profile is in
    # force; the kernel takes the CPU from PID 1 and every slice.
    ctl --json profile apply part > "$work/apply.json" 2>&1
    check "a profile with [partition] applies" grep -q '"knob":"partition (isolated CPUs)"[^}]*"status":"applied"' "$work/apply.json"
    check "with its partition up, PID 1 is kept off CPU 1" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    check "and system.slice has CPU 1 no more" \
        test "$(cat /sys/fs/cgroup/system.slice/cpuset.cpus.effective 2>/dev/null)" = 0
    part=$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null | head -n1)
    check "the profile's partition is an isolated cpuset partition" \
        test -n "$part" -a "$(cat "$part/cpuset.cpus.partition" 2>/dev/null)" = isolated
    check "systemd's view agrees: system.slice AllowedCPUs=0" \
        test "$(systemctl show -p AllowedCPUs --value system.slice)" = 0
    check "and init.scope's, and user.slice's" \
        test "$(systemctl show -p AllowedCPUs --value init.scope)$(systemctl show -p AllowedCPUs --value user.slice)" = 00
    ctl --json status > "$work/status.json" 2>&1
    check "status shows the partition" grep -q '"partition":{[^}]*"cpus":"1"' "$work/status.json"
    out=$(ctl run --exclusive -- grep Cpus_allowed_list /proc/self/status 2>/dev/null)
    check "an exclusive run takes its core from the partition" test "$out" = "Cpus_allowed_list:	1"
    check "which stays up after the run" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    ctl --json profile verify > "$work/verify.json" 2>&1
    check "verify: the partition is in force" grep -q '"knob":"partition (isolated CPUs)"[^}]*"status":"ok"' "$work/verify.json"
    check "verify: the kernel was not booted with its arguments (pending reboot)" \
        grep -q '"path":"/proc/cmdline"[^}]*"status":"pending_reboot"' "$work/verify.json"
    # kill -9 with the partition up: the restart (on_start = "reapply") raises it again,
    # the slices' AllowedCPUs kept as journaled.
    kill -9 "$daemon"; wait "$daemon" 2>/dev/null
    start_daemon
    ctl --json profile verify > "$work/verify2.json" 2>&1
    check "after kill -9 and a restart the partition is in force again" \
        grep -q '"knob":"partition (isolated CPUs)"[^}]*"status":"ok"' "$work/verify2.json"
    check "PID 1 still kept off CPU 1" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    check "system.slice still has AllowedCPUs=0" \
        test "$(systemctl show -p AllowedCPUs --value system.slice)" = 0
    ctl --json profile revert > "$work/revert.json" 2>&1
    check "after the revert PID 1 has CPU 1 again" grep -q "Cpus_allowed_list:.0-1$" /proc/1/status
    check "the slices' AllowedCPUs are back (none)" \
        test -z "$(systemctl show -p AllowedCPUs --value system.slice)$(systemctl show -p AllowedCPUs --value init.scope)$(systemctl show -p AllowedCPUs --value user.slice)"
    check "and system.slice has every CPU again" \
        test "$(cat /sys/fs/cgroup/system.slice/cpuset.cpus.effective 2>/dev/null)" = 0-1
    check "and the profile's partition is gone" test -z "$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null)"
    [ "$failed" -eq 0 ] || cat "$work/apply.json" "$work/verify.json" "$work/verify2.json" "$work/revert.json"

    # A unit rule: AllowedCPUs= set at runtime through systemd's D-Bus API, so the unit is
    # still pinned after a restart; its processes get the rule's nice at exec.
    printf '[Service]\nExecStart=/bin/sleep 1000.7\n' > /run/systemd/system/crpin-test.service
    systemctl daemon-reload && systemctl start crpin-test.service
    mainpid() { systemctl show -p MainPID --value crpin-test.service; }
    first=$(mainpid)
    ctl --json profile apply unitpin > "$work/unit.json" 2>&1
    check "a unit rule applies" grep -q '"ok":true' "$work/unit.json"
    check "the unit's AllowedCPUs is the rule's" test "$(systemctl show -p AllowedCPUs --value crpin-test.service)" = 1
    check "and its AllowedMemoryNodes" test "$(systemctl show -p AllowedMemoryNodes --value crpin-test.service)" = 0
    check "its process runs on CPU 1" grep -q "Cpus_allowed_list:.1$" "/proc/$first/status"
    check "with the rule's nice" test "$(awk '{print $19}' "/proc/$first/stat")" = 3
    systemctl restart crpin-test.service
    second=$(mainpid)
    check "restarted, it is another process" test "$second" != "$first" -a "$second" != 0
    for _ in $(seq 1 100); do [ "$(awk '{print $19}' "/proc/$second/stat")" = 3 ] && break; sleep 0.05; done
    check "still on CPU 1 after systemctl restart" grep -q "Cpus_allowed_list:.1$" "/proc/$second/status"
    check "and placed again (nice)" test "$(awk '{print $19}' "/proc/$second/stat")" = 3
    ctl --json profile verify > "$work/unitv.json" 2>&1
    check "verify: the unit is placed" grep -q '"ok":true' "$work/unitv.json"
    ctl --json profile revert > "$work/unitr.json" 2>&1
    check "revert: the unit's AllowedCPUs is back (none)" test -z "$(systemctl show -p AllowedCPUs --value crpin-test.service)"
    check "and its AllowedMemoryNodes (none)" test -z "$(systemctl show -p AllowedMemoryNodes --value crpin-test.service)"
    # systemd realizes cgroup settings after it answers: the mask follows shortly.
    for _ in $(seq 1 100); do grep -q "Cpus_allowed_list:.0-1$" "/proc/$second/status" && break; sleep 0.05; done
    check "its process has every CPU again" grep -q "Cpus_allowed_list:.0-1$" "/proc/$second/status"
    [ "$failed" -eq 0 ] || { grep Cpus_allowed "/proc/$second/status"; cat "/sys/fs/cgroup/system.slice/crpin-test.service/cpuset.cpus" "/sys/fs/cgroup/system.slice/crpin-test.service/cpuset.cpus.effective" /sys/fs/cgroup/system.slice/cgroup.subtree_control; }
    check "and its nice back" test "$(awk '{print $19}' "/proc/$second/stat")" = 0
    [ "$failed" -eq 0 ] || cat "$work/unit.json" "$work/unitv.json" "$work/unitr.json"

    # A partition with a service pinned inside it: a kernel partition would admit only its
    # own cgroup, so it is kept by affinity, and the slices keep the CPU for the service.
    ctl --json profile apply partpin > "$work/pp.json" 2>&1
    check "a partition with a unit pinned inside applies" grep -q '"ok":true' "$work/pp.json"
    ctl --json status > "$work/pps.json" 2>&1
    check "it is kept by affinity" grep -q '"partition":{[^}]*"method":"affinity"' "$work/pps.json"
    check "PID 1 is kept off its CPU" grep -q "Cpus_allowed_list:.0$" /proc/1/status
    check "the unit runs on it" grep -q "Cpus_allowed_list:.1$" "/proc/$(mainpid)/status"
    check "system.slice keeps the CPU (no AllowedCPUs)" test -z "$(systemctl show -p AllowedCPUs --value system.slice)"
    systemctl restart crpin-test.service
    check "restarted, the unit still runs on it" grep -q "Cpus_allowed_list:.1$" "/proc/$(mainpid)/status"
    ctl --json profile revert > "$work/ppr.json" 2>&1
    check "after the revert PID 1 has it again" grep -q "Cpus_allowed_list:.0-1$" /proc/1/status
    for _ in $(seq 1 100); do grep -q "Cpus_allowed_list:.0-1$" "/proc/$(mainpid)/status" && break; sleep 0.05; done
    check "and so has the unit" grep -q "Cpus_allowed_list:.0-1$" "/proc/$(mainpid)/status"
    [ "$failed" -eq 0 ] || cat "$work/pp.json" "$work/pps.json" "$work/ppr.json"
    systemctl stop crpin-test.service
fi

kill -TERM "$daemon"; wait "$daemon"
check "daemon stops cleanly and removes its run cgroups" test ! -e "$runs_base"
[ "$failed" -eq 0 ] || { echo "--- daemon log"; cat "$work/log"; }
rm -rf "$work"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
