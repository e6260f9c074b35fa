"""The service framework: what a corosync service is, and the API the host gives it.

A service (``services/cmap.py``, ``services/cpg.py`` …) is a :class:`Service` subclass that
declares

* ``id``/``name`` — corosync's service id (§5.2 of spec/totem-wire.md) and engine name;
* ``exec_handlers`` — a list indexed by exec function id.  Its *length* is corosync's
  ``exec_engine_count``: a message whose function id is not below it is "discarded unknown
  message", exactly like a real node.  Each entry carries the handler and, where corosync
  has one, the endian-swap function (a byte-swapped message for an entry without one is
  dropped; a real node would assert);
* ``lib_handlers`` — IPC request handlers by request id, each flagged whether corosync
  marks it ``CS_LIB_FLOW_CONTROL_REQUIRED`` (answered CS_ERR_TRY_AGAIN while sync runs or
  the Totem queue is full) and whether it is answered at all (CPG MCAST is not);
* the sync callbacks (``sync_init``/``sync_process``/``sync_activate``/``sync_abort``) if
  ``sync = True``, a ``confchg`` callback, and ``lib_init``/``lib_exit`` per IPC client
  (``lib_exit`` is where a dead process leaves its CPG group with reason PROCDOWN).

Services never see sockets, Totem or the IPC framing: they get a :class:`ServiceApi` (send
an exec message, ask whether the queue has room, the local nodeid, the cmap store, logging)
and connection objects with ``send_response``/``send_event``.  Handlers parse with the
helpers here and raise :class:`Malformed` for bad input; the host counts and drops it.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

from attrs import frozen

from ..lib.ipc import CsError  # noqa: F401  (re-exported: services import it from here)
from .totem.events import ConfChgKind, Guarantee, LogLevel
from .totem.wire import RingId

if TYPE_CHECKING:
    from .cmap import CmapStore

#: corosync indexes its service table without a range check: ids must stay below this.
SERVICES_COUNT_MAX = 64

#: ``qb_ipc_request_header``: i32 id @0, i32 size @8 (each member 8-aligned) — 16 bytes.
REQ_HEADER = struct.Struct("<i4xi4x")
#: ``qb_ipc_response_header``: id @0, size @8, error @16 — 24 bytes (CPG JOINLIST uses it).
RES_HEADER = struct.Struct("<i4xi4xi4x")
#: ``memb_ring_id`` as it appears inside sync messages: rep u32, seq u64, packed.
RING_ID = struct.Struct("<IQ")


class ServiceId(enum.IntEnum):
    """corosync's service ids (``include/corosync/coroapi.h``)."""

    CMAP = 0
    CFG = 1
    CPG = 2
    QUORUM = 3
    PLOAD = 4
    VOTEQUORUM = 5
    MON = 6
    WD = 7


def service_id_make(service: int, fn: int) -> int:
    """The exec header id: service in the high 16 bits, function in the low 16."""
    return (service << 16) | fn


def pack_req_header(msg_id: int, size: int) -> bytes:
    return REQ_HEADER.pack(msg_id, size)


