"""Decision algorithms, table-driven, including the traces Debian's qnetd produced for the
probe clients (reference/qdevice/qnetd/probes/algorithm-cases.txt)."""

import pytest

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, Heuristics as H, RingId, TieBreaker, Vote

from qnetd_harness import Harness, config, membership, quorum

A, N = Vote.ACK, Vote.NACK


def votes(h: Harness, cid: int) -> list[tuple]:
    """(type, vote, ring) of everything the client received since the last call."""
    return [(P.MsgType(m.type).name, m.vote, str(m.ring_id)) for m in h.take(cid)]


def ack_vote_infos(h: Harness, cids, reply=True) -> dict:
    """Collect VOTE_INFO votes per client and answer them like a stock qdevice."""
    out = {}
    for c in cids:
        for m in h.take(c):
            if m.type == P.MsgType.VOTE_INFO:
                out[c] = m.vote
                if reply:
                    h.send(c, P.build_vote_info_reply(m.seq))
    return out


def ffsplit_cluster(n: int, kap: int = 1, tb=TieBreaker()) -> tuple[Harness, list[int]]:
    h = Harness()
    ring = RingId(1, 10)
    cs = [h.client(i + 1, ring=ring, kap=kap, tb=tb) for i in range(n)]
    ids = list(range(1, n + 1))
    for c in cs:
        h.send(c, config(3, *ids))
    for c in cs:
        h.send(c, membership(4, ring, *ids))
    settle(h, cs)
    return h, cs


def settle(h, cs) -> dict:
    """Let VOTE_INFO/VOTE_INFO_REPLY rounds run until quiet; return the last vote per client."""
    final = {}
    for _ in range(10):
        got = ack_vote_infos(h, cs)
        if not got:
            break
        final.update(got)
    return final


# ----------------------------------------------------------------------------- ffsplit

def test_ffsplit_2node_start_like_capture():
    h = Harness()
    c1 = h.client(1, ring=RingId(1, 9), kap=1)
    h.send(c1, config(4, 1, 2))
    h.send(c1, membership(5, RingId(1, 9), 1, 2))
    h.send(c1, quorum(6, 2, 1))
    assert votes(h, c1) == [("NODE_LIST_REPLY", Vote.ASK_LATER, "1.9"),
                            ("VOTE_INFO", A, "1.9"),   # queued before the reply it caused
                            ("NODE_LIST_REPLY", Vote.NO_CHANGE, "1.9"),
                            ("NODE_LIST_REPLY", Vote.NO_CHANGE, "1.9")]


@pytest.mark.parametrize("kap,tb,winner", [
    (1, TieBreaker(1), 1), (0, TieBreaker(1), 1), (1, TieBreaker(2), 2),
    (0, TieBreaker(3, 2), 2), (0, TieBreaker(3, 1), 1),
])
def test_ffsplit_50_50_partition_tie_breakers(kap, tb, winner):
    h, (c1, c2) = ffsplit_cluster(2, kap=kap, tb=tb)
    h.send(c1, membership(5, RingId(1, 13), 1))
    assert votes(h, c1) == [("NODE_LIST_REPLY", Vote.WAIT_FOR_REPLY, "1.d")]  # n2 still on 1.a
    h.send(c2, membership(5, RingId(2, 13), 2))
    loser, win = (c2, c1) if winner == 1 else (c1, c2)
    got = [m for m in h.take(loser)]
    assert [(m.type, m.vote) for m in got][0] == (P.MsgType.VOTE_INFO, N)  # NACK first
    assert h.take(win) == [] or winner == 2  # no ACK before the NACK is acknowledged
    h.send(loser, P.build_vote_info_reply(got[0].seq))
    assert ack_vote_infos(h, [win]) == {win: A}


