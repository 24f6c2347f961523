#!/usr/bin/env bash
# Memory and idle wake-ups of a release-built cleanroomd, and `cleanroomctl status` next to
# `tuned-adm active` (when tuned is installed) with hyperfine.
#
#   cargo build --release --workspace --bins && benches/footprint.sh
#
# Prints: RSS after start and after 1000 requests, idle wake-ups (context switches of every
# daemon thread) over 10 s without and with a 2 s systemd watchdog. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
[ -x "$bin/cleanroomd" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
work=$(mktemp -d /tmp/cleanroom-footprint.XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

start() { # start [extra env...]: starts the daemon, waits for its socket
    : > "$work/empty.toml"
    env "$@" RUST_LOG=warn "$bin/cleanroomd" --config "$work/empty.toml" \
        --socket "$work/d.sock" --state-dir "$work/state" 2>>"$work/log" &
    pid=$!
    for _ in $(seq 1 500); do
        "$bin/cleanroomctl" --socket "$work/d.sock" ping >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    echo "daemon did not come up" >&2; cat "$work/log" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
switches() { # total context switches of every thread of $1
    cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'
}

start
sleep 0.2
echo "cleanroomd RSS after start:           $(rss_kib "$pid") KiB"
python3 - "$work/d.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rb")
for i in range(1000):
    s.sendall(b'{"jsonrpc":"2.0","id":%d,"method":"daemon.status"}\n' % i); f.readline()
PY
echo "cleanroomd RSS after 1000 requests:   $(rss_kib "$pid") KiB"
echo "cleanroomd threads:                   $(ls /proc/"$pid"/task | wc -l)"
sleep 11 # let tokio's idle blocking threads (10 s keep-alive) exit
a=$(switches "$pid"); sleep 10; b=$(switches "$pid")
echo "idle wake-ups in 10 s, no watchdog:   $((b - a))"
stop

start WATCHDOG_USEC=2000000
sleep 1
a=$(switches "$pid"); sleep 10; b=$(switches "$pid")
echo "idle wake-ups in 10 s, watchdog 2 s:  $((b - a))   (WATCHDOG=1 every 1 s: 10 expected)"

if command -v hyperfine >/dev/null; then
    peers=("$bin/cleanroomctl --socket $work/d.sock status")
    # Without a running tuned (no system D-Bus here) tuned-adm still starts its Python
    # client and asks D-Bus; it exits non-zero, hence -i.
    command -v tuned-adm >/dev/null && peers+=("tuned-adm active")
    hyperfine -N -i --warmup 20 --runs 300 --export-markdown "$work/hf.md" "${peers[@]}" >/dev/null 2>&1 || true
    echo
    sed "s|$work/||g" "$work/hf.md"
fi
stop
