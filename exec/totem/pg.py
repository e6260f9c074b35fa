"""totempg: packing, fragmentation, reassembly and group addressing on top of Totem SRP.

:class:`TotemPg` wraps a :class:`~corosync.exec.totem.srp.Srp` and has the same sans-IO
surface (every call returns ``list[Action]``), except that applications multicast whole
*messages* addressed to groups (:meth:`TotemPg.mcast`) and receive whole messages
(:class:`~corosync.exec.totem.events.PgDeliver`) instead of raw MCAST payloads.  Layouts and
the real nodes' rules are those of ``shared/spec/totem-wire.md`` §4.

Sender
    A totempg message is ``group header + payload``.  corosync's packing rules (§4.2): a
    message (or the rest of one) that fits into the packing buffer with at least two bytes
    to spare is buffered; the buffer is flushed as one packet when the ORF token arrives
    (Srp calls its ``token_received_hook`` right before it sends new messages).  A message
    that does not fit fills the buffer to ``config.pg_max_packet`` bytes of (lengths +
    data), which is sent at once with a fragment id in ``fragmented``; the next packet
    continues it (``continuation`` = that id).  With these rules our packets are byte for
    byte those of the real nodes (tests replay the shared captures).  One deviation: on a
    quiet ring (no token visit for :data:`QUIET_RING_MS`) the first message goes to Srp at
    once, since the representative may be holding the token and only an Srp send cancels
    that hold (receivers accept any packing).  A message is accepted all-or-nothing:
    :meth:`TotemPg.mcast` first checks that Srp's queue has a slot for every packet the
    message makes the packer emit now.

Send rate
    :meth:`TotemPg.backlog` (packets waiting for a token) and
    :attr:`TotemPg.drain_per_visit` (packets this node sends per token visit, measured in
    the token hook) are what the service host's admission control bounds (exec/host.py).

Receiver
    Reassembly per sender nodeid with the real nodes' state machine (§4.3), including the
    "throw-away" mode after a broken continuation.  Like corosync, two sets of reassembly
    state exist: one used while waiting for ``trans_ack`` (sync running) and one for normal
    operation, so a fragmented message interrupted by a configuration change can still be
    completed after sync while the sync messages themselves reassemble separately.

Messages never straddle a membership change with joiners (our fix; corosync loses them)
    corosync's receivers keep a sender's partial message across ring changes.  A node that
    joins in between never saw its first packets and throws the rest away, while old
    members complete it: the joiner misses a message the others deliver in the same
    configuration (a virtual-synchrony violation the simulator finds).  At each REGULAR
    change TotemPg therefore rewrites its own unsent stream, which Srp holds back until
    ``trans_ack``:

    * the packing buffer always moves into the held queue, so the sync phase starts its
      own continuation chain at 0 (otherwise its first packet would carry the old chain's
      fragment id and be thrown away by receivers, hanging sync);
    * if some member joined and our own last message was only partly delivered in the old
      ring, the held packets are discarded and replaced by one *abort* packet
      (``fragmented 0``, a ``continuation`` that matches neither our last fragment id nor
      a fresh receiver's 0, one dummy piece) followed by all our undelivered messages
      packed afresh.  Under the real nodes' own rules (§4.3) the abort makes every
      receiver, old member or joiner, drop its partial state for us and deliver nothing
      from it; the messages are then delivered once, by every member, in the new ring.
      Real receivers log one "fragmented continuation" line; nothing changes on the wire.
    For this TotemPg remembers its own messages until it delivers them to itself.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from attrs import define, field

from .events import (
    Action,
    ConfChg,
    ConfChgKind,
    Deliver,
    Guarantee,
    Log,
    LogLevel,
    PgDeliver,
    TimerKind,
)
from .srp import QueueFull  # re-exported: one exception class for both layers
from .wire import WireError, decode_groups, decode_pg, encode_groups, encode_pg

if TYPE_CHECKING:
    from .config import TotemConfig

__all__ = ["TotemPg", "PgStats", "QueueFull", "MESSAGE_SIZE_MAX", "REASSEMBLY_MAX"]

#: Largest totempg message (group header + payload) we send: real receivers assert when a
#: sender's reassembly buffer overflows (§4.3), so 1 MiB is the hard limit.
MESSAGE_SIZE_MAX = 1024 * 1024
#: Real receivers' reassembly buffer per sender: MESSAGE_SIZE_MAX + KNET_MAX_PACKET_SIZE.
REASSEMBLY_MAX = MESSAGE_SIZE_MAX + 65536
#: At most one Log action per drop reason per this many ms of ``now``.
LOG_INTERVAL_MS = 10_000
#: No token visit for this long: the ring is quiet (its token may be held), so a message
#: arriving to an empty packing buffer is handed to Srp at once (see TotemPg.mcast).
QUIET_RING_MS = 10

def _pg_error_text(exc: WireError, sender: int, payload: bytes, swapped: bool) -> str:
    """corosync's wording for a refused totempg packet (totempg_deliver_fn)."""
    if exc.reason == "pg_bad_length":
        order = ">" if swapped else "<"
        (count,) = struct.unpack_from(order + "H", payload, 6)
        expected = 8 + 2 * count + sum(struct.unpack_from(f"{order}{count}H", payload, 8))
        return (f"Message (totempg_mcast) received from node {sender} doesn't have "
                f"expected length of {expected} (has {len(payload)}) bytes...  Ignoring.")
    if exc.reason == "pg_truncated":
        return (f"Message (totempg_mcast) received from node {sender} is too short...  "
                f"Ignoring.")
    return f"Message (totempg_mcast) received from node {sender} is invalid ({exc})...  Ignoring."


