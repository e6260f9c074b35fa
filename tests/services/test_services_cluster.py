"""Three simulated nodes (TotemPg(Srp) + ServiceHost each) with fake CPG/cmap clients:
identical delivery order and confchgs everywhere, the right reasons, sync after every
membership change, a node crash mid-stream, and config_version propagation via cmap."""

from __future__ import annotations

import struct

from svc_sim import Cluster, FakeConn

from corosync.exec.cmap import CmapType
from corosync.services import cmap, cpg


def join(node, conn: FakeConn, group: bytes, flags: int = 0) -> None:
    node.request("cpg", conn, cpg.REQ_JOIN,
                 cpg.encode_name(group) + struct.pack("<I4xI4x", conn.pid, flags))
    assert conn.responses.pop() == (cpg.RES_JOIN, b"", 1)


def mcast(node, conn: FakeConn, data: bytes) -> None:
    node.request("cpg", conn, cpg.REQ_MCAST, bytes(8) + struct.pack("<I4xI4x", 2, len(data)) + data)


def delivered(conn: FakeConn) -> list[tuple[int, int, bytes]]:
    out = []
    for msg_id, payload, _err in conn.events:
        if msg_id == cpg.RES_DELIVER:
            msglen, nodeid, pid = struct.unpack_from("<I4xI4xI", payload, 136)
            out.append((nodeid, pid, payload[160:160 + msglen]))
    return out


def confchgs(conn: FakeConn) -> list[tuple[list, list, list]]:
    out = []
    for msg_id, p, _err in conn.events:
        if msg_id == cpg.RES_CONFCHG:
            m, j, lft = struct.unpack_from("<I4xI4xI", p, 136)
            entries = [struct.unpack_from("<I4xI4xI", p, 160 + 24 * i) for i in range(m + j + lft)]
            out.append((entries[:m], entries[m + lft:], entries[m:m + lft]))  # members, joined, left
    return out


def test_cpg_three_nodes_join_mcast_crash_leave():
    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1, n2, n3 = (c.nodes[i] for i in (1, 2, 3))
    a, b, d = n1.client(101), n2.client(201), n3.client(301)
    for node, conn in ((n1, a), (n2, b), (n3, d)):
        join(node, conn, b"g1")
    c.run_until(lambda: all(len(delivered(x)) == 0 and len(confchgs(x)) >= 1
                            and confchgs(x)[-1][0] == [(1, 101, 0), (2, 201, 0), (3, 301, 0)]
                            for x in (a, b, d)))
    # identical confchg history from the moment each joined: the last one is the same event
    assert confchgs(a)[-1] == confchgs(b)[-1] == confchgs(d)[-1]
    for i in range(20):
        for node, conn in ((n1, a), (n2, b), (n3, d)):
            mcast(node, conn, b"m%d-%d" % (node.nodeid, i))
    c.run_until(lambda: all(len(delivered(x)) == 60 for x in (a, b, d)))
    assert delivered(a) == delivered(b) == delivered(d)
    assert sorted(delivered(a)) == sorted((n, p, b"m%d-%d" % (n, i)) for n, p in
                                          ((1, 101), (2, 201), (3, 301)) for i in range(20))
    syncs = [n.syncs_completed for n in (n1, n2)]
    # node 3 keeps sending and dies with messages in flight
    for i in range(10):
        mcast(n3, d, b"late-%d" % i)
        mcast(n1, a, b"n1-%d" % i)
    c.run_until(lambda: len(delivered(a)) > 62)
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    c.run_until(lambda: all(len([x for x in delivered(y) if x[0] == 1]) == 30 for y in (a, b)))
    assert delivered(a) == delivered(b)
    assert [n.syncs_completed for n in (n1, n2)] == [s + 1 for s in syncs]
    down = confchgs(a)[-1]
    assert down == confchgs(b)[-1]
    assert down == ([(1, 101, 0), (2, 201, 0)], [], [(3, 301, cpg.REASON_NODEDOWN)])
    # totem confchg (model v1 event 13) went to every connection after the sync
    totem = [p for i, p, _ in a.events if i == cpg.RES_TOTEM_CONFCHG][-1]
    assert struct.unpack_from("<I", totem, 16)[0] == 2
    assert struct.unpack_from("<II", totem, 20) == (1, 2)
    # explicit leave on node 2: reason LEAVE everywhere
    n2.request("cpg", b, cpg.REQ_LEAVE, cpg.encode_name(b"g1") + struct.pack("<I4x", 201))
    assert b.responses.pop() == (cpg.RES_LEAVE, b"", 1)
    c.run_until(lambda: confchgs(a)[-1][2] == [(2, 201, cpg.REASON_LEAVE)])
    assert confchgs(b)[-1] == confchgs(a)[-1]
    # a process dies on node 1 (IPC disconnect) while a node-2 client watches: PROCDOWN
    e = n2.client(202)
    join(n2, e, b"g1")
    c.run_until(lambda: confchgs(a)[-1][1] == [(2, 202, cpg.REASON_JOIN)])
    n1.host.ipc_handlers["cpg"].on_disconnect(a)
    c.run_until(lambda: confchgs(e)[-1][2] == [(1, 101, cpg.REASON_PROCDOWN)])
    assert confchgs(e)[-1][0] == [(2, 202, 0)]
    # membership and iteration agree on the surviving node
    n2.request("cpg", e, cpg.REQ_MEMBERSHIP, cpg.encode_name(b"g1"))
    mid, payload, err = e.responses.pop()
    assert (mid, err, len(payload) + 24) == (cpg.RES_MEMBERSHIP, 1, 9248)
    assert struct.unpack_from("<I4xI4xI4xI", payload, 0) == (1, 2, 202, 0)
    for node in (n1, n2):
        assert node.host.stats.dropped == {}


