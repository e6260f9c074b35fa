"""UDP multicast transport (``transport: udp``), spec §1.4.

Sockets, as the real daemon has them (wire-visible: peers see our source port):

* send socket bound to ``<ip>:<mcastport − 1>`` with ``IP_MULTICAST_IF`` = our
  interface, ``IP_MULTICAST_TTL`` = ``ttl`` and multicast loop **off**; it sends the
  multicasts to ``<mcastaddr>:<mcastport>`` and the unicast tokens to
  ``<peer>:<mcastport>``;
* token socket bound to ``<ip>:<mcastport>``: receives unicast tokens;
* multicast receive socket bound to ``<mcastaddr>:<mcastport>`` (SO_REUSEADDR, so several
  local nodes can share the group) and joined to the group on our interface.

Because loop is off, our own multicasts are handed to ``deliver`` directly (the real
daemon uses a socketpair for that).  The driver's ``deliver`` must therefore be safe to
call while it is executing actions (the executive queues such datagrams).  On the
loopback interface the kernel may still hand us our own multicast; datagrams whose source
is our own send socket are dropped as duplicates of the local copy.

There is no ``block_unlisted_ips`` filtering on udp (like the real daemon), but the token
target is still looked up by nodeid in the nodelist, so a nodelist is required.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Iterable

from ..totem.events import LogLevel
from .base import (DatagramSocketMixin, Deliver, Envelope, LogFn, TransportStats, family_of,
                   make_udp_socket, normalize_ip)

import trio


def ipv6_ifindex(ip: str) -> int:
    """Interface index holding ``ip`` (from /proc/net/if_inet6); 0 if unknown."""
    want = ipaddress.IPv6Address(ip).exploded.replace(":", "")
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == want:
                    return int(fields[1], 16)
    except OSError:
        pass
    return 0


class UdpTransport(DatagramSocketMixin):
    name = "UDP/IP Multicast"

    def __init__(self, local_ip: str, port: int, mcastaddr: str,
                 members: Iterable[tuple[int, str]], *, ttl: int = 1,
                 envelope: Envelope | None = None, log: LogFn | None = None) -> None:
        self.local_ip = normalize_ip(local_ip)
        self.port = port
        self.mcastaddr = normalize_ip(mcastaddr)
        self.family = family_of(self.local_ip)
        if family_of(self.mcastaddr) != self.family:
            raise ValueError(f"mcastaddr {mcastaddr} and {local_ip} differ in address family")
        if not ipaddress.ip_address(self.mcastaddr).is_multicast:
            raise ValueError(f"mcastaddr {mcastaddr} is not a multicast address")
        self.ttl = ttl
        self.envelope = envelope
        self.stats = TransportStats()
        self._log = log
        self._members: dict[int, tuple[Any, ...]] = {
            nodeid: self._sockaddr(normalize_ip(ip), port) for nodeid, ip in members}
        self._send: socket.socket | None = None
        self._token: socket.socket | None = None
        self._mcast: socket.socket | None = None
        self._deliver: Deliver | None = None
        self._own_source = self._sockaddr(self.local_ip, port - 1)[:2]

    def add_member(self, nodeid: int, ip: str) -> None:
        """A node added to the nodelist at run time (config reload): its token address."""
        ip = normalize_ip(ip)
        if family_of(ip) != self.family:
            raise ValueError(f"member {ip} is not of the same address family as {self.local_ip}")
        self._members[nodeid] = self._sockaddr(ip, self.port)

    def remove_member(self, nodeid: int) -> None:
        self._members.pop(nodeid, None)

    def _sockaddr(self, ip: str, port: int) -> tuple[Any, ...]:
        return (ip, port, 0, 0) if self.family == socket.AF_INET6 else (ip, port)

    def open(self) -> None:
        socks: list[socket.socket] = []
        try:
            send = make_udp_socket(self.family)
            socks.append(send)
            send.bind(self._sockaddr(self.local_ip, self.port - 1))
            token = make_udp_socket(self.family)
            socks.append(token)
            token.bind(self._sockaddr(self.local_ip, self.port))
            mcast = make_udp_socket(self.family, reuse=True)
            socks.append(mcast)
            if self.family == socket.AF_INET:
                send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                                socket.inet_aton(self.local_ip))
                send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
                send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                mcast.bind((self.mcastaddr, self.port))
                mreq = socket.inet_aton(self.mcastaddr) + socket.inet_aton(self.local_ip)
                mcast.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            else:
                ifindex = ipv6_ifindex(self.local_ip)
                send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.ttl)
                send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                mcast.bind((self.mcastaddr, self.port, 0, ifindex))
                mreq = socket.inet_pton(socket.AF_INET6, self.mcastaddr) + struct.pack(
                    "@I", ifindex)
                mcast.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except OSError:
            for s in socks:
                s.close()
            raise
        self._send, self._token, self._mcast = send, token, mcast

    def close(self) -> None:
        for s in (self._send, self._token, self._mcast):
            if s is not None:
                s.close()
        self._send = self._token = self._mcast = None

    def unicast(self, nodeid: int, data: bytes) -> None:
        addr = self._members.get(nodeid)
        if addr is None or self._send is None:
            self.stats.drop("unknown_target")
            self._emit(LogLevel.WARNING, "tx:unknown",
                       f"No address known for nodeid {nodeid}: token not sent")
            return
        self._sendto(self._send, data, addr)

    def multicast(self, data: bytes) -> bool | None:
        """Send to the group; the result (False: the kernel refused it) feeds Totem's
        ``continuous_sendmsg_failures``, which corosync counts on this socket only."""
        if self._send is None:
            return None
        ok = self._sendto(self._send, data, self._sockaddr(self.mcastaddr, self.port))
        if self._deliver is not None:
            self._deliver(data)  # the local copy (loop is off)
        return ok

    def _accept_mcast(self, addr: tuple[Any, ...]) -> bool:
        if tuple(addr[:2]) == self._own_source:
            self.stats.drop("own_multicast")
            return False
        return True

    @staticmethod
    def _accept_any(addr: tuple[Any, ...]) -> bool:
        return True

    async def run(self, deliver: Deliver) -> None:
        assert self._token is not None and self._mcast is not None, "open() first"
        self._deliver = deliver
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, self._token, deliver, self._accept_any)
            nursery.start_soon(self._receive_loop, self._mcast, deliver, self._accept_mcast)
