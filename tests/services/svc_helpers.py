"""Helpers for the service tests: service-level messages extracted from the shared
captures (ordered, de-duplicated, totempg-reassembled), and a fake IPC connection."""

from __future__ import annotations

import functools
import pathlib
import struct
from typing import Any

from attrs import define, field

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


@define
class FakeConn:
    """Stands in for exec/ipc IpcConnection: records responses and events."""

    pid: int = 1000
    uid: int = 0
    gid: int = 0
    context: Any = None
    closed: bool = False
    responses: list[tuple[int, bytes, int]] = field(factory=list)
    events: list[tuple[int, bytes, int]] = field(factory=list)
    fc_level: int = 0
    max_msg_size: int = 1024 * 1024

    def _check(self, payload: bytes) -> None:
        if 24 + len(payload) > self.max_msg_size:  # as IpcConnection._build
            raise ValueError("message exceeds the client's max_msg_size")

    def send_response(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self._check(payload)
        self.responses.append((msg_id, bytes(payload), int(error)))
        return True

    def send_event(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self._check(payload)
        self.events.append((msg_id, bytes(payload), int(error)))
        return True

    def set_flow_control(self, level: int) -> None:
        self.fc_level = level

    def close(self, reason: str = "") -> None:
        self.closed = True