@pytest.mark.parametrize("kap,winner", [(1, 2), (0, 1)])
def test_ffsplit_kap_keeps_previous_partition_against_tie_breaker(kap, winner):
    """{2} became the quorate partition through heuristics; when the scores equalise again,
    KAP keeps {2}; without KAP the tie-breaker (lowest) moves the vote to {1}."""
    h, (c1, c2) = ffsplit_cluster(2, kap=kap)
    h.send(c1, membership(5, RingId(1, 13), 1))
    h.send(c2, membership(5, RingId(2, 13), 2))
    settle(h, [c1, c2])
    assert h.server.clusters[b"lab"].ffsplit_prev_quorate == [1]
    h.send(c2, P.build_heuristics_change(6, H.PASS))
    assert settle(h, [c1, c2]) == {c1: N, c2: A}
    assert h.server.clusters[b"lab"].ffsplit_prev_quorate == [2]
    h.send(c1, P.build_heuristics_change(6, H.PASS))
    final = settle(h, [c1, c2])
    assert h.server.clusters[b"lab"].ffsplit_prev_quorate == [winner]
    assert final[c1 if winner == 1 else c2] == A
    assert final[c2 if winner == 1 else c1] == N


def test_ffsplit_kill_other_node_keeps_vote():
    h, (c1, c2) = ffsplit_cluster(2)
    h.close(c2)  # disconnect hook: c2 still counted while leaving
    assert ack_vote_infos(h, [c1]) == {c1: A}
    h.send(c1, membership(5, RingId(1, 14), 1))
    assert votes(h, c1) == [("VOTE_INFO", A, "1.e"), ("NODE_LIST_REPLY", Vote.NO_CHANGE, "1.e")]


def test_ffsplit_odd_cluster_without_majority_nacks_everybody():
    h, cs = ffsplit_cluster(3)
    for i, c in enumerate(cs):
        h.send(c, membership(5, RingId(i + 1, 20), i + 1))
    final = settle(h, cs)
    assert final == {cs[0]: N, cs[1]: N, cs[2]: N}


def test_ffsplit_4node_2_2_split_heuristics_like_debian():
    """algorithm-cases.txt: {3,4} with heuristics Pass wins; after 3,4 turn Fail, node 4
    disconnecting still counts as a failing active node, so {1,2} wins."""
    h, cs = ffsplit_cluster(4, kap=0)
    c1, c2, c3, c4 = cs
    h.send(c1, membership(5, RingId(1, 0x14), 1, 2))
    h.send(c2, membership(5, RingId(1, 0x14), 1, 2))
    h.send(c3, membership(5, RingId(3, 0x14), 3, 4, heuristics=H.PASS))
    h.send(c4, membership(5, RingId(3, 0x14), 3, 4, heuristics=H.PASS))
    assert settle(h, cs) == {c1: N, c2: N, c3: A, c4: A}
    h.send(c4, P.build_heuristics_change(6, H.FAIL))
    h.send(c3, P.build_heuristics_change(6, H.FAIL))
    settle(h, cs)
    h.close(c4)
    assert settle(h, [c1, c2, c3]) == {c1: A, c2: A, c3: N}


def test_ffsplit_race_two_quick_decisions_leave_everybody_nacked():
    """Upstream race reproduced on purpose (spec 7.2): replies to an older NACK still count."""
    h, cs = ffsplit_cluster(4, kap=0)
    c1, c2, c3, c4 = cs
    for c in (c1, c2):
        h.send(c, membership(5, RingId(1, 0x14), 1, 2))
    for c in (c3, c4):
        h.send(c, membership(5, RingId(3, 0x14), 3, 4))
    settle(h, cs)  # tie-breaker lowest: {1,2} ACK
    h.send(c3, P.build_heuristics_change(6, H.PASS))  # {3,4} wins: NACK to 1 and 2
    h.send(c1, P.build_heuristics_change(6, H.PASS))  # {1,2} wins again: NACK to 3 and 4
    h.send(c2, P.build_heuristics_change(6, H.PASS))
    final = settle(h, cs)
    assert set(final.values()) == {N}


def test_ffsplit_leaving_client_with_empty_config_lists_does_not_crash():
    h = Harness()
    c1 = h.client(1)
    c2 = h.client(2)
    h.close(c1)  # stock 3.0.3 segfaults here
    h.send(c2, P.build_echo_request(1))
    assert votes(h, c2)[-1][0] == "ECHO_REPLY"


