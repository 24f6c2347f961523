#!/usr/bin/env bash
# What a file-system clean room costs (issue 15): whole-process wall time of `/bin/true`
# run plain through cleanroomctl, with `--isolate fs` (the working directory writable, and
# `--rw none`), and through BenchExec's runexec in its container mode, side by side in one
# hyperfine run (`-N`: no shell in between): `runexec --read-only-dir / --full-access-dir .`
# (what the issue names) and `runexec` with its default overlay of `/`, the peer of
# `--isolate fs`; and what `--collect` adds to a run that writes a file in the room.
#
#   cargo build --release --workspace --bins && sudo benches/fsroom.sh [RUNS]
#
# BenchExec is installed with pip into a virtual environment in
# ${CLEANROOM_TEST_CACHE:-/var/cache/cleanroom-test}/benchexec (once). The daemon runs in a
# temporary directory, the runs in a directory outside /tmp (removed at the end), and the
# daemon is stopped even on failure. Needs hyperfine and python3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${BIN:-target/release}")
runs=${1:-100}
command -v hyperfine >/dev/null || { echo "hyperfine is not installed" >&2; exit 1; }
venv=${CLEANROOM_TEST_CACHE:-/var/cache/cleanroom-test}/benchexec
if [ ! -x "$venv/bin/runexec" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q benchexec
fi
work=$(mktemp -d /tmp/cleanroom-fsroom.XXXXXX)
cwd=$(mktemp -d /var/lib/cleanroom-fsroom-bench.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    rm -rf "$work" "$cwd"
}
trap cleanup EXIT
: >"$work/empty.toml"
"$bin/cleanroomd" --socket "$work/s.sock" --state-dir "$work/state" --config "$work/empty.toml" \
    2>"$work/log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
ctl="$bin/cleanroomctl --socket $work/s.sock run"
"$venv/bin/runexec" --version
cd "$cwd"
hyperfine -N --warmup 5 --runs "$runs" --style basic \
    -n 'cleanroomctl run' "$ctl -- /bin/true" \
    -n 'cleanroomctl run --isolate fs' "$ctl --isolate fs -- /bin/true" \
    -n 'cleanroomctl run --isolate fs --rw none' "$ctl --isolate fs --rw none -- /bin/true" \
    -n 'a file written in the room' \
    "$ctl --isolate fs --rw none -- sh -c 'echo x > /var/tmp/x'" \
    -n 'the same, --collect /var/tmp/*' \
    "$ctl --isolate fs --rw none --collect /var/tmp/* --collect-to $work/collected -- sh -c 'echo x > /var/tmp/x'" \
    -n 'runexec (overlay of /)' "$venv/bin/runexec --quiet -- /bin/true" \
    -n 'runexec --read-only-dir / --full-access-dir .' \
    "$venv/bin/runexec --quiet --read-only-dir / --full-access-dir . -- /bin/true"
