"""The trio flavours of corosync.cfg and corosync.votequorum (and the shared handle bases)
against a scripted executive through the real IPC path (our libqb server in this process,
rendezvous directory in tmp_path, no root, no daemon):

* every blocking call has a trio twin with the same parameters (all five libraries);
* the new trio calls send exactly the bytes of lib/proto — checked at the spec's absolute
  offsets (spec/ipc-wire.md §4.4, §4.5) — the same bytes the blocking twin sends, and turn
  the same answers into the same results or CsError codes;
* AsyncVotequorum takes the three callbacks at initialize and runs them for what
  notifications() yields; malformed events are dropped and counted on both flavours;
* finalizing a trio handle from another task ends its event iteration quietly.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from corosync import cfg, cmap, cpg, quorum, votequorum
from corosync._common import CsError, CsErrorCode, DispatchFlags
from corosync.exec.ipc import IpcServer
from corosync.lib.ipc import pack_request
from corosync.lib.proto import cfg as pcfg
from corosync.lib.proto import quorum as pq
from corosync.lib.proto import votequorum as pvq

OK = CsErrorCode.OK
#: (response id, body, error) the scripted service answers a request with
Answer = tuple[int, bytes, int]


class Scripted:
    """One scripted executive service: records every request as (id, body) and answers it
    from ``answers`` (a request id -> Answer, or a callable(conn, body) that answers
    itself, e.g. with events first)."""

    def __init__(self, answers: dict[int, Answer | Callable[[Any, bytes], None]]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes]] = []

    def on_connect(self, conn: Any) -> bool:
        return True

    def on_disconnect(self, conn: Any) -> None:
        pass

    def on_request(self, conn: Any, msg_id: int, payload: bytes) -> None:
        self.requests.append((msg_id, bytes(payload)))
        answer = self.answers.get(msg_id, (msg_id, b"", CsErrorCode.ERR_NOT_SUPPORTED))
        if callable(answer):
            answer(conn, bytes(payload))
        else:
            conn.send_response(*answer)


async def serve(nursery: trio.Nursery, ipc_dir: Path, service: str, handler: Scripted,
                ipc_type: str = "native") -> Scripted:
    await nursery.start(IpcServer(service, handler, ipc_dir=ipc_dir, ipc_type=ipc_type).serve)
    return handler


def sync_outcome(call: Callable[[], Any]) -> Any:
    """A call's result, or the cs_error_t it raised (so twins can be compared)."""
    try:
        return ("ok", call())
    except CsError as exc:
        return ("error", exc.code)


async def outcome(call: Callable[[], Any]) -> Any:
    """:func:`sync_outcome` of a call that may return an awaitable."""
    try:
        result = call()
        if inspect.isawaitable(result):
            result = await result
        return ("ok", result)
    except CsError as exc:
        return ("error", exc.code)


async def blocking_handle(factory: Callable[[], Any]) -> Any:
    """Connect a blocking handle from a worker thread: the scripted server answering the
    handshake runs in this trio loop."""
    return await trio.to_thread.run_sync(factory)


async def both_flavours(blocking: Any, trio_handle: Any, server: Scripted, method: str,
                        *args: Any) -> tuple[Any, bytes]:
    """Run ``method`` on the blocking handle (in a worker thread) and on the trio handle;
    assert the same request bytes and the same outcome; return (outcome, request body)."""
    before = len(server.requests)
    sync = await trio.to_thread.run_sync(
        lambda: sync_outcome(lambda: getattr(blocking, method)(*args)))
    sent_sync = server.requests[before:]
    before = len(server.requests)
    asyn = await outcome(lambda: getattr(trio_handle, method)(*args))
    sent_async = server.requests[before:]
    assert sync == asyn, method
    assert sent_sync == sent_async, method
    assert len(sent_async) == 1, method
    return asyn, sent_async[0][1]


def absolute(msg_id: int, body: bytes) -> bytes:
    """The whole request as the executive receives it (16-byte header + body)."""
    return pack_request(msg_id, body)


# --------------------------------------------------------------------------------------
# twins
# --------------------------------------------------------------------------------------

#: Blocking-only by nature: dispatch (trio iterates events instead) and Cpg.next_event.
BLOCKING_ONLY = {"dispatch", "next_event"}
PAIRS = [(cfg.Cfg, cfg.AsyncCfg), (votequorum.Votequorum, votequorum.AsyncVotequorum),
         (quorum.Quorum, quorum.AsyncQuorum), (cmap.Cmap, cmap.AsyncCmap),
         (cpg.Cpg, cpg.AsyncCpg)]


