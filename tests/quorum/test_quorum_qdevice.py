"""A quorum device on simulated 2-node clusters (services/votequorum.py): register (answered
when the QDEVICE_REG went round), poll with the current ring id, master_wins, update,
unregister; the device's vote decides which half of a split stays quorate."""

from __future__ import annotations

import attrs
from svc_sim import QCluster

from corosync.lib.proto import votequorum as vp

NAME = "Qdevice"


def qcluster() -> QCluster:
    c = QCluster(2, **{"device.model": "net", "device.votes": 1})
    c.run_until(c.settled((1, 2)))
    return c


def register(c: QCluster, i: int):
    node = c.nodes[i]
    conn = node.connect("votequorum")
    node.request("votequorum", conn, vp.REQ_QDEVICE_REGISTER, vp.enc_qdevice_name(NAME))
    c.run_until(lambda: conn.responses != [])
    assert conn.responses[-1] == (vp.RES_STATUS, b"", 1)
    return conn


def poll(c: QCluster, i: int, conn, cast: bool) -> int:
    node = c.nodes[i]
    ring = node.vq.ring_id
    node.request("votequorum", conn, vp.REQ_QDEVICE_POLL,
                 vp.enc_qdevice_poll(NAME, cast, ring.rep, ring.seq))
    return conn.responses[-1][2]


def test_register_poll_and_split_decided_by_the_device():
    c = qcluster()
    assert c.nodes[1].vq.vq.us.expected_votes == 3
    assert c.nodes[1].cmap.get("runtime.votequorum.qdevice_can_operate") == 1
    q1, q2 = register(c, 1), register(c, 2)
    assert poll(c, 1, q1, True) == 1 and poll(c, 2, q2, True) == 1
    cast = 64  # NodeFlag.QDEVICE_CAST_VOTE, as delivered in the other node's NODEINFO
    c.run_until(lambda: all(c.nodes[i].vq.vq.nodes[j].flags & cast
                            for i in (1, 2) for j in (1, 2)))
    assert all(n.vq.vq.totals() == (3, 3) for n in c.nodes.values())
    info_conn = c.nodes[1].connect("votequorum")
    c.nodes[1].request("votequorum", info_conn, vp.REQ_GETINFO, vp.enc_getinfo(1))
    info = vp.NodeInfo.decode(info_conn.responses[-1][1])
    assert info.flags & vp.INFO_QDEVICE_REGISTERED and info.flags & vp.INFO_QDEVICE_CAST_VOTE
    assert (info.qdevice_votes, info.qdevice_name, info.total_votes) == (1, NAME, 3)
    # the tracker sees the device as node 0
    c.nodes[1].request("votequorum", info_conn, vp.REQ_TRACKSTART, vp.enc_trackstart(1, 1))
    qn = vp.QuorumNotification.decode(info_conn.events[-1][1])
    assert qn.nodes[-1] == (0, 0)  # corosync never sets the device entry's state
    # split: the device (ffsplit) votes for node 1 only
    c.partition((1,), (2,))
    # each node's sync waits for its device's poll with the new ring id (qnetd decided)
    c.run_until(lambda: all(c.nodes[i].vq._sync_wait_poll and c.nodes[i].host.members == (i,)
                            for i in (1, 2)))
    assert poll(c, 1, q1, True) == 1 and poll(c, 2, q2, False) == 1
    c.run_until(c.settled((1,), (2,)))
    c.run_until(lambda: c.nodes[1].quorum.quorate)
    c.run_for(200)
    assert c.nodes[1].quorum.quorate and not c.nodes[2].quorum.quorate
    # a poll with a stale ring id is refused
    c.nodes[1].request("votequorum", q1, vp.REQ_QDEVICE_POLL, vp.enc_qdevice_poll(NAME, True, 1, 1))
    assert q1.responses[-1][2] == 22  # MESSAGE_ERROR


