"""The simulator's own machinery: network, timers, pauses, crashes, determinism, CLI.

These use small fake stacks, so they test the simulator independently of Totem."""

import random

from corosync.exec.sim.cluster import SimConfig, Simulation, convergence_bound, run
from corosync.exec.sim.fakes import fake_queue_full, sequencer_factory
from corosync.exec.sim.faults import (Crash, Delay, Duplicate, Leave, Loss, OneWay, Partition,
                                      Pause, Reorder, random_schedule)
from corosync.exec.sim.message import Tag, make_message, parse_message
from corosync.exec.sim.network import LinkParams, Network
from corosync.exec.totem.config import derive
from corosync.exec.totem.events import (CancelTimer, Multicast, PersistRingSeq, StartTimer,
                                        TimerKind)


# ------------------------------------------------------------------ messages
def test_message_tags_round_trip_and_detect_corruption():
    for size in (0, 20, 21, 300, 70000):
        data = make_message(Tag(3, 17), size)
        assert len(data) == max(size, 20)
        assert parse_message(data) == (Tag(3, 17), True)
    data = bytearray(make_message(Tag(3, 17), 5000))
    data[4000] ^= 1
    assert parse_message(bytes(data)) == (Tag(3, 17), False)
    assert parse_message(bytes(data[:-1]))[1] is False
    assert parse_message(b"nope" * 10) == (None, False)
    assert make_message(Tag(1, 1), 100) != make_message(Tag(1, 2), 100)


# ------------------------------------------------------------------ network
def _net(**kw):
    return Network([1, 2, 3], LinkParams(**kw), random.Random(1))


def test_self_delivery_is_instant_and_never_lost():
    net = _net(loss=1.0)
    net.set_faults([Partition(0, 10, ((1,), (2, 3)))])
    assert net.route(1, 1) == (0,)
    assert net.route(1, 2) == ()


def test_partition_and_oneway():
    net = _net(delay=3, jitter=0)
    net.set_faults([Partition(0, 10, ((1, 2),))])  # 3 is alone
    assert net.route(1, 2) == (3,) and net.route(2, 1) == (3,)
    assert net.route(1, 3) == () and net.route(3, 2) == ()
    net.set_faults([OneWay(0, 10, 1, 2)])
    assert net.route(1, 2) == () and net.route(2, 1) == (3,)
    assert not net.reachable(1, 2) and net.reachable(2, 1)
    net.set_faults([])
    assert net.route(1, 2) == (3,)
    assert net.stats.blocked == 3


def test_loss_duplication_delay_and_reorder():
    net = _net(delay=2, jitter=0)
    net.set_faults([Loss(0, 1, 1.0, src=1, dst=2)])
    assert net.route(1, 2) == () and net.route(2, 1) == (2,) and net.route(1, 3) == (2,)
    net.set_faults([Duplicate(0, 1, 1.0)])
    assert net.route(1, 2) == (2, 2)
    net.set_faults([Delay(0, 1, 3, 40)])
    assert net.route(1, 3) == (42,) and net.route(1, 2) == (2,)
    net.set_faults([Reorder(0, 1, 30)])
    delays = {net.route(1, 2)[0] for _ in range(200)}
    assert min(delays) >= 2 and max(delays) <= 32 and len(delays) > 10


def test_network_is_deterministic_per_seed():
    def draws(seed):
        net = Network([1, 2], LinkParams(jitter=5, loss=0.3, dup=0.3), random.Random(seed))
        return [net.route(1, 2) for _ in range(100)]
    assert draws(4) == draws(4)
    assert draws(4) != draws(5)


def test_random_schedule_is_seeded_and_within_window():
    a = random_schedule(random.Random(9), [1, 2, 3, 4], 200, 1000, 5000, 400)
    b = random_schedule(random.Random(9), [1, 2, 3, 4], 200, 1000, 5000, 400)
    assert a == b and len(a) == 200
    assert all(1000 <= f.at < 6000 and f.duration > 0 for f in a)
    assert [f.at for f in a] == sorted(f.at for f in a)
    kinds = {type(f) for f in a}
    assert {Loss, Partition, OneWay, Pause, Crash, Leave} <= kinds
    for f in a:
        if isinstance(f, Partition):
            assert sorted(n for g in f.groups for n in g) == [1, 2, 3, 4]
    single = random_schedule(random.Random(9), [1], 50, 0, 1000, 400)
    assert not any(isinstance(f, (Partition, OneWay)) for f in single)


# ------------------------------------------------------------------ driver
class Probe:
    """Records what the driver calls, and plays scripted actions."""

    log: list = []

    def __init__(self, nodeid, config, ring_seq, probe):
        self.nodeid = nodeid
        self.ring_seq = ring_seq
        Probe.log.append(("boot", nodeid, ring_seq))

    def start(self, now):
        Probe.log.append(("start", self.nodeid, now))
        if self.nodeid != 1:
            return [PersistRingSeq(40 + self.nodeid)]
        return [StartTimer(TimerKind.JOIN, 100), StartTimer(TimerKind.CONSENSUS, 150),
                StartTimer(TimerKind.TOKEN_LOSS, 120), CancelTimer(TimerKind.TOKEN_LOSS)]

    def timer_expired(self, kind, now):
        Probe.log.append(("timer", self.nodeid, kind, now))
        if kind is TimerKind.JOIN and now < 1000:
            return [StartTimer(TimerKind.JOIN, 100), StartTimer(TimerKind.CONSENSUS, 150),
                    Multicast(b"hello")]
        return []

    def receive(self, data, now):
        Probe.log.append(("recv", self.nodeid, data, now))
        return []

    def mcast(self, groups, message, guarantee, now):
        raise fake_queue_full()[0]()

    def trans_ack(self, now):
        return []

    def leave(self, now):
        Probe.log.append(("leave", self.nodeid, now))
        return [Multicast(b"bye")]


