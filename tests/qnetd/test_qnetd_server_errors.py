"""Server message handling against the probe table of Debian's qnetd
(reference/qdevice/qnetd/probes/error-cases*.txt)."""

import struct

import pytest

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, MsgType, RingId, TieBreaker, Vote

from qnetd_harness import Harness, config, membership


def _summary(m: P.Message) -> tuple:
    return (MsgType(m.type).name, m.seq, m.reply_error_code)


def raw(mtype: int, payload: bytes) -> bytes:
    return struct.pack(">HI", mtype, len(payload)) + payload


SEQ5 = struct.pack(">HHI", 0, 4, 5)


def test_preinit_init_gating_and_errors():
    h = Harness()
    c = h.connect()
    h.send(c, P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 2, 6)
    h.send(c, raw(99, SEQ5))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", None, 4)
    h.send(c, raw(99, b""))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", None, 0)  # stock quirk
    h.send(c, raw(8, SEQ5 + b"\0" * 40000))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", None, 5)
    h.send(c, raw(8, b"\0" * (32768 - 6)))  # exactly the limit: read, then undecodable
    assert _summary(h.take(c)[0])[2] == 9
    h.send(c, raw(8, b"\0" * (32769 - 6)))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", None, 5)
    h.send(c, P.build_echo_request(1))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 1, 11)
    h.send(c, P.build_starttls(1))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 1, 6)
    h.send(c, raw(0, SEQ5))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 7)
    h.send(c, P.build_preinit(1, b"lab"))
    r = h.take(c)[0]
    assert (r.type, r.seq, r.tls_supported, r.tls_client_cert_required) == (1, 1, 0, 1)
    h.send(c, P.build_preinit_reply(4, 0, 0))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 4, 8)
    h.send(c, config(5, 1, 2))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 11)
    for hb, code in ((500, 13), (120001, 13)):
        h.send(c, P.build_init(2, 1, 1, hb, TieBreaker(), RingId(1, 1)))
        assert _summary(h.take(c)[0]) == ("INIT_REPLY", 2, code)
    h.send(c, P.build_init(2, 1, 7, 8000, TieBreaker(), RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 2, 12)
    # Debian's quirk: a missing heartbeat is range-checked as 0 and overwrites code 7
    h.send(c, P.Builder(P.MsgType.INIT).seq(3).u32(P.Opt.NODE_ID, 1).finish())
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 3, 13)
    h.send(c, P.Builder(P.MsgType.INIT).seq(3).u32(P.Opt.NODE_ID, 1).u32(P.Opt.HEARTBEAT_INTERVAL, 8000)
           .finish())
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 3, 7)
    assert c not in h.closed and not h.server.clusters


@pytest.mark.parametrize("second,code", [
    (dict(node_id=1), 17),
    (dict(node_id=2, tb=TieBreaker(2, 0)), 15),
    (dict(node_id=2, algorithm=Algorithm.LMS), 16),
    (dict(node_id=2, tb=TieBreaker(1, 5)), 0),
])
def test_init_conflicts(second, code):
    h = Harness()
    h.client(1)
    c = h.connect()
    h.send(c, P.build_preinit(1, b"lab"))
    h.take(c)
    kw = dict(node_id=2, algorithm=Algorithm.FFSPLIT, tb=TieBreaker())
    kw.update(second)
    h.send(c, P.build_init(2, kw["node_id"], kw["algorithm"], 8000, kw["tb"], RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 2, code)


def test_tie_breaker_node_id_mismatch_and_second_init():
    h = Harness()
    h.client(1, tb=TieBreaker(3, 5))
    c = h.connect()
    h.send(c, P.build_preinit(1, b"lab"))
    h.send(c, P.build_init(2, 2, 1, 8000, TieBreaker(3, 6), RingId(1, 1)))
    assert _summary(h.take(c)[-1]) == ("INIT_REPLY", 2, 15)
    c2 = h.client(3, cluster=b"other")
    h.send(c2, P.build_init(3, 3, 1, 8000, TieBreaker(), RingId(1, 1)))
    assert _summary(h.take(c2)[0]) == ("INIT_REPLY", 3, 17)
    h.send(c2, P.build_echo_request(1))
    assert h.take(c2)[0].type == MsgType.ECHO_REPLY


def test_init_without_lists_and_seq():
    h = Harness()
    c = h.connect()
    h.send(c, P.build_preinit(1, b"lab"))
    h.take(c)
    init = P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 1), with_lists=False)
    h.send(c, init)
    r = h.take(c)[0]
    assert r.reply_error_code == 0 and r.supported_messages is None and r.supported_options is None
    assert r.supported_decision_algorithms == (0, 1, 2, 3)


