"""The few votequorum calls a qdevice makes (spec/ipc-wire.md §4.4), over lib/ipc.

Written here because the shared votequorum client library was not committed yet when the
qdevice needed it; the byte layouts are the spec's and should be deduplicated with
``lib/proto/votequorum.py`` once that lands.  Only what the qdevice uses: GETINFO (own node id),
TRACKSTART (node list + quorum notifications), QDEVICE_REGISTER / UNREGISTER / POLL /
MASTER_WINS, and the three notification decoders.
"""

from __future__ import annotations

import struct
from typing import Optional, Union

from attrs import frozen

from corosync.exec.qnetd.protocol import RingId
from corosync.lib.ipc import AsyncIpcClient, CsError, IpcError

SERVICE = "votequorum"
QDEVICE_NAME = "Qdevice"  # what corosync-qdevice registers (quorumtool shows it)
NAME_LEN = 255

REQ_GETINFO, REQ_TRACKSTART, REQ_TRACKSTOP = 0, 3, 4
REQ_QDEVICE_REGISTER, REQ_QDEVICE_UNREGISTER = 5, 6
REQ_QDEVICE_POLL, REQ_QDEVICE_MASTER_WINS = 8, 9
EV_QUORUM, EV_EXPECTED_VOTES, EV_NODELIST = 3, 4, 5
TRACK_CURRENT, TRACK_CHANGES = 1, 2


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


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= NAME_LEN:
        raise ValueError("qdevice name too long")
    return raw.ljust(NAME_LEN, b"\0") + b"\0"  # char[255] + 1 pad byte to the next field


def enc_poll(name: str, cast_vote: bool, ring: RingId) -> bytes:
    return _name(name) + struct.pack("<i4xI4xQ", int(cast_vote), ring.node_id, ring.seq)


def enc_master_wins(name: str, allow: bool) -> bytes:
    return _name(name) + struct.pack("<I4x", int(allow))


def decode_event(msg_id: int, body: bytes) -> Optional[VqEvent]:
    """Decode a notification body (after the 24-byte header); None if unknown or malformed."""
    try:
        if msg_id == EV_NODELIST:
            _ctx, rnode, rseq, n = struct.unpack_from("<QI4xQI4x", body)
            if n > 65536 or 32 + 4 * n > len(body):
                return None
            return NodelistEvent(RingId(rnode, rseq), struct.unpack_from(f"<{n}I", body, 32))
        if msg_id == EV_QUORUM:
            quorate, _ctx, n = struct.unpack_from("<I4xQI4x", body)
            if n > 65536 or 24 + 8 * n > len(body):
                return None
            flat = struct.unpack_from(f"<{2 * n}I", body, 24)
            return QuorumEvent(bool(quorate), tuple(zip(flat[::2], flat[1::2])))
        if msg_id == EV_EXPECTED_VOTES:
            _ctx, expected = struct.unpack_from("<QI", body)
            return ExpectedVotesEvent(expected)
    except struct.error:
        return None
    return None


class Votequorum:
    """One votequorum connection; requests are serialised (one outstanding at a time)."""

    def __init__(self, client: AsyncIpcClient) -> None:
        import trio

        self.client = client
        self._lock = trio.Lock()

    @classmethod
    async def connect(cls, **kwargs: object) -> "Votequorum":
        return cls(await AsyncIpcClient.connect(SERVICE, **kwargs))

    async def _call(self, what: str, msg_id: int, payload: bytes) -> bytes:
        async with self._lock:
            _rid, err, body = await self.client.request(msg_id, payload, timeout=10.0)
        if err != CsError.OK:
            raise VqError(what, err)
        return body

    async def this_node_id(self) -> int:
        body = await self._call("getinfo", REQ_GETINFO, struct.pack("<i4x", 0))
        return struct.unpack_from("<I", body)[0]

    async def trackstart(self) -> None:
        await self._call("trackstart", REQ_TRACKSTART,
                         struct.pack("<QI4x", 0, TRACK_CURRENT | TRACK_CHANGES))

    async def register(self, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_register", REQ_QDEVICE_REGISTER, _name(name))

    async def unregister(self, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_unregister", REQ_QDEVICE_UNREGISTER, _name(name))

    async def poll(self, cast_vote: bool, ring: RingId, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_poll", REQ_QDEVICE_POLL, enc_poll(name, cast_vote, ring))

    async def master_wins(self, allow: bool, name: str = QDEVICE_NAME) -> None:
        await self._call("qdevice_master_wins", REQ_QDEVICE_MASTER_WINS,
                         enc_master_wins(name, allow))

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
