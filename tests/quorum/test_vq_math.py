"""Table tests of the pure votequorum arithmetic (services/vq_math.py).

A tiny model of the ordered protocol drives several VoteQuorum objects: on every
membership change each side runs sync_init, then every member's NODEINFO (built at the
start of the votequorum sync phase, as real nodes do) is delivered to every member of
its side in the same order, then sync_activate."""

from __future__ import annotations

import pytest

from corosync.services.vq_math import (Atb, ConfigError, NodeFlag, NodeState, Reconfig,
                                       VoteQuorum, VqConfig, parse_atb_nodes, read_config)


class Model:
    def __init__(self, n: int, **cfg) -> None:
        base = dict(expected_votes=n) | cfg
        self.q = {i: VoteQuorum(i, VqConfig(**base)) for i in range(1, n + 1)}
        self.alive = set(self.q)

    def ring(self, *groups: tuple[int, ...]) -> None:
        for group in groups:
            for i in group:
                self.q[i].sync_init(group)
            msgs = []
            for i in group:
                us = self.q[i].us
                msgs.append((i, i, us.votes, us.expected_votes, int(us.flags)))
                qd = self.q[i].qdevice
                msgs.append((i, 0, qd.votes, 0, 0))
            for m in msgs:
                for i in group:
                    assert self.q[i].on_nodeinfo(*m)
            for i in group:
                self.q[i].sync_activate()

    def quorate(self) -> dict[int, bool]:
        return {i: q.quorate for i, q in self.q.items()}


def test_quorum_formula_three_nodes():
    m = Model(3)
    m.ring((1, 2, 3))
    assert all(m.quorate().values())
    q = m.q[1]
    assert (q.quorum, q.totals()) == (2, (3, 3))
    assert q.us.flags == NodeFlag.QUORATE


@pytest.mark.parametrize("groups,expected", [
    (((1, 2, 3), (4, 5)), {1: True, 2: True, 3: True, 4: False, 5: False}),
    (((1, 2), (3, 4), (5,)), {i: False for i in range(1, 6)}),
    (((1,), (2, 3, 4, 5)), {1: False, 2: True, 3: True, 4: True, 5: True}),
])
def test_five_node_partitions(groups, expected):
    m = Model(5)
    m.ring((1, 2, 3, 4, 5))
    assert all(m.quorate().values())
    m.ring(*groups)
    assert m.quorate() == expected
    for group in groups:
        for i in group:
            assert m.q[i].quorum == 3  # never decreases on a plain partition


def test_flapping_partition_heals():
    m = Model(5)
    m.ring((1, 2, 3, 4, 5))
    for _ in range(3):
        m.ring((1, 2), (3, 4, 5))
        assert m.quorate() == {1: False, 2: False, 3: True, 4: True, 5: True}
        m.ring((1, 2, 3, 4, 5))
        assert all(m.quorate().values())
    assert m.q[1].nodes[3].state == NodeState.MEMBER


def test_inquorate_side_learns_expected_from_quorate_node():
    m = Model(3)
    m.ring((1, 2, 3))
    m.q[3].us.expected_votes = 1  # stale local idea
    m.ring((1,), (2, 3))
    m.ring((1, 2, 3))
    assert m.q[3].us.expected_votes == 3


def test_two_node_wait_for_all_startup():
    m = Model(2, two_node=True, wait_for_all=True, wfa_autoset=False)
    m.ring((1,), (2,))
    assert m.quorate() == {1: False, 2: False}
    assert m.q[1].us.flags & NodeFlag.WFASTATUS
    assert m.q[1].us.flags & NodeFlag.FIRST
    m.ring((1, 2))
    assert m.quorate() == {1: True, 2: True}
    assert m.q[1].quorum == 1
    assert m.q[1].us.flags == NodeFlag.QUORATE
    m.ring((1,), (2,))  # fence race: both keep quorum, WFA is only for start-up
    assert m.quorate() == {1: True, 2: True}


def test_two_node_without_wfa_is_quorate_alone():
    m = Model(2, two_node=True)
    m.ring((1,))
    assert m.q[1].quorate and m.q[1].quorum == 1


def test_wait_for_all_cancel():
    m = Model(3, wait_for_all=True, wfa_autoset=False)
    m.ring((1, 2))
    assert m.quorate() == {1: False, 2: False, 3: False}
    assert any("Waiting for all cluster members. Current votes: 2 expected_votes: 3" in line
               for line in m.q[1].effects.logs)
    for i in (1, 2):
        m.q[i].on_reconfigure(Reconfig.CANCEL_WFA, 1, 0)
    assert m.q[1].quorate and m.q[2].quorate


