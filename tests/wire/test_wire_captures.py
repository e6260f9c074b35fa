"""Every totem packet of the shared captures decodes and re-encodes byte-identically,
and so does every totempg packet inside their MCASTs — on both backends."""

from __future__ import annotations

import collections
import struct

import pytest

from corosync.exec.totem import wire
from wire_helpers import CAPTURES, totem_datagrams

#: per capture: datagrams on the totem ports and how many of each message type
EXPECTED = {
    "udpu_2node.pcap": (1065, {"OrfToken": 871, "MergeDetect": 106, "Mcast": 61, "Join": 10,
                               "TokenHoldCancel": 9, "CommitToken": 8}),
    "udp_2node.pcap": (259, {"OrfToken": 164, "MergeDetect": 46, "Mcast": 37, "Join": 8,
                             "CommitToken": 4}),
}


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_round_trip(shared_dir, backend, capture):
    datagrams = totem_datagrams(shared_dir, capture)
    count, per_type = EXPECTED[capture]
    assert len(datagrams) == count
    seen: collections.Counter[str] = collections.Counter()
    for d in datagrams:
        msg = wire.decode(d.payload)
        seen[type(msg).__name__] += 1
        assert wire.encode(msg) == d.payload, (capture, d.timestamp, msg)
        mtype, nodeid, swapped = wire.peek_header(d.payload)
        assert (mtype, nodeid, swapped) == (msg.TYPE, msg.nodeid, False)
    assert seen == per_type


def _mcasts(shared_dir) -> list[wire.Mcast]:
    out = []
    for capture in CAPTURES:
        for d in totem_datagrams(shared_dir, capture):
            m = wire.decode(d.payload)
            if isinstance(m, wire.Mcast):
                out.append(m)
    return out


def test_totempg_round_trip(shared_dir, backend):
    groups: collections.Counter[bytes] = collections.Counter()
    exec_ids: collections.Counter[int] = collections.Counter()
    packets = 0
    for m in _mcasts(shared_dir):
        payload = m.payload
        if m.encapsulated == wire.ENCAP_RECOVERY:  # a whole older MCAST inside
            inner = wire.decode(payload)
            assert isinstance(inner, wire.Mcast) and wire.encode(inner) == payload
            payload = inner.payload
        pg = wire.decode_pg(payload)
        packets += 1
        assert (pg.version, pg.type) == (0, 0)
        assert wire.encode_pg(pg.fragmented, pg.continuation, pg.pieces) == payload
        pieces = pg.pieces[1:] if pg.continuation else pg.pieces
        for i, piece in enumerate(pieces):
            if pg.fragmented and i == len(pieces) - 1:
                if len(piece) < 2:
                    continue
            names, off = wire.decode_groups(piece)
            assert wire.encode_groups(names) == piece[:off]
            groups[names[0]] += 1
            if names == [b"a"] and len(piece) >= off + 4:
                exec_ids[struct.unpack_from("<i", piece, off)[0]] += 1
    assert packets == 98
    assert set(groups) == {b"a", b"sync"}
    # cmap mcast, cpg procjoin/joinlist/mcast/downlist, votequorum nodeinfo all occur
    assert {0x00000000, 0x00020000, 0x00020002, 0x00020003, 0x00020005,
            0x00050000} <= set(exec_ids)


def test_fragmented_downlist_reassembles(shared_dir, backend):
    """The 1573-byte CPG downlist goes out as 1400 + 173 bytes (spec §4.1)."""
    found = 0
    pending: dict[int, bytes] = {}
    for m in _mcasts(shared_dir):
        if m.encapsulated != wire.ENCAP_NORMAL:
            continue
        pg = wire.decode_pg(m.payload)
        if pg.fragmented and pg.pieces and len(pg.pieces[-1]) == 1400:
            pending[m.nodeid] = pg.pieces[-1]
        elif pg.continuation and m.nodeid in pending:
            whole = pending.pop(m.nodeid) + pg.pieces[0]
            names, off = wire.decode_groups(whole)
            ident, _pad, size = struct.unpack_from("<iii", whole, off)
            assert (names, ident, size, len(whole) - off) == ([b"a"], 0x00020005, 1568, 1568)
            found += 1
    assert found >= 2
