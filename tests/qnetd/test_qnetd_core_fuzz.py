"""Property test of the server core: any interleaving of valid, odd and broken messages from
several clients, disconnects and passing time never raises, and the bookkeeping stays
consistent (clusters sorted by node id, only initialised clients in clusters, no empty
clusters, every reply decodable)."""

import struct

from hypothesis import given, settings, strategies as st

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import NodeInfo, RingId, TieBreaker

from qnetd_harness import Harness

node_ids = st.integers(1, 5)
rings = st.builds(RingId, st.integers(1, 3), st.integers(0, 4))
node_lists = st.lists(st.builds(NodeInfo, node_ids, st.sampled_from([0, 7]), st.sampled_from([0, 1, 2])),
                      max_size=5)
tbs = st.sampled_from([TieBreaker(1), TieBreaker(2), TieBreaker(3, 1), TieBreaker(3, 2)])
seqs = st.integers(0, 6)

messages = st.one_of(
    st.builds(lambda s, n: P.build_preinit(s, n), seqs, st.sampled_from([b"a", b"b", b""])),
    st.builds(lambda s, n, a, hb, tb, r, wl: P.build_init(s, n, a, hb, tb, r, wl),
              seqs, node_ids, st.integers(0, 4), st.sampled_from([0, 999, 1000, 8000, 200000]), tbs,
              rings, st.booleans()),
    st.builds(lambda s, hb, k: P.build_set_option(s, hb, k), seqs,
              st.sampled_from([None, 500, 2000]), st.sampled_from([None, 0, 1])),
    st.builds(P.build_echo_request, seqs),
    st.builds(lambda s, t, nodes, r, cv, q, h: P.build_node_list(s, t, nodes, r, cv, q, h),
              seqs, st.integers(0, 3), node_lists, st.one_of(st.none(), rings),
              st.sampled_from([None, 5]), st.sampled_from([None, 0, 1]), st.sampled_from([0, 1, 2])),
    st.builds(P.build_ask_for_vote, seqs),
    st.builds(P.build_vote_info_reply, st.integers(0, 8)),
    st.builds(P.build_heuristics_change, seqs, st.sampled_from([1, 2])),
    st.builds(P.build_starttls, seqs),
    st.builds(lambda t, b: struct.pack(">HI", t, len(b)) + b, st.integers(0, 20), st.binary(max_size=30)),
)

events = st.lists(st.one_of(
    st.tuples(st.just("msg"), st.integers(0, 4), messages),
    st.tuples(st.just("close"), st.integers(0, 4), st.none()),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 2.0, 13.0]), st.none()),
), max_size=60)


def _check(h: Harness) -> None:
    s = h.server
    for name, cl in s.clusters.items():
        assert cl.clients, name
        ids = [c.node_id for c in cl.clients]
        assert ids == sorted(ids)
        for c in cl.clients:
            assert c.initialised and c.cluster is cl and s.clients.get(c.conn_id) is c
    for c in s.clients.values():
        assert (c.cluster is not None) == c.initialised


@settings(max_examples=300, deadline=None)
@given(events, st.sampled_from([0, 1, 2]))
def test_core_survives_any_sequence(evs, tls):
    h = Harness(tls=tls, client_cert_required=True)
    conns = [h.connect() for _ in range(5)]
    for kind, arg, payload in evs:
        if kind == "msg":
            cid = conns[arg]
            if cid in h.closed or cid < 0:
                continue
            if cid in h.tls and payload[:2] == b"\0\x02":
                continue
            h.send(cid, payload)
            if cid in h.tls:  # pretend the handshake worked with a matching certificate
                h.server.on_tls_established(cid, ["a"], h.now)
        elif kind == "close":
            if conns[arg] not in h.closed:
                h.close(conns[arg])
                h.closed.add(conns[arg])
                conns[arg] = h.connect()
        else:
            h.tick(arg)
        _check(h)
