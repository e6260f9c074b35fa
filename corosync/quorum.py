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

The handle plumbing (connect, dispatch, event iteration, finalize) lives in
:mod:`corosync._common` (:class:`ServiceHandle`, :class:`AsyncServiceHandle`, re-exported
here under their historical home); this module adds the quorum calls and events.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from attrs import frozen

from corosync._common import (  # noqa: F401 (decode_reply: re-exported for old importers)
    AsyncServiceHandle, CsError, CsErrorCode, DispatchFlags, HandleCore, Plan, Reply,
    ServiceHandle, TrackFlags, check, decode_reply, event_decoder, single_request)
from corosync.lib.ipc import AsyncIpcClient, IpcClient
from corosync.lib.proto import quorum as proto
from corosync.lib.proto.common import ProtoError

__all__ = ["Quorum", "AsyncQuorum", "QuorumNotification", "NodelistNotification",
           "QUORUM_FREE", "QUORUM_SET", "MODEL_V0", "MODEL_V1", "TrackFlags", "DispatchFlags",
           "CsError", "CsErrorCode", "ServiceHandle", "AsyncServiceHandle"]

QUORUM_FREE: Final = proto.QUORUM_FREE
QUORUM_SET: Final = proto.QUORUM_SET
MODEL_V0: Final = proto.MODEL_V0
MODEL_V1: Final = proto.MODEL_V1


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


def _u32(reply: Reply, what: str) -> int:
    try:
        return proto.decode_u32(reply.payload, what)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None


class _QuorumProtocol(HandleCore):
    """Events and call plans both quorum handles share."""

    SERVICE = "quorum"
    EVENT_DECODERS = {
        proto.EV_NOTIFICATION: event_decoder(
            proto.Notification, QuorumNotification, "quorate", "ring_seq", "view_list"),
        proto.EV_V1_QUORUM_NOTIFICATION: event_decoder(
            proto.V1QuorumNotification, QuorumNotification,
            "quorate", "ring_seq", "view_list", "ring_nodeid"),
        proto.EV_V1_NODELIST_NOTIFICATION: event_decoder(
            proto.V1NodelistNotification, NodelistNotification,
            "ring_nodeid", "ring_seq", "members", "joined", "left"),
    }
    EVENT_CALLBACKS = {QuorumNotification: "notify", NodelistNotification: "nodelist"}

    quorum_type: int
    notify: NotifyFn | None
    nodelist: NodelistFn | None

    def _setup(self, notify: NotifyFn | None, nodelist: NodelistFn | None) -> None:
        self.quorum_type = QUORUM_FREE
        self.notify, self.nodelist = notify, nodelist

    @staticmethod
    def _model_request(model: int) -> tuple[int, bytes]:
        """V0: GETTYPE; V1: MODEL_GETTYPE with the model; both answer the quorum type.
        Checked before connecting, as ``quorum_model_initialize`` does."""
        if model == MODEL_V0:
            return proto.REQ_GETTYPE, b""
        if model == MODEL_V1:
            return proto.REQ_MODEL_GETTYPE, proto.encode_u32(model)
        raise CsError(CsErrorCode.ERR_INVALID_PARAM, f"unknown quorum model {model}")

    def _plan_model(self, model: int) -> Plan[None]:
        reply = check((yield from single_request(*self._model_request(model))),
                      "quorum initialize")
        self.quorum_type = _u32(reply, "quorum type")

    @staticmethod
    def _plan_getquorate() -> Plan[bool]:
        reply = check((yield from single_request(proto.REQ_GETQUORATE)), "quorum getquorate")
        return bool(_u32(reply, "getquorate"))


class Quorum(_QuorumProtocol, ServiceHandle):
    """A blocking quorum handle (``quorum_handle_t``)."""

    def __init__(self, client: IpcClient, context: Any = None) -> None:
        super().__init__(client, context)
        self._setup(None, None)

    @classmethod
    def initialize(cls, notify: NotifyFn | None = None, nodelist: NodelistFn | None = None, *,
                   model: int = MODEL_V0, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Quorum":
        """Connect and ask the quorum type (V0: GETTYPE, V1: MODEL_GETTYPE)."""
        cls._model_request(model)
        handle = cls(cls._connect(ipc_dir), context)
        handle._setup(notify, nodelist)
        handle._start(handle._plan_model(model))
        return handle

    def getquorate(self) -> bool:
        return self._run(self._plan_getquorate())

    def trackstart(self, flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        self._call(proto.REQ_TRACKSTART, proto.encode_u32(int(flags)), "quorum trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "quorum trackstop")


class AsyncQuorum(_QuorumProtocol, AsyncServiceHandle):
    """The trio flavour of :class:`Quorum`; iterate :meth:`notifications`."""

    def __init__(self, client: AsyncIpcClient, context: Any = None) -> None:
        super().__init__(client, context)
        self._setup(None, None)

    @classmethod
    async def initialize(cls, notify: NotifyFn | None = None, nodelist: NodelistFn | None = None,
                         *, model: int = MODEL_V0, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncQuorum":
        cls._model_request(model)
        handle = cls(await cls._connect(ipc_dir), context)
        handle._setup(notify, nodelist)
        await handle._start(handle._plan_model(model))
        return handle

    async def getquorate(self) -> bool:
        return await self._run(self._plan_getquorate())

    async def trackstart(self, flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.encode_u32(int(flags)), "quorum trackstart")

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP, b"", "quorum trackstop")

    def notifications(self) -> AsyncIterator[Any]:
        """QuorumNotification / NodelistNotification objects as they arrive."""
        return self.events()
