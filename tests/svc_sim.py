"""A deterministic simulated cluster of service hosts, for the service and quorum tests.

N × (TotemPg(Srp) + ServiceHost) on a virtual clock (ms), driven the way exec/node.py drives
them (ConfChg and PgDeliver in; mcast / send_ok / trans_ack out).  Datagrams are routed by
exec/sim's Network (delay, jitter, loss, duplication from a seeded random stream), so a
partition is one call; nodes can crash.  Import it from any tests/ subdirectory as
``import svc_sim`` (tests/conftest.py's directory is on sys.path).

Two flavours share the engine:

* :class:`Cluster` (tests/services): every default service on an empty cmap; keyword
  arguments are totem settings (``Cluster(3, token=500)``).
* :class:`QCluster` (tests/quorum, tests/qdevice): cfg + quorum + votequorum on a cmap that
  holds the nodelist; keyword arguments are ``quorum.*`` keys (``QCluster(3,
  two_node=1)``); service timers (``timer_add``: last-man-standing window, cfg shutdown
  timeout) run on the virtual clock.

Events are a heap of (time, seq, kind, node, data); seq makes runs reproducible.
"""

from __future__ import annotations

import heapq
import os
import random
from typing import Any, Callable, Sequence

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
    """Stands in for exec/ipc IpcConnection: records responses and events."""

    pid: int = 1000
    uid: int = 0
    gid: int = 0
    context: Any = None
    closed: bool = False
    responses: list[tuple[int, bytes, int]] = field(factory=list)
    events: list[tuple[int, bytes, int]] = field(factory=list)
    fc_level: int = 0
    max_msg_size: int = 1024 * 1024

    def _check(self, payload: bytes) -> None:
        if 24 + len(payload) > self.max_msg_size:  # as IpcConnection._build
            raise ValueError("message exceeds the client's max_msg_size")

    def send_response(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self._check(payload)
        self.responses.append((msg_id, bytes(payload), int(error)))
        return True

    def send_event(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self._check(payload)
        self.events.append((msg_id, bytes(payload), int(error)))
        return True

    def set_flow_control(self, level: int) -> None:
        self.fc_level = level

    def close(self, reason: str = "") -> None:
        self.closed = True


def make_cmap(nodeid: int, n: int, quorum: dict[str, Any],
              state_dir: str | None = None) -> CmapStore:
    """A cmap as the config loader leaves it: nodelist of n nodes (127.0.0.i, names ni),
    this node's position, the given ``quorum.*`` keys (ints typed as corosync's loader
    types them)."""
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
    """One simulated node; ``Node(cluster, nodeid)`` also makes a fresh node to replace a
    crashed one (then ``cluster.apply(node, node.pg.start(cluster.now))``)."""

    def __init__(self, cluster: "SimCluster", nodeid: int) -> None:
        self.cluster = cluster
        self.nodeid = nodeid
        self.up = True
        self.pg = TotemPg(Srp(nodeid, cluster.config))
        self.timers: dict[Any, int] = {}
        self.pending: list = []
        self.logs: list[str] = []
        self.confchgs: list[ConfChg] = []
        self.syncs_completed = 0
        self.svc_timers: dict[int, Callable[[], None]] = {}
        self.cmap = cluster.new_cmap(nodeid)
        timers = {"timer_add": self._timer_add, "timer_del": self._timer_del
                  } if cluster.service_timers else {}
        self.host = ServiceHost(nodeid, self.cmap, self._mcast, send_ok=self.pg.send_ok,
                                trans_ack=self._trans_ack,
                                log=lambda lvl, sub, text: self.logs.append(f"[{sub}] {text}"),
                                services=cluster.services, **timers)

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
        handle = self.cluster.push(self.cluster.now + ms, _SVC_TIMER, self.nodeid, None)
        self.svc_timers[handle] = callback
        return handle

    def _timer_del(self, handle: int) -> None:
        self.svc_timers.pop(handle, None)

    def _mcast(self, group: bytes, message: bytes, guarantee: Guarantee) -> None:
        self.pending.extend(self.pg.mcast([group], message, guarantee, self.cluster.now))

    def _trans_ack(self) -> None:
        self.syncs_completed += 1
        self.pending.extend(self.pg.trans_ack(self.cluster.now))

    def connect(self, service: str, pid: int = 1000) -> FakeConn:
        conn = FakeConn(pid=pid)
        self.host.ipc_handlers[service].on_connect(conn)
        return conn

    def client(self, pid: int) -> FakeConn:
        """A CPG client connection of process ``pid``."""
        return self.connect("cpg", pid)

    def request(self, service: str, conn: FakeConn, msg_id: int, payload: bytes) -> None:
        self.host.ipc_handlers[service].on_request(conn, msg_id, payload)
        self.cluster.apply(self, [])


class SimCluster:
    """The engine; use :class:`Cluster` or :class:`QCluster`."""

    def __init__(self, n: int, *, link: LinkParams | None = None, seed: int = 1,
                 totem: dict[str, Any] | None = None, services: Sequence[type] | None = None,
                 quorum: dict[str, Any] | None = None, state_dir: str | None = None,
                 service_timers: bool = False) -> None:
        self.n = n
        self.services = services
        self.quorum_keys = quorum
        self.state_dir = state_dir
        self.service_timers = service_timers
        self.config = derive(n, **({"token": 200, "token_coefficient": 0} | (totem or {})))
        self.net = Network(list(range(1, n + 1)), link or LinkParams(delay=1, jitter=0),
                           random.Random(seed))
        self.now = 0
        self.heap: list = []
        self.seq = 0
        self.nodes = {i: Node(self, i) for i in range(1, n + 1)}
        for node in self.nodes.values():
            self.apply(node, node.pg.start(self.now))

    def new_cmap(self, nodeid: int) -> CmapStore:
        """An empty cmap, or with ``quorum`` given the loader's nodelist + quorum keys (and
        a per-node state_dir below ``state_dir``)."""
        if self.quorum_keys is None:
            return CmapStore()
        node_dir = None
        if self.state_dir:
            node_dir = f"{self.state_dir}/n{nodeid}"
            os.makedirs(node_dir, exist_ok=True)
        return make_cmap(nodeid, self.n, self.quorum_keys, node_dir)

    def push(self, t: int, kind: int, dst: int, data: Any) -> int:
        """Queue an event; returns its sequence number (unique, orders equal times)."""
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, dst, self.seq if data is None else data))
        return self.seq

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
                            self.push(self.now + delay, _NET, dst, a.data)
                elif t is Unicast:
                    for delay in self.net.route(node.nodeid, a.nodeid):
                        self.push(self.now + delay, _NET, a.nodeid, a.data)
                elif t is StartTimer:
                    # the event carries its own seq (the next one) as generation mark
                    node.timers[a.kind] = self.push(self.now + a.ms, _TIMER, node.nodeid,
                                                    (a.kind, self.seq + 1))
                elif t is CancelTimer:
                    node.timers.pop(a.kind, None)
                elif t is PgDeliver:
                    node.host.on_deliver(a)
                elif t is ConfChg:
                    node.confchgs.append(a)
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
        """Every live node of each group has that group as its regular membership and has
        finished sync (one group: the whole live cluster)."""
        def cond() -> bool:
            for g in groups:
                for i in g:
                    node = self.nodes[i]
                    if node.up and (node.host.members != tuple(g) or node.host.sync_in_process):
                        return False
            return True
        return cond


class Cluster(SimCluster):
    """The service tests' cluster: default services, empty cmap; ``**totem`` settings."""

    def __init__(self, n: int, link: LinkParams | None = None, seed: int = 1,
                 **totem: Any) -> None:
        super().__init__(n, link=link, seed=seed, totem=totem)


class QCluster(SimCluster):
    """The quorum tests' cluster: cfg + quorum + votequorum, nodelist in cmap, service timers
    on the virtual clock; ``**quorum`` are ``quorum.*`` keys.  ``state_dir``: where each
    node keeps its ev_tracking file (needed with allow_downscale / expected_votes_tracking;
    never the real /var/lib/corosync)."""

    def __init__(self, n: int, seed: int = 1, state_dir: str | None = None,
                 **quorum: Any) -> None:
        keys = {"quorum.provider": "corosync_votequorum"} | {
            f"quorum.{k}": v for k, v in quorum.items()}
        super().__init__(n, seed=seed, services=[CfgService, QuorumService, VotequorumService],
                         quorum=keys, state_dir=state_dir, service_timers=True)
