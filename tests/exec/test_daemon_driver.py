"""The trio driver (exec/node.py) against a scripted fake state machine and real sockets."""

from __future__ import annotations

import io
import struct
import types

import trio

from corosync.exec import ringid
from corosync.exec.log import CorosyncLog
from corosync.exec.node import Node
from corosync.exec.totem.events import (CancelTimer, ConfChg, ConfChgKind, Log, LogLevel,
                                        Multicast, PersistRingSeq, StartTimer, TimerKind)
from corosync.exec.totem.config import derive
from corosync.exec.totem.wire import RingId
from corosync.exec.transport.udpu import UdpuTransport
from test_transport_udpu import free_port


class FakePg:
    """Records every call; ``script`` maps a call to the actions it returns."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.script: dict = {}
        self.changed = trio.Event()

    def _record(self, *call) -> list:
        self.calls.append(call)
        self.changed.set()
        return list(self.script.get(call[0], []))

    def start(self, now):
        return self._record("start", now)

    def receive(self, data, now):
        return self._record("receive", data) + list(self.script.get(("receive", data), []))

    def timer_expired(self, kind, now):
        return self._record("timer", kind, now)

    def trans_ack(self, now):
        return self._record("trans_ack")

    def leave(self, now):
        return self._record("leave")

    async def wait_for(self, predicate, timeout=5.0):
        with trio.fail_after(timeout):
            while not predicate(self.calls):
                self.changed = trio.Event()
                await self.changed.wait()


def make_config(tmp_path, port):
    node = types.SimpleNamespace(nodeid=1, ring0_addr="127.0.0.1", name="n1")
    return types.SimpleNamespace(
        local_node=node, nodes=[node],
        system=types.SimpleNamespace(state_dir=str(tmp_path), run_dir=str(tmp_path)),
        totem=types.SimpleNamespace(transport="udpu", mcastport=port),
        totem_config=derive(1, token=300, join=50))


class FakeCmap:
    def __init__(self):
        self.values = {}

    def set(self, key, value, type):
        self.values[key] = (value, type.name)

    def __contains__(self, key):
        return key in self.values


def make_node(tmp_path, pg):
    port = free_port()
    cfg = make_config(tmp_path, port)
    stream = io.StringIO()
    log = CorosyncLog(stderr=stream)
    transport = UdpuTransport("127.0.0.1", port, [(1, "127.0.0.1")])
    cmap = FakeCmap()
    node = Node(cfg, log=log, transport=transport, pg=pg, cmap=cmap)
    return node, stream, cmap


async def test_start_multicast_self_delivery_persist_and_leave(tmp_path):
    pg = FakePg()
    pg.script["start"] = [Multicast(b"JOIN"), PersistRingSeq(41),
                          Log(LogLevel.NOTICE, "hello from srp")]
    node, stream, _ = make_node(tmp_path, pg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await pg.wait_for(lambda c: ("receive", b"JOIN") in c)
        node.stop()
        await node.wait_stopped()
    assert pg.calls[-1] == ("leave",)
    with open(ringid.ringid_path(str(tmp_path), 1), "rb") as f:
        assert struct.unpack("=Q", f.read()) == (41,)
    out = stream.getvalue()
    assert "notice  [TOTEM ] Initializing transport (UDP/IP Unicast)." in out
    assert "[TOTEM ] The network interface [127.0.0.1] is now up." in out
    assert "[TOTEM ] adding new UDPU member {127.0.0.1}" in out
    assert "notice  [TOTEM ] hello from srp" in out


async def test_timers_fire_once_rearm_and_cancel(tmp_path):
    pg = FakePg()
    pg.script["start"] = [StartTimer(TimerKind.JOIN, 30), StartTimer(TimerKind.CONSENSUS, 40),
                          StartTimer(TimerKind.MERGE_DETECT, 20),
                          CancelTimer(TimerKind.MERGE_DETECT)]
    node, _, _ = make_node(tmp_path, pg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        t0 = trio.current_time()
        # Re-arm JOIN to fire later than CONSENSUS before either fires.
        node._execute([StartTimer(TimerKind.JOIN, 120)], node.now_ms())
        await pg.wait_for(lambda c: sum(1 for x in c if x[0] == "timer") >= 2)
        elapsed = trio.current_time() - t0
        await trio.sleep(0.15)  # let a wrongly kept old deadline show up (must not)
        node.stop()
        await node.wait_stopped()
    fired = [x[1] for x in pg.calls if x[0] == "timer"]
    assert fired == [TimerKind.CONSENSUS, TimerKind.JOIN]
    assert elapsed >= 0.11


async def test_regular_confchg_completes_sync_and_updates_cmap(tmp_path):
    pg = FakePg()
    rid = RingId(1, 8)
    pg.script["start"] = [
        ConfChg(ConfChgKind.TRANSITIONAL, (), (), (), rid),
        ConfChg(ConfChgKind.REGULAR, (1,), (), (1,), rid),
    ]
    node, stream, cmap = make_node(tmp_path, pg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await pg.wait_for(lambda c: ("trans_ack",) in c)
        node._execute([ConfChg(ConfChgKind.REGULAR, (), (1,), (), RingId(1, 12))],
                      node.now_ms())
        node.stop()
        await node.wait_stopped()
    assert node.members == ()
    assert cmap.values["runtime.config.totem.token"] == (300, "UINT32")
    assert cmap.values["runtime.members.1.ip"] == ("r(0) ip(127.0.0.1) ", "STRING")
    assert cmap.values["runtime.members.1.join_count"] == (1, "UINT32")
    assert cmap.values["runtime.members.1.status"] == ("left", "STRING")
    assert "[MAIN  ] Completed service synchronization, ready to provide service." in \
        stream.getvalue()


async def test_state_machine_exception_is_contained(tmp_path):
    class Boom(FakePg):
        def receive(self, data, now):
            super().receive(data, now)
            raise ValueError("bug")

    pg = Boom()
    pg.script["start"] = [Multicast(b"a"), Multicast(b"b")]
    node, stream, _ = make_node(tmp_path, pg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await pg.wait_for(lambda c: sum(1 for x in c if x[0] == "receive") >= 2)
        node.stop()
        await node.wait_stopped()
    assert node.stats.internal_errors == 2
    assert stream.getvalue().count("Internal error") == 1  # rate limited


def test_ringid_file_created_and_loaded(tmp_path):
    assert ringid.load_ring_seq(str(tmp_path), 7) == 0
    path = ringid.ringid_path(str(tmp_path), 7)
    assert open(path, "rb").read() == b"\0" * 8
    ringid.write_ring_seq(path, 0x1234)
    assert ringid.load_ring_seq(str(tmp_path), 7) == 0x1234
    open(path, "wb").write(b"\1\2")  # short file: recreated with 0, like the real daemon
    assert ringid.load_ring_seq(str(tmp_path), 7) == 0


async def test_ringid_writer_latest_value_wins(tmp_path):
    path = ringid.ringid_path(str(tmp_path), 3)
    w = ringid.RingIdWriter(path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.run)
        for seq in range(1, 50):
            w.store(seq)
        await w.flush()
        nursery.cancel_scope.cancel()
    assert struct.unpack("=Q", open(path, "rb").read()) == (49,)
    assert 1 <= w.writes <= 49


async def test_unknown_action_is_logged_not_fatal(tmp_path):
    pg = FakePg()
    node, stream, _ = make_node(tmp_path, pg)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        node._execute(["not an action", PersistRingSeq(3)], node.now_ms())
        node.stop()
        await node.wait_stopped()
    assert "Unknown Totem action 'not an action' ignored" in stream.getvalue()
    assert struct.unpack("=Q", open(ringid.ringid_path(str(tmp_path), 1), "rb").read()) == (3,)


def test_multicast_send_failures_feed_srp_counter(tmp_path):
    """udp's multicast result reaches Srp.note_mcast_send (corosync's
    continuous_sendmsg_failures); udpu (None: per-member unicasts) is never counted."""
    from corosync.exec.totem.srp import Srp

    srp = Srp(1, derive(1, token=300, join=50))
    node, _, _ = make_node(tmp_path, srp)
    results = iter([False, False, True, None, False, None])
    node.transport = types.SimpleNamespace(multicast=lambda data: next(results))
    seen = []
    for _ in range(6):
        node._execute([Multicast(b"x")], 0)
        seen.append(srp.stats.continuous_sendmsg_failures)
    assert seen == [1, 2, 0, 0, 1, 1]
