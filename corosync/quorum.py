"""corosync's quorum client (libquorum): is this partition quorate, and who is in it?

* :class:`Quorum` — blocking; notifications run the callbacks inside :meth:`Quorum.dispatch`
  and :meth:`Quorum.fileno` is the descriptor to poll.
* :class:`AsyncQuorum` — the same calls as trio coroutines; notifications are an async
  iterator.

Example::

    from corosync import quorum

    with quorum.Quorum.initialize(notify=print) as q:
        print(q.quorum_type, q.getquorate())
        q.trackstart(quorum.TrackFlags.CURRENT)
        q.dispatch(quorum.DispatchFlags.ONE)   # prints one QuorumNotification

Model V0 (the default, as ``quorum_initialize``) delivers :class:`QuorumNotification` with
the ring *sequence* only; model V1 (``quorum_model_initialize``) adds the ring id's node id
and :class:`NodelistNotification` (members, joined, left) after every membership change.

The small handle classes at the bottom of this module (:class:`ServiceHandle`,
:class:`AsyncServiceHandle`) are shared by :mod:`corosync.votequorum` and :mod:`corosync.cfg`:
all three libraries are "one request, one response, plus events" over one connection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from attrs import frozen

from corosync._common import (CsError, CsErrorCode, DispatchFlags, RateLimitedLog, Reply,
                              Request, TrackFlags, check, run_async, run_blocking)
from corosync.lib.ipc import AsyncIpcClient, IpcClient, IpcError, pack_request
from corosync.lib.proto import quorum as proto
from corosync.lib.proto.common import ProtoError

__all__ = ["Quorum", "AsyncQuorum", "QuorumNotification", "NodelistNotification",
           "QUORUM_FREE", "QUORUM_SET", "MODEL_V0", "MODEL_V1", "TrackFlags", "DispatchFlags",
           "CsError", "CsErrorCode", "ServiceHandle", "AsyncServiceHandle"]

log = logging.getLogger("corosync.quorum")
_bad_input = RateLimitedLog(log)

QUORUM_FREE: Final = proto.QUORUM_FREE
QUORUM_SET: Final = proto.QUORUM_SET
MODEL_V0: Final = proto.MODEL_V0
MODEL_V1: Final = proto.MODEL_V1


# ------------------------------------------------------------------------------------------
# Shared handle machinery
# ------------------------------------------------------------------------------------------
EventDecoder = Callable[[int, bytes], Any]


class ServiceHandle:
    """A blocking connection to one corosync service: requests, events, dispatch."""

    SERVICE: str = ""

    def __init__(self, client: IpcClient, context: Any = None) -> None:
        self._client = client
        self._finalized = False
        self.context = context

    @classmethod
    def _connect(cls, ipc_dir: str | os.PathLike[str] | None) -> IpcClient:
        try:
            return IpcClient.connect(cls.SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), str(exc)) from None

    def _call(self, msg_id: int, body: bytes = b"", what: str = "") -> Reply:
        """One request; raises CsError unless the response says CS_OK."""
        return check(self._call_raw(msg_id, body), what or f"{self.SERVICE} request {msg_id}")

    def _call_raw(self, msg_id: int, body: bytes = b"") -> Reply:
        if self._finalized:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "handle finalized")

        def plan():  # type: ignore[no-untyped-def]
            reply = yield Request(pack_request(msg_id, body))
            return reply
        return run_blocking(self._client, plan())  # type: ignore[no-any-return]

    def _event(self, msg_id: int, payload: bytes) -> Any:
        """Decode and deliver one event; subclasses override (return None to skip)."""
        return None

    def fileno(self) -> int:
        """The descriptor that becomes readable when events are pending."""
        return self._client.fileno()

    def dispatch(self, flags: DispatchFlags = DispatchFlags.ALL) -> int:
        """Run callbacks for pending events (same flag meanings as libquorum's
        ``quorum_dispatch``); returns the number of events read."""
        count = 0
        wait: float | None = None if flags in (DispatchFlags.ONE, DispatchFlags.BLOCKING) else 0.0
        while not self._finalized:
            try:
                event = self._client.recv_event(wait)
            except IpcError as exc:
                raise CsError(int(exc.cs_error), str(exc)) from None
            if event is None:
                break
            count += 1
            msg_id, _error, payload = event
            try:
                self._event(msg_id, payload)
            except (ProtoError, ValueError) as exc:
                _bad_input.warning("event", "%s: dropped malformed event %d: %s",
                                   self.SERVICE, msg_id, exc)
            if flags in (DispatchFlags.ONE, DispatchFlags.ONE_NONBLOCKING):
                break
        return count

    def context_get(self) -> Any:
        return self.context

    def context_set(self, context: Any) -> None:
        self.context = context

    def finalize(self) -> None:
        """Disconnect (the C libraries send no request for this).  Safe to call twice."""
        self._finalized = True
        self._client.close()

    close = finalize

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()


class AsyncServiceHandle:
    """The trio flavour of :class:`ServiceHandle`."""

    SERVICE: str = ""

    def __init__(self, client: AsyncIpcClient, context: Any = None) -> None:
        self._client = client
        self._finalized = False
        self.context = context

    @classmethod
    async def _connect(cls, ipc_dir: str | os.PathLike[str] | None) -> AsyncIpcClient:
        try:
            return await AsyncIpcClient.connect(cls.SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), str(exc)) from None

    async def _call_raw(self, msg_id: int, body: bytes = b"") -> Reply:
        if self._finalized:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "handle finalized")

        def plan():  # type: ignore[no-untyped-def]
            reply = yield Request(pack_request(msg_id, body))
            return reply
        return await run_async(self._client, plan())  # type: ignore[no-any-return]

    async def _call(self, msg_id: int, body: bytes = b"", what: str = "") -> Reply:
        return check(await self._call_raw(msg_id, body), what or f"{self.SERVICE} request {msg_id}")

    def _event(self, msg_id: int, payload: bytes) -> Any:
        return None

    def fileno(self) -> int:
        return self._client.fileno()

    async def events(self) -> AsyncIterator[Any]:
        """Every decoded event (callbacks run too), until finalize or a lost link."""
        while not self._finalized:
            try:
                event = await self._client.recv_event(None)
            except IpcError as exc:
                if self._finalized:
                    return
                raise CsError(int(exc.cs_error), str(exc)) from None
            if event is None:
                continue
            try:
                decoded = self._event(event[0], event[2])
            except (ProtoError, ValueError) as exc:
                _bad_input.warning("event", "%s: dropped malformed event %d: %s",
                                   self.SERVICE, event[0], exc)
                continue
            if decoded is not None:
                yield decoded

    def finalize(self) -> None:
        self._finalized = True
        self._client.close()

    close = finalize

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.finalize()


def decode_reply(cls: Any, reply: Reply, what: str) -> Any:
    try:
        return cls.decode(reply.payload)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, f"{what}: {exc}") from None


# ------------------------------------------------------------------------------------------
# quorum
# ------------------------------------------------------------------------------------------
@frozen
class QuorumNotification:
    """Quorum state after a change: ``ring_nodeid`` is 0 in model V0 (not sent)."""

    quorate: bool
    ring_seq: int
    view_list: tuple[int, ...]
    ring_nodeid: int = 0


@frozen
class NodelistNotification:
    """V1 only: the membership with the nodes that joined and left since the last one."""

    ring_nodeid: int
    ring_seq: int
    members: tuple[int, ...]
    joined: tuple[int, ...]
    left: tuple[int, ...]


NotifyFn = Callable[[QuorumNotification], None]
NodelistFn = Callable[[NodelistNotification], None]


class _QuorumEvents:
    notify: NotifyFn | None
    nodelist: NodelistFn | None

    def _event(self, msg_id: int, payload: bytes) -> Any:
        out: Any
        if msg_id == proto.EV_NOTIFICATION:
            ev = proto.Notification.decode(payload)
            out = QuorumNotification(ev.quorate, ev.ring_seq, ev.view_list)
            if self.notify is not None:
                self.notify(out)
        elif msg_id == proto.EV_V1_QUORUM_NOTIFICATION:
            v1 = proto.V1QuorumNotification.decode(payload)
            out = QuorumNotification(v1.quorate, v1.ring_seq, v1.view_list, v1.ring_nodeid)
            if self.notify is not None:
                self.notify(out)
        elif msg_id == proto.EV_V1_NODELIST_NOTIFICATION:
            nl = proto.V1NodelistNotification.decode(payload)
            out = NodelistNotification(nl.ring_nodeid, nl.ring_seq, nl.members, nl.joined,
                                       nl.left)
            if self.nodelist is not None:
                self.nodelist(out)
        else:
            raise ValueError(f"unknown quorum event id {msg_id}")
        return out


def _model_request(model: int) -> tuple[int, bytes]:
    if model == MODEL_V0:
        return proto.REQ_GETTYPE, b""
    if model == MODEL_V1:
        return proto.REQ_MODEL_GETTYPE, proto.encode_u32(model)
    raise CsError(CsErrorCode.ERR_INVALID_PARAM, f"unknown quorum model {model}")


class Quorum(_QuorumEvents, ServiceHandle):
    """A blocking quorum handle (``quorum_handle_t``)."""

    SERVICE = "quorum"

    def __init__(self, client: IpcClient, context: Any = None) -> None:
        super().__init__(client, context)
        self.quorum_type = QUORUM_FREE
        self.notify = None
        self.nodelist = None

    @classmethod
    def initialize(cls, notify: NotifyFn | None = None, nodelist: NodelistFn | None = None, *,
                   model: int = MODEL_V0, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Quorum":
        """Connect and ask the quorum type (V0: GETTYPE, V1: MODEL_GETTYPE)."""
        msg_id, body = _model_request(model)
        handle = cls(cls._connect(ipc_dir), context)
        handle.notify, handle.nodelist = notify, nodelist
        try:
            reply = handle._call(msg_id, body, "quorum initialize")
            handle.quorum_type = proto.decode_u32(reply.payload, "quorum type")
        except (CsError, ProtoError) as exc:
            handle.finalize()
            if isinstance(exc, ProtoError):
                raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None
            raise
        return handle

    def getquorate(self) -> bool:
        reply = self._call(proto.REQ_GETQUORATE, b"", "quorum getquorate")
        try:
            return bool(proto.decode_u32(reply.payload, "getquorate"))
        except ProtoError as exc:
            raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None

    def trackstart(self, flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        self._call(proto.REQ_TRACKSTART, proto.encode_u32(int(flags)), "quorum trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "quorum trackstop")


class AsyncQuorum(_QuorumEvents, AsyncServiceHandle):
    """The trio flavour of :class:`Quorum`; iterate :meth:`notifications`."""

    SERVICE = "quorum"

    def __init__(self, client: AsyncIpcClient, context: Any = None) -> None:
        super().__init__(client, context)
        self.quorum_type = QUORUM_FREE
        self.notify = None
        self.nodelist = None

    @classmethod
    async def initialize(cls, notify: NotifyFn | None = None, nodelist: NodelistFn | None = None,
                         *, model: int = MODEL_V0, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncQuorum":
        msg_id, body = _model_request(model)
        handle = cls(await cls._connect(ipc_dir), context)
        handle.notify, handle.nodelist = notify, nodelist
        try:
            reply = await handle._call(msg_id, body, "quorum initialize")
            handle.quorum_type = proto.decode_u32(reply.payload, "quorum type")
        except (CsError, ProtoError) as exc:
            handle.finalize()
            if isinstance(exc, ProtoError):
                raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None
            raise
        return handle

    async def getquorate(self) -> bool:
        reply = await self._call(proto.REQ_GETQUORATE, b"", "quorum getquorate")
        try:
            return bool(proto.decode_u32(reply.payload, "getquorate"))
        except ProtoError as exc:
            raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None

    async def trackstart(self, flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.encode_u32(int(flags)), "quorum trackstart")

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP, b"", "quorum trackstop")

    def notifications(self) -> AsyncIterator[Any]:
        """QuorumNotification / NodelistNotification objects as they arrive."""
        return self.events()
