"""Replay: node 1's real messages from the udpu capture drive a ServiceHost acting as
node 2; our own sends are self-delivered at the positions where the real node 2's
messages sit in the agreed order.  Our sync must go through the same phases and send the
same kinds of messages in the same order (spec Appendix A.7), and the CPG traffic of the
capture must produce byte-identical exec messages and the right client events."""

from __future__ import annotations

import struct

from svc_helpers import CapMsg, FakeConn, udpu_messages

from corosync.exec.cmap import CmapStore
from corosync.exec.host import ServiceHost
from corosync.exec.service import REQ_HEADER
from corosync.exec.totem.events import ConfChg, ConfChgKind, PgDeliver
from corosync.exec.totem.wire import RingId
from corosync.services import cpg
from corosync.services.cmap import CmapService
from corosync.services.cpg import CpgService

VOTEQUORUM = 5


def kind(group: bytes, body: bytes) -> tuple[bytes, int]:
    return group, struct.unpack_from("<i", body)[0]


class Replayer:
    def __init__(self, me: int) -> None:
        self.me = me
        self.sent: list[tuple[bytes, bytes]] = []
        self.logs: list[str] = []
        self.acks = 0
        self.procs_at_ack: list[list] = []
        # cmap + cpg only: the phases and messages below are those two services'
        self.host = ServiceHost(me, CmapStore(), self._mcast, trans_ack=self._ack,
                                log=lambda lvl, sub, text: self.logs.append(text),
                                services=[CmapService, CpgService])
        self.ring: RingId | None = None

    def _mcast(self, group: bytes, message: bytes, guarantee: int) -> None:
        self.sent.append((group, message))

    def _ack(self) -> None:
        self.acks += 1
        self.procs_at_ack.append([(p.nodeid, p.pid, p.group)
                                  for p in self.host.services[2].procs])

    def deliver(self, sender: int, group: bytes, body: bytes) -> None:
        assert self.ring is not None
        self.host.on_deliver(PgDeliver(sender, (group,), body, self.ring))

    def self_deliver(self, expected: CapMsg) -> bytes:
        """Pop our next send; it must be of the kind the real node sent here."""
        assert self.sent, f"we sent nothing where node {self.me} sent {expected}"
        group, body = self.sent.pop(0)
        assert kind(group, body) == kind(expected.group, expected.body), (
            f"ours {kind(group, body)} vs real {kind(expected.group, expected.body)}")
        self.deliver(self.me, group, body)
        return body


def test_replay_node2_formation_and_cpg(shared_dir):
    msgs = [m for m in udpu_messages(shared_dir) if m.ring == RingId(1, 9)]
    r = Replayer(2)
    r.ring = RingId(1, 9)
    r.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, (2,), (), (), RingId(1, 9)))
    r.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1, 2), (), (1,), RingId(1, 9)))
    client = FakeConn(pid=9408)
    r.host.ipc_handlers["cpg"].on_connect(client)
    trace_kinds = []
    for m in msgs:
        mid = m.exec_id
        if m.group == b"a" and mid >> 16 == VOTEQUORUM:
            if m.sender == 1:
                r.deliver(1, m.group, m.body)  # a service we do not run: ignored
            continue
        if m.sender == 1:
            r.deliver(1, m.group, m.body)
            continue
        # the real node 2 sent this: make our client act as the real one did, then
        # self-deliver what we sent
        if m.group == b"a" and mid == 0x20000:
            r.host.ipc_handlers["cpg"].on_request(
                client, cpg.REQ_JOIN, cpg.encode_name(b"grp1") + struct.pack("<I4xI4x", 9408, 0))
            assert client.responses.pop() == (cpg.RES_JOIN, b"", 1)
        elif m.group == b"a" and mid == 0x20003:
            text = m.body[184:]
            r.host.ipc_handlers["cpg"].on_request(
                client, cpg.REQ_MCAST, bytes(8) + struct.pack("<I4xI4x", 2, len(text)) + text)
        elif m.group == b"a" and mid == 0x20001:
            r.host.ipc_handlers["cpg"].on_request(
                client, cpg.REQ_LEAVE, cpg.encode_name(b"grp1") + struct.pack("<I4x", 9408))
            assert client.responses.pop() == (cpg.RES_LEAVE, b"", 1)
        ours = r.self_deliver(m)
        trace_kinds.append(kind(m.group, ours))
        if m.group == b"a" and mid in (0x20000, 0x20001):
            assert ours == m.body  # PROCJOIN/PROCLEAVE byte-identical
        if m.group == b"a" and mid == 0x20003:
            assert ours[:176] == m.body[:176] and ours[184:] == m.body[184:]  # conn = garbage
        if m.group == b"sync" and REQ_HEADER.unpack_from(m.body)[0] == 0:
            assert ours == m.body  # barrier byte-identical
    assert not r.sent, f"unexpected extra sends {r.sent}"
    # sync: build, then phases 0 (cmap), 2 (cpg), 3 and 5 (dummies from node 1's build)
    assert [e for e in r.host.sync.trace] == [
        ("build", None), ("barrier", 0), ("activate", 0), ("barrier", 2), ("activate", 2),
        ("barrier", 3), ("activate", 3), ("barrier", 5), ("activate", 5), ("completed", None)]
    assert r.acks == 1 and not r.host.sync_in_process
    assert "Completed service synchronization, ready to provide service." in r.logs
    assert trace_kinds[:6] == [(b"sync", 1), (b"a", 0), (b"sync", 0), (b"a", 0x20005),
                               (b"sync", 0), (b"sync", 0)]
    # client events: own join, node 1's join, both deliveries, node 1's leave, own leave
    ev = client.events
    confchgs = [e for e in ev if e[0] == cpg.RES_CONFCHG]
    delivers = [e for e in ev if e[0] == cpg.RES_DELIVER]
    assert len(confchgs) == 4
    first = confchgs[0][1]
    assert struct.unpack_from("<I4xI4xI", first, 136) == (1, 1, 0)  # 1 member, 1 joined
    assert struct.unpack_from("<I4xI4xI", first, 160) == (2, 9408, 0)  # member entry
    assert struct.unpack_from("<I4xI4xI", first, 184) == (2, 9408, cpg.REASON_JOIN)
    second = confchgs[1][1]
    assert struct.unpack_from("<I4xI4xI", second, 136) == (2, 1, 0)
    # members sorted by nodeid: node 1's pid first
    assert struct.unpack_from("<I4xI", second, 160) == (1, 9434)
    assert [struct.unpack_from("<I4xI4xI", d[1], 136) for d in delivers] == [
        (5, 2, 9408), (10, 1, 9434)]
    assert delivers[1][1][160:] == b"helloFromA"
    left = confchgs[2][1]
    assert struct.unpack_from("<I4xI4xI", left, 136) == (1, 0, 1)
    assert struct.unpack_from("<I4xI4xI", left, 160 + 24) == (1, 9434, cpg.REASON_LEAVE)
    # node 1's later join + mcast: we left, so no events for them
    assert len(ev) == 4 + 2 + 1  # 4 confchgs, 2 delivers, 1 totem confchg (sync activate)


