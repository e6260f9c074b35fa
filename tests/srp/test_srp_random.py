"""Seeded random runs: loss, duplication-free FIFO links, crashes, restarts, partitions.

Checked on every run: per ring, one seq → one message at every node and strictly
increasing delivery; no duplicates; virtual synchrony (nodes moving together from one
ring to the next delivered the same set in the old ring); after healing, one ring of
all nodes that carries new traffic everywhere.
"""

from __future__ import annotations

import random

import pytest

from corosync.exec.totem.events import ConfChg, ConfChgKind, Deliver, Guarantee
from corosync.exec.totem.seq import sq_lte
from corosync.exec.totem.srp import QueueFull

from test_srp_harness import Cluster


def _check(c: Cluster) -> None:
    by_ring: dict = {}
    for i, delivered in c.delivered.items():
        seen = set()
        last: dict = {}
        for d in delivered:
            assert d.payload not in seen, f"node {i} delivered {d.payload!r} twice"
            seen.add(d.payload)
            key = (d.ring_id, d.seq)
            other = by_ring.setdefault(key, (d.sender, d.payload))
            assert other == (d.sender, d.payload), f"seq {key} differs at node {i}"
            if d.ring_id in last:
                assert d.seq > last[d.ring_id] or d.seq < 0x10000 < last[d.ring_id]
            last[d.ring_id] = d.seq


def _virtual_synchrony(c: Cluster, history: dict[int, list]) -> None:
    """history[i]: sequence of ('conf', ConfChg) / ('msg', Deliver) as node i saw them."""
    transitions: dict[int, list] = {}
    for i, events in history.items():
        current = None
        got: dict = {}
        for kind, ev in events:
            if kind == "msg":
                got.setdefault(ev.ring_id, set()).add(ev.payload)
            elif ev.kind == ConfChgKind.TRANSITIONAL:
                trans = (current, ev.ring_id, ev.members)
            else:
                if current is not None:
                    transitions.setdefault(i, []).append(trans)
                current = ev.ring_id
        c.__dict__.setdefault("_got", {})[i] = got
    got = c.__dict__.get("_got", {})
    for a, ta in transitions.items():
        for old, new, members in ta:
            for b in members:
                if b == a or b not in transitions:
                    continue
                if any(o == old and n == new for o, n, _m in transitions[b]):
                    assert got[a].get(old, set()) == got[b].get(old, set()), \
                        f"nodes {a},{b} delivered different sets in {old}"


@pytest.mark.parametrize("seed", range(16))
def test_random_faults_keep_order_and_virtual_synchrony(seed):
    rng = random.Random(seed)
    n = rng.choice([3, 4, 5])
    c = Cluster(range(1, n + 1))
    history: dict[int, list] = {i: [] for i in c.nodes}
    c.observers.append(lambda i, a: history[i].append(("msg", a)) if isinstance(a, Deliver)
                       else history[i].append(("conf", a)) if isinstance(a, ConfChg) else None)
    members: dict[int, tuple] = {}
    unsafe: list = []

    def safe_check(i, a):
        """A SAFE delivery inside a regular configuration: every member still on that
        ring must hold the message (received, or already released = acknowledged)."""
        if isinstance(a, ConfChg):
            members[i] = a.members if a.kind == ConfChgKind.REGULAR else ()
        elif isinstance(a, Deliver) and a.guarantee == Guarantee.SAFE:
            for j in members.get(i, ()):
                other = c.nodes[j]
                if j in c.alive and other.ring_id == a.ring_id and other._regular is not None:
                    held = a.seq in other._regular.items or sq_lte(a.seq, other._last_released)
                    if not held and other.state.name == "OPERATIONAL":
                        unsafe.append((i, j, a.seq, a.payload))

    c.observers.append(safe_check)
    loss = rng.choice([0.0, 0.02, 0.1])
    c.drop = lambda src, dst, data: src != dst and rng.random() < loss
    c.start()
    counter = 0
    for _round in range(12):
        for _ in range(rng.randrange(5, 40)):
            i = rng.choice(sorted(c.alive))
            counter += 1
            try:
                c.send(i, b"%d:%d" % (i, counter),
                       Guarantee.SAFE if rng.random() < 0.3 else Guarantee.AGREED)
            except QueueFull:
                pass
        c.run_for(rng.randrange(50, 3_000))
        fault = rng.random()
        down = set(c.nodes) - c.alive
        if fault < 0.25 and len(c.alive) > 2:
            c.crash(rng.choice(sorted(c.alive)))
        elif fault < 0.45 and down:
            c.restart(rng.choice(sorted(down)))
        elif fault < 0.6:
            ids = sorted(c.nodes)
            rng.shuffle(ids)
            cut = rng.randrange(1, len(ids))
            c.partition(ids[:cut], ids[cut:])
        elif fault < 0.7:
            a, b = rng.sample(sorted(c.nodes), 2)
            c.blocked.add((a, b))  # asymmetric: a can no longer reach b
        elif fault < 0.8:
            c.pause(rng.choice(sorted(c.nodes)), rng.randrange(100, 3_000))
        elif fault < 0.9:
            c.heal()
    # heal phase: everything up, links clean
    c.heal()
    c.drop = None
    for i in sorted(set(c.nodes) - c.alive):
        c.restart(i)
    assert c.run_until(c.ring_formed, 120_000), {i: (s.state, s.ring_id, s.members)
                                                  for i, s in c.nodes.items()}
    for i in c.nodes:
        c.send(i, b"final-%d" % i)
    finals = {b"final-%d" % i for i in c.nodes}
    assert c.run_until(lambda: all(finals <= set(c.payloads(i)) for i in c.nodes), 30_000)
    _check(c)
    _virtual_synchrony(c, history)
    assert not unsafe, unsafe[:5]
