"""CPG IPC messages (service ``cpg``, spec/ipc-wire.md §4.2).

Bodies only (after the header); offsets in the comments are absolute (header included).
MCAST and PARTIAL_MCAST requests begin with a 24-byte *response-style* header: their bodies
here are what follows those 24 bytes, and :func:`mcast_message` / :func:`partial_message`
build the complete messages.
"""

from __future__ import annotations

import enum
import struct
from typing import ClassVar, Final, Iterable, Sequence

from attrs import frozen

from corosync.lib.ipc import RESPONSE_HEADER
from corosync.lib.proto.common import (CPG_NAME, U32_PAD, U64, ProtoError, RingId,
                                       decode_cpg_name, encode_cpg_name, need)

#: Entries the stock library's arrays hold (confchg lists, membership_get).
CPG_MEMBERS_MAX: Final = 128
#: Entries of the executive's MEMBERSHIP response array.
PROCESSOR_COUNT_MAX: Final = 384
#: libcpg's IPC_REQUEST_SIZE - 1024: larger messages go out as PARTIAL_MCAST fragments.
MAX_ATOMIC_MSGSIZE: Final = 1048576 - 1024


class Guarantee(enum.IntEnum):
    """``cpg_guarantee_t`` (corosync delivers all of them in agreed order)."""

    UNORDERED = 0
    FIFO = 1
    AGREED = 2
    SAFE = 3


class Reason(enum.IntEnum):
    """``cpg_reason_t`` of confchg entries (UNDEFINED for plain member entries)."""

    UNDEFINED = 0
    JOIN = 1
    LEAVE = 2
    NODEDOWN = 3
    NODEUP = 4
    PROCDOWN = 5


class IterationType(enum.IntEnum):
    NAME_ONLY = 1
    ONE_GROUP = 2
    ALL = 3


class PartialType(enum.IntEnum):
    FIRST = 1
    CONTINUED = 2
    LAST = 3


class ModelFlags(enum.IntFlag):
    """Flags of ``cpg_model_v1_data_t`` sent with JOIN."""

    NONE = 0
    DELIVER_INITIAL_TOTEM_CONF = 1


class ReqId(enum.IntEnum):
    JOIN = 0
    LEAVE = 1
    MCAST = 2
    MEMBERSHIP = 3
    LOCAL_GET = 4
    ITERATIONINITIALIZE = 5
    ITERATIONNEXT = 6
    ITERATIONFINALIZE = 7
    FINALIZE = 8
    ZC_ALLOC = 9
    ZC_FREE = 10
    ZC_EXECUTE = 11
    PARTIAL_MCAST = 12


class ResId(enum.IntEnum):
    JOIN = 0
    LEAVE = 1
    MCAST = 2
    MEMBERSHIP = 3
    CONFCHG_CALLBACK = 4
    DELIVER_CALLBACK = 5
    FLOW_CONTROL_STATE_SET = 6
    LOCAL_GET = 7
    FLOWCONTROL_CALLBACK = 8
    ITERATIONINITIALIZE = 9
    ITERATIONNEXT = 10
    ITERATIONFINALIZE = 11
    FINALIZE = 12
    TOTEM_CONFCHG_CALLBACK = 13
    ZC_ALLOC = 14
    ZC_FREE = 15
    ZC_EXECUTE = 16
    PARTIAL_DELIVER_CALLBACK = 17
    PARTIAL_SEND = 18


ADDRESS: Final = struct.Struct("<I4xI4xI4x")      # nodeid, pid, reason: 24 bytes


@frozen
class Address:
    """``struct cpg_address``: one process of a group (and why it is listed)."""

    nodeid: int
    pid: int
    reason: int = Reason.UNDEFINED

    def encode(self) -> bytes:
        return ADDRESS.pack(self.nodeid, self.pid, self.reason)

    @classmethod
    def decode(cls, buf: bytes | memoryview, offset: int = 0) -> "Address":
        return cls(*ADDRESS.unpack_from(buf, offset))


