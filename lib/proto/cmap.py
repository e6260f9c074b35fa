"""CMAP IPC messages (service ``cmap``, spec/ipc-wire.md §4.1) and the cmap value types.

Bodies only (after the 16-byte request / 24-byte response header).  Offsets in the comments
are *absolute* (header included), as in the spec tables, so they can be checked against it.

Both sides use this module: the client library encodes requests and decodes responses, the
executive's cmap service (``services/cmap.py``) decodes requests and encodes responses, and
the executive's store (``exec/cmap.py``) takes :class:`ValueType` and its ranges from here,
so every layout and every value rule is written down once.  Decoders are strict by default
(the body must have exactly the size its fields promise); the executive decodes with
``exact=False``, which tolerates trailing bytes after the fields and a missing trailing
padding, as the C executive (which reads the fields in place) does.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from typing import Any, ClassVar, Final, Union

from attrs import astuple, frozen

from corosync.lib.proto.common import (NAME, U64, ProtoError, decode_name, encode_name,
                                       need)


class ValueType(enum.IntEnum):
    """``cmap_value_types_t``: the numbers travel over IPC and totem (CMAP_MCAST).

    The one definition of the cmap value types: the executive's store imports it as
    ``CmapType``."""

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
    def short_name(self) -> str:
        """The same tag under the name the executive's store has always used."""
        return _TAGS[self]

    @property
    def fixed_size(self) -> int | None:
        """The C size of a fixed-size type, None for STRING/BINARY."""
        code = _FORMATS.get(self)
        return None if code is None else struct.calcsize("<" + code)

    @property
    def struct_code(self) -> str | None:
        """The :mod:`struct` code of a fixed-size type (``"I"`` for UINT32), None for
        STRING/BINARY: what byte-swapping a foreign-endian value needs."""
        return _FORMATS.get(self)

    @property
    def is_integer(self) -> bool:
        return self in _INT_RANGES


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


def _c_int_range(code: str) -> tuple[int, int]:
    """(min, max) of the C integer behind a struct code (lower case = signed)."""
    bits = 8 * struct.calcsize("<" + code)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)


_INT_RANGES: Final = {t: _c_int_range(code) for t, code in _FORMATS.items() if code not in "fd"}


def int_range(vtype: ValueType | int) -> tuple[int, int]:
    """(min, max) of an integer value type; ValueError for the others."""
    try:
        return _INT_RANGES[ValueType(vtype)]
    except KeyError:
        raise ValueError(f"{ValueType(vtype).name} is not an integer type") from None


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
    """Inverse of :func:`encode_stored_value` (what the executive sends): STRING values arrive
    with their NUL (the text ends at the first NUL), fixed-size types must have their exact
    size."""
    t = _value_type(vtype)
    code = _FORMATS.get(t)
    if code is not None:
        size = struct.calcsize("<" + code)
        if len(raw) != size:
            raise ProtoError(f"{t.name} value of {len(raw)} bytes, expected {size}")
        return struct.unpack("<" + code, raw)[0]  # type: ignore[no-any-return]
    if t is ValueType.STRING:
        return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return bytes(raw)


def encode_stored_value(vtype: ValueType | int, value: Value) -> bytes:
    """A value in the executive's form (GET, ITER_NEXT lengths, NOTIFY, CMAP_MCAST): as
    :func:`encode_value`, but a STRING carries its NUL, as corosync stores it."""
    raw = encode_value(_value_type(vtype), value)
    return raw + b"\0" if vtype == ValueType.STRING else raw


def decode_request_value(vtype: int, raw: bytes | memoryview) -> Value:
    """The value of a SET request as the executive stores it (inverse of
    :func:`encode_value`): fixed-size types need their exact size; a STRING is its text up
    to the first NUL and may end with at most that one NUL (corosync refuses a value_len
    beyond strlen + 1)."""
    t = _value_type(vtype)
    if t is ValueType.STRING:
        nul = bytes(raw).find(b"\0")
        if nul != -1 and len(raw) > nul + 1:
            raise ProtoError(f"STRING value_len {len(raw)} goes past its NUL at {nul}")
    return decode_value(t, raw)


def _value_type(vtype: int) -> ValueType:
    try:
        return ValueType(vtype)
    except ValueError:
        raise ProtoError(f"unknown value type {vtype}") from None


# --------------------------------------------------------------------------------------------
# Fixed-size bodies: one encode and one decode for every message without a value
# --------------------------------------------------------------------------------------------

_KEY: Final = struct.Struct(f"<{NAME.size}s")       # key                     (@16..@280)
_KEY_U64: Final = struct.Struct("<264sQ")            # key, u64                (@16..@288)
_KEY_I32: Final = struct.Struct("<264si4x")          # key, i32                (@16..@288)
_TRACK_ADD: Final = struct.Struct("<264si4xQ")       # key, track_type, cookie (@16..@296)
_I32_PAD: Final = struct.Struct("<i4x")
#: key, value_len, type: SET's head (@16..@296) and the ITER_NEXT response (@24..@304)
_KEY_LEN_TYPE: Final = struct.Struct("<264sQB7x")


