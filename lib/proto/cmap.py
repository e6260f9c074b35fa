"""CMAP IPC messages (service ``cmap``, spec/ipc-wire.md §4.1).

Bodies only (after the 16-byte request / 24-byte response header).  Offsets in the comments
are *absolute* (header included), as in the spec tables, so they can be checked against it.
"""

from __future__ import annotations

import enum
import struct
from typing import ClassVar, Final, Union

from attrs import frozen

from corosync.lib.proto.common import (NAME, U64, ProtoError, decode_name, encode_name,
                                       need)


class ValueType(enum.IntEnum):
    """``cmap_value_types_t``."""

    INT8 = 1
    UINT8 = 2
    INT16 = 3
    UINT16 = 4
    INT32 = 5
    UINT32 = 6
    INT64 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    STRING = 11
    BINARY = 12

    @property
    def tag(self) -> str:
        """The short name corosync-cmapctl prints and parses (``u32``, ``str``, ...)."""
        return _TAGS[self]

    @classmethod
    def from_tag(cls, tag: str) -> "ValueType":
        for t, name in _TAGS.items():
            if name == tag:
                return t
        raise ValueError(f"unknown cmap type tag {tag!r}")

    @property
    def fixed_size(self) -> int | None:
        """The C size of a fixed-size type, None for STRING/BINARY."""
        code = _FORMATS.get(self)
        return None if code is None else struct.calcsize("<" + code)


_TAGS: Final = {
    ValueType.INT8: "i8", ValueType.UINT8: "u8", ValueType.INT16: "i16",
    ValueType.UINT16: "u16", ValueType.INT32: "i32", ValueType.UINT32: "u32",
    ValueType.INT64: "i64", ValueType.UINT64: "u64", ValueType.FLOAT: "flt",
    ValueType.DOUBLE: "dbl", ValueType.STRING: "str", ValueType.BINARY: "bin",
}
_FORMATS: Final = {
    ValueType.INT8: "b", ValueType.UINT8: "B", ValueType.INT16: "h", ValueType.UINT16: "H",
    ValueType.INT32: "i", ValueType.UINT32: "I", ValueType.INT64: "q", ValueType.UINT64: "Q",
    ValueType.FLOAT: "f", ValueType.DOUBLE: "d",
}


class MapId(enum.IntEnum):
    """``cmap_map_t``."""

    DEFAULT = 0   #: configuration + runtime map (a.k.a. icmap)
    STATS = 1     #: read-only statistics


class TrackType(enum.IntFlag):
    """CMAP_TRACK_* bits of TRACK_ADD and of NOTIFY's ``event``."""

    DELETE = 1
    MODIFY = 2
    ADD = 4
    PREFIX = 8


class ReqId(enum.IntEnum):
    SET = 0
    DELETE = 1
    GET = 2
    ADJUST_INT = 3
    ITER_INIT = 4
    ITER_NEXT = 5
    ITER_FINALIZE = 6
    TRACK_ADD = 7
    TRACK_DELETE = 8
    SET_CURRENT_MAP = 9


class ResId(enum.IntEnum):
    SET = 0
    DELETE = 1
    GET = 2
    ADJUST_INT = 3
    ITER_INIT = 4
    ITER_NEXT = 5
    ITER_FINALIZE = 6
    TRACK_ADD = 7
    TRACK_DELETE = 8
    NOTIFY = 9
    SET_CURRENT_MAP = 10


#: Largest value the executive accepts (CS_ERR_INVALID_PARAM above).
VALUE_MAX: Final = 16384

Value = Union[int, float, str, bytes]


