# What every script of tests/vm/ starts with: sourced, after its own comment, with the
# directory of the binaries built on the host as $1.
set -uo pipefail
bin=$(realpath "${1:-target/debug}")
passed=0 failed=0
check() { # check NAME CONDITION...
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

# leaves: a leaf of the service's cgroup for this script (every process of the service
# goes there) and one for the daemon, `$svc/script` and `$svc/cleanroomd`, with every
# controller enabled for them (the service's cgroup may hold no process once it has).
leaves() {
    svc=/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
    mkdir -p "$svc/script" "$svc/cleanroomd"
    for p in $(cat "$svc/cgroup.procs"); do echo "$p" > "$svc/script/cgroup.procs" 2>/dev/null; done
    for c in $(cat "$svc/cgroup.controllers"); do
        echo "+$c" > "$svc/cgroup.subtree_control" || echo "cannot enable $c for the daemon" >&2
    done
}
