"""The service synchronisation protocol of corosync 3 (``exec/sync.c``), sans-IO.

After every REGULAR configuration change every node runs the same state machine, driven
only by the totally ordered stream of messages in group ``sync`` (spec/totem-wire.md §5.3):

1. *Service list build*: send SERVICE_BUILD with the ids of the local services that take
   part in sync (ascending), call every local service's ``sync_init``.  Each SERVICE_BUILD
   of the current ring marks its sender and adds ids we do not know as *dummy* services
   (no-op sync), keeping the list sorted.  When every member has been marked the
   processing phase starts with the first service of the merged list.
2. *Processing*, one service at a time: call its ``sync_process`` until it reports done
   (it multicasts its sync messages in group ``a``), then send one BARRIER.  Barriers carry
   no service id: they are *counted*; when every member's barrier of the current ring has
   been seen the service is activated and the next one starts.  After the last one:
   "Completed service synchronization, ready to provide service." and ``completed()``.
3. A new configuration change aborts: the current service's ``sync_abort`` runs and the
   ring id used for comparisons is zeroed, so stale barriers and builds are discarded.

There is no timeout — exactly like corosync, a member that never sends its barrier keeps
everyone in sync until the next membership change.  A BARRIER is never sent twice per
phase nor before this node has itself seen the previous phase complete, since real nodes
would count it in the wrong phase.

The engine does not send directly: ``send(message)`` (group ``sync``) may raise to signal
a full queue, in which case the message is retried on the next :meth:`SyncEngine.pump`.
"""

from __future__ import annotations

import enum
import struct
from typing import Callable, Protocol

from attrs import define

from .service import REQ_HEADER, RING_ID, Malformed
from .totem.events import LogLevel
from .totem.wire import ZERO_RING, RingId

MSG_BARRIER = 0
MSG_SERVICE_BUILD = 1
BARRIER_SIZE = 32
SERVICE_BUILD_SIZE = 552
SERVICE_LIST_MAX = 128
_BUILD_COUNT = struct.Struct("<i4x")
COMPLETED_LOG = "Completed service synchronization, ready to provide service."


class SyncParticipant(Protocol):
    """The sync callbacks of one local service."""

    name: str

    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None: ...
    def sync_process(self) -> bool: ...
    def sync_activate(self) -> None: ...
    def sync_abort(self) -> None: ...


class SyncState(enum.Enum):
    IDLE = "idle"  # never started, or completed
    SERVICELIST_BUILD = "build"
    PROCESS = "process"  # calling the current service's sync_process
    BARRIER = "barrier"  # our barrier for the current service is out (or pending)


@define
class _Entry:
    service_id: int
    name: str
    local: SyncParticipant | None  # None: a dummy for an id only others run


@define
class SyncStats:
    started: int = 0
    completed: int = 0
    aborted: int = 0
    barriers_rx: int = 0
    builds_rx: int = 0
    stale_rx: int = 0  # build/barrier for another ring
    dummies: int = 0  # unknown service ids added from others' builds
    send_retries: int = 0
    malformed: int = 0


def encode_barrier(ring_id: RingId) -> bytes:
    return (REQ_HEADER.pack(MSG_BARRIER, BARRIER_SIZE)
            + RING_ID.pack(ring_id.rep, ring_id.seq) + bytes(4))


def encode_service_build(ring_id: RingId, service_ids: list[int]) -> bytes:
    if len(service_ids) > SERVICE_LIST_MAX:
        raise ValueError("too many services")
    ids = list(service_ids) + [0] * (SERVICE_LIST_MAX - len(service_ids))
    return (REQ_HEADER.pack(MSG_SERVICE_BUILD, SERVICE_BUILD_SIZE)
            + RING_ID.pack(ring_id.rep, ring_id.seq) + bytes(4)
            + _BUILD_COUNT.pack(len(service_ids)) + struct.pack(f"<{SERVICE_LIST_MAX}i", *ids))


