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


# --------------------------------------------------------------------------------------------
# Both directions: the client encodes requests / decodes responses, the executive's service
# decodes requests (exact=False) / encodes responses; each layout is written once.
# --------------------------------------------------------------------------------------------

KEYS = st.text(st.sampled_from("abcXYZ019._-/:é"), max_size=120).filter(
    lambda k: len(k.encode()) < 256)
U64S = st.integers(0, 2**64 - 1)
I32S = st.integers(-2**31, 2**31 - 1)
U8S = st.integers(0, 255)

MESSAGES = {
    p.SetRequest: st.builds(p.SetRequest, KEYS, U8S, st.binary(max_size=64)),
    p.DeleteRequest: st.builds(p.DeleteRequest, KEYS),
    p.GetRequest: st.builds(p.GetRequest, KEYS, U64S),
    p.AdjustIntRequest: st.builds(p.AdjustIntRequest, KEYS, I32S),
    p.IterInitRequest: st.builds(p.IterInitRequest, KEYS),
    p.IterNextRequest: st.builds(p.IterNextRequest, U64S),
    p.IterFinalizeRequest: st.builds(p.IterFinalizeRequest, U64S),
    p.TrackAddRequest: st.builds(p.TrackAddRequest, KEYS, I32S, U64S),
    p.TrackDeleteRequest: st.builds(p.TrackDeleteRequest, U64S),
    p.SetCurrentMapRequest: st.builds(p.SetCurrentMapRequest, I32S),
    p.IterInitResponse: st.builds(p.IterInitResponse, U64S),
    p.IterNextResponse: st.builds(p.IterNextResponse, KEYS, U64S, U8S),
    p.TrackAddResponse: st.builds(p.TrackAddResponse, U64S),
    p.TrackDeleteResponse: st.builds(p.TrackDeleteResponse, U64S),
    p.NotifyEvent: st.builds(p.NotifyEvent, U64S, KEYS, I32S, U8S, st.binary(max_size=40),
                             U8S, st.binary(max_size=40)),
    p.GetResponse: st.builds(lambda t, v: p.GetResponse(len(v), t, v), U8S,
                             st.binary(min_size=1, max_size=64)),
}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(MESSAGES, key=lambda c: c.__name__)).flatmap(
    lambda cls: MESSAGES[cls]))
def test_every_message_round_trips(msg) -> None:
    assert type(msg).decode(msg.encode()) == msg


REQUEST_CLASSES = sorted(p.REQUESTS.values(), key=lambda c: c.__name__)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REQUEST_CLASSES).flatmap(lambda cls: MESSAGES[cls]),
       st.binary(max_size=16))
def test_the_executive_reads_requests_with_trailing_bytes(req, extra: bytes) -> None:
    """exact=False (the service's reading) ignores what follows the fields; the strict
    client-side reading refuses it."""
    body = req.encode()
    assert type(req).decode(body, exact=False) == req
    assert type(req).decode(body + extra, exact=False) == req
    if extra:
        with pytest.raises(ProtoError):
            type(req).decode(body + extra)


def test_the_executive_does_not_need_trailing_padding() -> None:
    """The service has always answered ADJUST_INT / SET_CURRENT_MAP bodies without their
    4 pad bytes (it never reads them); one byte less than the fields is refused."""
    adjust = p.AdjustIntRequest("a.b", -3).encode()
    assert len(adjust) == 272
    assert p.AdjustIntRequest.decode(adjust[:268], exact=False) == p.AdjustIntRequest("a.b", -3)
    with pytest.raises(ProtoError):
        p.AdjustIntRequest.decode(adjust[:267], exact=False)
    with pytest.raises(ProtoError):
        p.AdjustIntRequest.decode(adjust[:268])
    assert p.SetCurrentMapRequest.decode(struct.pack("<i", 1), exact=False).map == 1
    # only trailing padding may be missing: a TRACK_ADD with a cut cookie is refused
    with pytest.raises(ProtoError):
        p.TrackAddRequest.decode(p.TrackAddRequest("a.b", 4, 1).encode()[:279], exact=False)


def test_a_set_value_shorter_than_its_value_len_never_passes() -> None:
    good = p.SetRequest("a.b", p.ValueType.UINT32, b"\1\0\0\0").encode()
    with pytest.raises(ProtoError):
        p.SetRequest.decode(good[:-1], exact=False)
    assert p.SetRequest.decode(good + b"zz", exact=False).value == b"\1\0\0\0"


def _values(vtype: p.ValueType) -> st.SearchStrategy:
    if vtype.is_integer:
        return st.integers(*p.int_range(vtype))
    if vtype is p.ValueType.FLOAT:
        return st.floats(width=32, allow_nan=False)
    if vtype is p.ValueType.DOUBLE:
        return st.floats(allow_nan=False)
    if vtype is p.ValueType.STRING:
        return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
    return st.binary(max_size=100)


TYPED_VALUES = st.sampled_from(list(p.ValueType)).flatmap(
    lambda t: st.tuples(st.just(t), _values(t)))


@settings(max_examples=400, deadline=None)
@given(TYPED_VALUES)
def test_values_round_trip_in_both_directions(typed) -> None:
    vtype, value = typed
    # client -> executive: SET carries a STRING without NUL, the executive stores the text
    assert p.decode_request_value(vtype, p.encode_value(vtype, value)) == value
    # executive -> client: GET/NOTIFY carry a STRING with its NUL
    stored = p.encode_stored_value(vtype, value)
    assert p.decode_value(vtype, stored) == value
    assert p.decode_request_value(vtype, stored) == value  # one NUL may be sent along
    if vtype.fixed_size is not None:
        assert len(stored) == vtype.fixed_size


def test_stored_strings_carry_their_nul_and_requests_stop_there() -> None:
    assert p.encode_stored_value(p.ValueType.STRING, "ipclab") == b"ipclab\0"  # value_len 7
    assert p.encode_stored_value(11, "x") == b"x\0"
    assert p.decode_request_value(p.ValueType.STRING, b"abc") == "abc"
    with pytest.raises(ProtoError):   # value_len beyond strlen + 1 (spec 4.1)
        p.decode_request_value(p.ValueType.STRING, b"ab\0c")
    with pytest.raises(ProtoError):
        p.decode_request_value(p.ValueType.UINT16, b"\1")
    with pytest.raises(ProtoError):
        p.decode_request_value(0, b"")


def test_one_definition_of_value_types_ranges_and_track_flags() -> None:
    from corosync.exec import cmap as store

    assert store.CmapType is p.ValueType and store.Track is p.TrackType
    assert store.int_range is p.int_range
    assert p.int_range(p.ValueType.INT8) == (-128, 127)
    assert p.int_range(p.ValueType.UINT16) == (0, 65535)
    assert p.int_range(p.ValueType.INT64) == (-2**63, 2**63 - 1)
    assert p.int_range(p.ValueType.UINT64) == (0, 2**64 - 1)
    with pytest.raises(ValueError):
        p.int_range(p.ValueType.DOUBLE)
    assert [t for t in p.ValueType if t.is_integer] == list(p.ValueType)[:8]
    assert [t.fixed_size for t in p.ValueType] == [1, 1, 2, 2, 4, 4, 8, 8, 4, 8, None, None]
    assert p.ValueType.UINT32.struct_code == "I" and p.ValueType.STRING.struct_code is None
    assert p.ValueType.DOUBLE.short_name == p.ValueType.DOUBLE.tag == "dbl"
