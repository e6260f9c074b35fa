"""The real Totem stack (TotemPg over Srp) in the simulator: clean rings, large messages,
determinism, hypothesis-driven fault schedules and seeded soaks.

Gaps the simulator found (see docs/corosync-sim.md), pinned below by seed:

1. totempg: a message whose fragments straddled a configuration change was delivered by
   the nodes that saw its first fragments and thrown away by nodes that joined in
   between (corosync's receiver quirk) — message-level virtual synchrony broken;
2. totempg: a sender that crashed mid-message and rejoined within one membership change
   left stale reassembly state behind (integrity);
3. srp: at 16 nodes, post-heal convergence exceeded the derived bound (up to 9.4 s
   against 5.8 s): nodes adopted failed lists only from members of their own old ring.

Gaps 1 and 2 are fixed in exec/totem/pg.py (TotemPg rewrites its held packets at a
change through ``Srp.take_held``/``Srp.hold``, and purges leavers again at the REGULAR
change); gap 3 in exec/totem/srp.py (failed lists adopted from any sender that does not
count us failed; docs/totem.md).  Their seeds below are plain regression tests, and the
storm soak holds every run to the derived bound.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("corosync.exec.totem.srp")
pytest.importorskip("corosync.exec.totem.pg")

from corosync.exec.sim import (Crash, Delay, Duplicate, Leave, LoadParams, Loss, OneWay,  # noqa: E402
                               Partition, Pause, Reorder, SimConfig, run)
from corosync.exec.sim.cluster import convergence_bound  # noqa: E402
from corosync.exec.totem.config import derive  # noqa: E402
# Gap 3 (fixed, srp): the storm soak used to need twice the derived bound (seed 3 took
# 9.4 s after the heal against 5.8 s).  Since failed lists are adopted from any sender
# that does not count us failed, the 20 soak seeds converge in 0.37-2.03 s.
SOAK_BOUND = convergence_bound(derive(16, token=400, token_coefficient=25))


def assert_everyone_got_everything_after_formation(r, nodes):
    """Messages sent once the full ring stood reach every node (those sent while the
    ring was still forming are, legitimately, only delivered by the partial ring)."""
    formed = max(i.regular_confchgs()[-1].time for i in r.trace.incarnations)
    late = {t for t, s in r.trace.sent.items() if s.time > formed}
    assert len(late) > 10
    for inc in r.trace.incarnations:
        got = {e.tag for e in inc.events if getattr(e, "tag", None) is not None}
        assert late <= got, f"n{inc.node} lacks {sorted(late - got)[:5]}"


def assert_clean(r, seed, allow=frozenset()):
    bad = [v for v in r.violations if v.kind not in allow]
    assert not bad, f"seed {seed}:\n" + "\n".join(map(str, bad[:10]))


@pytest.mark.parametrize("nodes", [1, 2, 3, 5, 16])
def test_fault_free_ring_delivers_everything_everywhere(nodes):
    r = run(SimConfig(nodes=nodes, seed=nodes, load=LoadParams(interval=60)))
    assert_clean(r, nodes)
    assert len(r.trace.sent) > 50
    assert r.messages_delivered == len(r.trace.sent)
    assert_everyone_got_everything_after_formation(r, nodes)
    # The SAFE and srp-level checkers were fed, not vacuously happy.
    assert sum(len(i.safe) for i in r.trace.incarnations) > 10
    assert all(i.has for i in r.trace.incarnations)
    assert all(any(e[0] == "d" for e in i.srp_events) for i in r.trace.incarnations)


def test_one_mib_messages_cross_a_three_node_ring():
    load = LoadParams(interval=300, large_ratio=0.5, medium_ratio=0.2, large_max=1 << 20)
    r = run(SimConfig(nodes=3, seed=21, load=load))
    assert_clean(r, 21)
    big = [s for s in r.trace.sent.values() if s.size > 512 * 1024]
    assert big, "the load produced no message above 512 KiB"
    assert_everyone_got_everything_after_formation(r, 3)


def test_same_seed_gives_the_identical_trace_twice():
    cfg = SimConfig(nodes=5, seed=77, faults=25, record_log=True)
    a, b = run(cfg), run(cfg)
    assert len(a.log) > 5000
    assert a.log == b.log
    assert a.trace == b.trace
    assert [str(v) for v in a.violations] == [str(v) for v in b.violations]
    c = run(SimConfig(nodes=5, seed=78, faults=25, record_log=True))
    assert c.log != a.log


NODES = 4


@st.composite
def fault(draw):
    at = draw(st.integers(1500, 6000))
    dur = draw(st.integers(20, 2500))
    node = draw(st.integers(1, NODES))
    other = draw(st.integers(1, NODES).filter(lambda n: n != node))
    kind = draw(st.sampled_from(["loss", "dup", "reorder", "delay", "part", "oneway",
                                 "pause", "crash", "leave"]))
    if kind == "loss":
        return Loss(at, dur, draw(st.floats(0.05, 0.7)), draw(st.sampled_from([None, node])))
    if kind == "dup":
        return Duplicate(at, dur, draw(st.floats(0.05, 0.5)))
    if kind == "reorder":
        return Reorder(at, dur, draw(st.integers(2, 60)))
    if kind == "delay":
        return Delay(at, dur, node, draw(st.integers(5, 300)))
    if kind == "part":
        side = draw(st.sets(st.integers(1, NODES), min_size=1, max_size=NODES - 1))
        return Partition(at, dur, (tuple(sorted(side)),))
    if kind == "oneway":
        return OneWay(at, dur, node, other)
    return {"pause": Pause, "crash": Crash, "leave": Leave}[kind](at, dur, node)


@settings(max_examples=12, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(fault(), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_hypothesis_fault_schedules(schedule, seed):
    r = run(SimConfig(nodes=NODES, seed=seed, schedule=schedule, duration=5000,
                      load=LoadParams(interval=80)))
    assert_clean(r, seed)


SOAK_RUNS = 20
SOAK_FAULTS = 500  # 20 × 500 = 10,000 faults on 16 nodes


@pytest.mark.parametrize("chunk", range(4))
def test_soak_sixteen_nodes(chunk):
    for seed in range(chunk * SOAK_RUNS // 4, (chunk + 1) * SOAK_RUNS // 4):
        r = run(SimConfig(nodes=16, seed=seed, faults=SOAK_FAULTS, duration=50_000,
                          load=LoadParams(interval=300), bound=SOAK_BOUND))
        assert_clean(r, seed)
        assert len(r.trace.sent) > 1000


def test_fragments_straddling_a_change_with_joiners_are_delivered_by_all_or_none():
    # these seeds used to show nodes that joined mid-message missing a message the old
    # members delivered (virtual-synchrony, safe-no-loss)
    for seed in (0, 2, 3, 9):
        r = run(SimConfig(nodes=5, seed=seed, faults=20))
        assert_clean(r, seed)


def test_sixteen_nodes_seed_that_used_to_converge_late():
    r = run(SimConfig(nodes=16, seed=11, faults=SOAK_FAULTS, duration=50_000,
                      load=LoadParams(interval=200)))
    assert_clean(r, 11)


def test_sender_restarting_mid_message_leaves_no_stale_reassembly():
    r = run(SimConfig(nodes=5, seed=7, faults=20))
    assert_clean(r, 7)