class SrpLike(Protocol):
    """What TotemPg needs from :class:`corosync.exec.totem.srp.Srp`."""

    config: TotemConfig
    nodeid: int
    token_received_hook: Callable[[], None] | None

    def start(self, now: int) -> list[Action]: ...
    def receive(self, data: bytes, now: int) -> list[Action]: ...
    def timer_expired(self, kind: TimerKind, now: int) -> list[Action]: ...
    def send(self, payload: bytes, guarantee: Guarantee, now: int) -> list[Action]: ...
    def queue_space(self) -> int: ...
    def trans_ack(self, now: int) -> list[Action]: ...
    def leave(self, now: int) -> list[Action]: ...
    def take_held(self) -> list[tuple[bytes, int]]: ...
    def hold(self, packets: list[tuple[bytes, int]]) -> None: ...


@define(slots=True)
class PgStats:
    """totempg counters.  ``dropped`` counts refused input by reason (the ``WireError``
    reasons of the codec plus ``pg_bad_count``, ``reassembly_overflow``,
    ``broken_continuation``, ``thrown_away``)."""

    msgs_tx: int = 0  # messages accepted by mcast()
    bytes_tx: int = 0  # their bytes, group header included
    packets_tx: int = 0  # totempg packets handed to Srp.send
    packed_tx: int = 0  # packets that carried more than one piece
    fragments_tx: int = 0  # packets carrying part of a fragmented message
    token_flushes: int = 0  # packets sent from the token-received hook
    queue_full: int = 0  # mcast() refusals (QueueFull)
    packets_rx: int = 0  # totempg packets received (Deliver actions consumed)
    msgs_rx: int = 0  # messages delivered (PgDeliver emitted)
    bytes_rx: int = 0  # their bytes, group header included
    reassembled: int = 0  # delivered messages that spanned more than one packet
    throw_away_entered: int = 0  # broken continuations (real nodes' throw-away mode)
    straddle_aborts: int = 0  # own partial messages aborted and re-sent at a change
    token_visits: int = 0  # token receptions seen through the hook
    quiet_flushes: int = 0  # messages sent at once because no token came for a while
    dropped: dict[str, int] = field(factory=dict)


@define(slots=True)
class _Assembly:
    """Reassembly state of one sender (corosync's ``struct assembly``).

    ``parts`` holds the bytes received so far of the sender's unfinished message,
    ``last_frag`` the ``fragmented`` id of its last accepted packet (the value the next
    packet's ``continuation`` must carry), ``throw_away`` whether we are skipping packets
    after a broken continuation.
    """

    parts: list[bytes] = field(factory=list)
    size: int = 0
    last_frag: int = 0
    throw_away: bool = False


