"""lib/proto/cmap.py against the byte layouts of spec/ipc-wire.md §4.1 (absolute offsets,
header included), round trips, and hostile bodies."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync.lib.ipc import pack_request, pack_response
from corosync.lib.proto import ProtoError
from corosync.lib.proto import cmap as p


def u64(buf: bytes, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


def u32(buf: bytes, off: int) -> int:
    return struct.unpack_from("<I", buf, off)[0]


def name_at(buf: bytes, off: int) -> tuple[int, bytes]:
    length = struct.unpack_from("<H", buf, off)[0]
    return length, buf[off + 8:off + 8 + 256].rstrip(b"\0")


def test_set_request_layout() -> None:
    msg = pack_request(p.ReqId.SET, p.SetRequest("a.key", p.ValueType.STRING, b"hello").encode())
    assert len(msg) == 296 + 5
    assert name_at(msg, 16) == (5, b"a.key")          # length = strlen, no NUL
    assert u64(msg, 280) == 5
    assert msg[288] == p.ValueType.STRING
    assert msg[296:] == b"hello"


@pytest.mark.parametrize("req, size, checks", [
    (p.DeleteRequest("k.x"), 280, []),
    (p.GetRequest("k.x", 16), 288, [(280, "Q", 16)]),
    (p.AdjustIntRequest("k.x", -1), 288, [(280, "i", -1)]),
    (p.IterInitRequest(""), 280, []),
    (p.IterNextRequest(0x1122334455667788), 24, [(16, "Q", 0x1122334455667788)]),
    (p.IterFinalizeRequest(7), 24, [(16, "Q", 7)]),
    (p.TrackAddRequest("k.", 8 | 4, 0xC0FFEE), 296, [(280, "i", 12), (288, "Q", 0xC0FFEE)]),
    (p.TrackDeleteRequest(99), 24, [(16, "Q", 99)]),
    (p.SetCurrentMapRequest(1), 24, [(16, "i", 1)]),
])
def test_request_sizes_and_offsets(req, size, checks) -> None:
    msg = pack_request(req.ID, req.encode())
    assert len(msg) == size
    for off, fmt, value in checks:
        assert struct.unpack_from("<" + fmt, msg, off)[0] == value
    assert type(req).decode(msg[16:]) == req
    assert p.REQUESTS[req.ID] is type(req)


def test_get_response_value_area_is_the_requested_size() -> None:
    res = p.GetResponse(7, p.ValueType.STRING, b"ipclab\0")
    msg = pack_response(p.ResId.GET, res.encode(requested=16))
    assert len(msg) == 40 + 16                       # spec: 40 + requested value_len
    assert u64(msg, 24) == 7 and msg[32] == p.ValueType.STRING
    assert msg[40:47] == b"ipclab\0" and msg[47:] == bytes(9)
    assert p.GetResponse.decode(msg[24:]) == res
    # length-only probe: no value area at all
    probe = p.GetResponse.decode(p.GetResponse(7, 11).encode(requested=0))
    assert probe == p.GetResponse(7, 11, b"")


def test_iter_next_and_track_responses() -> None:
    res = p.IterNextResponse("totem.token", 4, p.ValueType.UINT32)
    msg = pack_response(p.ResId.ITER_NEXT, res.encode())
    assert len(msg) == 304
    assert name_at(msg, 24) == (11, b"totem.token")
    assert u64(msg, 288) == 4 and msg[296] == p.ValueType.UINT32
    assert p.IterNextResponse.decode(msg[24:]) == res
    assert len(pack_response(7, p.TrackAddResponse(5).encode())) == 32
    assert len(pack_response(4, p.IterInitResponse(5).encode())) == 32


def test_notify_event_layout() -> None:
    ev = p.NotifyEvent(0xC0FFEE, "ipctest.s", int(p.TrackType.MODIFY), p.ValueType.STRING,
                       b"new\0", p.ValueType.STRING, b"older\0")
    msg = pack_response(p.ResId.NOTIFY, ev.encode())
    assert len(msg) == 336 + 4 + 6
    assert u64(msg, 24) == 0xC0FFEE
    assert name_at(msg, 32) == (9, b"ipctest.s")
    assert struct.unpack_from("<i", msg, 296)[0] == 2
    assert msg[304] == 11 and msg[312] == 11
    assert u64(msg, 320) == 4 and u64(msg, 328) == 6
    assert msg[336:340] == b"new\0" and msg[340:] == b"older\0"
    assert p.NotifyEvent.decode(msg[24:]) == ev


@pytest.mark.parametrize("vtype, value, raw", [
    (p.ValueType.INT8, -1, b"\xff"),
    (p.ValueType.UINT16, 513, b"\x01\x02"),
    (p.ValueType.INT32, -2, b"\xfe\xff\xff\xff"),
    (p.ValueType.UINT64, 2**64 - 1, b"\xff" * 8),
    (p.ValueType.FLOAT, 1.5, struct.pack("<f", 1.5)),
    (p.ValueType.DOUBLE, -0.25, struct.pack("<d", -0.25)),
    (p.ValueType.BINARY, b"\0\x01", b"\0\x01"),
])
def test_value_codec(vtype, value, raw) -> None:
    assert p.encode_value(vtype, value) == raw
    assert p.decode_value(vtype, raw) == value


def test_strings_are_sent_without_and_received_with_nul() -> None:
    assert p.encode_value(p.ValueType.STRING, "abc") == b"abc"
    assert p.decode_value(p.ValueType.STRING, b"abc\0") == "abc"
    with pytest.raises(ProtoError):
        p.encode_value(p.ValueType.STRING, "a\0b")


@pytest.mark.parametrize("vtype, value", [
    (p.ValueType.UINT8, 256), (p.ValueType.INT8, -129), (p.ValueType.UINT32, -1),
    (p.ValueType.UINT32, "5"), (p.ValueType.UINT8, True), (p.ValueType.BINARY, "text"),
    (p.ValueType.DOUBLE, "1.0"),
])
def test_value_codec_refuses_bad_values(vtype, value) -> None:
    with pytest.raises(ProtoError):
        p.encode_value(vtype, value)


def test_value_decode_refuses_wrong_sizes_and_types() -> None:
    with pytest.raises(ProtoError):
        p.decode_value(p.ValueType.UINT32, b"\0\0")
    with pytest.raises(ProtoError):
        p.decode_value(99, b"")


def test_type_tags() -> None:
    assert [t.tag for t in p.ValueType] == ["i8", "u8", "i16", "u16", "i32", "u32", "i64",
                                            "u64", "flt", "dbl", "str", "bin"]
    assert p.ValueType.from_tag("dbl") is p.ValueType.DOUBLE
    with pytest.raises(ValueError):
        p.ValueType.from_tag("u128")


def test_names_too_long_are_refused() -> None:
    with pytest.raises(ProtoError):
        p.GetRequest("k" * 256, 0).encode()
    assert len(p.GetRequest("k" * 255, 0).encode()) == 272


def test_truncated_and_inconsistent_bodies() -> None:
    good = p.SetRequest("a.b", p.ValueType.UINT8, b"\x01").encode()
    with pytest.raises(ProtoError):
        p.SetRequest.decode(good[:-1])                 # value_len says 1, 0 bytes follow
    with pytest.raises(ProtoError):
        p.GetResponse.decode(b"\0" * 8)
    bad = bytearray(p.NotifyEvent(1, "a.b", 4, 2, b"\x01", 0, b"").encode())
    struct.pack_into("<Q", bad, 296, 5)                # new_len beyond the message
    with pytest.raises(ProtoError):
        p.NotifyEvent.decode(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([p.SetRequest, p.DeleteRequest, p.GetRequest, p.AdjustIntRequest,
                        p.IterInitRequest, p.IterNextRequest, p.TrackAddRequest,
                        p.SetCurrentMapRequest, p.GetResponse, p.IterNextResponse,
                        p.NotifyEvent, p.TrackAddResponse]),
       st.binary(max_size=700))
def test_any_bytes_decode_or_raise_proto_error(cls, body: bytes) -> None:
    try:
        cls.decode(body)
    except ProtoError:
        pass
