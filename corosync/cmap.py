"""corosync's configuration map (cmap) client: read, write, iterate and track keys.

Two handle types share one protocol description (see :mod:`corosync._common`):

* :class:`Cmap` — blocking, like libcmap; tracking callbacks run inside :meth:`Cmap.dispatch`,
  and :meth:`Cmap.fileno` is the descriptor to poll for pending notifications.
* :class:`AsyncCmap` — the same calls as trio coroutines; notifications are an async iterator.

Example (blocking)::

    from corosync import cmap

    with cmap.Cmap.initialize() as h:
        print(h.get("totem.cluster_name").value)
        h.set_uint32("my.counter", 1)
        h.inc("my.counter")
        for key, value in h.items("runtime.members."):
            print(key, value.type.tag, value.value)
        h.track_add("my.", cmap.TrackType.ADD | cmap.TrackType.PREFIX, print)
        h.dispatch(cmap.DispatchFlags.ONE)      # prints one Notification

Example (trio)::

    async with await cmap.AsyncCmap.initialize() as h:
        await h.track_add("my.", cmap.TrackType.MODIFY | cmap.TrackType.PREFIX)
        async for note in h.notifications():
            print(note.key, note.new_value)

Errors are :class:`~corosync._common.CsError` with the ``cs_error_t`` the C library would
return (``CS_ERR_NOT_EXIST`` for a missing key, ``CS_ERR_LIBRARY`` when no executive runs).
"""

from __future__ import annotations

import itertools
import os
from contextlib import aclosing
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, Final

from attrs import frozen

from corosync._common import (AsyncServiceHandle, CsError, CsErrorCode, DispatchFlags,
                              HandleCore, Plan, Request, ServiceHandle, check, decode_reply)
from corosync.lib.ipc import AsyncIpcClient, IpcClient, pack_request
from corosync.lib.proto import cmap as proto
from corosync.lib.proto.common import CS_MAX_NAME_LENGTH, ProtoError
from corosync.lib.proto.cmap import MapId, TrackType, Value, ValueType

__all__ = [
    "Cmap", "AsyncCmap", "CmapValue", "IterEntry", "Notification", "NotifyCallback",
    "ValueType", "MapId", "TrackType", "DispatchFlags", "CsError", "CsErrorCode",
]


SERVICE: Final = "cmap"
#: The typed getters of libcmap ask for this many bytes (any fixed-size value fits).
_TYPED_GET_LEN: Final = 16
#: How often :meth:`Cmap.get` retries when the value grew between its two GETs.
_GET_RETRIES: Final = 3


@frozen
class CmapValue:
    """A value with its type.  STRING values are ``str`` (without the NUL), BINARY ``bytes``,
    FLOAT/DOUBLE ``float`` and the integer types ``int``."""

    type: ValueType
    value: Value


@frozen
class IterEntry:
    """One key of an iteration: its name, value length (STRING: NUL included) and type."""

    key: str
    value_len: int
    type: ValueType


@frozen
class Notification:
    """A tracked key changed.  ``event`` is ADD, DELETE or MODIFY; ``new_value`` is None for
    DELETE, ``old_value`` None for ADD (and for increments done inside the executive)."""

    track_handle: int
    event: TrackType
    key: str
    new_value: CmapValue | None
    old_value: CmapValue | None
    user_data: Any = None


NotifyCallback = Callable[[Notification], None]


@frozen
class _Track:
    handle: int            # the executive's track handle
    callback: NotifyCallback | None
    user_data: Any


def _typed(vtype: int, raw: bytes) -> CmapValue:
    try:
        t = ValueType(vtype)
        return CmapValue(t, proto.decode_value(t, raw))
    except (ValueError, ProtoError) as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, f"undecodable value: {exc}") from None