def test_last_man_standing_downscale_step_by_step():
    m = Model(5, last_man_standing=True)
    m.ring((1, 2, 3, 4, 5))
    alive = [1, 2, 3, 4, 5]
    # lose one node at a time; each time the window expires we downscale
    for lost in (5, 4, 3):
        alive.remove(lost)
        group = tuple(alive)
        starts = {i: m.q[i].sync_init(group) for i in group}
        assert all(starts.values()), "LMS window must start when nodes left"
        m.q = m.q  # nodeinfo round + activate
        for i in group:
            m.q[i].sync_in_progress = True
        msgs = [(i, i, m.q[i].us.votes, m.q[i].us.expected_votes, int(m.q[i].us.flags))
                for i in group]
        for msg in msgs:
            for i in group:
                m.q[i].on_nodeinfo(*msg)
        for i in group:
            m.q[i].sync_activate()
            assert m.q[i].quorate
            m.q[i].lms_expired()
        assert {m.q[i].quorum for i in group} == {len(group) // 2 + 1}
        assert {m.q[i].us.expected_votes for i in group} == {len(group)}
    # two nodes left (expected 2, quorum 2): losing one more loses quorum without ATB
    m.ring((1,), (2,))
    assert not m.q[1].quorate and not m.q[2].quorate


def test_lms_timer_not_started_without_loss():
    m = Model(3, last_man_standing=True)
    assert m.q[1].sync_init((1, 2, 3)) is False


def test_atb_lowest_even_split():
    m = Model(4, atb=Atb.LOWEST)
    m.ring((1, 2, 3, 4))
    m.ring((1, 2), (3, 4))
    assert m.quorate() == {1: True, 2: True, 3: False, 4: False}


def test_atb_highest_even_split():
    m = Model(4, atb=Atb.HIGHEST)
    m.ring((1, 2, 3, 4))
    m.ring((1, 2), (3, 4))
    assert m.quorate() == {1: False, 2: False, 3: True, 4: True}


def test_atb_list_prefers_first_listed_node():
    m = Model(4, atb=Atb.LIST, atb_nodes=(3, 1))
    m.ring((1, 2, 3, 4))
    m.ring((1, 2), (3, 4))
    assert m.quorate() == {1: False, 2: False, 3: True, 4: True}


def test_atb_does_not_apply_to_uneven_split():
    m = Model(4, atb=Atb.LOWEST)
    m.ring((1, 2, 3, 4))
    m.ring((1,), (2, 3, 4))
    assert m.quorate() == {1: False, 2: True, 3: True, 4: True}


def test_allow_downscale_leaving_node_lowers_quorum():
    m = Model(3, allow_downscale=True, ev_tracking=True)
    m.ring((1, 2, 3))
    q = m.q[1]
    assert q.quorum == 2
    # node 3 shuts down cleanly: NODEINFO with LEAVING
    m.q[3].leaving()
    us3 = m.q[3].us
    for i in (1, 2):
        m.q[i].on_nodeinfo(3, 3, us3.votes, us3.expected_votes, int(us3.flags))
    assert q.nodes[3].state == NodeState.LEAVING
    m.ring((1, 2))
    assert q.quorate


def test_setexpected_rules():
    m = Model(3)
    m.ring((1, 2, 3))
    q = m.q[1]
    assert q.check_setexpected(2) is False  # below total votes 3
    assert q.check_setexpected(3) is True
    assert q.check_setexpected(5) is True   # quorum 3 <= total 3
    assert q.check_setexpected(7) is False  # would make the cluster inquorate
    for i in (1, 2, 3):
        m.q[i].on_reconfigure(Reconfig.EXPECTED_VOTES, 1, 5)
    assert q.us.expected_votes == 5 and q.quorum == 3 and q.quorate
    assert q.effects.expected_changed
    for i in (1, 2, 3):
        m.q[i].on_reconfigure(Reconfig.EXPECTED_VOTES, 1, 3)
    assert q.quorum == 2


def test_setexpected_lowers_quorum_after_partition():
    m = Model(5)
    m.ring((1, 2, 3, 4, 5))
    m.ring((1, 2), (3, 4, 5))
    q = m.q[1]
    assert not q.quorate
    assert q.check_setexpected(2) is True
    for i in (1, 2):
        m.q[i].on_reconfigure(Reconfig.EXPECTED_VOTES, 1, 2)
    assert q.quorate and q.quorum == 2


def test_setvotes_rules():
    m = Model(3)
    m.ring((1, 2, 3))
    q = m.q[1]
    assert q.check_setvotes(9, 1) is None
    assert q.check_setvotes(2, 2) is True
    assert q.check_setvotes(2, 10) is True  # quorum 7 within [6, 12]
    for i in (1, 2, 3):
        m.q[i].on_reconfigure(Reconfig.NODE_VOTES, 2, 2)
    assert q.nodes[2].votes == 2
    assert q.totals() == (4, 4) and q.quorum == 3


def test_setvotes_refuses_losing_quorum():
    m = Model(2)
    m.ring((1, 2))
    assert m.q[1].check_setvotes(2, 0) is False  # total 1 < quorum 2
    assert m.q[1].nodes[2].votes == 1  # the trial value was not kept


def test_qdevice_nodeinfo_from_unknown_sender_is_refused():
    q = VoteQuorum(1, VqConfig(expected_votes=3))
    assert q.on_nodeinfo(7, 0, 1, 0, 0) is False
    assert 7 not in q.nodes


def test_qdevice_votes_count_when_cast():
    m = Model(2, expected_votes=3, qdevice_votes=1, have_qdevice=True)
    for q in m.q.values():
        q.us.flags |= NodeFlag.QDEVICE_REGISTERED | NodeFlag.QDEVICE_ALIVE | NodeFlag.QDEVICE_CAST_VOTE
    m.ring((1, 2))
    assert m.q[1].totals() == (3, 3)
    m.ring((1,), (2,))
    assert m.q[1].quorate and m.q[2].quorate  # each side's own qdevice vote (ffsplit picks)
    m.q[2].us.flags &= ~NodeFlag.QDEVICE_CAST_VOTE
    m.ring((1,), (2,))
    assert m.q[1].quorate and not m.q[2].quorate


@pytest.mark.parametrize("text,expected", [
    ("lowest", (Atb.LOWEST, ())), ("highest", (Atb.HIGHEST, ())),
    ("3 1 2", (Atb.LIST, (3, 1, 2))), ("bogus", (Atb.NONE, ())), ("2 x 3", (Atb.LIST, (2,))),
])
def test_parse_atb(text, expected):
    assert parse_atb_nodes(text) == expected


def _cfg(keys: dict, nodes=3, pos=0, votes=None):
    nodelist = [({"quorum_votes": votes[i]} if votes else {}) for i in range(nodes)]
    return read_config(keys.get, nodelist, pos)


def test_read_config_nodelist_and_expected():
    c = _cfg({})
    assert (c.votes, c.expected_votes, c.wait_for_all) == (1, 3, False)
    c = _cfg({}, votes=[2, 1, 1], pos=0)
    assert (c.votes, c.expected_votes) == (2, 4)
    c = _cfg({"quorum.expected_votes": 7})
    assert c.expected_votes == 7
    c = _cfg({"quorum.two_node": 1}, nodes=2)
    assert c.two_node and c.wait_for_all and c.wfa_autoset
    c = _cfg({"quorum.two_node": 1, "quorum.wait_for_all": 0}, nodes=2)
    assert c.two_node and not c.wait_for_all
    c = _cfg({"quorum.device.model": "net"}, nodes=2)
    assert (c.qdevice_votes, c.expected_votes, c.have_qdevice) == (1, 3, True)
    assert _cfg({}).qdevice_can_operate and not _cfg({}).have_qdevice
    c = _cfg({"quorum.allow_downscale": 1})
    assert c.ev_tracking


@pytest.mark.parametrize("keys,nodes,msg", [
    ({}, 0, "nodelist or quorum.expected_votes must be configured"),
    ({"quorum.two_node": 1, "quorum.device.model": "net"}, 2, "two_node and quorum device"),
    ({"quorum.auto_tie_breaker": 1, "quorum.last_man_standing": 1}, 3,
     "auto_tie_breaker & last_man_standing"),
    ({"quorum.device.model": "net", "quorum.last_man_standing": 1}, 2, "last_man_standing"),
    ({"quorum.device.model": "net", "quorum.expected_votes": 3}, 2, "device.votes must be specified"),
])
def test_read_config_errors(keys, nodes, msg):
    with pytest.raises(ConfigError, match=msg):
        _cfg(keys, nodes=nodes, pos=0 if nodes else None)


def test_read_config_atb_odd_without_wfa_is_disabled():
    c = _cfg({"quorum.auto_tie_breaker": 1})
    assert c.atb == Atb.NONE and c.warnings
    c = _cfg({"quorum.auto_tie_breaker": 1, "quorum.wait_for_all": 1})
    assert c.atb == Atb.LOWEST


@pytest.mark.parametrize("me, arrivals, listed", [
    # Debian's lms 3-node capture: node 1 learnt of 2 then 3, node 2 of 1 then 3
    (1, (2, 3), (2, 3, 1)),
    (2, (1, 3), (1, 3, 2)),
    (3, (1, 2), (1, 2, 3)),
    # a new node below every listed one goes first; above every one, before the last
    (3, (2, 1, 4), (1, 2, 4, 3)),
    (1, (5, 3, 2), (2, 3, 5, 1)),
])
def test_quorum_notification_lists_nodes_in_corosyncs_order(me, arrivals, listed):
    """corosync's ordered insert puts a node above every listed one before the last entry;
    the QUORUM notification (and so a qdevice's list sent to qnetd) follows that order."""
    q = VoteQuorum(me, VqConfig(expected_votes=5))
    for nodeid in arrivals:
        assert q.on_nodeinfo(nodeid, nodeid, 1, 5, 0)
    assert tuple(n.nodeid for n in q.listed_nodes()) == listed
    assert tuple(n.nodeid for n in q.sorted_nodes()) == tuple(sorted(listed))