def _addresses(buf: bytes | memoryview, offset: int, count: int) -> list[Address]:
    return [Address.decode(buf, offset + i * ADDRESS.size) for i in range(count)]


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------

_JOIN: Final = struct.Struct("<136sI4xI4x")       # group, pid, flags        (@16..@168)
_GROUP_U32: Final = struct.Struct("<136sI4x")     # group, pid | iteration   (@16..@160)
_MCAST: Final = struct.Struct("<I4xI4x")          # guarantee, msglen        (@24..@40)
_PARTIAL: Final = struct.Struct("<I4xI4xI4xI4x")  # guarantee, msglen, fraglen, type (@24..@56)
#: bytes of an MCAST / PARTIAL_MCAST request body (after the 24-byte header) before the data
MCAST_BODY_HEAD: Final = _MCAST.size
PARTIAL_BODY_HEAD: Final = _PARTIAL.size


@frozen
class JoinRequest:
    """JOIN (req 0): 16 group, 152 pid u32, 160 flags u32."""

    ID: ClassVar[int] = ReqId.JOIN
    group: bytes
    pid: int
    flags: int = 0

    def encode(self) -> bytes:
        return _JOIN.pack(encode_cpg_name(self.group), self.pid, self.flags)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "JoinRequest":
        need(body, _JOIN.size, "cpg JOIN")
        _g, pid, flags = _JOIN.unpack_from(body)
        return cls(decode_cpg_name(body), pid, flags)


@frozen
class LeaveRequest:
    """LEAVE (req 1): 16 group, 152 pid u32."""

    ID: ClassVar[int] = ReqId.LEAVE
    group: bytes
    pid: int

    def encode(self) -> bytes:
        return _GROUP_U32.pack(encode_cpg_name(self.group), self.pid)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "LeaveRequest":
        need(body, _GROUP_U32.size, "cpg LEAVE")
        return cls(decode_cpg_name(body), _GROUP_U32.unpack_from(body)[1])


@frozen
class McastRequest:
    """MCAST (req 2, **24-byte header**): 24 guarantee u32, 32 msglen u32, 40 message.
    The executive never answers it."""

    ID: ClassVar[int] = ReqId.MCAST
    guarantee: int
    message: bytes

    def encode(self) -> bytes:
        return _MCAST.pack(self.guarantee, len(self.message)) + self.message

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "McastRequest":
        guarantee, msglen = mcast_request_fields(body)
        if len(body) != _MCAST.size + msglen:
            raise ProtoError(f"cpg MCAST: msglen {msglen} but {len(body) - _MCAST.size} bytes")
        return cls(guarantee, bytes(body[_MCAST.size:]))


@frozen
class PartialMcastRequest:
    """PARTIAL_MCAST (req 12, 24-byte header): 24 guarantee, 32 msglen (total), 40 fraglen,
    48 type (FIRST/CONTINUED/LAST), 56 fragment.  Answered with PARTIAL_SEND (res 18)."""

    ID: ClassVar[int] = ReqId.PARTIAL_MCAST
    guarantee: int
    msglen: int
    type: int
    fragment: bytes

    def encode(self) -> bytes:
        return _PARTIAL.pack(self.guarantee, self.msglen, len(self.fragment),
                             self.type) + self.fragment

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "PartialMcastRequest":
        guarantee, msglen, fraglen, ptype = partial_request_fields(body)
        if len(body) != _PARTIAL.size + fraglen:
            raise ProtoError(f"cpg PARTIAL_MCAST: fraglen {fraglen} but "
                             f"{len(body) - _PARTIAL.size} bytes")
        return cls(guarantee, msglen, ptype, bytes(body[_PARTIAL.size:]))


def _header24(msg_id: int, body_len: int) -> bytes:
    # id, size, and an "error" field the executive ignores (libcpg leaves it uninitialised)
    return RESPONSE_HEADER.pack(msg_id, RESPONSE_HEADER.size + body_len, 0)


