"""CPG benchmark: throughput and latency of a 3-node cluster, ours vs Debian's corosync.

    sudo python bench/cpgbench.py [--runs 1] [--small 3000] [--large 150] [--pings 200]

Each implementation runs as 3 daemons in network namespaces on a bridge
(corosync-localcluster's layout, 198.18.0.0/24, token 1000, token_coefficient 0); Debian's
in private mount namespaces (it hard-codes /run, /var/lib/corosync, /dev/shm).  The
*same* client drives both: Debian's libcpg (``libcpg.so.4`` through ctypes, this file's
``client`` mode), one process per node joined to one group, so the numbers compare the
daemons, not the client libraries.

* throughput: the client on node 1 sends N messages as fast as ``cpg_mcast_joined``
  accepts them (CS_ERR_TRY_AGAIN = flow control: dispatch, retry); measured from the first
  send until the client on node 3 got the last one.  100-byte and 64 KiB messages.
* latency: node 1 sends one 100-byte message and waits for its own agreed delivery (a full
  trip through the ring: the token must visit every node), K times; median and p95.

Needs root and /usr/sbin/corosync + libcpg (Debian's corosync and libcpg4 packages).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL = "/usr/sbin/corosync"
GROUP = b"cpgbench"
CS_OK, CS_ERR_TRY_AGAIN = 1, 6
CS_DISPATCH_ALL = 2
MEMBERSHIP_RE = re.compile(r"A new membership \([\w.]+\) was formed\. Members(.*)$")


# ---------------------------------------------------------------- client (ctypes libcpg)

class CpgName(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("value", ctypes.c_char * 128)]


class CpgAddress(ctypes.Structure):
    _fields_ = [("nodeid", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("reason", ctypes.c_uint32)]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


DELIVER_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.POINTER(CpgName), ctypes.c_uint32,
                              ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t)
CONFCHG_FN = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.POINTER(CpgName),
                              ctypes.POINTER(CpgAddress), ctypes.c_size_t,
                              ctypes.POINTER(CpgAddress), ctypes.c_size_t,
                              ctypes.POINTER(CpgAddress), ctypes.c_size_t)


class Callbacks(ctypes.Structure):
    _fields_ = [("deliver", DELIVER_FN), ("confchg", CONFCHG_FN)]


def client() -> None:
    """stdin commands: ``send N SIZE``, ``expect N``, ``ping K SIZE``, ``quit``; stdout JSON."""
    lib = ctypes.CDLL("libcpg.so.4")
    state = {"members": 0, "got": 0, "last": 0.0, "self": 0}
    me = os.getpid()

    def on_deliver(_h, _g, _nodeid, pid, _msg, _size):
        state["got"] += 1
        state["last"] = time.monotonic()
        if pid == me:
            state["self"] += 1

    def on_confchg(_h, _g, _m, n_members, _l, _nl, _j, _nj):
        state["members"] = n_members

    cbs = Callbacks(DELIVER_FN(on_deliver), CONFCHG_FN(on_confchg))
    handle = ctypes.c_uint64()
    while True:
        err = lib.cpg_initialize(ctypes.byref(handle), ctypes.byref(cbs))
        if err == CS_OK:
            break
        time.sleep(0.1)
    fd = ctypes.c_int()
    lib.cpg_fd_get(handle, ctypes.byref(fd))
    name = CpgName(len(GROUP), GROUP)
    while lib.cpg_join(handle, ctypes.byref(name)) == CS_ERR_TRY_AGAIN:
        time.sleep(0.05)

    def dispatch(timeout: float) -> None:
        r, _, _ = select.select([fd.value], [], [], timeout)
        if r:
            lib.cpg_dispatch(handle, CS_DISPATCH_ALL)

    def out(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    def mcast(buf: ctypes.Array, size: int) -> None:
        iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
        while True:
            err = lib.cpg_mcast_joined(handle, 2, ctypes.byref(iov), 1)
            if err == CS_OK:
                return
            if err != CS_ERR_TRY_AGAIN:
                raise SystemExit(f"cpg_mcast_joined: error {err}")
            dispatch(0.001)

    while state["members"] < 3:
        dispatch(0.05)
    out({"ready": me})
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        if words[0] == "expect":
            want = state["got"] + int(words[1])
            while state["got"] < want:
                dispatch(0.05)
            out({"last": state["last"]})
        elif words[0] == "send":
            n, size = int(words[1]), int(words[2])
            buf = ctypes.create_string_buffer(b"x" * size, size)
            want = state["self"] + n
            t0 = time.monotonic()
            for _ in range(n):
                mcast(buf, size)
                dispatch(0)
            while state["self"] < want:
                dispatch(0.05)
            out({"t0": t0, "self_done": time.monotonic()})
        elif words[0] == "ping":
            k, size = int(words[1]), int(words[2])
            buf = ctypes.create_string_buffer(b"p" * size, size)
            rtts = []
            for _ in range(k):
                want = state["self"] + 1
                t0 = time.monotonic()
                mcast(buf, size)
                while state["self"] < want:
                    dispatch(0.01)
                rtts.append(time.monotonic() - t0)
            out({"rtts": rtts})
    lib.cpg_finalize(handle)


# ---------------------------------------------------------------------------- driver

def synced(log: Path) -> bool:
    """The log's reconstructed membership is 1 2 3 and sync completed after it."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    current: set[int] = set()
    for line in text.splitlines():
        m = MEMBERSHIP_RE.search(line)
        if m:
            j = re.search(r"joined: ([\d ]+?)(?: left:|$)", m.group(1))
            lft = re.search(r"left: ([\d ]+)$", m.group(1))
            current |= {int(x) for x in j.group(1).split()} if j else set()
            current -= {int(x) for x in lft.group(1).split()} if lft else set()
    pos = text.rfind("A new membership")
    return current == {1, 2, 3} and "Completed service synchronization" in text[pos:]


