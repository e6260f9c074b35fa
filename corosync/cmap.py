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
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from attrs import frozen

from corosync._common import (CsError, CsErrorCode, DispatchFlags, Plan,
                              RateLimitedLog, Reply, Request, check, run_async, run_blocking)
from corosync.lib.ipc import AsyncIpcClient, IpcClient, IpcError, pack_request
from corosync.lib.proto import cmap as proto
from corosync.lib.proto.common import CS_MAX_NAME_LENGTH, ProtoError
from corosync.lib.proto.cmap import MapId, TrackType, Value, ValueType

__all__ = [
    "Cmap", "AsyncCmap", "CmapValue", "IterEntry", "Notification", "NotifyCallback",
    "ValueType", "MapId", "TrackType", "DispatchFlags", "CsError", "CsErrorCode",
]

log = logging.getLogger("corosync.cmap")
_bad_input = RateLimitedLog(log)

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


def _decode(cls: Any, reply: Reply, what: str) -> Any:
    try:
        return cls.decode(reply.payload)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, f"{what}: {exc}") from None


class _CmapProtocol:
    """The call plans and notification decoding both handle types share."""

    def __init__(self, context: Any = None) -> None:
        self.context = context
        self._tracks: dict[int, _Track] = {}        # client cookie -> track
        self._cookies = itertools.count(1)
        self._finalized = False
        #: Events the executive sent that could not be decoded or have an unknown id.
        self.dropped_events = 0

    # -- plans --------------------------------------------------------------------------------

    @staticmethod
    def _plan_set_current_map(map_id: int) -> Plan[None]:
        check((yield _request(proto.SetCurrentMapRequest(map_id))), "set_current_map")

    @staticmethod
    def _plan_get_raw(key: str, capacity: int) -> Plan[proto.GetResponse]:
        _check_key(key)
        reply = check((yield _request(proto.GetRequest(key, capacity))), f"get {key}")
        return _decode(proto.GetResponse, reply, "get")  # type: ignore[no-any-return]

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
        return _decode(proto.IterInitResponse, reply, "iter_init").iter_handle  # type: ignore

    @staticmethod
    def _plan_iter_next(handle: int) -> Plan[IterEntry | None]:
        reply = yield _request(proto.IterNextRequest(handle))
        if reply is not None and reply.error == CsErrorCode.ERR_NO_SECTIONS:
            return None
        res = _decode(proto.IterNextResponse, check(reply, "iter_next"), "iter_next")
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
        handle = _decode(proto.TrackAddResponse, reply, "track_add").track_handle
        self._tracks[cookie] = _Track(handle, callback, user_data)
        return handle  # type: ignore[no-any-return]

    def _plan_track_delete(self, track_handle: int) -> Plan[None]:
        check((yield _request(proto.TrackDeleteRequest(track_handle))), "track_delete")
        for cookie, track in list(self._tracks.items()):
            if track.handle == track_handle:
                del self._tracks[cookie]

    # -- notifications ------------------------------------------------------------------------

    def _notification(self, msg_id: int, payload: bytes) -> tuple[Notification, _Track] | None:
        """Decode one event; None (dropped and counted) when it is not a usable NOTIFY."""
        if msg_id != proto.ResId.NOTIFY:
            self.dropped_events += 1
            _bad_input.warning("id", "cmap: dropped event with unknown id %d", msg_id)
            return None
        try:
            ev = proto.NotifyEvent.decode(payload)
            new = _typed(ev.new_type, ev.new_value) if ev.new_type else None
            old = _typed(ev.old_type, ev.old_value) if ev.old_type else None
            event = TrackType(ev.event)
        except (ProtoError, CsError, ValueError) as exc:
            self.dropped_events += 1
            _bad_input.warning("malformed", "cmap: dropped malformed NOTIFY: %s", exc)
            return None
        track = self._tracks.get(ev.track_inst_handle)
        if track is None:
            return None      # tracker already deleted: not an error (libcmap ignores it too)
        return Notification(track.handle, event, ev.key, new, old, track.user_data), track


