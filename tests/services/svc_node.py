"""Our daemon with the service host wired in, for the services interop test.

This is the wiring recipe of docs/services.md applied to exec/main.py's ``run_node`` (which
does not embed services yet): Node + ServiceHost + one IpcServer per service.
Usage: python svc_node.py -f -c corosync.conf   (stops on SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import trio

from corosync.exec import main as daemon
from corosync.exec.cmap import CmapStore
from corosync.exec.host import ServiceHost
from corosync.exec.ipc import IpcServer
from corosync.exec.log import CorosyncLog
from corosync.exec.node import Node
from corosync.exec.transport import make_transport


async def serve(config: Any, log: CorosyncLog) -> None:
    cmap = CmapStore()
    cmap.load_config(config)
    transport = make_transport(config, envelope=None,
                               log=lambda level, key, msg: log.limited(level, "TOTEM", key, msg))
    node = Node(config, log=log, transport=transport, cmap=cmap)
    servers: list[IpcServer] = []

    def ready() -> None:  # corosync accepts IPC clients once the first sync completed
        for server in servers:
            server.ready = True

    host = ServiceHost(node.nodeid, cmap, lambda g, m, gu: node.mcast([g], m, gu),
                       send_ok=node.pg.send_ok, trans_ack=node.sync_completed, log=log.log,
                       shutdown=lambda reason: node.stop(), on_ready=ready,
                       log_sync_completed=False)
    node.confchg_handlers.append(host.on_confchg)
    node.deliver_handlers.append(host.on_deliver)
    node.sync_hook = lambda chg: None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for name, handler in host.ipc_handlers.items():
                server = IpcServer(name, handler)
                server.ready = host.ready
                servers.append(server)
                await nursery.start(server.serve)
            await nursery.start(node.run)
            async for _sig in signals:
                node.stop()
                break
            await node.wait_stopped()
            nursery.cancel_scope.cancel()


def main() -> int:
    opts = daemon.parse_args(sys.argv[1:])
    assert not isinstance(opts, int)
    log = CorosyncLog()
    loaded = daemon.load(opts, log)
    if isinstance(loaded, int):
        return loaded
    config, _envelope = loaded
    for d in (config.system.state_dir, getattr(config.system, "run_dir", None)):
        if d:
            os.makedirs(str(d), exist_ok=True)
    trio.run(serve, config, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
