"""What a simulation run records, and what the checkers read.

The trace is plain data, deliberately independent of the simulator's internals, so that
tests can build or corrupt one by hand and see each checker fire.

Everything that happens is stamped with the virtual time *and* a global event index
(the position of the event being processed in the run); the index orders things that
happen at the same millisecond.
"""

from __future__ import annotations

from attrs import define, field, frozen

from ..totem.events import ConfChgKind
from ..totem.wire import RingId
from .message import Tag

#: A totemsrp message identity: (ring rep, ring seq, message seq).
PacketKey = tuple[int, int, int]


@frozen
class SendRec:
    """An application message accepted by ``TotemPg.mcast`` (i.e. not refused with
    QueueFull)."""

    time: int
    idx: int
    node: int
    incarnation: int
    tag: Tag
    size: int
    guarantee: int
    groups: tuple[bytes, ...]


@frozen
class ConfRec:
    time: int
    idx: int
    kind: ConfChgKind
    members: tuple[int, ...]
    left: tuple[int, ...]
    joined: tuple[int, ...]
    ring_id: RingId


@frozen
class DelivRec:
    """One PgDeliver.  ``tag`` is None when the bytes are not a simulator message at all;
    ``intact`` is False when the bytes differ from what the tag's sender sent."""

    time: int
    idx: int
    tag: Tag | None
    sender: int
    ring_id: RingId
    guarantee: int
    intact: bool
    groups: tuple[bytes, ...]


@frozen
class SafeRec:
    """A totemsrp-level Deliver of a SAFE MCAST, with the members of the configuration
    the node was in at that moment (its latest ConfChg, transitional or regular)."""

    time: int
    idx: int
    ring_id: RingId
    seq: int
    members: tuple[int, ...]


@define(slots=True)
class Incarnation:
    """One life of one node, from start (or restart) to crash/leave or end of run."""

    node: int
    number: int
    start_time: int
    start_idx: int
    end_time: int | None = None
    end_idx: int | None = None
    end_reason: str | None = None  # "crash" | "leave" | "error"
    events: list[ConfRec | DelivRec] = field(factory=list)
    safe: list[SafeRec] = field(factory=list)
    #: totemsrp-level view (below totempg): ``("c", kind, ring_id, members)`` for each
    #: ConfChg and ``("d", ring_rep, ring_seq, seq)`` for each delivered MCAST.
    srp_events: list[tuple] = field(factory=list)
    #: SAFE packets this incarnation holds (received or sent), with the index of the
    #: event in which it first held each.
    has: dict[PacketKey, int] = field(factory=dict)

    @property
    def alive_at_end(self) -> bool:
        return self.end_reason is None

    def covers(self, idx: int) -> bool:
        return self.start_idx <= idx and (self.end_idx is None or idx <= self.end_idx)

    def regular_confchgs(self) -> list[ConfRec]:
        return [e for e in self.events
                if isinstance(e, ConfRec) and e.kind == ConfChgKind.REGULAR]


@define(slots=True)
class Trace:
    nodes: tuple[int, ...]
    incarnations: list[Incarnation] = field(factory=list)
    sent: dict[Tag, SendRec] = field(factory=dict)
    #: Probe messages sent after the heal; every live node must deliver all of them.
    probes: list[Tag] = field(factory=list)
    heal_time: int | None = None
    #: Virtual ms after the heal by which membership must have converged.
    bound: int | None = None
    end_time: int = 0
    #: Violations found while running (exceptions from a node, livelock, ...).
    runtime_errors: list[str] = field(factory=list)

    def incarnation_at(self, node: int, idx: int) -> Incarnation | None:
        for inc in self.incarnations:
            if inc.node == node and inc.covers(idx):
                return inc
        return None