class Cmap(_CmapProtocol):
    """A blocking cmap handle (libcmap's ``cmap_handle_t``).  Use as a context manager."""

    def __init__(self, client: IpcClient, context: Any = None) -> None:
        super().__init__(context)
        self._client = client

    @classmethod
    def initialize(cls, map: MapId | int | None = None, *, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Cmap":
        """Connect to the executive.  ``map`` selects the map like ``cmap_initialize_map``
        (one SET_CURRENT_MAP request); None keeps the default map without a request, like
        ``cmap_initialize``."""
        try:
            client = IpcClient.connect(SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), str(exc)) from None
        handle = cls(client, context)
        if map is not None:
            try:
                handle._run(handle._plan_set_current_map(int(map)))
            except BaseException:
                handle.finalize()
                raise
        return handle

    def _run(self, plan: Plan[Any]) -> Any:
        if self._finalized:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "handle finalized")
        return run_blocking(self._client, plan)

    # -- values -------------------------------------------------------------------------------

    def get(self, key: str) -> CmapValue:
        """The value of ``key`` with its type (CsError CS_ERR_NOT_EXIST if missing)."""
        return self._run(self._plan_get(key))  # type: ignore[no-any-return]

    def get_info(self, key: str) -> tuple[int, ValueType]:
        """(value length, type) without the value (one GET with a zero-length buffer)."""
        res = self._run(self._plan_get_raw(key, 0))
        try:
            return res.value_len, ValueType(res.type)
        except ValueError:
            raise CsError(CsErrorCode.ERR_MESSAGE_ERROR,
                          f"get {key}: unknown type {res.type}") from None

    def get_typed(self, key: str, vtype: ValueType) -> Value:
        """The value of ``key``, which must have type ``vtype`` (else CS_ERR_INVALID_PARAM)."""
        return self._run(self._plan_get_typed(key, vtype))  # type: ignore[no-any-return]

    def get_int8(self, key: str) -> int:
        return self.get_typed(key, ValueType.INT8)  # type: ignore[return-value]

    def get_uint8(self, key: str) -> int:
        return self.get_typed(key, ValueType.UINT8)  # type: ignore[return-value]

    def get_int16(self, key: str) -> int:
        return self.get_typed(key, ValueType.INT16)  # type: ignore[return-value]

    def get_uint16(self, key: str) -> int:
        return self.get_typed(key, ValueType.UINT16)  # type: ignore[return-value]

    def get_int32(self, key: str) -> int:
        return self.get_typed(key, ValueType.INT32)  # type: ignore[return-value]

    def get_uint32(self, key: str) -> int:
        return self.get_typed(key, ValueType.UINT32)  # type: ignore[return-value]

    def get_int64(self, key: str) -> int:
        return self.get_typed(key, ValueType.INT64)  # type: ignore[return-value]

    def get_uint64(self, key: str) -> int:
        return self.get_typed(key, ValueType.UINT64)  # type: ignore[return-value]

    def get_float(self, key: str) -> float:
        return self.get_typed(key, ValueType.FLOAT)  # type: ignore[return-value]

    def get_double(self, key: str) -> float:
        return self.get_typed(key, ValueType.DOUBLE)  # type: ignore[return-value]

    def get_string(self, key: str) -> str:
        return self.get_typed(key, ValueType.STRING)  # type: ignore[return-value]

    def set(self, key: str, value: Value, vtype: ValueType) -> None:
        """Create or replace ``key`` (STRING is sent without NUL, as ``cmap_set_string``)."""
        self._run(self._plan_set(key, value, vtype))

    def set_int8(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.INT8)

    def set_uint8(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.UINT8)

    def set_int16(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.INT16)

    def set_uint16(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.UINT16)

    def set_int32(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.INT32)

    def set_uint32(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.UINT32)

    def set_int64(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.INT64)

    def set_uint64(self, key: str, value: int) -> None:
        self.set(key, value, ValueType.UINT64)

    def set_float(self, key: str, value: float) -> None:
        self.set(key, value, ValueType.FLOAT)

    def set_double(self, key: str, value: float) -> None:
        self.set(key, value, ValueType.DOUBLE)

    def set_string(self, key: str, value: str) -> None:
        self.set(key, value, ValueType.STRING)

    def set_binary(self, key: str, value: bytes) -> None:
        self.set(key, value, ValueType.BINARY)

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
        return self._run(self._plan_iter_init(prefix))  # type: ignore[no-any-return]

    def iter_next(self, iter_handle: int) -> IterEntry | None:
        """The next key of an iteration, None at its end (CS_ERR_NO_SECTIONS)."""
        return self._run(self._plan_iter_next(iter_handle))  # type: ignore[no-any-return]

    def iter_finalize(self, iter_handle: int) -> None:
        self._run(self._plan_iter_finalize(iter_handle))

    def iter_prefix(self, prefix: str = "") -> Iterator[IterEntry]:
        """Keys starting with ``prefix`` in the executive's (sorted) order.  The executive-side
        iterator is finalized when the generator ends or is closed."""
        handle = self.iter_init(prefix)
        try:
            while True:
                entry = self.iter_next(handle)
                if entry is None:
                    return
                yield entry
        finally:
            if not self._finalized and not self._client.closed:
                try:
                    self.iter_finalize(handle)
                except CsError:
                    pass

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
        return self._run(self._plan_track_add(key, track_type, callback,  # type: ignore
                                              user_data))

    def track_delete(self, track_handle: int) -> None:
        self._run(self._plan_track_delete(track_handle))

    # -- events -------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The descriptor that becomes readable when notifications are pending."""
        return self._client.fileno()

    def dispatch(self, flags: DispatchFlags = DispatchFlags.ALL) -> int:
        """Run callbacks for pending notifications; returns how many events were read.

        ONE waits for one event; ALL handles what is queued without waiting;
        ONE_NONBLOCKING handles at most one queued event; BLOCKING runs until the handle is
        finalized (e.g. from a callback).  A lost connection raises CsError.
        """
        count = 0
        wait: float | None = None if flags in (DispatchFlags.ONE, DispatchFlags.BLOCKING) else 0.0
        while not self._finalized:
            try:
                event = self._client.recv_event(wait)
            except IpcError as exc:
                raise CsError(int(exc.cs_error), str(exc)) from None
            if event is None:
                break
            count += 1
            msg_id, _error, payload = event
            decoded = self._notification(msg_id, payload)
            if decoded is not None and decoded[1].callback is not None:
                decoded[1].callback(decoded[0])
            if flags in (DispatchFlags.ONE, DispatchFlags.ONE_NONBLOCKING):
                break
        return count

    # -- context and teardown -----------------------------------------------------------------

    def context_get(self) -> Any:
        return self.context

    def context_set(self, context: Any) -> None:
        self.context = context

    def finalize(self) -> None:
        """Disconnect (libcmap sends no request for this).  Safe to call twice."""
        self._finalized = True
        self._client.close()

    close = finalize

    def __enter__(self) -> "Cmap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()


