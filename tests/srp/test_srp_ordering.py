"""Ordering, SAFE delivery, retransmission and flow control on formed rings."""

from __future__ import annotations

from corosync.exec.totem.events import Deliver, Guarantee, Multicast, Unicast
from corosync.exec.totem.seq import U32, sq_lte
from corosync.exec.totem.wire import Mcast, OrfToken, decode

from test_srp_harness import formed_cluster


def _is_mcast(data: bytes, payload: bytes) -> bool:
    try:
        m = decode(data)
    except Exception:
        return False
    return isinstance(m, Mcast) and m.payload == payload


def test_agreed_order_identical_at_all_nodes():
    c = formed_cluster(3)
    for round_ in range(20):
        for i in (1, 2, 3):
            c.send(i, b"%d-%d" % (i, round_))
    assert c.run_until(lambda: all(len(c.delivered[i]) == 60 for i in (1, 2, 3)), 20_000)
    order = c.payloads(1)
    assert order == c.payloads(2) == c.payloads(3)
    for i in (1, 2, 3):  # each sender's messages keep their submission order
        mine = [p for p in order if p.startswith(b"%d-" % i)]
        assert mine == [b"%d-%d" % (i, r) for r in range(20)]
    seqs = [d.seq for d in c.delivered[2]]
    assert seqs == sorted(seqs)
    assert {d.sender for d in c.delivered[3]} == {1, 2, 3}
    assert all(d.ring_id == c.nodes[1].ring_id for d in c.delivered[1])


def test_safe_is_delivered_only_once_every_member_has_it():
    c = formed_cluster(3)
    violations = []

    def check(nodeid, action):
        if isinstance(action, Deliver) and action.guarantee == Guarantee.SAFE:
            for j, other in c.nodes.items():
                held = action.seq in other._regular.items or sq_lte(action.seq,
                                                                    other._last_released)
                if not held:
                    violations.append((nodeid, j, action.seq))

    c.observers.append(check)
    for k in range(30):
        c.send(1 + k % 3, b"s%d" % k, Guarantee.SAFE)
        c.send(1 + (k + 1) % 3, b"a%d" % k, Guarantee.AGREED)
    assert c.run_until(lambda: all(len(c.delivered[i]) == 60 for i in (1, 2, 3)), 20_000)
    assert not violations
    assert c.payloads(1) == c.payloads(2) == c.payloads(3)


def test_safe_waits_for_a_member_that_missed_it_agreed_does_not():
    c = formed_cluster(3)
    once: set[bytes] = set()

    def drop(src, dst, data):
        # the first copy of each of the two messages never reaches node 3
        for p in (b"agreed", b"safe"):
            if dst == 3 and p not in once and _is_mcast(data, p):
                once.add(p)
                return True
        return False

    c.drop = drop
    c.send(1, b"agreed", Guarantee.AGREED)
    assert c.run_until(lambda: c.payloads(2) == [b"agreed"], 5_000)
    assert c.payloads(3) == []
    c.send(1, b"safe", Guarantee.SAFE)
    # while node 3 lacks it (and has not been sent a retransmission) nobody delivers it
    def node3_holds_it() -> bool:
        return any(s[0].payload == b"safe" for s in c.nodes[3]._regular.items.values()) \
            or b"safe" in c.payloads(3)

    at_delivery = []  # for every delivery of "safe": did node 3 hold it already?
    c.observers.append(lambda n, a: at_delivery.append((n, node3_holds_it()))
                       if isinstance(a, Deliver) and a.payload == b"safe" else None)
    assert c.run_until(lambda: all(b"safe" in c.payloads(i) for i in (1, 2, 3)), 20_000)
    assert len(at_delivery) == 3 and all(had for _n, had in at_delivery)
    assert c.payloads(1) == c.payloads(2) == c.payloads(3) == [b"agreed", b"safe"]
    assert sum(n.stats.mcast_retx for n in c.nodes.values()) >= 2


def test_retransmission_after_dropped_mcast():
    c = formed_cluster(3)
    dropped = []

    def drop(src, dst, data):
        if dst == 2 and not dropped and _is_mcast(data, b"x"):
            dropped.append(data)
            return True
        return False

    c.drop = drop
    c.send(3, b"x")
    c.send(3, b"y")
    assert c.run_until(lambda: c.payloads(2) == [b"x", b"y"], 10_000)
    assert dropped
    assert sum(n.stats.mcast_retx for n in c.nodes.values()) >= 1
    assert any(line.startswith("Retransmit List: ") for i in (1, 2, 3)
               for line in c.log_lines(i))
    assert c.payloads(1) == c.payloads(3) == [b"x", b"y"]