def test_cpg_rejoin_after_crash_gets_nodeup_via_joinlist():
    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1, n3 = c.nodes[1], c.nodes[3]
    a, d = n1.client(101), n3.client(301)
    join(n1, a, b"g")
    join(n3, d, b"g")
    both = [(1, 101, 0), (3, 301, 0)]
    c.run_until(lambda: all(confchgs(x) and confchgs(x)[-1][0] == both for x in (a, d)))
    # partition node 3 away by crashing it, then bring a fresh node 3 back
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    assert confchgs(a)[-1][2] == [(3, 301, cpg.REASON_NODEDOWN)]
    from svc_sim import Node
    fresh = Node(c, 3)
    c.nodes[3] = fresh
    d2 = fresh.client(302)
    c.apply(fresh, fresh.pg.start(c.now))
    c.run_until(c.settled((1, 2, 3)))
    join(fresh, d2, b"g")
    c.run_until(lambda: confchgs(a)[-1][1] == [(3, 302, cpg.REASON_JOIN)])
    # the new node learned node 1's process from node 1's JOINLIST during sync
    assert [(p.nodeid, p.pid) for p in fresh.host.services[2].procs] == [(1, 101), (3, 302)]
    assert confchgs(d2)[-1][0] == [(1, 101, 0), (3, 302, 0)]


def test_cmap_config_version_propagates_and_tracks():
    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1, n2 = c.nodes[1], c.nodes[2]
    # every node learned everyone's (absent → 0) config_version during sync
    assert n2.cmap.get("runtime.members.1.config_version") == 0
    watcher = FakeConn(pid=7)
    n2.host.ipc_handlers["cmap"].on_connect(watcher)
    key = b"runtime.members."
    n2.request("cmap", watcher, cmap.REQ_TRACK_ADD, struct.pack("<H6x256s", len(key), key)
               + struct.pack("<i4xQ", 2 | 4 | 8, 0xC00C1E))
    mid, payload, err = watcher.responses.pop()
    assert (mid, err) == (cmap.REQ_TRACK_ADD, 1)
    # an admin bumps totem.config_version on node 1 (the executive writes cmap directly)
    n1.cmap.set("totem.config_version", 5, CmapType.UINT64)
    c.run_until(lambda: all(c.nodes[i].cmap.get("runtime.members.1.config_version") == 5
                            for i in (1, 2, 3)))
    ev = [p for i, p, _ in watcher.events if i == cmap.RES_NOTIFY]
    inst, name, event, ntype, otype, nlen, olen = cmap.NOTIFY.unpack_from(ev[-1])
    assert (inst, event, ntype, otype, nlen, olen) == (0xC00C1E, 2, 8, 8, 8, 8)
    assert name[8:8 + 32].rstrip(b"\0") == b"runtime.members.1.config_version"
    assert ev[-1][cmap.NOTIFY.size:] == struct.pack("<QQ", 5, 0)


