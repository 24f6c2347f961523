#!/usr/bin/env bash
# The boot loader for real: a profile's `[bootloader] cmdline` through GRUB in a Debian 12
# root, with the real update-grub.
#   tests/boot/grub.sh [BINDIR]     (as root; BINDIR holds cleanroomd and cleanroomctl,
#                                   default target/debug)
# The daemon runs on this machine with --host-root at the Debian root, so it writes the
# root's /etc/default/grub.d and runs the root's update-grub chrooted there: nothing of
# this machine's /etc or /boot is read or written. Checked: apply writes the drop-in,
# update-grub really runs and the generated /boot/grub/grub.cfg has the arguments on the
# normal entries (not on the recovery ones); apply and verify say `pending reboot` (this
# machine's /proc/cmdline lacks them); revert removes the drop-in and the regenerated
# grub.cfg lacks them; the journal is empty again.
#
# Why a loop device numbered 10 or more, and the image file bound at its own path:
# grub-mkconfig asks grub-probe for the device of / and of /boot. In a chroot onto a plain
# directory there is none (the mount is the host's), so the root lives in an ext4 image on
# a loop device, mounted at the root's directory. grub-probe follows a loop device to its
# backing file, which must be visible at the same path inside the chroot (bound there);
# and GRUB's 10_linux gives up on `/dev/loop[0-9]` ("devices loop-mounted from files"),
# matching one digit only, so a two-digit loop device is taken. The root has GRUB's
# packages (grub-pc, debootstrapped and cached like the package tests' root) but no
# kernel: an empty /boot/vmlinuz-* stands in, as 10_linux only lists the files.
#
# The root is cached as /var/cache/cleanroom-nspawn/bookworm-grub.tar.zst
# (CLEANROOM_NSPAWN_CACHE); CI=true builds it afresh. Prints PASS/FAIL per check and
# "N passed, M failed"; exits 1 on a failure.
set -uo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/../.." || exit 2
# shellcheck source=packaging/test/common.sh
. packaging/test/common.sh
[ "$(id -u)" = 0 ] || { echo "grub.sh: needs root (loop devices, mounts, chroot)" >&2; exit 2; }
for tool in debootstrap zstd losetup mkfs.ext4 mount umount chroot; do
    command -v "$tool" >/dev/null || { echo "grub.sh: missing $tool (scripts/setup installs it)" >&2; exit 2; }
done
bindir=$(realpath -e "${1:-target/debug}") || exit 2
for b in cleanroomd cleanroomctl; do
    [ -x "$bindir/$b" ] || { echo "grub.sh: no $bindir/$b (cargo build --workspace --bins)" >&2; exit 2; }
done

t_start=$SECONDS
cache=${CLEANROOM_NSPAWN_CACHE:-/var/cache/cleanroom-nspawn}
tarball=$cache/bookworm-grub.tar.zst
work=$(mktemp -d /var/tmp/cleanroom-grub.XXXXXX)
root=$work/root image=$work/root.img loop='' daemon_pid=''
ARGS=(nohz_full=1 rcu_nocbs=1 isolcpus=managed_irq,domain,1)

