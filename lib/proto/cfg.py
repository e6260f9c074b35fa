"""The one CFG call corosync-cpgtool needs: GET_NODE_ADDRS (spec/ipc-wire.md §4.5).

Request 5 (16 nodeid u32, 0 = local node); response 11: 24 family u32 (AF_INET 2 /
AF_INET6 10), 28 num_addrs u32, 32 addresses, 16 raw bytes each (IPv4 in the first 4).
"""

from __future__ import annotations

import socket
import struct
from typing import ClassVar, Final

from attrs import frozen

from corosync.lib.proto.common import U32_PAD, ProtoError, need

REQ_GET_NODE_ADDRS: Final = 5
RES_GET_NODE_ADDRS: Final = 11
#: corosync's INTERFACE_MAX: libcfg callers pass arrays of this many entries.
INTERFACE_MAX: Final = 8
TOTEMIP_ADDRLEN: Final = 16
_HEAD: Final = struct.Struct("<II")


@frozen
class GetNodeAddrsRequest:
    ID: ClassVar[int] = REQ_GET_NODE_ADDRS
    nodeid: int

    def encode(self) -> bytes:
        return U32_PAD.pack(self.nodeid)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "GetNodeAddrsRequest":
        need(body, U32_PAD.size, "cfg GET_NODE_ADDRS")
        return cls(U32_PAD.unpack_from(body)[0])


@frozen
class GetNodeAddrsResponse:
    ID: ClassVar[int] = RES_GET_NODE_ADDRS
    family: int
    addrs: tuple[bytes, ...]   # 16 raw bytes each

    def encode(self) -> bytes:
        return _HEAD.pack(self.family, len(self.addrs)) + b"".join(
            a[:TOTEMIP_ADDRLEN].ljust(TOTEMIP_ADDRLEN, b"\0") for a in self.addrs)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "GetNodeAddrsResponse":
        need(body, _HEAD.size, "cfg GET_NODE_ADDRS response", exact=False)
        family, count = _HEAD.unpack_from(body)
        if _HEAD.size + count * TOTEMIP_ADDRLEN > len(body):
            raise ProtoError(f"cfg GET_NODE_ADDRS response: {count} addresses in "
                             f"{len(body)} bytes")
        off = _HEAD.size
        return cls(family, tuple(bytes(body[off + i * TOTEMIP_ADDRLEN:
                                            off + (i + 1) * TOTEMIP_ADDRLEN])
                                 for i in range(count)))

    def addresses(self, limit: int = INTERFACE_MAX) -> list[str | None]:
        """Printable addresses as libcfg hands them out: at most ``limit``; an all-zero entry
        (an unused link) or an unknown family gives None."""
        out: list[str | None] = []
        for raw in self.addrs[:limit]:
            if not any(raw):
                out.append(None)
            elif self.family == socket.AF_INET:
                out.append(socket.inet_ntop(socket.AF_INET, raw[:4]))
            elif self.family == socket.AF_INET6:
                out.append(socket.inet_ntop(socket.AF_INET6, raw))
            else:
                out.append(None)
        return out


# ------------------------------------------------------------------------------------------
# The rest of the cfg protocol (corosync-cfgtool, shutdown tracking; spec/ipc-wire.md §4.5)
# ------------------------------------------------------------------------------------------
(REQ_RINGSTATUSGET, REQ_RINGREENABLE, REQ_KILLNODE, REQ_TRYSHUTDOWN, REQ_REPLYTOSHUTDOWN,
 _REQ_GET_NODE_ADDRS, REQ_LOCAL_GET, REQ_RELOAD_CONFIG, REQ_REOPEN_LOG_FILES, REQ_NODESTATUSGET,
 REQ_TRACKSTART, REQ_TRACKSTOP) = range(12)
RES_RINGSTATUSGET, RES_RINGREENABLE, RES_TRACKSTART, RES_TRACKSTOP = 0, 1, 2, 3
RES_KILLNODE, RES_TRYSHUTDOWN, EV_TESTSHUTDOWN = 8, 9, 10
RES_LOCAL_GET, RES_REPLYTOSHUTDOWN, RES_RELOAD_CONFIG, RES_REOPEN_LOG_FILES = 12, 13, 14, 15
RES_NODESTATUSGET = 16

SHUTDOWN_FLAG_REQUEST, SHUTDOWN_FLAG_REGARDLESS, SHUTDOWN_FLAG_IMMEDIATE = 0, 1, 2
REPLY_NO, REPLY_YES = 0, 1
NODE_STATUS_V1: Final = 1
KNET_MAX_LINKS: Final = 8
CFG_MAX_HOST_LEN: Final = 256
CFG_INTERFACE_NAME_MAX_LEN: Final = 128
CFG_INTERFACE_STATUS_MAX_LEN: Final = 512
CFG_MAX_INTERFACES: Final = 16
_LINK: Final = struct.Struct(f"<BBBxI{CFG_MAX_HOST_LEN}s{CFG_MAX_HOST_LEN}s")  # 520 bytes
_NS_HEAD: Final = struct.Struct("<IIBBBBBB2x")                            # 16 bytes
_U32: Final = struct.Struct("<I")


