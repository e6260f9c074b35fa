"""Our client libraries against a hostile executive, through the real IPC path (our libqb
server, SHM and SOCKET, rendezvous directory in tmp_path, no root needed): malformed and
unknown events are dropped and counted, malformed responses become CS_ERR_MESSAGE_ERROR,
nothing crashes and the connection stays usable."""

from __future__ import annotations

import select
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from corosync._common import CsError, CsErrorCode
from corosync.cmap import AsyncCmap, Cmap, TrackType
from corosync.cpg import AsyncCpg, ConfchgEvent, DeliverEvent
from corosync.exec.ipc import IpcServer
from corosync.lib.proto import cmap as pc
from corosync.lib.proto import cpg as pp

OK = 1


class HostileCpg:
    """Answers JOIN, then floods the joiner with garbage around two valid events."""

    def on_connect(self, conn: Any) -> bool:
        return True

    def on_disconnect(self, conn: Any) -> None:
        pass

    def on_request(self, conn: Any, msg_id: int, payload: bytes) -> None:
        if msg_id == pp.ReqId.JOIN:
            join = pp.JoinRequest.decode(payload)
            conn.send_response(pp.ResId.JOIN)
            good = pp.ConfchgEvent(join.group, (pp.Address(1, join.pid),), (),
                                   (pp.Address(1, join.pid, 1),)).encode()
            conn.send_event(6, b"")                                   # flow control id
            conn.send_event(99, b"junk")                              # unknown id
            conn.send_event(pp.ResId.CONFCHG_CALLBACK, good[:-5])     # truncated
            bad = bytearray(pp.DeliverEvent(join.group, 1, 2, b"abc").encode())
            struct.pack_into("<I", bad, 136, 1 << 30)                  # msglen lies
            conn.send_event(pp.ResId.DELIVER_CALLBACK, bytes(bad))
            conn.send_event(pp.ResId.PARTIAL_DELIVER_CALLBACK,         # orphan fragment
                            pp.PartialDeliverEvent(join.group, 10, 1, 2, 3, b"x").encode())
            conn.send_event(pp.ResId.CONFCHG_CALLBACK, good)
            conn.send_event(pp.ResId.DELIVER_CALLBACK,
                            pp.DeliverEvent(join.group, 1, join.pid, b"fine").encode())
        elif msg_id == pp.ReqId.MEMBERSHIP:
            conn.send_response(pp.ResId.MEMBERSHIP, struct.pack("<I4x", 500))   # lies
        elif msg_id == pp.ReqId.LOCAL_GET:
            conn.send_response(pp.ResId.LOCAL_GET, pp.LocalGetResponse(7).encode())
        else:
            conn.send_response(msg_id)


class HostileCmap:
    def on_connect(self, conn: Any) -> bool:
        return True

    def on_disconnect(self, conn: Any) -> None:
        pass

    def on_request(self, conn: Any, msg_id: int, payload: bytes) -> None:
        if msg_id == pc.ReqId.GET:
            req = pc.GetRequest.decode(payload)
            if req.key == "short.value":       # claims 8 bytes, area holds 2
                conn.send_response(pc.ResId.GET, struct.pack("<QB7x", 8, 8)
                                   + bytes(req.value_len)[:2])
            else:                              # a u32 of 3 bytes
                conn.send_response(pc.ResId.GET, pc.GetResponse(3, 6, b"abc").encode(
                    requested=req.value_len))
        elif msg_id == pc.ReqId.ITER_INIT:
            conn.send_response(pc.ResId.ITER_INIT, b"\x01")             # truncated
        elif msg_id == pc.ReqId.TRACK_ADD:
            req = pc.TrackAddRequest.decode(payload)
            conn.send_response(pc.ResId.TRACK_ADD, pc.TrackAddResponse(9).encode())
            conn.send_event(pc.ResId.NOTIFY, b"\0" * 30)
            conn.send_event(pc.ResId.NOTIFY, pc.NotifyEvent(
                req.track_inst_handle, "a.b", 4, 6, b"\x01", 0, b"").encode())
            conn.send_event(pc.ResId.NOTIFY, pc.NotifyEvent(
                req.track_inst_handle, "a.ok", 4, 2, b"\x05", 0, b"").encode())
        else:
            conn.send_response(msg_id)


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_cpg_survives_a_hostile_executive(tmp_path: Path, ipc_type: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(IpcServer("cpg", HostileCpg(), ipc_dir=tmp_path,
                                      ipc_type=ipc_type).serve)
        async with await AsyncCpg.model_initialize(ipc_dir=tmp_path) as h:
            await h.join(b"g")
            seen: list[Any] = []
            with trio.fail_after(10):
                async for event in h.events():
                    seen.append(event)
                    if isinstance(event, DeliverEvent):
                        break
            assert [type(e) for e in seen] == [ConfchgEvent, DeliverEvent]
            assert seen[1].message == b"fine"
            assert h.dropped_events == 4      # id 6, id 99, truncated confchg, lying deliver
            with pytest.raises(CsError) as info:
                await h.membership_get(b"g")
            assert info.value.code is CsErrorCode.ERR_MESSAGE_ERROR
            assert await h.local_get() == 7   # the connection is still in step
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_cmap_survives_a_hostile_executive(tmp_path: Path, ipc_type: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(IpcServer("cmap", HostileCmap(), ipc_dir=tmp_path,
                                      ipc_type=ipc_type).serve)

        def blocking_client() -> list[Any]:
            out: list[Any] = []
            with Cmap.initialize(ipc_dir=tmp_path) as h:
                for call in (lambda: h.get_uint32("odd.size"), lambda: h.get("short.value"),
                             lambda: list(h.iter_prefix("a."))):
                    try:
                        call()
                    except CsError as exc:
                        out.append(int(exc.code))
                notes: list[Any] = []
                h.track_add("a.", TrackType.ADD | TrackType.PREFIX, notes.append)
                deadline = time.monotonic() + 10
                while not notes and time.monotonic() < deadline:
                    select.select([h.fileno()], [], [], 1.0)
                    h.dispatch()
                out.append([n.key for n in notes])
                out.append(h.dropped_events)
            return out

        result = await trio.to_thread.run_sync(blocking_client)
        assert result == [22, 22, 22, ["a.ok"], 2]     # CS_ERR_MESSAGE_ERROR thrice

        async with await AsyncCmap.initialize(ipc_dir=tmp_path) as ah:
            with pytest.raises(CsError) as info:
                await ah.get("odd.size")
            assert info.value.code is CsErrorCode.ERR_MESSAGE_ERROR
        nursery.cancel_scope.cancel()
