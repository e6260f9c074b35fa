"""The few votequorum calls a qdevice makes, over lib/ipc: GETINFO (own node id), TRACKSTART
(node list + quorum notifications), QDEVICE_REGISTER / UNREGISTER / POLL / MASTER_WINS.

Every byte layout comes from :mod:`corosync.lib.proto.votequorum` (shared with the
executive's service and the client library); this module only adds what the qdevice
daemon wants on top: one serialised trio connection, errors as :class:`VqError`, and the
notifications converted to the qdevice's own event types (ring ids as the qnetd protocol's
:class:`RingId`, which is what the qdevice sends on).
"""

from __future__ import annotations

from typing import Optional, Union

import trio
from attrs import frozen

from corosync.exec.qnetd.protocol import RingId
from corosync.lib.ipc import AsyncIpcClient, CsError, IpcError
from corosync.lib.proto import votequorum as vp
from corosync.lib.proto.common import ProtoError

SERVICE = "votequorum"
QDEVICE_NAME = "Qdevice"  # what corosync-qdevice registers (quorumtool shows it)
TRACK_CURRENT, TRACK_CHANGES = 1, 2  # cs_track flags
REQUEST_TIMEOUT = 10.0  # seconds; corosync answers at once, a stall means it is gone


class VqError(Exception):
    """A votequorum call failed: ``code`` is the cs_error_t (CS_OK is 1)."""

    def __init__(self, call: str, code: int) -> None:
        name = CsError(code).c_name if code in CsError._value2member_map_ else str(code)
        super().__init__(f"votequorum {call}: {name}")
        self.code = code


@frozen
class NodelistEvent:
    ring_id: RingId
    nodes: tuple[int, ...]


@frozen
class QuorumEvent:
    quorate: bool
    nodes: tuple[tuple[int, int], ...]  # (node id, state), votequorum's order


@frozen
class ExpectedVotesEvent:
    expected_votes: int


VqEvent = Union[NodelistEvent, QuorumEvent, ExpectedVotesEvent]


def decode_event(msg_id: int, body: bytes) -> Optional[VqEvent]:
    """A notification body (after the 24-byte header) as a qdevice event; None if the id is
    not a notification or the body is malformed (the caller skips it)."""
    try:
        if msg_id == vp.EV_NODELIST_NOTIFICATION:
            nl = vp.NodelistNotification.decode(body)
            return NodelistEvent(RingId(nl.ring_nodeid, nl.ring_seq), tuple(nl.nodes))
        if msg_id == vp.EV_QUORUM_NOTIFICATION:
            qn = vp.QuorumNotification.decode(body)
            return QuorumEvent(qn.quorate, tuple(qn.nodes))
        if msg_id == vp.EV_EXPECTEDVOTES_NOTIFICATION:
            return ExpectedVotesEvent(vp.ExpectedVotesNotification.decode(body).expected_votes)
    except ProtoError:
        return None
    return None


class Votequorum:
    """One votequorum connection; requests are serialised (one outstanding at a time)."""

    def __init__(self, client: AsyncIpcClient) -> None:
        self.client = client
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, **kwargs: object) -> "Votequorum":
        return cls(await AsyncIpcClient.connect(SERVICE, **kwargs))

    async def _call(self, what: str, msg_id: int, payload: bytes) -> bytes:
        async with self._lock:
            _rid, err, body = await self.client.request(msg_id, payload,
                                                        timeout=REQUEST_TIMEOUT)
        if err != CsError.OK:
            raise VqError(what, err)
        return body

    async def info(self) -> vp.NodeInfo:
        """GETINFO for node id 0 (= this node): own id, expected votes, …"""
        body = await self._call("getinfo", vp.REQ_GETINFO, vp.enc_getinfo(0))
        try:
            return vp.NodeInfo.decode(body)
        except ProtoError:
            raise VqError("getinfo", CsError.ERR_MESSAGE_ERROR) from None

    async def this_node_id(self) -> int:
        return (await self.info()).nodeid

    async def trackstart(self) -> None:
        """CS_TRACK_CHANGES, as the stock qdevice asks (corosync sends the current node
        list and quorum at once for it too)."""
        await self._call("trackstart", vp.REQ_TRACKSTART, vp.enc_trackstart(0, TRACK_CHANGES))

    async def register(self, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_register", vp.REQ_QDEVICE_REGISTER,
                         vp.enc_qdevice_name(name))

    async def unregister(self, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_unregister", vp.REQ_QDEVICE_UNREGISTER,
                         vp.enc_qdevice_name(name))

    async def poll(self, cast_vote: bool, ring: RingId, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_poll", vp.REQ_QDEVICE_POLL,
                         vp.enc_qdevice_poll(name, cast_vote, ring.node_id, ring.seq))

    async def master_wins(self, allow: bool, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_master_wins", vp.REQ_QDEVICE_MASTER_WINS,
                         vp.enc_qdevice_master_wins(name, allow))

    async def next_event(self) -> Optional[VqEvent]:
        """Wait for the next notification; raises IpcError when corosync goes away."""
        while True:
            ev = await self.client.recv_event(None)
            if ev is None:
                raise IpcError(104, "votequorum: connection closed")
            msg_id, _err, body = ev
            decoded = decode_event(msg_id, bytes(body))
            if decoded is not None:
                return decoded

    def close(self) -> None:
        self.client.close()