def test_replay_node1_leave_sends_joinlist(shared_dir):
    """Ring 1.d: node 2 left, node 1 has a CPG member → its sync has a JOINLIST."""
    msgs = [m for m in udpu_messages(shared_dir) if m.ring == RingId(1, 0xD)]
    r = Replayer(1)
    # state before: node 1 in ring 1.9 with a member pid 9574 in grp1, node 2 member
    r.ring = RingId(1, 9)
    r.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, (1,), (), (), RingId(1, 9)))
    r.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1, 2), (), (2,), RingId(1, 9)))
    for _ in range(40):  # run the 1.9 sync with node 2 mirroring us
        if not r.sent:
            break
        group, body = r.sent.pop(0)
        r.deliver(1, group, body)
        r.deliver(2, group, body)
    assert not r.host.sync_in_process
    client = FakeConn(pid=9574)
    h = r.host.ipc_handlers["cpg"]
    h.on_connect(client)
    h.on_request(client, cpg.REQ_JOIN, cpg.encode_name(b"grp1") + struct.pack("<I4xI4x", 9574, 0))
    group, body = r.sent.pop(0)
    r.deliver(1, group, body)
    # node 2 leaves
    r.ring = RingId(1, 0xD)
    r.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, (1,), (2,), (), RingId(1, 0xD)))
    r.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (), RingId(1, 0xD)))
    rest = list(msgs)
    while rest and r.host.sync_in_process:
        m = rest.pop(0)
        if m.group == b"a" and m.exec_id >> 16 == VOTEQUORUM:
            continue
        ours = r.self_deliver(m)
        if m.group == b"a" and m.exec_id == 0x20002:
            assert ours == m.body  # JOINLIST byte-identical
        if m.group == b"a" and m.exec_id == 0x20005:
            assert ours == m.body  # DOWNLIST: old_members 2, left [2]
    assert not r.sent and not r.host.sync_in_process
    # alone, our list is [0, 2]: the real node's extra phases (quorum 3, votequorum 5) are
    # all that is left of its sync
    assert [(m.group, m.exec_id >> 16) for m in rest] == [
        (b"sync", 0), (b"a", 5), (b"a", 5), (b"sync", 0)]
    assert r.host.sync.trace[-1] == ("completed", None)


def test_replay_node2_restart_and_merge(shared_dir):
    """Node 2 restarts alone (ring 2.e) and merges with node 1 (1.12), which has a CPG
    process: we learn it from node 1's JOINLIST, and our DOWNLISTs equal the real ones."""
    msgs = udpu_messages(shared_dir)
    r = Replayer(2)
    for ring, trans, members in ((RingId(2, 0xE), (), (2,)), (RingId(1, 0x12), (2,), (1, 2))):
        r.ring = ring
        r.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, trans, (), (), ring))
        r.host.on_confchg(ConfChg(ConfChgKind.REGULAR, members, (), (), ring))
        rest = [m for m in msgs if m.ring == ring]
        while rest:
            m = rest.pop(0)
            if m.group == b"a" and m.exec_id >> 16 == VOTEQUORUM:
                if m.sender == 1:
                    r.deliver(1, m.group, m.body)
                continue
            if m.sender == 1:
                r.deliver(1, m.group, m.body)
                continue
            if not r.host.sync_in_process:
                # alone in 2.e our list is [0, 2]: the real node's phases 3 and 5 remain
                assert ring == RingId(2, 0xE) and (m.group, m.exec_id) == (b"sync", 0)
                continue
            ours = r.self_deliver(m)
            if m.group == b"a" and m.exec_id == 0x20005:
                assert ours == m.body
        assert not r.sent and not r.host.sync_in_process
    procs = r.host.services[2].procs
    assert procs == []  # node 1's process left at the very end of the capture (PROCLEAVE)
    assert r.acks == 2
    assert r.host.cmap.get("runtime.members.1.config_version") == 0
    # at the end of the merge sync, node 1's JOINLIST had taught us its pid 9574
    assert r.procs_at_ack == [[], [(1, 9574, b"grp1")]]
    assert any("got procleave message from cluster node 1 for pid 9574" in line for line in r.logs)