def test_ffsplit_unstable_until_config_lists_agree():
    h = Harness()
    c1, c2 = h.client(1), h.client(2)
    h.send(c1, config(3, 1, 2))
    h.send(c1, membership(4, RingId(1, 1), 1, 2))
    assert votes(h, c1)[-1] == ("NODE_LIST_REPLY", Vote.WAIT_FOR_REPLY, "1.1")  # c2 sent no config
    h.send(c2, config(3, 1, 2))
    assert votes(h, c2) == [("NODE_LIST_REPLY", Vote.ASK_LATER, "1.1")]
    h.send(c2, membership(4, RingId(1, 1), 1, 2))
    assert settle(h, [c1, c2]) == {c1: A, c2: A}
    h.send(c1, config(5, 1, 2, 3, changed=True))  # changed config, now unequal: wait
    assert votes(h, c1) == [("NODE_LIST_REPLY", Vote.WAIT_FOR_REPLY, "1.1")]


# ----------------------------------------------------------------------------- 2nodelms

@pytest.mark.parametrize("tb,h1,h2,expect", [
    (TieBreaker(1), 0, 0, (A, N)),
    (TieBreaker(2), 0, 0, (N, A)),
    (TieBreaker(3, 2), 0, 0, (N, A)),
    (TieBreaker(1), H.FAIL, H.PASS, (N, A)),
    (TieBreaker(1), H.PASS, 0, (A, N)),
])
def test_2nodelms_split(tb, h1, h2, expect):
    h = Harness()
    c1 = h.client(1, algorithm=Algorithm.TWO_NODE_LMS, tb=tb)
    c2 = h.client(2, algorithm=Algorithm.TWO_NODE_LMS, tb=tb)
    for c in (c1, c2):
        h.send(c, config(3, 1, 2))
        h.send(c, membership(4, RingId(1, 0x20), 1, 2))
        assert [v for _, v, _ in votes(h, c)] == [Vote.NO_CHANGE, A]
    # the second to report sees the first's (new) stored heuristics; report both first
    h.send(c1, membership(5, RingId(1, 0x24), 1, heuristics=h1))
    h.send(c2, membership(5, RingId(2, 0x24), 2, heuristics=h2))
    h.take(c1)
    h.take(c2)
    h.send(c1, membership(6, RingId(1, 0x24), 1, heuristics=h1))
    h.send(c2, membership(6, RingId(2, 0x24), 2, heuristics=h2))
    assert (votes(h, c1)[0][1], votes(h, c2)[0][1]) == expect
    h.send(c1, P.build_ask_for_vote(7))
    assert votes(h, c1)[0][1] == expect[0]


def test_2nodelms_survivor_and_newcomer():
    h = Harness()
    c1 = h.client(1, algorithm=Algorithm.TWO_NODE_LMS)
    c2 = h.client(2, algorithm=Algorithm.TWO_NODE_LMS)
    h.send(c1, membership(4, RingId(1, 0x24), 1))
    h.send(c2, membership(4, RingId(2, 0x24), 2))
    assert votes(h, c2)[0][1] == N
    h.close(c1)
    h.send(c2, membership(5, RingId(2, 0x28), 2))
    assert votes(h, c2) == [("NODE_LIST_REPLY", A, "2.28")]
    c3 = h.client(1, algorithm=Algorithm.TWO_NODE_LMS, ring=RingId(1, 0x30))
    h.send(c3, membership(4, RingId(1, 0x30), 1))
    assert votes(h, c3)[0][1] == N  # newcomer must not steal the vote


# ----------------------------------------------------------------------------- lms

def lms_cluster(n, tb=TieBreaker(), ring=RingId(1, 0x30)):
    h = Harness()
    cs = [h.client(i + 1, algorithm=Algorithm.LMS, tb=tb, ring=ring) for i in range(n)]
    ids = list(range(1, n + 1))
    for c in cs:
        h.send(c, config(3, *ids))
        h.send(c, membership(4, ring, *ids))
        h.send(c, quorum(5, *ids))
    return h, cs


def test_lms_start_all_ack():
    h, cs = lms_cluster(3)
    for c in cs:
        assert [v for _, v, _ in votes(h, c)] == [Vote.NO_CHANGE, A, A]


