# shellcheck shell=bash
# Shared by packaging/test-install.sh, packaging/test/vm-install.sh and tests/boot/grub.sh
# (sourced, never run): counting checks, the global test lock, the search for what a
# removed package left, and the cached Debian 12 roots.

passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }
# check NAME COMMAND...: passes when COMMAND exits 0; the reason is its status and output.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -eq 0 ]; then pass "$name"; else fail "$name" "exit $rc${out:+: $(printf '%s' "$out" | tail -n 6 | tr '\n' ' ')}"; fi
}
# expect NAME WANT GOT: passes when GOT is WANT.
expect() { if [ "$3" = "$2" ]; then pass "$1"; else fail "$1" "expected '$2', got '${3:0:500}'"; fi; }
# expect_match NAME EXTENDED-REGEX GOT
expect_match() { if [[ $3 =~ $2 ]]; then pass "$1"; else fail "$1" "expected /$2/, got '${3:0:500}'"; fi; }
# oneline TEXT: TEXT with every run of blanks and newlines made one space, no trailing one.
oneline() { tr -s ' \t\n' '   ' <<<"$1" | sed 's/ $//'; }
summary() { echo "$passed passed, $failed failed"; }

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds or time is up.
wait_until() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.1
    done
}

# The host-wide test lock (/tmp/cleanroom-test.lock, see HELPERS.md): true when this
# process or one of its ancestors holds it (`flock LOCK cmd` runs cmd as a child of the
# flock process, which /proc/locks names as the holder).
test_lock_held() {
    local lock=/tmp/cleanroom-test.lock inode holders p
    [ -e "$lock" ] || return 1
    inode=$(stat -c %i "$lock")
    holders=$(awk -v i=":$inode" '$2 == "FLOCK" && substr($6, length($6) - length(i) + 1) == i { print $5 }' /proc/locks)
    [ -n "$holders" ] || return 1
    p=$$
    while [ "$p" -gt 1 ]; do
        grep -qx "$p" <<<"$holders" && return 0
        p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null) || return 1
    done
    return 1
}
# hold_test_lock SCRIPT ARGS...: re-executes SCRIPT under the lock unless it is held already.
hold_test_lock() {
    test_lock_held && return 0
    echo "waiting for /tmp/cleanroom-test.lock" >&2
    exec flock -w 3600 /tmp/cleanroom-test.lock "$@"
}

# leftovers: every path (not under /proc, /sys, /dev, nor /root/pkgs, where the nspawn test
# keeps the package files) whose name mentions cleanroom, sorted.
leftovers() {
    find / -mindepth 1 \( -path /proc -o -path /sys -o -path /dev -o -path /root/pkgs \) -prune \
        -o -iname '*cleanroom*' -print 2>/dev/null | LC_ALL=C sort
}
# new_leftovers BEFORE: what leftovers finds now that was not in BEFORE (its output before
# the package came), on one line, less the socket's directory (/run/cleanroom, checked on
# its own); empty once a removed package left nothing.
new_leftovers() {
    leftovers | LC_ALL=C comm -13 <(printf '%s\n' "$1") - | grep -vx /run/cleanroom | tr '\n' ' '
}

# debian_mirror: CLEANROOM_NSPAWN_MIRROR, else this host's apt source, else Debian's.
debian_mirror() {
    [ -n "${CLEANROOM_NSPAWN_MIRROR:-}" ] && { echo "$CLEANROOM_NSPAWN_MIRROR"; return; }
    local m
    m=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 ~ /^https?:.*debian/ && $3 ~ /^bookworm/ { print $2; exit }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
    echo "${m:-http://deb.debian.org/debian}"
}
# build_debian_root TARBALL PACKAGES WORK [APT_PACKAGES]: debootstraps a minimal Debian 12
# with PACKAGES (comma-separated) in WORK/bootstrap, installs APT_PACKAGES (space-separated)
# there with apt-get inside systemd-nspawn (what debootstrap's resolver cannot configure,
# such as ansible-core's Python dependencies), and caches it as TARBALL (zstd, numeric
# owners).
build_debian_root() {
    local tarball=$1 include=$2 work=$3 apt=${4:-} t0=$SECONDS m
    m=$(debian_mirror)
    echo "debootstrap bookworm (with $include) from $m"
    if ! timeout 1200 debootstrap --variant=minbase --include="$include" bookworm "$work/bootstrap" "$m" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log"
        return 1
    fi
    if [ -n "$apt" ]; then
        echo "apt-get install $apt (in the root)"
        if ! timeout 1200 systemd-nspawn -q -D "$work/bootstrap" --register=no --keep-unit sh -c \
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $apt" \
            >"$work/apt.log" 2>&1; then
            tail -n 20 "$work/apt.log"
            return 1
        fi
        rm -rf "$work"/bootstrap/var/lib/apt/lists/*
    fi
    rm -rf "$work"/bootstrap/var/cache/apt/archives/*.deb
    echo "debootstrap: $((SECONDS - t0))s"
    mkdir -p "$(dirname "$tarball")"
    tar -C "$work/bootstrap" --numeric-owner --xattrs -cpf - . | zstd -q -T0 -o "$tarball.tmp" &&
        mv -f "$tarball.tmp" "$tarball"
}
