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
