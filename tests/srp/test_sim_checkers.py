"""The checkers must catch what they claim to catch: feed them corrupted traces."""

import copy

import pytest
from attrs import evolve

from corosync.exec.sim.checkers import Violation, check_all
from corosync.exec.sim.cluster import SimConfig, run
from corosync.exec.sim.fakes import fake_queue_full, sequencer_factory
from corosync.exec.sim.message import Tag
from corosync.exec.sim.network import LinkParams
from corosync.exec.sim.trace import ConfRec, DelivRec, SafeRec
from corosync.exec.totem.events import ConfChgKind
from corosync.exec.totem.wire import RingId


def _fake_run(nodes=3, ordered=True, seed=7):
    cfg = SimConfig(nodes=nodes, seed=seed, stack=sequencer_factory(nodes, ordered=ordered),
                    queue_full=fake_queue_full, link=LinkParams(delay=2, jitter=6))
    return run(cfg)


@pytest.fixture(scope="module")
def clean():
    r = _fake_run()
    assert r.violations == [], "\n".join(map(str, r.violations))
    assert r.messages_delivered > 100
    return r.trace


def kinds(vs: list[Violation]) -> set[str]:
    return {v.kind for v in vs}


def _delivs(inc):
    return [i for i, e in enumerate(inc.events) if isinstance(e, DelivRec)]


def test_clean_sequencer_run_has_no_violation(clean):
    assert check_all(clean) == []


def test_unordered_fake_is_caught_from_a_real_run():
    r = _fake_run(ordered=False)
    assert "agreed-order" in kinds(r.violations)


def test_reordered_delivery_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[1]
    i, j = _delivs(inc)[10], _delivs(inc)[11]
    inc.events[i], inc.events[j] = inc.events[j], inc.events[i]
    assert "agreed-order" in kinds(check_all(t))


def test_missing_message_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[2]
    victim = next(e for e in inc.events if isinstance(e, DelivRec) and e.sender != inc.node)
    inc.events.remove(victim)
    found = kinds(check_all(t))
    assert "virtual-synchrony" in found


def test_own_message_never_delivered_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[0]
    own = [e for e in inc.events if isinstance(e, DelivRec) and e.sender == inc.node]
    inc.events.remove(own[-1])
    assert "self-delivery" in kinds(check_all(t))


def test_duplicate_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[0]
    k = _delivs(inc)[5]
    inc.events.insert(k + 3, inc.events[k])
    found = kinds(check_all(t))
    assert "duplicate" in found


def test_invented_and_corrupted_messages_are_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[0]
    k = _delivs(inc)[3]
    e = inc.events[k]
    inc.events[k] = evolve(e, intact=False)
    inc.events.append(evolve(e, tag=Tag(99, 1)))
    inc.events.append(evolve(e, tag=None))
    vs = [v for v in check_all(t) if v.kind == "integrity"]
    assert len(vs) == 3


def test_wrong_guarantee_and_groups_are_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[0]
    a, b = _delivs(inc)[3], _delivs(inc)[4]
    inc.events[a] = evolve(inc.events[a], guarantee=1 - inc.events[a].guarantee)
    inc.events[b] = evolve(inc.events[b], groups=(b"nope",))
    assert len([v for v in check_all(t) if v.kind == "integrity"]) == 2


def test_fifo_violation_is_caught(clean):
    t = copy.deepcopy(clean)
    # Swap two messages of one sender in *every* incarnation: order stays agreed
    # everywhere, but the sender's FIFO order is broken.
    for inc in t.incarnations:
        own = [i for i, e in enumerate(inc.events)
               if isinstance(e, DelivRec) and e.sender == 2]
        i, j = own[4], own[5]
        inc.events[i], inc.events[j] = inc.events[j], inc.events[i]
    found = kinds(check_all(t))
    assert found == {"fifo"}


def test_delivery_outside_configuration_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[0]
    first = _delivs(inc)[0]
    inc.events.insert(0, inc.events.pop(first))
    assert "in-config" in kinds(check_all(t))


def test_config_disagreement_and_membership_are_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[1]
    k = next(i for i, e in enumerate(inc.events)
             if isinstance(e, ConfRec) and e.kind == ConfChgKind.REGULAR)
    inc.events[k] = evolve(inc.events[k], members=(1, 2))
    found = kinds(check_all(t))
    assert {"config-agreement", "membership"} <= found


def test_late_membership_convergence_is_caught(clean):
    t = copy.deepcopy(clean)
    t.bound = 0
    t.heal_time = -1
    assert "convergence-time" in kinds(check_all(t))


def test_missing_probe_is_caught(clean):
    t = copy.deepcopy(clean)
    t.probes.append(Tag(1, 10**9))
    assert "progress" in kinds(check_all(t))


def test_premature_safe_delivery_is_caught(clean):
    t = copy.deepcopy(clean)
    ring = RingId(1, 4)
    a, b = t.incarnations[0], t.incarnations[1]
    a.has[(1, 4, 7)] = 10
    b.has[(1, 4, 7)] = 50
    a.safe.append(SafeRec(0, 20, ring, 7, (1, 2)))  # n2 only got it at event 50
    vs = [v for v in check_all(t) if v.kind == "safe"]
    assert len(vs) == 1 and vs[0].nodes == (1, 2)
    a.safe[-1] = SafeRec(0, 60, ring, 7, (1, 2))  # after both held it: fine
    assert not [v for v in check_all(t) if v.kind == "safe"]


def test_safe_message_lost_by_a_survivor_is_caught(clean):
    t = copy.deepcopy(clean)
    inc = t.incarnations[2]
    safe = [e for e in inc.events if isinstance(e, DelivRec) and e.guarantee == 1
            and e.sender != inc.node]
    inc.events.remove(safe[0])
    assert "safe-no-loss" in kinds(check_all(t))


def test_runtime_errors_are_violations(clean):
    t = copy.deepcopy(clean)
    t.runtime_errors.append("boom")
    assert "runtime" in kinds(check_all(t))
