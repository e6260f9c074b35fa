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

from corosync._common import (AsyncServiceHandle, CsError, CsErrorCode, DispatchFlags,
                              HandleCore, ServiceHandle, TrackFlags, decode_reply, encode_body,
                              event_decoder)
from corosync.lib.proto import votequorum as proto
from corosync.lib.proto.votequorum import (INFO_ALLOW_DOWNSCALE, INFO_AUTO_TIE_BREAKER,
                                           INFO_LAST_MAN_STANDING, INFO_QDEVICE_ALIVE,
                                           INFO_QDEVICE_CAST_VOTE, INFO_QDEVICE_MASTER_WINS,
                                           INFO_QDEVICE_REGISTERED, INFO_QUORATE, INFO_TWONODE,
                                           INFO_WAIT_FOR_ALL, NODESTATE_DEAD, NODESTATE_LEAVING,
                                           NODESTATE_MEMBER, QDEVICE_NODEID, NodeInfo)

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


QuorumFn = Callable[[QuorumNotification], None]
NodelistFn = Callable[[NodelistNotification], None]
ExpectedVotesFn = Callable[[ExpectedVotesNotification], None]


class _VqProtocol(HandleCore):
    """Events and request bodies both votequorum handles share."""

    SERVICE = "votequorum"
    EVENT_DECODERS = {
        proto.EV_QUORUM_NOTIFICATION: event_decoder(
            proto.QuorumNotification, QuorumNotification, "context", "quorate", "nodes"),
        proto.EV_NODELIST_NOTIFICATION: event_decoder(
            proto.NodelistNotification, NodelistNotification,
            "context", "ring_nodeid", "ring_seq", "nodes"),
        proto.EV_EXPECTEDVOTES_NOTIFICATION: event_decoder(
            proto.ExpectedVotesNotification, ExpectedVotesNotification,
            "context", "expected_votes"),
    }
    EVENT_CALLBACKS = {QuorumNotification: "quorum_fn", NodelistNotification: "nodelist_fn",
                       ExpectedVotesNotification: "expected_fn"}

    quorum_fn: QuorumFn | None
    nodelist_fn: NodelistFn | None
    expected_fn: ExpectedVotesFn | None

    def _setup(self, quorum: QuorumFn | None, nodelist: NodelistFn | None,
               expected_votes: ExpectedVotesFn | None) -> None:
        self.quorum_fn, self.nodelist_fn, self.expected_fn = quorum, nodelist, expected_votes

    # The qdevice request bodies; a name of 255 bytes or more is CS_ERR_INVALID_PARAM before
    # anything is sent (libvotequorum checks the length the same way).
    @staticmethod
    def _qdevice_name(name: str) -> bytes:
        return encode_body(proto.enc_qdevice_name, name)

    @staticmethod
    def _qdevice_update(oldname: str, newname: str) -> bytes:
        return encode_body(proto.enc_qdevice_update, oldname, newname)

    @staticmethod
    def _qdevice_poll(name: str, cast_vote: bool, ring_nodeid: int, ring_seq: int) -> bytes:
        return encode_body(proto.enc_qdevice_poll, name, cast_vote, ring_nodeid, ring_seq)

    @staticmethod
    def _qdevice_master_wins(name: str, allow: bool) -> bytes:
        return encode_body(proto.enc_qdevice_master_wins, name, allow)