def _cz(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _z(text: str, size: int) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")[:size - 1]
    return raw.ljust(size, b"\0")


@frozen
class LinkStatus:
    enabled: bool = False
    connected: bool = False
    dynconnected: bool = False
    mtu: int = 0
    src_ipaddr: str = ""
    dst_ipaddr: str = ""

    def encode(self) -> bytes:
        return _LINK.pack(int(self.enabled), int(self.connected), int(self.dynconnected),
                          self.mtu, _z(self.src_ipaddr, CFG_MAX_HOST_LEN),
                          _z(self.dst_ipaddr, CFG_MAX_HOST_LEN))

    @classmethod
    def decode(cls, buf: bytes | memoryview, off: int) -> "LinkStatus":
        en, co, dy, mtu, src, dst = _LINK.unpack_from(buf, off)
        return cls(bool(en), bool(co), bool(dy), mtu, _cz(src), _cz(dst))


@frozen
class NodeStatus:
    """NODESTATUSGET v1 response body (4176 bytes → 4200 with the header)."""

    ID: ClassVar[int] = RES_NODESTATUSGET
    nodeid: int
    reachable: bool = False
    remote: bool = False
    external: bool = False
    onwire_min: int = 0
    onwire_max: int = 0
    onwire_ver: int = 0
    links: tuple[LinkStatus, ...] = ()
    version: int = NODE_STATUS_V1

    def encode(self) -> bytes:
        links = (self.links + (LinkStatus(),) * KNET_MAX_LINKS)[:KNET_MAX_LINKS]
        return (_NS_HEAD.pack(self.version, self.nodeid, int(self.reachable), int(self.remote),
                              int(self.external), self.onwire_min, self.onwire_max,
                              self.onwire_ver)
                + b"".join(link.encode() for link in links))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "NodeStatus":
        need(body, 4, "cfg NODESTATUSGET response", exact=False)
        (version,) = _U32.unpack_from(body)
        if version != NODE_STATUS_V1:
            raise ProtoError(f"cfg NODESTATUSGET: unsupported version {version}")
        need(body, _NS_HEAD.size + KNET_MAX_LINKS * _LINK.size, "cfg NODESTATUSGET response",
             exact=False)
        v, nodeid, reach, remote, ext, omin, omax, over = _NS_HEAD.unpack_from(body)
        links = tuple(LinkStatus.decode(body, _NS_HEAD.size + i * _LINK.size)
                      for i in range(KNET_MAX_LINKS))
        return cls(nodeid, bool(reach), bool(remote), bool(ext), omin, omax, over, links, v)


def enc_nodestatusget(nodeid: int, version: int = NODE_STATUS_V1) -> bytes:
    return struct.pack("<I4xI4x", nodeid, version)


def enc_killnode(nodeid: int, reason: str) -> bytes:
    """KILLNODE: nodeid u32 @16, cs_name_t reason @24 (length u16 = strlen + 1, value[256]
    right after it — cs_name_t is not 8-aligned inside)."""
    raw = reason.encode("utf-8", "surrogateescape")[:CFG_MAX_HOST_LEN - 1]
    return struct.pack("<I4xH", nodeid, len(raw) + 1) + raw.ljust(CFG_MAX_HOST_LEN, b"\0") + bytes(6)


def dec_killnode(body: bytes | memoryview) -> tuple[int, str]:
    need(body, 10, "cfg KILLNODE", exact=False)
    nodeid, length = struct.unpack_from("<I4xH", body)
    return nodeid, _cz(bytes(body[10:10 + min(length, CFG_MAX_HOST_LEN)]))


def enc_u32(value: int) -> bytes:
    """TRYSHUTDOWN flags / REPLYTOSHUTDOWN response / TRACKSTART flags (24-byte requests)."""
    return U32_PAD.pack(value)


def dec_u32(body: bytes | memoryview, what: str) -> int:
    need(body, 4, what, exact=False)
    return int(_U32.unpack_from(body)[0])


@frozen
class RingStatus:
    """RINGSTATUSGET response body: ``interface_count`` names and status strings."""

    ID: ClassVar[int] = RES_RINGSTATUSGET
    interfaces: tuple[tuple[str, str], ...]   # (name "<link> <ip>", status)

    def encode(self) -> bytes:
        names = [n for n, _ in self.interfaces][:CFG_MAX_INTERFACES]
        status = [s for _, s in self.interfaces][:CFG_MAX_INTERFACES]
        names += [""] * (CFG_MAX_INTERFACES - len(names))
        status += [""] * (CFG_MAX_INTERFACES - len(status))
        return (U32_PAD.pack(min(len(self.interfaces), CFG_MAX_INTERFACES))
                + b"".join(_z(n, CFG_INTERFACE_NAME_MAX_LEN) for n in names)
                + b"".join(_z(s, CFG_INTERFACE_STATUS_MAX_LEN) for s in status))

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "RingStatus":
        size = 8 + CFG_MAX_INTERFACES * (CFG_INTERFACE_NAME_MAX_LEN + CFG_INTERFACE_STATUS_MAX_LEN)
        need(body, size, "cfg RINGSTATUSGET response", exact=False)
        count = min(_U32.unpack_from(body)[0], CFG_MAX_INTERFACES)
        so = 8 + CFG_MAX_INTERFACES * CFG_INTERFACE_NAME_MAX_LEN
        return cls(tuple(
            (_cz(bytes(body[8 + i * CFG_INTERFACE_NAME_MAX_LEN:8 + (i + 1) * CFG_INTERFACE_NAME_MAX_LEN])),
             _cz(bytes(body[so + i * CFG_INTERFACE_STATUS_MAX_LEN:so + (i + 1) * CFG_INTERFACE_STATUS_MAX_LEN])))
            for i in range(count)))