def _request(req: Any) -> Request:
    try:
        body = req.encode()
    except ProtoError as exc:
        code = (CsErrorCode.ERR_NAME_TOO_LONG if "too long" in str(exc)
                else CsErrorCode.ERR_INVALID_PARAM)
        raise CsError(code, str(exc)) from None
    return Request(pack_request(req.ID, body))


def _check_key(key: str) -> None:
    if len(key.encode("utf-8", "surrogateescape")) >= CS_MAX_NAME_LENGTH:
        raise CsError(CsErrorCode.ERR_NAME_TOO_LONG, key)


class _CmapProtocol(HandleCore):
    """The call plans, notification decoding and typed accessors both handle types share
    (the connection plumbing comes from :class:`~corosync._common.ServiceHandle` /
    :class:`~corosync._common.AsyncServiceHandle`)."""

    SERVICE = SERVICE
    _tracks: dict[int, _Track]

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self._tracks = {}        # client cookie -> track
        self._cookies = itertools.count(1)

    # -- plans --------------------------------------------------------------------------------

    @staticmethod
    def _plan_set_current_map(map_id: int) -> Plan[None]:
        check((yield _request(proto.SetCurrentMapRequest(map_id))), "set_current_map")

    @staticmethod
    def _plan_get_raw(key: str, capacity: int) -> Plan[proto.GetResponse]:
        _check_key(key)
        reply = check((yield _request(proto.GetRequest(key, capacity))), f"get {key}")
        return decode_reply(proto.GetResponse, reply, "get")  # type: ignore[no-any-return]

    def _plan_get(self, key: str) -> Plan[CmapValue]:
        for _ in range(_GET_RETRIES):
            probe = yield from self._plan_get_raw(key, 0)
            if probe.value_len == 0:
                return _typed(probe.type, b"")
            try:
                full = yield from self._plan_get_raw(key, probe.value_len)
            except CsError as exc:
                if exc.code == CsErrorCode.ERR_INVALID_PARAM:
                    continue        # the value grew between the two requests
                raise
            return _typed(full.type, full.value)
        raise CsError(CsErrorCode.ERR_TRY_AGAIN, f"get {key}: value keeps changing")

    def _plan_get_typed(self, key: str, vtype: ValueType) -> Plan[Value]:
        if vtype is ValueType.STRING or vtype is ValueType.BINARY:
            value = yield from self._plan_get(key)
        else:
            res = yield from self._plan_get_raw(key, _TYPED_GET_LEN)
            value = _typed(res.type, res.value)
        if value.type is not vtype:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM,
                          f"{key} is {value.type.name}, not {vtype.name}")
        return value.value

    @staticmethod
    def _plan_set(key: str, value: Value, vtype: ValueType) -> Plan[None]:
        _check_key(key)
        try:
            raw = proto.encode_value(ValueType(vtype), value)
        except (ProtoError, ValueError) as exc:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, str(exc)) from None
        check((yield _request(proto.SetRequest(key, vtype, raw))), f"set {key}")

    @staticmethod
    def _plan_delete(key: str) -> Plan[None]:
        _check_key(key)
        check((yield _request(proto.DeleteRequest(key))), f"delete {key}")

    @staticmethod
    def _plan_adjust(key: str, step: int) -> Plan[None]:
        _check_key(key)
        check((yield _request(proto.AdjustIntRequest(key, step))), f"adjust {key}")

    @staticmethod
    def _plan_iter_init(prefix: str) -> Plan[int]:
        _check_key(prefix)
        reply = check((yield _request(proto.IterInitRequest(prefix))), "iter_init")
        return decode_reply(proto.IterInitResponse, reply, "iter_init").iter_handle  # type: ignore

    @staticmethod
    def _plan_iter_next(handle: int) -> Plan[IterEntry | None]:
        reply = yield _request(proto.IterNextRequest(handle))
        if reply is not None and reply.error == CsErrorCode.ERR_NO_SECTIONS:
            return None
        res = decode_reply(proto.IterNextResponse, check(reply, "iter_next"), "iter_next")
        try:
            vtype = ValueType(res.type)
        except ValueError:
            raise CsError(CsErrorCode.ERR_MESSAGE_ERROR,
                          f"iter_next: unknown type {res.type}") from None
        return IterEntry(res.key, res.value_len, vtype)

    @staticmethod
    def _plan_iter_finalize(handle: int) -> Plan[None]:
        check((yield _request(proto.IterFinalizeRequest(handle))), "iter_finalize")

    def _plan_track_add(self, key: str, track_type: TrackType, callback: NotifyCallback | None,
                        user_data: Any) -> Plan[int]:
        _check_key(key)
        cookie = next(self._cookies)
        reply = check((yield _request(proto.TrackAddRequest(key, int(track_type), cookie))),
                      f"track_add {key}")
        handle = decode_reply(proto.TrackAddResponse, reply, "track_add").track_handle
        self._tracks[cookie] = _Track(handle, callback, user_data)
        return handle  # type: ignore[no-any-return]

    def _plan_track_delete(self, track_handle: int) -> Plan[None]:
        check((yield _request(proto.TrackDeleteRequest(track_handle))), "track_delete")
        for cookie, track in list(self._tracks.items()):
            if track.handle == track_handle:
                del self._tracks[cookie]

    # -- notifications ------------------------------------------------------------------------

    def _decode_event(self, msg_id: int, payload: bytes) -> Notification | None:
        """One NOTIFY; None for a tracker already deleted (not an error: libcmap ignores
        it too).  Anything undecodable raises and is dropped and counted by the handle."""
        if msg_id != proto.ResId.NOTIFY:
            raise ValueError(f"unknown cmap event id {msg_id}")
        ev = proto.NotifyEvent.decode(payload)
        new = _typed(ev.new_type, ev.new_value) if ev.new_type else None
        old = _typed(ev.old_type, ev.old_value) if ev.old_type else None
        event = TrackType(ev.event)
        track = self._tracks.get(ev.track_inst_handle)
        if track is None:
            return None
        return Notification(track.handle, event, ev.key, new, old, track.user_data)

    def _callback(self, note: Notification) -> None:
        for track in self._tracks.values():
            if track.handle == note.track_handle:
                if track.callback is not None:
                    track.callback(note)
                return

    # -- typed accessors (on AsyncCmap they return the coroutine to await) ---------------------

    get_typed: Callable[[str, ValueType], Any]
    set: Callable[[str, Value, ValueType], Any]

    def get_int8(self, key: str) -> Any:
        return self.get_typed(key, ValueType.INT8)

    def get_uint8(self, key: str) -> Any:
        return self.get_typed(key, ValueType.UINT8)

    def get_int16(self, key: str) -> Any:
        return self.get_typed(key, ValueType.INT16)

    def get_uint16(self, key: str) -> Any:
        return self.get_typed(key, ValueType.UINT16)

    def get_int32(self, key: str) -> Any:
        return self.get_typed(key, ValueType.INT32)

    def get_uint32(self, key: str) -> Any:
        return self.get_typed(key, ValueType.UINT32)

    def get_int64(self, key: str) -> Any:
        return self.get_typed(key, ValueType.INT64)

    def get_uint64(self, key: str) -> Any:
        return self.get_typed(key, ValueType.UINT64)

    def get_float(self, key: str) -> Any:
        return self.get_typed(key, ValueType.FLOAT)

    def get_double(self, key: str) -> Any:
        return self.get_typed(key, ValueType.DOUBLE)

    def get_string(self, key: str) -> Any:
        return self.get_typed(key, ValueType.STRING)

    def set_int8(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.INT8)

    def set_uint8(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.UINT8)

    def set_int16(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.INT16)

    def set_uint16(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.UINT16)

    def set_int32(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.INT32)

    def set_uint32(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.UINT32)

    def set_int64(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.INT64)

    def set_uint64(self, key: str, value: int) -> Any:
        return self.set(key, value, ValueType.UINT64)

    def set_float(self, key: str, value: float) -> Any:
        return self.set(key, value, ValueType.FLOAT)

    def set_double(self, key: str, value: float) -> Any:
        return self.set(key, value, ValueType.DOUBLE)

    def set_string(self, key: str, value: str) -> Any:
        return self.set(key, value, ValueType.STRING)

    def set_binary(self, key: str, value: bytes) -> Any:
        return self.set(key, value, ValueType.BINARY)


