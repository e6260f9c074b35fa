"""The sans-IO client core alone: error paths (give up vs reconnect per §12.6), the ring-id
rule, per-algorithm disconnect votes, the vote timer, configuration, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corosync.exec.qdevice import core as C
from corosync.exec.qdevice.config import QdeviceConfigError, config_from_keys
from corosync.exec.qnetd import protocol as P

RING = P.RingId(1, 9)
BASE_KEYS = {"totem.cluster_name": "lab", "quorum.device.model": "net",
             "quorum.device.net.host": "qnetd", "nodelist.node.0.nodeid": 1,
             "nodelist.node.1.nodeid": 2}


def make(algorithm=P.Algorithm.FFSPLIT, **kw) -> C.QdeviceNet:
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="q", tls=0, algorithm=algorithm,
                          timeout_ms=10000, config_nodes=(P.NodeInfo(1), P.NodeInfo(2)), **kw)
    q = C.QdeviceNet(cfg, rng=lambda n: 0)
    q.on_vq_nodelist(RING, (1, 2), 0.0)
    q.on_vq_quorum(True, ((1, 1), (2, 1)), 0.0)
    return q


def connect(q: C.QdeviceNet, now: float = 0.0) -> list:
    q.on_connected(now)
    q.on_message(P.build_preinit_reply(q.msg_seq, 0, 1), now)
    q.on_message(P.build_init_reply(0, q.msg_seq, True, 32768, 32768), now)
    assert q.state == C.State.CONNECTED
    return q.take_actions()


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions if not isinstance(a, C.Log)]


def test_connected_then_ack_polls_periodically():
    q = make()
    connect(q)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, RING), 0.1)
    acts = q.take_actions()
    assert kinds(acts) == ["Poll", "Send"] and acts[-1].data == P.build_vote_info_reply(1)
    polls = [a for a in acts if isinstance(a, C.Poll)]
    assert polls == [C.Poll(True, RING)]
    q.advance(5.1)  # cast vote interval = timeout / 2
    assert [a for a in q.take_actions() if isinstance(a, C.Poll)] == [C.Poll(True, RING)]
    q.advance(8.0)  # heartbeat = timeout * 0.8
    assert [P.decode(a.data).type for a in q.take_actions() if isinstance(a, C.Send)] == \
        [P.MsgType.ECHO_REQUEST]


def test_vote_for_another_ring_is_no_change():
    q = make()
    connect(q)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, P.RingId(1, 8)), 0.1)
    assert kinds(q.take_actions()) == ["Send"]  # reply, no poll
    assert q.vote == P.Vote.WAIT_FOR_REPLY and q.stats["ignored_votes"] == 1


@pytest.mark.parametrize("algorithm,expect_exit", [(P.Algorithm.FFSPLIT, True),
                                                   (P.Algorithm.LMS, False)])
def test_server_error_gives_up_except_lms(algorithm, expect_exit):
    q = make(algorithm)
    connect(q)
    q.on_message(P.build_server_error(3, P.Err.INIT_REQUIRED), 1.0)
    acts = kinds(q.take_actions())
    assert ("Exit" in acts) is expect_exit
    assert q.state == (C.State.EXITED if expect_exit else C.State.WAITING_RECONNECT)


@pytest.mark.parametrize("code,retry", [(15, True), (16, True), (17, True), (7, False),
                                        (13, False)])
def test_init_reply_errors(code, retry):
    q = make()
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(1, 0, 1), 0.0)
    q.on_message(P.build_init_reply(code, 2, True, 32768, 32768), 0.0)
    assert q.state == (C.State.WAITING_RECONNECT if retry else C.State.EXITED)
    assert "Close" in kinds(q.take_actions())


def test_seq_and_size_checks_give_up():
    q = make()
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(7, 0, 1), 0.0)  # not the seq we sent
    assert q.state == C.State.EXITED
    q = make()
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(1, 0, 1), 0.0)
    q.on_message(P.build_init_reply(0, 2, True, 1024, 32768), 0.0)  # server accepts too little
    assert q.state == C.State.EXITED


def test_unexpected_message_gives_up():
    q = make()
    q.on_connected(0.0)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, RING), 0.0)  # before INIT
    assert q.state == C.State.EXITED


def test_echo_missing_and_wrong_seq():
    q = make()
    connect(q)
    q.advance(8.0)  # echo 1 sent
    q.advance(16.0)  # no reply -> disconnect, retry
    assert q.state == C.State.WAITING_RECONNECT
    assert q.disconnect_reason == C.Reason.ECHO_REPLY_NOT_RECEIVED
    q = make()
    connect(q)
    q.advance(8.0)
    q.on_message(P.build_echo_reply(P.build_echo_request(5)), 8.1)
    assert q.state == C.State.EXITED


@pytest.mark.parametrize("algorithm,wfa,expect", [
    (P.Algorithm.FFSPLIT, False, False),
    (P.Algorithm.LMS, False, False),
    (P.Algorithm.LMS, True, True),       # quorate + wait_for_all: lms keeps the vote
    (P.Algorithm.TWO_NODE_LMS, False, True),
])
def test_vote_after_connection_loss(algorithm, wfa, expect):
    q = make(algorithm, wait_for_all=wfa)
    connect(q)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, RING), 0.1)
    q.take_actions()
    q.on_closed(1.0)
    polls = [a for a in q.take_actions() if isinstance(a, C.Poll)]
    if expect:
        assert q.vote == P.Vote.ACK and not polls  # nothing changes
    else:
        assert polls == [C.Poll(False, RING)]


def test_membership_change_while_disconnected_decays_ack():
    q = make(P.Algorithm.TWO_NODE_LMS)
    connect(q)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, RING), 0.1)
    q.on_closed(1.0)
    q.take_actions()
    q.on_vq_nodelist(P.RingId(1, 10), (1,), 2.0)
    assert [a for a in q.take_actions() if isinstance(a, C.Poll)] == \
        [C.Poll(False, P.RingId(1, 10))]


def test_connect_timeout_and_reconnect_keeps_seq():
    q = make()
    assert kinds(q.take_actions()) == ["Connect"]
    q.on_connected(0.0)
    q.advance(8.0)  # connect timeout = heartbeat (8000 ms) without INIT_REPLY
    assert q.disconnect_reason == C.Reason.CONNECT_TIMEOUT
    q.advance(8.0)
    assert "Connect" in kinds(q.take_actions())
    q.on_connected(8.0)
    preinit = P.decode(q.take_actions()[-1].data)
    assert preinit.type == P.MsgType.PREINIT and preinit.seq == 1  # counter never reset


def test_config_from_keys_and_errors():
    cfg = config_from_keys({**BASE_KEYS, "quorum.device.net.tie_breaker": "7",
                            "quorum.device.timeout": "20000", "totem.config_version": "3"}, 2)
    assert cfg.tie_breaker == P.TieBreaker(P.TieBreakerMode.NODE_ID, 7)
    assert (cfg.heartbeat_ms, cfg.cast_vote_interval_ms, cfg.connect_ms) == (16000, 10000, 16000)
    assert cfg.config_version == 3 and cfg.tls == 1
    # cmap key order: position "10" sorts before "2"
    keys = {**BASE_KEYS, "nodelist.node.10.nodeid": 11, "nodelist.node.2.nodeid": 3}
    assert [n.node_id for n in config_from_keys(keys, 1).config_nodes] == [1, 2, 11, 3]
    # no nodeid: generated from an IPv4 ring0_addr like corosync does
    keys = {**BASE_KEYS, "nodelist.node.2.ring0_addr": "10.0.0.3"}
    assert config_from_keys(keys, 1).config_nodes[-1].node_id == 0x0A000003
    keys["totem.clear_node_high_bit"] = "yes"
    keys["nodelist.node.2.ring0_addr"] = "200.0.0.1"
    assert config_from_keys(keys, 1).config_nodes[-1].node_id == 0x48000001
    for bad, key in [({"nodelist.node.2.ring0_addr": "fd00::1"}, "nodelist.node.2.nodeid"),
                     ({"nodelist.node.3.name": "x"}, "nodelist.node.3.nodeid"),({"quorum.device.net.host": ""}, "quorum.device.net.host"),
                     ({"quorum.device.net.algorithm": "nope"}, "quorum.device.net.algorithm"),
                     ({"quorum.device.votes": "2"}, "quorum.device.votes"),
                     ({"quorum.device.net.tls": "maybe"}, "quorum.device.net.tls"),
                     ({"quorum.device.model": "disk"}, "quorum.device.model"),
                     ({"quorum.device.net.port": "70000"}, "quorum.device.net.port")]:
        with pytest.raises(QdeviceConfigError) as exc:
            config_from_keys({**BASE_KEYS, **bad}, 1)
        assert exc.value.key == key


server_types = st.sampled_from(sorted(P.SERVER_SIDE_TYPES) + [3, 18, 0xFFFF])
tlv = st.tuples(st.integers(0, 30), st.binary(max_size=16)).map(
    lambda t: t[0].to_bytes(2, "big") + len(t[1]).to_bytes(2, "big") + t[1])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(min_size=6, max_size=40),
    st.tuples(server_types, st.lists(tlv, max_size=5)).map(
        lambda t: t[0].to_bytes(2, "big") + sum(len(x) for x in t[1]).to_bytes(4, "big")
        + b"".join(t[1]))), max_size=6))
def test_hostile_server_input_never_crashes(messages):
    q = make()
    connect(q)
    for i, m in enumerate(messages):
        q.on_message(m, 1.0 + i)
        q.take_actions()
        q.advance(1.0 + i)
    assert q.state in (C.State.CONNECTED, C.State.WAITING_RECONNECT, C.State.CONNECTING,
                       C.State.EXITED)


def test_heuristics_sync_membership_flow():
    """Heuristics on membership change: the vote timer pauses, the list waits for the result
    and carries it; a stale result is ignored; connect heuristics gate the initial lists."""
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="q", tls=0,
                          config_nodes=(P.NodeInfo(1), P.NodeInfo(2)),
                          heuristics_mode=C.HEURISTICS_ON, heuristics_execs=(("a", "true"),))
    q = C.QdeviceNet(cfg, rng=lambda n: 0)
    q.on_vq_nodelist(RING, (1, 2), 0.0)
    runs = [a for a in q.take_actions() if isinstance(a, C.RunHeuristics)]
    assert [r.timeout_ms for r in runs] == [15000]  # sync_timeout / 2
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(1, 0, 1), 0.0)
    q.take_actions()
    q.on_message(P.build_init_reply(0, 2, True, 32768, 32768), 0.0)
    acts = q.take_actions()
    connect_run = [a for a in acts if isinstance(a, C.RunHeuristics)][0]
    assert not [a for a in acts if isinstance(a, C.Send)]  # lists wait for the result
    q.on_heuristics_result(runs[0].seq, True, 0.1)  # membership run finishes first
    assert not q.vote_timer_paused and q.state == C.State.WAITING_INIT_REPLY
    q.on_heuristics_result(connect_run.seq, False, 0.2)
    sent = [P.decode(a.data) for a in q.take_actions() if isinstance(a, C.Send)]
    memb = [m for m in sent if m.node_list_type == P.NodeListType.MEMBERSHIP][0]
    assert memb.heuristics == P.Heuristics.FAIL and q.state == C.State.CONNECTED
    q.on_heuristics_result(connect_run.seq, True, 0.3)  # duplicate/stale: ignored
    assert not q.take_actions()
    # membership change while connected: paused until the result, then the list
    q.on_vq_nodelist(P.RingId(1, 10), (1,), 1.0)
    run = [a for a in q.take_actions() if isinstance(a, C.RunHeuristics)][0]
    assert q.vote_timer_paused
    q.on_heuristics_result(run.seq, True, 1.1)
    sent = [P.decode(a.data) for a in q.take_actions() if isinstance(a, C.Send)]
    assert sent[0].node_list_type == P.NodeListType.MEMBERSHIP
    assert sent[0].heuristics == P.Heuristics.PASS and not q.vote_timer_paused
    # the regular run (interval = timeout * 3) reports a change with HEURISTICS_CHANGE
    q.advance(1.1 + 30.0)  # rescheduled after the membership run
    reg = [a for a in q.take_actions() if isinstance(a, C.RunHeuristics)]
    assert reg
    q.on_heuristics_result(reg[-1].seq, False, 31.2)
    sent = [P.decode(a.data) for a in q.take_actions() if isinstance(a, C.Send)]
    assert [(m.type, m.heuristics) for m in sent if m.type == P.MsgType.HEURISTICS_CHANGE] == \
        [(P.MsgType.HEURISTICS_CHANGE, P.Heuristics.FAIL)]


def test_heuristics_need_server_support():
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="q", tls=0,
                          heuristics_mode=C.HEURISTICS_SYNC, heuristics_execs=(("a", "true"),))
    q = C.QdeviceNet(cfg, rng=lambda n: 0)
    q.on_vq_nodelist(RING, (1,), 0.0)
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(1, 0, 1), 0.0)
    reply = P.Builder(P.MsgType.INIT_REPLY).u16(P.Opt.REPLY_ERROR_CODE, 0)
    reply.u16_array(P.Opt.SUPPORTED_MESSAGES, P.ALL_MESSAGE_TYPES)
    reply.u16_array(P.Opt.SUPPORTED_OPTIONS, range(22)).seq(2)
    reply.u32(P.Opt.SERVER_MAXIMUM_REQUEST_SIZE, 32768).u32(P.Opt.SERVER_MAXIMUM_REPLY_SIZE, 32768)
    reply.u16_array(P.Opt.SUPPORTED_DECISION_ALGORITHMS, P.ALL_ALGORITHMS)
    q.on_message(reply.finish(), 0.0)
    assert q.state == C.State.EXITED


def test_heuristics_config():
    keys = {**BASE_KEYS, "quorum.device.heuristics.mode": "sync",
            "quorum.device.heuristics.exec_ping": "ping -c1 gw",
            "quorum.device.heuristics.exec_disk": "test -d /srv",
            "quorum.device.heuristics.interval": "5000"}
    cfg = config_from_keys(keys, 1)
    assert cfg.heuristics_mode == C.HEURISTICS_SYNC
    assert cfg.heuristics_execs == (("disk", "test -d /srv"), ("ping", "ping -c1 gw"))
    assert (cfg.heur_interval_ms, cfg.heur_timeout_ms, cfg.heur_sync_timeout_ms) == \
        (5000, 5000, 15000)
    with pytest.raises(QdeviceConfigError):
        config_from_keys({**BASE_KEYS, "quorum.device.heuristics.mode": "maybe"}, 1)
