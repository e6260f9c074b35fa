"""CPG benchmark: throughput, latency and agreement of a 3-node cluster, ours vs Debian's corosync.

    sudo python bench/cpgbench.py [--quick] [--runs 3] [--sizes 64 1024 16384 262144]
                                  [--modes one all] [--mbytes 16] [--max-msgs 5000]

Each implementation runs as 3 daemons in network namespaces on a bridge
(corosync-localcluster's layout, 198.18.0.0/24, token 1000, token_coefficient 0); Debian's
in private mount namespaces (it hard-codes /run, /var/lib/corosync, /dev/shm).  The
*same* client drives both: Debian's libcpg (``libcpg.so.4`` through ctypes, this file's
``client`` mode), one process per node joined to one group, so the numbers compare the
daemons, not the client libraries.

For every message size (64 B, 1 KiB, 16 KiB, 256 KiB by default) and mode:

* ``one``: the client on node 1 sends; ``all``: the clients on all 3 nodes send at once.
  Messages per phase: ``--mbytes`` of payload / size, within [20, ``--max-msgs``].
  Senders push as fast as ``cpg_mcast_joined`` accepts (CS_ERR_TRY_AGAIN = flow control:
  dispatch, retry).
* throughput (msg/s, MB/s): from the first send of any sender until the last delivery on
  the slowest node.
* latency p50/p99: per sent message, from ``cpg_mcast_joined`` returning CS_OK to the
  sender's own agreed delivery, *under that load* (so it includes the daemon's queue: an
  implementation that accepts more before saying TRY_AGAIN shows longer latency).  The
  ``idle`` row: one message at a time (smallest size), the unloaded round trip.
* agreement: every client keeps a running sha256 over (nodeid, pid, size, payload) of
  each delivery in delivery order; after every phase the 3 digests (and counts) must be
  equal, else "AGREEMENT VIOLATED" goes to stderr and the exit status is 1.

Prints a Markdown table (median over ``--runs``) with the ours/debian ratio.  Needs root
and /usr/sbin/corosync + libcpg (Debian's corosync and libcpg4 packages).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import select
import signal
import struct
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
SEQ = struct.Struct("<III")  # hashed per delivery: nodeid, pid, size
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
    """stdin commands, one JSON line answered per command on stdout.

    ``phase SEND SIZE TOTAL``: send SEND messages of SIZE bytes (SEND may be 0), then wait
    until TOTAL messages (from anyone, this phase) were delivered here.  ``ping K SIZE
    TOTAL``: K times send one message and wait for its own delivery.  ``quit``.

    Every delivery feeds a running sha256 over (sender nodeid, sender pid, payload) in
    delivery order; the digest after each phase is reported so that the driver can
    prove that every node saw the same messages in the same order (agreed ordering).
    Each payload starts with the sender's sequence number, so that the sender can time
    every one of its own messages from the moment ``cpg_mcast_joined`` accepted it to its
    own (agreed) delivery: the send-to-self-delivery latency.
    """
    lib = ctypes.CDLL("libcpg.so.4")
    state = {"members": 0, "got": 0, "last": 0.0}
    sent_at: dict[int, float] = {}
    lats: list[float] = []
    running = hashlib.sha256()
    me = os.getpid()

    def on_deliver(_h, _g, nodeid, pid, msg, size):
        now = time.monotonic()
        state["got"] += 1
        state["last"] = now
        data = ctypes.string_at(msg, size)
        running.update(SEQ.pack(nodeid, pid, size))
        running.update(data)
        if pid == me and size >= 8:
            t = sent_at.pop(int.from_bytes(data[:8], "little"), None)
            if t is not None:
                lats.append(now - t)

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

    seq = 0

    def mcast(buf: ctypes.Array, size: int) -> None:
        """Send one message stamped with the next sequence number; TRY_AGAIN = dispatch, retry."""
        nonlocal seq
        seq += 1
        ctypes.memmove(buf, seq.to_bytes(8, "little"), min(8, size))
        iov = IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
        while True:
            err = lib.cpg_mcast_joined(handle, 2, ctypes.byref(iov), 1)
            if err == CS_OK:
                sent_at[seq] = time.monotonic()
                return
            if err != CS_ERR_TRY_AGAIN:
                raise SystemExit(f"cpg_mcast_joined: error {err}")
            dispatch(0.001)

    while state["members"] < 3:
        dispatch(0.05)
    out({"ready": me})
    while True:
        words = sys.stdin.readline().split()
        if not words or words[0] == "quit":
            break
        lats.clear()
        sent_at.clear()
        if words[0] == "phase":
            n, size, total = int(words[1]), int(words[2]), int(words[3])
            want = state["got"] + total
            buf = ctypes.create_string_buffer(b"x" * size, size)
            t0 = time.monotonic()
            for _ in range(n):
                mcast(buf, size)
                dispatch(0)
        elif words[0] == "ping":
            k, size, total = int(words[1]), int(words[2]), int(words[3])
            want = state["got"] + total
            buf = ctypes.create_string_buffer(b"p" * size, size)
            t0 = time.monotonic()
            for _ in range(k):
                mine = len(lats) + 1
                mcast(buf, size)
                while len(lats) < mine:
                    dispatch(0.01)
        else:
            raise SystemExit(f"unknown command {words[0]!r}")
        while state["got"] < want:
            dispatch(0.05)
        out({"t0": t0, "last": state["last"], "lats": lats, "got": state["got"],
             "hash": running.copy().hexdigest()})
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


def one_run(impl: str, args: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
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
                prof = (["-m", "cProfile", "-o", os.path.join(args.profile, f"n{i}.prof")]
                        if args.profile else [])
                cmd = ["ip", "netns", "exec", ns, sys.executable, *prof, "-m",
                       "corosync.exec.main", "-f", "-c", str(d / "corosync.conf")]
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
        res: dict[str, dict[str, float]] = {}
        for mode in args.modes:
            for size in args.sizes:
                n = count_for(size, args)
                senders = clients if mode == "all" else clients[:1]
                per = max(1, n // len(senders))
                total = per * len(senders)
                cpu0 = daemon_cpu(daemons.values())
                for c in clients:
                    c.send(f"phase {per if c in senders else 0} {size} {total}")
                answers = [c.read(args.timeout) for c in clients]
                cpu = daemon_cpu(daemons.values()) - cpu0
                check_agreement(impl, f"{mode}/{size}", answers)
                secs = max(a["last"] for a in answers) - min(a["t0"] for a in
                                                             answers[:len(senders)])
                lats = sorted(x for a in answers[:len(senders)] for x in a["lats"])
                res[f"{mode}/{size}"] = {
                    "msgs": total, "msgs_s": total / secs, "MB_s": total * size / secs / 1e6,
                    "p50_ms": pct(lats, 50) * 1000, "p99_ms": pct(lats, 99) * 1000,
                    "cpu_us": cpu / total * 1e6}
        ping_size = min(args.sizes)
        for c in clients:
            c.send(f"ping {args.pings} {ping_size} {args.pings}" if c is clients[0]
                   else f"phase 0 {ping_size} {args.pings}")
        answers = [c.read(args.timeout) for c in clients]
        check_agreement(impl, f"ping/{ping_size}", answers)
        lats = sorted(answers[0]["lats"])
        res[f"idle/{ping_size}"] = {"msgs": args.pings, "msgs_s": float("nan"),
                                    "MB_s": float("nan"), "p50_ms": pct(lats, 50) * 1000,
                                    "p99_ms": pct(lats, 99) * 1000, "cpu_us": float("nan")}
        print(f"{impl}: final running hash per node after "
              f"{answers[0]['got']} deliveries:", flush=True)
        for i, a in enumerate(answers, 1):
            print(f"  node {i}: {a['hash']}", flush=True)
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


def daemon_cpu(procs) -> float:
    """User + system CPU seconds the daemons used so far (/proc/<pid>/stat; the Popen pid
    is the daemon itself: ``ip netns exec``, ``unshare`` and ``sh -c 'exec ...'`` all exec).
    Wall-clock rates depend on whatever else the machine runs; CPU per message does not."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