def test_crash_during_sync_aborts_and_resyncs():
    from corosync.exec.sync import SyncState

    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1, n2, n3 = (c.nodes[i] for i in (1, 2, 3))
    a, d = n1.client(11), n3.client(33)
    join(n1, a, b"g")
    join(n3, d, b"g")
    c.run_until(lambda: confchgs(a) and confchgs(a)[-1][0] == [(1, 11, 0), (3, 33, 0)])
    # make node 2 leave and come back so a new sync starts; crash node 3 in its middle
    c.crash(2)
    c.run_until(lambda: n1.host.sync.state in (SyncState.PROCESS, SyncState.BARRIER)
                and n1.host.members == (1, 3))
    c.crash(3)
    c.run_until(c.settled((1,)))
    assert n1.host.sync.stats.aborted >= 1
    assert confchgs(a)[-1] == ([(1, 11, 0)], [], [(3, 33, cpg.REASON_NODEDOWN)])
    assert not n1.host.sync_in_process


def test_lossy_network_same_order_and_confchgs():
    from corosync.exec.sim.network import LinkParams

    c = Cluster(3, link=LinkParams(delay=1, jitter=3, loss=0.05, dup=0.02), seed=7)
    c.run_until(c.settled((1, 2, 3)))
    clients = {}
    for i in (1, 2, 3):
        clients[i] = c.nodes[i].client(100 + i)
        join(c.nodes[i], clients[i], b"lossy")
    every = [(i, 100 + i, 0) for i in (1, 2, 3)]
    c.run_until(lambda: all(confchgs(x) and confchgs(x)[-1][0] == every
                            for x in clients.values()))
    for k in range(40):
        for i in (1, 2, 3):
            mcast(c.nodes[i], clients[i], b"%d:%d" % (i, k))
    c.run_until(lambda: all(len(delivered(x)) == 120 for x in clients.values()))
    assert delivered(clients[1]) == delivered(clients[2]) == delivered(clients[3])
    c.crash(2)
    c.run_until(c.settled((1, 3)))
    assert confchgs(clients[1])[-1] == confchgs(clients[3])[-1] == (
        [(1, 101, 0), (3, 103, 0)], [], [(2, 102, cpg.REASON_NODEDOWN)])
    assert c.net.stats.lost > 0


def test_malformed_exec_messages_through_the_ring_are_counted():
    from corosync.exec.service import REQ_HEADER, service_id_make
    from corosync.exec.totem.events import Guarantee

    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    bad = [b"\x01", REQ_HEADER.pack(service_id_make(2, 0), 168) + bytes(10),  # truncated
           cpg.encode_joinlist([(1, b"g")])[:-5],  # size field beyond the message
           cpg.encode_mcast(b"g", 1, 1, b"xyz")[:-2],  # msglen beyond the message
           REQ_HEADER.pack(service_id_make(2, 0), 168) + struct.pack("<I", 500) + bytes(148),
           cmap.encode_cmap_mcast(0, [cmap.McastItem("a.b.c", 12, b"x" * 40)])[:-30],
           REQ_HEADER.pack(service_id_make(2, 9), 16),  # unknown fn
           cmap.MCAST_HEADER.pack(0, 255, 0, 0)]  # cmap with 255 items
    n1 = c.nodes[1]
    for msg in bad:
        n1._mcast(b"a", msg, Guarantee.AGREED)
    n1._mcast(b"sync", b"\x05" + bytes(40), Guarantee.AGREED)  # unknown sync message
    c.apply(n1, [])
    c.run_until(lambda: all(sum(n.host.stats.dropped.values()) == len(bad)
                            for n in c.nodes.values()))
    for n in c.nodes.values():
        assert n.host.sync.stats.malformed == 1
        assert set(n.host.stats.dropped) == {"exec_short", "truncated", "cpg_bad_size",
                                             "cpg_bad_name", "cmap_bad_size", "exec_unknown_fn",
                                             "cmap_bad_count"}
    # still fully working
    a, b = n1.client(1), c.nodes[2].client(2)
    join(n1, a, b"g")
    join(c.nodes[2], b, b"g")
    mcast(n1, a, b"after")
    c.run_until(lambda: delivered(b) == [(1, 1, b"after")])


