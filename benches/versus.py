#!/usr/bin/env python3
"""Two builds of cleanroom side by side, in one run: the same operations, interleaved round
by round, so the machine's drift hits both alike. For "before and after" figures.

    benches/versus.py OLD_BIN_DIR NEW_BIN_DIR [ROUNDS]

Each BIN_DIR holds cleanroomd and cleanroomctl (e.g. target/release of a checkout of the
older commit, and of this one). Root: starts both daemons on private sockets and state
directories, applies and reverts a tuning profile on the real host (every value is put
back by the revert, which is checked), and runs /bin/true in each daemon's cgroups.

Prints, per operation, the median and p90 of the whole `cleanroomctl` process for each
build, and their ratio.
"""

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]


class Daemon:
    def __init__(self, name, bindir):
        self.name = name
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix=f"versus-{name}-")
        self.socket = os.path.join(self.dir, "s.sock")
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write(f'[tuning]\nprofile_dirs = ["{REPO}/daemon/profiles"]\n')
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "cleanroomd"), "--socket", self.socket,
             "--state-dir", os.path.join(self.dir, "state"), "--config", config],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"),
            env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CLEANROOM_SOCKET")},
        )
        for _ in range(200):
            if os.path.exists(self.socket) and self.ctl(["ping"]) is not None:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"{name}: cleanroomd did not start; log in {self.dir}/log")

    def ctl(self, args):
        """Wall time of one cleanroomctl process in ms, None if it failed."""
        t = time.perf_counter()
        r = subprocess.run([os.path.join(self.bindir, "cleanroomctl"), "--socket", self.socket, *args],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ms = (time.perf_counter() - t) * 1e3
        return ms if r.returncode == 0 else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    if os.geteuid() != 0:
        raise SystemExit("versus.py needs root (it tunes the host and runs in cgroups)")
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    rng = random.Random(1)
    builds = [Daemon("before", sys.argv[1]), Daemon("after", sys.argv[2])]
    ops = [
        # (name, arguments, pause before each, how many in a row on one daemon)
        ("ping", ["ping"], 0, 1),
        ("status", ["status"], 0, 1),
        ("run -- /bin/true", ["run", "--", "/bin/true"], 0, 1),
        ("run -- /bin/true, 5 back to back", ["run", "--", "/bin/true"], 0, 5),
        ("run -- /bin/true after 0.2 s idle", ["run", "--", "/bin/true"], 0.2, 1),
        ("run --isolate (5 namespaces)", ["run", "--isolate", "net,pid,mount,uts,ipc", "--", "/bin/true"], 0, 1),
    ]
    times = {(op, b.name): [] for op, _, _, _ in ops for b in builds}
    tune = {(op, b.name): [] for op in ("profile apply", "profile revert") for b in builds}
    sysctl = "/proc/sys/vm/swappiness"
    before_value = open(sysctl).read()
    try:
        for _ in range(rounds):
            for op, args, pause, count in ops:
                # In a random order each time: whatever one build leaves running after its
                # answer (cleanup, a history write) lands on the other build's turn as
                # often as on its own.
                for b in rng.sample(builds, len(builds)):
                    for _ in range(count):
                        if pause:
                            time.sleep(pause)
                        ms = b.ctl(args)
                        if ms is None:
                            raise SystemExit(f"{b.name}: cleanroomctl {' '.join(args)} failed")
                        times[(op, b.name)].append(ms)
        for _ in range(max(10, rounds // 4)):
            for b in builds:
                for op, args in (("profile apply", ["profile", "apply", "throughput-performance"]),
                                 ("profile revert", ["profile", "revert"])):
                    ms = b.ctl(args)
                    if ms is None:
                        raise SystemExit(f"{b.name}: cleanroomctl {' '.join(args)} failed")
                    tune[(op, b.name)].append(ms)
    finally:
        for b in builds:
            b.stop()
    assert open(sysctl).read() == before_value, "the reverts put the host back"
    print(f"{'operation (whole cleanroomctl process)':44} {'before':>20} {'after':>20}  after/before")
    for op in [o for o, _, _, _ in ops] + ["profile apply", "profile revert"]:
        source = tune if op.startswith("profile") else times
        a, b = source[(op, "before")], source[(op, "after")]
        print(f"{op:44} {statistics.median(a):7.2f} ms p90 {quantile(a, .9):6.2f}"
              f" {statistics.median(b):7.2f} ms p90 {quantile(b, .9):6.2f}"
              f"  {statistics.median(b) / statistics.median(a):5.2f}")


if __name__ == "__main__":
    main()