cleanup() {
    set +e
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    local m
    for m in $(awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m"; done
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# attach_loop: the image on the first free loop device from /dev/loop10 on (see above).
attach_loop() {
    local n
    for n in $(seq 10 63); do
        [ -b "/dev/loop$n" ] || mknod "/dev/loop$n" b 7 "$n" 2>/dev/null
        if losetup "/dev/loop$n" "$image" 2>/dev/null; then
            loop=/dev/loop$n
            return 0
        fi
    done
    return 1
}

# make_root: the cached Debian root with GRUB in an ext4 image on a loop device, mounted
# at $root, with /proc and /dev for grub-probe, the image at its own path for the same.
make_root() {
    if [ "${CI:-}" = true ] || [ ! -s "$tarball" ]; then
        build_debian_root "$tarball" grub-pc "$work" || return 1
        rm -rf --one-file-system "$work/bootstrap"
    else
        echo "Debian root with GRUB from the cache: $tarball ($(du -h "$tarball" | cut -f1))"
    fi
    truncate -s 2G "$image" && mkfs.ext4 -q -F "$image" || return 1
    attach_loop || { echo "no free loop device from /dev/loop10 on"; return 1; }
    mkdir "$root" && mount "$loop" "$root" || return 1
    zstd -dcq "$tarball" | tar -C "$root" --numeric-owner --xattrs -xpf - || return 1
    mount -t proc proc "$root/proc" && mount --bind /dev "$root/dev" || return 1
    mkdir -p "$root$work" && touch "$root$image" && mount --bind "$image" "$root$image" || return 1
    : >"$root/boot/vmlinuz-6.1.0-0-cleanroom-test"
    echo "Debian root on $loop at $root"
}

# ctl ARGS...: cleanroomctl against the test's daemon.
ctl() { CLEANROOM_SOCKET=$work/cr.sock timeout 600 "$bindir/cleanroomctl" "$@"; }
# linux_lines FILTER: the `linux` lines of the root's grub.cfg, recovery entries' or not.
linux_lines() {
    local cfg=$root/boot/grub/grub.cfg
    [ -f "$cfg" ] || return 0
    if [ "$1" = recovery ]; then
        grep -E '^\s*linux\s' "$cfg" | grep -E '\s(single|recovery)(\s|$)'
    else
        grep -E '^\s*linux\s' "$cfg" | grep -vE '\s(single|recovery)(\s|$)'
    fi
}
# has_args LINES: every line holds every argument (and there is a line).
has_args() {
    local l a
    [ -n "$1" ] || return 1
    while IFS= read -r l; do
        for a in "${ARGS[@]}"; do [[ " $l " == *" $a "* ]] || return 1; done
    done <<<"$1"
}
# lacks_args LINES: no line holds any argument.
lacks_args() { local a; for a in "${ARGS[@]}"; do [[ $1 == *"$a"* ]] && return 1; done; return 0; }

if ! make_root; then
    fail "make the Debian root with GRUB" "see above"
    summary
    exit 1
fi
expect "the root has no grub.cfg before (debootstrap makes none)" no "$([ -e "$root/boot/grub/grub.cfg" ] && echo yes || echo no)"
host_dropin_before=$(ls -l /etc/default/grub.d/cleanroom.cfg 2>&1)

mkdir -p "$work/profiles" "$work/state"
{
    echo '[profile]'
    echo 'summary = "boot loader test: isolate CPU 1 from the next boot"'
    echo '[bootloader]'
    printf 'cmdline = [%s]\n' "$(printf '"%s", ' "${ARGS[@]}" | sed 's/, $//')"
} >"$work/profiles/crboot.toml"
printf '[tuning]\nprofile_dirs = ["%s"]\n' "$work/profiles" >"$work/cleanroomd.toml"
"$bindir/cleanroomd" --config "$work/cleanroomd.toml" --socket "$work/cr.sock" \
    --state-dir "$work/state" --host-root "$root" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
if ! wait_until 30 ctl ping; then
    fail "start cleanroomd with --host-root $root" "$(tail -n 20 "$work/daemon.log")"
    summary
    exit 1
fi

out=$(ctl profile apply crboot 2>&1)
expect "profile apply crboot (exit status)" 0 "$?"
expect_match "apply says pending reboot (this machine's /proc/cmdline lacks the arguments)" \
    'bootloader cmdline \(GRUB drop-in\).*pending reboot' "$(oneline "$out")"
dropin=$(cat "$root/etc/default/grub.d/cleanroom.cfg" 2>&1)
expect "the drop-in appends the arguments to GRUB_CMDLINE_LINUX_DEFAULT" \
    "GRUB_CMDLINE_LINUX_DEFAULT=\"\${GRUB_CMDLINE_LINUX_DEFAULT}\"' ${ARGS[*]}'" "$(grep '^GRUB_CMDLINE' <<<"$dropin")"
check "update-grub ran: the root has a grub.cfg" test -s "$root/boot/grub/grub.cfg"
normal=$(linux_lines normal)
check "grub.cfg's entries boot with the arguments ($(oneline "$normal"))" has_args "$normal"
recovery=$(linux_lines recovery)
check "grub.cfg's recovery entries do not ($(oneline "$recovery"))" test -n "$recovery"
check "... they lack every argument" lacks_args "$recovery"
out=$(ctl --json profile verify 2>&1)
expect "profile verify (exit status: a pending reboot is not drift)" 0 "$?"
expect_match "verify says pending_reboot" '"status":"pending_reboot"' "$out"
expect_match "the journal holds the drop-in's original (no file)" '"journal_entries":1' \
    "$(ctl --json profile active 2>&1)"

out=$(ctl profile revert 2>&1)
expect "profile revert (exit status)" 0 "$?"
expect_match "revert restored the drop-in's original" 'bootloader cmdline \(GRUB drop-in\).*restored' "$(oneline "$out")"
expect "the drop-in is gone" no "$([ -e "$root/etc/default/grub.d/cleanroom.cfg" ] && echo yes || echo no)"
normal=$(linux_lines normal)
check "grub.cfg was made again, with entries" test -n "$normal"
check "... and no entry has the arguments ($(oneline "$normal"))" lacks_args "$normal"
expect_match "the journal is empty" '"journal_entries":0' "$(ctl --json profile active 2>&1)"
expect "this machine's /etc/default/grub.d is as it was" "$host_dropin_before" \
    "$(ls -l /etc/default/grub.d/cleanroom.cfg 2>&1)"

echo "grub.sh: $((SECONDS - t_start))s"
summary
[ "$failed" -eq 0 ]