def test_rtr_list_never_exceeds_30_entries():
    c = formed_cluster(2)
    # node 2 misses 60 messages of node 1; the retransmit list is capped at 30
    c.drop = lambda src, dst, data: dst == 2 and src == 1 and data[3] == 1 and \
        decode(data).payload.startswith(b"bulk")
    longest = [0]

    def watch(n, a):
        if isinstance(a, Unicast) and a.data[3] == 0:
            longest[0] = max(longest[0], len(decode(a.data).rtr_list))

    c.observers.append(watch)
    for k in range(60):
        c.send(1, b"bulk%d" % k)
    # keep node 2 deaf (retransmissions included) until its requests pile up
    assert c.run_until(lambda: longest[0] >= 30, 10_000)
    c.drop = None
    assert c.run_until(lambda: len(c.delivered[2]) == 60, 30_000)
    assert longest[0] == 30
    assert c.payloads(2) == [b"bulk%d" % k for k in range(60)]


def test_fcc_and_backlog_running_sums_stay_consistent():
    c = formed_cluster(3)
    bad = []

    def check(nodeid, action):
        if isinstance(action, Unicast) and action.data[3] == 0:
            tok = decode(action.data)
            assert isinstance(tok, OrfToken)
            fcc = sum(n._trc for n in c.nodes.values()) & U32
            backlog = sum(n._pbl for n in c.nodes.values()) & U32
            if (tok.fcc, tok.backlog) != (fcc, backlog):
                bad.append((tok.fcc, fcc, tok.backlog, backlog))

    c.observers.append(check)
    seen_backlog = []
    c.observers.append(lambda n, a: seen_backlog.append(decode(a.data).backlog)
                       if isinstance(a, Unicast) and a.data[3] == 0 else None)
    for k in range(200):
        c.send(1 + k % 3, b"%d" % k)
    assert c.run_until(lambda: all(len(c.delivered[i]) == 200 for i in (1, 2, 3)), 30_000)
    assert not bad
    c.run_for(1_000)
    assert not bad
    assert max(seen_backlog) > 0  # there was a backlog, and it drained
    assert seen_backlog[-1] == 0
    # the window bounds what a rotation may send
    assert all(n.stats.mcast_tx >= 66 for n in c.nodes.values())


def test_flow_control_window_limits_messages_per_rotation():
    c = formed_cluster(2)
    per_token = []
    c.observers.append(lambda n, a: per_token.append(n) if isinstance(a, Multicast)
                       and a.data[3] == 1 else None)
    tokens = []
    c.observers.append(lambda n, a: tokens.append((n, len(per_token)))
                       if isinstance(a, Unicast) else None)
    for k in range(300):
        c.send(1, b"%d" % k)
    assert c.run_until(lambda: len(c.delivered[2]) == 300, 30_000)
    counts = [b - a for (_n, a), (_m, b) in zip(tokens, tokens[1:])]
    assert max(counts) <= c.config.max_messages


def test_token_hold_and_hold_cancel_on_idle_ring():
    c = formed_cluster(3)
    c.run_for(5_000)  # idle: the rep holds the token, the ring rotates once per hold
    rep = c.nodes[1]
    assert rep._token_held
    holder = c.nodes[2]
    assert holder._token_held
    acts = holder.send(b"wake", 0, c.now)
    cancels = [a for a in acts if isinstance(a, Multicast) and a.data[3] == 5]
    assert len(cancels) == 1 and holder.stats.token_hold_cancel_tx == 1
    t0 = c.now
    c.apply(2, acts)
    assert c.run_until(lambda: all(c.payloads(i) == [b"wake"] for i in (1, 2, 3)), 5_000)
    assert c.now - t0 < c.config.hold  # the rep re-sent the token at once
    assert rep.stats.token_hold_cancel_rx == 1


def test_merge_detect_sent_by_rep_of_idle_ring():
    c = formed_cluster(2)
    c.run_for(2_000)
    assert c.nodes[1].stats.memb_merge_detect_tx >= 1
    assert c.nodes[2].stats.memb_merge_detect_tx == 0
    assert c.nodes[2].stats.memb_merge_detect_rx >= 1


def test_queue_full_and_queue_space():
    from corosync.exec.totem.srp import QueueFull
    import pytest

    c = formed_cluster(1)
    node = c.nodes[1]
    space = node.queue_space()
    assert space == c.config.send_queue_max
    for k in range(space):
        node.send(b"q", 0, c.now)
    assert node.queue_space() == 0
    with pytest.raises(QueueFull):
        node.send(b"q", 0, c.now)