def conf(i: int, d: Path, ours: bool) -> str:
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{k}\n        nodeid: {k}\n"
                    f"    }}\n" for k in (1, 2, 3))
    return ("totem {\n    version: 2\n    cluster_name: cpgbench\n    transport: udpu\n"
            "    token: 1000\n    token_coefficient: 0\n    crypto_cipher: none\n"
            "    crypto_hash: none\n}\n"
            f"logging {{\n    to_logfile: yes\n    logfile: {d / 'corosync.log'}\n"
            "    to_stderr: no\n    to_syslog: no\n}\n"
            f"nodelist {{\n{nodes}}}\n"
            + (f"system {{\n    state_dir: {d / 'state'}\n    run_dir: {d / 'run'}\n}}\n"
               if ours else ""))


class Proc:
    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env, text=True)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def read(self, timeout: float = 120) -> dict:
        assert self.p.stdout is not None
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if r else ""
        if not line:
            raise RuntimeError("client gave no answer (daemon stuck or gone)")
        return json.loads(line)

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


def one_run(impl: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    from corosync.tools import localcluster

    state = {"n": 3, "prefix": f"cb{os.getpid() % 10000}", "namespaces": [], "netns": True}
    daemons: dict[int, subprocess.Popen] = {}
    clients: list[Proc] = []
    env = {k: v for k, v in os.environ.items() if k != "COROSYNC_IPC_DIR"}
    try:
        localcluster.netns_up(state)
        for i in (1, 2, 3):
            d = root / f"{impl}-n{i}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "corosync.conf").write_text(conf(i, d, impl == "ours"))
            ns = localcluster.ns_name(state, i)
            if impl == "ours":
                cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "corosync.exec.main",
                       "-f", "-c", str(d / "corosync.conf")]
            else:
                inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                         f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c "
                         f"{d / 'corosync.conf'}")
                cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", inner]
            daemons[i] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL,
                                          env={**env, "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})
        deadline = time.monotonic() + 60
        logs = [root / f"{impl}-n{i}" / "corosync.log" for i in (1, 2, 3)]
        while not all(synced(p) for p in logs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{impl}: no 3-node ring")
            time.sleep(0.1)
        time.sleep(1.0)  # let the last membership settle (the ring forms in steps)
        for i in (1, 2, 3):
            enter = (["ip", "netns", "exec", localcluster.ns_name(state, i)] if impl == "ours"
                     else ["nsenter", "-t", str(daemons[i].pid), "-m", "-n"])
            clients.append(Proc([*enter, sys.executable, os.path.abspath(__file__), "client"],
                                env))
        for c in clients:
            c.read(60)
        sender, _mid, far = clients
        res: dict[str, float] = {}
        for label, n, size in (("small", args.small, 100), ("large", args.large, 65536)):
            for c in clients[1:]:
                c.send(f"expect {n}")
            sender.send(f"send {n} {size}")
            sent = sender.read()
            last = far.read()["last"]
            clients[1].read()
            secs = last - sent["t0"]
            res[f"{label}_msgs_s"] = n / secs
            res[f"{label}_MB_s"] = n * size / secs / 1e6
        for c in clients[1:]:
            c.send(f"expect {args.pings}")
        sender.send(f"ping {args.pings} 100")
        rtts = sorted(sender.read()["rtts"])
        for c in clients[1:]:
            c.read()
        res["lat_median_ms"] = statistics.median(rtts) * 1000
        res["lat_p95_ms"] = rtts[int(len(rtts) * 0.95) - 1] * 1000
        return res
    finally:
        for c in clients:
            c.stop()
        for p in daemons.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        localcluster.netns_down(state)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--small", type=int, default=3000, help="100-byte messages per run")
    ap.add_argument("--large", type=int, default=150, help="64 KiB messages per run")
    ap.add_argument("--pings", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists(REAL):
        print("needs root and /usr/sbin/corosync", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, float]]] = {"ours": [], "debian": []}
    with tempfile.TemporaryDirectory(prefix="cpgbench-") as tmp:
        for run in range(args.runs):
            for impl in ("ours", "debian"):
                results[impl].append(one_run(impl, args, Path(tmp) / f"r{run}"))
    keys = list(results["ours"][0])
    print(f"{'metric':<16}{'ours':>12}{'debian':>12}{'ours/debian':>13}")
    for k in keys:
        o = statistics.median(r[k] for r in results["ours"])
        d = statistics.median(r[k] for r in results["debian"])
        print(f"{k:<16}{o:>12.2f}{d:>12.2f}{o / d:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