def mcast_message(guarantee: int, message: bytes) -> bytes:
    """The complete MCAST request: 24-byte header + body."""
    body = McastRequest(guarantee, message).encode()
    return _header24(ReqId.MCAST, len(body)) + body


def partial_message(guarantee: int, msglen: int, ptype: int, fragment: bytes) -> bytes:
    """The complete PARTIAL_MCAST request: 24-byte header + body."""
    body = PartialMcastRequest(guarantee, msglen, ptype, fragment).encode()
    return _header24(ReqId.PARTIAL_MCAST, len(body)) + body


@frozen
class MembershipRequest:
    """MEMBERSHIP (req 3): 16 group."""

    ID: ClassVar[int] = ReqId.MEMBERSHIP
    group: bytes

    def encode(self) -> bytes:
        return encode_cpg_name(self.group)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "MembershipRequest":
        need(body, CPG_NAME.size, "cpg MEMBERSHIP")
        return cls(decode_cpg_name(body))


@frozen
class IterationInitializeRequest:
    """ITERATIONINITIALIZE (req 5): 16 group (ONE_GROUP only), 152 iteration_type u32."""

    ID: ClassVar[int] = ReqId.ITERATIONINITIALIZE
    iteration_type: int
    group: bytes = b""

    def encode(self) -> bytes:
        return _GROUP_U32.pack(encode_cpg_name(self.group), self.iteration_type)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterationInitializeRequest":
        need(body, _GROUP_U32.size, "cpg ITERATIONINITIALIZE")
        return cls(_GROUP_U32.unpack_from(body)[1], decode_cpg_name(body))


@frozen
class IterationNextRequest:
    """ITERATIONNEXT (req 6): 16 iteration_handle u64."""

    ID: ClassVar[int] = ReqId.ITERATIONNEXT
    iteration_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iteration_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterationNextRequest":
        need(body, U64.size, "cpg ITERATIONNEXT")
        return cls(U64.unpack_from(body)[0])


@frozen
class IterationFinalizeRequest:
    """ITERATIONFINALIZE (req 7): 16 iteration_handle u64."""

    ID: ClassVar[int] = ReqId.ITERATIONFINALIZE
    iteration_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iteration_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterationFinalizeRequest":
        need(body, U64.size, "cpg ITERATIONFINALIZE")
        return cls(U64.unpack_from(body)[0])


# LOCAL_GET (req 4) and FINALIZE (req 8) have empty bodies.

# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


@frozen
class MembershipResponse:
    """MEMBERSHIP (res 3, 9248 bytes): 24 member_count u32, 32 member_list[384] addresses."""

    ID: ClassVar[int] = ResId.MEMBERSHIP
    members: tuple[Address, ...]

    SIZE: ClassVar[int] = U32_PAD.size + PROCESSOR_COUNT_MAX * ADDRESS.size

    def encode(self) -> bytes:
        return membership_body([(a.nodeid, a.pid, a.reason) for a in self.members])

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "MembershipResponse":
        need(body, U32_PAD.size, "cpg MEMBERSHIP response", exact=False)
        (count,) = U32_PAD.unpack_from(body)
        if count > PROCESSOR_COUNT_MAX or U32_PAD.size + count * ADDRESS.size > len(body):
            raise ProtoError(f"cpg MEMBERSHIP response: {count} members in {len(body)} bytes")
        return cls(tuple(_addresses(body, U32_PAD.size, count)))


@frozen
class LocalGetResponse:
    """LOCAL_GET (res 7): 24 local_nodeid u32."""

    ID: ClassVar[int] = ResId.LOCAL_GET
    local_nodeid: int

    def encode(self) -> bytes:
        return U32_PAD.pack(self.local_nodeid)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "LocalGetResponse":
        need(body, U32_PAD.size, "cpg LOCAL_GET response")
        return cls(U32_PAD.unpack_from(body)[0])


