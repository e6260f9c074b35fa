"""Minimal pcap / pcapng reader that yields UDP datagrams.

Enough of a dissector to feed captured totem traffic to the codec (``corosync-totemdump``,
the wire test vectors) without tcpdump/tshark: link types Ethernet (with 802.1Q/802.1ad
tags), Linux cooked SLL and SLL2, raw IP and BSD loopback; IPv4 and IPv6 (extension headers
skipped); IPv4 and IPv6 fragment reassembly; UDP.  Everything else is counted in
:attr:`PcapReader.stats` and skipped.

A file that ends in the middle of a header or record raises :class:`PcapError` naming the
offset, after every complete datagram before it has been yielded: a capture cut short by a
killed tcpdump is common and its first part is still useful.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from typing import BinaryIO, Iterator, NamedTuple

__all__ = ["PcapError", "UdpDatagram", "PcapReader", "read_udp"]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_IPPROTO_UDP = 17
_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options (fragment = 44)
_IPV6_FRAG = 44

#: fragments are dropped when their datagram is not complete after this many packets
_FRAG_MAX_PENDING = 1024


class PcapError(ValueError):
    """The file is not a (complete) pcap/pcapng capture."""


class UdpDatagram(NamedTuple):
    timestamp: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


class _Frags:
    """Fragments of one IP datagram: byte ranges until the last one arrives and the
    ranges cover 0..total without holes."""

    __slots__ = ("parts", "total", "proto")

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.total: int | None = None
        self.proto = -1

    def add(self, offset: int, data: bytes, more: bool) -> bytes | None:
        self.parts[offset] = data
        if not more:
            self.total = offset + len(data)
        if self.total is None:
            return None
        out = bytearray()
        for off in sorted(self.parts):
            if off > len(out):
                return None  # hole: wait for more
            out[off:off + len(self.parts[off])] = self.parts[off]
        if len(out) < self.total:
            return None
        return bytes(out[:self.total])


class PcapReader:
    """Iterate over the UDP datagrams of a pcap or pcapng stream."""

    def __init__(self, f: BinaryIO, name: str = "<capture>") -> None:
        self._f = f
        self.name = name
        self._offset = 0
        #: what was skipped and why (non_ip, non_udp, snaplen_cut, bad_ip, ...)
        self.stats: Counter[str] = Counter()
        self._frags: dict[tuple, _Frags] = {}

    # ------------------------------------------------------------------ file level
    def _read(self, n: int, what: str) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise PcapError(f"{self.name}: truncated {what} at offset {self._offset} "
                            f"({len(data)} of {n} bytes)")
        self._offset += n
        return data

    def __iter__(self) -> Iterator[UdpDatagram]:
        head = self._f.read(4)
        self._offset = len(head)
        if len(head) < 4:
            raise PcapError(f"{self.name}: empty or truncated file ({len(head)} bytes)")
        if head == b"\x0a\x0d\x0d\x0a":
            yield from self._iter_pcapng(head)
        else:
            yield from self._iter_pcap(head)

    def _iter_pcap(self, magic: bytes) -> Iterator[UdpDatagram]:
        formats = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
                   b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
        if magic not in formats:
            raise PcapError(f"{self.name}: not a pcap/pcapng file (magic {magic.hex()})")
        order, scale = formats[magic]
        _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack(
            order + "HHiIII", self._read(20, "pcap file header"))
        linktype &= 0x0FFFFFFF  # upper bits: FCS info
        rec = struct.Struct(order + "IIII")
        while True:
            start = self._f.read(16)
            if not start:
                return
            if len(start) < 16:
                raise PcapError(f"{self.name}: truncated record header at offset "
                                f"{self._offset}")
            self._offset += 16
            sec, frac, caplen, origlen = rec.unpack(start)
            if caplen > 0x4000000:
                raise PcapError(f"{self.name}: absurd record length {caplen} at offset "
                                f"{self._offset - 16}")
            data = self._read(caplen, "record")
            yield from self._frame(linktype, sec + frac * scale, data, caplen < origlen)

    def _iter_pcapng(self, first: bytes) -> Iterator[UdpDatagram]:
        order = "<"
        links: list[tuple[int, float]] = []  # per interface: linktype, ts unit (s)
        block_type_raw = first
        while True:
            if block_type_raw is None:
                block_type_raw = self._f.read(4)
                if not block_type_raw:
                    return
                if len(block_type_raw) < 4:
                    raise PcapError(f"{self.name}: truncated block at offset {self._offset}")
                self._offset += 4
            length_raw = self._read(4, "block length")
            if block_type_raw == b"\x0a\x0d\x0d\x0a":  # section header: fixes byte order
                bom = self._read(4, "section header")
                order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise PcapError(f"{self.name}: bad pcapng byte-order magic")
                (length,) = struct.unpack(order + "I", length_raw)
                if length < 28 or length % 4:
                    raise PcapError(f"{self.name}: bad section header length {length}")
                self._read(length - 12, "section header")
                links = []
                block_type_raw = None
                continue
            (btype,) = struct.unpack(order + "I", block_type_raw)
            (length,) = struct.unpack(order + "I", length_raw)
            if length < 12 or length % 4 or length > 0x4000000:
                raise PcapError(f"{self.name}: bad block length {length} at offset "
                                f"{self._offset - 8}")
            body = self._read(length - 12, "block body")
            self._read(4, "block trailer")
            block_type_raw = None
            if btype == 1 and len(body) >= 8:  # interface description
                linktype = struct.unpack_from(order + "H", body, 0)[0]
                links.append((linktype, self._ts_unit(body[8:], order)))
            elif btype == 6 and len(body) >= 20:  # enhanced packet
                ifid, hi, lo, caplen, origlen = struct.unpack_from(order + "IIIII", body, 0)
                if ifid >= len(links) or 20 + caplen > len(body):
                    self.stats["bad_block"] += 1
                    continue
                linktype, unit = links[ifid]
                yield from self._frame(linktype, ((hi << 32) | lo) * unit,
                                       body[20:20 + caplen], caplen < origlen)
            elif btype == 3 and len(body) >= 4 and links:  # simple packet
                (origlen,) = struct.unpack_from(order + "I", body, 0)
                data = body[4:4 + origlen]
                yield from self._frame(links[0][0], 0.0, data, len(data) < origlen)

    @staticmethod
    def _ts_unit(options: bytes, order: str) -> float:
        off = 0
        while off + 4 <= len(options):
            code, ln = struct.unpack_from(order + "HH", options, off)
            if code == 0:
                break
            if code == 9 and ln >= 1 and off + 5 <= len(options):  # if_tsresol
                v = options[off + 4]
                return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
            off += 4 + ((ln + 3) & ~3)
        return 1e-6

    # ------------------------------------------------------------------ packet level
    def _frame(self, linktype: int, ts: float, data: bytes, cut: bool
               ) -> Iterator[UdpDatagram]:
        if linktype == LINKTYPE_ETHERNET:
            if len(data) < 14:
                self.stats["short_frame"] += 1
                return
            off, ethertype = 14, struct.unpack_from(">H", data, 12)[0]
            while ethertype in _ETH_VLAN and len(data) >= off + 4:
                ethertype = struct.unpack_from(">H", data, off + 2)[0]
                off += 4
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(data) < 16:
                self.stats["short_frame"] += 1
                return
            off, ethertype = 16, struct.unpack_from(">H", data, 14)[0]
        elif linktype == LINKTYPE_LINUX_SLL2:
            if len(data) < 20:
                self.stats["short_frame"] += 1
                return
            off, ethertype = 20, struct.unpack_from(">H", data, 0)[0]
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
            if not data:
                return
            off, ethertype = 0, _ETH_IPV6 if data[0] >> 4 == 6 else _ETH_IPV4
        elif linktype == LINKTYPE_NULL:
            if len(data) < 4:
                self.stats["short_frame"] += 1
                return
            family = struct.unpack_from("<I", data, 0)[0]
            if family > 0xFFFF:
                family = struct.unpack_from(">I", data, 0)[0]
            off, ethertype = 4, _ETH_IPV4 if family == 2 else _ETH_IPV6
        else:
            self.stats[f"linktype_{linktype}"] += 1
            return
        if ethertype == _ETH_IPV4:
            yield from self._ipv4(ts, data[off:], cut)
        elif ethertype == _ETH_IPV6:
            yield from self._ipv6(ts, data[off:], cut)
        else:
            self.stats["non_ip"] += 1

    def _ipv4(self, ts: float, pkt: bytes, cut: bool) -> Iterator[UdpDatagram]:
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            self.stats["bad_ip"] += 1
            return
        ihl = (pkt[0] & 0x0F) * 4
        total, ident, frag = struct.unpack_from(">HHH", pkt, 2)
        proto = pkt[9]
        if ihl < 20 or total < ihl:
            self.stats["bad_ip"] += 1
            return
        if total > len(pkt):
            self.stats["snaplen_cut" if cut else "bad_ip"] += 1
            return
        src = str(ipaddress.IPv4Address(pkt[12:16]))
        dst = str(ipaddress.IPv4Address(pkt[16:20]))
        body = pkt[ihl:total]  # drops Ethernet padding
        more, offset = bool(frag & 0x2000), (frag & 0x1FFF) * 8
        if more or offset:
            body = self._reassemble(("4", src, dst, ident, proto), offset, body, more)
            if body is None:
                return
        if proto != _IPPROTO_UDP:
            self.stats["non_udp"] += 1
            return
        yield from self._udp(ts, src, dst, body)

    def _ipv6(self, ts: float, pkt: bytes, cut: bool) -> Iterator[UdpDatagram]:
        if len(pkt) < 40 or pkt[0] >> 4 != 6:
            self.stats["bad_ip"] += 1
            return
        plen = struct.unpack_from(">H", pkt, 4)[0]
        if 40 + plen > len(pkt):
            self.stats["snaplen_cut" if cut else "bad_ip"] += 1
            return
        nxt = pkt[6]
        src = str(ipaddress.IPv6Address(pkt[8:24]))
        dst = str(ipaddress.IPv6Address(pkt[24:40]))
        body = pkt[40:40 + plen]
        while nxt in _IPV6_EXT or nxt == _IPV6_FRAG:
            if len(body) < 8:
                self.stats["bad_ip"] += 1
                return
            if nxt == _IPV6_FRAG:
                nxt2 = body[0]
                offfl, ident = struct.unpack_from(">HI", body, 2)
                frag = self._reassemble(("6", src, dst, ident), offfl & 0xFFF8, body[8:],
                                        bool(offfl & 1))
                if frag is None:
                    return
                body, nxt = frag, nxt2
                continue
            ext_len = (body[1] + 1) * 8
            if ext_len > len(body):
                self.stats["bad_ip"] += 1
                return
            nxt, body = body[0], body[ext_len:]
        if nxt != _IPPROTO_UDP:
            self.stats["non_udp"] += 1
            return
        yield from self._udp(ts, src, dst, body)

    def _reassemble(self, key: tuple, offset: int, data: bytes, more: bool) -> bytes | None:
        entry = self._frags.get(key)
        if entry is None:
            if len(self._frags) >= _FRAG_MAX_PENDING:
                self._frags.pop(next(iter(self._frags)))
                self.stats["fragments_dropped"] += 1
            entry = self._frags[key] = _Frags()
        whole = entry.add(offset, data, more)
        if whole is not None:
            del self._frags[key]
            self.stats["reassembled"] += 1
        return whole

    def _udp(self, ts: float, src: str, dst: str, seg: bytes) -> Iterator[UdpDatagram]:
        if len(seg) < 8:
            self.stats["bad_udp"] += 1
            return
        sport, dport, length = struct.unpack_from(">HHH", seg, 0)
        if length < 8 or length > len(seg):
            self.stats["bad_udp"] += 1
            return
        yield UdpDatagram(ts, src, sport, dst, dport, bytes(seg[8:length]))


def read_udp(path: str) -> Iterator[UdpDatagram]:
    """Yield every UDP datagram of the capture file ``path``."""
    with open(path, "rb") as f:
        yield from PcapReader(f, str(path))
