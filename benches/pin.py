#!/usr/bin/env python3
"""How soon a process that starts after a pin rule is in force is placed: the time from
its exec to its affinity being the rule's, as the process event connector delivers it.

    benches/pin.py [BIN_DIR] [N]

BIN_DIR holds cleanroomd and cleanroomctl (default target/release). Root. Starts a daemon
on a private socket and state directory, applies a profile with one rule (a copy of
/bin/sleep under a name of its own -> the last online CPU), then N times: spawns the copy
(posix_spawn returns once the exec is done), polls /proc/PID/status until the affinity is
the rule's, and kills it. Prints p50, p90, p99 and max of exec-to-placed, and of the
spawn itself for scale.

Then what following processes costs: a shell starts /bin/true 3,000 times (none of them
matched by the rule) with the rule in force, and again after the revert (no rule: no
subscription); printed are the storm's wall time and the daemon's CPU time for each, side
by side. Stops the daemon at the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]


def cpus_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    return None


STORM = 3000


def cpu_ms(pid):
    """User and system CPU time of a process, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e3 / os.sysconf("SC_CLK_TCK")


def storm(daemon_pid):
    """A shell starting /bin/true STORM times: its wall time and the daemon's CPU time."""
    c0, t0 = cpu_ms(daemon_pid), time.perf_counter()
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {STORM} ]; do /bin/true; i=$((i+1)); done"],
                   check=True)
    wall = (time.perf_counter() - t0) * 1e3
    time.sleep(0.5)  # events still queued are handled before the daemon's time is read
    return wall, cpu_ms(daemon_pid) - c0


def main():
    bindir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "target/release")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    work = tempfile.mkdtemp(prefix="pin-bench-")
    name = f"crbench{os.getpid()}"[:15]
    program = os.path.join(work, name)
    shutil.copy("/bin/sleep", program)
    with open("/sys/devices/system/cpu/online") as f:
        last = f.read().strip().split(",")[-1].split("-")[-1]
    os.mkdir(os.path.join(work, "profiles"))
    with open(os.path.join(work, "profiles", "bench.toml"), "w") as f:
        f.write(f'[[pin]]\ncomm = "{name}"\ncpus = "{last}"\n')
    config = os.path.join(work, "c.toml")
    with open(config, "w") as f:
        f.write(f'[tuning]\nprofile_dirs = ["{work}/profiles"]\n')
    socket = os.path.join(work, "s.sock")
    daemon = subprocess.Popen(
        [os.path.join(bindir, "cleanroomd"), "--socket", socket,
         "--state-dir", os.path.join(work, "state"), "--config", config],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"),
        env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CLEANROOM_SOCKET")},
    )

    def ctl(*args):
        return subprocess.run([os.path.join(bindir, "cleanroomctl"), "--socket", socket, *args],
                              capture_output=True, text=True)

    try:
        for _ in range(200):
            if os.path.exists(socket) and ctl("ping").returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"cleanroomd did not start; log in {work}/log")
        r = ctl("profile", "apply", "bench")
        if r.returncode != 0:
            raise SystemExit(f"apply failed: {r.stdout}{r.stderr}")
        placed, spawn, missed = [], [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            pid = os.posix_spawn(program, [name, "100"], {})
            t1 = time.perf_counter()
            deadline = t1 + 2.0
            while cpus_of(pid) != last:
                if time.perf_counter() > deadline:
                    missed += 1
                    break
            else:
                placed.append((time.perf_counter() - t1) * 1e3)
            spawn.append((t1 - t0) * 1e3)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        following = storm(daemon.pid)
        r = ctl("profile", "revert")
        if r.returncode != 0:
            raise SystemExit(f"revert failed: {r.stdout}{r.stderr}")
        idle = storm(daemon.pid)
        print(f"{n} processes, {missed} not placed within 2 s")
        for label, xs in (("exec to placed", placed), ("posix_spawn itself", spawn)):
            if xs:
                print(f"{label:20} p50 {quantile(xs, .5):.3f} ms  p90 {quantile(xs, .9):.3f} ms  "
                      f"p99 {quantile(xs, .99):.3f} ms  max {max(xs):.3f} ms")
        for label, (wall, cpu) in (("storm, rule in force", following), ("storm, no rule", idle)):
            print(f"{label:20} {STORM} processes in {wall:.0f} ms; cleanroomd CPU {cpu:.0f} ms "
                  f"({cpu / STORM * 1e3:.1f} us a process)")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
