"""Annotated vectors of spec Appendix A decode to the documented field values, and the
big-endian (byte-swapped) version of every message decodes to the same values."""

from __future__ import annotations

import struct

import pytest

from corosync.exec.totem import wire
from corosync.exec.totem.wire import (CommitToken, Join, Mcast, MembEntry, MergeDetect,
                                      OrfToken, RingId, RtrItem, TokenHoldCancel)
from wire_helpers import all_payloads, be_encode, be_encode_pg


def hexdump(text: str) -> bytes:
    """Parse the spec's ``0000: 70 c0 ...`` dump lines (annotations after 3 spaces)."""
    out = bytearray()
    for line in text.strip().splitlines():
        _off, rest = line.split(":", 1)
        out += bytes.fromhex(rest.split("   ")[0])
    return bytes(out)


A1_JOIN = hexdump("""
0000: 70 c0 03 03 00 01 00 00 00 00 00 00 00 01 00 00
0016: 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00
0032: 00 01 00 00 00
""")
A2_MERGE = hexdump("""
0000: 70 c0 03 02 00 01 00 00 00 fc 81 4a 38 01 00 00
0016: 00 01 00 00 00 05 00 00 00 00 00 00 00
""")
A3_COMMIT = hexdump("""
0000: 70 c0 03 04 00 01 00 00 00 00 00 00 00 01 00 00
0016: 00 01 00 00 00 09 00 00 00 00 00 00 00 00 00 00
0032: 00 01 00 00 00 02 00 00 00 01 00 00 00 02 00 00
0048: 00 01 00 00 00 05 00 00 00 00 00 00 00 08 00 00
0064: 00 08 00 00 00 01 00 00 00 00 00 00 00 00 00 00
0080: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0096: 00
""")
A4_ORF = hexdump("""
0000: 70 c0 03 00 00 02 00 00 00 00 00 00 02 00 00 00
0016: 00 01 00 00 00 ff ff ff ff 01 00 00 00 01 00 00
0032: 00 09 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0048: 00 00 00 00 00 00 00 00 00
""")
A5_HOLD = hexdump("""
0000: 70 c0 03 05 00 02 00 00 00 00 00 00 00 01 00 00
0016: 00 09 00 00 00 00 00 00 00
""")
# A.6 with the elided zero-filled name region restored (name value: 128 bytes at @84).
A6_HEAD = hexdump("""
0000: 70 c0 03 01 02 01 00 00 00 00 00 00 00 01 00 00
0016: 00 13 00 00 00 10 00 00 00 01 00 00 00 09 00 00
0032: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
0048: 00 00 00 01 00 c7 00 01 00 01 00 61 03 00 02 00
0064: 00 00 00 00 c2 00 00 00 00 00 00 00 04 00 00 00
0080: 00 00 00 00 67 72 70 31 00 00 00 00 00 00 00 00
""")
A6_TAIL = hexdump("""
0208: 00 00 00 00 0a 00 00 00 00 00 00 00 da 24 00 00
0224: 00 00 00 00 01 00 00 00 00 00 00 00 30 cd 2c a1
0240: ab 55 00 00 68 65 6c 6c 6f 46 72 6f 6d 41
""")
A6_MCAST = A6_HEAD + bytes(208 - len(A6_HEAD)) + A6_TAIL

