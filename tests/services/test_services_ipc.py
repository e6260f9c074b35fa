"""The host's IPC handlers behind the real exec/ipc server, with the real client
(lib/ipc.py): a one-node ring (our own multicasts looped back in order by a trio task)."""

from __future__ import annotations

import math
import os
import struct
from itertools import count

import trio

from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.host import ServiceHost
from corosync.exec.ipc import IpcServer
from corosync.exec.totem.events import ConfChg, ConfChgKind, PgDeliver
from corosync.exec.totem.wire import RingId
from corosync.lib.ipc import CsError, IpcClient
from corosync.services import cmap, cpg

RUN = trio.to_thread.run_sync
RING = RingId(1, 4)
_names = count()


def unique(tag: str) -> str:
    return f"svctest-{tag}-{os.getpid()}-{next(_names)}"


async def wait_for(cond, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.005)


async def test_cpg_and_cmap_through_ipc_server() -> None:
    send, recv = trio.open_memory_channel(math.inf)
    store = CmapStore()
    store.set("totem.cluster_name", "svc", CmapType.STRING)
    host = ServiceHost(1, store, lambda g, m, gu: send.send_nowait((g, m)))

    async def loopback() -> None:
        async for group, message in recv:
            host.on_deliver(PgDeliver(1, (group,), message, RING))

    async with trio.open_nursery() as n:
        n.start_soon(loopback)
        cpg_name, cmap_name = unique("cpg"), unique("cmap")
        servers = [IpcServer(cpg_name, host.ipc_handlers["cpg"]),
                   IpcServer(cmap_name, host.ipc_handlers["cmap"])]
        for srv in servers:
            await n.start(srv.serve)
        host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (1,), RING))
        await wait_for(lambda: not host.sync_in_process)

        def cpg_client() -> dict:
            out = {}
            with IpcClient.connect(cpg_name) as c:
                out["join"] = c.request(cpg.REQ_JOIN, struct.pack("<I4x128sI4xI4x", 4, b"grp1",
                                                                  os.getpid(), 1), 5)
                out["ev1"] = c.recv_event(5)
                out["ev2"] = c.recv_event(5)
                data = b"hello"
                c.send(struct.pack("<i4xi4xi4xI4xI4x", cpg.REQ_MCAST, 40 + len(data), 0, 2,
                                   len(data)) + data, fc_enable_max=2)
                out["deliver"] = c.recv_event(5)
                out["local"] = c.request(cpg.REQ_LOCAL_GET, b"", 5)
                out["members"] = c.request(cpg.REQ_MEMBERSHIP,
                                           struct.pack("<I4x128s", 4, b"grp1"), 5)
            return out

        out = await RUN(cpg_client)
        assert out["join"] == (0, CsError.OK, b"")
        eid, err, body = out["ev1"]
        assert (eid, len(body) + 24) == (cpg.RES_CONFCHG, 184 + 24 + 24)
        assert out["ev2"][0] == cpg.RES_TOTEM_CONFCHG  # model v1 initial totem confchg
        eid, err, body = out["deliver"]
        assert (eid, len(body) + 24, body[160:]) == (cpg.RES_DELIVER, 189, b"hello")
        assert struct.unpack_from("<I4xI4xI", body, 136) == (5, 1, os.getpid())
        assert out["local"] == (7, CsError.OK, struct.pack("<I4x", 1))
        rid, err, body = out["members"]
        assert (rid, err, len(body) + 24) == (3, CsError.OK, 9248)
        # the client closed: its process left with reason PROCDOWN
        await wait_for(lambda: host.services[2].procs == [])

        def cmap_client() -> tuple:
            with IpcClient.connect(cmap_name) as c:
                key = b"totem.cluster_name"
                get = c.request(cmap.REQ_GET, struct.pack("<H6x256sQ", len(key), key, 0), 5)
                key2 = b"svc.test.key"
                put = c.request(cmap.REQ_SET, struct.pack("<H6x256sQB7x", len(key2), key2, 4, 6)
                                + struct.pack("<I", 99), 5)
                return get, put

        get, put = await RUN(cmap_client)
        assert get == (2, CsError.OK, struct.pack("<QB7x", 4, CmapType.STRING))
        assert put == (0, CsError.OK, b"")
        assert store.get("svc.test.key") == 99
        n.cancel_scope.cancel()
