"""The votequorum service's client protocol (spec/ipc-wire.md §4.4), shared by
``services/votequorum.py`` and the ``corosync.votequorum`` client library.

Bodies only (after the 16-byte request / 24-byte response header).  Every response is the
24-byte STATUS (id 0) except GETINFO (id 1, 320 bytes).  Qdevice names are ``char[255]``
packed right after the header; QDEVICE_UPDATE's second name therefore starts at absolute
offset 271.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final

from attrs import frozen

from corosync.lib.proto.common import ProtoError, need

(REQ_GETINFO, REQ_SETEXPECTED, REQ_SETVOTES, REQ_TRACKSTART, REQ_TRACKSTOP,
 REQ_QDEVICE_REGISTER, REQ_QDEVICE_UNREGISTER, REQ_QDEVICE_UPDATE, REQ_QDEVICE_POLL,
 REQ_QDEVICE_MASTER_WINS) = range(10)
RES_STATUS, RES_GETINFO = 0, 1
EV_QUORUM_NOTIFICATION, EV_EXPECTEDVOTES_NOTIFICATION, EV_NODELIST_NOTIFICATION = 3, 4, 5

QDEVICE_NODEID: Final = 0
QDEVICE_NAME_LEN: Final = 255
NODESTATE_MEMBER, NODESTATE_DEAD, NODESTATE_LEAVING = 1, 2, 3

INFO_TWONODE = 1
INFO_QUORATE = 2
INFO_WAIT_FOR_ALL = 4
INFO_LAST_MAN_STANDING = 8
INFO_AUTO_TIE_BREAKER = 16
INFO_ALLOW_DOWNSCALE = 32
INFO_QDEVICE_REGISTERED = 64
INFO_QDEVICE_ALIVE = 128
INFO_QDEVICE_CAST_VOTE = 256
INFO_QDEVICE_MASTER_WINS = 512

_INFO: Final = struct.Struct("<9I255s5x")       # 296 bytes of body → 320 with the header
_QN_HEAD: Final = struct.Struct("<I4xQI4x")     # quorate, context, entries (24)
_EV_BODY: Final = struct.Struct("<QI4x")        # context, expected (16)
_NL_HEAD: Final = struct.Struct("<QI4xQI4x")    # context, ring nodeid, seq, entries (32)


def encode_qname(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if len(raw) >= QDEVICE_NAME_LEN:
        raise ProtoError(f"qdevice name of {len(raw)} bytes is too long")
    return raw.ljust(QDEVICE_NAME_LEN, b"\0")


def decode_qname(buf: bytes | memoryview, off: int = 0) -> str:
    raw = bytes(buf[off:off + QDEVICE_NAME_LEN])
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


@frozen
class NodeInfo:
    """GETINFO response body."""

    ID: ClassVar[int] = RES_GETINFO
    nodeid: int = 0
    state: int = 0
    votes: int = 0
    expected_votes: int = 0
    highest_expected: int = 0
    total_votes: int = 0
    quorum: int = 0
    flags: int = 0
    qdevice_votes: int = 0
    qdevice_name: str = ""

    def encode(self) -> bytes:
        return _INFO.pack(self.nodeid, self.state, self.votes, self.expected_votes,
                          self.highest_expected, self.total_votes, self.quorum, self.flags,
                          self.qdevice_votes, encode_qname(self.qdevice_name))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "NodeInfo":
        need(body, _INFO.size - 5, "votequorum getinfo response", exact=False)
        fields = struct.unpack_from("<9I", body)
        return cls(*fields, qdevice_name=decode_qname(body, 36))


@frozen
class QuorumNotification:
    ID: ClassVar[int] = EV_QUORUM_NOTIFICATION
    quorate: bool
    context: int
    nodes: tuple[tuple[int, int], ...]   # (nodeid, state)

    def encode(self) -> bytes:
        return (_QN_HEAD.pack(int(self.quorate), self.context, len(self.nodes))
                + b"".join(struct.pack("<II", n, s) for n, s in self.nodes))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "QuorumNotification":
        need(body, _QN_HEAD.size, "votequorum quorum notification", exact=False)
        q, ctx, n = _QN_HEAD.unpack_from(body)
        if n > 65536 or _QN_HEAD.size + 8 * n > len(body):
            raise ProtoError(f"votequorum quorum notification: {n} nodes in {len(body)} bytes")
        flat = struct.unpack_from(f"<{2 * n}I", body, _QN_HEAD.size)
        return cls(bool(q), ctx, tuple(zip(flat[::2], flat[1::2])))


@frozen
class ExpectedVotesNotification:
    ID: ClassVar[int] = EV_EXPECTEDVOTES_NOTIFICATION
    context: int
    expected_votes: int

    def encode(self) -> bytes:
        return _EV_BODY.pack(self.context, self.expected_votes)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "ExpectedVotesNotification":
        need(body, 12, "votequorum expected votes notification", exact=False)
        return cls(*struct.unpack_from("<QI", body))


@frozen
class NodelistNotification:
    ID: ClassVar[int] = EV_NODELIST_NOTIFICATION
    context: int
    ring_nodeid: int
    ring_seq: int
    nodes: tuple[int, ...]

    def encode(self) -> bytes:
        return (_NL_HEAD.pack(self.context, self.ring_nodeid, self.ring_seq, len(self.nodes))
                + struct.pack(f"<{len(self.nodes)}I", *self.nodes))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "NodelistNotification":
        need(body, _NL_HEAD.size, "votequorum nodelist notification", exact=False)
        ctx, rn, seq, n = _NL_HEAD.unpack_from(body)
        if n > 65536 or _NL_HEAD.size + 4 * n > len(body):
            raise ProtoError(f"votequorum nodelist notification: {n} nodes in {len(body)} bytes")
        return cls(ctx, rn, seq, struct.unpack_from(f"<{n}I", body, _NL_HEAD.size))


# ----------------------------------------------------------------------- request bodies
def enc_getinfo(nodeid: int) -> bytes:
    return struct.pack("<i4x", nodeid)


def enc_setexpected(expected: int) -> bytes:
    return struct.pack("<I4x", expected)


def enc_setvotes(votes: int, nodeid: int) -> bytes:
    return struct.pack("<Ii", votes, nodeid)


def enc_trackstart(context: int, flags: int) -> bytes:
    return struct.pack("<QI4x", context, flags)


def enc_qdevice_name(name: str) -> bytes:
    """REGISTER / UNREGISTER: name[255], 1 byte of tail pad (272-byte request)."""
    return encode_qname(name) + b"\0"


def enc_qdevice_update(old: str, new: str) -> bytes:
    return encode_qname(old) + encode_qname(new) + bytes(2)


def enc_qdevice_poll(name: str, cast_vote: bool, ring_nodeid: int, ring_seq: int) -> bytes:
    return encode_qname(name) + b"\0" + struct.pack("<i4xI4xQ", int(cast_vote), ring_nodeid,
                                                     ring_seq)


def enc_qdevice_master_wins(name: str, allow: bool) -> bytes:
    return encode_qname(name) + b"\0" + struct.pack("<I4x", int(allow))
