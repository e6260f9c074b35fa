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
    full-size zeroed body.  Every request and response layout, and the value codec, is
    :mod:`corosync.lib.proto.cmap`'s (the client library uses the same classes the other
    way round); a handler receives its request decoded.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any, Iterator

from attrs import define, field

from corosync.exec.cmap import CmapError, CmapStore, CmapType, CmapValue, Track
from corosync.exec.service import (REQ_HEADER, CsError, ExecHandler, LibHandler, Malformed,
                                   SendFailed, Service, ServiceApi, ServiceId, need,
                                   send_event, service_id_make)
from corosync.exec.totem.events import LogLevel
from corosync.exec.totem.wire import RingId
from corosync.lib.proto import cmap as proto
from corosync.lib.proto.cmap import MapId, ReqId, ResId
from corosync.lib.proto.common import ProtoError, decode_name, encode_name

# exec message (§5.6): executive-only, so its layout lives here
MCAST_HEADER = struct.Struct("<16xB7xB7xB7xB7x")  # reason, no_items, reserved×2 → 48 bytes
ITEM_HEADER = struct.Struct("<264sB7xQ")  # key mar_name_t, value_type, value_len → 280
REASON_SYNC = 0
REASON_NEW_CONFIG_VERSION = 1
MAX_ITEMS = 32
CONFIG_VERSION_KEY = "totem.config_version"

# IPC (§4.1): the layouts are lib/proto/cmap.py's; these names are the ids under the names
# the service tests have always used.
REQ_SET, REQ_DELETE, REQ_GET, REQ_ADJUST_INT = (ReqId.SET, ReqId.DELETE, ReqId.GET,
                                                ReqId.ADJUST_INT)
REQ_ITER_INIT, REQ_ITER_NEXT, REQ_ITER_FINALIZE = (ReqId.ITER_INIT, ReqId.ITER_NEXT,
                                                   ReqId.ITER_FINALIZE)
REQ_TRACK_ADD, REQ_TRACK_DELETE, REQ_SET_CURRENT_MAP = (ReqId.TRACK_ADD, ReqId.TRACK_DELETE,
                                                        ReqId.SET_CURRENT_MAP)
RES_NOTIFY = ResId.NOTIFY
NOTIFY = proto.NOTIFY_HEAD
GET_VALUE_MAX = 1024 * 1024  # our bound on a client's requested GET buffer
TRACK_ALL_BITS = int(Track.ADD | Track.DELETE | Track.MODIFY | Track.PREFIX)


