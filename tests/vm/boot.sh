#!/usr/bin/env bash
# A boot with a partition's kernel arguments, inside ../shared/tools/vm (Debian 12, systemd
# as PID 1), booted with them as the boot loader would pass them:
#   CLEANROOM_VM_APPEND="nohz_full=1 rcu_nocbs=1 isolcpus=managed_irq,domain,1" \
#       ../shared/tools/vm run --share "$PWD" -- bash tests/vm/boot.sh target/debug
# The VM boots its kernel directly (no boot loader to write to), so the boot-loader knob
# is unsupported here; what this checks is verify's reading of the running kernel.
set -uo pipefail
bin=$(realpath "${1:-target/debug}")
passed=0 failed=0
check() { # check NAME CONDITION...
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
# The daemon in a leaf of the service's cgroup, this script in another (as tests/vm/v2.sh).
svc=/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
mkdir -p "$svc/script" "$svc/cleanroomd"
for p in $(cat "$svc/cgroup.procs"); do echo "$p" > "$svc/script/cgroup.procs" 2>/dev/null; done
for c in $(cat "$svc/cgroup.controllers"); do echo "+$c" > "$svc/cgroup.subtree_control"; done
work=$(mktemp -d)
chmod 755 "$work"
mkdir -p "$work/profiles"
printf '[tuning]\nprofile_dirs = ["%s"]\n' "$work/profiles" > "$work/c.toml"
printf '[partition]\nisolated = "1"\nkernel_args = true\n' > "$work/profiles/part.toml"
sock=$work/d.sock
( echo "$BASHPID" > "$svc/cleanroomd/cgroup.procs"
  exec "$bin/cleanroomd" --config "$work/c.toml" --socket "$sock" --state-dir "$work/state" 2> "$work/log" ) &
daemon=$!
ctl() { "$bin/cleanroomctl" --socket "$sock" "$@"; }
for _ in $(seq 1 300); do ctl ping >/dev/null 2>&1 && break; sleep 0.05; done

check "booted with the partition's arguments" grep -q "isolcpus=managed_irq,domain,1" /proc/cmdline
ctl --json profile apply part > "$work/apply.json" 2>&1
check "the boot-loader knob is unsupported without a boot loader" \
    grep -q '"knob":"bootloader cmdline"[^}]*"status":"unsupported"' "$work/apply.json"
ctl --json profile verify > "$work/verify.json" 2>&1
check "verify: the running kernel has the derived arguments (applied)" \
    grep -q '"path":"/proc/cmdline"[^}]*"status":"applied"' "$work/verify.json"
ctl profile verify > "$work/verify.txt" 2>&1
check "and says so in words" grep -q "booted with every argument" "$work/verify.txt"
ctl --json profile revert > /dev/null 2>&1
kill -TERM "$daemon"; wait "$daemon"
[ "$failed" -eq 0 ] || { cat "$work/apply.json" "$work/verify.json" "$work/verify.txt"; echo "--- daemon log"; cat "$work/log"; }
rm -rf "$work"
echo "vm boot: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
