"""A deterministic N-node cluster for the quorum tests: TotemPg(Srp) + ServiceHost with the
quorum and votequorum services (plus cmap for realism) on a virtual clock; datagrams routed
by exec/sim's Network so partitions are one call.  The host's ``timer_add`` /
``timer_del`` run on the virtual clock (last-man-standing window, cfg shutdown timeout)."""

from __future__ import annotations

import heapq
import os
import random
from typing import Any, Callable

from attrs import define, field

from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.host import ServiceHost
from corosync.exec.sim.faults import Partition
from corosync.exec.sim.network import LinkParams, Network
from corosync.exec.totem.config import derive
from corosync.exec.totem.events import (CancelTimer, ConfChg, Guarantee, Multicast, PgDeliver,
                                        StartTimer, Unicast)
from corosync.exec.totem.pg import TotemPg
from corosync.exec.totem.srp import Srp
from corosync.services.cfg import CfgService
from corosync.services.quorum import QuorumService
from corosync.services.votequorum import VotequorumService

_NET, _TIMER, _SVC_TIMER = 0, 1, 2


@define
class FakeConn:
    pid: int = 1000
    uid: int = 0
    gid: int = 0
    context: Any = None
    responses: list[tuple[int, bytes, int]] = field(factory=list)
    events: list[tuple[int, bytes, int]] = field(factory=list)

    def send_response(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self.responses.append((msg_id, bytes(payload), int(error)))
        return True

    def send_event(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self.events.append((msg_id, bytes(payload), int(error)))
        return True

    def set_flow_control(self, level: int) -> None:
        pass


def make_cmap(nodeid: int, n: int, quorum: dict[str, Any],
              state_dir: str | None = None) -> CmapStore:
    cm = CmapStore()
    if state_dir is not None:
        cm.set("system.state_dir", state_dir, CmapType.STRING)
    for i in range(n):
        cm.set(f"nodelist.node.{i}.nodeid", i + 1, CmapType.UINT32)
        cm.set(f"nodelist.node.{i}.ring0_addr", f"127.0.0.{i + 1}", CmapType.STRING)
        cm.set(f"nodelist.node.{i}.name", f"n{i + 1}", CmapType.STRING)
    cm.set("nodelist.local_node_pos", nodeid - 1, CmapType.UINT32)
    for key, value in quorum.items():
        if isinstance(value, str):
            cm.set(key, value, CmapType.STRING)
        else:
            cm.set(key, value, CmapType.UINT32 if key.endswith(("votes", "window", "timeout"))
                   else CmapType.UINT8)
    return cm


class Node:
    def __init__(self, cluster: "QCluster", nodeid: int, quorum: dict[str, Any]) -> None:
        self.cluster = cluster
        self.nodeid = nodeid
        self.up = True
        self.pg = TotemPg(Srp(nodeid, cluster.config))
        self.timers: dict[Any, int] = {}
        self.pending: list = []
        self.logs: list[str] = []
        self.cmap = make_cmap(nodeid, cluster.n, quorum,
                              f"{cluster.state_dir}/n{nodeid}" if cluster.state_dir else None)
        if cluster.state_dir:
            os.makedirs(f"{cluster.state_dir}/n{nodeid}", exist_ok=True)
        self.svc_timers: dict[int, Callable[[], None]] = {}
        self.host = ServiceHost(nodeid, self.cmap, self._mcast, send_ok=self.pg.send_ok,
                                trans_ack=lambda: self.pending.extend(
                                    self.pg.trans_ack(self.cluster.now)),
                                log=lambda lvl, sub, text: self.logs.append(f"[{sub}] {text}"),
                                services=[CfgService, QuorumService, VotequorumService],
                                timer_add=self._timer_add, timer_del=self._timer_del)

    @property
    def vq(self) -> VotequorumService:
        return self.host.services[5]  # type: ignore[return-value]

    @property
    def cfg(self) -> CfgService:
        return self.host.services[1]  # type: ignore[return-value]

    @property
    def quorum(self) -> QuorumService:
        return self.host.services[3]  # type: ignore[return-value]

    def _timer_add(self, ms: int, callback: Callable[[], None]) -> int:
        self.cluster.seq += 1
        handle = self.cluster.seq
        self.svc_timers[handle] = callback
        heapq.heappush(self.cluster.heap, (self.cluster.now + ms, handle, _SVC_TIMER,
                                           self.nodeid, handle))
        return handle

    def _timer_del(self, handle: int) -> None:
        self.svc_timers.pop(handle, None)

    def _mcast(self, group: bytes, message: bytes, guarantee: Guarantee) -> None:
        self.pending.extend(self.pg.mcast([group], message, guarantee, self.cluster.now))

    def connect(self, service: str) -> FakeConn:
        conn = FakeConn()
        self.host.ipc_handlers[service].on_connect(conn)
        return conn

    def request(self, service: str, conn: FakeConn, msg_id: int, payload: bytes) -> None:
        self.host.ipc_handlers[service].on_request(conn, msg_id, payload)
        self.cluster.apply(self, [])


class QCluster:
    def __init__(self, n: int, seed: int = 1, state_dir: str | None = None,
                 **quorum: Any) -> None:
        """``state_dir``: where each node keeps its ev_tracking file (needed with
        allow_downscale / expected_votes_tracking; never the real /var/lib/corosync)."""
        self.n = n
        self.state_dir = state_dir
        self.config = derive(n, token=200, token_coefficient=0)
        self.net = Network(list(range(1, n + 1)), LinkParams(delay=1, jitter=0),
                           random.Random(seed))
        self.now = 0
        self.heap: list = []
        self.seq = 0
        q = {"quorum.provider": "corosync_votequorum"} | {
            f"quorum.{k}": v for k, v in quorum.items()}
        self.nodes = {i: Node(self, i, q) for i in range(1, n + 1)}
        for node in self.nodes.values():
            self.apply(node, node.pg.start(self.now))

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
                            self.seq += 1
                            heapq.heappush(self.heap, (self.now + delay, self.seq, _NET, dst,
                                                       a.data))
                elif t is Unicast:
                    for delay in self.net.route(node.nodeid, a.nodeid):
                        self.seq += 1
                        heapq.heappush(self.heap, (self.now + delay, self.seq, _NET, a.nodeid,
                                                   a.data))
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
                    node.host.on_confchg(a)
            work = node.pending
            node.pending = []

    def partition(self, *groups: tuple[int, ...]) -> None:
        self.net.set_faults([Partition(0, 0, tuple(tuple(g) for g in groups))] if groups else [])

    def heal(self) -> None:
        self.net.set_faults([])

    def crash(self, nodeid: int) -> None:
        self.nodes[nodeid].up = False

    def _step(self) -> None:
        t, _seq, kind, dst, data = heapq.heappop(self.heap)
        self.now = t
        node = self.nodes[dst]
        if not node.up:
            return
        if kind == _NET:
            self.apply(node, node.pg.receive(data, t))
        elif kind == _TIMER:
            tkind, gen = data
            if node.timers.get(tkind) != gen:
                return
            del node.timers[tkind]
            self.apply(node, node.pg.timer_expired(tkind, t))
        else:
            cb = node.svc_timers.pop(data, None)
            if cb is not None:
                cb()
                self.apply(node, [])

    def run_until(self, cond: Callable[[], bool], limit_ms: int = 30_000) -> None:
        deadline = self.now + limit_ms
        while not cond():
            if not self.heap or self.heap[0][0] > deadline:
                raise AssertionError(f"condition not reached by t={deadline} ms")
            self._step()

    def run_for(self, ms: int) -> None:
        end = self.now + ms
        while self.heap and self.heap[0][0] <= end:
            self._step()
        self.now = end

    def settled(self, *groups: tuple[int, ...]) -> Callable[[], bool]:
        def cond() -> bool:
            for g in groups:
                for i in g:
                    node = self.nodes[i]
                    if node.up and (node.host.members != tuple(g) or node.host.sync_in_process):
                        return False
            return True
        return cond
