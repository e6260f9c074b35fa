"""Three Node drivers in one trio loop (real config model, Srp, TotemPg, udpu sockets on
127.0.0.1-3): agreed ordering of application messages end to end through the driver,
flow control surfacing as QueueFull, and the ring-id file following the ring."""

from __future__ import annotations

import io
import struct

import trio

from exec_testlib import node_config, pick_port

from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.config.model import load_config
from corosync.exec.log import CorosyncLog
from corosync.exec.node import Node
from corosync.exec.totem.events import Guarantee
from corosync.exec.transport import make_transport

IPS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def build(tmp_path, port, token=300):
    """Three nodes in one process.  ``token``: the ordering test asserts that no
    reconfiguration happens under load, so it gives the ring a token timeout that a busy
    test machine (one loop running three nodes) cannot miss."""
    nodes = []
    members = [(i + 1, ip) for i, ip in enumerate(IPS)]
    for nodeid, ip in members:
        d = tmp_path / f"n{nodeid}"
        (d / "state").mkdir(parents=True)  # main.py creates it for the daemon
        text = node_config(nodeid=nodeid, nodes=members, port=port, directory=d,
                           token=token)
        cfg = load_config(str(d / "corosync.conf"), text=text, local_addrs=[ip])
        log = CorosyncLog(stderr=io.StringIO())
        log.configure(cfg.logging)
        cmap = CmapStore()
        cmap.load_config(cfg)
        node = Node(cfg, log=log, transport=make_transport(cfg), cmap=cmap)
        nodes.append(node)
    return nodes


async def wait(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_three_drivers_deliver_identical_order(tmp_path):
    port = pick_port(IPS)
    nodes = build(tmp_path, port, token=3000)
    got: dict[int, list[tuple[int, bytes]]] = {n.nodeid: [] for n in nodes}
    for n in nodes:
        n.deliver_handlers.append(lambda d, nid=n.nodeid: got[nid].append((d.sender, d.message)))
    per_node = 3000
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        await wait(lambda: all(n.members == (1, 2, 3) for n in nodes))
        ring = nodes[0].ring_id

        async def sender(node: Node) -> None:
            i = 0
            while i < per_node:
                msg = struct.pack("<II", node.nodeid, i) + bytes(i % 200)
                try:
                    node.mcast([b"a"], msg, Guarantee.AGREED)
                    i += 1
                except Exception as exc:  # QueueFull: wait for the token to move
                    assert type(exc).__name__ == "QueueFull"
                    await trio.sleep(0.005)
                if i % 50 == 0:
                    await trio.sleep(0)

        async with trio.open_nursery() as senders:
            for n in nodes:
                senders.start_soon(sender, n)
        total = per_node * len(nodes)
        await wait(lambda: all(len(v) == total for v in got.values()), timeout=30)
        assert got[1] == got[2] == got[3]
        # per-sender FIFO
        for nodeid in (1, 2, 3):
            seq = [struct.unpack_from("<I", m, 4)[0] for s, m in got[1] if s == nodeid]
            assert seq == list(range(per_node))
        assert all(n.ring_id == ring for n in nodes), "no reconfiguration under load"

        # Flow control: a tight loop of 1400-byte messages must hit QueueFull (the send
        # queue holds send_queue_max packets) and everything accepted is delivered.
        for v in got.values():
            v.clear()
        accepted = 0
        refused = None
        for i in range(10_000):
            try:
                nodes[0].mcast([b"a"], bytes([i % 256]) * 1400, Guarantee.AGREED)
                accepted += 1
            except Exception as exc:
                refused = exc
                break
        assert type(refused).__name__ == "QueueFull", refused
        assert 0 < accepted < 10_000
        await wait(lambda: all(len(v) == accepted for v in got.values()), timeout=30)
        assert got[1] == got[2] == got[3]
        for n in nodes:
            n.stop()
    # Each node persisted the last ring it adopted: the test's ring, or a later one the
    # remaining nodes formed while the first ones were leaving.
    for n in nodes:
        path = tmp_path / f"n{n.nodeid}" / "state" / f"ringid_{n.nodeid}"
        stored = struct.unpack("=Q", path.read_bytes())[0]
        assert stored == n.ring_id.seq and stored >= ring.seq


async def test_cmap_runtime_and_stats_keys(tmp_path):
    port = pick_port(IPS)
    nodes = build(tmp_path, port)
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await nursery.start(n.run)
        await wait(lambda: all(n.members == (1, 2, 3) for n in nodes))
        nodes[2].stop()
        await wait(lambda: nodes[0].members == (1, 2))
        nodes[0]._publish_stats()
        cmap = nodes[0].cmap
        for nid, ip in ((1, "127.0.0.1"), (2, "127.0.0.2"), (3, "127.0.0.3")):
            assert cmap.get(f"runtime.members.{nid}.ip") == f"r(0) ip({ip}) "
            assert cmap.get_type(f"runtime.members.{nid}.join_count") == CmapType.UINT32
        assert cmap.get("runtime.members.3.status") == "left"
        assert cmap.get("runtime.members.2.status") == "joined"
        assert cmap.get("runtime.config.totem.token") == 300
        assert cmap.get_type("stats.srp.orf_token_rx") == CmapType.UINT64
        assert cmap.get("stats.srp.orf_token_rx") > 0
        assert cmap.get("stats.srp.operational_entered") >= 2
        assert cmap.get_type("stats.pg.msg_queue_avail") == CmapType.UINT32
        # refreshed on publish: a live ring got a token moments ago (not "since the epoch")
        assert cmap.get_type("stats.srp.time_since_token_last_received") == CmapType.UINT64
        assert 0 <= cmap.get("stats.srp.time_since_token_last_received") < 10_000
        assert cmap.get_type("stats.srp.continuous_sendmsg_failures") == CmapType.UINT32
        for n in nodes[:2]:
            n.stop()
