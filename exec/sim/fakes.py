"""Tiny stand-in stacks that exercise the simulator without Totem.

They exist to test the simulator itself (clock, network, driver, checkers) in isolation
from the real state machine:

* :class:`SequencerStack` is a *correct* total-order protocol on a fault-free network:
  node 1 stamps every message with a sequence number and multicasts it; everybody
  delivers in stamp order.  A clean run must show zero violations — the checkers must
  not cry wolf.
* :class:`UnorderedStack` delivers a message the moment it arrives.  With jitter, nodes
  see different orders, and the agreed-order checker must notice.
"""

from __future__ import annotations

import struct
from typing import Any

from ..totem.config import TotemConfig
from ..totem.events import ConfChg, ConfChgKind, Guarantee, Multicast, PgDeliver, Unicast
from ..totem.wire import RingId, decode_groups, encode_groups

_HEAD = struct.Struct("<4sIIB")  # kind, origin, stamp, guarantee
RING = RingId(1, 4)


class FakeQueueFull(Exception):
    pass


class SequencerStack:
    def __init__(self, nodeid: int, config: TotemConfig, ring_seq: int, members: tuple[int, ...],
                 *, ordered: bool = True, queue_max: int = 1 << 30) -> None:
        self.nodeid = nodeid
        self.members = members
        self.ordered = ordered
        self.next_stamp = 1  # sequencer only
        self.expect = 1
        self.pending: dict[int, tuple[int, int, bytes]] = {}
        self.queue_max = queue_max
        self.in_flight = 0
        self.submitted = 0  # my submissions, numbered so the sequencer keeps them FIFO
        self.sub_next: dict[int, int] = {}
        self.sub_wait: dict[tuple[int, int], tuple[int, bytes]] = {}

    def start(self, now: int) -> list:
        return [ConfChg(ConfChgKind.TRANSITIONAL, (self.nodeid,), (), (), RING),
                ConfChg(ConfChgKind.REGULAR, self.members, (),
                        tuple(m for m in self.members if m != self.nodeid), RING)]

    def mcast(self, groups: list[bytes], message: bytes, guarantee: Guarantee, now: int) -> list:
        if self.in_flight >= self.queue_max:
            raise FakeQueueFull()
        self.in_flight += 1
        body = encode_groups(groups) + message
        if not self.ordered:
            return [Multicast(_HEAD.pack(b"STMP", self.nodeid, 0, guarantee) + body)]
        self.submitted += 1
        return [Unicast(1, _HEAD.pack(b"SUBM", self.nodeid, self.submitted, guarantee) + body)]

    def receive(self, data: bytes, now: int) -> list:
        kind, origin, stamp, guarantee = _HEAD.unpack_from(data)
        body = data[_HEAD.size:]
        if kind == b"SUBM":
            self.sub_wait[(origin, stamp)] = (guarantee, body)
            out = []
            nxt = self.sub_next.get(origin, 1)
            while (origin, nxt) in self.sub_wait:
                g, b = self.sub_wait.pop((origin, nxt))
                out.append(Multicast(_HEAD.pack(b"STMP", origin, self.next_stamp, g) + b))
                self.next_stamp += 1
                nxt += 1
            self.sub_next[origin] = nxt
            return out
        if not self.ordered:
            return [self._up(origin, guarantee, body)]
        self.pending[stamp] = (origin, guarantee, body)
        out = []
        while self.expect in self.pending:
            out.append(self._up(*self.pending.pop(self.expect)))
            self.expect += 1
        return out

    def _up(self, origin: int, guarantee: int, body: bytes) -> PgDeliver:
        if origin == self.nodeid:
            self.in_flight -= 1
        groups, off = decode_groups(body)
        return PgDeliver(origin, tuple(groups), body[off:], RING, guarantee)

    def timer_expired(self, kind: Any, now: int) -> list:
        return []

    def trans_ack(self, now: int) -> list:
        return []

    def leave(self, now: int) -> list:
        return []


def sequencer_factory(nodes: int, **kw: Any):
    """A SimConfig ``stack`` factory building :class:`SequencerStack` nodes."""
    members = tuple(range(1, nodes + 1))

    def make(nodeid: int, config: TotemConfig, ring_seq: int, probe: Any) -> SequencerStack:
        return SequencerStack(nodeid, config, ring_seq, members, **kw)

    return make


def fake_queue_full() -> tuple[type[BaseException], ...]:
    return (FakeQueueFull,)
