#!/usr/bin/env python3
"""Soak: the daemon under a crowd that misbehaves, for as long as many runs take.

    benches/soak.py [RUNS] [BIN_DIR]

While 1,000 idle connections stay open, 50 slowloris clients dribble a request a byte at a
time, and one client starts a run that prints without end and never reads, RUNS runs of
/bin/true go through (default 100,000): half one after another on one connection, half
from 100 connections at once. A sampler pings the daemon every 50 ms throughout.

Afterwards, with every client gone: the daemon's descriptors, threads, child processes,
zombies and run cgroups against before the soak (none may be left over), its RSS before and
after, and ping p50/p99 during the soak. Root (runs need cgroups); the release build of
this checkout by default. Exit status 1 if anything leaked.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q))] if xs else float("nan")


class Conn:
    """One newline-delimited JSON-RPC connection."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""
        self.next_id = 1

    def send(self, method, params):
        i = self.next_id
        self.next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        self.s.sendall(line.encode() + b"\n")
        return i

    def answer(self, i):
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise ConnectionError("the daemon closed the connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("id") == i:
                return msg

    def call(self, method, params):
        return self.answer(self.send(method, params))

    def close(self):
        self.s.close()


def snapshot(pid, bases):
    """What the daemon holds: descriptors, threads, RSS (KiB), children, zombies, run cgroups."""
    status = open(f"/proc/{pid}/status").read()
    field = lambda name: int(next(l for l in status.splitlines() if l.startswith(name)).split()[1])
    children, zombies = [], []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            st = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == pid:
            comm = st[st.index("(") + 1:st.rindex(")")]
            (zombies if rest[0] == "Z" else children).append(f"{p} {comm}")
    cgroups = []
    for base in bases:
        try:
            cgroups += [n for n in os.listdir(base) if n.startswith("run-")]
        except OSError:
            pass
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": field("Threads:"),
        "rss_kib": field("VmRSS:"),
        "children": children,
        "zombies": zombies,
        "run_cgroups": cgroups,
    }


SAMPLER = """
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1])
out = open(sys.argv[2], "w", buffering=1)
buf = b""
i = 0
while True:
    i += 1
    t = time.perf_counter()
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": "daemon.ping", "params": {}}).encode() + b"\\n")
    while b"\\n" not in buf:
        buf += s.recv(65536)
    _, buf = buf.split(b"\\n", 1)
    out.write(f"{(time.perf_counter() - t) * 1e6:.1f}\\n")
    time.sleep(0.05)
"""

