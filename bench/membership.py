"""Membership benchmark: ring formation and failover times, ours vs Debian's corosync.

    sudo python bench/membership.py [--runs 3] [--nodes 3] [--token 1000]

Each run builds N network namespaces on a bridge (corosync-localcluster's layout,
198.18.0.0/24), starts N daemons of one implementation at once and measures

* formation: from spawning the processes until every node's log shows the full
  membership (wall clock; includes process start-up, which is much larger for Python),
  and from the last node's "Initializing transport" log line to the last node's
  full-membership log line (log timestamps; excludes interpreter start-up);
* failover: from SIGKILL of the highest node until every survivor logged the membership
  without it (log timestamps).  Expected: token + consensus = 1000 + 1200 ms with
  token_coefficient 0, plus the time to form the new ring.

Debian's corosync (/usr/sbin/corosync) runs in private mount namespaces (it hard-codes
/run, /var/lib/corosync and /dev/shm paths); skipped when absent.  Needs root.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from corosync.tools import localcluster

REAL = "/usr/sbin/corosync"
MEMB = re.compile(r"A new membership \([\w.]+\) was formed\. Members(.*)$")
STAMP = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}) ")


def stamp(line: str) -> float | None:
    m = STAMP.match(line)
    if not m:
        return None
    year = datetime.now().year
    return datetime.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S.%f").timestamp()


def view_and_time(log: Path, me: int) -> tuple[tuple[int, ...], float | None, float | None]:
    """(current view, time of the last membership line, time of 'Initializing transport')."""
    members: set[int] = set()
    last = init = None
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return (), None, None
    for line in lines:
        if "Initializing transport" in line:
            init = stamp(line)
        m = MEMB.search(line)
        if not m:
            continue
        rest = m.group(1)
        j = re.search(r"joined: ([\d ]+?)(?: left:|$)", rest)
        lft = re.search(r"left: ([\d ]+)$", rest)
        if j:
            members |= {int(x) for x in j.group(1).split()}
        if lft:
            members -= {int(x) for x in lft.group(1).split()}
        members.add(me)
        last = stamp(line)
    return tuple(sorted(members)), last, init


def conf(n: int, i: int, d: Path, token: int) -> str:
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{j}\n        nodeid: {j}\n    }}\n"
                    for j in range(1, n + 1))
    return ("totem {\n    version: 2\n    cluster_name: bench\n    transport: udpu\n"
            f"    token: {token}\n    token_coefficient: 0\n    crypto_cipher: none\n"
            "    crypto_hash: none\n}\n"
            f"logging {{\n    to_stderr: no\n    to_logfile: yes\n    logfile: {d}/corosync.log\n"
            "    to_syslog: no\n    timestamp: hires\n}\n"
            f"nodelist {{\n{nodes}}}\n"
            f"system {{\n    state_dir: {d}/state\n    run_dir: {d}/run\n}}\n")


def one_run(impl: str, n: int, token: int, root: Path) -> dict[str, float]:
    state = {"n": n, "prefix": f"bm{os.getpid() % 10000}", "namespaces": [], "netns": True}
    procs: dict[int, subprocess.Popen] = {}
    logs = {}
    try:
        localcluster.netns_up(state)
        for i in range(1, n + 1):
            d = root / f"{impl}-n{i}"
            d.mkdir(parents=True)
            (d / "state").mkdir()  # the real daemon refuses a missing state_dir (exit 16)
            (d / "run").mkdir()
            (d / "corosync.conf").write_text(conf(n, i, d, token))
            logs[i] = d / "corosync.log"
        t0 = time.time()
        for i in range(1, n + 1):
            ns = localcluster.ns_name(state, i)
            c = str(root / f"{impl}-n{i}" / "corosync.conf")
            if impl == "ours":
                cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "corosync.exec.main",
                       "-f", "-c", c]
            else:
                inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                         f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c {c}")
                cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", inner]
            procs[i] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env={**os.environ, "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})
        full = tuple(range(1, n + 1))
        deadline = time.monotonic() + 60
        while True:
            views = {i: view_and_time(logs[i], i) for i in full}
            if all(v[0] == full for v in views.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{impl}: no full ring: {views}")
            time.sleep(0.01)
        wall = time.time() - t0
        formed = max(v[1] for v in views.values())
        inited = max(v[2] for v in views.values())
        time.sleep(2 * token / 1000)  # let the ring settle before the kill
        victim = n
        tk = time.time()
        os.kill(procs[victim].pid, signal.SIGKILL)
        rest = tuple(i for i in full if i != victim)
        deadline = time.monotonic() + 60
        while True:
            views = {i: view_and_time(logs[i], i) for i in rest}
            if all(v[0] == rest for v in views.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{impl}: survivors did not re-form: {views}")
            time.sleep(0.01)
        failover = max(v[1] for v in views.values()) - tk
        return {"formation_wall": wall, "formation_log": formed - inited, "failover": failover}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        localcluster.netns_down(state)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--token", type=int, default=1000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    impls = ["ours"] + (["debian"] if os.path.exists(REAL) else [])
    results: dict[str, list[dict[str, float]]] = {i: [] for i in impls}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for impl in impls:
                results[impl].append(one_run(impl, args.nodes, args.token, Path(tmp) / f"r{r}"))
    print(f"{args.nodes} nodes, udpu, token {args.token} ms, token_coefficient 0, "
          f"consensus {int(args.token * 1.2)} ms, {args.runs} runs (median [min..max], ms)")
    for impl in impls:
        for key in ("formation_wall", "formation_log", "failover"):
            vals = [x[key] * 1000 for x in results[impl]]
            print(f"  {impl:7s} {key:15s} {statistics.median(vals):8.0f} "
                  f"[{min(vals):.0f}..{max(vals):.0f}]")
    if "debian" not in impls:
        print(f"  (Debian corosync not installed at {REAL}: ours only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
