#!/usr/bin/env python3
"""Messages ordered per second through a simulated 3-node Totem ring (core only).

    python bench/totem_core.py [--messages N] [--nodes 3]

For each codec backend (``COROSYNC_CODEC=pure`` and ``c``; each in its own subprocess,
since the backend is chosen at import time) and each message size (64 B, 1 KiB), three
``TotemPg(Srp)`` nodes form a ring over a zero-delay, lossless, in-process FIFO network
and every node keeps its send queue topped up.  The clock is virtual and only advances
when no datagram is in flight (to fire timers), so the figure is pure CPU cost of the
protocol stack: wire codec, srp token/mcast handling, totempg packing and unpacking.

"Ordered" = delivered (PgDeliver) at node 1, counted from the moment the full ring has
formed.  Not a test: a script that prints a table, with ratios against pure/64 B.  Rates
use the worker's CPU time (``time.process_time``): on a shared, loaded machine wall time
swings far more.

A/B comparison of two Srp implementations (e.g. before/after a change)::

    git show HEAD~1:exec/totem/srp.py > /tmp/srp_before.py
    python bench/totem_core.py --ab /tmp/srp_before.py --rounds 6

runs the current srp and the given file alternately (interleaved, so machine load hits
both alike) and prints per-round rates, medians and the ratio.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import time
from collections import deque

TARGET = 200_000  # msg/s of 64 B, the goal for later tuning


def load_srp(path: str) -> None:
    """Install the Srp module at ``path`` as ``corosync.exec.totem.srp`` (A/B runs)."""
    import importlib.util

    import corosync.exec.totem as pkg

    spec = importlib.util.spec_from_file_location("corosync.exec.totem.srp", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["corosync.exec.totem.srp"] = mod
    spec.loader.exec_module(mod)
    pkg.srp = mod


def srp_worker(nodes: int, size: int, messages: int) -> dict:
    """Srp alone (no totempg): one MCAST per message, every node's queue topped up.
    Isolates the cost of srp (token visits, MCAST receive/delivery) plus the codec."""
    from corosync.exec.totem import wire
    from corosync.exec.totem.config import derive
    from corosync.exec.totem.events import (CancelTimer, ConfChg, ConfChgKind, Deliver,
                                            Multicast, StartTimer, Unicast)
    from corosync.exec.totem.srp import Srp

    cfg = derive(nodes)
    ids = list(range(1, nodes + 1))
    stacks = {i: Srp(i, cfg) for i in ids}
    net: deque = deque()
    timers: list = []
    armed: dict = {}
    gen = 0
    now = 0
    delivered = 0
    formed = {i: False for i in ids}
    payload = b"x" * size

    def apply(node: int, actions: list) -> None:
        nonlocal gen, delivered
        for a in actions:
            t = type(a)
            if t is Deliver:
                if node == 1:
                    delivered += 1
            elif t is Multicast:
                for dst in ids:
                    net.append((dst, a.data))
            elif t is Unicast:
                net.append((a.nodeid, a.data))
            elif t is StartTimer:
                gen += 1
                armed[(node, a.kind)] = gen
                heapq.heappush(timers, (now + a.ms, gen, node, a.kind))
            elif t is CancelTimer:
                armed.pop((node, a.kind), None)
            elif t is ConfChg and a.kind == ConfChgKind.REGULAR:
                formed[node] = len(a.members) == nodes
                apply(node, stacks[node].trans_ack(now))

    def top_up() -> None:
        for i in ids:
            srp = stacks[i]
            for _ in range(min(srp.queue_space(), 64)):
                apply(i, srp.send(payload, 0, now))

    for i in ids:
        apply(i, stacks[i].start(now))
    start = None
    base = 0
    while True:
        if start is None and all(formed.values()):
            start, base = time.process_time(), delivered
        if start is not None and delivered - base >= messages:
            break
        if net:
            dst, data = net.popleft()
            apply(dst, stacks[dst].receive(data, now))
            if start is not None and data[3] == 0:  # a token moved: refill
                top_up()
            continue
        if start is not None:
            top_up()
            if net:
                continue
        while timers:
            t, g, node, kind = heapq.heappop(timers)
            if armed.get((node, kind)) == g:
                del armed[(node, kind)]
                now = t
                apply(node, stacks[node].timer_expired(kind, now))
                break
        else:
            raise RuntimeError("ring stalled: no datagram and no timer")
        if now > 600_000:
            raise RuntimeError("ring did not form within 600 virtual seconds")
    seconds = time.process_time() - start
    n = delivered - base
    return {"backend": wire.BACKEND, "size": size, "messages": n, "seconds": seconds,
            "rate": n / seconds}


def worker(nodes: int, size: int, messages: int) -> dict:
    from corosync.exec.totem import wire
    from corosync.exec.totem.config import derive
    from corosync.exec.totem.events import (CancelTimer, ConfChg, ConfChgKind, Guarantee,
                                            Multicast, PgDeliver, StartTimer, Unicast)
    from corosync.exec.totem.pg import QueueFull, TotemPg
    from corosync.exec.totem.srp import Srp

    cfg = derive(nodes)
    ids = list(range(1, nodes + 1))
    stacks = {i: TotemPg(Srp(i, cfg)) for i in ids}
    net: deque = deque()
    timers: list = []
    armed: dict = {}
    gen = 0
    now = 0
    delivered = 0
    formed = {i: False for i in ids}
    payload = b"x" * size
    groups = [b"bench"]

    def apply(node: int, actions: list) -> None:
        nonlocal gen, delivered
        for a in actions:
            t = type(a)
            if t is PgDeliver:
                if node == 1:
                    delivered += 1
            elif t is Multicast:
                for dst in ids:
                    net.append((dst, a.data))
            elif t is Unicast:
                net.append((a.nodeid, a.data))
            elif t is StartTimer:
                gen += 1
                armed[(node, a.kind)] = gen
                heapq.heappush(timers, (now + a.ms, gen, node, a.kind))
            elif t is CancelTimer:
                armed.pop((node, a.kind), None)
            elif t is ConfChg and a.kind == ConfChgKind.REGULAR:
                formed[node] = len(a.members) == nodes
                apply(node, stacks[node].trans_ack(now))

    def top_up() -> None:
        for i in ids:
            pg = stacks[i]
            try:
                for _ in range(64):
                    apply(i, pg.mcast(groups, payload, Guarantee.AGREED, now))
            except QueueFull:
                pass

    for i in ids:
        apply(i, stacks[i].start(now))
    start = None
    base = 0
    steps = 0
    while True:
        if start is None and all(formed.values()):
            start, base = time.process_time(), delivered
        if start is not None and delivered - base >= messages:
            break
        if net:
            dst, data = net.popleft()
            apply(dst, stacks[dst].receive(data, now))
            steps += 1
            if start is not None and steps % 8 == 0:
                top_up()
            continue
        if start is not None:
            top_up()
            if net:
                continue
        while timers:
            t, g, node, kind = heapq.heappop(timers)
            if armed.get((node, kind)) == g:
                del armed[(node, kind)]
                now = t
                apply(node, stacks[node].timer_expired(kind, now))
                break
        else:
            raise RuntimeError("ring stalled: no datagram and no timer")
        if now > 600_000:
            raise RuntimeError("ring did not form within 600 virtual seconds")
    seconds = time.process_time() - start
    n = delivered - base
    return {"backend": wire.BACKEND, "size": size, "messages": n, "seconds": seconds,
            "rate": n / seconds}


def _run_worker(size: int, messages: int, nodes: int, srp: str | None,
                backend: str = "pure", srp_only: bool = False) -> dict | None:
    env = dict(os.environ, COROSYNC_CODEC=backend)
    argv = [sys.executable, __file__, "--worker", "--size", str(size),
            "--messages", str(messages), "--nodes", str(nodes)]
    if srp:
        argv += ["--srp", srp]
    if srp_only:
        argv.append("--srp-only")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr.strip().splitlines()[-1:] or ["worker failed"], file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def ab(args: argparse.Namespace) -> int:
    import statistics

    print(f"A/B, {args.nodes}-node ring, pure codec, CPU-time msg/s; "
          f"A = current srp, B = {args.ab}")
    for label, size, srp_only in (("pg", 64, False), ("pg", 1024, False),
                                  ("srp-only", 64, True)):
        a_rates: list[float] = []
        b_rates: list[float] = []
        for i in range(args.rounds):
            order = [(a_rates, None), (b_rates, args.ab)]
            if i % 2:
                order.reverse()
            for rates, srp in order:
                r = _run_worker(size, args.messages, args.nodes, srp, srp_only=srp_only)
                if r is None:
                    return 1
                rates.append(r["rate"])
        ma, mb = statistics.median(a_rates), statistics.median(b_rates)
        print(f"{label:<8} {size:>5} B  A median {ma:>9,.0f}  B median {mb:>9,.0f}  "
              f"A/B {ma / mb:.3f}"
              f"   (A {' '.join(f'{x:,.0f}' for x in a_rates)} | "
              f"B {' '.join(f'{x:,.0f}' for x in b_rates)})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--srp", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--srp-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ab", metavar="SRP_FILE", default=None,
                    help="compare the current srp with this srp.py (interleaved rounds)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per side with --ab (5)")
    args = ap.parse_args()
    if args.worker:
        if args.srp:
            load_srp(args.srp)
        run = srp_worker if args.srp_only else worker
        print(json.dumps(run(args.nodes, args.size, args.messages)))
        return 0
    if args.ab:
        return ab(args)
    rows = []
    for backend in ("pure", "c"):
        for size in (64, 1024):
            env = dict(os.environ, COROSYNC_CODEC=backend)
            proc = subprocess.run([sys.executable, __file__, "--worker", "--size", str(size),
                                   "--messages", str(args.messages), "--nodes", str(args.nodes)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                err = proc.stderr.strip().splitlines()
                rows.append((backend, size, None, err[-1] if err else "failed"))
                continue
            r = json.loads(proc.stdout)
            rows.append((r["backend"], size, r["rate"], f"{r['messages']} msgs in "
                                                         f"{r['seconds']:.2f} s"))
    base = next((r[2] for r in rows if r[0] == "pure" and r[1] == 64 and r[2]), None)
    print(f"Totem core, {args.nodes}-node ring, messages ordered per second "
          f"(target {TARGET:,} msg/s at 64 B)")
    print(f"{'backend':<8} {'size':>6} {'msg/s':>10} {'vs pure 64B':>12}  detail")
    for backend, size, rate, detail in rows:
        if rate is None:
            print(f"{backend:<8} {size:>6} {'-':>10} {'-':>12}  {detail}")
        else:
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"{backend:<8} {size:>6} {rate:>10,.0f} {ratio:>12}  {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
