#!/usr/bin/env bash
# A boot with a partition's kernel arguments, inside ../shared/tools/vm (Debian 12, systemd
# as PID 1), booted with them as the boot loader would pass them:
#   CLEANROOM_VM_APPEND="nohz_full=1 rcu_nocbs=1 isolcpus=managed_irq,domain,1" \
#       ../shared/tools/vm run --share "$PWD" -- bash tests/vm/boot.sh target/debug
# The VM boots its kernel directly (no boot loader to write to), so the boot-loader knob
# is unsupported here; what this checks is verify's reading of the running kernel.
source "$(dirname "$0")/lib.sh" "$@"
leaves
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
