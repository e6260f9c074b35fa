"""Totem Single Ring Protocol: a sans-IO state machine, wire-compatible with corosync 3.1.7.

Inputs are method calls carrying the driver's clock ``now`` (ms); outputs are the
actions of :mod:`corosync.exec.totem.events`.  Nothing here reads a clock, opens a
socket or seeds a random source (the one random delay, ``send_join``, draws from the
generator the driver hands in), so the executive (trio) and the simulator drive the
very same object, and every test is deterministic.

The behaviour follows ``shared/spec/totem-wire.md`` §2.10–§3 (membership: GATHER →
COMMIT → RECOVERY → OPERATIONAL; ordering: the ORF token with its aru / fcc / backlog
running sums and retransmit list).  Where corosync and the Totem paper differ we follow
corosync (other nodes on the ring depend on the exact token field values), with three
deliberate, documented deviations that cannot be observed on the wire:

* SAFE delivery is implemented (corosync ignores ``guarantee``): see :meth:`Srp._deliver`.
* tokens are validated (ring id, token_seq) *before* they influence idle detection or
  release retained messages, so a stray foreign or duplicate token cannot free messages;
* MCASTs of the new ring that arrive while this node is still in RECOVERY are not
  stored (they would land in the old ring's queue); they are re-requested normally.

See ``docs/totem.md`` for the driver contract, timers and counters.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import Callable, Optional

from attrs import define, field

from .config import TotemConfig
from .events import (Action, CancelTimer, ConfChg, ConfChgKind, Deliver, Guarantee, Log,
                     LogLevel, Multicast, PersistRingSeq, StartTimer, TimerKind, Unicast)
from .seq import ROLLOVER_POINT, ROLLOVER_VALUE, U32, sq_lt, sq_lte, sq_min
from .sortqueue import QUEUE_SIZE, SortQueue
from .wire import (ENCAP_NORMAL, ENCAP_RECOVERY, RTR_MAX, CommitToken, Join, Mcast,
                   MembEntry, MergeDetect, OrfToken, RingId, RtrItem, TokenHoldCancel,
                   WireError, decode)

__all__ = ["MembState", "QueueFull", "Srp", "SrpStats", "GatherFrom"]

U64 = 0xFFFFFFFFFFFFFFFF
SEQNO_START_MSG = 0
SEQNO_START_TOKEN = 0
LEAVE_DUMMY_NODEID = 0
#: Largest MCAST payload we accept from upper layers: real nodes assert on frames over
#: 64 KiB, and an encapsulated re-send adds a second 45-byte header.
MAX_PAYLOAD = 65536 - 2 * 45
#: At most one "dropped" log line per reason per this many ms of driver time.
DROP_LOG_INTERVAL = 10_000
#: corosync's thresholds (exec/main.c) for "Totem is unable to form a cluster ..."
MAX_NO_CONT_GATHER = 3
MAX_NO_CONT_SENDMSG_FAILURES = 30
_TOKEN_STATS = 100  # TOTEM_TOKEN_STATS_MAX: token timing samples kept for the averages


class MembState(enum.Enum):
    OPERATIONAL = 1
    GATHER = 2
    COMMIT = 3
    RECOVERY = 4


class QueueFull(Exception):
    """The new-message queue holds ``config.send_queue_max`` messages already."""


class GatherFrom(enum.IntEnum):
    """Why GATHER was entered; numbers and texts are corosync's (they appear in logs)."""

    CONSENSUS_TIMEOUT = 0
    MISSING1 = 1
    TOKEN_LOST_OPERATIONAL = 2
    CONSENSUS_TIMEOUT_EXPIRED = 3
    TOKEN_LOST_COMMIT = 4
    TOKEN_LOST_RECOVERY = 5
    FAILED_TO_RECEIVE = 6
    FOREIGN_MESSAGE_OPERATIONAL = 7
    FOREIGN_MESSAGE_GATHER = 8
    MERGE_OPERATIONAL = 9
    MERGE_GATHER = 10
    MERGE_DURING_JOIN = 11
    JOIN_OPERATIONAL = 12
    JOIN_COMMIT = 13
    JOIN_RECOVERY = 14
    INTERFACE_CHANGE = 15


_GATHER_TEXT = {
    0: "consensus timeout",
    1: "MISSING",
    2: "The token was lost in the OPERATIONAL state.",
    3: "The consensus timeout expired.",
    4: "The token was lost in the COMMIT state.",
    5: "The token was lost in the RECOVERY state.",
    6: "failed to receive",
    7: "foreign message in operational state",
    8: "foreign message in gather state",
    9: "merge during operational state",
    10: "merge during gather state",
    11: "merge during join",
    12: "join during operational state",
    13: "join during commit state",
    14: "join during recovery",
    15: "interface change",
}


@define(slots=True)
class SrpStats:
    """Counters under corosync's names (cmap ``runtime.totem.pg.mrp.srp.<name>``)."""

    orf_token_tx: int = 0
    orf_token_rx: int = 0
    memb_merge_detect_tx: int = 0
    memb_merge_detect_rx: int = 0
    memb_join_tx: int = 0
    memb_join_rx: int = 0
    mcast_tx: int = 0
    mcast_rx: int = 0
    mcast_retx: int = 0
    memb_commit_token_tx: int = 0
    memb_commit_token_rx: int = 0
    token_hold_cancel_tx: int = 0
    token_hold_cancel_rx: int = 0
    operational_entered: int = 0
    operational_token_lost: int = 0
    gather_entered: int = 0
    gather_token_lost: int = 0
    commit_entered: int = 0
    commit_token_lost: int = 0
    recovery_entered: int = 0
    recovery_token_lost: int = 0
    consensus_timeouts: int = 0
    rx_msg_dropped: int = 0
    continuous_gather: int = 0
    firewall_enabled_or_nic_failure: int = 0
    #: mean ms between the last 100 valid token receptions
    mtt_rx_token: int = 0
    #: mean ms spent handling a token (always 0 in a sans-IO machine: no clock inside)
    avg_token_workload: int = 0
    #: mean of our pending-queue length at the last 100 token visits
    avg_backlog_calc: int = 0
    #: multicast sends that failed in a row; the *driver* reports each send's outcome
    #: through :meth:`Srp.note_mcast_send` (corosync counts udp multicast sendmsg only)
    continuous_sendmsg_failures: int = 0
    #: driver ms since the last valid token (as of the last :meth:`Srp.refresh_stats`,
    #: PAUSE heartbeat or token; the driver calls refresh_stats before publishing)
    time_since_token_last_received: int = 0
    #: datagrams and messages dropped, by reason (codec reasons plus semantic ones)
    dropped: dict[str, int] = field(factory=dict)


# A retained MCAST: the decoded message (for delivery) and its exact bytes (for
# retransmission and for encapsulation during recovery, which must be byte-for-byte).
Stored = tuple[Mcast, bytes]