class TotemPg:
    """Totem process groups over one :class:`Srp` (see the module docstring)."""

    def __init__(self, srp: SrpLike) -> None:
        self.srp = srp
        self.stats = PgStats()
        cfg = srp.config
        #: bytes of (lengths + data) per packet: net_mtu − 8 (1402 by default)
        self._packet_max = cfg.pg_max_packet
        # Packing buffer: message blobs waiting for the token, all with one guarantee.
        self._buf: list[bytes] = []
        self._buf_size = 0
        self._buf_guarantee = Guarantee.AGREED
        self._next_fragment = 1
        #: ``continuation`` of the next packet: the fragment id of the last packet sent
        #: when the buffer starts with the tail of that fragmented message, else 0.
        self._cont = 0
        # Actions returned by Srp.send() calls made from inside the token hook; merged
        # into the result of the TotemPg call whose Srp call ran the hook.
        self._pending: list[Action] = []
        #: While not None, packets go here instead of to Srp.send (held-queue rewrite).
        self._collect: list[tuple[bytes, int]] | None = None
        # Our own messages (group header + payload, guarantee) not yet delivered back to
        # us, per phase: submitted while waiting for trans_ack, or in normal operation.
        self._me = getattr(srp, "nodeid", None)
        self._unacked_normal: deque[tuple[bytes, int]] = deque()
        self._unacked_trans: deque[tuple[bytes, int]] = deque()
        #: ``left`` of the last TRANSITIONAL change, purged again at the REGULAR one
        self._left: tuple[int, ...] = ()
        self._hdr_cache: dict[bytes, bytes] = {}
        # Reassembly, per sender nodeid; two sets as in corosync (see module docstring).
        self._asm_normal: dict[int, _Assembly] = {}
        self._asm_trans: dict[int, _Assembly] = {}
        self._waiting_trans_ack = True  # corosync starts in this state, too
        self._log_last: dict[str, int] = {}
        #: the last single-group little-endian header received, and its groups tuple
        self._rx_hdr: tuple[bytes, tuple[bytes, ...]] = (b"\x01\x00\x01\x00a", (b"a",))
        self._now = 0
        # Send-rate measurement for admission control (see :meth:`backlog`): Srp's queue
        # capacity (its queue is empty now), and, as of the last token visit, how many
        # packets were queued and how many we had handed over in total.
        self._queue_cap = srp.queue_space()
        self._queued_at_token = 0
        self._tx_at_token = 0
        self._last_visit = 0  # ``now`` of the last token visit
        self._max_per_visit = max(1, int(cfg.max_messages))
        #: packets this node sent per token visit when it had more queued than it could
        #: send (a moving average; starts at ``max_messages``, the most Srp ever sends)
        self.drain_per_visit: float = float(self._max_per_visit)
        srp.token_received_hook = self._token_received

    # ------------------------------------------------------------------ Srp surface
    def start(self, now: int) -> list[Action]:
        self._now = now
        return self._process(self.srp.start(now), now)

    def receive(self, data: bytes, now: int) -> list[Action]:
        self._now = now
        return self._process(self.srp.receive(data, now), now)

    def timer_expired(self, kind: TimerKind, now: int) -> list[Action]:
        self._now = now
        return self._process(self.srp.timer_expired(kind, now), now)

    def trans_ack(self, now: int) -> list[Action]:
        """Sync finished: reassemble with the normal per-sender state again (§3.9)."""
        self._waiting_trans_ack = False
        if self._unacked_trans:
            # Srp sends what is left of the transitional queue before the held one.
            self._unacked_trans.extend(self._unacked_normal)
            self._unacked_normal, self._unacked_trans = self._unacked_trans, deque()
        self._now = now
        return self._process(self.srp.trans_ack(now), now)

    def leave(self, now: int) -> list[Action]:
        self._now = now
        return self._process(self.srp.leave(now), now)

    # ------------------------------------------------------------------ sending
    def _group_header(self, groups: Sequence[bytes]) -> bytes:
        """The encoded group header for ``groups`` (cached for single groups, the case
        of every real sender).  ValueError for 0 or > 32 names or a name > 65535 bytes."""
        names = [bytes(g) for g in groups]
        if any(len(n) > 0xFFFF for n in names):
            raise ValueError("group name longer than 65535 bytes")
        hdr = encode_groups(names)
        if len(names) == 1 and len(self._hdr_cache) < 64:
            self._hdr_cache[names[0]] = hdr
        return hdr

    def _packets_needed(self, size: int, guarantee: int) -> int:
        """Srp queue slots one :meth:`mcast` of a ``size``-byte totempg message takes now
        (a replay of :meth:`_pack`'s arithmetic without sending anything)."""
        packets = 0
        count = len(self._buf)
        buffered = self._buf_size
        if count and guarantee != self._buf_guarantee:
            packets, count, buffered = 1, 0, 0
        rest = size
        room = self._packet_max - 2 * (count + 1)
        while rest + buffered >= room - 2:
            rest -= room - buffered
            packets += 1
            if rest <= 0:
                break
            buffered, room = 0, self._packet_max - 2
        return packets

    def send_ok(self, nbytes: int, guarantee: Guarantee = Guarantee.AGREED,
                groups: Sequence[bytes] = (b"a",)) -> bool:
        """Would :meth:`mcast` of an ``nbytes`` payload to ``groups`` be accepted now?

        Exact for the given guarantee and groups (the defaults are what the executive
        uses: AGREED to group ``a``).
        """
        try:
            hdr = self._hdr_cache[groups[0]] if len(groups) == 1 else self._group_header(groups)
        except (KeyError, TypeError):
            hdr = self._group_header(groups)
        size = len(hdr) + nbytes
        if size > MESSAGE_SIZE_MAX:
            return False
        space = self.srp.queue_space()
        # No packing makes more packets than a guarantee-change flush, one packet that
        # completes the buffer, and full fragments: asked once per IPC request, the exact
        # replay is only needed near a full queue.
        if space >= size // (self._packet_max - 2) + 3:
            return True
        return space >= self._packets_needed(size, guarantee)

    def mcast(self, groups: Sequence[bytes], message: bytes, guarantee: Guarantee,
              now: int) -> list[Action]:
        """Multicast ``message`` to ``groups`` (1..32 names) with ``guarantee``.

        All-or-nothing: raises :class:`QueueFull` (nothing queued, nothing buffered) when
        Srp's queue cannot take every packet this message makes the packer emit now; the
        caller retries after the token moved.  Raises :class:`ValueError` for a message
        that can never be sent: bad groups or guarantee, or more than
        :data:`MESSAGE_SIZE_MAX` bytes including the group header (real receivers would
        crash on it).
        """
        try:
            hdr = self._hdr_cache[groups[0]] if len(groups) == 1 else self._group_header(groups)
        except (KeyError, TypeError):  # first use, or an unhashable name (bytearray)
            hdr = self._group_header(groups)
        size = len(hdr) + len(message)
        buf = self._buf
        if buf:
            # The buffer's guarantee was validated when its first piece went in, and
            # a non-empty buffer implies _next_fragment == 1 (every path that buffers
            # sets it; only sending a fragment, which empties the buffer, changes it).
            fits = (guarantee == self._buf_guarantee
                    and size + self._buf_size < self._packet_max - 2 * len(buf) - 4)
        else:
            fits = size < self._packet_max - 4 and (guarantee == 0 or guarantee == 1)
            if fits:
                self._buf_guarantee = guarantee
                self._next_fragment = 1
        stats = self.stats
        if fits:
            # Hot path: it fits with 2 bytes to spare; wait for the token.
            blob = hdr + message
            buf.append(blob)
            (self._unacked_trans if self._waiting_trans_ack
             else self._unacked_normal).append((blob, guarantee))
            self._buf_size += size
            stats.msgs_tx += 1
            stats.bytes_tx += size
            if len(buf) == 1 and now - self._last_visit >= QUIET_RING_MS:
                # A quiet ring: the representative may hold the token (up to ``hold`` ms,
                # §3.5) and only an Srp send cancels that hold.  The first message after
                # the quiet spell goes to Srp at once instead of waiting in the buffer.
                stats.quiet_flushes += 1
                actions: list[Action] = []
                self._flush(actions, now)
                return self._process(actions, now) if actions else actions
            return []
        if size > MESSAGE_SIZE_MAX:
            raise ValueError(f"totempg message of {size} bytes exceeds {MESSAGE_SIZE_MAX}")
        if guarantee != 0 and guarantee != 1:
            raise ValueError(f"guarantee {guarantee!r}: expected AGREED (0) or SAFE (1)")
        needed = self._packets_needed(size, guarantee)
        if needed > self.srp.config.send_queue_max:
            raise ValueError(f"totempg message of {size} bytes needs {needed} packets, "
                             f"more than the send queue holds")
        space = self.srp.queue_space()
        if space < needed:
            stats.queue_full += 1
            raise QueueFull(f"{needed} packets needed, {space} free")
        stats.msgs_tx += 1
        stats.bytes_tx += size
        actions: list[Action] = []
        if buf and guarantee != self._buf_guarantee:
            self._flush(actions, now)
        blob = hdr + message
        (self._unacked_trans if self._waiting_trans_ack
         else self._unacked_normal).append((blob, guarantee))
        self._pack(blob, guarantee, actions, now)
        return self._process(actions, now) if actions else actions

    def _next_id(self) -> int:
        """Next fragment id: 1..255, never 0 (0 means "last piece is complete")."""
        frag = self._next_fragment
        self._next_fragment = 1 if frag == 255 else frag + 1
        return frag

    def _pack(self, blob: bytes, guarantee: Guarantee, actions: list[Action],
              now: int) -> None:
        """corosync's packing loop (§4.2) for one message that does not fit the buffer
        whole: fill the buffer and send it; repeat with the rest until the rest fits with
        2 bytes to spare (it is buffered, its packet will continue the last fragment id)
        or the message ended exactly at a packet boundary."""
        size = len(blob)
        off = 0
        room = self._packet_max - 2 * (len(self._buf) + 1)
        while True:
            rest = size - off
            if rest + self._buf_size < room - 2:
                self._buf.append(blob[off:] if off else blob)
                self._buf_size += rest
                self._buf_guarantee = guarantee
                self._next_fragment = 1
                return
            take = room - self._buf_size
            end = off + take
            pieces = self._buf
            pieces.append(blob[off:end] if off or end < size else blob)
            if end < size:
                frag = self._next_id()
                cont, self._cont = self._cont, frag
            else:
                frag = 0
                cont, self._cont = self._cont, 0
            self._buf = []
            self._buf_size = 0
            self._send(frag, cont, pieces, guarantee, actions, now)
            if end >= size:
                return
            off = end
            room = self._packet_max - 2

    def _send(self, frag: int, cont: int, pieces: list[bytes], guarantee: Guarantee,
              actions: list[Action], now: int) -> None:
        stats = self.stats
        stats.packets_tx += 1
        if len(pieces) > 1:
            stats.packed_tx += 1
        if frag or cont:
            stats.fragments_tx += 1
        if self._collect is not None:
            self._collect.append((encode_pg(frag, cont, pieces), guarantee))
            return
        actions += self.srp.send(encode_pg(frag, cont, pieces), guarantee, now)

    def _flush(self, actions: list[Action], now: int) -> None:
        """Send the buffer as one packet: complete pieces only, the first of which may
        finish the sender's last fragmented message."""
        pieces = self._buf
        cont, self._cont = self._cont, 0
        self._buf = []
        self._buf_size = 0
        self._send(0, cont, pieces, self._buf_guarantee, actions, now)

    def backlog(self) -> int:
        """Packets waiting for a token: Srp's send queue plus a non-empty packing buffer.

        With :attr:`drain_per_visit` this says how many token visits a message accepted
        now waits before it goes out — what the service host's admission control bounds.
        """
        return self._queue_cap - self.srp.queue_space() + (1 if self._buf else 0)

    def _token_received(self) -> None:
        """Srp hook, right before Srp sends new messages: measure what the previous visit
        sent, then flush the packing buffer.

        The flush is skipped when Srp's queue is full (the buffer then waits for the next
        token, as in corosync).  Actions of the send are kept for the TotemPg call running
        the token.
        """
        stats = self.stats
        stats.token_visits += 1
        self._last_visit = self._now
        space = self.srp.queue_space
        queued = self._queue_cap - space()
        # what left the queue since the last visit = queued then + handed over since - now
        sent = self._queued_at_token + (stats.packets_tx - self._tx_at_token) - queued
        if 0 <= sent <= self._max_per_visit:
            if self._queued_at_token > sent:
                # Srp sent all it was allowed to and packets were left over: a sample of
                # the ring's capacity for us (window share, max_messages, retransmits)
                self.drain_per_visit += (max(sent, 1) - self.drain_per_visit) / 8
            elif sent > self.drain_per_visit:
                self.drain_per_visit = float(sent)  # it sent everything, and more than we thought
        # else: the queue was switched (trans_ack) or rewritten; not a sample
        if self._buf and space() > 0:
            stats.token_flushes += 1
            self._flush(self._pending, self._now)
        self._queued_at_token = self._queue_cap - space()
        self._tx_at_token = stats.packets_tx

    # ------------------------------------------------------------------ receiving
    def _process(self, actions: list[Action], now: int) -> list[Action]:
        """Pass Srp's actions through, replacing each Deliver by the PgDeliver actions of
        the messages it completes, and tracking configuration changes."""
        if self._pending:
            actions = self._pending + actions
            self._pending = []
        out: list[Action] = []
        for act in actions:
            kind = type(act)
            if kind is Deliver:
                self._deliver(act, out, now)  # type: ignore[arg-type]
            else:
                if kind is ConfChg:
                    self._confchg(act)  # type: ignore[arg-type]
                out.append(act)
        return out

    def _confchg(self, chg: ConfChg) -> None:
        # Senders that left lose their partial messages when the transitional
        # configuration ends (the REGULAR change), not when it starts: old-ring messages
        # delivered in the transitional configuration (AGREED ones after a gap, SAFE ones
        # not delivered in the regular one) may still complete a leaver's message, and
        # every member of the transitional configuration must deliver it alike.  Purging
        # at the REGULAR change also keeps a leaver that restarts and rejoins from meeting
        # stale state.
        if chg.kind == ConfChgKind.TRANSITIONAL:
            self._left = chg.left
            return
        for nodeid in self._left:
            self._asm_normal.pop(nodeid, None)
            self._asm_trans.pop(nodeid, None)
        self._left = ()
        if chg.kind == ConfChgKind.REGULAR:
            # corosync switches to the transitional reassembly state right after the
            # old ring's messages were delivered, i.e. before the REGULAR confchg.
            self._waiting_trans_ack = True
            self._settle_own_stream(bool(chg.joined))

    def _settle_own_stream(self, joiners: bool) -> None:
        """Rewrite our unsent packets at a REGULAR change (see the module docstring)."""
        own = self._asm_normal.get(self._me) if self._me is not None else None
        straddles = joiners and own is not None and bool(own.parts or own.last_frag)
        if not straddles and not self._buf:
            return
        collected: list[tuple[bytes, int]] = []
        self._collect = collected
        try:
            if straddles:
                assert own is not None
                self.srp.take_held()  # rebuilt below from the undelivered messages
                self._buf, self._buf_size, self._cont = [], 0, 0
                self._next_fragment = 1
                abort_id = 2 if own.last_frag == 1 else 1
                collected.append((encode_pg(0, abort_id, [b"\0"]), Guarantee.AGREED))
                self.stats.straddle_aborts += 1
                for blob, guarantee in self._unacked_normal:
                    if self._buf and guarantee != self._buf_guarantee:
                        self._flush([], self._now)
                    if len(blob) + self._buf_size < self._packet_max - 2 * len(self._buf) - 4:
                        self._buf.append(blob)
                        self._buf_size += len(blob)
                        self._buf_guarantee = guarantee
                        self._next_fragment = 1
                    else:
                        self._pack(blob, guarantee, [], self._now)
            if self._buf:
                self._flush([], self._now)
        finally:
            self._collect = None
        self._cont = 0
        self.srp.hold(collected)

    def _drop(self, reason: str, detail: str, out: list[Action], now: int,
              level: LogLevel = LogLevel.WARNING) -> None:
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        last = self._log_last.get(reason)
        if last is None or now - last >= LOG_INTERVAL_MS:
            self._log_last[reason] = now
            out.append(Log(level, detail))

    def _deliver(self, d: Deliver, out: list[Action], now: int) -> None:
        stats = self.stats
        sender = d.sender
        try:
            pkt = decode_pg(d.payload, d.swapped)
        except WireError as exc:
            self._drop(exc.reason, _pg_error_text(exc, sender, d.payload, d.swapped), out,
                       now)
            return
        stats.packets_rx += 1
        pieces = pkt.pieces
        frag = pkt.fragmented
        asms = self._asm_trans if self._waiting_trans_ack else self._asm_normal
        asm = asms.get(sender)
        if asm is None and frag == 0 and pkt.continuation == 0:
            # Hot path: fresh sender state, packet of complete messages only.
            self._emit(d, pieces, out, now)
            return
        if frag and not pieces:
            self._drop("pg_bad_count", f"Message (totempg_mcast) received from node "
                       f"{sender} is fragmented but has no messages...  Ignoring.", out, now)
            return
        if asm is None:
            asm = asms[sender] = _Assembly()
        self._reassemble(d, asm, pkt.continuation, frag, pieces, out, now)
        if frag == 0:
            del asms[sender]  # corosync returns the assembly to its free list

    def _reassemble(self, d: Deliver, asm: _Assembly, cont: int, frag: int,
                    pieces: list[bytes], out: list[Action], now: int) -> None:
        """The real nodes' rules (§4.3) for one packet of a sender with state."""
        stats = self.stats
        if asm.throw_away:
            # Quirk: a packet with fragmented 0 or 1 ends throw-away mode, but its first
            # piece is skipped and *nothing* of the packet is delivered.  ``last_frag`` is
            # left unchanged, as in corosync.
            stats.dropped["thrown_away"] = stats.dropped.get("thrown_away", 0) + 1
            if frag == 1:
                # corosync keeps a corrupted buffer here; we keep the only bytes that can
                # belong to a later message: the trailing piece.
                asm.throw_away = False
                asm.parts = [pieces[-1]]
                asm.size = len(pieces[-1])
            return
        if cont != asm.last_frag:
            stats.throw_away_entered += 1
            self._drop("broken_continuation", f"fragmented continuation {cont} is not "
                       f"equal to assembly last_frag_num {asm.last_frag}", out, now,
                       LogLevel.DEBUG)
            asm.throw_away = True
            asm.parts = []
            asm.size = 0
            return
        asm.last_frag = frag
        complete = pieces[:-1] if frag else pieces
        if complete and asm.parts:
            asm.parts.append(complete[0])
            complete[0] = b"".join(asm.parts)
            asm.parts = []
            asm.size = 0
            stats.reassembled += 1
        if complete:
            self._emit(d, complete, out, now)
        if frag:
            tail = pieces[-1]
            asm.parts.append(tail)
            asm.size += len(tail)
            if asm.size > REASSEMBLY_MAX:
                # Real nodes assert here; we drop the message and skip its remaining
                # packets through throw-away mode.
                self._drop("reassembly_overflow", f"Message from node {d.sender} exceeds "
                           f"{REASSEMBLY_MAX} bytes...  Ignoring.", out, now)
                asm.parts = []
                asm.size = 0
                asm.throw_away = True
                stats.throw_away_entered += 1

    def _emit(self, d: Deliver, msgs: list[bytes], out: list[Action], now: int) -> None:
        """Parse the group header of each whole message and emit its PgDeliver.

        The hot path of the receiver.  A group header is self-delimiting, so a message
        that starts with the bytes of the last single-group header seen *has* that header:
        one ``startswith`` replaces the parse (executive traffic is all group ``a``).
        Other little-endian single groups are parsed inline; the rest goes through
        ``wire.decode_groups``.
        """
        sender, ring_id, guarantee, swapped = d.sender, d.ring_id, d.guarantee, d.swapped
        append = out.append
        make = PgDeliver  # local name: one dict lookup less per message
        last_hdr, last_groups = self._rx_hdr
        last_end = len(last_hdr)
        refused = refused_bytes = 0
        for msg in msgs:
            if not swapped and msg.startswith(last_hdr):
                append(make(sender, last_groups, msg[last_end:], ring_id, guarantee, swapped))
                continue
            n = len(msg)
            if (not swapped and n >= 4 and msg[0] == 1 and msg[1] == 0
                    and n >= (end := 4 + (msg[2] | msg[3] << 8))):
                groups = (msg[4:end],)
                last_hdr, last_groups, last_end = msg[:end], groups, end
                self._rx_hdr = (last_hdr, groups)
            else:
                try:
                    names, end = decode_groups(msg, swapped)
                except WireError as exc:
                    self._drop(exc.reason, f"Message received from node {sender} has an "
                               f"invalid group header ({exc})...  Ignoring.", out, now)
                    refused += 1
                    refused_bytes += n
                    continue
                groups = tuple(names)
            append(make(sender, groups, msg[end:], ring_id, guarantee, swapped))
        stats = self.stats
        # Counted per packet, not per message: sum(map(len)) runs in C.
        stats.msgs_rx += len(msgs) - refused
        stats.bytes_rx += sum(map(len, msgs)) - refused_bytes
        if sender == self._me:
            unacked = self._unacked_trans if self._waiting_trans_ack else self._unacked_normal
            for _ in range(min(len(msgs), len(unacked))):
                unacked.popleft()
