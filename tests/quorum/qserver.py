"""A one-node executive made of the service host (cmap, cfg, quorum, votequorum) behind the
real exec/ipc servers, for running the stock tools against our services.

Run inside a private network namespace (abstract IPC sockets are per netns):
``unshare -n python qserver.py [--no-votequorum]``.  Prints "ready" once the first sync
completed and "shutdown: <reason>" for every shutdown the services request (it keeps
serving), until stdin reaches EOF (the test closes it; no signals needed)."""

from __future__ import annotations

import math
import sys

import trio

from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.host import ServiceHost
from corosync.exec.ipc.server import serve_services
from corosync.exec.totem.events import ConfChg, ConfChgKind, PgDeliver
from corosync.exec.totem.wire import RingId
from corosync.services.cfg import CfgService
from corosync.services.cmap import CmapService
from corosync.services.quorum import QuorumService
from corosync.services.votequorum import VotequorumService

RING = RingId(1, 0x10)


def store(votequorum: bool) -> CmapStore:
    cm = CmapStore()
    cm.set("totem.cluster_name", "qlab", CmapType.STRING)
    cm.set("totem.transport", "udpu", CmapType.STRING)
    cm.set("nodelist.node.0.nodeid", 1, CmapType.UINT32)
    cm.set("nodelist.node.0.name", "n1", CmapType.STRING)
    cm.set("nodelist.node.0.ring0_addr", "127.0.0.1", CmapType.STRING)
    cm.set("nodelist.local_node_pos", 0, CmapType.UINT32)
    cm.set("runtime.members.1.status", "joined", CmapType.STRING)
    if votequorum:
        cm.set("quorum.provider", "corosync_votequorum", CmapType.STRING)
    return cm


async def main() -> None:
    send, recv = trio.open_memory_channel(math.inf)
    host = ServiceHost(1, store("--no-votequorum" not in sys.argv),
                       lambda g, m, gu: send.send_nowait((g, m)),
                       services=[CmapService, CfgService, QuorumService, VotequorumService],
                       shutdown=lambda reason: print(f"shutdown: {reason}", flush=True))

    async def loopback() -> None:
        async for group, message in recv:
            host.on_deliver(PgDeliver(1, (group,), message, RING))

    async with trio.open_nursery() as n:
        n.start_soon(loopback)
        await n.start(serve_services, host.ipc_handlers)
        host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (1,), RING))
        while host.sync_in_process:
            await trio.sleep(0.005)
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        n.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
