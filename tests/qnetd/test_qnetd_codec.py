"""Codec: capture vectors, strict validation, fuzz."""

import re
import struct

import pytest
from hypothesis import given, settings, strategies as st

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import DecodeError, MsgType, NodeInfo, RingId, TieBreaker

CAPTURES = ["ffsplit-2node", "lms-3node", "heartbeat-dpd", "tls-2node",
            "tls-server-on-client-off", "tls-server-req-client-off"]
LINE = re.compile(r"^\s+[\d.]+\s+(\S+)\s+(C->S|S->C)\s+(\w+)\s+len=(\d+)")


def _vectors(shared_dir, name):
    lines = (shared_dir / f"spec/captures/qnetd-{name}.decoded.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        m = LINE.match(line)
        if m:
            yield m.group(2), m.group(3), bytes.fromhex(lines[i + 1].strip())


def _rebuild_client(m: P.Message) -> bytes:
    """Re-encode a client message with our builders (the order stock qdevices use)."""
    t = m.type
    if t == MsgType.PREINIT:
        return P.build_preinit(m.seq, m.cluster_name)
    if t == MsgType.STARTTLS:
        return P.build_starttls(m.seq)
    if t == MsgType.INIT:
        return P.build_init(m.seq, m.node_id, m.decision_algorithm, m.heartbeat_interval,
                            m.tie_breaker, m.ring_id)
    if t == MsgType.SET_OPTION:
        return P.build_set_option(m.seq, m.heartbeat_interval, m.keep_active_partition_tie_breaker)
    if t == MsgType.ECHO_REQUEST:
        return P.build_echo_request(m.seq)
    if t == MsgType.NODE_LIST:
        return P.build_node_list(m.seq, m.node_list_type, m.nodes, m.ring_id, m.config_version,
                                 m.quorate, m.heuristics or 0)
    if t == MsgType.VOTE_INFO_REPLY:
        return P.build_vote_info_reply(m.seq)
    raise AssertionError(t)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_messages_decode_and_client_messages_reencode(shared_dir, name):
    count = 0
    for direction, tname, data in _vectors(shared_dir, name):
        m = P.decode(data)
        assert MsgType(m.type).name == tname
        if direction == "C->S":
            assert _rebuild_client(m) == data, tname
        count += 1
    assert count >= 4


def test_byte_exact_examples_from_spec():
    assert P.build_preinit_reply(1, 0, 1).hex() == "000100000012000000040000000100020001000003000101"
    assert P.build_vote_info(1, P.Vote.ACK, RingId(1, 9)).hex() == \
        "000e0000001d00000004000000010013000101000d000c000000010000000000000009"
    assert P.build_server_error(5, 11).hex() == "00050000000e0000000400000005000600020" "00b"
    init = P.decode(bytes.fromhex(
        "0003000000930000000400000002000400240000000100020003000400050006000700080009000a000b000c"
        "000d000e000f00100011000500300000000100020003000400050006000700080009000a000b000c000d000e"
        "000f001000110012001300140015001600170009000400000001000b00020001000c000400001f4000150005"
        "0100000000000d000c000000010000000000000009"))
    assert (init.node_id, init.decision_algorithm, init.heartbeat_interval) == (1, 1, 8000)
    assert init.tie_breaker == TieBreaker(1, 0) and init.ring_id == RingId(1, 9)
    assert init.supported_messages == tuple(range(18)) and init.supported_options == tuple(range(24))
    reply = P.build_init_reply(0, 2, True, 32768, 32768)
    assert len(reply) == 6 + 134 and reply[6:12].hex() == "000600020000"
    assert str(RingId(7, 0xABCDEF0123)) == "7.abcdef0123"


def _msg(mtype: int, *tlvs: bytes) -> bytes:
    payload = b"".join(tlvs)
    return struct.pack(">HI", mtype, len(payload)) + payload


def tlv(opt: int, value: bytes) -> bytes:
    return struct.pack(">HH", opt, len(value)) + value


SEQ7 = tlv(0, b"\0\0\0\x07")


@pytest.mark.parametrize("data,seq", [
    (_msg(8), None),                                          # no TLV at all
    (_msg(8, SEQ7 + b"\0\x07"), 7),                           # 2 trailing bytes
    (_msg(8, SEQ7 + tlv(7, b"")), 7),                         # empty TLV of a sized option
    (_msg(8, b"\0"), None),                                   # 1-byte payload
    (_msg(0, tlv(0, b"\0\0\0")), None),                       # 3-byte seq
    (_msg(8, SEQ7, tlv(0, b"\0")), 7),                        # later bad seq: earlier one reported
    (_msg(3, SEQ7, tlv(21, b"\x04\0\0\0\0")), 7),             # tie-breaker mode 4
    (_msg(16, SEQ7, tlv(22, b"\0")), 7),                      # heuristics 0
    (_msg(10, SEQ7, tlv(18, b"\x09")), 7),                    # node list type 9
    (_msg(10, SEQ7, tlv(17, tlv(15, b"\0\0\0\1"))), 7),       # node_info without node id
    (_msg(10, SEQ7, tlv(17, tlv(9, b"\0\0\0\0"))), 7),        # node_info with node id 0
    (_msg(10, SEQ7, tlv(17, tlv(9, b"\0\0\0\1") + b"\0")), 7),  # junk inside node_info
    (_msg(10, SEQ7, tlv(14, b"\0\0\0\x07")), 7),              # config_version of 4 bytes
    (_msg(11, SEQ7, tlv(19, b"\0")), 7),                      # vote 0
    (_msg(11, SEQ7, tlv(19, b"\x06")), 7),                    # vote 6
    (_msg(3, SEQ7, tlv(4, b"\0\0\0")), 7),                    # odd u16 array
    (_msg(3, SEQ7, tlv(13, b"\0" * 11)), 7),                  # short ring id
    (_msg(8, SEQ7, struct.pack(">HH", 1, 10) + b"abc"), 7),   # TLV longer than message
])
def test_decode_errors(data, seq):
    with pytest.raises(DecodeError) as exc:
        P.decode(data)
    assert exc.value.seq == seq


def test_decode_rules_unknown_duplicates_node_info():
    m = P.decode(_msg(0, tlv(0, b"\0\0\0\x05"), tlv(1, b"a"), tlv(999, b"xyz"), tlv(1, b"lab"),
                      tlv(0, b"\0\0\0\x09")))
    assert (m.seq, m.cluster_name) == (9, b"lab")
    m = P.decode(_msg(0, tlv(0, b"\0\0\0\x01"), tlv(1, b"")))
    assert m.cluster_name == b""
    m = P.decode(P.build_node_list(4, 0, [NodeInfo(1), NodeInfo(1), NodeInfo(2, 42, 1)]))
    assert m.nodes == [NodeInfo(1), NodeInfo(1), NodeInfo(2, 42, 1)]
    # a trailing empty TLV of an unknown option is a real TLV
    assert P.decode(_msg(8, SEQ7 + tlv(999, b""))).seq == 7
    # junk node id in lowest mode is ignored
    assert P.decode(_msg(3, tlv(21, b"\x01\0\0\0\x05"))).tie_breaker == TieBreaker(1, 0)
    assert P.decode(_msg(3, tlv(21, b"\x03\0\0\0\x05"))).tie_breaker == TieBreaker(3, 5)


def test_echo_reply_copies_request():
    req = _msg(8, tlv(0, b"\0\0\0\x2a"), tlv(999, b"abc"), tlv(0, b"\0\0\0\x2b"))
    assert P.build_echo_reply(req).hex() == \
        "000900000017000000040000002a03e70003616263000000040000002b"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_random_payload_never_crashes(payload):
    for mtype in (0, 3, 10, 16):
        data = struct.pack(">HI", mtype, len(payload)) + payload
        try:
            P.decode(data)
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_truncated_and_flipped_valid_messages(data):
    base = data.draw(st.sampled_from([
        P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 9)),
        P.build_node_list(6, 3, [NodeInfo(2, 0, 1), NodeInfo(1, 7, 1)], quorate=1),
        P.build_node_list(5, 2, [NodeInfo(1)], ring=RingId(1, 2), heuristics=1),
    ]))
    cut = data.draw(st.integers(6, len(base) - 1))
    truncated = base[:2] + struct.pack(">I", cut - 6) + base[6:cut]
    try:
        P.decode(truncated)
    except DecodeError:
        pass
    pos = data.draw(st.integers(6, len(base) - 1))
    flipped = bytearray(base)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    try:
        P.decode(bytes(flipped))
    except DecodeError:
        pass
