#!/usr/bin/env bash
# Installs the release packages into a real systemd and checks what an admin gets:
#   packaging/test-install.sh [DEB RPM]      (as root; without arguments it runs
#                                            packaging/build and takes its last two lines)
# This host has no systemd as PID 1, so each package goes into a fresh Debian 12 root booted
# with systemd-nspawn (systemd as the container's PID 1, private network so net.* sysctls
# are the container's own), entered with nsenter. The .deb: apt install, socket enabled and
# listening, the service started by the first client call, its StatusText, root / group
# cleanroom / outsider (exit 77), apply and revert of a net.* profile checked in /proc/sys,
# stop and re-activation, reload, kill -9 (systemd restarts it, the journal is recovered,
# revert puts the originals back), journalctl, purge leaves nothing. The .rpm: the same in
# another fresh root, rpm -ivh --nodeps, rpm -e. Then packaging/test/vm-install.sh checks the
# .deb in a cgroup v2 VM (runs with limits in the shield's partition); CLEANROOM_SKIP_VM=1
# skips that part.
# The Debian root is cached as /var/cache/cleanroom-nspawn/bookworm-HASH.tar.zst (HASH: of the
# package list, root_packages below)
# (CLEANROOM_NSPAWN_CACHE); CI=true builds it afresh. Mirror: CLEANROOM_NSPAWN_MIRROR, else
# this host's apt sources. Holds /tmp/cleanroom-test.lock unless an ancestor holds it.
# Prints PASS/FAIL per check with the reason and "N passed, M failed"; exits 1 on a failure.
set -uo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.." || exit 2
# shellcheck source=packaging/test/common.sh
. packaging/test/common.sh
[ "$(id -u)" = 0 ] || { echo "test-install.sh: needs root (systemd-nspawn)" >&2; exit 2; }
for tool in systemd-nspawn debootstrap nsenter zstd flock; do
    command -v "$tool" >/dev/null || { echo "test-install.sh: missing $tool (scripts/setup installs it)" >&2; exit 2; }
done

if [ $# -eq 0 ]; then
    buildlog=$(mktemp)
    packaging/build | tee "$buildlog" || { rm -f "$buildlog"; echo "test-install.sh: packaging/build failed" >&2; exit 1; }
    mapfile -t built < <(tail -n 2 "$buildlog")
    set -- "${built[@]}"
    rm -f "$buildlog"
fi
[ $# -eq 2 ] || { echo "usage: packaging/test-install.sh [DEB RPM]" >&2; exit 2; }
deb=$(realpath -e "$1") && rpm=$(realpath -e "$2") ||
    { echo "test-install.sh: no such package: $1 / $2" >&2; exit 2; }
case "$deb $rpm" in *.deb\ *.rpm) ;; *) echo "usage: packaging/test-install.sh [DEB RPM]" >&2; exit 2 ;; esac
hold_test_lock "$self" "$deb" "$rpm"

t_start=$SECONDS
cache=${CLEANROOM_NSPAWN_CACHE:-/var/cache/cleanroom-nspawn}
# The packages the root holds besides minbase: systemd to boot it, rpm for the .rpm
# (debootstrap), and ansible-core with python3-apt for its apt module, to run the
# collection's role inside it (apt-get). The cache is named by them: a changed list builds
# a new root.
root_packages=systemd,systemd-sysv,dbus,rpm
root_apt_packages="ansible-core python3-apt"
tarball=$cache/bookworm-$(printf '%s %s' "$root_packages" "$root_apt_packages" | sha256sum | cut -c1-12).tar.zst
work=$(mktemp -d /var/tmp/cleanroom-nspawn.XXXXXX)
nspawn_pid='' leader='' cg=''
PROFILE=cr-pkgtest