WORKERS = """
import json, socket, sys, threading
def worker(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1])
    buf = b""
    for i in range(1, count + 1):
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": "run.start", "params": {"argv": ["/bin/true"]}}).encode() + b"\\n")
        while True:
            while b"\\n" not in buf:
                buf += s.recv(65536)
            line, buf = buf.split(b"\\n", 1)
            msg = json.loads(line)
            if msg.get("id") == i:
                break
        if "result" not in msg or msg["result"].get("end_reason") != "exited":
            print(json.dumps(msg), flush=True)
    s.close()
ts = [threading.Thread(target=worker, args=(n,)) for n in json.loads(sys.argv[2])]
for t in ts: t.start()
for t in ts: t.join()
"""


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    bindir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "target", "release")
    if os.geteuid() != 0:
        raise SystemExit("soak.py needs root (runs need cgroups)")
    work = tempfile.mkdtemp(prefix="soak-")
    sock = os.path.join(work, "s.sock")
    config = os.path.join(work, "c.toml")
    with open(config, "w") as f:
        # Room for the crowd, and an idle timeout longer than the soak: the idle
        # connections, the slowloris clients and the non-reader stay to the end (the
        # non-reader holding its bounded queue).
        f.write("[limits]\nmax_connections = 2048\nidle_timeout_s = 3600\n"
                "[runs]\nhistory_limit = 1000\n")
    log = open(os.path.join(work, "log"), "w")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CLEANROOM_SOCKET")}
    daemon = subprocess.Popen(
        [os.path.join(bindir, "cleanroomd"), "--socket", sock, "--state-dir",
         os.path.join(work, "state"), "--config", config],
        stdout=subprocess.DEVNULL, stderr=log, env=env)
    for _ in range(200):
        if os.path.exists(sock):
            try:
                Conn(sock).call("daemon.ping", {})
                break
            except OSError:
                pass
        time.sleep(0.05)
    else:
        raise SystemExit(f"cleanroomd did not start; log in {work}/log")
    status = Conn(sock).call("daemon.status", {})["result"]
    bases = status.get("run_cgroups", [])
    # One run first: pools and threads the first run starts are not a leak.
    Conn(sock).call("run.start", {"argv": ["/bin/true"]})
    time.sleep(0.5)
    before = snapshot(daemon.pid, bases)

    stop = threading.Event()

    # The sampler is a process of its own: in this one, the workers' threads would hold the
    # interpreter's lock and their waits would count as the daemon's.
    pings_file = os.path.join(work, "pings")
    sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, sock, pings_file])

    def slowloris(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        line = b'{"jsonrpc":"2.0","id":1,"method":"daemon.ping","params":{}}'
        try:
            for i in range(len(line)):
                if stop.is_set():
                    break
                s.send(line[i:i + 1])
                time.sleep(1.0)
        except OSError:
            pass
        s.close()

    idle = [Conn(sock) for _ in range(1000)]
    loris = [threading.Thread(target=slowloris, args=(i,), daemon=True) for i in range(50)]
    for t in loris:
        t.start()
    deaf = Conn(sock)
    deaf.send("run.start", {"argv": ["sh", "-c", "yes soak-never-read | head -c 50000000"]})

    started = time.perf_counter()
    failures = []
    seq = Conn(sock)
    half = runs // 2
    for i in range(half):
        a = seq.call("run.start", {"argv": ["/bin/true"]})
        if "result" not in a or a["result"].get("end_reason") != "exited":
            failures.append(a)
    seq_s = time.perf_counter() - started

    rest = runs - half
    # 100 connections from 4 processes of 25 threads: one interpreter's lock would make
    # the client the bottleneck.
    per = [rest // 100 + (1 if i < rest % 100 else 0) for i in range(100)]
    t1 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKERS, sock, json.dumps(per[k::4])],
                              stdout=subprocess.PIPE, text=True) for k in range(4)]
    for p in procs:
        out, _ = p.communicate()
        failures += [json.loads(l) for l in out.splitlines() if l.strip()]
    conc_s = time.perf_counter() - t1
    during = snapshot(daemon.pid, bases)

    stop.set()
    sampler.terminate()
    sampler.wait()
    pings = [float(x) for x in open(pings_file).read().split()]
    seq.close()
    deaf.close()
    for c in idle:
        c.close()
    for t in loris:
        t.join(timeout=30)
    # Everything the clients started ends with them; give the daemon a moment to notice.
    deadline = time.time() + 30
    after = snapshot(daemon.pid, bases)
    while time.time() < deadline:
        after = snapshot(daemon.pid, bases)
        if (after["fds"] <= before["fds"] and after["threads"] <= before["threads"]
                and len(after["children"]) <= len(before["children"]) and not after["zombies"]
                and len(after["run_cgroups"]) <= len(before["run_cgroups"])):
            break
        time.sleep(0.5)
    daemon.terminate()
    daemon.wait(timeout=10)

    leaked = []
    for key in ("fds", "threads"):
        if after[key] > before[key]:
            leaked.append(f"{key}: {before[key]} before, {after[key]} after")
    for key in ("children", "zombies", "run_cgroups"):
        extra = set(after[key]) - set(before[key])
        if len(after[key]) > len(before[key]):
            leaked.append(f"{key}: {sorted(extra)[:10]}")
    print(f"runs                {runs} ({len(failures)} failed): {half} sequential in {seq_s:.1f} s "
          f"({seq_s / max(half, 1) * 1e3:.2f} ms each), {rest} from 100 connections in {conc_s:.1f} s "
          f"({rest / max(conc_s, 1e-9):.0f}/s)")
    print("while               1,000 idle connections, 50 slowloris clients, 1 client that never reads")
    print(f"ping during soak    p50 {quantile(pings, .5):.0f} µs, p99 {quantile(pings, .99):.0f} µs, "
          f"max {max(pings):.0f} µs ({len(pings)} pings)")
    print(f"daemon RSS          {before['rss_kib'] / 1024:.1f} MiB before, {during['rss_kib'] / 1024:.1f} MiB "
          f"at the end of the runs, {after['rss_kib'] / 1024:.1f} MiB after")
    print(f"daemon threads      {before['threads']} before, {during['threads']} during, {after['threads']} after")
    print(f"daemon fds          {before['fds']} before, {during['fds']} during, {after['fds']} after")
    print(f"children, zombies   {len(after['children'])} ({len(before['children'])} before: parked helpers), "
          f"{len(after['zombies'])}")
    print(f"leaks               {'none' if not leaked else '; '.join(leaked)}")
    if failures:
        print(f"first failure       {failures[0]}")
    if leaked or failures:
        print(f"log in {work}/log")
        sys.exit(1)


if __name__ == "__main__":
    main()
