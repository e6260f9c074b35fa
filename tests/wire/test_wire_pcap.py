"""pcap/pcapng reader: link types, IPv4/IPv6, fragment reassembly, truncated files."""

from __future__ import annotations

import io
import ipaddress
import struct

import pytest

from corosync.exec.totem.pcap import PcapError, PcapReader, UdpDatagram, read_udp

SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "fd00::1", "fd00::2"


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, body: bytes, ident: int = 7, frag: int = 0,
         proto: int = 17) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed,
                       ipaddress.IPv4Address(dst).packed) + body


def ipv6(src: str, dst: str, body: bytes, nxt: int = 17) -> bytes:
    return struct.pack(">IHBB16s16s", 6 << 28, len(body), nxt, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + body


def ether(ip: bytes, v6: bool = False, vlan: bool = False) -> bytes:
    etype = 0x86DD if v6 else 0x0800
    tag = struct.pack(">HH", 0x8100, 5) if vlan else b""
    return bytes(6) + bytes(6) + tag + struct.pack(">H", etype) + ip


def sll(ip: bytes, v6: bool = False) -> bytes:
    return struct.pack(">HHH8sH", 0, 1, 6, bytes(8), 0x86DD if v6 else 0x0800) + ip


def sll2(ip: bytes, v6: bool = False) -> bytes:
    return struct.pack(">HHIHBB8s", 0x86DD if v6 else 0x0800, 0, 2, 1, 0, 6, bytes(8)) + ip


def pcap(linktype: int, frames: list[bytes], big: bool = False, nano: bool = False) -> bytes:
    o = ">" if big else "<"
    out = struct.pack(o + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535,
                      linktype)
    for i, f in enumerate(frames):
        out += struct.pack(o + "IIII", 100 + i, 500, len(f), len(f)) + f
    return out


def read(data: bytes) -> tuple[list[UdpDatagram], PcapReader]:
    r = PcapReader(io.BytesIO(data), "test.pcap")
    return list(r), r


@pytest.mark.parametrize("link,frame", [(1, ether), (113, sll), (276, sll2)])
@pytest.mark.parametrize("v6", [False, True])
def test_link_types_and_ip_versions(link, frame, v6):
    src, dst, ip = (SRC6, DST6, ipv6) if v6 else (SRC4, DST4, ipv4)
    frames = [frame(ip(src, dst, udp(5404, 5405, b"hello")), v6=v6),
              frame(ip(src, dst, udp(1, 2, b"")), v6=v6)]
    got, _ = read(pcap(link, frames))
    assert got == [UdpDatagram(100.0005, src, 5404, dst, 5405, b"hello"),
                   UdpDatagram(101.0005, src, 1, dst, 2, b"")]


def test_byte_orders_nanoseconds_vlan_and_padding():
    frame = ether(ipv4(SRC4, DST4, udp(9, 10, b"x")), vlan=True) + bytes(20)  # eth padding
    for big in (False, True):
        got, _ = read(pcap(1, [frame], big=big, nano=True))
        assert got[0].payload == b"x" and got[0].timestamp == pytest.approx(100 + 500e-9)


def test_ipv4_fragments_reassembled_out_of_order():
    payload = bytes(range(256)) * 12
    dgram = udp(5404, 5405, payload)
    parts = [dgram[0:1480], dgram[1480:2960], dgram[2960:]]
    frames = [ether(ipv4(SRC4, DST4, parts[2], frag=2960 // 8)),
              ether(ipv4(SRC4, DST4, parts[0], frag=0x2000)),
              ether(ipv4(SRC4, DST4, b"unrelated", ident=8, frag=0x2000)),
              ether(ipv4(SRC4, DST4, parts[1], frag=0x2000 | 1480 // 8))]
    got, r = read(pcap(1, frames))
    assert [g.payload for g in got] == [payload]
    assert got[0].timestamp == pytest.approx(103.0005)
    assert r.stats["reassembled"] == 1


def test_ipv6_fragments_and_extension_headers():
    payload = b"v6" * 900
    dgram = udp(5405, 5405, payload)
    a, b = dgram[:1232], dgram[1232:]
    hop = bytes([44, 0]) + bytes(6)  # hop-by-hop options, next = fragment

    def fragment(offset: int, more: bool, data: bytes) -> bytes:
        return struct.pack(">BBHI", 17, 0, offset | int(more), 0x1234) + data

    frames = [ether(ipv6(SRC6, DST6, hop + fragment(0, True, a), nxt=0), v6=True),
              ether(ipv6(SRC6, DST6, fragment(1232, False, b), nxt=44), v6=True)]
    got, _ = read(pcap(1, frames))
    assert [(g.src, g.dport, g.payload) for g in got] == [(SRC6, 5405, payload)]


def test_non_udp_and_unknown_are_counted():
    frames = [ether(ipv4(SRC4, DST4, b"tcp-ish", proto=6)),
              bytes(12) + b"\x08\x06" + bytes(28),  # ARP
              ether(ipv4(SRC4, DST4, udp(1, 2, b"ok")))]
    got, r = read(pcap(1, frames))
    assert len(got) == 1 and r.stats["non_udp"] == 1 and r.stats["non_ip"] == 1
    got, r = read(pcap(147, frames))
    assert got == [] and r.stats["linktype_147"] == 3


def test_snaplen_cut_packet_skipped():
    frame = ether(ipv4(SRC4, DST4, udp(1, 2, bytes(100))))
    data = pcap(1, [frame])
    cut = bytearray(data[:24] + struct.pack("<IIII", 1, 0, 60, len(frame)) + frame[:60])
    got, r = read(bytes(cut))
    assert got == [] and r.stats["snaplen_cut"] == 1


@pytest.mark.parametrize("cut", [0, 3, 10, 24 + 8, 24 + 16 + 5])
def test_truncated_file_raises_clear_error(cut):
    data = pcap(1, [ether(ipv4(SRC4, DST4, udp(1, 2, b"abc")))] * 2)
    whole, _ = read(data)
    assert len(whole) == 2
    with pytest.raises(PcapError, match="truncated|empty"):
        read(data[:cut])
    # a cut inside the second record still yields the first datagram before failing
    got = []
    with pytest.raises(PcapError, match="test.pcap: truncated record"):
        for d in PcapReader(io.BytesIO(data[:-3]), "test.pcap"):
            got.append(d)
    assert got == whole[:1]


def test_not_a_capture():
    with pytest.raises(PcapError, match="not a pcap"):
        read(b"GIF89a" + bytes(40))


def _pcapng(frames: list[bytes], tsresol: int | None = None) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = b""
    if tsresol is not None:
        opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    out += block(1, struct.pack("<HHI", 1, 0, 65535) + opts)
    for i, f in enumerate(frames):
        ts = (7 + i) * 1_000_000
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f)
    return out


def test_pcapng():
    frames = [ether(ipv4(SRC4, DST4, udp(5404, 5405, b"ng"))),
              ether(ipv6(SRC6, DST6, udp(5405, 5405, b"ng6")), v6=True)]
    got, _ = read(_pcapng(frames))
    assert [(g.timestamp, g.payload) for g in got] == [(7.0, b"ng"), (8.0, b"ng6")]
    got, _ = read(_pcapng(frames, tsresol=3))  # milliseconds
    assert got[0].timestamp == pytest.approx(7000.0)
    with pytest.raises(PcapError, match="truncated"):
        read(_pcapng(frames)[:-6])


def test_shared_captures(shared_dir):
    for name, count in (("udpu_2node.pcap", 1065), ("udp_2node.pcap", 259)):
        got = list(read_udp(str(shared_dir / "spec" / "captures" / name)))
        assert len(got) == count
        assert all(g.dport == 5405 for g in got)
        assert all(g.src.startswith(("10.", "192.", "172.", "198.")) for g in got)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SEED_FILES = [
    pcap(1, [ether(ipv4(SRC4, DST4, udp(5404, 5405, b"a" * 40))),
             ether(ipv6(SRC6, DST6, udp(5405, 5405, b"b" * 9)), v6=True),
             ether(ipv4(SRC4, DST4, b"frag" * 4, frag=0x2000))]),
    pcap(276, [sll2(ipv4(SRC4, DST4, udp(1, 2, b"c")))], big=True),
    _pcapng([ether(ipv4(SRC4, DST4, udp(5404, 5405, b"ng")))], tsresol=0x86),
]


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SEED_FILES), data=st.data())
def test_mutated_captures_never_crash(seed, data):
    """Corrupted captures yield datagrams or raise PcapError — nothing else."""
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[:data.draw(st.integers(0, len(buf)))]
    try:
        for d in PcapReader(io.BytesIO(bytes(buf)), "fuzz"):
            assert isinstance(d.payload, bytes) and 0 <= d.sport <= 0xFFFF
    except PcapError:
        pass