def _probe_run(schedule, nodes=2):
    Probe.log = []
    cfg = SimConfig(nodes=nodes, seed=3, schedule=schedule, duration=3000,
                    stack=Probe, queue_full=fake_queue_full,
                    link=LinkParams(delay=5, jitter=0), bound=100, drain=100)
    sim = Simulation(cfg)
    sim.run()
    return sim, Probe.log


def test_timers_rearm_cancel_and_self_multicast():
    sim, log = _probe_run([])
    start = next(e[2] for e in log if e[0] == "start" and e[1] == 1)
    joins = [e[3] - start for e in log if e[0] == "timer" and e[2] is TimerKind.JOIN]
    assert joins[:3] == [100, 200, 300]
    # CONSENSUS is re-armed by every JOIN expiry, so it fires only after the last one.
    cons = [e[3] - start for e in log if e[0] == "timer" and e[2] is TimerKind.CONSENSUS]
    assert len(cons) == 1 and cons[0] == joins[-2] + 150  # last JOIN did not re-arm
    assert not [e for e in log if e[0] == "timer" and e[2] is TimerKind.TOKEN_LOSS]
    got = [(e[1], e[3] - start) for e in log if e[0] == "recv" and e[2] == b"hello"]
    # own copy at once, the peer's after the 5 ms link delay
    assert got[:4] == [(1, 100), (2, 105), (1, 200), (2, 205)]


def test_pause_delivers_and_fires_late_in_order():
    sim, log = _probe_run([Pause(150, 400, 1)])
    start = next(e[2] for e in log if e[0] == "start" and e[1] == 1)
    assert start < 150
    fired = [e[3] for e in log if e[0] == "timer" and e[1] == 1]
    # Nothing fires during the pause; the JOIN due meanwhile fires late at 550.
    assert not [t for t in fired if 150 < t < 550]
    assert 550 in fired
    assert sim.trace.incarnations[0].alive_at_end


def test_crash_restart_keeps_persisted_ring_seq_and_kills_timers():
    sim, log = _probe_run([Crash(300, 200, 2), Crash(400, 100, 1)])
    boots = [e for e in log if e[0] == "boot"]
    assert ("boot", 2, 0) in boots and ("boot", 2, 42) in boots
    fired = [e[3] for e in log if e[0] == "timer" and e[1] == 1]
    assert not [t for t in fired if 400 <= t < 500]
    incs = [(i.node, i.number, i.end_reason) for i in sim.trace.incarnations]
    assert (2, 1, "crash") in incs and (2, 2, None) in incs and (1, 1, "crash") in incs


def test_leave_sends_then_stops():
    sim, log = _probe_run([Leave(300, 200, 1)])
    assert [e for e in log if e[0] == "leave"] == [("leave", 1, 300)]
    assert ("recv", 2, b"bye", 305) in log
    assert ("boot", 1, 0) in [e for e in log if e[0] == "boot"][1:]


def test_queue_full_is_retried_not_lost():
    cfg = SimConfig(nodes=3, seed=5, stack=sequencer_factory(3, queue_max=3),
                    queue_full=fake_queue_full, link=LinkParams(delay=20, jitter=0))
    r = run(cfg)
    assert r.violations == [], r.violations
    assert len(r.trace.sent) > 50


def test_same_seed_same_trace_and_different_seed_differs():
    def once(seed):
        cfg = SimConfig(nodes=4, seed=seed, stack=sequencer_factory(4),
                        queue_full=fake_queue_full, link=LinkParams(delay=2, jitter=7),
                        record_log=True)
        return run(cfg)
    a, b, c = once(11), once(11), once(12)
    assert a.log == b.log and len(a.log) > 1000
    assert a.trace == b.trace
    assert a.log != c.log


def test_convergence_bound_derivation():
    cfg = derive(3, token=400, token_coefficient=25)
    assert convergence_bound(cfg) == (3 * cfg.consensus + 3 * cfg.token + cfg.merge + cfg.hold
                                      + 10 * cfg.join)


def test_shrinker_keeps_only_the_guilty_fault():
    # The sequencer fake has no recovery: a crashed node restarts waiting for stamp 1
    # forever, which the checkers report.  Delays and reordering are harmless to it.
    from corosync.exec.sim.shrink import minimal_trace, shrink

    harmless = [Delay(1600 + 100 * i, 300, 1 + i % 3, 20) for i in range(6)]
    harmless += [Reorder(2500 + 50 * i, 200, 15) for i in range(4)]
    guilty = Crash(2222, 300, 3)
    cfg = SimConfig(nodes=3, seed=1, schedule=harmless + [guilty], duration=2500,
                    stack=sequencer_factory(3), queue_full=fake_queue_full)
    failed = run(cfg)
    assert failed.violations
    clean = run(SimConfig(nodes=3, seed=1, schedule=harmless, duration=2500,
                          stack=sequencer_factory(3), queue_full=fake_queue_full))
    assert clean.violations == []
    small, result = shrink(cfg, failed)
    assert small.schedule == [guilty]
    assert result.violations
    replayed, lines = minimal_trace(small)
    assert replayed.violations and any("FAULT" in line and "crash n3" in line for line in lines)


def test_schedule_json_round_trip():
    from corosync.exec.sim.faults import from_json, to_json
    import json

    sched = random_schedule(random.Random(2), [1, 2, 3, 4, 5], 300, 0, 9000, 400)
    assert from_json(json.loads(json.dumps(to_json(sched)))) == sched