def test_qdevice_errors_master_wins_update_unregister():
    c = qcluster()
    n1 = c.nodes[1]
    conn = n1.connect("votequorum")
    n1.request("votequorum", conn, vp.REQ_QDEVICE_UNREGISTER, vp.enc_qdevice_name(NAME))
    assert conn.responses[-1][2] == 12  # NOT_EXIST
    q = register(c, 1)
    n1.request("votequorum", conn, vp.REQ_QDEVICE_REGISTER, vp.enc_qdevice_name("Other"))
    assert conn.responses[-1][2] == 14  # EXIST
    n1.request("votequorum", q, vp.REQ_QDEVICE_MASTER_WINS, vp.enc_qdevice_master_wins(NAME, True))
    assert q.responses[-1][2] == 1
    assert n1.cmap.get("runtime.votequorum.qdevice_master_wins") == 1
    n1.request("votequorum", q, vp.REQ_QDEVICE_POLL, vp.enc_qdevice_poll("Bad", True, 0, 0))
    assert q.responses[-1][2] in (7, 22)
    n1.request("votequorum", q, vp.REQ_QDEVICE_UPDATE, vp.enc_qdevice_update(NAME, "Renamed"))
    assert q.responses[-1][2] == 1
    c.run_until(lambda: c.nodes[2].vq.qdevice_name == "Renamed")
    n1.request("votequorum", q, vp.REQ_QDEVICE_UNREGISTER, vp.enc_qdevice_name("Renamed"))
    assert q.responses[-1][2] == 1
    assert not n1.vq.vq.us.flags & 16


def test_qdevice_registration_without_device_config_like_corosync():
    """corosync 3.1.7 accepts a registration even without ``quorum.device`` (checked live in
    test_quorum_stock_tools.py); only a configuration error disables it (CS_ERR_ACCESS)."""
    c = QCluster(2)
    c.run_until(c.settled((1, 2)))
    assert "runtime.votequorum.qdevice_can_operate" not in c.nodes[1].cmap
    register(c, 1)
    n2 = c.nodes[2]
    n2.vq.vq.config = attrs.evolve(n2.vq.vq.config, qdevice_can_operate=False)
    conn = n2.connect("votequorum")
    n2.request("votequorum", conn, vp.REQ_QDEVICE_REGISTER, vp.enc_qdevice_name(NAME))
    assert conn.responses[-1] == (vp.RES_STATUS, b"", 11)  # ACCESS


def test_sync_waits_for_the_device_poll_then_times_out():
    from corosync.exec.cmap import CmapType

    c = qcluster()
    for node in c.nodes.values():
        node.cmap.set("quorum.device.sync_timeout", 2000, CmapType.UINT32)
        node.cmap.set("quorum.device.timeout", 3000, CmapType.UINT32)
    q1 = register(c, 1)
    assert poll(c, 1, q1, True) == 1
    c.partition((1,), (2,))
    # node 1's sync cannot finish before its device polled with the new ring id
    c.run_until(lambda: c.nodes[1].vq._sync_wait_poll and c.nodes[1].host.members == (1,))
    c.run_for(500)
    assert c.nodes[1].host.sync_in_process
    assert any("waiting for quorum device Qdevice poll (but maximum for 2000 ms)" in line
               for line in c.nodes[1].logs)
    assert poll(c, 1, q1, True) == 1
    c.run_until(lambda: not c.nodes[1].host.sync_in_process, 1000)
    assert c.nodes[1].quorum.quorate  # 1 node vote + 1 device vote of 3
    # next membership change: no poll this time -> sync ends at sync_timeout, vote lost
    c.heal()
    c.run_until(lambda: c.nodes[1].host.members == (1, 2))
    t0 = c.now
    c.run_until(lambda: not c.nodes[1].host.sync_in_process, 5000)
    assert c.now - t0 >= 1900
    assert "[VOTEQ] lost contact with quorum device Qdevice" in c.nodes[1].logs
    c.run_until(lambda: not c.nodes[1].vq.vq.qdevice_counts(), 1000)
