"""The token_received_hook seam and the transitional queue, including TotemPg on top."""

from __future__ import annotations

from corosync.exec.totem.events import Multicast

from test_srp_harness import Cluster, formed_cluster


def test_hook_runs_on_each_valid_token_and_may_send():
    c = formed_cluster(2)
    node = c.nodes[2]
    pending: list = []
    calls = []

    def hook():
        calls.append(node._aru)
        if len(calls) == 3:
            pending.extend(node.send(b"from-hook", 0, c.now))

    node.token_received_hook = hook
    sent_with_token = []
    c.observers.append(lambda n, a: sent_with_token.append(c.now)
                       if n == 2 and isinstance(a, Multicast) and a.data[3] == 1 else None)
    assert c.run_until(lambda: len(calls) >= 3, 5_000)
    t_hook = c.now
    assert c.run_until(lambda: c.payloads(1) == [b"from-hook"], 5_000)
    # queued inside the hook, multicast during that same token visit
    assert sent_with_token == [t_hook]
    assert all(not isinstance(a, Multicast) or a.data[3] != 5 for a in pending)


def test_transitional_queue_holds_old_traffic_until_trans_ack():
    c = Cluster([1, 2], trans_ack=False)
    c.start()
    assert c.run_until(c.ring_formed, 30_000)
    # before trans_ack: these go to the transitional queue and are sent
    c.send(1, b"sync-1")
    assert c.run_until(lambda: c.payloads(2)[-1:] == [b"sync-1"], 5_000)
    for i in (1, 2):
        c.apply(i, c.nodes[i].trans_ack(c.now))
    c.send(1, b"app-old")  # normal queue
    assert c.run_until(lambda: c.payloads(2)[-1:] == [b"app-old"], 5_000)
    # a membership change while more application traffic is queued
    c.crash(2)
    c.send(1, b"app-held")
    assert c.run_until(lambda: c.ring_formed([1]), 30_000)
    c.send(1, b"sync-2")  # after the change, before trans_ack: goes first
    c.run_for(500)
    assert c.payloads(1)[-1] == b"sync-2" and b"app-held" not in c.payloads(1)
    assert c.nodes[1].queue_space() == c.config.send_queue_max  # trans queue drained
    c.apply(1, c.nodes[1].trans_ack(c.now))
    assert c.run_until(lambda: c.payloads(1)[-1:] == [b"app-held"], 5_000)


def test_totempg_over_srp_three_nodes():
    from corosync.exec.totem.events import PgDeliver
    from corosync.exec.totem.pg import TotemPg

    c = Cluster([1, 2, 3])
    pgs = {i: TotemPg(c.nodes[i]) for i in c.nodes}
    got = {i: [] for i in c.nodes}
    c.drivers.update(pgs)  # the harness now drives TotemPg, which drives Srp
    c.observers.append(lambda i, a: got[i].append(a.message) if isinstance(a, PgDeliver) else None)
    c.start()
    assert c.run_until(c.ring_formed, 30_000)
    big = bytes(range(256)) * 400  # 100 KiB: fragmented over ~73 packets
    for k in range(30):
        src = 1 + k % 3
        c.apply(src, pgs[src].mcast([b"g"], b"m%d" % k, 0, c.now))
    c.apply(2, pgs[2].mcast([b"g"], big, 1, c.now))
    assert c.run_until(lambda: all(len(got[i]) == 31 for i in (1, 2, 3)), 30_000)
    assert got[1] == got[2] == got[3]
    assert big in got[1]