def test_set_option_and_node_list_errors():
    h = Harness()
    c = h.client(1)
    h.send(c, P.build_set_option(3, heartbeat=2000))
    r = h.take(c)[0]
    assert (r.type, r.seq, r.heartbeat_interval, r.keep_active_partition_tie_breaker) == (7, 3, 2000, None)
    h.send(c, P.build_set_option(3, heartbeat=999))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 3, 13)
    h.send(c, P.build_set_option(3))
    r = h.take(c)[0]
    assert (r.type, r.seq, r.heartbeat_interval) == (7, 3, None)
    h.send(c, config(5, 2, 3))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 18)
    h.send(c, config(5))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 18)
    h.send(c, membership(5, RingId(1, 2), 2))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 19)
    h.send(c, P.build_node_list(5, 2, []))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 7)
    h.send(c, P.build_node_list(5, 3, []))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 7)
    h.send(c, raw(10, struct.pack(">HHB", 18, 1, 0)))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", None, 7)
    h.send(c, raw(10, SEQ5))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 5, 7)
    h.send(c, P.build_ask_for_vote(9))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 9, 14)
    h.send(c, P.build_heuristics_change(3, 1))
    r = h.take(c)[0]
    assert (r.type, r.vote, r.ring_id, r.heuristics) == (17, Vote.ASK_LATER, RingId(1, 1), 1)
    h.send(c, P.build_vote_info(4, 1, RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 4, 8)
    assert c not in h.closed


def test_other_algorithms_ask_for_vote_and_2nodelms_config():
    h = Harness()
    t = h.client(1, algorithm=Algorithm.TEST, cluster=b"t")
    h.send(t, P.build_ask_for_vote(9))
    r = h.take(t)[0]
    assert (r.type, r.vote, r.ring_id) == (13, Vote.ACK, RingId(1, 1))
    n = h.client(1, algorithm=Algorithm.TWO_NODE_LMS, cluster=b"n")
    h.send(n, P.build_ask_for_vote(9))
    assert h.take(n)[0].vote == Vote.ASK_LATER
    h.send(n, config(5, 1, 2, 3))
    assert _summary(h.take(n)[0]) == ("SERVER_ERROR", 5, 12)


def test_dead_peer_detection_timings():
    h = Harness()
    idle = h.connect()
    c = h.client(1, hb=1000)
    h.tick(1.49)
    assert c not in h.closed
    h.send(c, P.build_echo_request(1))
    h.tick(1.49)
    assert c not in h.closed
    h.tick(0.02)
    assert c in h.closed and not h.server.clusters
    c2 = h.client(2, hb=1000)
    h.send(c2, P.build_set_option(3, heartbeat=3000))
    h.tick(4.49)
    assert c2 not in h.closed
    h.tick(0.02)
    assert c2 in h.closed
    h.tick(180.0 - h.now - 0.01)
    assert idle not in h.closed
    h.tick(0.02)
    assert idle in h.closed  # 1.5 x 120000 ms before INIT


def test_skipped_messages_do_not_feed_dpd_and_dpd_can_be_disabled():
    h = Harness()
    c = h.client(1, hb=1000)
    h.tick(1.0)
    h.send(c, raw(99, SEQ5))
    h.tick(0.51)
    assert c in h.closed
    h = Harness(dpd_enabled=False)
    c = h.client(1, hb=1000)
    h.tick(1000.0)
    assert c not in h.closed


def test_max_clients():
    h = Harness(max_clients=2)
    a, b = h.connect(), h.connect()
    assert a > 0 and b > 0 and h.connect() < 0
    h.close(a)
    assert h.connect() > 0


def test_tls_required_and_cert_name_check():
    h = Harness(tls=2, client_cert_required=True)
    c = h.connect()
    h.send(c, P.build_preinit(1, b"LAB"))
    assert h.take(c)[0].tls_supported == 2
    h.send(c, P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("SERVER_ERROR", 2, 3)
    h.send(c, P.build_starttls(2))
    assert c in h.tls
    h.server.on_tls_established(c, ["lab"], h.now)
    h.send(c, P.build_init(3, 1, 1, 8000, TieBreaker(), RingId(1, 1)))
    assert _summary(h.take(c)[0]) == ("INIT_REPLY", 3, 0)
    bad = h.connect()
    h.send(bad, P.build_preinit(1, b"lab2"))
    h.send(bad, P.build_starttls(2))
    h.server.on_tls_established(bad, ["lab"], h.now)
    h.take(bad)
    h.send(bad, P.build_init(3, 2, 1, 8000, TieBreaker(), RingId(1, 1)))
    assert bad in h.closed and h.take(bad) == []
    # a PREINIT renaming the cluster after the check forces a new check (upstream would not)
    h.send(c, P.build_preinit(4, b"other"))
    h.take(c)
    h.send(c, P.build_echo_request(5))
    assert c in h.closed
    off = Harness(tls=0)
    c = off.connect()
    off.send(c, P.build_preinit(1, b"lab"))
    off.send(c, P.build_starttls(2))
    assert c in off.closed