@functools.lru_cache(maxsize=None)
def _fields_size(layout: struct.Struct) -> int:
    """The size of ``layout`` without its trailing padding: where its last field ends."""
    return struct.calcsize(re.sub(r"\d*x$", "", layout.format))


class _FixedBody:
    """A body of one fixed :attr:`LAYOUT` whose fields are the attrs fields in order; the
    ``s`` (bytes) fields of the layout are mar_name_t keys, carried as ``str``.

    Most cmap messages are "a key and/or a number or two": describing each by its layout
    lets one pair of functions encode and decode them all, so a layout is written once.
    """

    __slots__ = ()
    LAYOUT: ClassVar[struct.Struct]

    def encode(self) -> bytes:
        return self.LAYOUT.pack(*(encode_name(v) if isinstance(v, str) else v
                                  for v in astuple(self, recurse=False)))  # type: ignore

    @classmethod
    def decode(cls, body: bytes | memoryview, *, exact: bool = True) -> Any:
        """The message in ``body``.  ``exact=False`` is the executive's reading: bytes after
        the fields are ignored and the trailing padding may be missing (it is never read)."""
        what = f"cmap {cls.__name__}"
        if exact:
            need(body, cls.LAYOUT.size, what)
        else:
            need(body, _fields_size(cls.LAYOUT), what, exact=False)
            if len(body) < cls.LAYOUT.size:
                body = bytes(body).ljust(cls.LAYOUT.size, b"\0")
        return cls(*(decode_name(v) if isinstance(v, bytes) else v
                     for v in cls.LAYOUT.unpack_from(body)))


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


@frozen
class SetRequest:
    """SET (req 0): 16 key, 280 value_len u64, 288 type u8, 296 value."""

    ID: ClassVar[int] = ReqId.SET
    key: str
    type: int
    value: bytes

    def encode(self) -> bytes:
        return _KEY_LEN_TYPE.pack(encode_name(self.key), len(self.value), self.type) + self.value

    @classmethod
    def decode(cls, body: bytes | memoryview, *, exact: bool = True) -> "SetRequest":
        """``exact=False`` ignores bytes after the value; fewer than value_len never pass."""
        head = _KEY_LEN_TYPE.size
        need(body, head, "cmap SET", exact=False)
        raw, value_len, vtype = _KEY_LEN_TYPE.unpack_from(body)
        sent = len(body) - head
        if sent < value_len or (exact and sent != value_len):
            raise ProtoError(f"cmap SET: value_len {value_len} but {sent} value bytes")
        return cls(decode_name(raw), vtype, bytes(body[head:head + value_len]))


@frozen
class DeleteRequest(_FixedBody):
    """DELETE (req 1): 16 key."""

    ID: ClassVar[int] = ReqId.DELETE
    LAYOUT: ClassVar[struct.Struct] = _KEY
    key: str


@frozen
class GetRequest(_FixedBody):
    """GET (req 2): 16 key, 280 value_len u64 (the caller's buffer; 0 = type and length only)."""

    ID: ClassVar[int] = ReqId.GET
    LAYOUT: ClassVar[struct.Struct] = _KEY_U64
    key: str
    value_len: int


@frozen
class AdjustIntRequest(_FixedBody):
    """ADJUST_INT (req 3): 16 key, 280 step i32 (cmap_inc = +1, cmap_dec = -1)."""

    ID: ClassVar[int] = ReqId.ADJUST_INT
    LAYOUT: ClassVar[struct.Struct] = _KEY_I32
    key: str
    step: int


@frozen
class IterInitRequest(_FixedBody):
    """ITER_INIT (req 4): 16 prefix (empty = every key)."""

    ID: ClassVar[int] = ReqId.ITER_INIT
    LAYOUT: ClassVar[struct.Struct] = _KEY
    prefix: str


@frozen
class IterNextRequest(_FixedBody):
    """ITER_NEXT (req 5): 16 iter_handle u64."""

    ID: ClassVar[int] = ReqId.ITER_NEXT
    LAYOUT: ClassVar[struct.Struct] = U64
    iter_handle: int


@frozen
class IterFinalizeRequest(_FixedBody):
    """ITER_FINALIZE (req 6): 16 iter_handle u64."""

    ID: ClassVar[int] = ReqId.ITER_FINALIZE
    LAYOUT: ClassVar[struct.Struct] = U64
    iter_handle: int


@frozen
class TrackAddRequest(_FixedBody):
    """TRACK_ADD (req 7): 16 key, 280 track_type i32, 288 track_inst_handle u64 (the client's
    cookie, echoed in every NOTIFY)."""

    ID: ClassVar[int] = ReqId.TRACK_ADD
    LAYOUT: ClassVar[struct.Struct] = _TRACK_ADD
    key: str
    track_type: int
    track_inst_handle: int


