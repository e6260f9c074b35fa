"""corosync's votequorum client (libvotequorum): votes, expected votes, quorum device calls.

* :class:`Votequorum` — blocking; :meth:`Votequorum.dispatch` runs the callbacks.
* :class:`AsyncVotequorum` — trio; iterate :meth:`AsyncVotequorum.notifications`.

Example::

    from corosync import votequorum

    with votequorum.Votequorum.initialize() as vq:
        info = vq.getinfo()                 # this node
        print(info.quorum, info.total_votes, bool(info.flags & votequorum.INFO_QUORATE))
        vq.setexpected(3)

Only available when the executive runs ``quorum.provider: corosync_votequorum``
(connecting otherwise fails with ``CS_ERR_LIBRARY``-style errors, as with libvotequorum).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from attrs import frozen

from corosync._common import CsError, CsErrorCode, DispatchFlags, TrackFlags
from corosync.lib.proto import votequorum as proto
from corosync.lib.proto.common import ProtoError
from corosync.lib.proto.votequorum import (INFO_ALLOW_DOWNSCALE, INFO_AUTO_TIE_BREAKER,
                                           INFO_LAST_MAN_STANDING, INFO_QDEVICE_ALIVE,
                                           INFO_QDEVICE_CAST_VOTE, INFO_QDEVICE_MASTER_WINS,
                                           INFO_QDEVICE_REGISTERED, INFO_QUORATE, INFO_TWONODE,
                                           INFO_WAIT_FOR_ALL, NODESTATE_DEAD, NODESTATE_LEAVING,
                                           NODESTATE_MEMBER, QDEVICE_NODEID, NodeInfo)
from corosync.quorum import AsyncServiceHandle, ServiceHandle, decode_reply

__all__ = ["Votequorum", "AsyncVotequorum", "NodeInfo", "QuorumNotification",
           "NodelistNotification", "ExpectedVotesNotification", "TrackFlags", "DispatchFlags",
           "CsError", "CsErrorCode", "QDEVICE_NODEID", "NODESTATE_MEMBER", "NODESTATE_DEAD",
           "NODESTATE_LEAVING", "INFO_TWONODE", "INFO_QUORATE", "INFO_WAIT_FOR_ALL",
           "INFO_LAST_MAN_STANDING", "INFO_AUTO_TIE_BREAKER", "INFO_ALLOW_DOWNSCALE",
           "INFO_QDEVICE_REGISTERED", "INFO_QDEVICE_ALIVE", "INFO_QDEVICE_CAST_VOTE",
           "INFO_QDEVICE_MASTER_WINS"]


@frozen
class QuorumNotification:
    context: int
    quorate: bool
    nodes: tuple[tuple[int, int], ...]   # (nodeid, state); nodeid 0 = the quorum device


@frozen
class NodelistNotification:
    context: int
    ring_nodeid: int
    ring_seq: int
    nodes: tuple[int, ...]


@frozen
class ExpectedVotesNotification:
    context: int
    expected_votes: int


class _VqEvents:
    quorum_fn: Callable[[QuorumNotification], None] | None
    nodelist_fn: Callable[[NodelistNotification], None] | None
    expected_fn: Callable[[ExpectedVotesNotification], None] | None

    def _event(self, msg_id: int, payload: bytes) -> Any:
        out: Any
        if msg_id == proto.EV_QUORUM_NOTIFICATION:
            q = proto.QuorumNotification.decode(payload)
            out = QuorumNotification(q.context, q.quorate, q.nodes)
            if self.quorum_fn is not None:
                self.quorum_fn(out)
        elif msg_id == proto.EV_NODELIST_NOTIFICATION:
            n = proto.NodelistNotification.decode(payload)
            out = NodelistNotification(n.context, n.ring_nodeid, n.ring_seq, n.nodes)
            if self.nodelist_fn is not None:
                self.nodelist_fn(out)
        elif msg_id == proto.EV_EXPECTEDVOTES_NOTIFICATION:
            e = proto.ExpectedVotesNotification.decode(payload)
            out = ExpectedVotesNotification(e.context, e.expected_votes)
            if self.expected_fn is not None:
                self.expected_fn(out)
        else:
            raise ValueError(f"unknown votequorum event id {msg_id}")
        return out


def _encode(fn: Callable[..., bytes], *args: Any) -> bytes:
    try:
        return fn(*args)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_INVALID_PARAM, str(exc)) from None


class Votequorum(_VqEvents, ServiceHandle):
    """A blocking votequorum handle (``votequorum_handle_t``)."""

    SERVICE = "votequorum"

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self.quorum_fn = self.nodelist_fn = self.expected_fn = None

    @classmethod
    def initialize(cls, quorum: Callable[[QuorumNotification], None] | None = None,
                   nodelist: Callable[[NodelistNotification], None] | None = None,
                   expected_votes: Callable[[ExpectedVotesNotification], None] | None = None,
                   *, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Votequorum":
        """Connect (no request is sent, as with ``votequorum_initialize``)."""
        handle = cls(cls._connect(ipc_dir), context)
        handle.quorum_fn, handle.nodelist_fn, handle.expected_fn = quorum, nodelist, expected_votes
        return handle

    def getinfo(self, nodeid: int = QDEVICE_NODEID) -> NodeInfo:
        """Votes and quorum state as seen for ``nodeid`` (0: this node)."""
        reply = self._call(proto.REQ_GETINFO, proto.enc_getinfo(nodeid), "votequorum getinfo")
        return decode_reply(NodeInfo, reply, "votequorum getinfo")  # type: ignore[no-any-return]

    def setexpected(self, expected_votes: int) -> None:
        self._call(proto.REQ_SETEXPECTED, proto.enc_setexpected(expected_votes),
                   "votequorum setexpected")

    def setvotes(self, nodeid: int, votes: int) -> None:
        self._call(proto.REQ_SETVOTES, proto.enc_setvotes(votes, nodeid), "votequorum setvotes")

    def trackstart(self, context: int = 0, flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        self._call(proto.REQ_TRACKSTART, proto.enc_trackstart(context, int(flags)),
                   "votequorum trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "votequorum trackstop")

    def qdevice_register(self, name: str) -> None:
        self._call(proto.REQ_QDEVICE_REGISTER, _encode(proto.enc_qdevice_name, name))

    def qdevice_unregister(self, name: str) -> None:
        self._call(proto.REQ_QDEVICE_UNREGISTER, _encode(proto.enc_qdevice_name, name))

    def qdevice_update(self, oldname: str, newname: str) -> None:
        self._call(proto.REQ_QDEVICE_UPDATE, _encode(proto.enc_qdevice_update, oldname, newname))

    def qdevice_poll(self, name: str, cast_vote: bool, ring_nodeid: int, ring_seq: int) -> None:
        self._call(proto.REQ_QDEVICE_POLL,
                   _encode(proto.enc_qdevice_poll, name, cast_vote, ring_nodeid, ring_seq))

    def qdevice_master_wins(self, name: str, allow: bool) -> None:
        self._call(proto.REQ_QDEVICE_MASTER_WINS,
                   _encode(proto.enc_qdevice_master_wins, name, allow))


class AsyncVotequorum(_VqEvents, AsyncServiceHandle):
    """The trio flavour of :class:`Votequorum`."""

    SERVICE = "votequorum"

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self.quorum_fn = self.nodelist_fn = self.expected_fn = None

    @classmethod
    async def initialize(cls, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncVotequorum":
        return cls(await cls._connect(ipc_dir), context)

    async def getinfo(self, nodeid: int = QDEVICE_NODEID) -> NodeInfo:
        reply = await self._call(proto.REQ_GETINFO, proto.enc_getinfo(nodeid),
                                 "votequorum getinfo")
        return decode_reply(NodeInfo, reply, "votequorum getinfo")  # type: ignore[no-any-return]

    async def setexpected(self, expected_votes: int) -> None:
        await self._call(proto.REQ_SETEXPECTED, proto.enc_setexpected(expected_votes))

    async def setvotes(self, nodeid: int, votes: int) -> None:
        await self._call(proto.REQ_SETVOTES, proto.enc_setvotes(votes, nodeid))

    async def trackstart(self, context: int = 0,
                         flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.enc_trackstart(context, int(flags)))

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP, b"")

    def notifications(self) -> AsyncIterator[Any]:
        return self.events()
