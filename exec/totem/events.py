"""The seam between the sans-IO Totem state machine and its drivers.

The state machine (:mod:`corosync.exec.totem.srp`) never touches a socket, a clock or
trio.  A driver (the trio executive, or the simulator) feeds it inputs through method
calls, each with the driver's current time ``now`` in milliseconds, and carries out the
returned actions in order:

===========================  ==========================================================
action                       what the driver does
===========================  ==========================================================
:class:`Unicast`             send ``data`` to the node ``nodeid`` (token, commit token)
:class:`Multicast`           send ``data`` to every member **including this node** (udpu:
                             to every nodelist address; udp: multicast plus a local copy)
:class:`StartTimer`          (re)arm the one timer of that kind to fire after ``ms``
:class:`CancelTimer`         disarm it (no-op when not armed)
:class:`Deliver`             hand an ordered MCAST payload (a totempg packet) upwards
:class:`PgDeliver`           (from TotemPg) hand one reassembled message upwards
:class:`ConfChg`             hand a transitional or regular configuration upwards
:class:`PersistRingSeq`      store the ring sequence durably (``ringid_<nodeid>``)
:class:`Log`                 log a line (corosync wording; subsystem TOTEM)
===========================  ==========================================================

There is exactly one timer per :class:`TimerKind`; starting an armed timer re-arms it.
When a timer fires the driver calls ``timer_expired(kind, now)``; a driver must not fire
a timer that was cancelled or re-armed since.  ``StartTimer(kind, 0)`` means "as soon as
the driver has handed over the input it already holds" (datagrams queued while the
process was not scheduled come first): process-pause detection relies on it.
"""

from __future__ import annotations

import enum
from typing import Union

from attrs import define, frozen

from .wire import RingId


class TimerKind(enum.Enum):
    """The state machine's timers.  A driver needs no per-kind logic: it arms, cancels
    and fires every kind the same way (new kinds must never need driver changes)."""

    TOKEN_LOSS = "token"
    #: "Token has not been received in N ms": ``token_warning`` % of ``token``, re-armed
    #: every warning period until a token arrives or the token timeout fires.
    TOKEN_WARNING = "token_warning"
    TOKEN_RETRANSMIT = "token_retransmit"
    TOKEN_HOLD = "hold"
    JOIN = "join"
    #: the random 0..``send_join`` ms delay before a JOIN goes out (``totem.send_join``)
    SEND_JOIN = "send_join"
    CONSENSUS = "consensus"
    MERGE_DETECT = "merge"
    DOWNCHECK = "downcheck"
    #: liveness heartbeat every ``token``/5 ms: guarantees the state machine hears from
    #: its driver often enough to tell a process pause from a quiet ring (see docs/totem.md)
    PAUSE = "pause"


class Guarantee(enum.IntEnum):
    """Delivery guarantee of a message, as in the MCAST ``guarantee`` field."""

    AGREED = 0
    SAFE = 1


class ConfChgKind(enum.IntEnum):
    TRANSITIONAL = 0  # TOTEM_CONFIGURATION_TRANSITIONAL
    REGULAR = 1  # TOTEM_CONFIGURATION_REGULAR


class LogLevel(enum.IntEnum):
    """syslog severities, as corosync's logsys uses them."""

    CRIT = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7
    TRACE = 8


@frozen
class Unicast:
    nodeid: int
    data: bytes


@frozen
class Multicast:
    data: bytes


@frozen
class StartTimer:
    kind: TimerKind
    ms: int


@frozen
class CancelTimer:
    kind: TimerKind


@define(slots=True, eq=True)
class Deliver:
    """One MCAST payload in agreed (or safe) order.  (Not frozen: built once per
    delivered packet on the hot path, where frozen attrs' __init__ costs 3x.)

    ``sender`` is the originating nodeid (MCAST header nodeid), ``payload`` the totempg
    packet, ``swapped`` whether the originator was big-endian, ``seq``/``ring_id`` where
    the message was ordered, ``guarantee`` as sent.
    """

    sender: int
    payload: bytes
    ring_id: RingId
    seq: int
    guarantee: int = 0
    swapped: bool = False


@define(slots=True, eq=True)
class PgDeliver:
    """One whole application message after totempg unpacking/reassembly (emitted by
    :class:`corosync.exec.totem.pg.TotemPg` in place of the :class:`Deliver` actions of
    the packets that carried it).  ``groups`` are the group names of its group header,
    ``message`` the bytes after that header."""

    sender: int
    groups: tuple[bytes, ...]
    message: bytes
    ring_id: RingId
    guarantee: int = 0
    swapped: bool = False


@frozen
class ConfChg:
    """A configuration change.  Lists are sorted ascending nodeids."""

    kind: ConfChgKind
    members: tuple[int, ...]
    left: tuple[int, ...]
    joined: tuple[int, ...]
    ring_id: RingId


@frozen
class PersistRingSeq:
    seq: int


@frozen
class Log:
    level: LogLevel
    message: str
    subsys: str = "TOTEM"


Action = Union[Unicast, Multicast, StartTimer, CancelTimer, Deliver, PgDeliver, ConfChg,
               PersistRingSeq, Log]