class Votequorum(_VqProtocol, ServiceHandle):
    """A blocking votequorum handle (``votequorum_handle_t``)."""

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self._setup(None, None, None)

    @classmethod
    def initialize(cls, quorum: QuorumFn | None = None, nodelist: NodelistFn | None = None,
                   expected_votes: ExpectedVotesFn | None = None, *, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Votequorum":
        """Connect (no request is sent, as with ``votequorum_initialize``)."""
        handle = cls(cls._connect(ipc_dir), context)
        handle._setup(quorum, nodelist, expected_votes)
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
        """Start notifications (CURRENT: one of each right away; CHANGES: on every change);
        ``context`` comes back in every notification."""
        self._call(proto.REQ_TRACKSTART, proto.enc_trackstart(context, int(flags)),
                   "votequorum trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "votequorum trackstop")

    def qdevice_register(self, name: str) -> None:
        """Register this node's quorum device (CS_ERR_EXIST: another name is registered)."""
        self._call(proto.REQ_QDEVICE_REGISTER, self._qdevice_name(name),
                   "votequorum qdevice_register")

    def qdevice_unregister(self, name: str) -> None:
        self._call(proto.REQ_QDEVICE_UNREGISTER, self._qdevice_name(name),
                   "votequorum qdevice_unregister")

    def qdevice_update(self, oldname: str, newname: str) -> None:
        self._call(proto.REQ_QDEVICE_UPDATE, self._qdevice_update(oldname, newname),
                   "votequorum qdevice_update")

    def qdevice_poll(self, name: str, cast_vote: bool, ring_nodeid: int, ring_seq: int) -> None:
        """Keep the device alive and say whether it votes for this partition; the ring id
        must be the current one (CS_ERR_MESSAGE_ERROR otherwise)."""
        self._call(proto.REQ_QDEVICE_POLL,
                   self._qdevice_poll(name, cast_vote, ring_nodeid, ring_seq),
                   "votequorum qdevice_poll")

    def qdevice_master_wins(self, name: str, allow: bool) -> None:
        self._call(proto.REQ_QDEVICE_MASTER_WINS, self._qdevice_master_wins(name, allow),
                   "votequorum qdevice_master_wins")


class AsyncVotequorum(_VqProtocol, AsyncServiceHandle):
    """The trio flavour of :class:`Votequorum`: the same calls awaited, notifications from
    :meth:`notifications` (callbacks given at initialization run too)."""

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self._setup(None, None, None)

    @classmethod
    async def initialize(cls, quorum: QuorumFn | None = None,
                         nodelist: NodelistFn | None = None,
                         expected_votes: ExpectedVotesFn | None = None, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncVotequorum":
        handle = cls(await cls._connect(ipc_dir), context)
        handle._setup(quorum, nodelist, expected_votes)
        return handle

    async def getinfo(self, nodeid: int = QDEVICE_NODEID) -> NodeInfo:
        reply = await self._call(proto.REQ_GETINFO, proto.enc_getinfo(nodeid),
                                 "votequorum getinfo")
        return decode_reply(NodeInfo, reply, "votequorum getinfo")  # type: ignore[no-any-return]

    async def setexpected(self, expected_votes: int) -> None:
        await self._call(proto.REQ_SETEXPECTED, proto.enc_setexpected(expected_votes),
                         "votequorum setexpected")

    async def setvotes(self, nodeid: int, votes: int) -> None:
        await self._call(proto.REQ_SETVOTES, proto.enc_setvotes(votes, nodeid),
                         "votequorum setvotes")

    async def trackstart(self, context: int = 0,
                         flags: TrackFlags | int = TrackFlags.CHANGES) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.enc_trackstart(context, int(flags)),
                         "votequorum trackstart")

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP, b"", "votequorum trackstop")

    async def qdevice_register(self, name: str) -> None:
        await self._call(proto.REQ_QDEVICE_REGISTER, self._qdevice_name(name),
                         "votequorum qdevice_register")

    async def qdevice_unregister(self, name: str) -> None:
        await self._call(proto.REQ_QDEVICE_UNREGISTER, self._qdevice_name(name),
                         "votequorum qdevice_unregister")

    async def qdevice_update(self, oldname: str, newname: str) -> None:
        await self._call(proto.REQ_QDEVICE_UPDATE, self._qdevice_update(oldname, newname),
                         "votequorum qdevice_update")

    async def qdevice_poll(self, name: str, cast_vote: bool, ring_nodeid: int,
                           ring_seq: int) -> None:
        await self._call(proto.REQ_QDEVICE_POLL,
                         self._qdevice_poll(name, cast_vote, ring_nodeid, ring_seq),
                         "votequorum qdevice_poll")

    async def qdevice_master_wins(self, name: str, allow: bool) -> None:
        await self._call(proto.REQ_QDEVICE_MASTER_WINS, self._qdevice_master_wins(name, allow),
                         "votequorum qdevice_master_wins")

    def notifications(self) -> AsyncIterator[Any]:
        """QuorumNotification / NodelistNotification / ExpectedVotesNotification objects."""
        return self.events()
