"""The cmap service (id 0): the cmap IPC API over :class:`~corosync.exec.cmap.CmapStore`
and the one exec message, CMAP_MCAST (spec/totem-wire.md §5.6, spec/ipc-wire.md §4.1).

Exec side
    CMAP_MCAST carries ``totem.config_version``: sent in cmap's sync phase (reason SYNC)
    and whenever the local key changes (reason NEW_CONFIG_VERSION).  Receivers store
    ``runtime.members.<sender>.config_version``; during sync they track the highest version
    reported by others, and on the first multi-node sync a node whose own non-zero version
    differs from it asks the executive to shut down — as corosync does, because two nodes
    with different configurations must not form a cluster.

Lib side
    SET/DELETE/GET/ADJUST_INT, prefix iteration, tracking with NOTIFY events, and
    SET_CURRENT_MAP (map 0 = configuration/runtime, 1 = stats; the stats map is read-only
    here).  Lengths and ids follow the real daemon byte for byte: a GET response is
    ``40 + requested value_len`` long, STRING values include their NUL, errors keep the
    full-size zeroed body.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any, Iterator

from attrs import define, field

from corosync.exec.cmap import CmapError, CmapStore, CmapType, CmapValue, Track
from corosync.exec.cmap import CsError as StoreError
from corosync.exec.service import (REQ_HEADER, CsError, ExecHandler, LibHandler, Malformed,
                                   SendFailed, Service, ServiceApi, ServiceId, need,
                                   send_event, service_id_make)
from corosync.exec.totem.events import LogLevel
from corosync.exec.totem.wire import RingId

# exec message (§5.6)
MCAST_HEADER = struct.Struct("<16xB7xB7xB7xB7x")  # reason, no_items, reserved×2 → 48 bytes
ITEM_HEADER = struct.Struct("<H6x256sB7xQ")  # key len, key, value_type, value_len → 280
REASON_SYNC = 0
REASON_NEW_CONFIG_VERSION = 1
MAX_ITEMS = 32
CONFIG_VERSION_KEY = "totem.config_version"

# IPC (§4.1): request ids, response ids
REQ_SET, REQ_DELETE, REQ_GET, REQ_ADJUST_INT = 0, 1, 2, 3
REQ_ITER_INIT, REQ_ITER_NEXT, REQ_ITER_FINALIZE = 4, 5, 6
REQ_TRACK_ADD, REQ_TRACK_DELETE, REQ_SET_CURRENT_MAP = 7, 8, 9
RES_NOTIFY = 9
RES_SET_CURRENT_MAP = 10
MAP_DEFAULT, MAP_STATS = 0, 1
VALUE_MAX = 16384
GET_VALUE_MAX = 1024 * 1024  # our bound on a client's requested GET buffer
NAME = struct.Struct("<H6x256s")  # mar_name_t, 264 bytes
_U64 = struct.Struct("<Q")
NOTIFY = struct.Struct("<Q264si4xB7xB7xQQ")  # 312 bytes after the response header
TRACK_ALL_BITS = int(Track.ADD | Track.DELETE | Track.MODIFY | Track.PREFIX)

_FIXED = {CmapType.INT8: "b", CmapType.UINT8: "B", CmapType.INT16: "h", CmapType.UINT16: "H",
          CmapType.INT32: "i", CmapType.UINT32: "I", CmapType.INT64: "q", CmapType.UINT64: "Q",
          CmapType.FLOAT: "f", CmapType.DOUBLE: "d"}


def encode_value(entry: CmapValue) -> bytes:
    """A typed value as corosync stores it (native order; STRING with its NUL)."""
    code = _FIXED.get(entry.type)
    if code is not None:
        return struct.pack("<" + code, entry.value)
    if entry.type is CmapType.STRING:
        return entry.value.encode("utf-8", "surrogateescape") + b"\0"
    return bytes(entry.value)


def decode_value(t: CmapType, raw: bytes) -> Any:
    """Inverse of :func:`encode_value`; CmapError(INVALID_PARAM) for a wrong size."""
    code = _FIXED.get(t)
    if code is not None:
        if len(raw) != struct.calcsize(code):
            raise CmapError(StoreError.ERR_INVALID_PARAM,
                            f"{t.name} needs {struct.calcsize(code)} bytes, got {len(raw)}")
        return struct.unpack("<" + code, raw)[0]
    if t is CmapType.STRING:
        text = raw.split(b"\0", 1)[0]
        if len(raw) > len(text) + 1:
            raise CmapError(StoreError.ERR_INVALID_PARAM,
                            "string value_len beyond its NUL")
        return text.decode("utf-8", "surrogateescape")
    return bytes(raw)


def decode_name(buf: bytes, off: int = 0) -> str:
    """A mar_name_t: ``length`` bytes of ``value`` but never past a NUL."""
    length, value = NAME.unpack_from(buf, off)
    return value[:min(length, 256)].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def encode_name(key: str) -> bytes:
    raw = key.encode("utf-8", "surrogateescape")[:255]
    return NAME.pack(len(raw), raw)


def _lookup(store: CmapStore, key: str) -> CmapValue | None:
    try:
        return store.get_entry(key)
    except CmapError:
        return None


def _round8(n: int) -> int:
    return (n + 7) & ~7


# ------------------------------------------------------------------------- exec message
@define
class McastItem:
    key: str
    type: int  # 0 = NOT_EXIST, else CmapType
    value: bytes = b""


def encode_cmap_mcast(reason: int, items: list[McastItem]) -> bytes:
    """CMAP_MCAST (id 0): 48-byte header then 8-aligned items (§5.6)."""
    if len(items) > MAX_ITEMS:
        raise ValueError("too many items")
    body = []
    for item in items:
        key = item.key.encode()
        raw = ITEM_HEADER.pack(len(key), key, item.type, len(item.value)) + item.value
        body.append(raw + bytes(_round8(len(raw)) - len(raw)))
    payload = b"".join(body)
    size = MCAST_HEADER.size + len(payload)
    header = bytearray(MCAST_HEADER.pack(reason, len(items), 0, 0))
    REQ_HEADER.pack_into(header, 0, service_id_make(ServiceId.CMAP, 0), size)
    return bytes(header) + payload


def decode_cmap_mcast(msg: bytes) -> tuple[int, list[McastItem]]:
    need(msg, MCAST_HEADER.size, "cmap mcast header")
    reason, count, _r1, _r2 = MCAST_HEADER.unpack_from(msg)
    if count > MAX_ITEMS:
        raise Malformed("cmap_bad_count", f"{count} items")
    items, off = [], MCAST_HEADER.size
    for _ in range(count):
        need(msg, off + ITEM_HEADER.size, "cmap mcast item")
        klen, key, vtype, vlen = ITEM_HEADER.unpack_from(msg, off)
        if vlen > len(msg) - off - ITEM_HEADER.size:
            raise Malformed("cmap_bad_size", f"item value_len {vlen} beyond the message")
        value = msg[off + ITEM_HEADER.size: off + ITEM_HEADER.size + vlen]
        name = key[:min(klen, 256)].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        items.append(McastItem(name, vtype, bytes(value)))
        off += _round8(ITEM_HEADER.size + vlen)
    return reason, items


def swap_cmap_mcast(msg: bytes) -> bytes:
    """Byte-swap a big-endian CMAP_MCAST (header, each item's key length, value length
    and numeric value) into native order."""
    need(msg, MCAST_HEADER.size, "cmap mcast header")
    out = bytearray(msg)
    for off in (0, 8):
        struct.pack_into("<i", out, off, struct.unpack_from(">i", out, off)[0])
    count = out[24]
    off = MCAST_HEADER.size
    for _ in range(min(count, MAX_ITEMS)):
        need(msg, off + ITEM_HEADER.size, "cmap mcast item")
        struct.pack_into("<H", out, off, struct.unpack_from(">H", out, off)[0])
        vlen = struct.unpack_from(">Q", out, off + 272)[0]
        struct.pack_into("<Q", out, off + 272, vlen)
        vtype = out[off + 264]
        code = _FIXED.get(CmapType(vtype)) if 1 <= vtype <= 12 else None
        voff = off + ITEM_HEADER.size
        if code and code not in "bB" and voff + struct.calcsize(code) <= len(out):
            struct.pack_into("<" + code, out, voff, struct.unpack_from(">" + code, out, voff)[0])
        off += _round8(ITEM_HEADER.size + min(vlen, len(out)))
    return bytes(out)


# ------------------------------------------------------------------------- per-connection
@define
class _ConnState:
    stats_map: bool = False
    iters: dict[int, Iterator[tuple[str, CmapValue]]] = field(factory=dict)
    tracks: dict[int, tuple[int, int, bool]] = field(factory=dict)  # handle → (store handle, inst, stats)


class CmapService(Service):
    id = ServiceId.CMAP
    name = "corosync configuration map access"
    ipc_name = "cmap"
    sync = True
    subsys = "CMAP"

    def __init__(self, api: ServiceApi, stats: CmapStore | None = None) -> None:
        super().__init__(api)
        self.store = api.cmap
        self.stats_store = stats if stats is not None else CmapStore()
        self.exec_handlers = [ExecHandler(self._exec_mcast, swap_cmap_mcast)]
        self.lib_handlers = {
            REQ_SET: LibHandler(self._lib_set), REQ_DELETE: LibHandler(self._lib_delete),
            REQ_GET: LibHandler(self._lib_get), REQ_ADJUST_INT: LibHandler(self._lib_adjust),
            REQ_ITER_INIT: LibHandler(self._lib_iter_init),
            REQ_ITER_NEXT: LibHandler(self._lib_iter_next),
            REQ_ITER_FINALIZE: LibHandler(self._lib_iter_finalize),
            REQ_TRACK_ADD: LibHandler(self._lib_track_add),
            REQ_TRACK_DELETE: LibHandler(self._lib_track_delete),
            REQ_SET_CURRENT_MAP: LibHandler(self._lib_set_current_map),
        }
        self._handles = itertools.count(1)
        self.trans_entries = 0
        self.my_config_version = 0
        self.highest_config_version = 0
        self.first_sync = True
        self._version_track = self.store.track_add(
            CONFIG_VERSION_KEY, Track.ADD | Track.DELETE | Track.MODIFY, self._version_changed)

    # ------------------------------------------------------------------ exec side
    def _config_version(self) -> int:
        entry = _lookup(self.store, CONFIG_VERSION_KEY)
        return int(entry.value) if entry is not None and entry.type is CmapType.UINT64 else 0

    def _version_item(self) -> McastItem:
        entry = _lookup(self.store, CONFIG_VERSION_KEY)
        if entry is None:
            return McastItem(CONFIG_VERSION_KEY, 0)
        return McastItem(CONFIG_VERSION_KEY, int(entry.type), encode_value(entry))

    def _send_version(self, reason: int) -> bool:
        try:
            self.api.mcast(encode_cmap_mcast(reason, [self._version_item()]))
        except SendFailed:
            return False
        return True

    def _version_changed(self, *_args: Any) -> None:
        self.my_config_version = self._config_version()
        if not self._send_version(REASON_NEW_CONFIG_VERSION):
            self.api.log(LogLevel.ERROR, "Can't inform other nodes about new config version",
                         self.subsys)

    def _exec_mcast(self, msg: bytes, nodeid: int) -> None:
        reason, items = decode_cmap_mcast(msg)
        if reason not in (REASON_SYNC, REASON_NEW_CONFIG_VERSION):
            return
        version = 0
        for item in items:
            if item.key == CONFIG_VERSION_KEY:
                if item.type == CmapType.UINT64 and len(item.value) == 8:
                    version = _U64.unpack(item.value)[0]
                break
        if nodeid != self.api.nodeid and version > self.highest_config_version:
            self.highest_config_version = version
        self.store.set(f"runtime.members.{nodeid}.config_version", version, CmapType.UINT64)

    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        self.trans_entries = len(trans_list)
        self.my_config_version = self._config_version()
        self.highest_config_version = self.my_config_version

    def sync_process(self) -> bool:
        return self._send_version(REASON_SYNC)

    def sync_activate(self) -> None:
        if self.trans_entries == 0:
            return  # single node sync
        if not self.first_sync:
            return
        self.first_sync = False
        if self.my_config_version == 0:
            return
        if self.highest_config_version != self.my_config_version:
            self.api.log(LogLevel.ERROR,
                         f"Received config version ({self.highest_config_version}) is different "
                         f"than my config version ({self.my_config_version})! Exiting",
                         self.subsys)
            self.api.shutdown_request("config version mismatch")

    def exec_exit(self) -> None:
        try:
            self.store.track_delete(self._version_track)
        except CmapError:
            pass

    # ------------------------------------------------------------------ lib side
    def lib_init(self, conn: Any) -> None:
        conn.context = _ConnState()

    def lib_exit(self, conn: Any) -> None:
        state: _ConnState | None = conn.context
        if not isinstance(state, _ConnState):
            return
        for store_handle, _inst, stats in state.tracks.values():
            try:
                (self.stats_store if stats else self.store).track_delete(store_handle)
            except CmapError:
                pass
        state.tracks.clear()
        state.iters.clear()

    def _state(self, conn: Any) -> _ConnState:
        if not isinstance(conn.context, _ConnState):
            conn.context = _ConnState()
        return conn.context

    def _map(self, conn: Any) -> CmapStore:
        return self.stats_store if self._state(conn).stats_map else self.store

    def _write_allowed(self, conn: Any, key: str) -> CsError | None:
        if self._state(conn).stats_map or self.store.is_key_ro(key):
            return CsError.ERR_ACCESS
        return None

    def _lib_set(self, conn: Any, p: bytes) -> None:
        need(p, 280, "cmap set")
        key = decode_name(p)
        (vlen,) = _U64.unpack_from(p, 264)
        vtype = p[272]
        error = self._write_allowed(conn, key)
        if error is None:
            if not 1 <= vtype <= 12 or vlen > VALUE_MAX or len(p) < 280 + vlen:
                error = CsError.ERR_INVALID_PARAM
            else:
                try:
                    t = CmapType(vtype)
                    self.store.set(key, decode_value(t, p[280:280 + vlen]), t)
                    error = CsError.OK
                except CmapError as exc:
                    error = CsError(int(exc.error))
        conn.send_response(REQ_SET, b"", error)

    def _lib_delete(self, conn: Any, p: bytes) -> None:
        need(p, 264, "cmap delete")
        key = decode_name(p)
        error = self._write_allowed(conn, key)
        if error is None:
            try:
                self.store.delete(key)
                error = CsError.OK
            except CmapError as exc:
                error = CsError(int(exc.error))
        conn.send_response(REQ_DELETE, b"", error)

    def _lib_get(self, conn: Any, p: bytes) -> None:
        need(p, 272, "cmap get")
        key = decode_name(p)
        (requested,) = _U64.unpack_from(p, 264)
        store = self._map(conn)
        entry = _lookup(store, key)
        limit = min(GET_VALUE_MAX, getattr(conn, "max_msg_size", GET_VALUE_MAX + 40) - 40)
        if requested > limit:  # the response could not reach the client
            conn.send_response(REQ_GET, bytes(16), CsError.ERR_NO_MEMORY)
            return
        if entry is None:
            conn.send_response(REQ_GET, bytes(16), CsError.ERR_NOT_EXIST)
            return
        raw = encode_value(entry)
        if requested == 0:
            conn.send_response(REQ_GET, struct.pack("<QB7x", len(raw), int(entry.type)))
        elif requested < len(raw):
            conn.send_response(REQ_GET, bytes(16), CsError.ERR_INVALID_PARAM)
        else:
            conn.send_response(REQ_GET, struct.pack("<QB7x", len(raw), int(entry.type))
                               + raw + bytes(requested - len(raw)))

    def _lib_adjust(self, conn: Any, p: bytes) -> None:
        need(p, 268, "cmap adjust")
        key = decode_name(p)
        (step,) = struct.unpack_from("<i", p, 264)
        error = self._write_allowed(conn, key)
        if error is None:
            try:
                self.store.adjust(key, step)
                error = CsError.OK
            except CmapError as exc:
                error = CsError(int(exc.error))
        conn.send_response(REQ_ADJUST_INT, b"", error)

    def _lib_iter_init(self, conn: Any, p: bytes) -> None:
        need(p, 264, "cmap iter init")
        prefix = decode_name(p)
        handle = next(self._handles)
        self._state(conn).iters[handle] = self._map(conn).iter_prefix(prefix)
        conn.send_response(REQ_ITER_INIT, _U64.pack(handle))

    def _lib_iter_next(self, conn: Any, p: bytes) -> None:
        need(p, 8, "cmap iter next")
        (handle,) = _U64.unpack_from(p)
        it = self._state(conn).iters.get(handle)
        if it is None:
            conn.send_response(REQ_ITER_NEXT, bytes(280), CsError.ERR_BAD_HANDLE)
            return
        item = next(it, None)
        if item is None:
            conn.send_response(REQ_ITER_NEXT, bytes(280), CsError.ERR_NO_SECTIONS)
            return
        key, entry = item
        conn.send_response(REQ_ITER_NEXT, encode_name(key)
                           + struct.pack("<QB7x", len(encode_value(entry)), int(entry.type)))

    def _lib_iter_finalize(self, conn: Any, p: bytes) -> None:
        need(p, 8, "cmap iter finalize")
        (handle,) = _U64.unpack_from(p)
        found = self._state(conn).iters.pop(handle, None) is not None
        conn.send_response(REQ_ITER_FINALIZE, b"", CsError.OK if found else CsError.ERR_BAD_HANDLE)

    def _lib_track_add(self, conn: Any, p: bytes) -> None:
        need(p, 280, "cmap track add")
        key = decode_name(p)
        (track_type,) = struct.unpack_from("<i", p, 264)
        (inst,) = _U64.unpack_from(p, 272)
        state = self._state(conn)
        if track_type & ~TRACK_ALL_BITS or not track_type & 7:
            conn.send_response(REQ_TRACK_ADD, _U64.pack(0), CsError.ERR_INVALID_PARAM)
            return
        store = self._map(conn)

        def notify(event: Track, changed: str, new: CmapValue | None,
                   old: CmapValue | None) -> None:
            self._notify(conn, inst, event, changed, new, old)

        store_handle = store.track_add(key, track_type, notify)
        handle = next(self._handles)
        state.tracks[handle] = (store_handle, inst, state.stats_map)
        conn.send_response(REQ_TRACK_ADD, _U64.pack(handle))

    def _notify(self, conn: Any, inst: int, event: Track, key: str, new: CmapValue | None,
                old: CmapValue | None) -> None:
        new_raw = encode_value(new) if new is not None else b""
        old_raw = encode_value(old) if old is not None else b""
        name = key.encode("utf-8", "surrogateescape")[:256]
        send_event(conn, RES_NOTIFY, NOTIFY.pack(
            inst, struct.pack("<H6x", len(name)) + name.ljust(256, b"\0"), int(event),
            int(new.type) if new else 0, int(old.type) if old else 0,
            len(new_raw), len(old_raw)) + new_raw + old_raw)

    def _lib_track_delete(self, conn: Any, p: bytes) -> None:
        need(p, 8, "cmap track delete")
        (handle,) = _U64.unpack_from(p)
        track = self._state(conn).tracks.pop(handle, None)
        if track is None:
            conn.send_response(REQ_TRACK_DELETE, _U64.pack(0), CsError.ERR_BAD_HANDLE)
            return
        store_handle, inst, stats = track
        try:
            (self.stats_store if stats else self.store).track_delete(store_handle)
        except CmapError:
            pass
        conn.send_response(REQ_TRACK_DELETE, _U64.pack(inst))

    def _lib_set_current_map(self, conn: Any, p: bytes) -> None:
        need(p, 4, "cmap set current map")
        (which,) = struct.unpack_from("<i", p)
        state = self._state(conn)
        if state.iters or state.tracks:
            error = CsError.ERR_BUSY
        elif which in (MAP_DEFAULT, MAP_STATS):
            state.stats_map = which == MAP_STATS
            error = CsError.OK
        else:
            error = CsError.ERR_NOT_EXIST
        conn.send_response(RES_SET_CURRENT_MAP, b"", error)