class Malformed(Exception):
    """An exec message or IPC request that cannot be valid; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SendFailed(Exception):
    """The exec message could not be queued now (Totem queue full); retry later."""


def need(buf: bytes, size: int, what: str) -> None:
    """Raise Malformed unless ``buf`` holds at least ``size`` bytes."""
    if len(buf) < size:
        raise Malformed("truncated", f"{what}: {len(buf)} bytes, need {size}")


def swap_fields(msg: bytes, fields: Sequence[tuple[int, str]]) -> bytes:
    """Byte-swap the integer fields ``(offset, struct code)`` of a big-endian message.

    The exec header id/size are always swapped.  Fields beyond the message end raise
    Malformed, so a truncated swapped message is dropped like a truncated native one."""
    out = bytearray(msg)
    for off, code in ((0, "i"), (8, "i"), *fields):
        size = struct.calcsize(code)
        if off + size > len(out):
            raise Malformed("truncated", f"swapped field @{off} beyond {len(out)} bytes")
        (value,) = struct.unpack_from(">" + code, out, off)
        struct.pack_into("<" + code, out, off, value)
    return bytes(out)


def send_event(conn: Any, msg_id: int, payload: bytes) -> bool:
    """Queue an event for one client; False if it cannot take it.

    A message larger than the client's negotiated ``max_msg_size`` is refused by the IPC
    layer (ValueError): like libqb's EMSGSIZE it is lost for that client only, and the
    other clients of the same delivery still get theirs."""
    try:
        return bool(conn.send_event(msg_id, payload))
    except ValueError:
        return False


# ------------------------------------------------------------------------------ handlers
ExecFn = Callable[[bytes, int], None]
"""exec handler(message incl. its 16-byte header, sender nodeid from the totem header)."""
SwapFn = Callable[[bytes], bytes]
LibFn = Callable[[Any, bytes], None]
"""lib handler(conn, payload after the 16-byte request header)."""


@frozen
class ExecHandler:
    fn: ExecFn
    swap: SwapFn | None = None


@frozen
class LibHandler:
    fn: LibFn
    flow_control: bool = False
    #: False only for CPG MCAST: corosync never answers it (not even with an error).
    answered: bool = True


class Conn(Protocol):
    """What services use of an IPC connection (exec/ipc IpcConnection or a test fake)."""

    pid: int
    context: Any

    def send_response(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool: ...
    def send_event(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool: ...


class ServiceApi(Protocol):
    """What the host offers a service (implemented by :class:`corosync.exec.host.ServiceHost`)."""

    nodeid: int
    cmap: CmapStore

    def mcast(self, message: bytes, guarantee: Guarantee = Guarantee.AGREED) -> None:
        """Send an exec message in group ``a``; raises SendFailed when the queue is full."""

    def send_ok(self, nbytes: int) -> bool: ...
    def log(self, level: LogLevel, message: str, subsys: str = "MAIN") -> None: ...
    def log_limited(self, level: LogLevel, key: str, message: str,
                    subsys: str = "MAIN") -> None: ...
    def shutdown_request(self, reason: str) -> None: ...

    # Present only when the driver provides timers (probe with getattr):
    # timer_add(ms, callback) -> handle, timer_del(handle); one-shot.


class Service:
    """Base class of every service (see the module docstring).  Subclasses set the class
    attributes and build ``exec_handlers``/``lib_handlers`` in ``__init__``."""

    id: ClassVar[int]
    name: ClassVar[str]
    #: corosync's short IPC service name (``cmap``, ``cpg`` …); None = no IPC.
    ipc_name: ClassVar[str | None] = None
    #: whether the service takes part in sync (has sync_init).
    sync: ClassVar[bool] = False
    #: corosync keeps serving this service's IPC while sync runs (only votequorum, so that
    #: a quorum device can keep voting): its connections never get the sync flow control.
    ipc_during_sync: ClassVar[bool] = False
    subsys: ClassVar[str] = "MAIN"

    def __init__(self, api: ServiceApi) -> None:
        self.api = api
        self.exec_handlers: list[ExecHandler] = []
        self.lib_handlers: dict[int, LibHandler] = {}

    # sync callbacks (only called when ``sync`` is True)
    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        pass

    def sync_process(self) -> bool:
        """Send this service's sync messages; True when done, False to be called again."""
        return True

    def sync_activate(self) -> None:
        pass

    def sync_abort(self) -> None:
        pass

    def confchg(self, kind: ConfChgKind, members: tuple[int, ...], left: tuple[int, ...],
                joined: tuple[int, ...], ring_id: RingId) -> None:
        pass

    def lib_init(self, conn: Conn) -> None:
        pass

    def lib_exit(self, conn: Conn) -> None:
        pass

    def exec_exit(self) -> None:
        """The executive is shutting down."""