@frozen
class IterationInitializeResponse:
    """ITERATIONINITIALIZE (res 9): 24 iteration_handle u64."""

    ID: ClassVar[int] = ResId.ITERATIONINITIALIZE
    iteration_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iteration_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterationInitializeResponse":
        need(body, U64.size, "cpg ITERATIONINITIALIZE response")
        return cls(U64.unpack_from(body)[0])


_ITER_DESC: Final = struct.Struct("<136sII")      # group, nodeid, pid (packed) (@24..@168)


@frozen
class IterationDescription:
    """ITERATIONNEXT (res 10): 24 group, 160 nodeid u32, 164 pid u32.  NAME_ONLY iterations
    carry nodeid = pid = 0.  The end is the error CS_ERR_NO_SECTIONS."""

    ID: ClassVar[int] = ResId.ITERATIONNEXT
    group: bytes
    nodeid: int
    pid: int

    def encode(self) -> bytes:
        return iteration_description_body(self.group, self.nodeid, self.pid)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterationDescription":
        need(body, _ITER_DESC.size, "cpg ITERATIONNEXT response")
        _g, nodeid, pid = _ITER_DESC.unpack_from(body)
        return cls(decode_cpg_name(body), nodeid, pid)


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------

_CONFCHG_HEAD: Final = struct.Struct("<136sI4xI4xI4x")   # group, member, joined, left counts
_DELIVER_HEAD: Final = struct.Struct("<136sI4xI4xI4x")   # group, msglen, nodeid, pid
_PARTIAL_HEAD: Final = struct.Struct("<136sI4xI4xI4xI4xI4x")  # + fraglen ... type
_TOTEM_HEAD: Final = struct.Struct("<16sI")              # ring id, member count (@24..@44)


# Body encoders shared by the attrs classes below and the executive's CPG service
# (services/cpg.py), which builds these messages per delivery and per request: plain
# tuples and bytes in, bytes out, no objects on the way.

def address_list(entries: "Iterable[tuple[int, int, int]]") -> bytes:
    """``struct cpg_address`` entries (nodeid, pid, reason), back to back."""
    pack = ADDRESS.pack
    return b"".join([pack(n, p, r) for n, p, r in entries])


def confchg_body(group: bytes, members: "Sequence[tuple[int, int, int]]",
                 left: "Sequence[tuple[int, int, int]]",
                 joined: "Sequence[tuple[int, int, int]]") -> bytes:
    """CONFCHG_CALLBACK body: counts member, **joined**, **left**; entries member, **left**,
    **joined**."""
    return (_CONFCHG_HEAD.pack(encode_cpg_name(group), len(members), len(joined), len(left))
            + address_list(members) + address_list(left) + address_list(joined))


def deliver_body(group: bytes, nodeid: int, pid: int, message: bytes) -> bytes:
    """DELIVER_CALLBACK body: group, msglen, nodeid, pid, message."""
    return _DELIVER_HEAD.pack(encode_cpg_name(group), len(message), nodeid, pid) + message


def partial_deliver_body(group: bytes, msglen: int, nodeid: int, pid: int, ptype: int,
                         fragment: bytes) -> bytes:
    """PARTIAL_DELIVER_CALLBACK body: group, msglen (total), fraglen, nodeid, pid, type,
    fragment."""
    return _PARTIAL_HEAD.pack(encode_cpg_name(group), msglen, len(fragment), nodeid, pid,
                              ptype) + fragment


def totem_confchg_body(ring_id: RingId, members: "Sequence[int]") -> bytes:
    """TOTEM_CONFCHG_CALLBACK body: ring id, count, node ids, 4 pad bytes."""
    n = len(members)
    return (_TOTEM_HEAD.pack(ring_id.encode(), n) + struct.pack(f"<{n}I", *members)
            + bytes(4))