class AsyncCmap(_CmapProtocol):
    """The trio flavour of :class:`Cmap`: the same calls, awaited."""

    def __init__(self, client: AsyncIpcClient, context: Any = None) -> None:
        super().__init__(context)
        self._client = client

    @classmethod
    async def initialize(cls, map: MapId | int | None = None, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncCmap":
        try:
            client = await AsyncIpcClient.connect(SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), str(exc)) from None
        handle = cls(client, context)
        if map is not None:
            try:
                await handle._run(handle._plan_set_current_map(int(map)))
            except BaseException:
                handle.finalize()
                raise
        return handle

    async def _run(self, plan: Plan[Any]) -> Any:
        if self._finalized:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "handle finalized")
        return await run_async(self._client, plan)

    async def get(self, key: str) -> CmapValue:
        return await self._run(self._plan_get(key))  # type: ignore[no-any-return]

    async def get_typed(self, key: str, vtype: ValueType) -> Value:
        return await self._run(self._plan_get_typed(key, vtype))  # type: ignore

    async def set(self, key: str, value: Value, vtype: ValueType) -> None:
        await self._run(self._plan_set(key, value, vtype))

    async def delete(self, key: str) -> None:
        await self._run(self._plan_delete(key))

    async def inc(self, key: str) -> None:
        await self._run(self._plan_adjust(key, 1))

    async def dec(self, key: str) -> None:
        await self._run(self._plan_adjust(key, -1))

    async def iter_prefix(self, prefix: str = "") -> AsyncIterator[IterEntry]:
        handle = await self._run(self._plan_iter_init(prefix))
        try:
            while True:
                entry = await self._run(self._plan_iter_next(handle))
                if entry is None:
                    return
                yield entry
        finally:
            if not self._finalized and not self._client.client.closed:
                try:
                    await self._run(self._plan_iter_finalize(handle))
                except CsError:
                    pass

    async def track_add(self, key: str, track_type: TrackType,
                        callback: NotifyCallback | None = None, user_data: Any = None) -> int:
        """Track like :meth:`Cmap.track_add`; the callback (optional here) runs for each
        notification that :meth:`notifications` yields."""
        return await self._run(self._plan_track_add(key, track_type, callback,  # type: ignore
                                                    user_data))

    async def track_delete(self, track_handle: int) -> None:
        await self._run(self._plan_track_delete(track_handle))

    def fileno(self) -> int:
        return self._client.fileno()

    async def notifications(self) -> AsyncIterator[Notification]:
        """Every notification of this handle's tracks, until finalize or a lost link."""
        while not self._finalized:
            try:
                event = await self._client.recv_event(None)
            except IpcError as exc:
                if self._finalized:
                    return
                raise CsError(int(exc.cs_error), str(exc)) from None
            if event is None:
                continue
            decoded = self._notification(event[0], event[2])
            if decoded is None:
                continue
            note, track = decoded
            if track.callback is not None:
                track.callback(note)
            yield note

    def finalize(self) -> None:
        self._finalized = True
        self._client.close()

    close = finalize

    async def __aenter__(self) -> "AsyncCmap":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.finalize()