def test_lms_partition_waits_then_timer_decides():
    h, (c1, c2, c3) = lms_cluster(3)
    for c in (c1, c2, c3):
        h.take(c)
    r12, r3 = RingId(1, 0x34), RingId(3, 0x34)
    h.send(c1, membership(6, r12, 1, 2))
    h.send(c2, membership(6, r12, 1, 2))
    h.send(c3, membership(6, r3, 3))
    for c in (c1, c2, c3):
        assert votes(h, c)[0][1] == Vote.WAIT_FOR_REPLY
    h.tick(1.99)
    assert all(h.take(c) == [] for c in (c1, c2, c3))
    h.tick(0.02)  # 8000 ms / 4
    assert votes(h, c1) == [("VOTE_INFO", A, "1.34")]
    assert votes(h, c2) == [("VOTE_INFO", A, "1.34")]
    assert votes(h, c3) == [("VOTE_INFO", N, "3.34")]
    h.send(c3, quorum(7, 3, quorate=0))
    assert votes(h, c3)[0][1] == N
    h.tick(10)
    assert all(h.take(c) == [] for c in (c1, c2, c3))  # timers stopped after a decision


def test_lms_last_man_standing_and_newcomer():
    h, (c1, c2, c3) = lms_cluster(3)
    h.close(c3)
    h.close(c2)
    h.take(c1)
    h.send(c1, membership(6, RingId(1, 0x40), 1))
    assert votes(h, c1) == [("NODE_LIST_REPLY", A, "1.40")]
    h2, (d1, d2) = lms_cluster(2)
    d3 = h2.client(3, algorithm=Algorithm.LMS, ring=RingId(3, 0x30))
    h2.send(d3, config(3, 1, 2, 3))
    h2.send(d3, membership(4, RingId(3, 0x30), 3))
    assert [v for _, v, _ in votes(h2, d3)] == [Vote.NO_CHANGE, N]
    h2.send(d3, P.build_ask_for_vote(5))
    assert votes(h2, d3) == [("ASK_FOR_VOTE_REPLY", N, "3.30")]


@pytest.mark.parametrize("tb,expect", [
    (TieBreaker(1), (A, N)), (TieBreaker(2), (N, A)),
    (TieBreaker(3, 1), (A, N)), (TieBreaker(3, 2), (N, A)),
])
def test_lms_even_split_tie_breaker(tb, expect):
    h, (c1, c2) = lms_cluster(2, tb=tb)
    for c in (c1, c2):
        h.take(c)
    h.send(c1, membership(6, RingId(1, 0x34), 1))
    h.send(c2, membership(6, RingId(2, 0x34), 2))
    h.take(c1)
    h.take(c2)
    h.send(c1, quorum(7, 1))
    h.send(c2, quorum(7, 2))
    assert (votes(h, c1)[0][1], votes(h, c2)[0][1]) == expect


def test_lms_heuristics_score_beats_size():
    h, cs = lms_cluster(3)
    c1, c2, c3 = cs
    for c in cs:
        h.take(c)
    h.send(c1, membership(6, RingId(1, 0x34), 1, 2))
    h.send(c2, membership(6, RingId(1, 0x34), 1, 2))
    h.send(c3, membership(6, RingId(3, 0x34), 3, heuristics=H.PASS))
    for c in cs:
        h.take(c)
    h.tick(2.01)
    # score {1,2} = 2, {3} = 2 (1 + Pass): equal -> larger group {1,2} wins
    assert ack_vote_infos(h, cs, reply=False) == {c1: A, c2: A, c3: N}


# ----------------------------------------------------------------------------- test

def test_test_algorithm_acks_everything():
    h = Harness()
    c1 = h.client(1, algorithm=Algorithm.TEST)
    h.send(c1, config(3, 1, 2))
    h.send(c1, membership(4, RingId(1, 2), 1))
    h.send(c1, quorum(5, 1, quorate=0))
    h.send(c1, P.build_heuristics_change(6, H.FAIL))
    assert [v for _, v, _ in votes(h, c1)] == [Vote.NO_CHANGE, A, Vote.NO_CHANGE, Vote.NO_CHANGE]
