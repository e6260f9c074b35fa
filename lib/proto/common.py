"""Types shared by several corosync IPC protocols (spec/ipc-wire.md §4.0): ``mar_name_t``,
``mar_cpg_name_t``, ring ids, and the decoding error."""

from __future__ import annotations

import struct
from typing import Final

from attrs import frozen

#: mar_name_t: length u16, pad to 8, value[256] (cmap key names).
NAME: Final = struct.Struct("<H6x256s")
NAME_VALUE_MAX: Final = 256
#: corosync's CS_MAX_NAME_LENGTH: key names must be shorter than this (the C library checks).
CS_MAX_NAME_LENGTH: Final = 256
#: mar_cpg_name_t: length u32, pad to 8, value[128] (CPG group names, opaque bytes).
CPG_NAME: Final = struct.Struct("<I4x128s")
CPG_MAX_NAME_LENGTH: Final = 128
#: A ring id as the client APIs carry it: nodeid u32, pad, seq u64.
RING_ID: Final = struct.Struct("<I4xQ")
U64: Final = struct.Struct("<Q")
U32_PAD: Final = struct.Struct("<I4x")


class ProtoError(ValueError):
    """A message does not have the layout its id promises (wrong size, bad count, ...)."""


def need(body: bytes | memoryview, size: int, what: str, *, exact: bool = True) -> None:
    """Refuse a body whose length is not ``size`` (or below it when ``exact`` is False)."""
    n = len(body)
    if n < size or (exact and n != size):
        raise ProtoError(f"{what}: body of {n} bytes, expected {'' if exact else '>= '}{size}")


def encode_name(name: str | bytes) -> bytes:
    """A mar_name_t with ``length = strlen`` (no NUL) and a NUL-padded value, like the C
    libraries send it.  Names of 256 bytes or more do not fit and are refused."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    if len(raw) >= CS_MAX_NAME_LENGTH:
        raise ProtoError(f"name of {len(raw)} bytes is too long (max {CS_MAX_NAME_LENGTH - 1})")
    return NAME.pack(len(raw), raw)


def decode_name(buf: bytes | memoryview, offset: int = 0) -> str:
    """A mar_name_t: ``length`` bytes of ``value``, but never past a NUL (corosync itself
    reads the value as a C string)."""
    length, value = NAME.unpack_from(buf, offset)
    raw = value[:min(length, NAME_VALUE_MAX)].split(b"\0", 1)[0]
    return raw.decode("utf-8", "surrogateescape")


def encode_cpg_name(group: bytes) -> bytes:
    """A mar_cpg_name_t; group names are opaque byte strings of at most 128 bytes."""
    if len(group) > CPG_MAX_NAME_LENGTH:
        raise ProtoError(f"group name of {len(group)} bytes exceeds {CPG_MAX_NAME_LENGTH}")
    return CPG_NAME.pack(len(group), group)


def decode_cpg_name(buf: bytes | memoryview, offset: int = 0) -> bytes:
    """A mar_cpg_name_t's ``length`` bytes (a length above 128 is malformed)."""
    length, value = CPG_NAME.unpack_from(buf, offset)
    if length > CPG_MAX_NAME_LENGTH:
        raise ProtoError(f"group name length {length} exceeds {CPG_MAX_NAME_LENGTH}")
    return bytes(value[:length])


@frozen
class RingId:
    """A totem ring id as the client APIs see it (representative node id, sequence)."""

    nodeid: int
    seq: int

    def encode(self) -> bytes:
        return RING_ID.pack(self.nodeid, self.seq)

    @classmethod
    def decode(cls, buf: bytes | memoryview, offset: int = 0) -> "RingId":
        return cls(*RING_ID.unpack_from(buf, offset))

    def __str__(self) -> str:
        """corosync's CS_PRI_RING_ID form: hex nodeid '.' hex seq."""
        return f"{self.nodeid:x}.{self.seq:x}"