@pytest.mark.parametrize("blocking, asynchronous", PAIRS, ids=lambda c: c.__name__)
def test_every_blocking_call_has_a_trio_twin(blocking: type, asynchronous: type) -> None:
    public = {n for n in dir(blocking) if not n.startswith("_")} - BLOCKING_ONLY
    missing = sorted(public - set(dir(asynchronous)))
    assert missing == []
    for name in public:
        b, a = getattr(blocking, name), getattr(asynchronous, name)
        if callable(b) and not isinstance(b, type):
            assert list(inspect.signature(b).parameters) == \
                list(inspect.signature(a).parameters), name
    # and the trio flavours share one event iterator and one teardown
    assert issubclass(asynchronous, quorum.AsyncServiceHandle)
    assert issubclass(blocking, quorum.ServiceHandle)


# --------------------------------------------------------------------------------------
# cfg
# --------------------------------------------------------------------------------------

RING_STATUS = pcfg.RingStatus((("0 127.0.0.1", "OK"), ("1 10.0.0.1", "FAULTY"))).encode()


async def test_async_cfg_calls_send_libcfg_bytes(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await serve(nursery, tmp_path, "cfg", Scripted({
        # libcfg ignores RINGSTATUSGET's error field: so must both flavours
        pcfg.REQ_RINGSTATUSGET: (pcfg.RES_RINGSTATUSGET, RING_STATUS, CsErrorCode.ERR_LIBRARY),
        pcfg.REQ_KILLNODE: (pcfg.RES_KILLNODE, b"", CsErrorCode.ERR_NOT_EXIST),
        pcfg.REQ_RELOAD_CONFIG: (pcfg.RES_RELOAD_CONFIG, b"", OK),
        pcfg.REQ_REOPEN_LOG_FILES: (pcfg.RES_REOPEN_LOG_FILES, b"", OK),
    }))
    with await blocking_handle(lambda: cfg.Cfg.initialize(ipc_dir=tmp_path)) as blocking:
        async with await cfg.AsyncCfg.initialize(ipc_dir=tmp_path) as handle:
            result, body = await both_flavours(blocking, handle, server, "ring_status_get")
            assert result == ("ok", pcfg.RingStatus((("0 127.0.0.1", "OK"),
                                                     ("1 10.0.0.1", "FAULTY"))))
            assert absolute(pcfg.REQ_RINGSTATUSGET, body) == struct.pack("<i4xi4x", 0, 16)

            result, body = await both_flavours(blocking, handle, server, "kill_node", 3,
                                               "maintenance")
            assert result == ("error", CsErrorCode.ERR_NOT_EXIST)
            raw = absolute(pcfg.REQ_KILLNODE, body)
            assert len(raw) == 288                                  # sizeof req_lib_cfg_killnode
            assert struct.unpack_from("<i4xi", raw) == (pcfg.REQ_KILLNODE, 288)
            assert struct.unpack_from("<I", raw, 16) == (3,)        # nodeid @16
            assert struct.unpack_from("<H", raw, 24) == (12,)       # strlen + 1 @24
            assert raw[26:26 + 12] == b"maintenance\0"              # value @26
            assert body == pcfg.enc_killnode(3, "maintenance")

            for method, req in (("reload_config", pcfg.REQ_RELOAD_CONFIG),
                                ("reopen_log_files", pcfg.REQ_REOPEN_LOG_FILES)):
                result, body = await both_flavours(blocking, handle, server, method)
                assert result == ("ok", None)
                assert absolute(req, body) == struct.pack("<i4xi4x", req, 16)

            # the same answers with other errors: the codes come through unchanged
            server.answers[pcfg.REQ_RELOAD_CONFIG] = (pcfg.RES_RELOAD_CONFIG, b"",
                                                      CsErrorCode.ERR_NOT_SUPPORTED)
            result, _ = await both_flavours(blocking, handle, server, "reload_config")
            assert result == ("error", CsErrorCode.ERR_NOT_SUPPORTED)
            # a RINGSTATUSGET answer too short for its layout is the executive's fault
            server.answers[pcfg.REQ_RINGSTATUSGET] = (pcfg.RES_RINGSTATUSGET, b"\1", OK)
            result, _ = await both_flavours(blocking, handle, server, "ring_status_get")
            assert result == ("error", CsErrorCode.ERR_MESSAGE_ERROR)
            assert handle.context_get() is None
            handle.context_set("ctx")
            assert handle.context_get() == "ctx"


async def test_async_cfg_shutdown_requests_run_the_callback(nursery: trio.Nursery,
                                                            tmp_path: Path) -> None:
    def trackstart(conn: Any, body: bytes) -> None:
        conn.send_event(pcfg.EV_TESTSHUTDOWN, b"\x01")              # truncated: dropped
        conn.send_event(77, b"")                                    # unknown id: dropped
        conn.send_event(pcfg.EV_TESTSHUTDOWN, pcfg.enc_u32(pcfg.SHUTDOWN_FLAG_REGARDLESS))
        conn.send_response(pcfg.RES_TRACKSTART)

    await serve(nursery, tmp_path, "cfg", Scripted({pcfg.REQ_TRACKSTART: trackstart}))
    seen: list[int] = []
    async with await cfg.AsyncCfg.initialize(seen.append, ipc_dir=tmp_path) as handle:
        await handle.trackstart()
        with trio.fail_after(10):
            async for flags in handle.shutdown_requests():
                break
        assert flags == seen[0] == cfg.SHUTDOWN_FLAG_REGARDLESS
        assert handle.dropped_events == 2


# --------------------------------------------------------------------------------------
# votequorum
# --------------------------------------------------------------------------------------

VQ_ANSWERS: dict[int, Answer | Callable[[Any, bytes], None]] = {
    req: (pvq.RES_STATUS, b"", OK)
    for req in (pvq.REQ_QDEVICE_REGISTER, pvq.REQ_QDEVICE_UNREGISTER,
                pvq.REQ_QDEVICE_UPDATE, pvq.REQ_QDEVICE_POLL, pvq.REQ_QDEVICE_MASTER_WINS)}


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_async_votequorum_qdevice_calls_send_libvotequorum_bytes(
        nursery: trio.Nursery, tmp_path: Path, ipc_type: str) -> None:
    server = await serve(nursery, tmp_path, "votequorum", Scripted(dict(VQ_ANSWERS)), ipc_type)
    with await blocking_handle(
            lambda: votequorum.Votequorum.initialize(ipc_dir=tmp_path)) as blocking:
        async with await votequorum.AsyncVotequorum.initialize(ipc_dir=tmp_path) as handle:
            _, body = await both_flavours(blocking, handle, server, "qdevice_register", "Qdevice")
            raw = absolute(pvq.REQ_QDEVICE_REGISTER, body)
            assert len(raw) == 272 and raw[16:16 + 255] == b"Qdevice".ljust(255, b"\0")
            assert body == pvq.enc_qdevice_name("Qdevice")

            _, body = await both_flavours(blocking, handle, server, "qdevice_unregister", "Qdevice")
            assert absolute(pvq.REQ_QDEVICE_UNREGISTER, body) == absolute(
                pvq.REQ_QDEVICE_UNREGISTER, pvq.enc_qdevice_name("Qdevice"))
            raw = absolute(pvq.REQ_QDEVICE_UNREGISTER, body)
            assert struct.unpack_from("<i4xi", raw) == (6, 272)

            _, body = await both_flavours(blocking, handle, server, "qdevice_update", "old", "new")
            raw = absolute(pvq.REQ_QDEVICE_UPDATE, body)
            assert len(raw) == 528
            assert raw[16:20] == b"old\0" and raw[271:275] == b"new\0"   # newname @271

            _, body = await both_flavours(blocking, handle, server, "qdevice_poll", "Qdevice",
                                          True, 3, 0x1234567890)
            raw = absolute(pvq.REQ_QDEVICE_POLL, body)
            assert len(raw) == 296
            assert struct.unpack_from("<i", raw, 272) == (1,)            # cast_vote @272
            assert struct.unpack_from("<I", raw, 280) == (3,)            # ring nodeid @280
            assert struct.unpack_from("<Q", raw, 288) == (0x1234567890,)  # ring seq @288
            assert body == pvq.enc_qdevice_poll("Qdevice", True, 3, 0x1234567890)

            _, body = await both_flavours(blocking, handle, server, "qdevice_master_wins",
                                          "Qdevice", True)
            raw = absolute(pvq.REQ_QDEVICE_MASTER_WINS, body)
            assert len(raw) == 280 and struct.unpack_from("<I", raw, 272) == (1,)

            # the executive's refusals come through as the same CsError on both flavours
            for req, code in ((pvq.REQ_QDEVICE_REGISTER, CsErrorCode.ERR_EXIST),
                              (pvq.REQ_QDEVICE_POLL, CsErrorCode.ERR_MESSAGE_ERROR),
                              (pvq.REQ_QDEVICE_UNREGISTER, CsErrorCode.ERR_NOT_EXIST),
                              (pvq.REQ_QDEVICE_MASTER_WINS, CsErrorCode.ERR_ACCESS)):
                server.answers[req] = (pvq.RES_STATUS, b"", code)
            assert (await both_flavours(blocking, handle, server, "qdevice_register", "X"))[0] \
                == ("error", CsErrorCode.ERR_EXIST)
            assert (await both_flavours(blocking, handle, server, "qdevice_poll", "X", False,
                                        1, 1))[0] == ("error", CsErrorCode.ERR_MESSAGE_ERROR)
            assert (await both_flavours(blocking, handle, server, "qdevice_unregister",
                                        "X"))[0] == ("error", CsErrorCode.ERR_NOT_EXIST)
            assert (await both_flavours(blocking, handle, server, "qdevice_master_wins", "X",
                                        False))[0] == ("error", CsErrorCode.ERR_ACCESS)

            # names that do not fit char[255] are refused before anything is sent
            sent = len(server.requests)
            for call in (lambda: handle.qdevice_register("n" * 255),
                         lambda: handle.qdevice_update("ok", "n" * 300),
                         lambda: handle.qdevice_poll("n" * 255, True, 1, 1),
                         lambda: handle.qdevice_master_wins("n" * 255, True)):
                assert await outcome(call) == ("error", CsErrorCode.ERR_INVALID_PARAM)
            assert sync_outcome(lambda: blocking.qdevice_unregister("n" * 255)) == \
                ("error", CsErrorCode.ERR_INVALID_PARAM)
            assert len(server.requests) == sent


def vq_events(conn: Any, body: bytes) -> None:
    """TRACKSTART: garbage around one event of each kind, then the response."""
    context, _flags = struct.unpack_from("<QI", body)
    conn.send_event(pvq.EV_NODELIST_NOTIFICATION,
                    pvq.NodelistNotification(context, 1, 0x50, (1, 2)).encode())
    conn.send_event(pvq.EV_QUORUM_NOTIFICATION, b"\0" * 10)               # truncated
    bad = bytearray(pvq.QuorumNotification(True, context, ((1, 1),)).encode())
    struct.pack_into("<I", bad, 16, 5000)                                 # count lies
    conn.send_event(pvq.EV_QUORUM_NOTIFICATION, bytes(bad))
    conn.send_event(2, b"")                                               # unused id
    conn.send_event(pvq.EV_QUORUM_NOTIFICATION,
                    pvq.QuorumNotification(True, context, ((1, 1), (2, 1), (0, 1))).encode())
    conn.send_event(pvq.EV_EXPECTEDVOTES_NOTIFICATION,
                    pvq.ExpectedVotesNotification(context, 3).encode())
    conn.send_response(pvq.RES_STATUS)


EXPECTED_EVENTS = [
    votequorum.NodelistNotification(9, 1, 0x50, (1, 2)),
    votequorum.QuorumNotification(9, True, ((1, 1), (2, 1), (0, 1))),
    votequorum.ExpectedVotesNotification(9, 3),
]


async def test_async_votequorum_callbacks_and_hostile_events(nursery: trio.Nursery,
                                                             tmp_path: Path) -> None:
    await serve(nursery, tmp_path, "votequorum",
                Scripted({pvq.REQ_TRACKSTART: vq_events}))
    calls: list[tuple[str, Any]] = []
    handle = await votequorum.AsyncVotequorum.initialize(
        lambda e: calls.append(("quorum", e)), lambda e: calls.append(("nodelist", e)),
        lambda e: calls.append(("expected", e)), context="mine", ipc_dir=tmp_path)
    async with handle:
        await handle.trackstart(9, votequorum.TrackFlags.CURRENT)
        got = []
        with trio.fail_after(10):
            async for event in handle.notifications():
                got.append(event)
                if len(got) == 3:
                    break
        assert got == EXPECTED_EVENTS
        assert calls == list(zip(["nodelist", "quorum", "expected"], EXPECTED_EVENTS))
        assert handle.dropped_events == 3
        assert handle.context_get() == "mine"

    # the blocking flavour: same events, same callbacks, same count
    def blocking() -> tuple[list[Any], int]:
        seen: list[Any] = []
        with votequorum.Votequorum.initialize(seen.append, seen.append, seen.append,
                                              ipc_dir=tmp_path) as vq:
            vq.trackstart(9, votequorum.TrackFlags.CURRENT)
            while len(seen) < 3:
                vq.dispatch(DispatchFlags.ONE)
            return seen, vq.dropped_events

    assert await trio.to_thread.run_sync(blocking) == (EXPECTED_EVENTS, 3)


async def test_callback_exceptions_reach_the_caller(nursery: trio.Nursery,
                                                    tmp_path: Path) -> None:
    """A callback's own ValueError is not mistaken for a malformed event."""
    await serve(nursery, tmp_path, "votequorum", Scripted({pvq.REQ_TRACKSTART: vq_events}))

    def boom(event: Any) -> None:
        raise ValueError("callback bug")

    async with await votequorum.AsyncVotequorum.initialize(nodelist=boom,
                                                           ipc_dir=tmp_path) as handle:
        await handle.trackstart(9, votequorum.TrackFlags.CURRENT)
        with pytest.raises(ValueError, match="callback bug"), trio.fail_after(10):
            async for _event in handle.notifications():
                pass
        assert handle.dropped_events == 0


# --------------------------------------------------------------------------------------
# closing ends the iteration
# --------------------------------------------------------------------------------------

async def _open(kind: str, tmp_path: Path) -> tuple[Any, Callable[[Any], Any]]:
    """A fresh trio handle of ``kind`` and its event iterator."""
    if kind == "votequorum":
        h = await votequorum.AsyncVotequorum.initialize(ipc_dir=tmp_path)
        return h, lambda h: h.notifications()
    if kind == "cfg":
        h = await cfg.AsyncCfg.initialize(ipc_dir=tmp_path)
        return h, lambda h: h.shutdown_requests()
    if kind == "quorum":
        h = await quorum.AsyncQuorum.initialize(ipc_dir=tmp_path)
        return h, lambda h: h.notifications()
    if kind == "cmap":
        h = await cmap.AsyncCmap.initialize(ipc_dir=tmp_path)
        return h, lambda h: h.notifications()
    h = await cpg.AsyncCpg.initialize(ipc_dir=tmp_path)
    return h, lambda h: h.events()


@pytest.mark.parametrize("kind", ["votequorum", "cfg", "quorum", "cmap", "cpg"])
async def test_finalize_from_another_task_ends_the_iteration(
        nursery: trio.Nursery, tmp_path: Path, kind: str) -> None:
    server = Scripted({pq.REQ_GETTYPE: (pq.RES_GETTYPE, pq.encode_u32(pq.QUORUM_SET), OK)})
    await serve(nursery, tmp_path, kind, server)
    handle, events = await _open(kind, tmp_path)
    finished = trio.Event()
    seen: list[Any] = []

    async def consume() -> None:
        async for event in events(handle):
            seen.append(event)
        finished.set()

    nursery.start_soon(consume)
    await trio.testing.wait_all_tasks_blocked()     # the consumer waits for an event
    handle.close()                                  # disconnect now, from this task
    with trio.fail_after(5):
        await finished.wait()
    assert seen == []
    assert await outcome(lambda: handle.context_set(1)) == ("ok", None)
    # every call on a finalized handle: CS_ERR_BAD_HANDLE, nothing sent
    sent = len(server.requests)
    first_call = {"votequorum": lambda: handle.getinfo(0), "cfg": lambda: handle.local_get(),
                  "quorum": lambda: handle.getquorate(), "cmap": lambda: handle.get("a"),
                  "cpg": lambda: handle.local_get()}[kind]
    assert await outcome(first_call) == ("error", CsErrorCode.ERR_BAD_HANDLE)
    assert len(server.requests) == sent
    # a new iteration of a closed handle ends at once; closing twice is harmless
    async for _event in events(handle):
        raise AssertionError("closed handle yielded an event")
    handle.close()
    await handle.aclose()


async def test_lost_executive_raises_from_the_iteration(tmp_path: Path) -> None:
    """Unlike a finalize, a vanished executive is an error the iterating task must see."""
    async with trio.open_nursery() as servers:
        await serve(servers, tmp_path, "votequorum", Scripted({}))
        handle = await votequorum.AsyncVotequorum.initialize(ipc_dir=tmp_path)
        servers.cancel_scope.cancel()
    with pytest.raises(CsError) as info, trio.fail_after(10):
        async for _event in handle.notifications():
            pass
    assert info.value.code is CsErrorCode.ERR_LIBRARY
    handle.finalize()
