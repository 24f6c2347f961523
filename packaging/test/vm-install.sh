#!/usr/bin/env bash
# Installs the .deb in ../shared/tools/vm (Debian 12, systemd as PID 1, pure cgroup v2) and
# checks what systemd-nspawn cannot show (nspawn gives the container no cgroup controllers):
# the socket listens, the service runs in its delegated subtree, an exclusive run with a
# memory limit lands in the shield's cpuset partition with memory.max set, purge cleans.
#   packaging/test/vm-install.sh DEB         (as root; packaging/test-install.sh runs it)
# Holds /tmp/cleanroom-test.lock unless an ancestor holds it. Prints PASS/FAIL per check and
# "vm: N passed, M failed"; exits non-zero on a failure.
# Inside the VM it runs itself as `vm-install.sh --guest DEB`.
set -uo pipefail
here=$(dirname "$(realpath "$0")")
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

guest() {
    local deb=$1 out rc
    # The vm tool mounts its control share (9p) at /run/cleanroom, the package's socket
    # directory, where systemd cannot create a socket. It goes aside while the package is
    # here and comes back at the end: the tool's guest script writes COMMAND's exit status
    # into it after we return. (A bind and a lazy unmount, not mount --move: the tool's
    # script runs from that share, and /run is a shared mount, which --move refuses.)
    mkdir -p /run/vm-ctl
    mount --bind /run/cleanroom /run/vm-ctl && umount -l /run/cleanroom && rmdir /run/cleanroom ||
        { echo "cannot move the vm tool's control share aside"; return 1; }
    restore() {
        dpkg -s cleanroom >/dev/null 2>&1 && dpkg --purge cleanroom >/dev/null 2>&1
        mkdir -p /run/cleanroom && mount --bind /run/vm-ctl /run/cleanroom && umount -l /run/vm-ctl
    }
    trap restore EXIT

    local before
    before=$(leftovers) # the vm tool's own files mention cleanroom too
    check "vm: dpkg -i $(basename "$deb")" timeout 120 dpkg -i "$deb"
    expect "vm: cleanroomd.socket enabled and active" "enabled active" \
        "$(systemctl is-enabled cleanroomd.socket) $(systemctl is-active cleanroomd.socket)"
    out=$(timeout 60 cleanroomctl --json status 2>&1)
    expect_match "vm: the first client call starts the daemon, which sees cgroup v2" '"cgroup":"v2"' "$out"
    local svc pid
    svc=$(systemctl show -p ControlGroup --value cleanroomd.service)
    pid=$(systemctl show -p MainPID --value cleanroomd.service)
    expect_match "vm: the daemon lives in its service's delegated subtree ($svc)" "^0::$svc/" \
        "$(cat "/proc/$pid/cgroup" 2>&1)"

    local dir=/run/vm-install client where
    mkdir -p "$dir"
    # A root caller's run sees its own cgroup as / (a cgroup namespace, its cgroup bound
    # over the mount): where it runs is read from outside while it waits on a fifo (the
    # timeouts only keep a run that never starts from hanging the test).
    mkfifo "$dir/pid" "$dir/done"
    timeout 120 cleanroomctl --json run --exclusive --memory 64M -- \
        sh -c "cat /sys/fs/cgroup/memory.max > $dir/max; echo \$\$ > $dir/pid; read x < $dir/done" \
        >"$dir/out" 2>&1 &
    client=$!
    where=$(cut -d: -f3 "/proc/$(timeout 60 cat "$dir/pid")/cgroup" 2>&1)
    timeout 60 sh -c "echo > '$dir/done'"
    wait "$client"
    rc=$?
    out=$(cat "$dir/out")
    expect "vm: run --exclusive --memory 64M succeeds" 0 "$rc"
    [ "$rc" = 0 ] || echo "$out" | sed 's/^/    /'
    expect_match "vm: ... shielded by a cpuset partition" '"shield":"partition"' "$out"
    expect_match "vm: ... the command ran in a run cgroup inside the partition" \
        '^/cleanroom-exclusive-[^/]+/run-' "$where"
    expect "vm: ... whose memory.max is 64 MiB" 67108864 "$(cat "$dir/max" 2>&1)"
    expect "vm: ... and the partition is gone afterwards" "" \
        "$(ls -d /sys/fs/cgroup/cleanroom-exclusive-* 2>/dev/null)"
    out=$(timeout 60 setpriv --reuid=nobody --regid=nogroup --clear-groups -- cleanroomctl status 2>&1)
    expect "vm: an outsider is kept out by the socket's permissions (exit 77)" 77 "$?"

    check "vm: dpkg --purge cleanroom" timeout 120 dpkg --purge cleanroom
    expect "vm: nothing else named cleanroom is left (units, socket, state, config, sysctl.d)" "" \
        "$(new_leftovers "$before")"
    expect "vm: the socket's directory /run/cleanroom is gone" "" "$(ls -d /run/cleanroom 2>/dev/null)"
    expect "vm: systemd knows no cleanroomd unit any more" "" \
        "$(systemctl list-unit-files --no-legend 'cleanroomd*'; systemctl list-units --all --no-legend 'cleanroomd*')"
    rm -rf "$dir"
    echo "vm: $(summary)"
    [ "$failed" -eq 0 ]
}

if [ "${1:-}" = --guest ]; then
    guest "$2"
    exit
fi

[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: packaging/test/vm-install.sh DEB" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "vm-install.sh: needs root (the vm tool)" >&2; exit 2; }
deb=$(realpath "$1")
hold_test_lock "$here/vm-install.sh" "$deb"
vm=$(realpath "$here/../../../shared/tools/vm" 2>/dev/null)
[ -x "$vm" ] || { echo "vm-install.sh: missing ../shared/tools/vm" >&2; exit 2; }
"$vm" build || { echo "vm-install.sh: vm build failed" >&2; exit 1; }
# The VM sees only what is shared: this script, its helpers and the package (no name in
# the share mentions cleanroom, so the search for leftovers does not find them).
share=$(mktemp -d /var/tmp/vm-install.XXXXXX)
trap 'rm -rf "$share"' EXIT
chmod 755 "$share"
cp "$here/vm-install.sh" "$here/common.sh" "$share/" && cp "$deb" "$share/package.deb" || exit 1
"$vm" run --share "$share" --timeout 600 -- bash vm-install.sh --guest "$share/package.deb"
