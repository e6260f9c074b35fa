"""Closed Process Groups (CPG) client: join named groups, multicast to them in total order,
and follow their membership.

Two handle types share one protocol description (see :mod:`corosync._common`):

* :class:`Cpg` — blocking, like libcpg: callbacks run inside :meth:`Cpg.dispatch`, and
  :meth:`Cpg.fileno` is the descriptor to poll.
* :class:`AsyncCpg` — the same calls as trio coroutines; events come from an async iterator.

Example (blocking)::

    from corosync import cpg

    def deliver(handle, group, nodeid, pid, message):
        print(f"{nodeid}/{pid}: {message!r}")

    def confchg(handle, group, members, left, joined):
        print("members:", [(m.nodeid, m.pid) for m in members])

    with cpg.Cpg.model_initialize(deliver=deliver, confchg=confchg) as h:
        h.join(b"demo")
        h.mcast_joined(cpg.Guarantee.AGREED, b"hello")
        h.dispatch(cpg.DispatchFlags.ONE)     # our own confchg (JOIN)
        h.dispatch(cpg.DispatchFlags.ONE)     # our own message, in agreed order

Example (trio)::

    async with await cpg.AsyncCpg.initialize() as h:
        await h.join(b"demo")
        await h.mcast_joined(cpg.Guarantee.AGREED, b"hello")
        async for event in h.events():          # ConfchgEvent / DeliverEvent / ...
            print(event)

Group names are opaque byte strings of at most 128 bytes (``str`` is UTF-8 encoded, without
a NUL: Pacemaker-style names that count a trailing NUL must be passed as bytes).
Errors are :class:`~corosync._common.CsError` carrying the ``cs_error_t`` (CS_ERR_EXIST when
this process already joined, CS_ERR_TRY_AGAIN while the executive is busy, ...).
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Final, Union

from corosync._common import (AsyncServiceHandle, CsError, CsErrorCode, DispatchFlags,
                              HandleCore, Pause, Plan, Request, SendOnly, ServiceHandle, check,
                              decode_reply)
from corosync.lib.ipc import AsyncIpcClient, IpcClient, IpcError, pack_request
from corosync.lib.proto import cpg as proto
from corosync.lib.proto.common import CPG_MAX_NAME_LENGTH, RingId
from corosync.lib.proto.cpg import (Address, ConfchgEvent, DeliverEvent, Guarantee,
                                    IterationDescription, IterationType, ModelFlags, Reason,
                                    TotemConfchgEvent)

__all__ = [
    "Cpg", "AsyncCpg", "Address", "ConfchgEvent", "DeliverEvent", "TotemConfchgEvent",
    "IterationDescription", "Guarantee", "Reason", "IterationType", "ModelFlags",
    "FlowControlState", "RingId", "DispatchFlags", "CsError", "CsErrorCode", "Event",
    "DeliverFn", "ConfchgFn", "TotemConfchgFn", "MAX_ATOMIC_MSGSIZE",
]


SERVICE: Final = "cpg"
MAX_ATOMIC_MSGSIZE: Final = proto.MAX_ATOMIC_MSGSIZE
#: libcpg retries a PARTIAL_MCAST fragment refused with CS_ERR_TRY_AGAIN this often, 10 ms apart.
_FRAGMENT_RETRIES: Final = 100
_FRAGMENT_RETRY_PAUSE: Final = 0.01
#: JOIN answered CS_ERR_BUSY (our previous leave still in flight) is retried after this pause.
_JOIN_BUSY_PAUSE: Final = 0.001


class FlowControlState(enum.IntEnum):
    DISABLED = 0
    ENABLED = 1


Event = Union[ConfchgEvent, DeliverEvent, TotemConfchgEvent]
DeliverFn = Callable[[Any, bytes, int, int, bytes], None]
ConfchgFn = Callable[[Any, bytes, list[Address], list[Address], list[Address]], None]
TotemConfchgFn = Callable[[Any, RingId, list[int]], None]


def _group(group: bytes | str) -> bytes:
    raw = group.encode("utf-8", "surrogateescape") if isinstance(group, str) else bytes(group)
    if len(raw) > CPG_MAX_NAME_LENGTH:
        raise CsError(CsErrorCode.ERR_NAME_TOO_LONG,
                      f"group name of {len(raw)} bytes (max {CPG_MAX_NAME_LENGTH})")
    return raw


def _request(req: Any) -> Request:
    return Request(pack_request(req.ID, req.encode()))


class _CpgProtocol(HandleCore):
    """Call plans and event decoding shared by :class:`Cpg` and :class:`AsyncCpg`."""

    SERVICE = SERVICE

    def __init__(self, client: Any, deliver: DeliverFn | None, confchg: ConfchgFn | None,
                 totem_confchg: TotemConfchgFn | None, flags: ModelFlags, context: Any) -> None:
        super().__init__(client, context)
        self.deliver_fn = deliver
        self.confchg_fn = confchg
        self.totem_confchg_fn = totem_confchg
        self.flags = ModelFlags(flags)
        self._assemblies: dict[tuple[int, int], tuple[int, bytearray]] = {}

    # -- plans --------------------------------------------------------------------------------

    def _plan_join(self, group: bytes | str) -> Plan[None]:
        req = proto.JoinRequest(_group(group), os.getpid(), int(self.flags))
        while True:
            reply = yield _request(req)
            if reply is not None and reply.error == CsErrorCode.ERR_BUSY:
                yield Pause(_JOIN_BUSY_PAUSE)
                continue
            check(reply, "join")
            return

    @staticmethod
    def _plan_leave(group: bytes | str) -> Plan[None]:
        check((yield _request(proto.LeaveRequest(_group(group), os.getpid()))), "leave")

    @staticmethod
    def _plan_mcast(guarantee: Guarantee, buffers: tuple[bytes, ...]) -> Plan[None]:
        message = b"".join(buffers)
        if len(message) <= MAX_ATOMIC_MSGSIZE:
            # no response: the executive never answers MCAST (libcpg raises fc to 2 for it)
            yield SendOnly(proto.mcast_message(int(guarantee), message), fc_enable_max=2)
            return
        for start in range(0, len(message), MAX_ATOMIC_MSGSIZE):
            fragment = message[start:start + MAX_ATOMIC_MSGSIZE]
            if start == 0:
                ptype = proto.PartialType.FIRST
            elif start + len(fragment) == len(message):
                ptype = proto.PartialType.LAST
            else:
                ptype = proto.PartialType.CONTINUED
            raw = proto.partial_message(int(guarantee), len(message), ptype, fragment)
            for _attempt in range(_FRAGMENT_RETRIES + 1):
                reply = yield Request(raw)
                if reply is None or reply.error != CsErrorCode.ERR_TRY_AGAIN:
                    break
                yield Pause(_FRAGMENT_RETRY_PAUSE)
            check(reply, "mcast_joined (fragment)")

    @staticmethod
    def _plan_membership(group: bytes | str) -> Plan[list[Address]]:
        reply = check((yield _request(proto.MembershipRequest(_group(group)))), "membership")
        return list(decode_reply(proto.MembershipResponse, reply, "membership").members)

    @staticmethod
    def _plan_local_get() -> Plan[int]:
        reply = check((yield Request(pack_request(proto.ReqId.LOCAL_GET))), "local_get")
        return decode_reply(proto.LocalGetResponse, reply, "local_get").local_nodeid  # type: ignore

    @staticmethod
    def _plan_iter_init(itype: IterationType, group: bytes | str | None) -> Plan[int]:
        if itype == IterationType.ONE_GROUP and group is None:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, "ONE_GROUP needs a group")
        req = proto.IterationInitializeRequest(int(itype), _group(group or b""))
        reply = check((yield _request(req)), "iteration_initialize")
        return decode_reply(proto.IterationInitializeResponse, reply,  # type: ignore
                       "iteration_initialize").iteration_handle

    @staticmethod
    def _plan_iter_next(handle: int) -> Plan[IterationDescription | None]:
        reply = yield _request(proto.IterationNextRequest(handle))
        if reply is not None and reply.error == CsErrorCode.ERR_NO_SECTIONS:
            return None
        return decode_reply(IterationDescription, check(reply, "iteration_next"),  # type: ignore
                       "iteration_next")

    @staticmethod
    def _plan_iter_finalize(handle: int) -> Plan[None]:
        check((yield _request(proto.IterationFinalizeRequest(handle))), "iteration_finalize")

    @staticmethod
    def _plan_finalize() -> Plan[None]:
        check((yield Request(pack_request(proto.ReqId.FINALIZE))), "finalize")

    # -- events -------------------------------------------------------------------------------

    def _decode_event(self, msg_id: int, payload: bytes) -> Event | None:
        """One event, partial deliveries reassembled; None while a message is incomplete.
        Unknown ids (the flow-control ids 6/8 too) and malformed events raise: the handle
        drops and counts them."""
        cls = proto.EVENTS.get(msg_id)
        if cls is None:
            raise ValueError(f"unknown cpg event id {msg_id}")
        event = cls.decode(payload)
        if isinstance(event, proto.PartialDeliverEvent):
            return self._reassemble(event)
        if isinstance(event, ConfchgEvent):
            for gone in event.left:   # a sender that left cannot finish its message
                self._assemblies.pop((gone.nodeid, gone.pid), None)
        return event  # type: ignore[no-any-return]

    def _reassemble(self, part: proto.PartialDeliverEvent) -> DeliverEvent | None:
        key = (part.nodeid, part.pid)
        if part.type == proto.PartialType.FIRST:
            self._assemblies[key] = (part.msglen, bytearray())
        entry = self._assemblies.get(key)
        if entry is None:
            return None          # CONTINUED/LAST without FIRST: libcpg ignores it too
        msglen, buf = entry
        buf += part.fragment
        if len(buf) > msglen:
            del self._assemblies[key]
            raise ValueError(f"oversized partial message from {key[0]}/{key[1]}")
        if part.type != proto.PartialType.LAST:
            return None
        del self._assemblies[key]
        return DeliverEvent(part.group, part.nodeid, part.pid, bytes(buf))

    def _callback(self, event: Event) -> None:
        if isinstance(event, DeliverEvent):
            if self.deliver_fn is not None:
                self.deliver_fn(self, event.group, event.nodeid, event.pid, event.message)
        elif isinstance(event, ConfchgEvent):
            if self.confchg_fn is not None:
                self.confchg_fn(self, event.group, list(event.members), list(event.left),
                                list(event.joined))
        elif self.totem_confchg_fn is not None:
            self.totem_confchg_fn(self, event.ring_id, list(event.members))

    def _goodbye(self) -> Plan[None]:
        """libcpg sends FINALIZE before disconnecting."""
        return self._plan_finalize()

    # -- local state --------------------------------------------------------------------------

    @staticmethod
    def max_atomic_msgsize() -> int:
        """Largest message sent in one piece (larger ones are fragmented transparently)."""
        return MAX_ATOMIC_MSGSIZE

    @staticmethod
    def flow_control_state_get() -> FlowControlState:
        """Always DISABLED, as in libcpg 3.x (flow control is the IPC layer's business)."""
        return FlowControlState.DISABLED


class Cpg(_CpgProtocol, ServiceHandle):
    """A blocking CPG handle (libcpg's ``cpg_handle_t``).  Use as a context manager."""

    def __init__(self, client: IpcClient, deliver: DeliverFn | None = None,
                 confchg: ConfchgFn | None = None, totem_confchg: TotemConfchgFn | None = None,
                 flags: ModelFlags = ModelFlags.NONE, context: Any = None) -> None:
        super().__init__(client, deliver, confchg, totem_confchg, flags, context)

    @classmethod
    def model_initialize(cls, *, deliver: DeliverFn | None = None,
                         confchg: ConfchgFn | None = None,
                         totem_confchg: TotemConfchgFn | None = None,
                         flags: ModelFlags = ModelFlags.NONE, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "Cpg":
        """Connect (no request is sent).  ``flags`` DELIVER_INITIAL_TOTEM_CONF asks for one
        totem confchg right after our own join."""
        return cls(cls._connect(ipc_dir), deliver, confchg, totem_confchg, flags, context)

    @classmethod
    def initialize(cls, deliver: DeliverFn | None = None, confchg: ConfchgFn | None = None, *,
                   context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Cpg":
        return cls.model_initialize(deliver=deliver, confchg=confchg, context=context,
                                    ipc_dir=ipc_dir)

    def join(self, group: bytes | str) -> None:
        """Join ``group`` (one group per handle).  Effective when our own confchg arrives."""
        self._run(self._plan_join(group))

    def leave(self, group: bytes | str) -> None:
        self._run(self._plan_leave(group))

    def mcast_joined(self, guarantee: Guarantee, *buffers: bytes) -> None:
        """Multicast the concatenation of ``buffers`` to the joined group.  CS_ERR_TRY_AGAIN
        means the executive applies flow control: retry later."""
        self._run(self._plan_mcast(guarantee, buffers))

    def membership_get(self, group: bytes | str) -> list[Address]:
        """Current processes of ``group`` (sorted by node id, then pid)."""
        return self._run(self._plan_membership(group))

    def local_get(self) -> int:
        """This node's id."""
        return self._run(self._plan_local_get())

    def iteration_initialize(self, iteration_type: IterationType = IterationType.ALL,
                             group: bytes | str | None = None) -> int:
        """Start an executive-side iteration; returns its handle."""
        return self._run(self._plan_iter_init(IterationType(iteration_type), group))

    def iteration_next(self, iteration_handle: int) -> IterationDescription | None:
        """The next entry, None at the end (CS_ERR_NO_SECTIONS)."""
        return self._run(self._plan_iter_next(iteration_handle))

    def iteration_finalize(self, iteration_handle: int) -> None:
        self._run(self._plan_iter_finalize(iteration_handle))

    def iteration(self, iteration_type: IterationType = IterationType.ALL,
                  group: bytes | str | None = None) -> Iterator[IterationDescription]:
        """Groups and members known to the executive (NAME_ONLY: one entry per group with
        nodeid = pid = 0; ONE_GROUP: the members of ``group``), finalized when the generator
        ends or is closed."""
        return self._iterate(self._plan_iter_init(IterationType(iteration_type), group),
                             self._plan_iter_next, self._plan_iter_finalize)

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event without running callbacks (None after ``timeout`` seconds)."""
        while not self._finalized:
            try:
                raw = self._client.recv_event(timeout)
            except IpcError as exc:
                raise CsError(int(exc.cs_error), str(exc)) from None
            if raw is None:
                return None
            event = self._accept(raw)
            if event is not None:
                return event  # type: ignore[no-any-return]
        return None

    def __enter__(self) -> "Cpg":
        return self


class AsyncCpg(_CpgProtocol, AsyncServiceHandle):
    """The trio flavour of :class:`Cpg`; events from :meth:`events`."""

    def __init__(self, client: AsyncIpcClient, deliver: DeliverFn | None = None,
                 confchg: ConfchgFn | None = None, totem_confchg: TotemConfchgFn | None = None,
                 flags: ModelFlags = ModelFlags.NONE, context: Any = None) -> None:
        super().__init__(client, deliver, confchg, totem_confchg, flags, context)

    @classmethod
    async def model_initialize(cls, *, deliver: DeliverFn | None = None,
                               confchg: ConfchgFn | None = None,
                               totem_confchg: TotemConfchgFn | None = None,
                               flags: ModelFlags = ModelFlags.NONE, context: Any = None,
                               ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncCpg":
        return cls(await cls._connect(ipc_dir), deliver, confchg, totem_confchg, flags,
                   context)

    @classmethod
    async def initialize(cls, deliver: DeliverFn | None = None,
                         confchg: ConfchgFn | None = None, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncCpg":
        return await cls.model_initialize(deliver=deliver, confchg=confchg, context=context,
                                          ipc_dir=ipc_dir)

    async def join(self, group: bytes | str) -> None:
        await self._run(self._plan_join(group))

    async def leave(self, group: bytes | str) -> None:
        await self._run(self._plan_leave(group))

    async def mcast_joined(self, guarantee: Guarantee, *buffers: bytes) -> None:
        await self._run(self._plan_mcast(guarantee, buffers))

    async def membership_get(self, group: bytes | str) -> list[Address]:
        return await self._run(self._plan_membership(group))

    async def local_get(self) -> int:
        return await self._run(self._plan_local_get())

    async def iteration_initialize(self, iteration_type: IterationType = IterationType.ALL,
                                   group: bytes | str | None = None) -> int:
        return await self._run(self._plan_iter_init(IterationType(iteration_type), group))

    async def iteration_next(self, iteration_handle: int) -> IterationDescription | None:
        return await self._run(self._plan_iter_next(iteration_handle))

    async def iteration_finalize(self, iteration_handle: int) -> None:
        await self._run(self._plan_iter_finalize(iteration_handle))

    def iteration(self, iteration_type: IterationType = IterationType.ALL,
                  group: bytes | str | None = None
                  ) -> AsyncGenerator[IterationDescription, None]:
        return self._iterate(self._plan_iter_init(IterationType(iteration_type), group),
                             self._plan_iter_next, self._plan_iter_finalize)

    async def finalize(self) -> None:  # type: ignore[override]
        """Send FINALIZE (as libcpg does) and disconnect; what ``async with`` does on exit.
        Safe to call twice."""
        await self.aclose()

    async def __aenter__(self) -> "AsyncCpg":
        return self
