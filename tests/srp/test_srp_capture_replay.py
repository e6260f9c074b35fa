"""Replay a real corosync 3.1.7 conversation (shared/spec/captures/udpu_2node.pcap).

Real node 1's packets are fed, in capture order, to our ``Srp(2)``; whatever our node
sends towards node 1 must equal what the real node 2 sent, field for field (only
``target_nodeid``/``this_seqno``, which real nodes fill with garbage or private counters,
are ignored).  This covers the whole first session of node 2: JOINs, commit-token
entries, both commit laps, recovery and its install rotations, the first ORF tokens with
their aru/fcc/backlog running sums, sync MCASTs, token hold and HOLD_CANCEL, and the
final LEAVE.

The application messages node 2 multicast are taken from the capture and handed to
``send()`` when the real node 2 evidently had them queued (before the node-1 packet whose
answer carries them; after it when a HOLD_CANCEL shows they were submitted on an idle
ring).  Own multicasts are looped back after the next node-1 packet, which reproduces
the real node's first JOIN exchange (it handled node 1's JOIN before its own).
"""

from __future__ import annotations

import pytest

from corosync.exec.totem.config import derive
from corosync.exec.totem.events import ConfChg, ConfChgKind, Multicast, PersistRingSeq, Unicast
from corosync.exec.totem.srp import MembState, Srp
from corosync.exec.totem.wire import (CommitToken, Join, Mcast, MergeDetect, OrfToken, RingId,
                                      TokenHoldCancel, decode)

N1, N2 = "10.231.0.1", "10.231.0.2"


def _norm(m):
    if isinstance(m, OrfToken):
        return ("orf", m.nodeid, m.seq, m.token_seq, m.aru, m.aru_addr, m.ring_id, m.backlog,
                m.fcc, m.retrans_flg, tuple(m.rtr_list))
    if isinstance(m, Mcast):
        return ("mcast", m.nodeid, m.system_from, m.seq, m.ring_id, m.guarantee,
                m.encapsulated, m.payload)
    if isinstance(m, Join):
        return ("join", m.nodeid, m.system_from, m.proc_list, m.failed_list, m.ring_seq)
    if isinstance(m, CommitToken):
        return ("commit", m.nodeid, m.token_seq, m.ring_id, m.memb_index, tuple(m.addr),
                tuple((e.ring_id, e.aru, e.high_delivered, e.received_flg)
                      for e in m.memb_list))
    if isinstance(m, TokenHoldCancel):
        return ("hold", m.nodeid, m.ring_id)
    assert isinstance(m, MergeDetect)
    return ("merge", m.nodeid, m.ring_id)


# udp_2node.pcap is not replayed: there node 2 first forms a singleton from its own
# loopback traffic, which the capture does not show.
@pytest.mark.parametrize("capture", ["udpu_2node.pcap"])
def test_first_session_of_node_2_matches_the_real_node(shared_dir, capture):
    from corosync.exec.totem.pcap import read_udp

    packets = list(read_udp(str(shared_dir / "spec/captures" / capture)))
    first = next(i for i, d in enumerate(packets) if d.src == N2)
    leaves = [i for i, d in enumerate(packets)
              if d.src == N2 and isinstance(m := decode(d.payload), Join) and m.nodeid == 0]
    pk = packets[first:leaves[0] + 1] if leaves else packets[first:]
    first_join = decode(pk[0].payload)
    assert isinstance(first_join, Join)
    node = Srp(2, derive(2), ring_seq=first_join.ring_seq - 1)  # its stored ring seq
    ours: list[bytes] = []
    loop: list[bytes] = []
    confchgs: list[ConfChg] = []
    persisted: list[int] = []

    def run(actions):
        for a in actions:
            if isinstance(a, Multicast):
                ours.append(a.data)
                loop.append(a.data)
            elif isinstance(a, Unicast):
                assert a.nodeid == 1
                ours.append(a.data)
            elif isinstance(a, ConfChg):
                confchgs.append(a)
            elif isinstance(a, PersistRingSeq):
                persisted.append(a.seq)

    run(node.start(0))
    expected = [d.payload for d in pk if d.src == N2]
    queued: set[int] = set()
    for idx, d in enumerate(pk):
        if d.src == N2:
            continue
        batch = []
        j = idx + 1
        while j < len(pk) and pk[j].src == N2:
            batch.append((j, decode(pk[j].payload)))
            j += 1
        idle_send = any(isinstance(m, TokenHoldCancel) for _j, m in batch)
        if not idle_send:
            for jj, m in batch:
                if isinstance(m, Mcast) and m.encapsulated == 2 and jj not in queued:
                    queued.add(jj)
                    run(node.send(m.payload, m.guarantee, 0))
        run(node.receive(d.payload, 0))
        if idle_send:
            for k in range(j, len(pk)):
                if pk[k].src != N2:
                    continue
                m = decode(pk[k].payload)
                if isinstance(m, Mcast) and m.encapsulated == 2 and k not in queued:
                    queued.add(k)
                    run(node.send(m.payload, m.guarantee, 0))
                if isinstance(m, OrfToken):
                    break
        if any(isinstance(m, Join) and m.nodeid == 0 for _j, m in batch):
            run(node.leave(0))
        while loop:
            run(node.receive(loop.pop(0), 0))
    assert len(ours) == len(expected) > 300
    for k, (a, b) in enumerate(zip(ours, expected)):
        assert _norm(decode(a)) == _norm(decode(b)), f"packet {k} differs"
    assert [c.kind for c in confchgs] == [ConfChgKind.TRANSITIONAL, ConfChgKind.REGULAR]
    assert confchgs[1].members == (1, 2) and confchgs[1].ring_id.rep == 1
    assert persisted == [first_join.ring_seq, confchgs[1].ring_id.seq]
    assert node.state is MembState.OPERATIONAL  # then it left
