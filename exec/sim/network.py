"""The simulated network: per-link delay, jitter, loss, duplication and partitions.

The network only decides *whether* and *after how long* a datagram arrives; the
cluster puts arrivals on its event heap.  Link properties are a pure function of the
base parameters and the set of active network faults, recomputed (lazily, once per
change) into an N×N table so the per-datagram cost stays a table lookup plus at most
three draws from the network's own random stream.
"""

from __future__ import annotations

import random

from attrs import define, frozen

from .faults import Delay, Duplicate, Fault, Loss, OneWay, Partition, Reorder


@frozen
class LinkParams:
    """Healthy-network behaviour of every link (ms and probabilities)."""

    delay: int = 1
    jitter: int = 1
    loss: float = 0.0
    dup: float = 0.0


@define(slots=True)
class NetStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    blocked: int = 0
    duplicated: int = 0


class Network:
    """Routing decisions for datagrams between the simulated nodes.

    Self-addressed datagrams (a node's own multicast copy, a singleton ring's token)
    never touch the network: they are the local stack's loopback, delivered after 0 ms
    and never lost, which is what Totem's self delivery rule (spec §1.6) assumes.
    """

    def __init__(self, nodes: list[int], base: LinkParams, rng: random.Random) -> None:
        self.nodes = sorted(nodes)
        self.base = base
        self.rng = rng
        self.stats = NetStats()
        self._active: list[Fault] = []
        self._table: dict[tuple[int, int], tuple[bool, float, int, int, float]] = {}
        self._dirty = True

    def set_faults(self, active: list[Fault]) -> None:
        self._active = [f for f in active
                        if isinstance(f, (Loss, Duplicate, Reorder, Delay, Partition, OneWay))]
        self._dirty = True

    def _rebuild(self) -> None:
        b = self.base
        table = {}
        parts = [f for f in self._active if isinstance(f, Partition)]
        group_of = []
        for p in parts:
            g = {n: i for i, grp in enumerate(p.groups) for n in grp}
            group_of.append(g)
        oneway = {(f.src, f.dst) for f in self._active if isinstance(f, OneWay)}
        losses = [f for f in self._active if isinstance(f, Loss)]
        jitter = b.jitter + max((f.jitter for f in self._active if isinstance(f, Reorder)),
                                default=0)
        dup = max([b.dup] + [f.rate for f in self._active if isinstance(f, Duplicate)])
        delays = [f for f in self._active if isinstance(f, Delay)]
        for s in self.nodes:
            for d in self.nodes:
                if s == d:
                    continue
                blocked = (s, d) in oneway or any(g.get(s, -1) != g.get(d, -1)
                                                  for g in group_of)
                loss = max([b.loss] + [f.rate for f in losses
                                       if f.src in (None, s) and f.dst in (None, d)])
                delay = b.delay + sum(f.extra for f in delays if f.node in (s, d))
                table[(s, d)] = (blocked, loss, delay, jitter, dup)
        self._table = table
        self._dirty = False

    def reachable(self, src: int, dst: int) -> bool:
        """Whether ``src`` can currently send to ``dst`` at all (no partition/oneway)."""
        if src == dst:
            return True
        if self._dirty:
            self._rebuild()
        return not self._table[(src, dst)][0]

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        """Delays (ms) after which copies of one datagram arrive; empty when lost."""
        stats = self.stats
        stats.sent += 1
        if src == dst:
            stats.delivered += 1
            return (0,)
        if self._dirty:
            self._rebuild()
        blocked, loss, delay, jitter, dup = self._table[(src, dst)]
        if blocked:
            stats.blocked += 1
            return ()
        rng = self.rng
        if loss and rng.random() < loss:
            stats.lost += 1
            return ()
        first = delay + (rng.randint(0, jitter) if jitter else 0)
        stats.delivered += 1
        if dup and rng.random() < dup:
            stats.duplicated += 1
            return (first, delay + (rng.randint(0, jitter) if jitter else 0))
        return (first,)