def membership_body(members: "Sequence[tuple[int, int, int]]") -> bytes:
    """MEMBERSHIP response body: count, then always PROCESSOR_COUNT_MAX address slots."""
    if len(members) > PROCESSOR_COUNT_MAX:
        raise ProtoError(f"{len(members)} members exceed {PROCESSOR_COUNT_MAX}")
    return (U32_PAD.pack(len(members)) + address_list(members)).ljust(
        MembershipResponse.SIZE, b"\0")


def iteration_description_body(group: bytes, nodeid: int, pid: int) -> bytes:
    """ITERATIONNEXT response body (144 bytes): group, nodeid, pid."""
    return _ITER_DESC.pack(encode_cpg_name(group), nodeid, pid)


def mcast_request_fields(body: bytes | memoryview) -> tuple[int, int]:
    """(guarantee, msglen) of an MCAST request body (after the 24-byte header); the
    message follows at :data:`MCAST_BODY_HEAD` bytes."""
    need(body, _MCAST.size, "cpg MCAST", exact=False)
    guarantee, msglen = _MCAST.unpack_from(body)
    return guarantee, msglen


def partial_request_fields(body: bytes | memoryview) -> tuple[int, int, int, int]:
    """(guarantee, msglen, fraglen, type) of a PARTIAL_MCAST request body (after the
    24-byte header); the fragment follows at :data:`PARTIAL_BODY_HEAD` bytes."""
    need(body, _PARTIAL.size, "cpg PARTIAL_MCAST", exact=False)
    return _PARTIAL.unpack_from(body)  # type: ignore[return-value]


@frozen
class ConfchgEvent:
    """CONFCHG_CALLBACK (event 4): 24 group, 160 member count, 168 **joined** count, 176
    **left** count, 184 entries: members, then **left**, then **joined** (array order differs
    from count order)."""

    ID: ClassVar[int] = ResId.CONFCHG_CALLBACK
    group: bytes
    members: tuple[Address, ...]
    left: tuple[Address, ...]
    joined: tuple[Address, ...]

    def encode(self) -> bytes:
        def rows(addrs: tuple[Address, ...]) -> list[tuple[int, int, int]]:
            return [(a.nodeid, a.pid, a.reason) for a in addrs]
        return confchg_body(self.group, rows(self.members), rows(self.left), rows(self.joined))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "ConfchgEvent":
        need(body, _CONFCHG_HEAD.size, "cpg CONFCHG", exact=False)
        _g, n_members, n_joined, n_left = _CONFCHG_HEAD.unpack_from(body)
        total = n_members + n_joined + n_left
        if len(body) != _CONFCHG_HEAD.size + total * ADDRESS.size:
            raise ProtoError(f"cpg CONFCHG: {total} entries in {len(body)} bytes")
        if max(n_members, n_joined, n_left) > PROCESSOR_COUNT_MAX:
            raise ProtoError("cpg CONFCHG: more entries than processors")
        off = _CONFCHG_HEAD.size
        members = _addresses(body, off, n_members)
        left = _addresses(body, off + n_members * ADDRESS.size, n_left)
        joined = _addresses(body, off + (n_members + n_left) * ADDRESS.size, n_joined)
        return cls(decode_cpg_name(body), tuple(members), tuple(left), tuple(joined))


@frozen
class DeliverEvent:
    """DELIVER_CALLBACK (event 5): 24 group, 160 msglen, 168 nodeid, 176 pid, 184 message."""

    ID: ClassVar[int] = ResId.DELIVER_CALLBACK
    group: bytes
    nodeid: int
    pid: int
    message: bytes

    def encode(self) -> bytes:
        return deliver_body(self.group, self.nodeid, self.pid, self.message)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "DeliverEvent":
        need(body, _DELIVER_HEAD.size, "cpg DELIVER", exact=False)
        _g, msglen, nodeid, pid = _DELIVER_HEAD.unpack_from(body)
        if len(body) != _DELIVER_HEAD.size + msglen:
            raise ProtoError(f"cpg DELIVER: msglen {msglen} but "
                             f"{len(body) - _DELIVER_HEAD.size} bytes")
        return cls(decode_cpg_name(body), nodeid, pid, bytes(body[_DELIVER_HEAD.size:]))