def _info(res: proto.GetResponse, key: str) -> tuple[int, ValueType]:
    try:
        return res.value_len, ValueType(res.type)
    except ValueError:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR,
                      f"get {key}: unknown type {res.type}") from None


class Cmap(_CmapProtocol, ServiceHandle):
    """A blocking cmap handle (libcmap's ``cmap_handle_t``).  Use as a context manager."""

    def __init__(self, client: IpcClient, context: Any = None) -> None:
        super().__init__(client, context)

    @classmethod
    def initialize(cls, map: MapId | int | None = None, *, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Cmap":
        """Connect to the executive.  ``map`` selects the map like ``cmap_initialize_map``
        (one SET_CURRENT_MAP request); None keeps the default map without a request, like
        ``cmap_initialize``."""
        handle = cls(cls._connect(ipc_dir), context)
        if map is not None:
            handle._start(handle._plan_set_current_map(int(map)))
        return handle

    # -- values -------------------------------------------------------------------------------

    def get(self, key: str) -> CmapValue:
        """The value of ``key`` with its type (CsError CS_ERR_NOT_EXIST if missing)."""
        return self._run(self._plan_get(key))

    def get_info(self, key: str) -> tuple[int, ValueType]:
        """(value length, type) without the value (one GET with a zero-length buffer)."""
        return _info(self._run(self._plan_get_raw(key, 0)), key)

    def get_typed(self, key: str, vtype: ValueType) -> Value:
        """The value of ``key``, which must have type ``vtype`` (else CS_ERR_INVALID_PARAM)."""
        return self._run(self._plan_get_typed(key, vtype))

    def set(self, key: str, value: Value, vtype: ValueType) -> None:
        """Create or replace ``key`` (STRING is sent without NUL, as ``cmap_set_string``)."""
        self._run(self._plan_set(key, value, vtype))

    def delete(self, key: str) -> None:
        self._run(self._plan_delete(key))

    def inc(self, key: str) -> None:
        """Add 1 to an integer key (wraps like the C types do)."""
        self._run(self._plan_adjust(key, 1))

    def dec(self, key: str) -> None:
        self._run(self._plan_adjust(key, -1))

    # -- iteration ----------------------------------------------------------------------------

    def iter_init(self, prefix: str = "") -> int:
        """Start an executive-side iteration over keys starting with ``prefix``."""
        return self._run(self._plan_iter_init(prefix))

    def iter_next(self, iter_handle: int) -> IterEntry | None:
        """The next key of an iteration, None at its end (CS_ERR_NO_SECTIONS)."""
        return self._run(self._plan_iter_next(iter_handle))

    def iter_finalize(self, iter_handle: int) -> None:
        self._run(self._plan_iter_finalize(iter_handle))

    def iter_prefix(self, prefix: str = "") -> Iterator[IterEntry]:
        """Keys starting with ``prefix`` in the executive's (sorted) order.  The executive-side
        iterator is finalized when the generator ends or is closed."""
        return self._iterate(self._plan_iter_init(prefix), self._plan_iter_next,
                             self._plan_iter_finalize)

    def items(self, prefix: str = "") -> Iterator[tuple[str, CmapValue]]:
        """(key, value) for every key under ``prefix``; keys deleted meanwhile are skipped."""
        for entry in self.iter_prefix(prefix):
            try:
                yield entry.key, self.get(entry.key)
            except CsError as exc:
                if exc.code != CsErrorCode.ERR_NOT_EXIST:
                    raise

    # -- tracking -----------------------------------------------------------------------------

    def track_add(self, key: str, track_type: TrackType, callback: NotifyCallback | None,
                  user_data: Any = None) -> int:
        """Track ``key`` (or every key under it with ``TrackType.PREFIX``); ``callback`` gets a
        :class:`Notification` from :meth:`dispatch`.  Returns the track handle."""
        return self._run(self._plan_track_add(key, track_type, callback, user_data))

    def track_delete(self, track_handle: int) -> None:
        self._run(self._plan_track_delete(track_handle))

    def __enter__(self) -> "Cmap":
        return self


class AsyncCmap(_CmapProtocol, AsyncServiceHandle):
    """The trio flavour of :class:`Cmap`: the same calls, awaited; notifications from
    :meth:`notifications` (the track's callback, if any, runs too)."""

    def __init__(self, client: AsyncIpcClient, context: Any = None) -> None:
        super().__init__(client, context)

    @classmethod
    async def initialize(cls, map: MapId | int | None = None, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncCmap":
        handle = cls(await cls._connect(ipc_dir), context)
        if map is not None:
            await handle._start(handle._plan_set_current_map(int(map)))
        return handle

    async def get(self, key: str) -> CmapValue:
        return await self._run(self._plan_get(key))

    async def get_info(self, key: str) -> tuple[int, ValueType]:
        return _info(await self._run(self._plan_get_raw(key, 0)), key)

    async def get_typed(self, key: str, vtype: ValueType) -> Value:
        return await self._run(self._plan_get_typed(key, vtype))

    async def set(self, key: str, value: Value, vtype: ValueType) -> None:
        await self._run(self._plan_set(key, value, vtype))

    async def delete(self, key: str) -> None:
        await self._run(self._plan_delete(key))

    async def inc(self, key: str) -> None:
        await self._run(self._plan_adjust(key, 1))

    async def dec(self, key: str) -> None:
        await self._run(self._plan_adjust(key, -1))

    async def iter_init(self, prefix: str = "") -> int:
        return await self._run(self._plan_iter_init(prefix))

    async def iter_next(self, iter_handle: int) -> IterEntry | None:
        return await self._run(self._plan_iter_next(iter_handle))

    async def iter_finalize(self, iter_handle: int) -> None:
        await self._run(self._plan_iter_finalize(iter_handle))

    def iter_prefix(self, prefix: str = "") -> AsyncGenerator[IterEntry, None]:
        return self._iterate(self._plan_iter_init(prefix), self._plan_iter_next,
                             self._plan_iter_finalize)

    async def items(self, prefix: str = "") -> AsyncIterator[tuple[str, CmapValue]]:
        """(key, value) for every key under ``prefix``; keys deleted meanwhile are skipped.
        Leaving early: wrap in ``contextlib.aclosing``."""
        async with aclosing(self.iter_prefix(prefix)) as entries:
            async for entry in entries:
                try:
                    yield entry.key, await self.get(entry.key)
                except CsError as exc:
                    if exc.code != CsErrorCode.ERR_NOT_EXIST:
                        raise

    async def track_add(self, key: str, track_type: TrackType,
                        callback: NotifyCallback | None = None, user_data: Any = None) -> int:
        """Track like :meth:`Cmap.track_add`; the callback (optional here) runs for each
        notification that :meth:`notifications` yields."""
        return await self._run(self._plan_track_add(key, track_type, callback, user_data))

    async def track_delete(self, track_handle: int) -> None:
        await self._run(self._plan_track_delete(track_handle))

    def notifications(self) -> AsyncIterator[Notification]:
        """Every notification of this handle's tracks, until finalize (a lost connection
        raises CsError)."""
        return self.events()

    async def __aenter__(self) -> "AsyncCmap":
        return self