def decode_sync(message: bytes) -> tuple[int, RingId, list[int]]:
    """``(msg id, ring id, service ids)`` of a sync message; Malformed when not one.

    Sync messages are never byte-swapped by real receivers (they cannot be), so neither
    are they here."""
    if len(message) < BARRIER_SIZE - 4:
        raise Malformed("sync_truncated", f"{len(message)} bytes")
    msg_id, _size = REQ_HEADER.unpack_from(message)
    rep, seq = RING_ID.unpack_from(message, 16)
    ring = RingId(rep, seq)
    if msg_id == MSG_BARRIER:
        return msg_id, ring, []
    if msg_id == MSG_SERVICE_BUILD:
        if len(message) < 40:
            raise Malformed("sync_truncated", f"service build of {len(message)} bytes")
        (count,) = _BUILD_COUNT.unpack_from(message, 32)
        if not 0 <= count <= SERVICE_LIST_MAX or len(message) < 40 + 4 * count:
            raise Malformed("sync_bad_count", f"service build with {count} entries "
                                              f"in {len(message)} bytes")
        return msg_id, ring, list(struct.unpack_from(f"<{count}i", message, 40))
    raise Malformed("sync_unknown", f"sync message id {msg_id}")


class SyncEngine:
    """sync.c's state machine (module docstring).  ``services`` maps service id → local
    participant; ``send`` multicasts in group ``sync`` (may raise to mean "queue full");
    ``completed`` is called once per finished sync; ``log(level, text)``."""

    def __init__(self, services: dict[int, SyncParticipant], send: Callable[[bytes], None],
                 completed: Callable[[], None],
                 log: Callable[[LogLevel, str], None] = lambda _l, _m: None) -> None:
        self.services = services
        self._send = send
        self._completed = completed
        self._log = log
        self.stats = SyncStats()
        self.state = SyncState.IDLE
        self.ring_id: RingId = ZERO_RING
        self.members: tuple[int, ...] = ()
        self.trans_list: tuple[int, ...] = ()
        self.service_list: list[_Entry] = []
        self.processing_idx = 0
        self._received: set[int] = set()
        self._pending: list[bytes] = []  # sync messages refused by send(), in order
        #: for tests and diagnostics: (event, service id or None) in order
        self.trace: list[tuple[str, int | None]] = []

    # ------------------------------------------------------------------ inputs
    def save_transitional(self, members: tuple[int, ...]) -> None:
        self.trans_list = tuple(members)

    def abort(self) -> None:
        """A configuration change arrived while sync was running."""
        if self.state in (SyncState.PROCESS, SyncState.BARRIER) \
                and self.processing_idx < len(self.service_list):
            entry = self.service_list[self.processing_idx]
            if entry.local is not None:
                self._guard(entry, "sync_abort", entry.local.sync_abort)
            self.trace.append(("abort", entry.service_id))
        if self.state is not SyncState.IDLE:
            self.stats.aborted += 1
        # corosync zeroes the ring id so stale barriers/builds never match; we also go idle
        # so a second confchg of the same change does not abort the service twice
        self.state = SyncState.IDLE
        self.ring_id = ZERO_RING
        self._pending.clear()

    def start(self, members: tuple[int, ...], ring_id: RingId) -> None:
        """A REGULAR configuration: build and announce the service list, init services."""
        self.stats.started += 1
        self.ring_id = ring_id
        self.members = tuple(members)
        self._received = set()
        self.processing_idx = 0
        self._pending.clear()
        self.state = SyncState.SERVICELIST_BUILD
        self.service_list = [_Entry(sid, svc.name, svc)
                             for sid, svc in sorted(self.services.items())]
        self.trace.append(("build", None))
        self._transmit(encode_service_build(ring_id, [e.service_id for e in self.service_list]))
        # sync.c keeps only the transitional members that are still members
        trans = tuple(n for n in self.trans_list if n in self.members)
        self.trans_list = trans
        for entry in self.service_list:
            assert entry.local is not None
            self._guard(entry, "sync_init", lambda e=entry: e.local.sync_init(
                trans, self.members, ring_id))

    def deliver(self, sender: int, message: bytes) -> None:
        """One message of group ``sync`` in agreed order."""
        try:
            msg_id, ring, ids = decode_sync(message)
        except Malformed as exc:
            self.stats.malformed += 1
            self._log(LogLevel.DEBUG, f"sync: dropped malformed message from {sender}: {exc}")
            return
        if msg_id == MSG_BARRIER:
            self.stats.barriers_rx += 1
            self._barrier(sender, ring)
        else:
            self.stats.builds_rx += 1
            self._service_build(sender, ring, ids)

    def pump(self) -> None:
        """Retry whatever could not be sent or processed (queue was full)."""
        if self._pending:
            self._flush_pending()
        if self.state is SyncState.PROCESS and not self._pending:
            self._process()

    @property
    def in_progress(self) -> bool:
        return self.state is not SyncState.IDLE

    # ------------------------------------------------------------------ internals
    def _mark(self, sender: int) -> bool:
        """Mark ``sender`` received; True when every member is marked."""
        if sender in self.members:
            self._received.add(sender)
        return all(n in self._received for n in self.members)

    def _service_build(self, sender: int, ring: RingId, ids: list[int]) -> None:
        if ring != self.ring_id or self.state is not SyncState.SERVICELIST_BUILD:
            self.stats.stale_rx += 1
            self._log(LogLevel.DEBUG, "service build for old ring - discarding")
            return
        known = {e.service_id for e in self.service_list}
        added = False
        for sid in ids:
            if sid not in known:
                known.add(sid)
                self.service_list.append(_Entry(sid, f"Unknown External Service (id = {sid})",
                                                None))
                self.stats.dummies += 1
                added = True
        if added:
            self.service_list.sort(key=lambda e: e.service_id)
        if self._mark(sender):
            self._log(LogLevel.DEBUG, "enter sync process")
            self._process_enter()

    def _process_enter(self) -> None:
        self._received = set()
        if not self.service_list:
            self._complete()
            return
        self.state = SyncState.PROCESS
        self._process()

    def _process(self) -> None:
        entry = self.service_list[self.processing_idx]
        if entry.local is not None:
            try:
                done = entry.local.sync_process()
            except Exception as exc:  # a service bug must not wedge every node's sync
                self._log(LogLevel.ERROR, f"sync_process of {entry.name} failed: {exc!r}")
                done = True
            if not done:
                self.stats.send_retries += 1
                return
        self.trace.append(("barrier", entry.service_id))
        self.state = SyncState.BARRIER
        self._transmit(encode_barrier(self.ring_id))

    def _barrier(self, sender: int, ring: RingId) -> None:
        if ring != self.ring_id or self.state not in (SyncState.PROCESS, SyncState.BARRIER):
            self.stats.stale_rx += 1
            self._log(LogLevel.DEBUG, "barrier for old ring - discarding")
            return
        if not self._mark(sender):
            return
        entry = self.service_list[self.processing_idx]
        self._log(LogLevel.DEBUG, f"Committing synchronization for {entry.name}")
        self.trace.append(("activate", entry.service_id))
        if entry.local is not None:
            self._guard(entry, "sync_activate", entry.local.sync_activate)
        self.processing_idx += 1
        if self.processing_idx == len(self.service_list):
            self._complete()
        else:
            self._process_enter()

    def _guard(self, entry: _Entry, what: str, call: Callable[[], object]) -> None:
        """Run a service callback; a service bug is logged, never allowed to leave the
        engine half-way through a phase (every node would stay in sync forever)."""
        try:
            call()
        except Exception as exc:
            self._log(LogLevel.ERROR, f"{what} of {entry.name} failed: {exc!r}")

    def _complete(self) -> None:
        self.state = SyncState.IDLE
        self.stats.completed += 1
        self.trace.append(("completed", None))
        self._completed()

    def _transmit(self, message: bytes) -> None:
        self._pending.append(message)
        self._flush_pending()

    def _flush_pending(self) -> None:
        while self._pending:
            try:
                self._send(self._pending[0])
            except Exception as exc:
                self.stats.send_retries += 1
                self._log(LogLevel.DEBUG, f"sync message not sent yet ({exc!r}); will retry")
                return
            self._pending.pop(0)