@frozen
class PartialDeliverEvent:
    """PARTIAL_DELIVER_CALLBACK (event 17): 24 group, 160 msglen (total), 168 fraglen,
    176 nodeid, 184 pid, 192 type, 200 fragment."""

    ID: ClassVar[int] = ResId.PARTIAL_DELIVER_CALLBACK
    group: bytes
    msglen: int
    nodeid: int
    pid: int
    type: int
    fragment: bytes

    def encode(self) -> bytes:
        return partial_deliver_body(self.group, self.msglen, self.nodeid, self.pid, self.type,
                                    self.fragment)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "PartialDeliverEvent":
        need(body, _PARTIAL_HEAD.size, "cpg PARTIAL_DELIVER", exact=False)
        _g, msglen, fraglen, nodeid, pid, ptype = _PARTIAL_HEAD.unpack_from(body)
        if len(body) != _PARTIAL_HEAD.size + fraglen:
            raise ProtoError(f"cpg PARTIAL_DELIVER: fraglen {fraglen} but "
                             f"{len(body) - _PARTIAL_HEAD.size} bytes")
        return cls(decode_cpg_name(body), msglen, nodeid, pid, ptype,
                   bytes(body[_PARTIAL_HEAD.size:]))


@frozen
class TotemConfchgEvent:
    """TOTEM_CONFCHG_CALLBACK (event 13): 24 ring id, 40 member count, 44 node ids u32,
    4 trailing pad bytes (size 48 + 4n)."""

    ID: ClassVar[int] = ResId.TOTEM_CONFCHG_CALLBACK
    ring_id: RingId
    members: tuple[int, ...]

    def encode(self) -> bytes:
        return totem_confchg_body(self.ring_id, self.members)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "TotemConfchgEvent":
        need(body, _TOTEM_HEAD.size, "cpg TOTEM_CONFCHG", exact=False)
        _r, count = _TOTEM_HEAD.unpack_from(body)
        # the 4 pad bytes are part of the struct; tolerate a sender that omits them
        if len(body) not in (_TOTEM_HEAD.size + 4 * count, _TOTEM_HEAD.size + 4 * count + 4):
            raise ProtoError(f"cpg TOTEM_CONFCHG: {count} members in {len(body)} bytes")
        members = struct.unpack_from(f"<{count}I", body, _TOTEM_HEAD.size)
        return cls(RingId.decode(body), tuple(members))


EVENTS: Final = {c.ID: c for c in (ConfchgEvent, DeliverEvent, PartialDeliverEvent,
                                   TotemConfchgEvent)}

__all__ = [
    "CPG_MEMBERS_MAX", "PROCESSOR_COUNT_MAX", "MAX_ATOMIC_MSGSIZE", "Guarantee", "Reason",
    "IterationType", "PartialType", "ModelFlags", "ReqId", "ResId", "Address", "JoinRequest",
    "LeaveRequest", "McastRequest", "PartialMcastRequest", "mcast_message", "partial_message",
    "MembershipRequest", "IterationInitializeRequest", "IterationNextRequest",
    "IterationFinalizeRequest", "MembershipResponse", "LocalGetResponse",
    "IterationInitializeResponse", "IterationDescription", "ConfchgEvent", "DeliverEvent",
    "PartialDeliverEvent", "TotemConfchgEvent", "EVENTS", "ADDRESS", "MCAST_BODY_HEAD",
    "PARTIAL_BODY_HEAD", "address_list", "confchg_body", "deliver_body",
    "partial_deliver_body", "totem_confchg_body", "membership_body",
    "iteration_description_body", "mcast_request_fields", "partial_request_fields",
]