def encode_value(vtype: ValueType, value: Value) -> bytes:
    """A typed value in corosync's native (little-endian) form.

    STRING is encoded *without* a NUL, as ``cmap_set_string`` sends it (the executive stores
    it with one); integers out of range and wrong Python types raise ProtoError.
    """
    code = _FORMATS.get(vtype)
    if code is not None:
        if code in "fd":
            if isinstance(value, (str, bytes)):
                raise ProtoError(f"{vtype.name} needs a number, got {type(value).__name__}")
            number: int | float = float(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ProtoError(f"{vtype.name} needs an int, got {type(value).__name__}")
            number = value
        try:
            return struct.pack("<" + code, number)
        except struct.error as exc:
            raise ProtoError(f"{value!r} does not fit {vtype.name}: {exc}") from None
    if vtype is ValueType.STRING:
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogateescape")
        else:
            raise ProtoError(f"STRING needs str or bytes, got {type(value).__name__}")
        if b"\0" in raw:
            raise ProtoError("STRING values cannot contain NUL")
        return raw
    if vtype is ValueType.BINARY:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ProtoError(f"BINARY needs bytes, got {type(value).__name__}")
        return bytes(value)
    raise ProtoError(f"unknown value type {vtype!r}")


def decode_value(vtype: int, raw: bytes | memoryview) -> Value:
    """Inverse of :func:`encode_value` for what the executive sends: STRING values arrive with
    their NUL (the text ends at the first NUL), fixed-size types must have their exact size."""
    try:
        t = ValueType(vtype)
    except ValueError:
        raise ProtoError(f"unknown value type {vtype}") from None
    code = _FORMATS.get(t)
    if code is not None:
        size = struct.calcsize("<" + code)
        if len(raw) != size:
            raise ProtoError(f"{t.name} value of {len(raw)} bytes, expected {size}")
        return struct.unpack("<" + code, raw)[0]  # type: ignore[no-any-return]
    if t is ValueType.STRING:
        return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return bytes(raw)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------

_SET_HEAD: Final = struct.Struct("<264sQB7x")       # key, value_len, type    (@16..@296)
_KEY_U64: Final = struct.Struct("<264sQ")            # key, u64                (@16..@288)
_KEY_I32: Final = struct.Struct("<264si4x")          # key, i32                (@16..@288)
_TRACK_ADD: Final = struct.Struct("<264si4xQ")       # key, track_type, cookie (@16..@296)
_I32_PAD: Final = struct.Struct("<i4x")


def _key(body: bytes | memoryview, offset: int = 0) -> str:
    return decode_name(body, offset)


@frozen
class SetRequest:
    """SET (req 0): 16 key, 280 value_len u64, 288 type u8, 296 value."""

    ID: ClassVar[int] = ReqId.SET
    key: str
    type: int
    value: bytes

    def encode(self) -> bytes:
        return _SET_HEAD.pack(encode_name(self.key), len(self.value), self.type) + self.value

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "SetRequest":
        need(body, _SET_HEAD.size, "cmap SET", exact=False)
        _raw, value_len, vtype = _SET_HEAD.unpack_from(body)
        if len(body) != _SET_HEAD.size + value_len:
            raise ProtoError(f"cmap SET: value_len {value_len} but {len(body) - _SET_HEAD.size}"
                             " value bytes")
        return cls(_key(body), vtype, bytes(body[_SET_HEAD.size:]))


@frozen
class DeleteRequest:
    """DELETE (req 1): 16 key."""

    ID: ClassVar[int] = ReqId.DELETE
    key: str

    def encode(self) -> bytes:
        return encode_name(self.key)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "DeleteRequest":
        need(body, NAME.size, "cmap DELETE")
        return cls(_key(body))


@frozen
class GetRequest:
    """GET (req 2): 16 key, 280 value_len u64 (the caller's buffer; 0 = type and length only)."""

    ID: ClassVar[int] = ReqId.GET
    key: str
    value_len: int

    def encode(self) -> bytes:
        return _KEY_U64.pack(encode_name(self.key), self.value_len)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "GetRequest":
        need(body, _KEY_U64.size, "cmap GET")
        return cls(_key(body), _KEY_U64.unpack_from(body)[1])


@frozen
class AdjustIntRequest:
    """ADJUST_INT (req 3): 16 key, 280 step i32 (cmap_inc = +1, cmap_dec = -1)."""

    ID: ClassVar[int] = ReqId.ADJUST_INT
    key: str
    step: int

    def encode(self) -> bytes:
        return _KEY_I32.pack(encode_name(self.key), self.step)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "AdjustIntRequest":
        need(body, _KEY_I32.size, "cmap ADJUST_INT")
        return cls(_key(body), _KEY_I32.unpack_from(body)[1])


@frozen
class IterInitRequest:
    """ITER_INIT (req 4): 16 prefix (empty = every key)."""

    ID: ClassVar[int] = ReqId.ITER_INIT
    prefix: str

    def encode(self) -> bytes:
        return encode_name(self.prefix)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterInitRequest":
        need(body, NAME.size, "cmap ITER_INIT")
        return cls(_key(body))


@frozen
class IterNextRequest:
    """ITER_NEXT (req 5): 16 iter_handle u64."""

    ID: ClassVar[int] = ReqId.ITER_NEXT
    iter_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iter_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterNextRequest":
        need(body, U64.size, "cmap ITER_NEXT")
        return cls(U64.unpack_from(body)[0])


@frozen
class IterFinalizeRequest:
    """ITER_FINALIZE (req 6): 16 iter_handle u64."""

    ID: ClassVar[int] = ReqId.ITER_FINALIZE
    iter_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iter_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterFinalizeRequest":
        need(body, U64.size, "cmap ITER_FINALIZE")
        return cls(U64.unpack_from(body)[0])


@frozen
class TrackAddRequest:
    """TRACK_ADD (req 7): 16 key, 280 track_type i32, 288 track_inst_handle u64 (the client's
    cookie, echoed in every NOTIFY)."""

    ID: ClassVar[int] = ReqId.TRACK_ADD
    key: str
    track_type: int
    track_inst_handle: int

    def encode(self) -> bytes:
        return _TRACK_ADD.pack(encode_name(self.key), self.track_type, self.track_inst_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "TrackAddRequest":
        need(body, _TRACK_ADD.size, "cmap TRACK_ADD")
        _raw, ttype, cookie = _TRACK_ADD.unpack_from(body)
        return cls(_key(body), ttype, cookie)


@frozen
class TrackDeleteRequest:
    """TRACK_DELETE (req 8): 16 track_handle u64 (the executive's handle)."""

    ID: ClassVar[int] = ReqId.TRACK_DELETE
    track_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.track_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "TrackDeleteRequest":
        need(body, U64.size, "cmap TRACK_DELETE")
        return cls(U64.unpack_from(body)[0])


@frozen
class SetCurrentMapRequest:
    """SET_CURRENT_MAP (req 9): 16 map i32."""

    ID: ClassVar[int] = ReqId.SET_CURRENT_MAP
    map: int

    def encode(self) -> bytes:
        return _I32_PAD.pack(self.map)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "SetCurrentMapRequest":
        need(body, _I32_PAD.size, "cmap SET_CURRENT_MAP")
        return cls(_I32_PAD.unpack_from(body)[0])


REQUESTS: Final = {c.ID: c for c in (
    SetRequest, DeleteRequest, GetRequest, AdjustIntRequest, IterInitRequest, IterNextRequest,
    IterFinalizeRequest, TrackAddRequest, TrackDeleteRequest, SetCurrentMapRequest)}


# --------------------------------------------------------------------------------------------
# Responses and the NOTIFY event
# --------------------------------------------------------------------------------------------

_GET_HEAD: Final = struct.Struct("<QB7x")            # value_len, type        (@24..@40)
_ITER_NEXT: Final = struct.Struct("<264sQB7x")       # key, value_len, type   (@24..@304)
_NOTIFY_HEAD: Final = struct.Struct("<Q264si4xB7xB7xQQ")  # (@24..@336)


@frozen
class GetResponse:
    """GET (res 2): 24 value_len u64 (the *actual* length), 32 type u8, 40 value area of the
    *requested* size (zero padded; absent when 0 was requested or on error)."""

    ID: ClassVar[int] = ResId.GET
    value_len: int
    type: int
    value: bytes = b""

    def encode(self, requested: int | None = None) -> bytes:
        """``requested`` = the request's value_len: the value area is exactly that long."""
        area = len(self.value) if requested is None else requested
        return _GET_HEAD.pack(self.value_len, self.type) + self.value[:area].ljust(area, b"\0")

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "GetResponse":
        need(body, _GET_HEAD.size, "cmap GET response", exact=False)
        value_len, vtype = _GET_HEAD.unpack_from(body)
        area = body[_GET_HEAD.size:]
        if area and value_len > len(area):
            raise ProtoError(f"cmap GET response: value_len {value_len} exceeds the "
                             f"{len(area)}-byte value area")
        return cls(value_len, vtype, bytes(area[:value_len]) if area else b"")


@frozen
class IterInitResponse:
    """ITER_INIT (res 4): 24 iter_handle u64."""

    ID: ClassVar[int] = ResId.ITER_INIT
    iter_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.iter_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterInitResponse":
        need(body, U64.size, "cmap ITER_INIT response")
        return cls(U64.unpack_from(body)[0])


@frozen
class IterNextResponse:
    """ITER_NEXT (res 5): 24 key, 288 value_len u64, 296 type u8.  The end of the iteration is
    the error CS_ERR_NO_SECTIONS (with this body zeroed)."""

    ID: ClassVar[int] = ResId.ITER_NEXT
    key: str
    value_len: int
    type: int

    def encode(self) -> bytes:
        return _ITER_NEXT.pack(encode_name(self.key), self.value_len, self.type)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "IterNextResponse":
        need(body, _ITER_NEXT.size, "cmap ITER_NEXT response")
        _raw, value_len, vtype = _ITER_NEXT.unpack_from(body)
        return cls(_key(body), value_len, vtype)


@frozen
class TrackAddResponse:
    """TRACK_ADD (res 7): 24 track_handle u64 (the executive's handle for TRACK_DELETE)."""

    ID: ClassVar[int] = ResId.TRACK_ADD
    track_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.track_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "TrackAddResponse":
        need(body, U64.size, "cmap TRACK_ADD response")
        return cls(U64.unpack_from(body)[0])


@frozen
class TrackDeleteResponse:
    """TRACK_DELETE (res 8): 24 track_inst_handle u64 (the client's cookie)."""

    ID: ClassVar[int] = ResId.TRACK_DELETE
    track_inst_handle: int

    def encode(self) -> bytes:
        return U64.pack(self.track_inst_handle)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "TrackDeleteResponse":
        need(body, U64.size, "cmap TRACK_DELETE response")
        return cls(U64.unpack_from(body)[0])


@frozen
class NotifyEvent:
    """NOTIFY (event 9): 24 track_inst_handle u64, 32 key, 296 event i32, 304 new type u8,
    312 old type u8, 320 new_len u64, 328 old_len u64, 336 new value, then old value.

    A type of 0 means "no value" (ADD has no old value, DELETE no new one).
    """

    ID: ClassVar[int] = ResId.NOTIFY
    track_inst_handle: int
    key: str
    event: int
    new_type: int
    new_value: bytes
    old_type: int
    old_value: bytes

    def encode(self) -> bytes:
        return (_NOTIFY_HEAD.pack(self.track_inst_handle, encode_name(self.key), self.event,
                                  self.new_type, self.old_type, len(self.new_value),
                                  len(self.old_value))
                + self.new_value + self.old_value)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "NotifyEvent":
        need(body, _NOTIFY_HEAD.size, "cmap NOTIFY", exact=False)
        cookie, _raw, event, new_type, old_type, new_len, old_len = \
            _NOTIFY_HEAD.unpack_from(body)
        values = body[_NOTIFY_HEAD.size:]
        if new_len + old_len != len(values):
            raise ProtoError(f"cmap NOTIFY: lengths {new_len}+{old_len} but {len(values)} "
                             "value bytes")
        return cls(cookie, _key(body, 8), event, new_type, bytes(values[:new_len]),
                   old_type, bytes(values[new_len:]))


#: Body sizes of the fixed responses the stock library's buffers allow (the ``Buf`` column).
RESPONSE_BUFFER: Final = {
    ResId.SET: 0, ResId.DELETE: 0, ResId.ADJUST_INT: 0, ResId.ITER_INIT: U64.size,
    ResId.ITER_NEXT: _ITER_NEXT.size, ResId.ITER_FINALIZE: 0, ResId.TRACK_ADD: U64.size,
    ResId.TRACK_DELETE: U64.size, ResId.SET_CURRENT_MAP: 0,
}

__all__ = [
    "ValueType", "MapId", "TrackType", "ReqId", "ResId", "VALUE_MAX", "Value", "encode_value",
    "decode_value", "SetRequest", "DeleteRequest", "GetRequest", "AdjustIntRequest",
    "IterInitRequest", "IterNextRequest", "IterFinalizeRequest", "TrackAddRequest",
    "TrackDeleteRequest", "SetCurrentMapRequest", "REQUESTS", "GetResponse",
    "IterInitResponse", "IterNextResponse", "TrackAddResponse", "TrackDeleteResponse",
    "NotifyEvent", "RESPONSE_BUFFER",
]