SIZES = (64, 1024, 16384, 262144)
MISMATCHES: list[str] = []


def count_for(size: int, args: argparse.Namespace) -> int:
    """Messages per phase: about ``--mbytes`` of payload, but at least 20 and at most ``--max-msgs``."""
    return max(20, min(args.max_msgs, int(args.mbytes * 1e6) // size))


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, -(-len(xs) * p // 100) - 1))]


def check_agreement(impl: str, phase: str, answers: list[dict]) -> None:
    """Every node must have delivered the same messages in the same order: same digest."""
    digests = [a["hash"] for a in answers]
    counts = [a["got"] for a in answers]
    if len(set(digests)) != 1 or len(set(counts)) != 1:
        msg = (f"!!! AGREEMENT VIOLATED: {impl} after {phase}: " + ", ".join(
            f"node {i}: {c} msgs {d[:16]}" for i, (c, d) in enumerate(zip(counts, digests), 1)))
        print(msg, file=sys.stderr, flush=True)
        MISMATCHES.append(msg)
    else:
        print(f"{impl} {phase:<12} agreed: {counts[0]} deliveries, sha256 {digests[0][:16]}"
              " on all 3 nodes", flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--modes", nargs="+", choices=("one", "all"), default=["one", "all"])
    ap.add_argument("--mbytes", type=float, default=16.0,
                    help="payload per phase, in MB (message count = this / size)")
    ap.add_argument("--max-msgs", type=int, default=5000, help="cap on messages per phase")
    ap.add_argument("--pings", type=int, default=200, help="idle latency samples")
    ap.add_argument("--timeout", type=float, default=180, help="per phase, seconds")
    ap.add_argument("--impls", nargs="+", choices=("ours", "debian"), default=["ours", "debian"])
    ap.add_argument("--profile", metavar="DIR",
                    help="run our daemons under cProfile, writing DIR/n<i>.prof")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 run, 1 MB / at most 300 messages per phase, 50 pings")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.mbytes, args.max_msgs, args.pings = 1, 1.0, 300, 50
    if os.geteuid() != 0 or not os.path.exists(REAL):
        print("needs root and /usr/sbin/corosync", file=sys.stderr)
        return 2
    results: dict[str, list[dict[str, dict[str, float]]]] = {i: [] for i in args.impls}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cpgbench-") as tmp:
        for run in range(args.runs):
            for impl in args.impls:
                results[impl].append(one_run(impl, args, Path(tmp) / f"r{run}"))
    print_table(results)
    print(f"\n(total wall time {time.monotonic() - t_start:.0f} s, {args.runs} run(s); "
          "median over runs)")
    if MISMATCHES:
        print("\n!!! AGREEMENT VIOLATED in %d phase(s):" % len(MISMATCHES), file=sys.stderr)
        for m in MISMATCHES:
            print(m, file=sys.stderr)
        return 1
    print("agreement: every phase, every node: identical delivery hash")
    return 0


def print_table(results: dict[str, list[dict[str, dict[str, float]]]]) -> None:
    """Markdown table: one row per mode/size/metric, a column per implementation, ratio."""
    impls = list(results)
    first = results[impls[0]][0]
    head = "| phase | msgs | metric | " + " | ".join(impls)
    sep = "|---|---:|---|" + "---:|" * len(impls)
    if len(impls) == 2:
        head += " | ours/debian"
        sep += "---:|"
    print("\n" + head + " |")
    print(sep)
    for phase, row in first.items():
        for metric in ("msgs_s", "MB_s", "p50_ms", "p99_ms", "cpu_us"):
            if row.get(metric, float("nan")) != row.get(metric, float("nan")):  # nan: not measured
                continue
            vals = [statistics.median(r[phase][metric] for r in results[i]) for i in impls]
            cells = [f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in vals]
            line = f"| {phase} | {row['msgs']} | {metric} | " + " | ".join(cells)
            if len(vals) == 2:
                line += f" | {vals[0] / vals[1]:.2f}" if vals[1] else " | -"
            print(line + " |")


if __name__ == "__main__":
    sys.exit(main())