R19 = RingId(1, 9)
VECTORS = {
    "A.1 join": (A1_JOIN, Join(nodeid=1, system_from=1, proc_list=(1,), failed_list=(),
                                 ring_seq=1, target_nodeid=0)),
    "A.2 merge detect": (A2_MERGE, MergeDetect(nodeid=1, system_from=1, ring_id=RingId(1, 5),
                                               target_nodeid=0x384A81FC)),
    "A.3 commit token": (A3_COMMIT, CommitToken(
        nodeid=1, token_seq=1, ring_id=R19, memb_index=1, addr=[1, 2],
        memb_list=[MembEntry(RingId(1, 5), 8, 8, 1), MembEntry(RingId(0, 0), 0, 0, 0)],
        retrans_flg=0, target_nodeid=0)),
    "A.4 orf token": (A4_ORF, OrfToken(nodeid=2, seq=0, token_seq=1, aru=0xFFFFFFFF,
                                       aru_addr=1, ring_id=R19, backlog=0, fcc=0,
                                       retrans_flg=0, rtr_list=[], target_nodeid=0x02000000)),
    "A.5 token hold cancel": (A5_HOLD, TokenHoldCancel(nodeid=2, ring_id=R19,
                                                       target_nodeid=0)),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_appendix_a_vector(backend, name):
    data, expected = VECTORS[name]
    msg = wire.decode(data)
    assert msg == expected
    assert wire.encode(msg) == data
    assert wire.peek_header(data) == (expected.TYPE, expected.nodeid, False)


def test_appendix_a4_garbage_target_is_kept():
    """A.4's target bytes (@9) are ``00 00 00 02`` = 0x02000000, not 2.  Guard the vector:
    the spec calls them garbage, the codec keeps them verbatim."""
    assert struct.unpack_from("<I", A4_ORF, 9)[0] == 0x02000000


def test_appendix_a6_cpg_mcast(backend):
    assert len(A6_MCAST) == 254
    m = wire.decode(A6_MCAST)
    assert isinstance(m, Mcast)
    assert (m.nodeid, m.system_from, m.seq, m.this_seqno, m.ring_id, m.node_id, m.guarantee,
            m.encapsulated, m.swapped) == (1, 1, 19, 16, R19, 0, 0, wire.ENCAP_NORMAL, False)
    pg = wire.decode_pg(m.payload)
    assert (pg.version, pg.type, pg.fragmented, pg.continuation) == (0, 0, 0, 0)
    assert [len(p) for p in pg.pieces] == [199]
    groups, off = wire.decode_groups(pg.pieces[0])
    assert (groups, off) == ([b"a"], 5)
    svc = pg.pieces[0][off:]
    ident, size, name_len = struct.unpack_from("<i4xi4xI", svc, 0)
    assert (ident, size, name_len, len(svc)) == (0x00020003, 194, 4, 194)
    assert svc[24:28] == b"grp1"
    msglen, pid, src_nodeid = struct.unpack_from("<I4xI4xI", svc, 152)
    assert (msglen, pid, src_nodeid) == (10, 9434, 1)
    assert svc[184:] == b"helloFromA"
    assert wire.encode(m) == A6_MCAST


# ------------------------------------------------------------------ big-endian senders
def _normalised(m):
    """Decoded value without the per-decode ``swapped`` flag of MCAST."""
    if isinstance(m, Mcast):
        return (m.nodeid, m.system_from, m.seq, m.ring_id, m.payload, m.this_seqno,
                m.node_id, m.guarantee, m.encapsulated, m.target_nodeid)
    return m


SYNTHETIC = [
    OrfToken(7, 100, 55, 90, 3, RingId(3, 0x1_0000_0004), 12, 9, -1,
             [RtrItem(RingId(3, 0x1_0000_0004), 91 + i) for i in range(30)], 0xDEADBEEF),
    Join(0, 4, (1, 2, 3), (9, 4), 0xFFFF_FFFF_FFFF_FFF0, 1),
    CommitToken(1, 3, RingId(1, 17), 2, [1, 2, 3],
                [MembEntry(RingId(1, 13), 5, 6, 1), MembEntry(RingId(2, 9), 0xFFFFFFFF, 7, 0),
                 MembEntry()], 0, 0),
    Mcast(2, 2, 0xFFFFFFFF, RingId(1, 9), b"xyz", -5, 0, 1, wire.ENCAP_RECOVERY, 3),
]


def test_swapped_every_capture_message(shared_dir, backend):
    n = 0
    for payload in all_payloads(shared_dir):
        msg = wire.decode(payload)
        be = be_encode(msg)
        assert be[:2] == b"\xc0\x70"
        assert wire.peek_header(be) == (msg.TYPE, msg.nodeid, True)
        swapped = wire.decode(be)
        assert _normalised(swapped) == _normalised(msg)
        if isinstance(msg, Mcast):
            assert swapped.swapped and not msg.swapped
        assert wire.encode(swapped) == payload  # always re-encoded little-endian
        n += 1
    assert n == 1324


@pytest.mark.parametrize("msg", SYNTHETIC, ids=lambda m: type(m).__name__)
def test_swapped_synthetic(backend, msg):
    le, be = wire.encode(msg), be_encode(msg)
    assert le != be
    assert _normalised(wire.decode(be)) == _normalised(wire.decode(le)) == _normalised(msg)


def test_swapped_totempg(shared_dir, backend):
    n = 0
    for payload in all_payloads(shared_dir):
        m = wire.decode(payload)
        if not isinstance(m, Mcast) or m.encapsulated != wire.ENCAP_NORMAL:
            continue
        pg = wire.decode_pg(m.payload)
        assert wire.decode_pg(be_encode_pg(pg), True) == pg
        n += 1
    big = wire.PgPacket(3, 2, [b"q" * k for k in (0, 1, 300, 2)], -2, 7)
    assert wire.decode_pg(be_encode_pg(big), True) == big
    assert n > 90
