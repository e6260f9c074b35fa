"""Helpers shared by the wire tests: capture loading, an independent big-endian encoder
(written from the spec tables, not from wire.py) and a backend-neutral "outcome"."""

from __future__ import annotations

import functools
import os
import pathlib
import struct
from typing import Any

import pytest

from corosync.exec.totem import wire
from corosync.exec.totem.pcap import PcapReader, UdpDatagram

CAPTURES = ("udpu_2node.pcap", "udp_2node.pcap")
BACKENDS = ["pure", "c"]
TOTEM_PORTS = (5404, 5405)


def backend_impl(name: str) -> dict:
    """The hook table of backend ``name``.  ``c`` is the C implementation of *every* hook
    (not the per-op mix of ``wire.set_backend("c")``).  Without the extension: skip with
    the reason printed, or fail when the env var ``CI`` is set (CI builds it)."""
    if name == "pure":
        return dict(wire._PURE_IMPL)
    try:
        from corosync.exec.totem import _wire_c
    except ImportError as exc:
        reason = f"C codec extension unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the extension must be built)")
        print(reason)
        pytest.skip(reason)
    return _wire_c.make_c_impl(vars(wire))


@functools.lru_cache(maxsize=None)
def _load(path: str) -> tuple[UdpDatagram, ...]:
    with open(path, "rb") as f:
        return tuple(d for d in PcapReader(f, path) if d.dport in TOTEM_PORTS)


def totem_datagrams(shared: pathlib.Path, name: str) -> tuple[UdpDatagram, ...]:
    return _load(str(shared / "spec" / "captures" / name))


def all_payloads(shared: pathlib.Path) -> list[bytes]:
    return [d.payload for name in CAPTURES for d in totem_datagrams(shared, name)]


def outcome(impl: dict, fn: str, *args: Any) -> tuple[str, Any]:
    """Run ``wire.<fn>(*args)`` with hook table ``impl`` installed; return ("ok", value)
    or ("error", reason).  Anything other than WireError propagates (a test failure)."""
    wire._install(impl)
    try:
        return "ok", getattr(wire, fn)(*args)
    except wire.WireError as exc:
        return "error", exc.reason


# ----------------------------------------------------------------- big-endian encoder
def _hdr(mtype: int, encap: int, nodeid: int, target: int) -> bytes:
    return struct.pack(">HBBBII", 0xC070, 3, mtype, encap, nodeid, target)


def be_encode(m: wire.Message) -> bytes:
    """Encode ``m`` as a big-endian sender would (spec §2.1: every multi-byte field in
    the sender's order, magic included).  MCAST payloads are copied as they are."""
    if isinstance(m, wire.OrfToken):
        out = _hdr(0, 0, m.nodeid, m.target_nodeid) + struct.pack(
            ">IIIIIQIIii", m.seq, m.token_seq, m.aru, m.aru_addr, m.ring_id.rep,
            m.ring_id.seq, m.backlog, m.fcc, m.retrans_flg, len(m.rtr_list))
        for it in m.rtr_list:
            out += struct.pack(">IQI", it.ring_id.rep, it.ring_id.seq, it.seq)
        return out
    if isinstance(m, wire.Mcast):
        return _hdr(1, m.encapsulated, m.nodeid, m.target_nodeid) + struct.pack(
            ">IIiIQIi", m.system_from, m.seq, m.this_seqno, m.ring_id.rep, m.ring_id.seq,
            m.node_id, m.guarantee) + m.payload
    if isinstance(m, wire.MergeDetect):
        return _hdr(2, 0, m.nodeid, m.target_nodeid) + struct.pack(
            ">IIQ", m.system_from, m.ring_id.rep, m.ring_id.seq)
    if isinstance(m, wire.Join):
        p, f = m.proc_list, m.failed_list
        return (_hdr(3, 0, m.nodeid, m.target_nodeid)
                + struct.pack(">IIIQ", m.system_from, len(p), len(f), m.ring_seq)
                + struct.pack(f">{len(p) + len(f)}I", *p, *f))
    if isinstance(m, wire.CommitToken):
        out = _hdr(4, 0, m.nodeid, m.target_nodeid) + struct.pack(
            ">IIQIii", m.token_seq, m.ring_id.rep, m.ring_id.seq, m.retrans_flg,
            m.memb_index, len(m.addr))
        out += struct.pack(f">{len(m.addr)}I", *m.addr)
        for e in m.memb_list:
            out += struct.pack(">IQIII", e.ring_id.rep, e.ring_id.seq, e.aru,
                               e.high_delivered, e.received_flg)
        return out
    if isinstance(m, wire.TokenHoldCancel):
        return _hdr(5, 0, m.nodeid, m.target_nodeid) + struct.pack(
            ">IQ", m.ring_id.rep, m.ring_id.seq)
    raise TypeError(m)


def be_encode_pg(p: wire.PgPacket) -> bytes:
    lens = [len(x) for x in p.pieces]
    return (struct.pack(">hhBBH", p.version, p.type, p.fragmented, p.continuation, len(lens))
            + struct.pack(f">{len(lens)}H", *lens) + b"".join(p.pieces))