# --- the container ---------------------------------------------------------------------
# Stops the container (orderly, then by force), reaps it, removes its cgroups.
stop_container() {
    [ -n "$cg" ] || return 0
    if [ -n "$nspawn_pid" ]; then
        kill -TERM "$nspawn_pid" 2>/dev/null      # nspawn asks the container's PID 1 to power off
        for _ in $(seq 1 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null
        wait "$nspawn_pid" 2>/dev/null
    fi
    local h d
    for h in systemd unified; do
        d=/sys/fs/cgroup/$h/$cg
        [ -d "$d" ] || continue
        for _ in $(seq 1 50); do # whatever is left of the container is killed
            local procs
            procs=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
            [ -z "$procs" ] && break
            kill -KILL $procs 2>/dev/null
            sleep 0.1
        done
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ ! -d "$d" ] || echo "test-install.sh: could not remove cgroup $d" >&2
    done
    nspawn_pid='' leader='' cg=''
}
cleanup() {
    set +e
    stop_container
    local m
    for m in $(awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m"; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_ct COMMAND...: runs COMMAND as root inside the container, clean environment, timeboxed.
in_ct() {
    timeout -k 5 "${CT_TIMEOUT:-60}" nsenter -t "$leader" -a -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"
}
# as_user USER COMMAND...: the same as USER with USER's groups.
as_user() { local u=$1; shift; in_ct setpriv --reuid="$u" --regid="$u" --init-groups -- "$@"; }

# find_leader: the container's PID 1 is the child of nspawn that is PID 1 in its namespace.
find_leader() {
    local c
    for c in $(cat "/proc/$nspawn_pid"/task/*/children 2>/dev/null); do
        if grep -qE "^NSpid:[[:space:]]+${c}[[:space:]]+1$" "/proc/$c/status" 2>/dev/null; then
            leader=$c
            return 0
        fi
    done
    return 1
}
booted() { in_ct systemctl is-system-running 2>/dev/null | grep -qxE 'running|degraded'; }

# boot NAME ROOT: boots ROOT under systemd-nspawn in cgroups of its own; waits for the boot.
boot() {
    cg=cleanroom-nspawn-$$-$1
    local h
    for h in systemd unified; do mkdir "/sys/fs/cgroup/$h/$cg" || return 1; done
    ( for h in systemd unified; do echo "$BASHPID" >"/sys/fs/cgroup/$h/$cg/cgroup.procs"; done
      exec systemd-nspawn -q -D "$2" -b --register=no --keep-unit --console=pipe --private-network
    ) </dev/null >"$work/$1.console" 2>&1 &
    nspawn_pid=$!
    local t0=$SECONDS
    if ! wait_until 30 find_leader || ! wait_until 90 booted; then
        echo "--- $1: the container did not boot; its console:"
        tail -n 30 "$work/$1.console"
        return 1
    fi
    echo "$1: container booted in $((SECONDS - t0))s (PID 1 is $leader on the host)"
}

# --- the Debian root ---------------------------------------------------------------------
build_root() { build_debian_root "$tarball" "$root_packages" "$work" "$root_apt_packages"; }
# new_root NAME: a fresh copy of the cached root at $work/NAME, with the packages in /root/pkgs.
new_root() {
    local r=$work/$1
    mkdir "$r" && zstd -dcq "$tarball" | tar -C "$r" --numeric-owner --xattrs -xpf - || return 1
    echo "cleanroom-$1" >"$r/etc/hostname"
    mkdir -p "$r/root/pkgs" && cp "$deb" "$rpm" "$r/root/pkgs/"
}

# --- the checks, the same for both packages -------------------------------------------------
sysctl_keys=(net.core.somaxconn net.ipv4.tcp_fastopen net.ipv4.ip_local_port_range)
profile_values="1234 3 20000 40000"
read_sysctls() { # one line: the values of sysctl_keys, whitespace-normalized
    local k out=()
    for k in "${sysctl_keys[@]}"; do out+=("$(in_ct cat "/proc/sys/${k//.//}")"); done
    oneline "${out[*]}"
}
status_text() { in_ct systemctl show -p StatusText --value cleanroomd.service; }
main_pid() { in_ct systemctl show -p MainPID --value cleanroomd.service; }
journal_count() { in_ct journalctl -u cleanroomd.service --no-pager -o cat | grep -c -- "$1"; }
restarted_from() { # restarted_from PID: a new main process is up and active
    local p
    p=$(main_pid)
    [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ] && [ "$(in_ct systemctl is-active cleanroomd.service)" = active ]
}
# reload: systemctl reload; on failure the reason is the unit's status and last log lines.
reload() {
    in_ct systemctl reload cleanroomd.service && return 0
    in_ct systemctl status --no-pager -n 4 cleanroomd.service | grep -E 'Process:|cleanroomd\[|systemd\['
    return 1
}
journal_has() { [ "$(journal_count "$2")" -gt "$1" ]; } # journal_has BEFORE TEXT

# suite KIND ROOT INSTALL... -- REMOVE...: every check for one package in the booted container.
suite() {
    local k=$1 root=$2 install=() remove=() out rc
    shift 2
    while [ "$1" != -- ]; do install+=("$1"); shift; done
    shift
    remove=("$@")

    local before
    before=$(in_ct bash -c "$(declare -f leftovers); leftovers")
    # The drop-in's somaxconn is 4096: the install raises a lower live value and never
    # lowers a higher one (the container's network namespace has its own).
    local somaxconn_before somaxconn_after
    case $k in
        deb) somaxconn_before=8192 somaxconn_after=8192 ;;
        *) somaxconn_before=1000 somaxconn_after=4096 ;;
    esac
    in_ct sh -c "echo $somaxconn_before >/proc/sys/net/core/somaxconn"
    check "$k: install (${install[*]})" in_ct "${install[@]}"
    expect "$k: the install left somaxconn $somaxconn_before at $somaxconn_after (ceilings only raise)" \
        "$somaxconn_after" "$(in_ct cat /proc/sys/net/core/somaxconn)"
    check "$k: groups cleanroom and cleanroom-admin exist" in_ct getent group cleanroom cleanroom-admin
    check "$k: binaries, config, sysctl drop-in, profiles, example, man pages, completions installed" in_ct sh -c '
        test -x /usr/sbin/cleanroomd && test -x /usr/bin/cleanroomctl &&
        test -f /etc/cleanroom/cleanroomd.toml && test -f /usr/lib/sysctl.d/10-cleanroom.conf &&
        ls /usr/lib/cleanroom/profiles/*.toml >/dev/null &&
        test -f /usr/share/doc/cleanroom/examples/pinned-service.toml &&
        test -n "$(find /usr/share/man -name "cleanroom*")" &&
        test -n "$(find /usr/share -path "*completion*" -name "*cleanroom*")"'
    expect "$k: cleanroomd.socket and .service enabled (the daemon starts at boot)" "enabled enabled" \
        "$(oneline "$(in_ct systemctl is-enabled cleanroomd.socket cleanroomd.service 2>&1)")"
    expect "$k: cleanroomd.socket active" active "$(in_ct systemctl is-active cleanroomd.socket 2>&1)"
    expect "$k: socket file is 0660 root:cleanroom" "660 root cleanroom socket" \
        "$(in_ct stat -c '%a %U %G %F' /run/cleanroom/cleanroomd.sock 2>&1)"
    expect "$k: the service waits for its first client" inactive "$(in_ct systemctl is-active cleanroomd.service 2>&1)"

    # A profile of net.* keys only: the container's own network namespace has them writable.
    local originals
    originals=$(read_sysctls)
    check "$k: the originals ($originals) differ from the test profile's values" \
        test "$originals" != "$profile_values"
    mkdir -p "$root/etc/cleanroom/profiles"
    cat >"$root/etc/cleanroom/profiles/$PROFILE.toml" <<EOF
[profile]
summary = "package test: network keys of the container's own namespace"
[sysctl]
"net.core.somaxconn" = 1234
"net.ipv4.tcp_fastopen" = 3
"net.ipv4.ip_local_port_range" = [20000, 40000]
EOF

    out=$(in_ct cleanroomctl status 2>&1)
    rc=$?
    expect "$k: cleanroomctl status as root (exit status)" 0 "$rc"
    [ "$rc" = 0 ] || echo "$out" | sed 's/^/    /'
    expect "$k: the first client call started the service" active "$(in_ct systemctl is-active cleanroomd.service 2>&1)"
    expect_match "$k: StatusText says no profile, runs counted" '^no profile active, [0-9]+ runs?$' "$(status_text)"

    in_ct useradd -M -U -G cleanroom crrunner && in_ct useradd -M -U croutsider
    out=$(as_user crrunner cleanroomctl --json status 2>&1)
    expect_match "$k: a member of group cleanroom connects (role runner)" '"role":"runner"' "$out"
    out=$(as_user croutsider cleanroomctl status 2>&1)
    rc=$?
    expect "$k: an outsider is kept out by the socket's permissions (exit 77)" 77 "$rc"
    expect_match "$k: ... with a message naming the socket and the group" \
        'permission denied connecting to /run/cleanroom/cleanroomd.sock.*cleanroom' "$(oneline "$out")"

    check "$k: profile apply $PROFILE" in_ct cleanroomctl profile apply "$PROFILE"
    expect "$k: /proc/sys holds the profile's values" "$profile_values" "$(read_sysctls)"
    expect_match "$k: StatusText names the active profile" "^profile $PROFILE active, [0-9]+ runs?$" "$(status_text)"
    check "$k: profile revert" in_ct cleanroomctl profile revert
    expect "$k: /proc/sys holds the originals again" "$originals" "$(read_sysctls)"

    check "$k: systemctl stop cleanroomd.service" in_ct systemctl stop cleanroomd.service
    expect "$k: service stopped, socket still listening" "inactive active" \
        "$(in_ct systemctl is-active cleanroomd.service) $(in_ct systemctl is-active cleanroomd.socket)"
    check "$k: a client call after the stop" in_ct cleanroomctl ping
    expect "$k: ... re-activated the service" active "$(in_ct systemctl is-active cleanroomd.service 2>&1)"
    # A figure, not a check: a client's first call on a stopped service, start-up through
    # socket activation included (the median of five, measured inside the container).
    echo "figure $k: first call on a stopped service (socket activation): $(in_ct sh -c '
        for i in 1 2 3 4 5; do
            systemctl stop cleanroomd.service
            systemctl reset-failed cleanroomd.service  # five starts in 10 s is the limit
            s=$(date +%s%N); cleanroomctl ping >/dev/null; e=$(date +%s%N)
            echo $(( (e - s) / 1000 ))
        done' | sort -n | sed -n 3p) us; a call on the running one: $(in_ct sh -c '
        for i in 1 2 3 4 5; do
            s=$(date +%s%N); cleanroomctl ping >/dev/null; e=$(date +%s%N)
            echo $(( (e - s) / 1000 ))
        done' | sort -n | sed -n 3p) us"

    local pid before
    pid=$(main_pid)
    before=$(journal_count "SIGHUP: configuration reloaded")
    check "$k: systemctl reload cleanroomd" reload
    check "$k: the reload is logged (SIGHUP: configuration reloaded)" \
        wait_until 10 journal_has "$before" "SIGHUP: configuration reloaded"
    expect "$k: same main process after the reload, still active" "$pid active" \
        "$(main_pid) $(in_ct systemctl is-active cleanroomd.service)"
    # A bad file fails the reload itself, names the key, and changes nothing.
    in_ct cp /etc/cleanroom/cleanroomd.toml /etc/cleanroom/cleanroomd.toml.good
    in_ct sh -c 'printf "[limits]\nmax_connections = \"lots\"\n" >/etc/cleanroom/cleanroomd.toml'
    before=$(journal_count "limits.max_connections")
    out=$(in_ct systemctl reload cleanroomd.service 2>&1)
    expect "$k: systemctl reload of a bad cleanroomd.toml fails" 1 "$?"
    check "$k: ... the unit's log names the bad key" \
        wait_until 10 journal_has "$before" "limits.max_connections"
    expect "$k: ... and the daemon serves on, same process" "$pid active" \
        "$(main_pid) $(in_ct systemctl is-active cleanroomd.service)"
    in_ct mv /etc/cleanroom/cleanroomd.toml.good /etc/cleanroom/cleanroomd.toml

    check "$k: profile apply before the kill" in_ct cleanroomctl profile apply "$PROFILE"
    pid=$(main_pid)
    before=$(journal_count "profile $PROFILE re-applied after restart")
    check "$k: kill -9 of the daemon (pid $pid)" in_ct bash -c "kill -9 $pid"
    check "$k: systemd restarted it (new main process, active)" wait_until 20 restarted_from "$pid"
    expect_match "$k: NRestarts counts it" '^[1-9]' "$(in_ct systemctl show -p NRestarts --value cleanroomd.service)"
    check "$k: the restarted daemon recovered the journal (re-applied the profile)" \
        wait_until 10 journal_has "$before" "profile $PROFILE re-applied after restart"
    expect "$k: values after the restart are the profile's" "$profile_values" "$(read_sysctls)"
    expect_match "$k: the profile is still active" "\"profile\":\"$PROFILE\"" \
        "$(in_ct cleanroomctl --json profile active 2>&1)"
    check "$k: revert after the kill" in_ct cleanroomctl profile revert
    expect "$k: ... put the originals back" "$originals" "$(read_sysctls)"

    out=$(in_ct journalctl -u cleanroomd.service --no-pager -o cat 2>&1)
    expect_match "$k: journalctl -u cleanroomd has the daemon's lines (3 starts)" \
        "cleanroomd ready.*cleanroomd ready.*cleanroomd ready" "$(oneline "$out")"

    if [ "$k" = deb ]; then
        deb_upgrade_and_reinstall "$root"
    fi

    # The removal reverts what is applied: the journal dies with the package.
    check "$k: profile apply before the removal" in_ct cleanroomctl profile apply "$PROFILE"
    local conflict=
    if [ "$k" = deb ]; then
        # The daemon stopped (the tuning stays) and its configuration broken: the removal
        # must revert without it (cleanroomd --revert).
        in_ct systemctl stop cleanroomd.service
        in_ct sh -c 'printf "[limits]\nmax_connections = \"lots\"\n" >/etc/cleanroom/cleanroomd.toml'
        expect "$k: ... a stopped daemon keeps the tuning" "$profile_values" "$(read_sysctls)"
    fi
    if [ "$k" = rpm ]; then
        # Someone else changes a knob after the apply: the revert before removal leaves it
        # (a conflict), so the journal of original values must survive the removal.
        conflict=yes
        in_ct sh -c 'echo 2 >/proc/sys/net/ipv4/tcp_fastopen'
    fi
    # The test profile is the admin's file, not the package's: it goes before the removal.
    rm -f "$root/etc/cleanroom/profiles/$PROFILE.toml"
    rmdir "$root/etc/cleanroom/profiles" 2>/dev/null
    out=$(in_ct "${remove[@]}" 2>&1)
    rc=$?
    expect "$k: remove (${remove[*]})" 0 "$rc"
    [ "$rc" = 0 ] || echo "$out" | sed 's/^/    /'
    if [ "$k" = deb ]; then
        expect_match "$k: the removal reverted without the daemon (cleanroomd --revert)" \
            'reverting with cleanroomd --revert.*revert complete' "$(oneline "$out")"
    fi
    if [ -n "$conflict" ]; then
        expect_match "$k: the removal says the tuning could not be put back" \
            'could not be put back.*/var/lib/cleanroom is kept' "$(oneline "$out")"
        check "$k: ... and kept the journal (cleanroom.db, REVERT-FAILED)" \
            in_ct test -f /var/lib/cleanroom/cleanroom.db -a -f /var/lib/cleanroom/REVERT-FAILED
        local o
        read -ra o <<<"$originals"
        expect "$k: ... the other knobs were reverted, the changed one left alone" \
            "${o[0]} 2 ${o[2]} ${o[3]}" "$(read_sysctls)"
        # The admin's way out, by hand here: the value back, then the state deleted.
        in_ct sh -c "echo ${o[1]} >/proc/sys/net/ipv4/tcp_fastopen"
        in_ct rm -rf /var/lib/cleanroom
    fi
    expect "$k: nothing else named cleanroom is left (units, socket, state, config, sysctl.d)" "" \
        "$(in_ct bash -c "$(declare -f leftovers new_leftovers); new_leftovers \"\$1\"" - "$before")"
    expect "$k: the socket's directory /run/cleanroom is gone" "" "$(in_ct ls -d /run/cleanroom 2>/dev/null)"
    expect "$k: systemd knows no cleanroomd unit any more" "" \
        "$(in_ct systemctl list-unit-files --no-legend 'cleanroomd*' 2>&1; in_ct systemctl list-units --all --no-legend 'cleanroomd*' 2>&1)"
    expect "$k: the removal left the sysctls at their originals" "$originals" "$(read_sysctls)"
}

# deb_upgrade_and_reinstall ROOT: an upgrade to a newer build of the same package (the
# admin's edit of the conffile kept, the running daemon restarted, the units still
# enabled), then `apt remove` (tuning reverted, state kept) and a reinstall (units enabled
# and started again: a removal must not leave them disabled).
deb_upgrade_and_reinstall() {
    local root=$1 pid
    in_ct sh -c 'echo "# edited by the admin" >>/etc/cleanroom/cleanroomd.toml'
    in_ct cleanroomctl ping >/dev/null
    pid=$(main_pid)
    check "deb: upgrade to $(basename "$deb_next")" \
        in_ct dpkg -i --force-confold "/root/pkgs/$(basename "$deb_next")"
    expect "deb: ... the new version is installed" "$next_version" \
        "$(in_ct dpkg-query -W -f '${Version}' cleanroom)"
    check "deb: ... kept the admin's edit of cleanroomd.toml" \
        in_ct grep -qx "# edited by the admin" /etc/cleanroom/cleanroomd.toml
    check "deb: ... restarted the running daemon" wait_until 20 restarted_from "$pid"
    expect "deb: ... units still enabled, socket active" "enabled enabled active" \
        "$(oneline "$(in_ct systemctl is-enabled cleanroomd.socket cleanroomd.service; in_ct systemctl is-active cleanroomd.socket)")"

    check "deb: profile apply before apt remove" in_ct cleanroomctl profile apply "$PROFILE"
    check "deb: apt-get remove (not purge)" in_ct apt-get remove -y cleanroom
    expect "deb: ... reverted the tuning" "$originals" "$(read_sysctls)"
    expect "deb: ... stopped both units, kept the state" "inactive inactive yes" \
        "$(oneline "$(in_ct systemctl is-active cleanroomd.socket cleanroomd.service; in_ct sh -c 'test -f /var/lib/cleanroom/cleanroom.db && echo yes')")"
    check "deb: reinstall after the removal" in_ct dpkg -i "/root/pkgs/$(basename "$deb_next")"
    expect "deb: ... units enabled again, socket active" "enabled enabled active" \
        "$(oneline "$(in_ct systemctl is-enabled cleanroomd.socket cleanroomd.service; in_ct systemctl is-active cleanroomd.socket)")"
}

# next_deb: the .deb again with the next Debian revision, for the upgrade check.
next_deb() {
    local d=$work/next-deb
    mkdir -p "$d" && dpkg-deb -R "$deb" "$d/tree" || return 1
    next_version=$(awk '/^Version:/ { v = $2; sub(/-[0-9]+$/, "", v); print v "-99" }' "$d/tree/DEBIAN/control")
    sed -i "s/^Version: .*/Version: $next_version/" "$d/tree/DEBIAN/control"
    deb_next=$d/cleanroom_${next_version}_amd64.deb
    dpkg-deb -b --root-owner-group "$d/tree" "$deb_next" >/dev/null
}

# --- main ----------------------------------------------------------------------------------
echo "packages: $deb $rpm"
if [ "${CI:-}" = true ] || [ ! -s "$tarball" ]; then
    build_root || { fail "debootstrap a Debian 12 root" "see the log above"; summary; exit 1; }
else
    echo "Debian root from the cache: $tarball ($(du -h "$tarball" | cut -f1))"
fi

t0=$SECONDS
next_deb || { fail "deb: repack the .deb as the next revision" "see above"; }
if new_root deb && cp "$deb_next" "$work/deb/root/pkgs/" && boot deb "$work/deb"; then
    suite deb "$work/deb" apt-get install -y --no-install-recommends "/root/pkgs/$(basename "$deb")" \
        -- apt-get purge -y cleanroom
else
    fail "deb: boot a fresh Debian 12 root with systemd-nspawn" "see above"
fi
stop_container
rm -rf --one-file-system "$work/deb"
echo "deb part: $((SECONDS - t0))s"

t0=$SECONDS
if new_root rpm && boot rpm "$work/rpm"; then
    in_ct rpm --initdb --dbpath /var/lib/rpm
    suite rpm "$work/rpm" rpm -ivh --nodeps --dbpath /var/lib/rpm "/root/pkgs/$(basename "$rpm")" \
        -- rpm -e --nodeps --dbpath /var/lib/rpm cleanroom
else
    fail "rpm: boot a fresh Debian 12 root with systemd-nspawn" "see above"
fi
stop_container
rm -rf --one-file-system "$work/rpm"
echo "rpm part: $((SECONDS - t0))s"

# --- the Ansible role -----------------------------------------------------------------------
# The collection's role (ansible/roles/cleanroom) run by ansible-playbook inside a fresh
# booted root, as an admin runs it on a host: it installs the .deb from a file, enables the
# socket, adds users to the groups, installs a profile file and applies it; run again it
# changes nothing; an edited profile file is reloaded and applied. Check mode first, on the
# host without cleanroom: it succeeds and installs nothing.
role_play() { # role_play [ARGS]: ansible-playbook's recap line for localhost (output in $work)
    CT_TIMEOUT=600 in_ct env ANSIBLE_COLLECTIONS_PATH=/root/collections ANSIBLE_NOCOLOR=1 \
        ansible-playbook -i localhost, /root/site.yml "$@" >"$work/role.out" 2>&1
    local rc=$?
    grep -E '^localhost +: ok=' "$work/role.out" | tail -n 1 | tr -s ' '
    return $rc
}
role_suite() {
    local r=$work/role recap rc
    mkdir -p "$r/root/collections/ansible_collections/cleanroom"
    cp -r ansible "$r/root/collections/ansible_collections/cleanroom/host"
    printf '[sysctl]\n"net.core.somaxconn" = 1234\n' >"$r/root/cr-role.toml"
    cat >"$r/root/site.yml" <<EOF
---
- name: A host with cleanroom
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: cleanroom.host.cleanroom
      vars:
        cleanroom_package_file: /root/pkgs/$(basename "$deb")
        cleanroom_users: [alice]
        cleanroom_admins: [bob]
        cleanroom_profile_files: [/root/cr-role.toml]
        cleanroom_profile: cr-role
EOF
    in_ct useradd -m alice && in_ct useradd -m bob
    recap=$(role_play --check)
    rc=$?
    expect "role: check mode on a host without cleanroom succeeds" 0 "$rc"
    [ "$rc" = 0 ] || tail -n 40 "$work/role.out"
    check "role: ... and installs nothing" test ! -e "$r/usr/bin/cleanroomctl"
    recap=$(role_play)
    rc=$?
    expect "role: first run succeeds" 0 "$rc"
    [ "$rc" = 0 ] || { tail -n 40 "$work/role.out"; return; }
    expect_match "role: ... changed what it set up" 'changed=[1-9]' "$recap"
    expect "role: ... the package is installed" "install ok installed" \
        "$(in_ct dpkg-query -W -f '${Status}' cleanroom)"
    expect "role: ... the socket enabled and listening" "enabled active" \
        "$(oneline "$(in_ct systemctl is-enabled cleanroomd.socket; in_ct systemctl is-active cleanroomd.socket)")"
    expect_match "role: ... alice in group cleanroom" '(^| )cleanroom( |$)' "$(in_ct id -nG alice)"
    expect_match "role: ... bob in group cleanroom-admin" '(^| )cleanroom-admin( |$)' "$(in_ct id -nG bob)"
    check "role: ... the profile file installed" in_ct test -f /etc/cleanroom/profiles/cr-role.toml
    expect "role: ... the profile applied" "1234" "$(in_ct cat /proc/sys/net/core/somaxconn)"
    expect_match "role: ... and in force" 'cr-role' "$(in_ct cleanroomctl profile active)"
    recap=$(role_play)
    rc=$?
    expect "role: second run succeeds" 0 "$rc"
    [ "$rc" = 0 ] || { tail -n 40 "$work/role.out"; return; }
    expect_match "role: ... and changes nothing" 'changed=0 ' "$recap"
    printf '[sysctl]\n"net.core.somaxconn" = 2345\n' >"$r/root/cr-role.toml"
    recap=$(role_play)
    rc=$?
    expect "role: a run with an edited profile file succeeds" 0 "$rc"
    [ "$rc" = 0 ] || { tail -n 40 "$work/role.out"; return; }
    expect "role: ... the daemon reloaded it and applied the new value" "2345" \
        "$(in_ct cat /proc/sys/net/core/somaxconn)"
    check "role: cleanroomctl profile revert" in_ct cleanroomctl profile revert
}
t0=$SECONDS
if new_root role && boot role "$work/role"; then
    role_suite
else
    fail "role: boot a fresh Debian 12 root with systemd-nspawn" "see above"
fi
stop_container
rm -rf --one-file-system "$work/role"
echo "role part: $((SECONDS - t0))s"

if [ "${CLEANROOM_SKIP_VM:-0}" = 1 ]; then
    echo "cgroup v2 VM install test skipped (CLEANROOM_SKIP_VM=1)"
else
    t0=$SECONDS
    packaging/test/vm-install.sh "$deb" | tee "$work/vm.out"
    vm_summary=$(grep -E '^vm: [0-9]+ passed, [0-9]+ failed$' "$work/vm.out" | tail -n 1)
    if [ -n "$vm_summary" ]; then
        read -r _ p _ f _ <<<"$vm_summary"
        passed=$((passed + p)) failed=$((failed + f))
    else
        fail "vm: the VM install test ran to its end" "no summary line (see above)"
    fi
    echo "VM part: $((SECONDS - t0))s"
fi
echo "test-install.sh: $((SECONDS - t_start))s in all"
summary
[ "$failed" -eq 0 ]
