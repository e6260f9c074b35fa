"""The quorum service's client protocol (spec/ipc-wire.md §4.3), shared by the executive's
``services/quorum.py`` and the ``corosync.quorum`` client library.

Bodies only (what follows the 16-byte request / 24-byte response header).  Request ids and
response ids differ (GETTYPE 3 → 4, MODEL_GETTYPE 4 → 5).  Layout quirk worth a comment:
the V0 notification's view list starts at body offset 20 (absolute 44) although the
struct is 48 bytes long — the last 4 bytes of the struct overlap the first node id, so the
message size is ``48 + 4n`` with 4 trailing pad bytes.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Final

from attrs import frozen

from corosync.lib.proto.common import ProtoError, need

REQ_GETQUORATE, REQ_TRACKSTART, REQ_TRACKSTOP, REQ_GETTYPE, REQ_MODEL_GETTYPE = range(5)
RES_GETQUORATE, RES_TRACKSTART, RES_TRACKSTOP = 0, 1, 2
EV_NOTIFICATION, RES_GETTYPE, RES_MODEL_GETTYPE = 3, 4, 5
EV_V1_QUORUM_NOTIFICATION, EV_V1_NODELIST_NOTIFICATION = 6, 7

QUORUM_FREE: Final = 0
QUORUM_SET: Final = 1
MODEL_V0: Final = 0
MODEL_V1: Final = 1

U32P: Final = struct.Struct("<I4x")
_V0_HEAD: Final = struct.Struct("<i4xQI")           # quorate, ring_seq, entries (20 bytes)
_V1_HEAD: Final = struct.Struct("<i4xI4xQI")        # quorate, ring nodeid, seq, entries (28)
_NL_HEAD: Final = struct.Struct("<I4xQI4xI4xI")     # ring nodeid, seq, m, j, l (36)


def _ids(n: int, body: bytes | memoryview, off: int, what: str) -> tuple[int, ...]:
    if n > 65536 or off + 4 * n > len(body):
        raise ProtoError(f"{what}: {n} node ids do not fit in {len(body)} bytes")
    return struct.unpack_from(f"<{n}I", body, off)


@frozen
class Notification:
    """V0 NOTIFICATION (event 3): quorate, ring seq, view list."""

    ID: ClassVar[int] = EV_NOTIFICATION
    quorate: bool
    ring_seq: int
    view_list: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.view_list)
        return (_V0_HEAD.pack(int(self.quorate), self.ring_seq, n)
                + struct.pack(f"<{n}I", *self.view_list) + bytes(4))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "Notification":
        need(body, _V0_HEAD.size, "quorum notification", exact=False)
        q, seq, n = _V0_HEAD.unpack_from(body)
        return cls(bool(q), seq, _ids(n, body, _V0_HEAD.size, "quorum notification"))


@frozen
class V1QuorumNotification:
    ID: ClassVar[int] = EV_V1_QUORUM_NOTIFICATION
    quorate: bool
    ring_nodeid: int
    ring_seq: int
    view_list: tuple[int, ...]

    def encode(self) -> bytes:
        n = len(self.view_list)
        return (_V1_HEAD.pack(int(self.quorate), self.ring_nodeid, self.ring_seq, n)
                + struct.pack(f"<{n}I", *self.view_list) + bytes(4))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "V1QuorumNotification":
        need(body, _V1_HEAD.size, "quorum v1 notification", exact=False)
        q, rn, seq, n = _V1_HEAD.unpack_from(body)
        return cls(bool(q), rn, seq, _ids(n, body, _V1_HEAD.size, "quorum v1 notification"))


@frozen
class V1NodelistNotification:
    ID: ClassVar[int] = EV_V1_NODELIST_NOTIFICATION
    ring_nodeid: int
    ring_seq: int
    members: tuple[int, ...]
    joined: tuple[int, ...] = ()
    left: tuple[int, ...] = ()

    def encode(self) -> bytes:
        ids = self.members + self.joined + self.left
        return (_NL_HEAD.pack(self.ring_nodeid, self.ring_seq, len(self.members),
                              len(self.joined), len(self.left))
                + struct.pack(f"<{len(ids)}I", *ids) + bytes(4))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "V1NodelistNotification":
        need(body, _NL_HEAD.size, "quorum nodelist notification", exact=False)
        rn, seq, m, j, lf = _NL_HEAD.unpack_from(body)
        ids = _ids(m + j + lf, body, _NL_HEAD.size, "quorum nodelist notification")
        return cls(rn, seq, ids[:m], ids[m:m + j], ids[m + j:])


def encode_u32(value: int) -> bytes:
    """TRACKSTART / MODEL_GETTYPE request bodies: one u32 (no pad: request is 24 bytes
    because the C struct is 8-aligned)."""
    return U32P.pack(value)


def decode_u32(body: bytes | memoryview, what: str) -> int:
    need(body, 4, what, exact=False)
    return int(struct.unpack_from("<I", body)[0])
