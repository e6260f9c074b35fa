"""Helpers for the service tests: service-level messages extracted from the shared
captures (ordered, de-duplicated, totempg-reassembled); FakeConn lives in tests/svc_sim.py."""

from __future__ import annotations

import functools
import pathlib
import struct

from attrs import define
from svc_sim import FakeConn  # noqa: F401  (re-exported: the service tests' fake IPC connection)

from corosync.exec.totem import wire
from corosync.exec.totem.pcap import PcapReader

TOTEM_PORTS = (5404, 5405)


@define
class CapMsg:
    """One reassembled totempg message from a capture."""

    sender: int
    ring: wire.RingId
    seq: int  # seq of the MCAST that completed it
    group: bytes
    body: bytes

    @property
    def exec_id(self) -> int:
        return struct.unpack_from("<i", self.body, 0)[0]


@functools.lru_cache(maxsize=None)
def capture_messages(path: str) -> tuple[CapMsg, ...]:
    """Every totempg message of the capture in agreed order (ring, seq)."""
    mcasts: dict[tuple[int, int, int], wire.Mcast] = {}
    with open(path, "rb") as f:
        for d in PcapReader(f, path):
            if d.dport not in TOTEM_PORTS:
                continue
            try:
                m = wire.decode(d.payload)
            except wire.WireError:
                continue
            if not isinstance(m, wire.Mcast) or m.encapsulated == 1:
                continue
            mcasts.setdefault((m.ring_id.seq, m.ring_id.rep, m.seq), m)
    out: list[CapMsg] = []
    partial: dict[int, bytes] = {}
    for key in sorted(mcasts):
        m = mcasts[key]
        pkt = wire.decode_pg(m.payload)
        pieces = list(pkt.pieces)
        if pkt.continuation and pieces:
            pieces[0] = partial.pop(m.nodeid, b"") + pieces[0]
        if pkt.fragmented:
            partial[m.nodeid] = pieces.pop()
        for p in pieces:
            groups, off = wire.decode_groups(p)
            out.append(CapMsg(m.nodeid, m.ring_id, m.seq, groups[0], p[off:]))
    return tuple(out)


def udpu_messages(shared: pathlib.Path) -> tuple[CapMsg, ...]:
    return capture_messages(str(shared / "spec" / "captures" / "udpu_2node.pcap"))
