"""What the executive needs from a Totem transport, and the parts udpu and udp share.

A transport moves opaque totemsrp datagrams; it never parses them.  Sends are
synchronous and best effort (UDP semantics: Totem retransmits, so a datagram the kernel
refuses is counted and dropped rather than waited for — waiting would stall the token).
Receives run in one trio task per socket that drains every readable datagram and hands
each to the ``deliver`` callback synchronously, so no datagram waits behind a scheduler
hop.

Crypto (spec §6, Python-only clusters) is applied here: ``wrap`` on every send,
``unwrap`` on every receive; a datagram that fails authentication never reaches srp.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any, Callable, Protocol

import attrs
import trio

from ..totem.events import LogLevel

#: Largest datagram accepted: anything up to 64 KiB (recovery-encapsulated MCASTs exceed
#: the link MTU and arrive IP-reassembled, spec §1.7); +1 byte to detect truncation.
MAX_DATAGRAM = 65536
#: corosync asks for 16 × UDP_RECEIVE_FRAME_SIZE_MAX of receive buffer.
RCVBUF_BYTES = 16 * 136192

Deliver = Callable[[bytes], None]
LogFn = Callable[[LogLevel, str, str], None]  # (level, rate-limit key, message)


@attrs.define
class TransportStats:
    rx_datagrams: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0
    dropped: dict[str, int] = attrs.Factory(dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class Envelope(Protocol):
    overhead: int

    def wrap(self, plaintext: bytes) -> bytes: ...
    def unwrap(self, datagram: bytes) -> bytes: ...


class Transport(Protocol):
    """The driver's view of a transport."""

    name: str            # "UDP/IP Unicast" / "UDP/IP Multicast" (startup log line)
    local_ip: str
    stats: TransportStats

    def open(self) -> None: ...
    async def run(self, deliver: Deliver) -> None: ...
    def unicast(self, nodeid: int, data: bytes) -> None: ...
    def multicast(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def normalize_ip(addr: str) -> str:
    """Canonical text form, so '::0001' and '::1' compare equal and IPv4-mapped IPv6
    sources ('::ffff:127.0.0.1') match IPv4 nodelist entries."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def family_of(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


class DatagramSocketMixin:
    """Shared helpers: crypto, counting, non-blocking send, draining receive loop."""

    envelope: Envelope | None
    stats: TransportStats
    _log: LogFn | None

    def _emit(self, level: LogLevel, key: str, message: str) -> None:
        if self._log is not None:
            self._log(level, key, message)

    def _sendto(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Send one datagram; False when the kernel refused it (counted and logged)."""
        if self.envelope is not None:
            data = self.envelope.wrap(data)
        try:
            sock.sendto(data, addr)
        except OSError as exc:
            # EAGAIN/ENOBUFS: kernel queue full; EPERM: firewall; ENETUNREACH: iface down.
            self.stats.tx_errors += 1
            reason = errno.errorcode.get(exc.errno or 0, "error")
            self._emit(LogLevel.WARNING, f"tx:{reason}",
                       f"sendmsg(ucast) failed (non-critical): {exc.strerror} ({exc.errno})")
            return False
        self.stats.tx_datagrams += 1
        self.stats.tx_bytes += len(data)
        return True

    async def _receive_loop(self, sock: socket.socket, deliver: Deliver,
                            accept: Callable[[tuple[Any, ...]], bool]) -> None:
        """Wait for readability, then drain the socket.  ``accept(addr)`` applies the
        source filter; failing datagrams are counted by the filter itself."""
        trunc = socket.MSG_TRUNC
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    data, _anc, flags, addr = sock.recvmsg(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                except OSError as exc:
                    # e.g. ECONNREFUSED surfaced by an ICMP error: not fatal for UDP.
                    self.stats.drop("recv_error")
                    self._emit(LogLevel.DEBUG, "rx:error", f"recvmsg failed: {exc}")
                    break
                if flags & trunc:
                    self.stats.drop("truncated")
                    self._emit(LogLevel.WARNING, "rx:truncated",
                               f"Dropping truncated datagram from {addr[0]}")
                    continue
                if not accept(addr):
                    continue
                self.stats.rx_datagrams += 1
                self.stats.rx_bytes += len(data)
                if self.envelope is not None:
                    try:
                        data = self.envelope.unwrap(data)
                    except Exception as exc:  # CryptoError (any bad input: never crash)
                        reason = getattr(exc, "reason", "crypto_error")
                        self.stats.drop(reason)
                        self._emit(LogLevel.ERROR, f"rx:{reason}",
                                   _crypto_message(reason, addr[0]))
                        continue
                deliver(data)
                # Yield now and then so a flood cannot starve timers and other tasks.
                if self.stats.rx_datagrams % 64 == 0:
                    await trio.lowlevel.checkpoint()


def _crypto_message(reason: str, source: str) -> str:
    if reason == "invalid_digest":
        return f"Received message has invalid digest... ignoring. (from {source})"
    return f"Received message could not be decrypted ({reason})... ignoring. (from {source})"


def make_udp_socket(family: socket.AddressFamily, *, reuse: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    except OSError:
        pass
    return sock
