"""The sync engine alone: phases, counted barriers, dummies, abort, stale messages,
retry after a full queue — driven message by message in a chosen total order."""

from __future__ import annotations

from attrs import define, field

from corosync.exec.sync import (COMPLETED_LOG, SyncEngine, SyncState, decode_sync,
                                encode_barrier, encode_service_build)
from corosync.exec.totem.wire import RingId


@define
class FakeSvc:
    name: str
    calls: list = field(factory=list)
    busy: int = 0  # sync_process answers "not done" this many times

    def sync_init(self, trans, members, ring):
        self.calls.append(("init", trans, members))

    def sync_process(self):
        if self.busy:
            self.busy -= 1
            self.calls.append(("process-busy",))
            return False
        self.calls.append(("process",))
        return True

    def sync_activate(self):
        self.calls.append(("activate",))

    def sync_abort(self):
        self.calls.append(("abort",))


class Wire:
    def __init__(self, fail: int = 0) -> None:
        self.out: list[bytes] = []
        self.fail = fail

    def send(self, msg: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("queue full")
        self.out.append(msg)


def engine(svcs, wire):
    done = []
    e = SyncEngine(svcs, wire.send, lambda: done.append(True))
    return e, done


R = RingId(1, 8)


def test_two_nodes_full_sequence_with_dummies():
    a, b = FakeSvc("cmap"), FakeSvc("cpg")
    wire = Wire()
    e, done = engine({0: a, 2: b}, wire)
    e.save_transitional((2,))
    e.start((1, 2), R)
    assert decode_sync(wire.out[0]) == (1, R, [0, 2])
    assert a.calls[0] == ("init", (2,), (1, 2))
    e.deliver(2, wire.out.pop(0))
    assert e.state is SyncState.SERVICELIST_BUILD
    e.deliver(1, encode_service_build(R, [0, 2, 3, 5]))  # the other node runs 3 and 5 too
    assert [x.service_id for x in e.service_list] == [0, 2, 3, 5]
    assert e.stats.dummies == 2
    # phase 0: our barrier went out after cmap's process
    assert a.calls[-1] == ("process",) and wire.out == [encode_barrier(R)]
    e.deliver(2, wire.out.pop())
    assert a.calls[-1] == ("process",)  # not activated before every member's barrier
    e.deliver(1, encode_barrier(R))
    assert a.calls[-1] == ("activate",) and b.calls[-1] == ("process",)
    for _ in range(3):  # phases 2, 3, 5
        assert wire.out == [encode_barrier(R)], "exactly one barrier per phase"
        e.deliver(1, encode_barrier(R))
        e.deliver(2, wire.out.pop())
    assert done == [True] and e.state is SyncState.IDLE
    assert e.trace == [("build", None), ("barrier", 0), ("activate", 0), ("barrier", 2),
                       ("activate", 2), ("barrier", 3), ("activate", 3), ("barrier", 5),
                       ("activate", 5), ("completed", None)]


def test_transitional_members_filtered():
    a = FakeSvc("cmap")
    e, _ = engine({0: a}, Wire())
    e.save_transitional((1, 3))
    e.start((1, 2), R)
    assert a.calls[0] == ("init", (1,), (1, 2))


def test_abort_discards_stale_barriers_and_builds():
    a = FakeSvc("cmap")
    wire = Wire()
    e, done = engine({0: a}, wire)
    e.start((1, 2), R)
    e.deliver(1, wire.out.pop(0))
    e.deliver(2, encode_service_build(R, [0]))
    assert wire.out == [encode_barrier(R)]
    e.abort()  # a new configuration change
    assert a.calls[-1] == ("abort",)
    e.deliver(2, encode_barrier(R))  # old ring: discarded
    assert e.stats.stale_rx == 1 and not done
    r2 = RingId(1, 12)
    wire.out.clear()
    e.start((1,), r2)
    e.deliver(1, encode_service_build(R, [0]))  # build of the old ring
    assert e.stats.stale_rx == 2 and e.state is SyncState.SERVICELIST_BUILD
    e.deliver(1, wire.out.pop(0))
    e.deliver(1, wire.out.pop(0))
    assert done == [True]


def test_queue_full_retries_process_and_barrier():
    a = FakeSvc("cmap", busy=2)
    wire = Wire()
    e, done = engine({0: a}, wire)
    e.start((1,), R)
    e.deliver(1, wire.out.pop(0))
    assert a.calls[-1] == ("process-busy",) and not wire.out
    e.pump()
    e.pump()
    assert a.calls[-1] == ("process",) and wire.out == [encode_barrier(R)]
    e.deliver(1, wire.out.pop())
    assert done == [True]
    # the service build itself refused once: sent on the next pump, never twice
    wire2 = Wire(fail=1)
    e2, done2 = engine({0: FakeSvc("cmap")}, wire2)
    e2.start((1,), R)
    assert wire2.out == []
    e2.pump()
    assert len(wire2.out) == 1
    e2.pump()
    assert len(wire2.out) == 1


def test_no_local_services_and_others_list():
    wire = Wire()
    e, done = engine({}, wire)
    e.start((1, 2), R)
    assert decode_sync(wire.out[0]) == (1, R, [])
    e.deliver(1, wire.out.pop(0))
    e.deliver(2, encode_service_build(R, [3]))
    e.deliver(2, encode_barrier(R))
    e.deliver(1, wire.out.pop(0))
    assert done == [True] and e.stats.dummies == 1


def test_malformed_sync_messages_counted():
    e, done = engine({}, Wire())
    for bad in (b"", b"\0" * 10, encode_service_build(R, [0])[:36],
                encode_service_build(R, [0])[:32] + b"\xff\xff\xff\x7f" + bytes(4),
                b"\x07" + bytes(31)):
        e.deliver(1, bad)
    assert e.stats.malformed == 5 and not done
    assert COMPLETED_LOG.startswith("Completed service synchronization")


def test_service_bug_does_not_wedge_sync():
    class Broken(FakeSvc):
        def sync_activate(self):
            raise KeyError("bug")

        def sync_init(self, trans, members, ring):
            raise RuntimeError("bug")

    wire = Wire()
    logs = []
    e = SyncEngine({0: Broken("x"), 2: FakeSvc("y")}, wire.send, lambda: logs.append("done"),
                   lambda level, text: logs.append(text))
    e.start((1,), R)
    while wire.out:
        e.deliver(1, wire.out.pop(0))
    assert logs[-1] == "done"
    assert any("sync_activate of x failed" in line for line in logs)
