"""udpu / udp transports on real loopback sockets (no Totem involved)."""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio

from corosync.exec.transport.base import normalize_ip
from corosync.exec.transport.udpu import UdpuTransport


def free_port(ip: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for _ in range(50):
        port = random.randint(20000, 60000)
        try:
            s1 = socket.socket(fam, socket.SOCK_DGRAM)
            s1.bind((ip, port))
            s1.close()
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class Collector:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.event = trio.Event()

    def __call__(self, data: bytes) -> None:
        self.got.append(data)
        self.event.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while len(self.got) < n:
                self.event = trio.Event()
                await self.event.wait()


async def start(nursery, transport: UdpuTransport) -> Collector:
    c = Collector()
    transport.open()
    nursery.start_soon(transport.run, c)
    return c


async def test_multicast_reaches_every_member_including_self():
    port = free_port("127.0.0.1")
    members = [(1, "127.0.0.1"), (2, "127.0.0.2"), (3, "127.0.0.3")]
    ts = [UdpuTransport(ip, port, members) for _, ip in members]
    async with trio.open_nursery() as nursery:
        cs = [await start(nursery, t) for t in ts]
        ts[0].multicast(b"hello")
        for c in cs:
            await c.wait_for(1)
            assert c.got == [b"hello"]
        ts[1].unicast(3, b"token")
        await cs[2].wait_for(2)
        assert cs[2].got[-1] == b"token"
        assert cs[0].got == [b"hello"] and cs[1].got == [b"hello"]
        assert ts[0].stats.tx_datagrams == 3
        nursery.cancel_scope.cancel()
    for t in ts:
        t.close()


async def test_unlisted_source_is_dropped_and_counted():
    port = free_port("127.0.0.1")
    logs: list[tuple] = []
    t = UdpuTransport("127.0.0.1", port, [(1, "127.0.0.1"), (2, "127.0.0.2")],
                      log=lambda *a: logs.append(a))
    async with trio.open_nursery() as nursery:
        c = await start(nursery, t)
        rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rogue.bind(("127.0.0.9", 0))
        for _ in range(5):
            rogue.sendto(b"x" * 20, ("127.0.0.1", port))
        friend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        friend.bind(("127.0.0.2", 0))
        friend.sendto(b"ok", ("127.0.0.1", port))
        await c.wait_for(1)
        # Datagrams on one loopback socket arrive in order: the 5 rogue ones came first.
        assert c.got == [b"ok"]
        assert t.stats.dropped["unlisted_ip"] == 5
        assert any("127.0.0.9" in entry[2] for entry in logs)
        rogue.close()
        friend.close()
        nursery.cancel_scope.cancel()
    t.close()


async def test_block_unlisted_ips_off_accepts_anyone():
    port = free_port("127.0.0.1")
    t = UdpuTransport("127.0.0.1", port, [(1, "127.0.0.1")], block_unlisted_ips=False)
    async with trio.open_nursery() as nursery:
        c = await start(nursery, t)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.7", 0))
        s.sendto(b"in", ("127.0.0.1", port))
        await c.wait_for(1)
        s.close()
        nursery.cancel_scope.cancel()
    t.close()


async def test_large_datagrams_up_to_64k():
    port = free_port("127.0.0.1")
    t = UdpuTransport("127.0.0.1", port, [(1, "127.0.0.1")])
    async with trio.open_nursery() as nursery:
        c = await start(nursery, t)
        big = os.urandom(65507)  # the largest IPv4 UDP payload
        t.multicast(big)
        await c.wait_for(1)
        assert c.got == [big]
        nursery.cancel_scope.cancel()
    t.close()


async def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        port = free_port("::1")
    except (RuntimeError, OSError):
        pytest.skip("::1 not configured")
    t = UdpuTransport("::1", port, [(1, "::1")])
    async with trio.open_nursery() as nursery:
        c = await start(nursery, t)
        t.multicast(b"six")
        t.unicast(1, b"token")
        await c.wait_for(2)
        assert c.got == [b"six", b"token"]
        nursery.cancel_scope.cancel()
    t.close()


def test_normalize_ip():
    assert normalize_ip("::ffff:127.0.0.1") == "127.0.0.1"
    assert normalize_ip("0:0::1") == "::1"


async def test_crypto_envelope_and_wrong_key_rejected():
    crypto = pytest.importorskip("corosync.exec.transport.crypto")
    port = free_port("127.0.0.1")
    key_a = bytes(range(128))
    key_b = bytes(reversed(range(128)))
    logs: list[tuple] = []
    members = [(1, "127.0.0.1"), (2, "127.0.0.2")]
    a = UdpuTransport("127.0.0.1", port, members,
                      envelope=crypto.CryptoEnvelope("aes256", "sha256", key_a),
                      log=lambda *x: logs.append(x))
    b = UdpuTransport("127.0.0.2", port, members,
                      envelope=crypto.CryptoEnvelope("aes256", "sha256", key_b))
    async with trio.open_nursery() as nursery:
        ca = await start(nursery, a)
        await start(nursery, b)
        b.multicast(b"from b")        # wrong key: a must drop it
        a.multicast(b"from a")        # a gets its own copy, decrypted
        await ca.wait_for(1)
        assert ca.got == [b"from a"]
        assert a.stats.dropped.get("invalid_digest") == 1
        assert any("invalid digest" in entry[2] for entry in logs)
        nursery.cancel_scope.cancel()
    a.close()
    b.close()
