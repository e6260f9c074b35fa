"""Bad input never raises; duplicate/foreign tokens are dropped; 32-bit seq wraparound."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corosync.exec.totem.events import Unicast
from corosync.exec.totem.seq import U32, sq_lt, sq_lte, sq_min
from corosync.exec.totem.sortqueue import QUEUE_SIZE, SortQueue
from corosync.exec.totem.srp import MembState, Srp
from corosync.exec.totem.wire import (CommitToken, Join, Mcast, MembEntry, MergeDetect,
                                      OrfToken, RingId, RtrItem, TokenHoldCancel, decode)

from test_srp_harness import Cluster, formed_cluster


# ---------------------------------------------------------------- seq arithmetic
def test_sq_compare_plain_and_wrapped():
    assert sq_lt(1, 2) and not sq_lt(2, 1) and not sq_lt(5, 5)
    assert sq_lte(5, 5) and sq_lte(1, 2) and not sq_lte(3, 2)
    # a new ring's aru 0xFFFFFFFF is "-1": below 0 and below small seqs
    assert sq_lt(0xFFFFFFFF, 0) and sq_lt(0xFFFFFFFF, 5) and not sq_lt(0, 0xFFFFFFFF)
    assert sq_lte(0xFFFFFFFF, 0xFFFFFFFF) and not sq_lte(1, 0xFFFFFFFF)
    # just across the wrap: 0xFFFFFFF0 < 3
    assert sq_lt(0xFFFFFFF0, 3) and not sq_lt(3, 0xFFFFFFF0)
    # corosync's exact rule, not serial arithmetic: both > 2^31 compares shifted
    assert sq_lt(0x80000001, 0x80000002)
    assert sq_lt(0x7FFFFFFF, 0x80000001)  # shifted: 0x7ffeffff < 0x7fff0001
    assert sq_min(0xFFFFFFFF, 0) == 0xFFFFFFFF and sq_min(7, 3) == 3


def test_sort_queue_window_and_release_across_wrap():
    q: SortQueue[str] = SortQueue(0xFFFFFFF0)
    assert q.in_range(0xFFFFFFF0) and q.in_range(0xFFFFFFFF) and q.in_range(0)
    assert q.in_range((0xFFFFFFF0 + QUEUE_SIZE - 1) & U32)
    assert not q.in_range((0xFFFFFFF0 + QUEUE_SIZE) & U32)
    assert not q.in_range(0xFFFFFFEF)
    for s in (0xFFFFFFF0, 0xFFFFFFFF, 0, 5):
        q.add(s, str(s))
    assert q.miss_increment(1) == 1 and q.miss_increment(1) == 2
    q.release_to(2)
    assert sorted(q.items) == [5] and q.head == 3 and not q.miss
    q.release_to(1)  # behind the window: nothing happens
    assert q.head == 3 and list(q.items) == [5]
    plain: SortQueue[int] = SortQueue(0)
    assert plain.in_range(0) and plain.in_range(QUEUE_SIZE - 1)
    assert not plain.in_range(QUEUE_SIZE) and not plain.in_range(0xFFFFFFFF)


def test_ring_keeps_order_across_32bit_seq_wrap():
    c = formed_cluster(2)
    rep = c.nodes[1]
    # wait for an idle moment: the rep holds the token and nothing is in flight
    assert c.run_until(lambda: rep._token_held and not any(
        item[0] == "net" for _t, _n, item in c._heap), 20_000)
    w = 0xFFFFFFFF - 20
    for node in c.nodes.values():
        node._aru = node._high_seq_received = node._high_delivered = w
        node._last_released = node._last_aru = node._last_seq = node._safe_upto = w
        node._regular = SortQueue(w + 1)
    tok = decode(rep._token_copy)
    tok.seq = tok.aru = w
    tok.aru_addr = 0
    rep._token_copy = tok.encode()
    from corosync.exec.totem.events import Guarantee
    for k in range(60):
        c.send(1 + k % 2, b"w%d" % k, Guarantee.SAFE if k % 5 == 0 else Guarantee.AGREED)
    assert c.run_until(lambda: all(len(c.delivered[i]) == 60 for i in (1, 2)), 20_000)
    assert c.payloads(1) == c.payloads(2)
    seqs = [d.seq for d in c.delivered[1]]
    assert seqs[0] == w + 1 and 0xFFFFFFFF in seqs and 0 in seqs and seqs[-1] == 39
    assert all(sq_lt(a, b) for a, b in zip(seqs, seqs[1:]))
    c.run_for(2_000)
    assert rep.state is MembState.OPERATIONAL and len(rep._regular) < 60


# ---------------------------------------------------------------- tokens
def test_duplicate_and_foreign_tokens_are_dropped():
    c = formed_cluster(2)
    tokens = []
    c.observers.append(lambda n, a: tokens.append(a) if isinstance(a, Unicast)
                       and a.nodeid == 2 and a.data[3] == 0 else None)
    c.send(1, b"x")
    assert c.run_until(lambda: tokens, 5_000)
    assert c.run_until(lambda: c.payloads(2) == [b"x"], 5_000)
    node = c.nodes[2]
    first = decode(tokens[0].data).token_seq
    assert c.run_until(lambda: sq_lte(first, node._token_seq), 5_000)
    before = node.stats.dropped.get("duplicate_token", 0)
    acts = node.receive(tokens[0].data, c.now)  # an old token, again
    assert not [a for a in acts if isinstance(a, Unicast)]
    assert node.stats.dropped["duplicate_token"] == before + 1
    tok = decode(tokens[0].data)
    tok.ring_id = RingId(9, 999)
    tok.token_seq = 0x7000
    acts = node.receive(tok.encode(), c.now)
    assert not [a for a in acts if isinstance(a, Unicast)]
    assert node.stats.dropped["foreign_ring"] >= 1
    assert node.state is MembState.OPERATIONAL


def test_retransmitted_token_is_ignored_by_receiver():
    c = formed_cluster(3)
    copies = []

    def dup(src, dst, data):
        if data[3] == 0 and len(copies) < 20:
            copies.append(data)
            c._push(c.now + 2, ("net", dst, data))  # deliver a second copy later
        return False

    c.drop = dup
    for k in range(20):
        c.send(1 + k % 3, b"%d" % k)
    assert c.run_until(lambda: all(len(c.delivered[i]) == 20 for i in (1, 2, 3)), 10_000)
    assert c.payloads(1) == c.payloads(2) == c.payloads(3)
    c.run_for(100)
    assert len(copies) == 20
    assert sum(n.stats.dropped.get("duplicate_token", 0) for n in c.nodes.values()) == 20


# ---------------------------------------------------------------- garbage
def _samples() -> list[bytes]:
    ring = RingId(1, 5)
    return [
        OrfToken(1, 3, 4, 2, 1, ring, 1, 2, 0, [RtrItem(ring, 3)]).encode(),
        Mcast(1, 1, 1, ring, b"payload").encode(),
        Mcast(1, 1, 1, ring, Mcast(1, 1, 1, RingId(1, 1), b"in").encode(),
              encapsulated=1).encode(),
        MergeDetect(1, 1, ring).encode(),
        Join(2, 2, (1, 2), (3,), 4).encode(),
        Join(0, 2, (1,), (2,), 4).encode(),
        CommitToken(1, 1, RingId(1, 9), 1, [1, 2], [MembEntry(ring, 1, 1, 1), MembEntry()]).encode(),
        TokenHoldCancel(1, ring).encode(),
    ]


SAMPLES = _samples()
_NODES: dict[str, Srp] = {}


def _node_in(state: str) -> Srp:
    """A node parked in the given state (built once; fuzzing mutates it further)."""
    if state not in _NODES:
        c = Cluster([1, 2])
        c.start()
        if state == "gather":
            pass
        else:
            want = {"commit": MembState.COMMIT, "recovery": MembState.RECOVERY,
                    "operational": MembState.OPERATIONAL}[state]
            assert c.run_until(lambda: c.nodes[1].state is want, 10_000)
        _NODES[state] = c.nodes[1]
    return _NODES[state]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=st.sampled_from(["gather", "commit", "recovery", "operational"]),
       data=st.one_of(
           st.binary(max_size=200),
           st.tuples(st.sampled_from(SAMPLES), st.integers(0, 120)).map(lambda t: t[0][:t[1]]),
           st.tuples(st.sampled_from(SAMPLES), st.integers(0, 119), st.integers(0, 255)).map(
               lambda t: t[0][:t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1:]),
       ))
def test_garbage_truncated_and_mutated_datagrams_never_raise(state, data):
    node = _node_in(state)
    acts = node.receive(data, 1_000)
    assert isinstance(acts, list)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=st.sampled_from(["gather", "commit", "recovery", "operational"]),
       msg=st.one_of(
           st.builds(lambda n, s, ts, a, aa, rs, b, f, rf, k: OrfToken(
               n, s, ts, a, aa, RingId(1, rs), b, f, rf,
               [RtrItem(RingId(1, rs), s)] * k),
               st.integers(0, U32), st.integers(0, U32), st.integers(0, U32),
               st.integers(0, U32), st.integers(0, U32), st.integers(0, 20),
               st.integers(0, U32), st.integers(0, U32), st.integers(-3, 3),
               st.integers(0, 30)),
           st.builds(lambda n, p, f, rs: Join(n, n or 5, tuple(p), tuple(f), rs),
                     st.integers(0, 6), st.lists(st.integers(0, 6), max_size=6),
                     st.lists(st.integers(0, 6), max_size=6), st.integers(0, 2**64 - 1)),
           st.builds(lambda a, idx, rs: CommitToken(
               3, 1, RingId(1, rs), min(idx, len(a)), a, [MembEntry() for _ in a]),
               st.lists(st.integers(1, 4), min_size=1, max_size=5), st.integers(0, 5),
               st.integers(0, 2**64 - 1)),
           st.builds(lambda s, rs, e: Mcast(2, 2, s, RingId(1, rs), b"p", encapsulated=e),
                     st.integers(0, U32), st.integers(0, 20), st.integers(0, 3)),
       ))
def test_forged_well_formed_messages_never_raise(state, msg):
    node = _node_in(state)
    assert isinstance(node.receive(msg.encode(), 2_000), list)


def test_drops_are_counted_and_logged_rate_limited():
    c = formed_cluster(1)
    node = c.nodes[1]
    logs = []
    for t in range(0, 30_000, 100):
        logs += [a for a in node.receive(b"\xff\xff\x03\x00" + bytes(20), c.now + t)
                 if a.__class__.__name__ == "Log"]
    assert node.stats.dropped["bad_magic"] == 300
    assert 3 <= len(logs) <= 4
    node.receive(b"\x70\xc0", c.now)
    node.receive(struct.pack("<HBBBII", 0xC070, 3, 9, 0, 1, 0), c.now)
    assert node.stats.dropped["truncated"] == 1 and node.stats.dropped["bad_type"] == 1
    assert c.run_until(lambda: c.ring_formed([1]), 1_000)


def test_receive_accepts_reused_bytearray_buffers():
    """A driver may receive into one reusable buffer: retained MCASTs must be copies."""
    c = formed_cluster(2)
    buf = bytearray(2000)
    orig_receive = c.nodes[2].receive

    def via_buffer(data, now):
        buf[:len(data)] = data
        view = memoryview(buf)[:len(data)]
        return orig_receive(view, now)

    c.drivers[2] = type("Drv", (), {"receive": staticmethod(via_buffer),
                                     "timer_expired": c.nodes[2].timer_expired,
                                     "trans_ack": c.nodes[2].trans_ack})()
    for k in range(40):
        c.send(1 + k % 2, b"msg-%d" % k)
    assert c.run_until(lambda: len(c.delivered[2]) == 40 and len(c.delivered[1]) == 40, 10_000)
    assert c.payloads(1) == c.payloads(2)
    stored = [raw for _m, raw in c.nodes[2]._regular.items.values()]
    assert all(type(raw) is bytes for raw in stored)
