"""UDP unicast transport (``transport: udpu``), spec §1.3.

One socket bound to ``<ring0_addr>:<mcastport>`` does everything: it receives tokens and
"multicasts", sends unicast tokens, and sends each "multicast" separately to every
nodelist address, **this node included** — self delivery over the local stack is what
gives a lone node (or the last node to agree) its own JOIN for consensus (§1.6).

Real nodes send multicast copies from per-member ephemeral ports; receivers ignore source
ports, so a single socket is wire-equivalent and halves the file descriptors.

``block_unlisted_ips`` (default on): a datagram whose source IP is not a nodelist address
is dropped, counted and logged (rate limited).  That is also why we bind to the exact
ring0 address: peers filter on our source IP.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable

from ..totem.events import LogLevel
from .base import (DatagramSocketMixin, Deliver, Envelope, LogFn, TransportStats, family_of,
                   make_udp_socket, normalize_ip)


class UdpuTransport(DatagramSocketMixin):
    name = "UDP/IP Unicast"

    def __init__(self, local_ip: str, port: int, members: Iterable[tuple[int, str]], *,
                 envelope: Envelope | None = None, block_unlisted_ips: bool = True,
                 log: LogFn | None = None) -> None:
        self.local_ip = normalize_ip(local_ip)
        self.port = port
        self.family = family_of(self.local_ip)
        self.envelope = envelope
        self.block_unlisted_ips = block_unlisted_ips
        self.stats = TransportStats()
        self._log = log
        self._sock: socket.socket | None = None
        self._members: dict[int, tuple[Any, ...]] = {}
        self._allowed: set[str] = set()
        for nodeid, ip in members:
            self.add_member(nodeid, ip)

    def add_member(self, nodeid: int, ip: str) -> None:
        ip = normalize_ip(ip)
        if family_of(ip) != self.family:
            raise ValueError(f"member {ip} is not of the same address family as {self.local_ip}")
        self._members[nodeid] = self._sockaddr(ip)
        self._allowed.add(ip)

    def remove_member(self, nodeid: int) -> None:
        addr = self._members.pop(nodeid, None)
        if addr is not None and all(a[0] != addr[0] for a in self._members.values()):
            self._allowed.discard(addr[0])

    @property
    def member_ips(self) -> list[str]:
        return [a[0] for a in self._members.values()]

    def _sockaddr(self, ip: str) -> tuple[Any, ...]:
        if self.family == socket.AF_INET6:
            return (ip, self.port, 0, 0)
        return (ip, self.port)

    def open(self) -> None:
        """Bind the socket (raises OSError, e.g. EADDRNOTAVAIL / EADDRINUSE)."""
        sock = make_udp_socket(self.family)
        try:
            sock.bind(self._sockaddr(self.local_ip))
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def unicast(self, nodeid: int, data: bytes) -> None:
        addr = self._members.get(nodeid)
        if addr is None or self._sock is None:
            self.stats.drop("unknown_target")
            self._emit(LogLevel.WARNING, "tx:unknown",
                       f"No address known for nodeid {nodeid}: token not sent")
            return
        self._sendto(self._sock, data, addr)

    def multicast(self, data: bytes) -> None:
        if self._sock is None:
            return
        for addr in self._members.values():
            self._sendto(self._sock, data, addr)

    def _accept(self, addr: tuple[Any, ...]) -> bool:
        if not self.block_unlisted_ips:
            return True
        src = addr[0]
        if src in self._allowed:
            return True
        try:
            src = normalize_ip(src)
        except ValueError:
            src = str(src)
        if src in self._allowed:
            return True
        self.stats.drop("unlisted_ip")
        self._emit(LogLevel.WARNING, f"rx:unlisted:{src}",
                   f"Dropping packet from {src}: not in the nodelist (block_unlisted_ips)")
        return False

    async def run(self, deliver: Deliver) -> None:
        assert self._sock is not None, "open() first"
        await self._receive_loop(self._sock, deliver, self._accept)
