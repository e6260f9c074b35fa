"""Admission control of IPC traffic (exec/host.py ``Admission``, ``ServiceHost.check_queue``)
and the send-rate measurement it uses (exec/totem/pg.py ``TotemPg.backlog`` /
``drain_per_visit``).  No clocks: backlogs and rates are fed in directly, or produced by a
fake Srp whose token visits are explicit calls."""

from __future__ import annotations

import struct

from corosync.exec.cmap import CmapStore
from corosync.exec.host import ADMIT_MIN_PACKETS, Admission, FC_OFF, FC_SYNC, ServiceHost
from corosync.exec.totem.config import derive
from corosync.exec.totem.events import Guarantee
from corosync.exec.totem.pg import TotemPg
from corosync.exec.totem.srp import QueueFull
from corosync.services import cpg
from corosync.services.cmap import CmapService
from corosync.services.cpg import CpgService


class Conn:
    """An IPC connection double that records its flow-control word and hold flag."""

    def __init__(self, pid: int) -> None:
        self.pid, self.uid, self.gid = pid, 0, 0
        self.context = None
        self.closed = False
        self.level, self.hold = 0, True
        self.responses: list[tuple[int, bytes, int]] = []
        self.events: list[tuple[int, bytes, int]] = []
        self.max_msg_size = 1 << 20

    def send_response(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self.responses.append((msg_id, payload, int(error)))
        return True

    def send_event(self, msg_id: int, payload: bytes = b"", error: int = 1) -> bool:
        self.events.append((msg_id, payload, int(error)))
        return True

    def set_flow_control(self, level: int, hold: bool = True) -> None:
        self.level, self.hold = level, hold


# ------------------------------------------------------------------ the rule alone
def test_admission_hysteresis_in_token_visits():
    a = Admission(high=2.0, low=1.0)
    per = 10.0  # packets this node sends per token visit
    assert a.bounds(per) == (20.0, 10.0)
    assert not a.update(19, per) and not a.refusing      # below the bound: admitted
    assert a.update(20, per) and a.refusing              # at 2 visits' worth: refused
    assert not a.update(15, per) and a.refusing          # between the marks: no flapping
    assert not a.update(11, per) and a.refusing
    assert a.update(10, per) and not a.refusing          # down to 1 visit: admitted again
    assert not a.update(19, per) and not a.refusing      # and stays so below the bound


def test_admission_bounds_follow_the_measured_rate_with_a_floor():
    a = Admission()
    assert a.bounds(17.0) == (34.0, 17.0)
    assert a.bounds(5.0) == (10.0, 5.0)
    on, off = a.bounds(0.2)                              # a crawling ring: the floor holds
    assert on == ADMIT_MIN_PACKETS and off < on
    assert a.update(ADMIT_MIN_PACKETS - 1, 0.2) is False
    assert a.update(ADMIT_MIN_PACKETS, 0.2) is True
    # a slower ring lowers the bound of a refusing host: it keeps refusing longer
    assert a.refusing and not a.update(6, 3.0) and a.update(3, 3.0)


# ------------------------------------------------------------------ the host applies it
class Env:
    def __init__(self) -> None:
        self.backlog, self.per_visit, self.usage = 0, 10.0, 0.0
        self.sent: list[bytes] = []
        self.host = ServiceHost(1, CmapStore(), self._mcast, send_ok=lambda n: True,
                                services=[CmapService, CpgService],
                                send_load=lambda: (self.backlog, self.per_visit),
                                queue_usage=lambda: self.usage)
        self.host.sync_in_process = False
        self.cpg_conn, self.cmap_conn = Conn(10), Conn(11)
        assert self.host.ipc_handlers["cpg"].on_connect(self.cpg_conn)
        assert self.host.ipc_handlers["cmap"].on_connect(self.cmap_conn)

    def _mcast(self, group: bytes, message: bytes, guarantee: Guarantee) -> None:
        self.sent.append(message)

    def levels(self) -> list[tuple[int, bool]]:
        return [(c.level, c.hold) for c in (self.cpg_conn, self.cmap_conn)]

    def cpg_request(self, msg_id: int, payload: bytes) -> None:
        self.host.ipc_handlers["cpg"].on_request(self.cpg_conn, msg_id, payload)


def _join(env: Env) -> None:
    name = struct.pack("<I4x128s", 5, b"group")
    env.cpg_request(cpg.REQ_JOIN, name + struct.pack("<I4xI4x", 10, 0))
    assert env.cpg_conn.responses[-1][2] == 1  # CS_OK


def _mcast_request(payload: bytes) -> bytes:
    return struct.pack("<I4xI4x", 2, len(payload)) + bytes(8) + payload


def test_backlog_over_the_bound_flow_controls_every_connection_without_holding():
    env = Env()
    _join(env)
    host = env.host
    env.backlog = 19
    host.check_queue()
    assert env.levels() == [(FC_OFF, True)] * 2 and not host.queue_critical
    env.backlog = 20                                      # 2 visits' worth at 10 per visit
    host.check_queue()
    # libcpg answers CS_ERR_TRY_AGAIN on word 2; requests already written are taken in
    assert env.levels() == [(FC_SYNC, False)] * 2 and host.queue_critical
    before = len(env.sent)
    env.cpg_request(cpg.REQ_MCAST, _mcast_request(b"written before the word was seen"))
    assert len(env.sent) == before + 1                    # admitted: never dropped
    assert host.stats.ipc_dropped == 0
    env.backlog = 15
    host.check_queue()
    assert env.levels() == [(FC_SYNC, False)] * 2         # hysteresis: still refusing
    env.backlog = 10
    host.pump()                                           # what every delivery runs
    assert env.levels() == [(FC_OFF, True)] * 2 and not host.queue_critical
    assert host.stats.queue_fc_changes == 2


def test_new_connection_inherits_the_current_flow_control():
    env = Env()
    env.backlog = 100
    env.host.check_queue()
    late = Conn(12)
    assert env.host.ipc_handlers["cpg"].on_connect(late)
    assert (late.level, late.hold) == (FC_SYNC, False)


def test_critical_queue_level_also_holds_requests():
    env = Env()                                           # (a queue of ~3000 packets)
    env.usage, env.backlog = 0.8, 2400                    # > 75 %: corosync's critical level
    env.host.check_queue()
    assert env.levels() == [(FC_SYNC, True)] * 2
    env.usage, env.backlog = 0.65, 1950                   # critical hysteresis: still held
    env.host.check_queue()
    assert env.levels() == [(FC_SYNC, True)] * 2
    env.usage, env.backlog = 0.5, 1500                    # below: only the backlog bound
    env.host.check_queue()
    assert env.levels() == [(FC_SYNC, False)] * 2
    env.usage, env.backlog = 0.0, 3
    env.host.check_queue()
    assert env.levels() == [(FC_OFF, True)] * 2


def test_critical_queue_level_without_a_backlog_measurement():
    env = Env()
    env.host._send_load = None                            # e.g. a driver without TotemPg
    env.usage = 0.8
    env.host.check_queue()
    assert env.levels() == [(FC_SYNC, True)] * 2
    env.usage = 0.5
    env.host.check_queue()
    assert env.levels() == [(FC_OFF, True)] * 2


def test_sync_flow_control_is_kept_when_the_backlog_drains():
    env = Env()
    env.host._set_sync_in_process(True)
    assert env.levels() == [(FC_SYNC, True)] * 2
    env.backlog = 50
    env.host.check_queue()
    env.backlog = 0
    env.host.check_queue()
    assert env.levels() == [(FC_SYNC, True)] * 2          # sync still runs: still held


# ------------------------------------------------------------------ TotemPg measures it
class VisitSrp:
    """Srp double: a send queue, and token visits that send at most ``limit`` packets."""

    def __init__(self, limit: int) -> None:
        self.nodeid = 1
        self.config = derive(max_messages=17)
        self.queue: list[bytes] = []
        self.limit = limit
        self.token_received_hook = None

    def queue_space(self) -> int:
        return self.config.send_queue_max - len(self.queue)

    def send(self, payload: bytes, guarantee: int, now: int) -> list:
        if self.queue_space() <= 0:
            raise QueueFull("full")
        self.queue.append(payload)
        return []

    def visit(self) -> int:
        assert self.token_received_hook is not None
        self.token_received_hook()
        sent, self.queue = self.queue[:self.limit], self.queue[self.limit:]
        return len(sent)

    def trans_ack(self, now: int) -> list:
        return []


def test_pg_backlog_and_drain_per_visit():
    srp = VisitSrp(limit=6)
    pg = TotemPg(srp)  # type: ignore[arg-type]
    assert pg.drain_per_visit == 17.0 and pg.backlog() == 0
    pg.trans_ack(0)
    big = bytes(5000)                                     # 4 packets each
    for _ in range(10):
        pg.mcast([b"a"], big, Guarantee.AGREED, 0)
    pg.mcast([b"a"], b"small", Guarantee.AGREED, 0)       # waits in the packing buffer
    assert pg.backlog() == len(srp.queue) + 1
    for _ in range(30):                                   # a saturated sender
        srp.visit()
        for _ in range(2):
            pg.mcast([b"a"], big, Guarantee.AGREED, 0)
    assert abs(pg.drain_per_visit - 6.0) < 0.5            # measured: what a visit sends
    while srp.queue:
        srp.visit()
    srp.visit()                                           # an idle visit is no sample
    assert abs(pg.drain_per_visit - 6.0) < 0.5 and pg.backlog() == 0
    srp.limit = 12                                        # the ring got faster
    for _ in range(30):
        srp.visit()
        for _ in range(4):
            pg.mcast([b"a"], big, Guarantee.AGREED, 0)
    assert pg.drain_per_visit > 10.0


def test_lifting_waits_for_the_driver_to_finish_its_work():
    """With driver timers the lift runs from a 0 ms timer (after the current batch of
    deliveries), never in the middle of it; flow control goes *on* at once."""
    timers: list = []
    env = Env()
    host = ServiceHost(1, CmapStore(), env._mcast, send_ok=lambda n: True,
                       services=[CmapService, CpgService],
                       send_load=lambda: (env.backlog, env.per_visit),
                       timer_add=lambda ms, fn: timers.append((ms, fn)) or len(timers),
                       timer_del=lambda h: None)
    host.sync_in_process = False
    conn = Conn(20)
    assert host.ipc_handlers["cpg"].on_connect(conn)
    env.backlog = 25
    host.check_queue()
    assert (conn.level, timers) == (FC_SYNC, [])           # on: immediately
    env.backlog = 5
    host.check_queue()
    host.check_queue()                                      # e.g. the next delivery
    assert conn.level == FC_SYNC and [ms for ms, _ in timers] == [0]  # one timer, pending
    env.backlog = 30                                        # refilled before it fired
    timers.pop()[1]()
    assert conn.level == FC_SYNC                            # nothing to lift any more
    env.backlog = 0
    host.check_queue()
    timers.pop()[1]()
    assert conn.level == FC_OFF and host.stats.queue_fc_changes == 2 and not timers
