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
formed.  Not a test: a script that prints a table, with ratios against pure/64 B.
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
            start, base = time.perf_counter(), delivered
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
    seconds = time.perf_counter() - start
    n = delivered - base
    return {"backend": wire.BACKEND, "size": size, "messages": n, "seconds": seconds,
            "rate": n / seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.nodes, args.size, args.messages)))
        return 0
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
