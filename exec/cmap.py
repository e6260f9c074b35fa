"""The cmap store: corosync's typed key/value map (``icmap``), in memory.

Everything the executive and the services know about configuration and runtime state
lives here under dotted keys (``totem.token``, ``runtime.members.2.status`` …), with the
same names, value types and iteration order as the real daemon, so ``corosync-cmapctl``
style dumps and the cmap IPC service (later) can be served straight from it.

Facts carried over from corosync 3.1.7 (``include/corosync/cmap.h``, ``exec/icmap.c``,
``exec/main.c``):

* value types are numbered INT8=1 … BINARY=12 (the numbers travel over IPC and totem;
  :class:`CmapType` is :class:`corosync.lib.proto.cmap.ValueType`);
* key names are 3..255 characters of ``[a-zA-Z0-9._/:-]``;
* setting a key to the value and type it already has is a no-op (no notification);
  setting it with another type replaces it (MODIFY);
* inc/dec work on integer types only and wrap around at the type's width;
* iteration is in byte order of the key (a trie in libqb), e.g. ``nodelist.node.10``
  sorts before ``nodelist.node.2``;
* tracking flags ADD=4, DELETE=1, MODIFY=2, PREFIX=8; without PREFIX only the exact key
  is tracked;
* read-only keys/prefixes (refused to *clients* with CS_ERR_ACCESS, the executive itself
  may still write them): see :data:`DEFAULT_RO_PREFIXES` / :data:`DEFAULT_RO_KEYS`.

Lookups are one dict access; prefix iteration is a bisect into a sorted key list.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

from attrs import define, frozen

from ..lib.ipc import CsError  # noqa: F401  (the store's errors are cs_error_t values)
# The value types, their ranges and the tracking flags (cmap.h) are defined once, with the
# IPC layouts that carry them; the store knows them under its historical names.
from ..lib.proto.cmap import TrackType as Track
from ..lib.proto.cmap import ValueType as CmapType
from ..lib.proto.cmap import int_range


class CmapError(Exception):
    """A refused cmap operation; ``.error`` is the cs_error_t a client would receive."""

    def __init__(self, error: CsError, message: str) -> None:
        super().__init__(message)
        self.error = error


KEYNAME_MINLEN = 3
KEYNAME_MAXLEN = 255
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:")

#: Prefixes the real daemon makes read-only for clients (main.c set_icmap_ro_keys_flag).
DEFAULT_RO_PREFIXES: tuple[str, ...] = (
    "internal_configuration.",
    "runtime.services.",
    "runtime.config.",
    "runtime.totem.",
    "uidgid.config.",
    "system.",
    "nodelist.",
)
#: Exact keys the real daemon makes read-only (they cannot change while running).
DEFAULT_RO_KEYS: tuple[str, ...] = (
    "totem.crypto_cipher",
    "totem.crypto_hash",
    "totem.crypto_model",
    "totem.keyfile",
    "totem.key",
    "totem.secauth",
    "totem.ip_version",
    "totem.rrp_mode",
    "totem.transport",
    "totem.cluster_name",
    "totem.netmtu",
    "totem.threads",
    "totem.version",
    "totem.nodeid",
    "totem.clear_node_high_bit",
    "config.reload_in_progress",
    "config.totemconfig_reload_in_progress",
)


@frozen
class CmapValue:
    """A typed value as stored (and as passed to track callbacks)."""

    type: CmapType
    value: Any


TrackCallback = Callable[[Track, str, "CmapValue | None", "CmapValue | None"], None]


@define
class _Tracker:
    handle: int
    key: str
    flags: Track
    callback: TrackCallback

    def matches(self, key: str) -> bool:
        if self.flags & Track.PREFIX:
            return key.startswith(self.key)
        return key == self.key


def check_key_name(key: str) -> None:
    """Raise CmapError(NAME_TOO_LONG) for a key corosync would refuse (icmap rules)."""
    if not (KEYNAME_MINLEN <= len(key) <= KEYNAME_MAXLEN) or not _KEY_CHARS.issuperset(key):
        raise CmapError(CsError.ERR_NAME_TOO_LONG, f"invalid key name {key!r}")


def check_value(t: CmapType, value: Any) -> Any:
    """Validate (and normalise) ``value`` for type ``t``; raise CmapError(INVALID_PARAM)."""
    t = CmapType(t)
    if t.is_integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CmapError(CsError.ERR_INVALID_PARAM, f"{t.name} needs an int, got {value!r}")
        lo, hi = int_range(t)
        if not lo <= value <= hi:
            raise CmapError(CsError.ERR_INVALID_PARAM, f"{value} out of range for {t.name} ({lo}..{hi})")
        return value
    if t in (CmapType.FLOAT, CmapType.DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CmapError(CsError.ERR_INVALID_PARAM, f"{t.name} needs a number, got {value!r}")
        value = float(value)
        if t is CmapType.FLOAT and math.isfinite(value):
            # store what a C float can hold, so get() returns what a client would see
            try:
                value = struct.unpack("<f", struct.pack("<f", value))[0]
            except OverflowError:
                raise CmapError(CsError.ERR_INVALID_PARAM, f"{value} does not fit a FLOAT") from None
        return value
    if t is CmapType.STRING:
        if not isinstance(value, str) or "\0" in value:
            raise CmapError(CsError.ERR_INVALID_PARAM, f"STRING needs a str without NUL, got {value!r}")
        return value
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CmapError(CsError.ERR_INVALID_PARAM, f"BINARY needs bytes, got {type(value).__name__}")
    return bytes(value)


class CmapStore:
    """The in-memory typed map with prefix iteration, tracking and read-only rules."""

    def __init__(self) -> None:
        self._values: dict[str, CmapValue] = {}
        self._sorted: list[str] = []
        self._trackers: dict[int, _Tracker] = {}
        self._next_handle = 1
        self._ro_prefixes: set[str] = set(DEFAULT_RO_PREFIXES)
        self._ro_keys: set[str] = set(DEFAULT_RO_KEYS)

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def from_entries(cls, entries: "Iterator[tuple[str, Any, CmapType]] | list[tuple[str, Any, CmapType]]") -> "CmapStore":
        """A store holding ``entries`` (e.g. ``CorosyncConfig.cmap_entries()``)."""
        store = cls()
        for key, value, t in entries:
            store.set(key, value, t)
        return store

    def load_config(self, config: Any) -> None:
        """Set every key of a :class:`CorosyncConfig` (``cmap_entries()``)."""
        for key, value, t in config.cmap_entries():
            self.set(key, value, t)

    # -- reading ---------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def get_entry(self, key: str) -> CmapValue:
        """The typed value of ``key``; CmapError(NOT_EXIST) when absent."""
        try:
            return self._values[key]
        except KeyError:
            raise CmapError(CsError.ERR_NOT_EXIST, f"key {key!r} does not exist") from None

    def get(self, key: str, default: Any = ...) -> Any:
        """The value of ``key`` (``default`` if given and the key is absent)."""
        entry = self._values.get(key)
        if entry is None:
            if default is ...:
                raise CmapError(CsError.ERR_NOT_EXIST, f"key {key!r} does not exist")
            return default
        return entry.value

    def get_type(self, key: str) -> CmapType:
        return self.get_entry(key).type

    def keys(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, in corosync's (byte) order."""
        start = bisect.bisect_left(self._sorted, prefix)
        end = len(self._sorted)
        if prefix:
            # every key with this prefix sorts before prefix + U+10FFFF
            end = bisect.bisect_left(self._sorted, prefix + "\U0010ffff", start)
        return self._sorted[start:end]

    def iter_prefix(self, prefix: str = "") -> Iterator[tuple[str, CmapValue]]:
        """(key, value) for keys starting with ``prefix``, sorted; safe against mutation."""
        for key in self.keys(prefix):
            entry = self._values.get(key)
            if entry is not None:
                yield key, entry

    def dump(self, prefix: str = "", *, show_binary: bool = False) -> str:
        """``corosync-cmapctl``-style text: ``key (u32) = 1`` lines.

        Binary values print as ``key (bin)`` unless ``show_binary`` (cmapctl ``-x``).
        """
        out = []
        for key, entry in self.iter_prefix(prefix):
            if entry.type is CmapType.BINARY and not show_binary:
                out.append(f"{key} (bin)")
            else:
                out.append(f"{key} ({entry.type.tag}) = {format_value(entry)}")
        return "".join(line + "\n" for line in out)

    # -- read-only rules -------------------------------------------------------------
    def is_key_ro(self, key: str) -> bool:
        """True if clients may not change ``key`` (corosync's icmap_is_key_ro)."""
        return key in self._ro_keys or any(key.startswith(p) for p in self._ro_prefixes)

    def set_ro_access(self, key: str, *, prefix: bool = False, ro: bool = True) -> None:
        """Add/remove a read-only key or prefix (e.g. ``nodelist.local_node_pos``)."""
        target = self._ro_prefixes if prefix else self._ro_keys
        if ro:
            target.add(key)
        else:
            target.discard(key)

    def _check_client(self, key: str, client: bool) -> None:
        if client and self.is_key_ro(key):
            raise CmapError(CsError.ERR_ACCESS, f"key {key!r} is read-only")

    # -- writing ---------------------------------------------------------------------
    def set(self, key: str, value: Any, type: CmapType, *, client: bool = False) -> None:
        """Store ``value`` as ``type`` under ``key``.

        ``client=True`` applies the read-only rules (what the cmap IPC service must pass).
        Same type and value as stored already: nothing happens, nobody is notified.
        """
        self._check_client(key, client)
        t = CmapType(type)
        value = check_value(t, value)
        old = self._values.get(key)
        if old is None:
            check_key_name(key)
        elif old.type is t and type_equal(old.value, value):
            return
        new = CmapValue(t, value)
        self._values[key] = new
        if old is None:
            bisect.insort(self._sorted, key)
            self._notify(Track.ADD, key, new, None)
        else:
            self._notify(Track.MODIFY, key, new, old)

    def delete(self, key: str, *, client: bool = False) -> None:
        """Remove ``key``; CmapError(NOT_EXIST) if absent."""
        self._check_client(key, client)
        old = self._values.pop(key, None)
        if old is None:
            raise CmapError(CsError.ERR_NOT_EXIST, f"key {key!r} does not exist")
        del self._sorted[bisect.bisect_left(self._sorted, key)]
        self._notify(Track.DELETE, key, None, old)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix`` (executive use, no RO check); returns count."""
        keys = self.keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def adjust(self, key: str, step: int, *, client: bool = False) -> Any:
        """Add ``step`` to an integer key, wrapping at the type's width; returns the new value."""
        self._check_client(key, client)
        entry = self.get_entry(key)
        if not entry.type.is_integer:
            raise CmapError(CsError.ERR_INVALID_PARAM, f"key {key!r} is {entry.type.name}, not an integer")
        lo, hi = int_range(entry.type)
        span = hi - lo + 1
        value = (entry.value + step - lo) % span + lo
        self.set(key, value, entry.type)
        return value

    def inc(self, key: str, *, client: bool = False) -> Any:
        return self.adjust(key, 1, client=client)

    def dec(self, key: str, *, client: bool = False) -> Any:
        return self.adjust(key, -1, client=client)

    # -- tracking --------------------------------------------------------------------
    def track_add(self, key: str, flags: Track | int, callback: TrackCallback) -> int:
        """Call ``callback(event, key, new, old)`` on changes; returns a handle.

        ``flags``: any of ADD, DELETE, MODIFY, plus PREFIX to track every key starting with
        ``key``.  ``new`` is None for DELETE, ``old`` is None for ADD.
        """
        flags = Track(flags)
        if not flags & (Track.ADD | Track.DELETE | Track.MODIFY):
            raise CmapError(CsError.ERR_INVALID_PARAM, "track flags select no event")
        handle = self._next_handle
        self._next_handle += 1
        self._trackers[handle] = _Tracker(handle, key, flags, callback)
        return handle

    def track_delete(self, handle: int) -> None:
        if self._trackers.pop(handle, None) is None:
            raise CmapError(CsError.ERR_NOT_EXIST, f"no tracker with handle {handle}")

    def _notify(self, event: Track, key: str, new: CmapValue | None, old: CmapValue | None) -> None:
        # copy: callbacks may add or delete trackers
        for tracker in list(self._trackers.values()):
            if tracker.flags & event and tracker.matches(key) and tracker.handle in self._trackers:
                tracker.callback(event, key, new, old)


def type_equal(a: Any, b: Any) -> bool:
    """Value equality that treats NaN as equal to itself (so re-setting NaN is a no-op)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def format_value(entry: CmapValue) -> str:
    """Value text as corosync-cmapctl prints it: ``%f`` for float/double; binary with
    printable ASCII kept, ``\\`` doubled and other bytes as ``\\xHH`` (its ``-x``)."""
    if entry.type in (CmapType.FLOAT, CmapType.DOUBLE):
        return f"{entry.value:f}"
    if entry.type is CmapType.BINARY:
        return "".join(
            "\\\\" if b == 0x5C else chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02X}" for b in bytes(entry.value)
        )
    return str(entry.value)
