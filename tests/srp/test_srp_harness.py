"""A minimal deterministic driver for Srp nodes (virtual clock, timer heap, FIFO network),
plus the basic ring-formation tests.  Other tests/srp/test_srp_*.py files import it.

Every Multicast reaches every node including the sender (self delivery is part of the
protocol); a Unicast reaches its target.  Both take ``delay`` ms.  Faults: a drop
predicate, link blocks (partitions) and crashes.  Nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import heapq
from typing import Callable, Iterable, Optional

from corosync.exec.totem.config import TotemConfig, derive
from corosync.exec.totem.events import (CancelTimer, ConfChg, ConfChgKind, Deliver, Log,
                                        Multicast, PersistRingSeq, StartTimer, TimerKind,
                                        Unicast)
from corosync.exec.totem.srp import MembState, Srp
from corosync.exec.totem.wire import RingId

DropFn = Callable[[int, int, bytes], bool]


def fast_config(n: int, **explicit) -> TotemConfig:
    """Short (virtual) timers: token 1000 ms and friends derived as corosync does."""
    explicit.setdefault("token", 1000)
    explicit.setdefault("token_coefficient", 0)
    return derive(n, **explicit)


class Cluster:
    """Nodes 1..n (or the ids given), a virtual clock and a FIFO network."""

    def __init__(self, ids: Iterable[int], config: Optional[TotemConfig] = None,
                 delay: int = 1, ring_seqs: Optional[dict[int, int]] = None,
                 trans_ack: bool = True) -> None:
        ids = list(ids)
        self.config = config or fast_config(len(ids))
        self.delay = delay
        self.now = 0
        self.nodes: dict[int, Srp] = {
            i: Srp(i, self.config, ring_seq=(ring_seqs or {}).get(i, 0)) for i in ids}
        #: what receives the calls: the Srp itself, or a wrapper with the same surface
        self.drivers: dict[int, object] = dict(self.nodes)
        self.alive: set[int] = set(ids)
        self.blocked: set[tuple[int, int]] = set()
        #: node -> virtual time until which it is frozen (its inputs wait, then flood in)
        self.paused: dict[int, int] = {}
        self.drop: Optional[DropFn] = None
        self.auto_trans_ack = trans_ack
        self._heap: list[tuple[int, int, tuple]] = []
        self._count = 0
        self._timer_gen: dict[tuple[int, TimerKind], int] = {}
        self.delivered: dict[int, list[Deliver]] = {i: [] for i in ids}
        self.confchgs: dict[int, list[ConfChg]] = {i: [] for i in ids}
        self.logs: dict[int, list[Log]] = {i: [] for i in ids}
        self.persisted: dict[int, list[int]] = {i: [] for i in ids}
        self.sent_unicast: list[tuple[int, int, bytes]] = []
        self.observers: list[Callable[[int, object], None]] = []
        self.events = 0

    # -- driving
    def _push(self, at: int, item: tuple) -> None:
        self._count += 1
        heapq.heappush(self._heap, (at, self._count, item))

    def apply(self, nodeid: int, actions: list) -> None:
        for a in actions:
            for obs in self.observers:
                obs(nodeid, a)
            if isinstance(a, Multicast):
                for dst in self.nodes:
                    self._send(nodeid, dst, a.data)
            elif isinstance(a, Unicast):
                self.sent_unicast.append((nodeid, a.nodeid, a.data))
                self._send(nodeid, a.nodeid, a.data)
            elif isinstance(a, StartTimer):
                key = (nodeid, a.kind)
                gen = self._timer_gen.get(key, 0) + 1
                self._timer_gen[key] = gen
                self._push(self.now + a.ms, ("timer", nodeid, a.kind, gen))
            elif isinstance(a, CancelTimer):
                key = (nodeid, a.kind)
                self._timer_gen[key] = self._timer_gen.get(key, 0) + 1
            elif isinstance(a, Deliver):
                self.delivered[nodeid].append(a)
            elif isinstance(a, ConfChg):
                self.confchgs[nodeid].append(a)
                if a.kind == ConfChgKind.REGULAR and self.auto_trans_ack:
                    self.apply(nodeid, self.drivers[nodeid].trans_ack(self.now))
            elif isinstance(a, PersistRingSeq):
                self.persisted[nodeid].append(a.seq)
            elif isinstance(a, Log):
                self.logs[nodeid].append(a)

    def _send(self, src: int, dst: int, data: bytes) -> None:
        if dst not in self.alive or src not in self.alive:
            return
        if src != dst and (src, dst) in self.blocked:
            return
        if self.drop is not None and self.drop(src, dst, data):
            return
        self._push(self.now + self.delay, ("net", dst, data))

    def start(self, *ids: int) -> None:
        for i in ids or list(self.nodes):
            self.apply(i, self.drivers[i].start(self.now))

    def send(self, nodeid: int, payload: bytes, guarantee: int = 0) -> None:
        self.apply(nodeid, self.nodes[nodeid].send(payload, guarantee, self.now))

    def step(self) -> bool:
        if not self._heap:
            return False
        at, _, item = heapq.heappop(self._heap)
        self.now = max(self.now, at)
        self.events += 1
        until = self.paused.get(item[1])
        if until is not None:
            if self.now < until:
                self._push(until, item)  # order among the held items is kept
                return True
            del self.paused[item[1]]
        if item[0] == "net":
            _, dst, data = item
            if dst in self.alive:
                self.apply(dst, self.drivers[dst].receive(data, self.now))
        else:
            _, nodeid, kind, gen = item
            if nodeid in self.alive and self._timer_gen.get((nodeid, kind)) == gen:
                self.apply(nodeid, self.drivers[nodeid].timer_expired(kind, self.now))
        return True

    def run_until(self, pred: Callable[[], bool], timeout: int = 60_000) -> bool:
        """Process events until ``pred()`` holds or ``timeout`` ms of virtual time pass."""
        deadline = self.now + timeout
        while not pred():
            if not self._heap or self._heap[0][0] > deadline:
                return False
            self.step()
        return True

    def run_for(self, ms: int) -> None:
        deadline = self.now + ms
        while self._heap and self._heap[0][0] <= deadline:
            self.step()
        self.now = deadline

    # -- faults
    def crash(self, nodeid: int) -> None:
        self.alive.discard(nodeid)

    def restart(self, nodeid: int) -> None:
        """A crashed node comes back as a fresh instance with its persisted ring seq."""
        for kind in TimerKind:
            key = (nodeid, kind)
            self._timer_gen[key] = self._timer_gen.get(key, 0) + 1
        seqs = self.persisted[nodeid]
        self.nodes[nodeid] = Srp(nodeid, self.config, ring_seq=seqs[-1] if seqs else 0)
        self.drivers[nodeid] = self.nodes[nodeid]
        self.alive.add(nodeid)
        self.apply(nodeid, self.nodes[nodeid].start(self.now))

    def partition(self, *groups: Iterable[int]) -> None:
        groups = [set(g) for g in groups]
        self.blocked = {(a, b) for g in groups for h in groups if g is not h
                        for a in g for b in h}

    def pause(self, nodeid: int, ms: int) -> None:
        self.paused[nodeid] = self.now + ms

    def heal(self) -> None:
        self.blocked = set()

    # -- queries
    def ring_formed(self, ids: Optional[Iterable[int]] = None) -> bool:
        ids = sorted(ids if ids is not None else self.alive)
        rings = {self.nodes[i].ring_id for i in ids}
        return (len(rings) == 1 and all(self.nodes[i].state is MembState.OPERATIONAL
                                         and self.nodes[i].members == tuple(ids) for i in ids)
                and all(self.confchgs[i] and self.confchgs[i][-1].ring_id in rings
                        and self.confchgs[i][-1].kind == ConfChgKind.REGULAR for i in ids))

    def payloads(self, nodeid: int) -> list[bytes]:
        return [d.payload for d in self.delivered[nodeid]]

    def log_lines(self, nodeid: int) -> list[str]:
        return [entry.message for entry in self.logs[nodeid]]


def formed_cluster(n: int, **kw) -> Cluster:
    c = Cluster(range(1, n + 1), **kw)
    c.start()
    assert c.run_until(c.ring_formed, 120_000), {i: s.state for i, s in c.nodes.items()}
    return c


# ---------------------------------------------------------------------- tests
def test_singleton_forms_from_own_join():
    c = Cluster([1])
    c.start()
    assert c.persisted[1] == [1]  # start(): the bumped seq is in use
    assert c.run_until(c.ring_formed, 10_000)
    node = c.nodes[1]
    assert node.ring_id == RingId(1, 5)
    assert node.members == (1,)
    assert c.persisted[1] == [1, 5]
    kinds = [(cc.kind, cc.members, cc.left, cc.joined) for cc in c.confchgs[1]]
    assert kinds == [(ConfChgKind.TRANSITIONAL, (), (), ()),
                     (ConfChgKind.REGULAR, (1,), (), (1,))]
    assert "A new membership (1.5) was formed. Members joined: 1" in c.log_lines(1)
    assert "entering GATHER state from 15(interface change)." in c.log_lines(1)
    assert node.stats.memb_join_tx >= 1 and node.stats.memb_join_rx >= 1
    assert node.stats.operational_entered == 1


def test_singleton_uses_persisted_ring_seq():
    c = Cluster([7], ring_seqs={7: 0x20})
    c.start()
    assert c.persisted[7] == [0x21]
    assert c.run_until(c.ring_formed, 10_000)
    assert c.nodes[7].ring_id == RingId(7, 0x25)


def test_singleton_delivers_its_own_messages_in_order():
    c = formed_cluster(1)
    for i in range(50):
        c.send(1, b"m%d" % i)
    assert c.run_until(lambda: len(c.delivered[1]) == 50, 10_000)
    assert c.payloads(1) == [b"m%d" % i for i in range(50)]
    seqs = [d.seq for d in c.delivered[1]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 50


def test_two_nodes_staggered_start_form_one_ring_with_seq_bump():
    c = Cluster([1, 2])
    c.start(1)
    assert c.run_until(lambda: c.ring_formed([1]), 10_000)
    assert c.nodes[1].ring_id == RingId(1, 5)
    c.start(2)
    assert c.run_until(c.ring_formed, 30_000)
    # rep = lowest nodeid; seq = highest seq seen in any JOIN + 4
    assert c.nodes[1].ring_id == c.nodes[2].ring_id == RingId(1, 9)
    assert c.persisted[2][-1] == 9
    # node 2 hears its own JOIN first and forms a singleton (2.5), then merges
    last = c.confchgs[2][-2:]
    assert last[0].kind == ConfChgKind.TRANSITIONAL and last[0].members == (2,)
    assert last[1].kind == ConfChgKind.REGULAR and last[1].members == (1, 2)
    assert last[1].joined == (1,)
    assert c.confchgs[1][-1].joined == (2,)
    assert c.confchgs[1][-2].members == (1,) and c.confchgs[1][-2].left == ()
    assert "A new membership (1.9) was formed. Members joined: 2" in c.log_lines(1)
    assert c.log_lines(2).count("A new membership (2.5) was formed. Members joined: 2") == 1
    assert "A new membership (1.9) was formed. Members joined: 1" in c.log_lines(2)


def test_three_and_five_nodes_form_one_ring():
    for n in (3, 5):
        c = formed_cluster(n)
        ring = c.nodes[1].ring_id
        assert ring.rep == 1 and ring.seq % 4 == 1  # 1 + 4k: every bump is +4
        for i in range(1, n + 1):
            assert c.confchgs[i][-1].members == tuple(range(1, n + 1))


def test_joiner_with_higher_stored_seq_raises_ring_seq():
    c = Cluster([1, 2], ring_seqs={2: 0x40})
    c.start(1)
    assert c.run_until(lambda: c.ring_formed([1]), 10_000)
    c.start(2)
    assert c.run_until(c.ring_formed, 30_000)
    # node 2 first forms its singleton 2.45, the merged ring is 0x45 + 4
    assert c.nodes[1].ring_id == RingId(1, 0x41 + 4 + 4)