@frozen
class TrackDeleteRequest(_FixedBody):
    """TRACK_DELETE (req 8): 16 track_handle u64 (the executive's handle)."""

    ID: ClassVar[int] = ReqId.TRACK_DELETE
    LAYOUT: ClassVar[struct.Struct] = U64
    track_handle: int


@frozen
class SetCurrentMapRequest(_FixedBody):
    """SET_CURRENT_MAP (req 9): 16 map i32."""

    ID: ClassVar[int] = ReqId.SET_CURRENT_MAP
    LAYOUT: ClassVar[struct.Struct] = _I32_PAD
    map: int


REQUESTS: Final = {c.ID: c for c in (
    SetRequest, DeleteRequest, GetRequest, AdjustIntRequest, IterInitRequest, IterNextRequest,
    IterFinalizeRequest, TrackAddRequest, TrackDeleteRequest, SetCurrentMapRequest)}


# --------------------------------------------------------------------------------------------
# Responses and the NOTIFY event
# --------------------------------------------------------------------------------------------

_GET_HEAD: Final = struct.Struct("<QB7x")            # value_len, type        (@24..@40)
#: NOTIFY up to its values: cookie, key, event, new type, old type, new_len, old_len.
NOTIFY_HEAD: Final = struct.Struct("<Q264si4xB7xB7xQQ")  # (@24..@336)


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
class IterInitResponse(_FixedBody):
    """ITER_INIT (res 4): 24 iter_handle u64."""

    ID: ClassVar[int] = ResId.ITER_INIT
    LAYOUT: ClassVar[struct.Struct] = U64
    iter_handle: int


@frozen
class IterNextResponse(_FixedBody):
    """ITER_NEXT (res 5): 24 key, 288 value_len u64, 296 type u8.  The end of the iteration is
    the error CS_ERR_NO_SECTIONS (with this body zeroed)."""

    ID: ClassVar[int] = ResId.ITER_NEXT
    LAYOUT: ClassVar[struct.Struct] = _KEY_LEN_TYPE
    key: str
    value_len: int
    type: int


@frozen
class TrackAddResponse(_FixedBody):
    """TRACK_ADD (res 7): 24 track_handle u64 (the executive's handle for TRACK_DELETE)."""

    ID: ClassVar[int] = ResId.TRACK_ADD
    LAYOUT: ClassVar[struct.Struct] = U64
    track_handle: int


@frozen
class TrackDeleteResponse(_FixedBody):
    """TRACK_DELETE (res 8): 24 track_inst_handle u64 (the client's cookie)."""

    ID: ClassVar[int] = ResId.TRACK_DELETE
    LAYOUT: ClassVar[struct.Struct] = U64
    track_inst_handle: int


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
        return (NOTIFY_HEAD.pack(self.track_inst_handle, encode_name(self.key), self.event,
                                 self.new_type, self.old_type, len(self.new_value),
                                 len(self.old_value))
                + self.new_value + self.old_value)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> "NotifyEvent":
        need(body, NOTIFY_HEAD.size, "cmap NOTIFY", exact=False)
        cookie, raw, event, new_type, old_type, new_len, old_len = NOTIFY_HEAD.unpack_from(body)
        values = body[NOTIFY_HEAD.size:]
        if new_len + old_len != len(values):
            raise ProtoError(f"cmap NOTIFY: lengths {new_len}+{old_len} but {len(values)} "
                             "value bytes")
        return cls(cookie, decode_name(raw), event, new_type, bytes(values[:new_len]),
                   old_type, bytes(values[new_len:]))


#: Body sizes of the fixed responses the stock library's buffers allow (the ``Buf`` column).
RESPONSE_BUFFER: Final = {
    ResId.SET: 0, ResId.DELETE: 0, ResId.ADJUST_INT: 0, ResId.ITER_INIT: U64.size,
    ResId.ITER_NEXT: _KEY_LEN_TYPE.size, ResId.ITER_FINALIZE: 0, ResId.TRACK_ADD: U64.size,
    ResId.TRACK_DELETE: U64.size, ResId.SET_CURRENT_MAP: 0,
}

__all__ = [
    "ValueType", "MapId", "TrackType", "ReqId", "ResId", "VALUE_MAX", "Value", "int_range",
    "encode_value", "decode_value", "encode_stored_value", "decode_request_value",
    "SetRequest", "DeleteRequest", "GetRequest", "AdjustIntRequest",
    "IterInitRequest", "IterNextRequest", "IterFinalizeRequest", "TrackAddRequest",
    "TrackDeleteRequest", "SetCurrentMapRequest", "REQUESTS", "GetResponse",
    "IterInitResponse", "IterNextResponse", "TrackAddResponse", "TrackDeleteResponse",
    "NotifyEvent", "NOTIFY_HEAD", "RESPONSE_BUFFER",
]
