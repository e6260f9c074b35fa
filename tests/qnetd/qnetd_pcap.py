"""Test helper: read the shared qnetd captures (classic pcap, Ethernet, IPv4/TCP) and turn
them into per-connection events in capture order, with TCP payload reassembled and
retransmissions dropped.  Only what the replay tests need; not a general pcap library."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

SERVER_PORT = 5403


@dataclass
class Event:
    t: float
    conn: str  # "addr:port" of the client
    kind: str  # "open", "c2s", "s2c", "fin_c", "fin_s"
    data: bytes = b""


@dataclass
class _Dir:
    next_seq: int | None = None
    fin: bool = False


@dataclass
class _Conn:
    c2s: _Dir = field(default_factory=_Dir)
    s2c: _Dir = field(default_factory=_Dir)


def read_events(path: Path) -> list[Event]:
    raw = path.read_bytes()
    magic = raw[:4]
    if magic == b"\xd4\xc3\xb2\xa1":
        endian, scale = "<", 1e-6
    elif magic == b"\x4d\x3c\xb2\xa1":
        endian, scale = "<", 1e-9
    else:
        raise ValueError("unsupported pcap")
    linktype = struct.unpack_from(endian + "I", raw, 20)[0]
    assert linktype == 1, linktype
    pos = 24
    conns: dict[str, _Conn] = {}
    events: list[Event] = []
    t0 = None
    while pos + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack_from(endian + "IIII", raw, pos)
        pkt = raw[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        t = sec + frac * scale
        if t0 is None:
            t0 = t
        if len(pkt) < 14 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        if ip[9] != 6:
            continue
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        off = (tcp[12] >> 4) * 4
        flags = tcp[13]
        payload = bytes(tcp[off:])
        if dport == SERVER_PORT:
            key, to_server = f"{src}:{sport}", True
        elif sport == SERVER_PORT:
            key, to_server = f"{dst}:{dport}", False
        else:
            continue
        rel = t - t0
        syn, fin, rst = flags & 2, flags & 1, flags & 4
        conn = conns.get(key)
        if syn and to_server and not (flags & 16):
            conns[key] = conn = _Conn()
            conn.c2s.next_seq = (seq + 1) & 0xFFFFFFFF
            events.append(Event(rel, key, "open"))
            continue
        if conn is None:
            continue
        d = conn.c2s if to_server else conn.s2c
        if syn:
            d.next_seq = (seq + 1) & 0xFFFFFFFF
            continue
        if d.next_seq is None:
            continue
        if payload:
            skip = (d.next_seq - seq) & 0xFFFFFFFF
            if skip < len(payload):
                data = payload[skip:]
                d.next_seq = (d.next_seq + len(data)) & 0xFFFFFFFF
                events.append(Event(rel, key, "c2s" if to_server else "s2c", data))
        if (fin or rst) and not d.fin:
            d.fin = True
            events.append(Event(rel, key, "fin_c" if to_server else "fin_s"))
    return events


def split_messages(stream: bytes) -> list[bytes]:
    """Split a plain (non-TLS) qnetd byte stream into whole messages."""
    out = []
    pos = 0
    while pos + 6 <= len(stream):
        length = struct.unpack_from(">I", stream, pos + 2)[0]
        if pos + 6 + length > len(stream):
            break
        out.append(stream[pos:pos + 6 + length])
        pos += 6 + length
    return out