def encode_value(entry: CmapValue) -> bytes:
    """A stored value as corosync sends it (native order; STRING with its NUL)."""
    return proto.encode_stored_value(entry.type, entry.value)


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
        raw = ITEM_HEADER.pack(encode_name(item.key), item.type, len(item.value)) + item.value
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
        key, vtype, vlen = ITEM_HEADER.unpack_from(msg, off)
        if vlen > len(msg) - off - ITEM_HEADER.size:
            raise Malformed("cmap_bad_size", f"item value_len {vlen} beyond the message")
        value = msg[off + ITEM_HEADER.size: off + ITEM_HEADER.size + vlen]
        items.append(McastItem(decode_name(key), vtype, bytes(value)))
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
        code = CmapType(vtype).struct_code if 1 <= vtype <= 12 else None
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
        self.lib_handlers = {cls.ID: _decoding(cls, fn) for cls, fn in (
            (proto.SetRequest, self._lib_set), (proto.DeleteRequest, self._lib_delete),
            (proto.GetRequest, self._lib_get), (proto.AdjustIntRequest, self._lib_adjust),
            (proto.IterInitRequest, self._lib_iter_init),
            (proto.IterNextRequest, self._lib_iter_next),
            (proto.IterFinalizeRequest, self._lib_iter_finalize),
            (proto.TrackAddRequest, self._lib_track_add),
            (proto.TrackDeleteRequest, self._lib_track_delete),
            (proto.SetCurrentMapRequest, self._lib_set_current_map))}
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
                    version = int(proto.decode_value(CmapType.UINT64, item.value))
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

    def _write(self, conn: Any, key: str, change: Callable[[], object]) -> CsError:
        """Run a client's ``change`` to ``key`` unless the key is read-only for clients
        (or the connection reads the stats map); the cs_error_t to answer."""
        if self._state(conn).stats_map or self.store.is_key_ro(key):
            return CsError.ERR_ACCESS
        try:
            change()
        except CmapError as exc:
            return CsError(int(exc.error))
        except ProtoError:       # a value that does not fit its type
            return CsError.ERR_INVALID_PARAM
        return CsError.OK

    def _lib_set(self, conn: Any, req: proto.SetRequest) -> None:
        def change() -> None:
            if len(req.value) > proto.VALUE_MAX:
                raise ProtoError(f"value of {len(req.value)} bytes")
            value = proto.decode_request_value(req.type, req.value)
            self.store.set(req.key, value, CmapType(req.type))

        conn.send_response(ResId.SET, b"", self._write(conn, req.key, change))

    def _lib_delete(self, conn: Any, req: proto.DeleteRequest) -> None:
        conn.send_response(ResId.DELETE, b"",
                           self._write(conn, req.key, lambda: self.store.delete(req.key)))

    def _lib_get(self, conn: Any, req: proto.GetRequest) -> None:
        entry = _lookup(self._map(conn), req.key)
        limit = min(GET_VALUE_MAX, getattr(conn, "max_msg_size", GET_VALUE_MAX + 40) - 40)
        if req.value_len > limit:  # the response could not reach the client
            error = CsError.ERR_NO_MEMORY
        elif entry is None:
            error = CsError.ERR_NOT_EXIST
        else:
            raw = encode_value(entry)
            if 0 < req.value_len < len(raw):
                error = CsError.ERR_INVALID_PARAM
            else:  # value_len 0: type and length only
                conn.send_response(ResId.GET, proto.GetResponse(len(raw), int(entry.type), raw)
                                   .encode(requested=req.value_len))
                return
        conn.send_response(ResId.GET, proto.GetResponse(0, 0).encode(requested=0), error)

    def _lib_adjust(self, conn: Any, req: proto.AdjustIntRequest) -> None:
        conn.send_response(ResId.ADJUST_INT, b"", self._write(
            conn, req.key, lambda: self.store.adjust(req.key, req.step)))

    def _lib_iter_init(self, conn: Any, req: proto.IterInitRequest) -> None:
        handle = next(self._handles)
        self._state(conn).iters[handle] = self._map(conn).iter_prefix(req.prefix)
        conn.send_response(ResId.ITER_INIT, proto.IterInitResponse(handle).encode())

    def _lib_iter_next(self, conn: Any, req: proto.IterNextRequest) -> None:
        it = self._state(conn).iters.get(req.iter_handle)
        item = None if it is None else next(it, None)
        if item is None:
            error = CsError.ERR_BAD_HANDLE if it is None else CsError.ERR_NO_SECTIONS
            conn.send_response(ResId.ITER_NEXT, proto.IterNextResponse("", 0, 0).encode(), error)
            return
        key, entry = item
        conn.send_response(ResId.ITER_NEXT, proto.IterNextResponse(
            key, len(encode_value(entry)), int(entry.type)).encode())

    def _lib_iter_finalize(self, conn: Any, req: proto.IterFinalizeRequest) -> None:
        found = self._state(conn).iters.pop(req.iter_handle, None) is not None
        conn.send_response(ResId.ITER_FINALIZE, b"",
                           CsError.OK if found else CsError.ERR_BAD_HANDLE)

    def _lib_track_add(self, conn: Any, req: proto.TrackAddRequest) -> None:
        state = self._state(conn)
        if req.track_type & ~TRACK_ALL_BITS or not req.track_type & 7:
            conn.send_response(ResId.TRACK_ADD, proto.TrackAddResponse(0).encode(),
                               CsError.ERR_INVALID_PARAM)
            return
        inst = req.track_inst_handle

        def notify(event: Track, changed: str, new: CmapValue | None,
                   old: CmapValue | None) -> None:
            self._notify(conn, inst, event, changed, new, old)

        store_handle = self._map(conn).track_add(req.key, req.track_type, notify)
        handle = next(self._handles)
        state.tracks[handle] = (store_handle, inst, state.stats_map)
        conn.send_response(ResId.TRACK_ADD, proto.TrackAddResponse(handle).encode())

    def _notify(self, conn: Any, inst: int, event: Track, key: str, new: CmapValue | None,
                old: CmapValue | None) -> None:
        send_event(conn, ResId.NOTIFY, proto.NotifyEvent(
            inst, key, int(event),
            int(new.type) if new else 0, encode_value(new) if new else b"",
            int(old.type) if old else 0, encode_value(old) if old else b"").encode())

    def _lib_track_delete(self, conn: Any, req: proto.TrackDeleteRequest) -> None:
        track = self._state(conn).tracks.pop(req.track_handle, None)
        if track is None:
            conn.send_response(ResId.TRACK_DELETE, proto.TrackDeleteResponse(0).encode(),
                               CsError.ERR_BAD_HANDLE)
            return
        store_handle, inst, stats = track
        try:
            (self.stats_store if stats else self.store).track_delete(store_handle)
        except CmapError:
            pass
        conn.send_response(ResId.TRACK_DELETE, proto.TrackDeleteResponse(inst).encode())

    def _lib_set_current_map(self, conn: Any, req: proto.SetCurrentMapRequest) -> None:
        state = self._state(conn)
        if state.iters or state.tracks:
            error = CsError.ERR_BUSY
        elif req.map in (MapId.DEFAULT, MapId.STATS):
            state.stats_map = req.map == MapId.STATS
            error = CsError.OK
        else:
            error = CsError.ERR_NOT_EXIST
        conn.send_response(ResId.SET_CURRENT_MAP, b"", error)


def _decoding(cls: Any, handler: Callable[[Any, Any], None]) -> LibHandler:
    """A lib handler that gives ``handler`` the request decoded by lib/proto/cmap.py.  Bytes
    after the fields are ignored (as the C executive does); a body too short for its fields,
    or for the value_len a SET announces, is Malformed: the host answers
    CS_ERR_INVALID_PARAM and counts it."""
    def decode_and_handle(conn: Any, payload: bytes) -> None:
        try:
            request = cls.decode(payload, exact=False)
        except ProtoError as exc:
            raise Malformed("truncated", str(exc)) from None
        handler(conn, request)
    return LibHandler(decode_and_handle)