def _random_run(seed: int) -> tuple[int, int, int | None]:
    import random

    rng = random.Random(seed)
    c = Cluster(3, seed=seed)
    c.run_until(c.settled((1, 2, 3)))
    conns: list[tuple[int, FakeConn, bytes]] = []
    crashed = None
    pid = 1000
    for step in range(60):
        live = [i for i in c.nodes if c.nodes[i].up]
        r = rng.random()
        if r < 0.35 or not conns:
            nodeid = rng.choice(live)
            pid += 1
            conn = c.nodes[nodeid].client(pid)
            group = rng.choice([b"a", b"b", b"cc"])
            c.nodes[nodeid].request("cpg", conn, cpg.REQ_JOIN,
                                    cpg.encode_name(group) + struct.pack("<I4xI4x", pid, 0))
            conns.append((nodeid, conn, group))
        elif r < 0.7:
            nodeid, conn, _g = rng.choice(conns)
            if c.nodes[nodeid].up:
                mcast(c.nodes[nodeid], conn, b"s%d" % step)
        elif r < 0.85:
            nodeid, conn, g = conns.pop(rng.randrange(len(conns)))
            if c.nodes[nodeid].up:
                if rng.random() < 0.5:
                    c.nodes[nodeid].request("cpg", conn, cpg.REQ_LEAVE,
                                            cpg.encode_name(g) + struct.pack("<I4x", conn.pid))
                else:
                    c.nodes[nodeid].host.ipc_handlers["cpg"].on_disconnect(conn)
                    c.apply(c.nodes[nodeid], [])
        elif crashed is None and step > 20:
            crashed = rng.choice([2, 3])
            c.crash(crashed)
        try:
            c.run_until(lambda: False, rng.randint(0, 30))
        except AssertionError:
            pass
    live = tuple(i for i in c.nodes if c.nodes[i].up)
    c.run_until(c.settled(live))
    try:
        c.run_until(lambda: False, 2000)  # let every in-flight message land
    except AssertionError:
        pass
    views = {i: [(p.nodeid, p.pid, p.group) for p in c.nodes[i].host.services[2].procs]
             for i in live}
    first = views[live[0]]
    assert all(v == first for v in views.values()), (seed, views)
    return len(first), sum(len(delivered(conn)) for _n, conn, _g in conns), crashed
    assert all(n != crashed for n, _p, _g in first)
    # every live joined client's last confchg shows exactly its group's process list
    for nodeid, conn, group in conns:
        if nodeid in live and confchgs(conn):
            want = [(n, p, 0) for n, p, g in first if g == group]
            if (nodeid, conn.pid, 0) in want:
                assert confchgs(conn)[-1][0] == want, (seed, nodeid, conn.pid)


def test_random_operations_keep_process_lists_identical():
    results = [_random_run(seed) for seed in range(6)]
    # the runs did something: processes alive at the end, deliveries, a crash
    assert all(procs > 0 and deliveries > 0 for procs, deliveries, _c in results), results
    assert any(crashed for _p, _d, crashed in results)


def test_queue_flow_control_instead_of_drops():
    """Big CPG messages fill Totem's queue: the host raises every connection's flow-control
    word (clients then get TRY_AGAIN from their library) and lifts it when the queue drained;
    a client that honours it loses nothing."""
    c = Cluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1, n2 = c.nodes[1], c.nodes[2]
    sender, receiver = n1.client(1), n2.client(2)
    join(n1, sender, b"big")
    join(n2, receiver, b"big")
    c.run_until(lambda: confchgs(receiver) and len(confchgs(receiver)[-1][0]) == 2)
    waited_on_critical = []
    sent = 0
    while sent < 30:
        if sender.fc_level == 0:
            mcast(n1, sender, bytes([sent]) * 200_000)
            sent += 1
        else:
            waited_on_critical.append(n1.host.queue_critical)
            c.run_until(lambda: sender.fc_level == 0, 10_000)
    c.run_until(lambda: sum(e[0] == cpg.RES_DELIVER for e in receiver.events) == 30, 30_000)
    assert [d[2][:1] for d in delivered(receiver)] == [bytes([i]) for i in range(30)]
    assert n1.host.stats.ipc_dropped == 0 and n1.host.stats.queue_fc_changes >= 2
    assert waited_on_critical and all(waited_on_critical)  # we did wait on a critical queue
    assert not n1.host.queue_critical and sender.fc_level == 0 and receiver.fc_level == 0
