"""lib/proto/cpg.py and lib/proto/cfg.py against spec/ipc-wire.md §4.2/§4.5 (absolute
offsets), round trips, and hostile bodies."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync.lib.ipc import pack_request, pack_response
from corosync.lib.proto import ProtoError
from corosync.lib.proto import cfg as pcfg
from corosync.lib.proto import cpg as p
from corosync.lib.proto.common import RingId


def u32(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def test_join_and_leave_layout() -> None:
    msg = pack_request(p.ReqId.JOIN, p.JoinRequest(b"pacemakerd\0", 4242, 1).encode())
    assert len(msg) == 168
    assert u32(msg, 16) == 11 and msg[24:35] == b"pacemakerd\0"   # the NUL is counted
    assert u32(msg, 152) == 4242 and u32(msg, 160) == 1
    assert p.JoinRequest.decode(msg[16:]) == p.JoinRequest(b"pacemakerd\0", 4242, 1)
    leave = pack_request(p.ReqId.LEAVE, p.LeaveRequest(b"g", 7).encode())
    assert len(leave) == 160 and u32(leave, 152) == 7


def test_mcast_has_a_24_byte_header() -> None:
    msg = p.mcast_message(p.Guarantee.AGREED, b"hello")
    assert len(msg) == 45
    assert u32(msg, 0) == p.ReqId.MCAST and u32(msg, 8) == 45
    assert u32(msg, 24) == 2 and u32(msg, 32) == 5 and msg[40:] == b"hello"
    assert p.McastRequest.decode(msg[24:]) == p.McastRequest(2, b"hello")


def test_partial_mcast_layout() -> None:
    msg = p.partial_message(p.Guarantee.SAFE, 3000, p.PartialType.CONTINUED, b"x" * 10)
    assert len(msg) == 56 + 10
    assert u32(msg, 0) == 12 and u32(msg, 8) == 66
    assert [u32(msg, o) for o in (24, 32, 40, 48)] == [3, 3000, 10, 2]
    assert p.PartialMcastRequest.decode(msg[24:]).fragment == b"x" * 10


@pytest.mark.parametrize("req, size", [
    (p.MembershipRequest(b"demo"), 152),
    (p.IterationInitializeRequest(p.IterationType.ONE_GROUP, b"demo"), 160),
    (p.IterationNextRequest(5), 24),
    (p.IterationFinalizeRequest(5), 24),
])
def test_request_sizes(req, size) -> None:
    msg = pack_request(req.ID, req.encode())
    assert len(msg) == size
    assert type(req).decode(msg[16:]) == req


def test_iteration_initialize_type_offset() -> None:
    msg = pack_request(5, p.IterationInitializeRequest(p.IterationType.ALL).encode())
    assert u32(msg, 152) == 3


def test_membership_response_is_9248_bytes() -> None:
    members = (p.Address(1, 100), p.Address(2, 200))
    msg = pack_response(p.ResId.MEMBERSHIP, p.MembershipResponse(members).encode())
    assert len(msg) == 9248
    assert u32(msg, 24) == 2
    assert (u32(msg, 32), u32(msg, 40), u32(msg, 56), u32(msg, 64)) == (1, 100, 2, 200)
    assert p.MembershipResponse.decode(msg[24:]).members == members


def test_iteration_next_response_is_packed() -> None:
    msg = pack_response(10, p.IterationDescription(b"other group", 3, 11423).encode())
    assert len(msg) == 168
    assert u32(msg, 24) == 11 and msg[32:43] == b"other group"
    assert u32(msg, 160) == 3 and u32(msg, 164) == 11423


def test_local_get_response() -> None:
    msg = pack_response(p.ResId.LOCAL_GET, p.LocalGetResponse(7).encode())
    assert len(msg) == 32 and u32(msg, 24) == 7


def test_confchg_arrays_are_member_left_joined() -> None:
    ev = p.ConfchgEvent(b"demo", members=(p.Address(1, 10),),
                        left=(p.Address(2, 20, p.Reason.LEAVE),),
                        joined=(p.Address(3, 30, p.Reason.JOIN), p.Address(4, 40, 1)))
    msg = pack_response(p.ResId.CONFCHG_CALLBACK, ev.encode())
    assert len(msg) == 184 + 24 * 4
    # counts: member @160, joined @168, left @176
    assert (u32(msg, 160), u32(msg, 168), u32(msg, 176)) == (1, 2, 1)
    # entries: member, then LEFT, then JOINED
    assert [u32(msg, 184 + 24 * i) for i in range(4)] == [1, 2, 3, 4]
    assert u32(msg, 184 + 24 + 16) == p.Reason.LEAVE
    assert p.ConfchgEvent.decode(msg[24:]) == ev


def test_deliver_and_partial_deliver_layout() -> None:
    msg = pack_response(5, p.DeliverEvent(b"demo", 1, 99, b"hello").encode())
    assert len(msg) == 189
    assert (u32(msg, 160), u32(msg, 168), u32(msg, 176)) == (5, 1, 99)
    assert msg[184:] == b"hello"
    part = p.PartialDeliverEvent(b"demo", 100, 1, 99, p.PartialType.FIRST, b"abc")
    pm = pack_response(17, part.encode())
    assert len(pm) == 203
    assert [u32(pm, o) for o in (160, 168, 176, 184, 192)] == [100, 3, 1, 99, 1]
    assert p.PartialDeliverEvent.decode(pm[24:]) == part


def test_totem_confchg_layout() -> None:
    ev = p.TotemConfchgEvent(RingId(1, 5), (1, 2, 3))
    msg = pack_response(13, ev.encode())
    assert len(msg) == 48 + 12
    assert u32(msg, 24) == 1 and u64(msg, 32) == 5 and u32(msg, 40) == 3
    assert [u32(msg, 44 + 4 * i) for i in range(3)] == [1, 2, 3]
    assert p.TotemConfchgEvent.decode(msg[24:]) == ev
    assert str(ev.ring_id) == "1.5"


def test_group_names_are_opaque_and_bounded() -> None:
    weird = bytes(range(128))
    assert p.MembershipRequest.decode(p.MembershipRequest(weird).encode()).group == weird
    with pytest.raises(ProtoError):
        p.MembershipRequest(bytes(129)).encode()
    bad = bytearray(p.MembershipRequest(b"x").encode())
    struct.pack_into("<I", bad, 0, 200)
    with pytest.raises(ProtoError):
        p.MembershipRequest.decode(bytes(bad))


def test_inconsistent_counts_are_refused() -> None:
    body = bytearray(p.ConfchgEvent(b"g", (p.Address(1, 1),), (), ()).encode())
    struct.pack_into("<I", body, 136, 2)       # claims 2 members, carries 1
    with pytest.raises(ProtoError):
        p.ConfchgEvent.decode(bytes(body))
    body = bytearray(p.DeliverEvent(b"g", 1, 1, b"abc").encode())
    struct.pack_into("<I", body, 136, 10)
    with pytest.raises(ProtoError):
        p.DeliverEvent.decode(bytes(body))
    with pytest.raises(ProtoError):
        p.MembershipResponse.decode(struct.pack("<I4x", 385) + bytes(385 * 24))


def test_cfg_get_node_addrs() -> None:
    req = pack_request(pcfg.REQ_GET_NODE_ADDRS, pcfg.GetNodeAddrsRequest(3).encode())
    assert len(req) == 24 and u32(req, 16) == 3
    v4 = socket.inet_pton(socket.AF_INET, "198.18.0.3").ljust(16, b"\0")
    res = pcfg.GetNodeAddrsResponse(socket.AF_INET, (v4, bytes(16)))
    msg = pack_response(pcfg.RES_GET_NODE_ADDRS, res.encode())
    assert len(msg) == 32 + 32 and u32(msg, 24) == 2 and u32(msg, 28) == 2
    decoded = pcfg.GetNodeAddrsResponse.decode(msg[24:])
    assert decoded.addresses() == ["198.18.0.3", None]
    v6 = pcfg.GetNodeAddrsResponse(socket.AF_INET6,
                                   (socket.inet_pton(socket.AF_INET6, "fd00:c0de::3"),))
    assert v6.addresses() == ["fd00:c0de::3"]
    with pytest.raises(ProtoError):
        pcfg.GetNodeAddrsResponse.decode(struct.pack("<II", 2, 3) + bytes(16))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([p.JoinRequest, p.LeaveRequest, p.McastRequest, p.PartialMcastRequest,
                        p.MembershipRequest, p.IterationInitializeRequest,
                        p.MembershipResponse, p.IterationDescription, p.ConfchgEvent,
                        p.DeliverEvent, p.PartialDeliverEvent, p.TotemConfchgEvent,
                        pcfg.GetNodeAddrsResponse]),
       st.binary(max_size=600))
def test_any_bytes_decode_or_raise_proto_error(cls, body: bytes) -> None:
    try:
        cls.decode(body)
    except ProtoError:
        pass
