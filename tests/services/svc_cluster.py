"""A small deterministic cluster for the service tests: N × (TotemPg(Srp) + ServiceHost)
on a virtual clock, datagrams routed by exec/sim's Network (delay, jitter, loss,
duplication from a seeded random stream), nodes that can crash.  It drives the hosts the
way exec/node.py is meant to (confchg and PgDeliver in, mcast/send_ok/trans_ack out)."""

from __future__ import annotations

import heapq
import random
from typing import Any, Callable

from svc_helpers import FakeConn

from corosync.exec.cmap import CmapStore
from corosync.exec.host import ServiceHost
from corosync.exec.totem.config import derive
from corosync.exec.totem.events import (CancelTimer, ConfChg, Guarantee, Multicast,
                                        PgDeliver, StartTimer, Unicast)
from corosync.exec.totem.pg import TotemPg
from corosync.exec.totem.srp import Srp
from corosync.exec.sim.network import LinkParams, Network

_NET, _TIMER = 0, 1


class Node:
    def __init__(self, cluster: "Cluster", nodeid: int) -> None:
        self.cluster = cluster
        self.nodeid = nodeid
        self.up = True
        self.pg = TotemPg(Srp(nodeid, cluster.config))
        self.timers: dict[Any, int] = {}
        self.pending: list = []
        self.logs: list[str] = []
        self.confchgs: list[ConfChg] = []
        self.cmap = CmapStore()
        self.host = ServiceHost(nodeid, self.cmap, self._mcast, send_ok=self.pg.send_ok,
                                trans_ack=self._trans_ack,
                                log=lambda lvl, sub, text: self.logs.append(f"[{sub}] {text}"))
        self.syncs_completed = 0

    def _mcast(self, group: bytes, message: bytes, guarantee: Guarantee) -> None:
        self.pending.extend(self.pg.mcast([group], message, guarantee, self.cluster.now))

    def _trans_ack(self) -> None:
        self.syncs_completed += 1
        self.pending.extend(self.pg.trans_ack(self.cluster.now))

    def client(self, pid: int) -> FakeConn:
        conn = FakeConn(pid=pid)
        self.host.ipc_handlers["cpg"].on_connect(conn)
        return conn

    def request(self, service: str, conn: FakeConn, msg_id: int, payload: bytes) -> None:
        self.host.ipc_handlers[service].on_request(conn, msg_id, payload)
        self.cluster.apply(self, [])


class Cluster:
    def __init__(self, n: int, link: LinkParams | None = None, seed: int = 1,
                 **totem: Any) -> None:
        self.config = derive(n, **({"token": 200, "token_coefficient": 0} | totem))
        self.net = Network(list(range(1, n + 1)), link or LinkParams(delay=1, jitter=0),
                           random.Random(seed))
        self.now = 0
        self.heap: list = []
        self.seq = 0
        self.nodes = {i: Node(self, i) for i in range(1, n + 1)}
        for node in self.nodes.values():
            self.apply(node, node.pg.start(self.now))

    def _push(self, t: int, *item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, *item))

    def apply(self, node: Node, actions: list) -> None:
        work = list(actions) + node.pending
        node.pending = []
        while work:
            for a in work:
                if not node.up:
                    return
                t = type(a)
                if t is Multicast:
                    for dst in self.nodes:
                        for delay in self.net.route(node.nodeid, dst):
                            self._push(self.now + delay, _NET, dst, a.data)
                elif t is Unicast:
                    for delay in self.net.route(node.nodeid, a.nodeid):
                        self._push(self.now + delay, _NET, a.nodeid, a.data)
                elif t is StartTimer:
                    self.seq += 1
                    node.timers[a.kind] = self.seq
                    heapq.heappush(self.heap, (self.now + a.ms, self.seq, _TIMER, node.nodeid,
                                               (a.kind, self.seq)))
                elif t is CancelTimer:
                    node.timers.pop(a.kind, None)
                elif t is PgDeliver:
                    node.host.on_deliver(a)
                elif t is ConfChg:
                    node.confchgs.append(a)
                    node.host.on_confchg(a)
            work = node.pending
            node.pending = []

    def crash(self, nodeid: int) -> None:
        self.nodes[nodeid].up = False

    def run_until(self, cond: Callable[[], bool], limit_ms: int = 30_000) -> None:
        deadline = self.now + limit_ms
        while not cond():
            if not self.heap or self.heap[0][0] > deadline:
                raise AssertionError(f"condition not reached by t={deadline} ms")
            t, _seq, kind, dst, data = heapq.heappop(self.heap)
            self.now = t
            node = self.nodes[dst]
            if not node.up:
                continue
            if kind == _NET:
                self.apply(node, node.pg.receive(data, t))
            else:
                tkind, gen = data
                if node.timers.get(tkind) != gen:
                    continue
                del node.timers[tkind]
                self.apply(node, node.pg.timer_expired(tkind, t))

    def settled(self, members: tuple[int, ...]) -> Callable[[], bool]:
        """All live nodes have ``members`` as regular membership and finished sync."""
        def cond() -> bool:
            for node in self.nodes.values():
                if not node.up:
                    continue
                if node.host.members != members or node.host.sync_in_process:
                    return False
            return True
        return cond