class Srp:
    """One node's Totem SRP instance.  See the module docstring and docs/totem.md."""

    def __init__(self, nodeid: int, config: TotemConfig, *, ring_seq: int = 0,
                 rng: Optional[random.Random] = None) -> None:
        if not 0 < nodeid <= U32:
            raise ValueError(f"nodeid {nodeid} out of range 1..{U32}")
        self.nodeid = nodeid
        self._timer_actions: dict[tuple[TimerKind, int], StartTimer] = {}
        self.config = config  # property: also derives the values below from it
        self.stats = SrpStats()
        #: The driver's random source; only ``totem.send_join`` delays draw from it.  The
        #: fallback is a generator seeded with the nodeid: deterministic, yet different
        #: on every node, which is all JOIN-storm avoidance needs.
        self.rng: random.Random = rng if rng is not None else random.Random(nodeid)
        #: Process pauses detected so far (not a corosync counter, so not in ``stats``).
        self.pauses_detected = 0
        self.token_received_hook: Optional[Callable[[], None]] = None
        self.state = MembState.OPERATIONAL  # as corosync: start() moves to GATHER
        self._loaded_seq = ring_seq & U64
        self.ring_id = RingId(nodeid, self._loaded_seq)
        self._out: list[Action] = []
        self._started = False
        self._left = False

        # membership sets (lists keep insertion order: it is what JOINs carry)
        self._proc: list[int] = []
        self._failed: list[int] = []
        self._memb: list[int] = []  # empty until the first ring is installed
        self._new_memb: list[int] = []
        self._trans_memb: list[int] = []
        self._deliver_memb: list[int] = []
        self._consensus: set[int] = set()
        self._left_cleanly: set[int] = set()
        self._token_ring_id_seq = self._loaded_seq
        self._failed_to_recv = False

        # old-ring state saved on entering COMMIT
        self._old_ring_id = self.ring_id
        self._old_saved = False
        self._old_aru = 0
        self._old_high_seq_received = 0

        # ordering state
        self._regular: SortQueue[Stored] = SortQueue(SEQNO_START_MSG)
        self._recovery: SortQueue[Stored] = SortQueue(SEQNO_START_MSG)
        self._new_q: deque[tuple[bytes, int]] = deque()
        self._trans_q: deque[tuple[bytes, int]] = deque()
        self._retrans_q: deque[bytes] = deque()
        self._waiting_trans_ack = True
        self._aru = SEQNO_START_MSG
        self._high_seq_received = SEQNO_START_MSG
        self._high_delivered = SEQNO_START_MSG
        self._last_released = SEQNO_START_MSG
        self._token_seq = (SEQNO_START_TOKEN - 1) & U32
        self._last_aru = SEQNO_START_MSG
        self._aru_count = 0
        self._last_seq = SEQNO_START_MSG
        self._seq_unchanged = 0
        self._token_held = False
        self._trc = 0
        self._pbl = 0
        self._cbl = 0
        self._global_seqno = 0
        self._safe_upto = SEQNO_START_MSG
        self._safe_regular_upto = SEQNO_START_MSG
        # recovery / install
        self._received_flg = True
        self._set_retrans_flg = False
        self._retrans_flg_count = 0
        self._rotation_counter = 0
        self._install_seq = SEQNO_START_MSG
        self._high_ring_delivered = 0
        self._originated_orf_token = False
        self._orf_discard = False
        self._commit_token: Optional[CommitToken] = None

        # token transport
        self._token_target = nodeid
        self._token_copy: Optional[bytes] = None
        self._in_token = False

        # timers
        self._armed: set[TimerKind] = set()
        self._last_token_rx: Optional[int] = None
        self._loss_armed_at = 0
        self._now = 0
        # pause detection: driver time of the latest input, the gap that counts as a
        # pause (corosync: more than half the token timeout), the heartbeat period that
        # keeps a running instance's inputs closer together than that (corosync's pause
        # timer: token / 5), and whether membership messages are being flushed
        self._alive_at = 0
        self._flushing = False
        self._drop_logged: dict[str, int] = {}
        self._tok_rx_times: deque[int] = deque(maxlen=_TOKEN_STATS)
        self._tok_backlogs: deque[int] = deque(maxlen=_TOKEN_STATS)
        self._backlog_sum = 0

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> TotemConfig:
        """The Totem timers/constants in use.  A driver may replace it at run time
        (config reload): armed timers keep their deadlines, the next ones use the new
        values, exactly as when each use read the config afresh."""
        return self._config

    @config.setter
    def config(self, config: TotemConfig) -> None:
        self._config = config
        # values derived once per config rather than on every token / input
        self._queue_max = config.send_queue_max  # a computed property; hot in queue_space
        token = config.token
        self._pause_limit = token // 2  # corosync: a gap of more than token/2 is a pause
        self._pause_period = max(token // 5, 1)  # corosync's pause timer period
        warn = config.token_warning * token // 100
        acts = [StartTimer(TimerKind.TOKEN_LOSS, token)]
        if 0 < warn < token:
            acts.append(StartTimer(TimerKind.TOKEN_WARNING, warn))
        acts.append(StartTimer(TimerKind.TOKEN_RETRANSMIT, config.token_retransmit))
        # what every processed token re-arms: token loss, token warning, retransmit
        self._token_timer_acts = tuple(acts)
        self._token_timer_kinds = frozenset(a.kind for a in acts)
        self._timer_actions.clear()

    @property
    def members(self) -> tuple[int, ...]:
        """Current regular membership, sorted."""
        return tuple(sorted(self._memb))

    def start(self, now: int) -> list[Action]:
        """Interface up: bump the persisted ring seq, then gather (§2.10)."""
        prev = self._begin(now)
        if not self._started and not self._left:
            self._started = True
            seq = (self._loaded_seq + 1) & U64
            self.ring_id = RingId(self.nodeid, seq)
            self._old_ring_id = self.ring_id
            self._token_ring_id_seq = seq
            self._out.append(PersistRingSeq(seq))
            self._log(LogLevel.DEBUG, f"Created or loaded sequence id {self.ring_id} for this ring.")
            self._alive_at = now
            self._start(TimerKind.PAUSE, self._pause_period)
            self._gather_enter(GatherFrom.INTERFACE_CHANGE)
        return self._end(prev)

    def receive(self, data: bytes, now: int) -> list[Action]:
        """Handle one datagram.  Never raises: invalid input is counted and dropped."""
        # _begin/_end and _dispatch inlined: this runs once per datagram
        prev = self._out
        out = self._out = []
        self._now = now
        if now - self._alive_at > self._pause_limit and self._started and not self._left:
            self._pause_detected(now)
        self._alive_at = now
        if self._started and not self._left:
            try:
                msg = decode(data)
            except WireError as exc:
                self._drop(exc.reason, now, exc.detail)
            else:
                handler = _DISPATCH.get(msg.__class__)
                if handler is not None:
                    handler(self, msg, data, now)
        self._out = prev
        return out

    def timer_expired(self, kind: TimerKind, now: int) -> list[Action]:
        prev = self._begin(now)
        if kind in self._armed and not self._left:
            self._armed.discard(kind)
            handler = _TIMER_HANDLERS.get(kind)
            if handler is not None:
                handler(self, now)
        return self._end(prev)

    def send(self, payload: bytes, guarantee: Guarantee | int, now: int) -> list[Action]:
        """Queue one MCAST payload (a totempg packet) for the next token visit."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        queue = self._trans_q if self._waiting_trans_ack else self._new_q
        if len(queue) >= self._queue_max:
            raise QueueFull(f"{len(queue)} messages queued")
        if self._left:
            return []  # after leave() nothing is sent any more
        if type(payload) is not bytes:
            payload = bytes(payload)  # a caller's reusable buffer: keep a copy
        self.stats.mcast_tx += 1
        if now - self._alive_at > self._pause_limit or (
                self._token_held and not self._in_token
                and self.state is MembState.OPERATIONAL):
            prev = self._begin(now)
            if self._token_held and not self._in_token and self.state is MembState.OPERATIONAL:
                self._send_hold_cancel()
            queue.append((payload, int(guarantee)))
            return self._end(prev)
        # common case, nothing to emit: no output list juggling
        self._now = self._alive_at = now
        queue.append((payload, int(guarantee)))
        return []

    def queue_space(self) -> int:
        free = self._queue_max - len(self._trans_q if self._waiting_trans_ack else self._new_q)
        return free if free > 0 else 0

    def trans_ack(self, now: int) -> list[Action]:
        """Sync finished: release the messages held back since the configuration change.

        Anything still waiting in the transitional queue goes first (it was produced by
        sync, which must precede application traffic), then the held application queue.
        """
        prev = self._begin(now)
        if self._waiting_trans_ack:
            self._waiting_trans_ack = False
            if self._trans_q:
                self._trans_q.extend(self._new_q)
                self._new_q, self._trans_q = self._trans_q, deque()
        return self._end(prev)

    def take_held(self) -> list[tuple[bytes, int]]:
        """Remove and return the packets held back since the configuration change.

        Only meaningful between a REGULAR configuration change and :meth:`trans_ack`: the
        queued ``(payload, guarantee)`` packets that were submitted before the change and
        have not been sent.  totempg uses it (with :meth:`hold`) to rewrite its unsent
        packets so that no message straddles a membership change with joiners.
        """
        if not self._waiting_trans_ack:
            raise RuntimeError("take_held() outside a configuration change")
        held = list(self._new_q)
        self._new_q.clear()
        return held

    def hold(self, packets: list[tuple[bytes, int]]) -> None:
        """Append packets to the held queue (sent after :meth:`trans_ack`, in order).

        The counterpart of :meth:`take_held`; like it, only valid while waiting for
        ``trans_ack``.  No space check: it gives back (about) what was taken.
        """
        if not self._waiting_trans_ack:
            raise RuntimeError("hold() outside a configuration change")
        self._new_q.extend((bytes(p), int(g)) for p, g in packets)

    def leave(self, now: int) -> list[Action]:
        """Clean shutdown: multicast a LEAVE (§2.7) and go inert."""
        prev = self._begin(now)
        if self._started and not self._left:
            self._log(LogLevel.DEBUG, "sending join/leave message")
            self._set_add(self._failed, self.nodeid)
            active = [n for n in self._proc if n != self.nodeid]
            msg = Join(LEAVE_DUMMY_NODEID, self.nodeid, tuple(active), tuple(self._failed),
                       self.ring_id.seq)
            self.stats.memb_join_tx += 1
            self._out.append(Multicast(msg.encode()))
            for kind in list(self._armed):
                self._cancel(kind)
            self._left = True
        return self._end(prev)

    def note_mcast_send(self, ok: bool) -> None:
        """The driver reports whether a multicast send succeeded (``sendmsg`` result):
        feeds ``stats.continuous_sendmsg_failures`` (reset by any success).  Calling it
        on failures and on the first success after one is enough."""
        if ok:
            self.stats.continuous_sendmsg_failures = 0
        else:
            self.stats.continuous_sendmsg_failures += 1

    def refresh_stats(self, now: int) -> list[Action]:
        """Bring the time-dependent counters up to ``now``; call before publishing them.

        Sets ``time_since_token_last_received`` (ms since the last valid token; since the
        driver's epoch when none arrived yet, as corosync's never-set 0 timestamp gives)
        and ``firewall_enabled_or_nic_failure``, and returns corosync's warning when the
        node keeps failing to form a ring (more than 3 consensus timeouts in a row, or
        more than 30 failed multicast sends in a row) — corosync's stats updater logs it
        on each 1.5 s refresh while the condition holds."""
        prev = self._begin(None)
        reason = self._update_time_stats(now)
        if reason:
            self._log(LogLevel.WARNING,
                      "Totem is unable to form a cluster because of an operating system or "
                      f"network fault (reason: {reason}). The most common cause of this "
                      "message is that the local firewall is configured improperly.")
        return self._end(prev)

    def _update_time_stats(self, now: int) -> str:
        stats = self.stats
        last = self._last_token_rx
        since = now - (last if last is not None else 0)
        stats.time_since_token_last_received = since if since > 0 else 0
        reason = ""
        if stats.continuous_sendmsg_failures > MAX_NO_CONT_SENDMSG_FAILURES:
            reason = "number of multicast sendmsg failures is above threshold"
        if stats.continuous_gather > MAX_NO_CONT_GATHER:
            reason = "totem is continuously in gather state"
        stats.firewall_enabled_or_nic_failure = 1 if reason else 0
        return reason

    # ------------------------------------------------------------------ plumbing
    def _begin(self, now: int | None = None) -> list[Action]:
        prev = self._out
        self._out = []
        if now is not None:
            self._now = now
            if now - self._alive_at > self._pause_limit and self._started and not self._left:
                self._pause_detected(now)
            self._alive_at = now
        return prev

    def _pause_detected(self, now: int) -> None:
        """Nothing reached us for more than token/2 although the PAUSE heartbeat fires
        every token/5: the process was not scheduled (SIGSTOP, VM freeze, swap storm).
        The driver now hands over what queued up meanwhile.  Like corosync, which empties
        its sockets at this point, we do not act on the stale membership traffic: JOINs,
        LEAVEs, commit tokens and MERGE_DETECTs are dropped until the PAUSE timer, re-armed
        for 0 ms, fires — i.e. until the driver has caught up with the backlog.  Live
        peers repeat all of these (join timer, token retransmit, merge timer), so nothing
        is lost but stale state.  Tokens and MCASTs are still processed: they carry
        ring ids and sequence numbers, which already sort stale from fresh."""
        self.pauses_detected += 1
        self._log(LogLevel.NOTICE, f"Process pause detected for {now - self._alive_at} ms, "
                                   "flushing membership messages.")
        self._flushing = True
        self._start(TimerKind.PAUSE, 0)

    def _end(self, prev: list[Action]) -> list[Action]:
        out = self._out
        self._out = prev
        return out

    def _log(self, level: LogLevel, message: str) -> None:
        self._out.append(Log(level, message))

    def _drop(self, reason: str, now: int, detail: str = "", log: bool = True) -> None:
        dropped = self.stats.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        if log:
            last = self._drop_logged.get(reason)
            if last is None or now - last >= DROP_LOG_INTERVAL:
                self._drop_logged[reason] = now
                text = f" ({detail})" if detail else ""
                self._log(LogLevel.WARNING,
                          f"Received invalid totem message: {reason}{text}... ignoring.")

    def _start(self, kind: TimerKind, ms: int) -> None:
        self._armed.add(kind)
        # Timer actions are immutable and few (one per kind and duration): building a
        # frozen attrs object for each of the 2-3 timer re-arms per token visit cost more
        # than the rest of the visit's bookkeeping, so they are made once and shared.
        key = (kind, ms)
        act = self._timer_actions.get(key)
        if act is None:
            act = self._timer_actions[key] = StartTimer(kind, ms)
        self._out.append(act)

    def _cancel(self, kind: TimerKind) -> None:
        if kind in self._armed:
            self._armed.discard(kind)
            self._out.append(_CANCEL[kind])

    def _reset_token_timeout(self, now: int | None = None) -> None:  # noqa: ARG002
        """(Re)arm the token-loss timer and, with it, the token warning timer
        (``token_warning`` % of ``token``, integer ms as corosync computes it).  A warning
        at or beyond the timeout could never be seen (the loss cancels it), so none is
        armed then."""
        token = self._config.token
        self._start(TimerKind.TOKEN_LOSS, token)
        warn = self._config.token_warning * token // 100
        if 0 < warn < token:
            self._start(TimerKind.TOKEN_WARNING, warn)
        self._loss_armed_at = self._now

    def _cancel_token_timeout(self) -> None:
        self._cancel(TimerKind.TOKEN_LOSS)
        self._cancel(TimerKind.TOKEN_WARNING)

    def _reset_retransmit_timeout(self) -> None:
        self._start(TimerKind.TOKEN_RETRANSMIT, self._config.token_retransmit)

    # membership list helpers (tiny lists; order preserved for the wire)
    @staticmethod
    def _set_add(lst: list[int], nodeid: int) -> None:
        if nodeid not in lst:
            lst.append(nodeid)

    @staticmethod
    def _set_merge(lst: list[int], more: tuple[int, ...] | list[int]) -> None:
        for n in more:
            if n not in lst:
                lst.append(n)

    def _token_memb(self) -> list[int]:
        failed = self._failed
        return [n for n in self._proc if n not in failed]

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, msg: object, data: bytes, now: int) -> None:
        handler = _DISPATCH.get(msg.__class__)
        if handler is not None:
            handler(self, msg, data, now)

    # ------------------------------------------------------------------ GATHER
    def _gather_enter(self, why: GatherFrom) -> None:
        self._orf_discard = True
        self._originated_orf_token = False
        self._set_add(self._proc, self.nodeid)
        self._send_join()
        self._start(TimerKind.JOIN, self._config.join)
        self._start(TimerKind.CONSENSUS, self._config.consensus)
        self._cancel(TimerKind.TOKEN_RETRANSMIT)
        self._cancel_token_timeout()
        self._cancel(TimerKind.MERGE_DETECT)
        self._consensus = {self.nodeid}
        self._log(LogLevel.DEBUG, f"entering GATHER state from {int(why)}({_GATHER_TEXT[why]}).")
        self.state = MembState.GATHER
        self.stats.gather_entered += 1
        if why == GatherFrom.CONSENSUS_TIMEOUT_EXPIRED:
            self.stats.continuous_gather += 1

    def _send_join(self) -> None:
        """Multicast our JOIN — after a random 0..send_join ms when ``totem.send_join`` is
        set (corosync sleeps that long before each JOIN so that the nodes of a large
        ring do not all answer a change at the same instant).  We arm SEND_JOIN instead
        of blocking; the JOIN is built when it fires, so it carries the lists of that
        moment, and a JOIN asked for while one is pending is covered by it."""
        send_join = self._config.send_join
        if send_join > 0:
            if TimerKind.SEND_JOIN in self._armed:
                return
            delay = self.rng.randrange(send_join)
            if delay:
                self._armed.add(TimerKind.SEND_JOIN)  # random ms: not worth caching
                self._out.append(StartTimer(TimerKind.SEND_JOIN, delay))
                return
        self._emit_join()

    def _emit_join(self) -> None:
        msg = Join(self.nodeid, self.nodeid, tuple(self._proc), tuple(self._failed),
                   self.ring_id.seq)
        self.stats.memb_join_tx += 1
        self._out.append(Multicast(msg.encode()))

    def _consensus_agreed(self) -> bool:
        consensus = self._consensus
        return all(n in consensus for n in self._token_memb())

    def _lowest_in_config(self) -> bool:
        memb = self._token_memb()
        return bool(memb) and min(memb) == self.nodeid

    def _consensus_timeout_expired(self, now: int) -> None:
        self.stats.consensus_timeouts += 1
        if self._consensus_agreed():
            self._consensus = {self.nodeid}
            self._reset_token_timeout(now)
        else:
            missing = [n for n in self._proc if n not in self._consensus]
            self._set_merge(self._failed, missing)
            self._gather_enter(GatherFrom.CONSENSUS_TIMEOUT)

    def _on_join(self, join: Join, data: bytes, now: int) -> None:
        self.stats.memb_join_rx += 1
        if self._flushing:
            self._drop("pause_flush", now, log=False)
            return
        sender = join.system_from
        if sender == 0 or 0 in join.proc_list:
            self._drop("bad_nodeid", now, "nodeid 0 in join")
            return
        if join.ring_seq > self._token_ring_id_seq:
            self._token_ring_id_seq = join.ring_seq
        state = self.state
        if state is MembState.OPERATIONAL:
            if self.nodeid in join.failed_list:
                return
            if sender in self._memb and join.ring_seq < self.ring_id.seq:
                return
            self._join_process(join)
        elif state is MembState.GATHER:
            self._join_process(join)
        elif sender in self._new_memb and join.ring_seq >= self.ring_id.seq:
            self._join_process(join)
            if state is MembState.COMMIT:
                self._gather_enter(GatherFrom.JOIN_COMMIT)
            else:
                self._recovery_token_loss()
                self._gather_enter(GatherFrom.JOIN_RECOVERY)

    def _join_process(self, join: Join) -> None:
        sender = join.system_from
        is_leave = join.nodeid == LEAVE_DUMMY_NODEID
        if is_leave:
            leaver = join.failed_list[-1] if join.failed_list else 0
            self._log(LogLevel.DEBUG, f"Received LEAVE message from {leaver}")
            if leaver:
                self._left_cleanly.add(leaver)
        proc_set = set(self._proc)
        failed_set = set(self._failed)
        p = set(join.proc_list)
        f = set(join.failed_list)
        gather_entered = False
        if p == proc_set and f == failed_set:
            if not is_leave:
                self._consensus.add(sender)
            if self._consensus_agreed() and self._failed_to_recv:
                self._failed_to_recv = False
                self._proc = [self.nodeid]
                self._failed = []
                self._commit_token_create()
                self._commit_enter()
                return
            if self._consensus_agreed() and self._lowest_in_config():
                self._commit_token_create()
                self._commit_enter()
        elif p <= proc_set and f <= failed_set:
            pass
        elif sender in failed_set:
            pass
        else:
            before = (len(self._proc), len(self._failed))
            self._set_merge(self._proc, join.proc_list)
            if self.nodeid in f:
                self._set_add(self._failed, sender)
            else:
                # Deliberate deviation: corosync adopts the sender's failed list only
                # when the sender was a member of its own old ring.  After a partition
                # heals, nodes from different old rings then keep different failed
                # lists, can never agree (consensus needs identical lists), and only
                # consensus timeouts settle it, each one shattering the gathering into
                # smaller rings that must merge again (16 nodes after a 500-fault
                # storm: up to 9.4 s to converge).  Adopting from any sender that does
                # not count us failed lets the lists agree at once (0.4-1.5 s on the
                # same runs).  Failed lists only narrow the proposed membership, which
                # commit-token agreement makes safe whatever they hold; and against a
                # real node we end up either agreeing (our lists now cover its) or
                # disagreeing exactly as two real nodes would.  Nothing on the wire
                # changes.
                self._set_merge(self._failed, join.failed_list)
            # Deliberate deviation: corosync re-gathers even when this JOIN taught us
            # nothing (lists only grow, so equal lengths mean unchanged).  Two nodes
            # whose failed lists disagree (e.g. after an asymmetric partition) then
            # answer each other's JOINs forever, and every re-gather restarts the
            # consensus timer, so the timeout that would settle the dispute never
            # fires.  We stay put instead: our last JOIN still stands (the join timer
            # repeats it) and the consensus timer keeps running.
            if (len(self._proc), len(self._failed)) != before \
                    or self.state is not MembState.GATHER:
                self._gather_enter(GatherFrom.MERGE_DURING_JOIN)
                gather_entered = True
        if not gather_entered and self.state is MembState.OPERATIONAL:
            self._gather_enter(GatherFrom.JOIN_OPERATIONAL)

    def _foreign(self, sender: int, in_operational: GatherFrom, in_gather: GatherFrom) -> None:
        """A message from another ring (MCAST or MERGE_DETECT): go find its members."""
        if self.state is MembState.OPERATIONAL:
            self._set_add(self._proc, sender)
            self._gather_enter(in_operational)
        elif self.state is MembState.GATHER:
            if sender not in self._proc:
                self._set_add(self._proc, sender)
                self._gather_enter(in_gather)
        else:
            self.stats.rx_msg_dropped += 1

    def _on_merge_detect(self, msg: MergeDetect, data: bytes, now: int) -> None:
        self.stats.memb_merge_detect_rx += 1
        if self._flushing:
            self._drop("pause_flush", now, log=False)
            return
        if msg.ring_id == self.ring_id:
            return
        if msg.system_from == 0:
            self._drop("bad_nodeid", now, "nodeid 0 in merge detect")
            return
        if self.state is MembState.OPERATIONAL or self.state is MembState.GATHER:
            self._foreign(msg.system_from, GatherFrom.MERGE_OPERATIONAL, GatherFrom.MERGE_GATHER)

    # ------------------------------------------------------------------ COMMIT
    def _commit_token_create(self) -> None:
        members = sorted(self._token_memb())
        ring = RingId(self.nodeid, (self._token_ring_id_seq + 4) & U64)
        self._log(LogLevel.DEBUG, "Creating commit token because I am the rep.")
        self._commit_token = CommitToken(self.nodeid, 0, ring, 0, members,
                                         [MembEntry() for _ in members])

    def _old_ring_state_save(self) -> None:
        if not self._old_saved:
            self._old_saved = True
            self._old_ring_id = self.ring_id
            self._old_aru = self._aru
            self._old_high_seq_received = self._high_seq_received
            self._log(LogLevel.DEBUG, f"Saving state aru {self._aru:x} high seq received "
                                      f"{self._high_seq_received:x}")

    def _old_ring_state_restore(self) -> None:
        self._aru = self._old_aru
        self._high_seq_received = self._old_high_seq_received
        self._log(LogLevel.DEBUG, f"Restoring instance->my_aru {self._aru:x} my high seq "
                                  f"received {self._high_seq_received:x}")

    def _commit_token_update(self, ct: CommitToken) -> None:
        """Fill my entry of the commit token with my previous ring's state."""
        self._new_memb = list(ct.addr)
        idx = ct.memb_index
        entries = ct.memb_list
        mine = entries[idx]
        mine.ring_id = self._old_ring_id
        mine.aru = self._old_aru
        self._received_flg = self._aru == self._high_seq_received
        mine.received_flg = int(self._received_flg)
        mine.high_delivered = self._high_delivered
        # A member that is behind another member of the same old ring cannot claim to
        # have received everything: clear its flag so recovery re-sends.
        high_aru = mine.aru
        for e in entries[:idx + 1]:
            if e.ring_id == mine.ring_id and sq_lt(high_aru, e.aru):
                high_aru = e.aru
        for i, e in enumerate(entries[:idx + 1]):
            if e.ring_id == mine.ring_id and sq_lt(e.aru, high_aru):
                e.received_flg = 0
                if i == idx:
                    self._received_flg = False
        ct.nodeid = self.nodeid
        ct.memb_index = idx + 1

    def _commit_enter(self, now: int | None = None) -> None:
        ct = self._commit_token
        assert ct is not None
        self._old_ring_state_save()
        self._commit_token_update(ct)
        self._token_target = ct.addr[ct.memb_index % len(ct.addr)]
        self._cancel(TimerKind.JOIN)
        self._cancel(TimerKind.SEND_JOIN)
        self._cancel(TimerKind.CONSENSUS)
        self.ring_id = ct.ring_id
        self._out.append(PersistRingSeq(self.ring_id.seq))
        self._token_ring_id_seq = self.ring_id.seq
        self._log(LogLevel.DEBUG, "entering COMMIT state.")
        self.state = MembState.COMMIT
        self._reset_retransmit_timeout()
        self._reset_token_timeout(now)
        self.stats.commit_entered += 1
        self.stats.continuous_gather = 0
        self._trc = self._pbl = self._cbl = 0
        self._send_commit_token(ct)

    def _send_commit_token(self, ct: CommitToken) -> None:
        ct.token_seq = (ct.token_seq + 1) & U32
        ct.nodeid = self.nodeid
        data = ct.encode()
        self._token_copy = data
        self.stats.memb_commit_token_tx += 1
        self._out.append(Unicast(self._token_target, data))
        self._reset_retransmit_timeout()

    def _on_commit_token(self, ct: CommitToken, data: bytes, now: int) -> None:
        self.stats.memb_commit_token_rx += 1
        if self._flushing:
            self._drop("pause_flush", now, log=False)
            return
        state = self.state
        n = len(ct.addr)
        if state is MembState.GATHER:
            if (set(ct.addr) == set(self._token_memb()) and len(set(ct.addr)) == n
                    and ct.ring_id.seq > self.ring_id.seq and ct.memb_index < n
                    and self.nodeid in ct.addr and ct.addr[ct.memb_index] == self.nodeid):
                self._commit_token = ct
                self._commit_enter(now)
        elif state is MembState.COMMIT:
            if ct.ring_id == self.ring_id and ct.memb_index == n and n == len(self._new_memb):
                self._recovery_enter(ct, now)
        elif state is MembState.RECOVERY:
            if self.ring_id.rep == self.nodeid and not self._originated_orf_token:
                self._originated_orf_token = True
                self._log(LogLevel.DEBUG, "Sending initial ORF token")
                self._orf_token_send_initial()
                self._reset_token_timeout(now)
                self._reset_retransmit_timeout()

    # ------------------------------------------------------------------ RECOVERY
    def _recovery_enter(self, ct: CommitToken, now: int) -> None:
        self._log(LogLevel.DEBUG, "entering RECOVERY state.")
        self._orf_discard = False
        self._high_ring_delivered = 0
        self._recovery = SortQueue(SEQNO_START_MSG)
        self._retrans_q.clear()
        low = self._old_high_seq_received
        self._send_commit_token(ct)  # second lap announces "everyone filled in"
        self._token_seq = (SEQNO_START_TOKEN - 1) & U32
        old_ring = self._old_ring_id
        memb = self._memb
        entries = ct.memb_list
        trans = [node for node, e in zip(ct.addr, entries)
                 if node in memb and e.ring_id == old_ring]
        self._trans_memb = trans
        # Deliberate: the deliver set is always refreshed (corosync keeps a stale one
        # when every flag is set; it is only consulted after a gap, see _deliver).
        self._deliver_memb = list(trans)
        # SAFE messages of the old ring that some member moving with us already delivered
        # in the regular configuration: every such member must deliver exactly these there
        # too, and the rest in the transitional one.  The commit token gives all of us the
        # same entries, so the boundary is the same everywhere (our own token-timing view
        # of stability, _safe_upto, is not).
        self._safe_regular_upto = self._high_delivered
        for node, e in zip(ct.addr, entries):
            if node in trans and sq_lt(self._safe_regular_upto, e.high_delivered):
                self._safe_regular_upto = e.high_delivered
        need = any(node in trans and e.received_flg == 0 for node, e in zip(ct.addr, entries))
        originated = 0
        if need:
            for node, e in zip(ct.addr, entries):
                if node in trans and e.ring_id == old_ring:
                    if sq_lt(e.aru, low):
                        low = e.aru
                    if sq_lt(self._high_ring_delivered, e.high_delivered):
                        self._high_ring_delivered = e.high_delivered
            high = self._old_high_seq_received
            if low != high:
                self._log(LogLevel.DEBUG, f"copying all old ring messages from "
                                          f"{(low + 1) & U32:x}-{high:x}.")
                for seq in self._regular.in_order_from((low + 1) & U32):
                    if sq_lt(low, seq) and sq_lte(seq, high):
                        stored = self._regular.items[seq]
                        self._retrans_q.append(stored[1])
                        originated += 1
        if originated:
            self._log(LogLevel.DEBUG, f"Originated {originated} messages in RECOVERY.")
        else:
            self._log(LogLevel.DEBUG, "Did not need to originate any messages in recovery.")
        self._aru = SEQNO_START_MSG
        self._aru_count = 0
        self._seq_unchanged = 0
        self._high_seq_received = SEQNO_START_MSG
        self._install_seq = SEQNO_START_MSG
        # Deliberate: corosync keeps these two from an aborted earlier recovery, so a
        # node can count rotations of the *previous* attempt and install the ring before
        # the others (and before it knows they hold the re-sent messages).
        self._retrans_flg_count = 0
        self._rotation_counter = 0
        self._last_released = SEQNO_START_MSG
        self._reset_token_timeout(now)
        self._reset_retransmit_timeout()
        self.state = MembState.RECOVERY
        self.stats.recovery_entered += 1
        self.stats.continuous_gather = 0

    def _recovery_token_loss(self) -> None:
        self._old_ring_state_restore()

    def _orf_token_send_initial(self) -> None:
        has_old = bool(self._retrans_q)
        self._set_retrans_flg = has_old
        token = OrfToken(self.nodeid, SEQNO_START_MSG, SEQNO_START_TOKEN,
                         (SEQNO_START_MSG - 1) & U32, self.nodeid, self.ring_id, 0, 0,
                         int(has_old), [])
        self.stats.orf_token_tx += 1
        self._token_send(token, True)

    def _install_step(self, token: OrfToken) -> None:
        """§3.4: decide, rotation by rotation, when every member has everything."""
        if self._retrans_q:
            if token.retrans_flg == 0:
                token.retrans_flg = 1
                self._set_retrans_flg = True
        elif token.retrans_flg == 1 and self._set_retrans_flg:
            token.retrans_flg = 0
            self._set_retrans_flg = False
        if token.retrans_flg == 0:
            self._retrans_flg_count += 1
        else:
            self._retrans_flg_count = 0
        if self._retrans_flg_count == 2:
            self._install_seq = token.seq
        if (self._retrans_flg_count >= 2 and not self._received_flg
                and sq_lte(self._install_seq, self._aru)):
            self._received_flg = True
            self._deliver_memb = list(self._trans_memb)
        if self._retrans_flg_count >= 3 and sq_lte(self._install_seq, token.aru):
            self._rotation_counter += 1
        else:
            self._rotation_counter = 0
        if self._rotation_counter == 2:
            self._operational_enter()
            self._rotation_counter = 0
            self._retrans_flg_count = 0

    # ------------------------------------------------------------------ OPERATIONAL
    def _operational_enter(self) -> None:
        self._originated_orf_token = False
        self._consensus = set()
        self._old_saved = False
        self._recovery_to_regular()
        old_high = self._old_high_seq_received
        aru_save = self._aru
        self._aru = self._old_aru
        # 1. old-ring messages everybody in the old ring agreed on (stops at a gap and
        #    at a SAFE message no member of the transitional set delivered in the old
        #    regular configuration: the same boundary at every member, see _recovery_enter)
        self._safe_upto = self._safe_regular_upto
        self._deliver(old_high, skip=False, honor_safe=True)
        trans = self._trans_memb
        left = sorted(n for n in self._memb if n not in trans)
        joined = sorted(n for n in self._new_memb if n not in trans)
        self._memb = list(self._new_memb)
        self._set_retrans_flg = False
        self._out.append(ConfChg(ConfChgKind.TRANSITIONAL, tuple(sorted(trans)), tuple(left),
                                 (), self.ring_id))
        self._waiting_trans_ack = True
        # 2. the rest of the old ring's messages, in the transitional configuration
        self._deliver(old_high, skip=True, honor_safe=False)
        self._aru = aru_save
        self._out.append(ConfChg(ConfChgKind.REGULAR, tuple(sorted(self._new_memb)), (),
                                 tuple(joined), self.ring_id))
        # the recovery queue (encapsulated re-sends, seqs 1..n) becomes the regular one
        self._regular, self._recovery = self._recovery, SortQueue(SEQNO_START_MSG)
        self._last_aru = SEQNO_START_MSG
        self._proc = list(self._new_memb)
        self._failed = []
        hd = self._high_seq_received
        while hd != 0 and hd not in self._regular.items:
            hd = (hd - 1) & U32
        self._high_delivered = hd
        self._regular.release_to(hd)
        self._last_released = hd
        if sq_lt(self._aru, hd):
            self._aru = hd
        self._safe_upto = SEQNO_START_MSG
        joined_txt = (" joined: " + " ".join(map(str, joined))) if joined else ""
        left_txt = (" left: " + " ".join(map(str, left))) if left else ""
        failed = [n for n in left if n not in self._left_cleanly]
        self._left_cleanly.clear()
        self._log(LogLevel.DEBUG, "entering OPERATIONAL state.")
        self._log(LogLevel.NOTICE,
                  f"A new membership ({self.ring_id}) was formed. Members{joined_txt}{left_txt}")
        if failed:
            self._log(LogLevel.NOTICE, "Failed to receive the leave message. failed: "
                      + " ".join(map(str, failed)))
        self.state = MembState.OPERATIONAL
        self.stats.operational_entered += 1
        self.stats.continuous_gather = 0
        self._received_flg = True
        self._old_ring_id = self.ring_id

    def _recovery_to_regular(self) -> None:
        """Unwrap re-sent old-ring messages into the old ring's queue at their old seq."""
        rec = self._recovery
        old_ring = self._old_ring_id
        regular = self._regular
        seq = SEQNO_START_MSG
        for _ in range((self._aru - SEQNO_START_MSG) & U32):
            seq = (seq + 1) & U32
            stored = rec.items.get(seq)
            if stored is None or stored[0].encapsulated != ENCAP_RECOVERY:
                continue
            raw = stored[0].payload
            try:
                inner = decode(raw)
            except WireError:
                continue
            if not isinstance(inner, Mcast) or inner.ring_id != old_ring:
                continue
            s = inner.seq
            if regular.in_range(s) and s not in regular.items:
                regular.add(s, (inner, raw))
                if sq_lt(self._old_high_seq_received, s):
                    self._old_high_seq_received = s

    def _deliver(self, end: int, skip: bool, honor_safe: bool) -> None:
        """Hand consecutive messages up to ``end`` to the application.

        AGREED: deliver in seq order, stop at the first gap.  SAFE: additionally stop at
        a SAFE message until it is *stable*, i.e. ``seq ≤ _safe_upto`` =
        min(token aru on this visit, token aru on the previous visit).  Why that bound
        proves every member holds the message: if the aru was ≥ seq when the token left
        me last time, seq existed for the whole following rotation; any member lacking it
        during its visit sets (or finds) the token aru below seq and becomes (or stays
        behind) aru_addr, and only aru_addr may raise the aru again, which it can do no
        earlier than its next visit — after the token has come back to me.  So an aru
        ≥ seq on two successive arrivals means nobody lacked it.

        ``skip`` (configuration change only): jump over gaps; after the first gap only
        messages originated by members of the deliver set are passed up (corosync).
        """
        hd0 = self._high_delivered
        count = (end - hd0) & U32
        if count == 0 or count >= QUEUE_SIZE:
            return
        # No window check needed: hd0 >= last_released (= window head - 1) and
        # count < QUEUE_SIZE keep every seq below inside the sort-queue window.
        items = self._regular.items
        out = self._out
        safe_upto = self._safe_upto
        gap = False
        seq = hd0
        for _ in range(count):
            seq = (seq + 1) & U32
            stored = items.get(seq)
            if stored is None:
                if not skip:
                    break
                self._high_delivered = seq
                gap = True
                continue
            m = stored[0]
            if honor_safe and m.guarantee == 1 and not sq_lte(seq, safe_upto):
                break
            self._high_delivered = seq
            if gap and m.system_from not in self._deliver_memb:
                continue
            out.append(Deliver(m.nodeid, m.payload, m.ring_id, seq, m.guarantee, m.swapped))

    def _messages_free(self, token_aru: int) -> None:
        release_to = token_aru
        if sq_lt(self._last_aru, release_to):
            release_to = self._last_aru
        if sq_lt(self._high_delivered, release_to):
            release_to = self._high_delivered
        if sq_lt(release_to, self._last_released) or release_to == self._last_released:
            return
        if ((release_to - self._last_released) & U32) >= QUEUE_SIZE:
            return  # cannot happen on a sane ring; never trust a forged aru that far
        self._regular.release_to(release_to)
        self._last_released = release_to

    def _update_aru(self) -> None:
        items = (self._recovery if self.state is MembState.RECOVERY else self._regular).items
        aru = self._aru
        high = self._high_seq_received
        while aru != high:
            nxt = (aru + 1) & U32
            if nxt not in items:
                break
            aru = nxt
        self._aru = aru

    # ------------------------------------------------------------------ MCAST
    def _on_mcast(self, m: Mcast, data: bytes, now: int) -> None:
        """Store a MCAST of our ring; advance the aru and deliver when it fills the next
        seq.  This runs once per message per node, so the common case (in order, AGREED)
        is written out inline: SortQueue.add/in_range, _update_aru and a one-message
        _deliver, with the general paths kept for everything else."""
        self.stats.mcast_rx += 1
        ring = m.ring_id
        mine = self.ring_id
        if ring.seq != mine.seq or ring.rep != mine.rep:
            if m.system_from == 0:
                self._drop("bad_nodeid", now, "nodeid 0 in mcast")
                return
            self._foreign(m.system_from, GatherFrom.FOREIGN_MESSAGE_OPERATIONAL,
                          GatherFrom.FOREIGN_MESSAGE_GATHER)
            return
        state = self.state
        if m.encapsulated == ENCAP_RECOVERY:
            if state is not MembState.RECOVERY:
                self._drop("late_recovery_msg", now, log=False)
                return
            queue = self._recovery
        elif state is MembState.RECOVERY:
            # a peer already in OPERATIONAL: keep it out of the old ring's queue
            self._drop("early_new_ring_msg", now, log=False)
            return
        else:
            queue = self._regular
        seq = m.seq
        items = queue.items
        if seq in items:
            return  # a duplicate (or our own message coming back)
        head = queue.head
        if head <= ROLLOVER_POINT:
            if not head <= seq < head + QUEUE_SIZE:
                return
        elif not queue.in_range(seq):
            return
        if type(data) is not bytes:  # a driver's reusable receive buffer: keep a copy
            data = bytes(data)
        items[seq] = (m, data)
        miss = queue.miss
        if miss:
            miss.pop(seq, None)
        high = self._high_seq_received
        if high > ROLLOVER_POINT or seq > ROLLOVER_POINT:
            newer = ((high - ROLLOVER_VALUE) & U32) < ((seq - ROLLOVER_VALUE) & U32)
        else:
            newer = high < seq
        if newer:
            self._high_seq_received = high = seq
        if seq != ((self._aru + 1) & U32):
            return  # a gap before it: the aru waits
        aru = seq
        while aru != high:
            nxt = (aru + 1) & U32
            if nxt not in items:
                break
            aru = nxt
        self._aru = aru
        if state is MembState.OPERATIONAL:
            if aru == seq and m.guarantee != 1 and seq == ((self._high_delivered + 1) & U32):
                # exactly this message became deliverable
                self._high_delivered = seq
                self._out.append(Deliver(m.nodeid, m.payload, ring, seq, m.guarantee,
                                         m.swapped))
            else:
                self._deliver(high, skip=False, honor_safe=True)

    # ------------------------------------------------------------------ ORF token
    def _on_orf_token(self, token: OrfToken, data: bytes, now: int) -> None:
        self.stats.orf_token_rx += 1
        if self._orf_discard:
            return
        state = self.state
        if state is MembState.COMMIT or state is MembState.GATHER:
            return
        tring = token.ring_id
        mring = self.ring_id
        if tring.seq != mring.seq or tring.rep != mring.rep:
            self._drop("foreign_ring", now, log=False)
            return
        if sq_lte(token.token_seq, self._token_seq):
            self._drop("duplicate_token", now, log=False)
            return
        cfg = self._config
        rep = mring.rep == self.nodeid
        # idle detection and hold decision (§3.5 steps 2 and 4)
        if token.seq == self._last_seq:
            if TimerKind.MERGE_DETECT not in self._armed:
                self._start(TimerKind.MERGE_DETECT, cfg.merge)
            self._seq_unchanged += 1
        else:
            self._cancel(TimerKind.MERGE_DETECT)
            self._cancel(TimerKind.TOKEN_HOLD)
            self._seq_unchanged = 0
        self._last_seq = token.seq
        if rep:
            held = self._seq_unchanged > cfg.seqno_unchanged_const
        else:
            held = self._seq_unchanged >= cfg.seqno_unchanged_const
        self._token_held = held
        forward = not (rep and held)
        if state is MembState.OPERATIONAL:
            self._messages_free(token.aru)
        self._token_stats(now)
        hook = self.token_received_hook
        if hook is not None:
            self._in_token = True
            try:
                hook()
            finally:
                self._in_token = False
        last_aru = self._last_aru
        self._last_aru = token.aru
        if state is MembState.OPERATIONAL:
            self._safe_upto = sq_min(token.aru, last_aru)
        allowed = self._fcc_calculate(token)
        retransmitted = self._orf_token_rtr(token, allowed)
        allowed -= retransmitted
        if (cfg.cancel_token_hold_on_retransmit and held
                and (token.rtr_list or retransmitted)):
            self._token_held = held = False
            forward = True
        allowed = self._fcc_rtr_limit(token, allowed)
        sent = self._orf_token_mcast(token, allowed)
        self._fcc_token_update(token, retransmitted + sent)
        me = self.nodeid
        if sq_lt(self._aru, token.aru) or token.aru_addr == me or token.aru_addr == 0:
            token.aru = self._aru
            token.aru_addr = 0 if token.aru == token.seq else me
        if token.aru == last_aru and token.aru_addr != 0:
            self._aru_count += 1
        else:
            self._aru_count = 0
        if self._aru_count > cfg.fail_recv_const and token.aru_addr == me:
            self._log(LogLevel.ERROR, "FAILED TO RECEIVE")
            self._failed_to_recv = True
            self._set_add(self._failed, me)
            self._gather_enter(GatherFrom.FAILED_TO_RECEIVE)
            return
        self._token_seq = token.token_seq
        token.token_seq = (token.token_seq + 1) & U32
        if state is MembState.RECOVERY:
            self._install_step(token)
        self._token_send(token, forward)
        if (self.state is MembState.OPERATIONAL
                and self._high_delivered != self._high_seq_received):
            self._deliver(self._high_seq_received, skip=False, honor_safe=True)
        # _reset_token_timeout + _reset_retransmit_timeout, with the actions made once
        self._armed.update(self._token_timer_kinds)
        self._out.extend(self._token_timer_acts)
        self._loss_armed_at = now
        if rep and self._token_held:
            self._start(TimerKind.TOKEN_HOLD, cfg.hold)

    def _token_stats(self, now: int) -> None:
        self._last_token_rx = now
        self.stats.time_since_token_last_received = 0
        times = self._tok_rx_times
        times.append(now)
        if len(times) > 1:
            self.stats.mtt_rx_token = (times[-1] - times[0]) // (len(times) - 1)

    def _token_send(self, token: OrfToken, forward: bool) -> None:
        token.nodeid = self.nodeid
        data = token.encode()
        self._token_copy = data
        if forward:
            self.stats.orf_token_tx += 1
            self._out.append(Unicast(self._token_target, data))

    def _resend_token(self) -> None:
        if self._token_copy is not None:
            self._out.append(Unicast(self._token_target, self._token_copy))

    def _fcc_calculate(self, token: OrfToken) -> int:
        cfg = self._config
        allowed = cfg.max_messages
        room = (cfg.window_size - token.fcc) & U32
        if allowed > room:
            allowed = room
        if self.state is MembState.RECOVERY:
            cbl = len(self._retrans_q)
        else:
            cbl = len(self._trans_q if self._waiting_trans_ack else self._new_q)
        self._cbl = cbl
        backlogs = self._tok_backlogs
        if len(backlogs) == _TOKEN_STATS:
            self._backlog_sum -= backlogs[0]
        backlogs.append(cbl)
        self._backlog_sum += cbl
        self.stats.avg_backlog_calc = self._backlog_sum // len(backlogs)
        total = (token.backlog + cbl - self._pbl) & U32
        if total:
            share = ((cfg.window_size * self._pbl) & U32) // total
            if 0 < share < allowed:
                allowed = share
        return allowed

    def _fcc_rtr_limit(self, token: OrfToken, allowed: int) -> int:
        """Never let the ring run more than the sort-queue window past last_released."""
        limit = (self._last_released + QUEUE_SIZE - allowed - self._config.window_size) & U32
        return 0 if sq_lt(limit, token.seq) else allowed

    def _fcc_token_update(self, token: OrfToken, sent: int) -> None:
        token.fcc = (token.fcc + sent - self._trc) & U32
        token.backlog = (token.backlog + self._cbl - self._pbl) & U32
        self._trc = sent
        self._pbl = self._cbl

    def _orf_token_rtr(self, token: OrfToken, allowed: int) -> int:
        """Answer retransmit requests I can serve; add my own missing seqs (§3.5 step 10)."""
        queue = self._recovery if self.state is MembState.RECOVERY else self._regular
        rtr = token.rtr_list
        ring = self.ring_id
        out = self._out
        retransmitted = 0
        if rtr:
            self._log(LogLevel.NOTICE,
                      "Retransmit List: " + "".join(f"{i.seq:x} " for i in rtr))
            i = 0
            while retransmitted < allowed and i < len(rtr):
                item = rtr[i]
                if item.ring_id != ring or not queue.in_range(item.seq):
                    i += 1
                    continue
                stored = queue.items.get(item.seq)
                if stored is None:
                    i += 1
                    continue
                out.append(Multicast(stored[1]))
                del rtr[i]
                self.stats.mcast_retx += 1
                retransmitted += 1
        aru = self._aru
        count = (token.seq - aru) & U32
        if count >= QUEUE_SIZE:
            count = 0  # a token that far ahead is not from a sane ring: request nothing
        items = queue.items
        miss_const = self._config.miss_count_const
        seq = aru
        for _ in range(count):
            if len(rtr) >= RTR_MAX:
                break
            seq = (seq + 1) & U32
            if not queue.in_range(seq):
                break
            if seq in items:
                continue
            if queue.miss_increment(seq) < miss_const:
                continue
            if not any(x.seq == seq for x in rtr):
                rtr.append(RtrItem(ring, seq))
        return retransmitted

    def _orf_token_mcast(self, token: OrfToken, allowed: int) -> int:
        """Assign seqs to queued messages, multicast and retain them (§3.5 step 13)."""
        if self.state is MembState.RECOVERY:
            self._reset_retransmit_timeout()
            queue_r = self._retrans_q
            sq = self._recovery
            sent = 0
            while sent < allowed and queue_r:
                inner = queue_r.popleft()
                token.seq = seq = (token.seq + 1) & U32
                m = Mcast(self.nodeid, self.nodeid, seq, self.ring_id, inner,
                          self._global_seqno & 0x7FFFFFFF, 0, 0, ENCAP_RECOVERY)
                self._emit_mcast(m, sq)
                sent += 1
        else:
            queue = self._trans_q if self._waiting_trans_ack else self._new_q
            sq = self._regular
            sent = 0
            while sent < allowed and queue:
                payload, guarantee = queue.popleft()
                token.seq = seq = (token.seq + 1) & U32
                m = Mcast(self.nodeid, self.nodeid, seq, self.ring_id, payload,
                          self._global_seqno & 0x7FFFFFFF, 0, guarantee, ENCAP_NORMAL)
                self._emit_mcast(m, sq)
                sent += 1
        self._update_aru()
        return sent

    def _emit_mcast(self, m: Mcast, sq: SortQueue[Stored]) -> None:
        self._global_seqno += 1
        data = m.encode()
        sq.add(m.seq, (m, data))
        self._out.append(Multicast(data))
        self._high_seq_received = m.seq

    # ------------------------------------------------------------------ hold / merge
    def _send_hold_cancel(self) -> None:
        self._token_held = False
        self.stats.token_hold_cancel_tx += 1
        self._out.append(Multicast(TokenHoldCancel(self.nodeid, self.ring_id).encode()))

    def _on_hold_cancel(self, msg: TokenHoldCancel, data: bytes, now: int) -> None:
        self.stats.token_hold_cancel_rx += 1
        if msg.ring_id != self.ring_id:
            return
        self._seq_unchanged = 0
        if self.ring_id.rep == self.nodeid and self.state is not MembState.GATHER:
            self._resend_token()
            self._reset_retransmit_timeout()

    # ------------------------------------------------------------------ timers
    def _on_token_warning_timer(self, now: int) -> None:
        """corosync's wording (note the trailing space); repeated every warning period
        until a token arrives or the token timeout cancels it."""
        since = self._last_token_rx if self._last_token_rx is not None else self._loss_armed_at
        self._log(LogLevel.NOTICE, f"Token has not been received in {now - since} ms ")
        warn = self._config.token_warning * self._config.token // 100
        if warn > 0:
            self._start(TimerKind.TOKEN_WARNING, warn)

    def _on_pause_timer(self, now: int) -> None:
        """The heartbeat: it fired, so the driver is running; a flush ends here."""
        self._flushing = False
        self._start(TimerKind.PAUSE, self._pause_period)
        self._update_time_stats(now)

    def _on_send_join_timer(self, now: int) -> None:
        if self.state is MembState.GATHER:
            self._emit_join()

    def _on_token_loss_timer(self, now: int) -> None:
        state = self.state
        cfg = self._config
        if state is MembState.OPERATIONAL:
            self._log(LogLevel.DEBUG, "The token was lost in the OPERATIONAL state.")
            self._log(LogLevel.NOTICE,
                      f"A processor failed, forming new configuration: token timed out "
                      f"({cfg.token}ms), waiting {cfg.consensus}ms for consensus.")
            self._gather_enter(GatherFrom.TOKEN_LOST_OPERATIONAL)
            self.stats.operational_token_lost += 1
        elif state is MembState.GATHER:
            self._log(LogLevel.DEBUG, f"The consensus timeout expired ({cfg.consensus}ms).")
            self._consensus_timeout_expired(now)
            self._gather_enter(GatherFrom.CONSENSUS_TIMEOUT_EXPIRED)
            self.stats.gather_token_lost += 1
        elif state is MembState.COMMIT:
            self._log(LogLevel.DEBUG, "The token was lost in the COMMIT state.")
            self._gather_enter(GatherFrom.TOKEN_LOST_COMMIT)
            self.stats.commit_token_lost += 1
        else:
            self._log(LogLevel.DEBUG, "The token was lost in the RECOVERY state.")
            self._recovery_token_loss()
            self._gather_enter(GatherFrom.TOKEN_LOST_RECOVERY)
            self.stats.recovery_token_lost += 1
            self._orf_discard = True

    def _on_retransmit_timer(self, now: int) -> None:
        if self.state is not MembState.GATHER:
            self._resend_token()
            self._reset_retransmit_timeout()

    def _on_hold_timer(self, now: int) -> None:
        if self.state is MembState.OPERATIONAL or self.state is MembState.RECOVERY:
            self._resend_token()

    def _on_join_timer(self, now: int) -> None:
        if self.state is MembState.GATHER or self.state is MembState.COMMIT:
            self._send_join()
            self._start(TimerKind.JOIN, self._config.join)

    def _on_consensus_timer(self, now: int) -> None:
        self._consensus_timeout_expired(now)

    def _on_merge_timer(self, now: int) -> None:
        if self.state is MembState.OPERATIONAL and self.ring_id.rep == self.nodeid:
            self.stats.memb_merge_detect_tx += 1
            msg = MergeDetect(self.nodeid, self.nodeid, self.ring_id)
            self._out.append(Multicast(msg.encode()))


_DISPATCH: dict[type, Callable[[Srp, object, bytes, int], None]] = {
    OrfToken: Srp._on_orf_token,
    Mcast: Srp._on_mcast,
    Join: Srp._on_join,
    CommitToken: Srp._on_commit_token,
    MergeDetect: Srp._on_merge_detect,
    TokenHoldCancel: Srp._on_hold_cancel,
}

_CANCEL = {kind: CancelTimer(kind) for kind in TimerKind}

_TIMER_HANDLERS: dict[TimerKind, Callable[[Srp, int], None]] = {
    TimerKind.TOKEN_LOSS: Srp._on_token_loss_timer,
    TimerKind.TOKEN_WARNING: Srp._on_token_warning_timer,
    TimerKind.PAUSE: Srp._on_pause_timer,
    TimerKind.SEND_JOIN: Srp._on_send_join_timer,
    TimerKind.TOKEN_RETRANSMIT: Srp._on_retransmit_timer,
    TimerKind.TOKEN_HOLD: Srp._on_hold_timer,
    TimerKind.JOIN: Srp._on_join_timer,
    TimerKind.CONSENSUS: Srp._on_consensus_timer,
    TimerKind.MERGE_DETECT: Srp._on_merge_timer,
}
