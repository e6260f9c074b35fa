"""The quorum + votequorum services on simulated clusters (tests/svc_sim.py): each side
of a partition reaches the quorate flag the arithmetic says, logs like the real daemon,
and clients get the notifications corosync sends."""

from __future__ import annotations

import struct

import pytest
from svc_sim import QCluster

from corosync.lib.proto import quorum as qp
from corosync.lib.proto import votequorum as vp
from corosync.services.votequorum import encode_nodeinfo


def quorate(c: QCluster) -> dict[int, bool]:
    return {i: n.quorum.quorate for i, n in c.nodes.items() if n.up}


def test_three_nodes_form_quorate_cluster_and_log_like_corosync():
    c = QCluster(3)
    c.run_until(c.settled((1, 2, 3)))
    assert quorate(c) == {1: True, 2: True, 3: True}
    logs = c.nodes[1].logs
    assert "[QUORUM] Using quorum provider corosync_votequorum" in logs
    assert "[QUORUM] Sync members[3]: 1 2 3" in logs
    assert "[QUORUM] This node is within the primary component and will provide service." in logs
    assert logs[-1] == "[MAIN] Completed service synchronization, ready to provide service."
    assert "[QUORUM] Members[3]: 1 2 3" in logs
    cm = c.nodes[2].cmap
    assert cm.get("runtime.votequorum.this_node_id") == 2
    assert cm.get("runtime.votequorum.lowest_node_id") == 1
    assert cm.get("runtime.votequorum.highest_node_id") == 3
    assert cm.get("runtime.votequorum.ev_barrier") == 3
    assert cm.get("runtime.votequorum.two_node") == 0


def test_five_node_partition_3_2_then_heal():
    c = QCluster(5)
    c.run_until(c.settled((1, 2, 3, 4, 5)))
    c.partition((1, 2, 3), (4, 5))
    c.run_until(c.settled((1, 2, 3), (4, 5)))
    assert quorate(c) == {1: True, 2: True, 3: True, 4: False, 5: False}
    assert ("[QUORUM] This node is within the non-primary component and will NOT provide "
            "any services.") in c.nodes[4].logs
    assert "[QUORUM] Sync left[2]: 4 5" in c.nodes[1].logs
    c.heal()
    c.run_until(c.settled((1, 2, 3, 4, 5)))
    assert all(quorate(c).values())
    assert "[QUORUM] Sync joined[2]: 4 5" in c.nodes[1].logs


def test_five_node_partition_2_2_1_nobody_quorate():
    c = QCluster(5)
    c.run_until(c.settled((1, 2, 3, 4, 5)))
    c.partition((1, 2), (3, 4), (5,))
    c.run_until(c.settled((1, 2), (3, 4), (5,)))
    assert not any(quorate(c).values())


def test_two_node_wait_for_all_needs_both_nodes_once():
    c = QCluster(2, two_node=1)
    c.partition((1,), (2,))
    c.run_until(c.settled((1,), (2,)))
    assert quorate(c) == {1: False, 2: False}
    assert any("Waiting for all cluster members. Current votes: 1 expected_votes: 2" in line
               for line in c.nodes[1].logs)
    assert c.nodes[1].cmap.get("runtime.votequorum.wait_for_all_status") == 1
    c.heal()
    c.run_until(c.settled((1, 2)))
    assert quorate(c) == {1: True, 2: True}
    c.partition((1,), (2,))
    c.run_until(c.settled((1,), (2,)))
    assert quorate(c) == {1: True, 2: True}  # two_node keeps both after the first meeting


def test_last_man_standing_downscales_after_window():
    c = QCluster(4, last_man_standing=1, last_man_standing_window=1000)
    c.run_until(c.settled((1, 2, 3, 4)))
    c.crash(4)
    c.run_until(c.settled((1, 2, 3)))
    assert quorate(c) == {1: True, 2: True, 3: True}
    c.run_for(1500)  # window elapses: expected votes follow the 3 members
    assert c.nodes[1].vq.vq.us.expected_votes == 3
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    c.run_for(1500)
    assert c.nodes[1].vq.vq.us.expected_votes == 2
    assert quorate(c) == {1: True, 2: True}


def test_sync_sends_own_nodeinfo_before_qdevice_nodeinfo():
    c = QCluster(2)
    sent: list[bytes] = []
    node = c.nodes[1]
    orig = node._mcast

    def spy(group, message, guarantee):
        if group == b"a":
            sent.append(message)
        orig(group, message, guarantee)
    node.host._mcast = spy
    c.run_until(c.settled((1, 2)))
    infos = [struct.unpack_from("<I", m, 16)[0] for m in sent
             if struct.unpack_from("<I", m)[0] == 0x00050000]
    assert infos[:2] == [1, 0]
    first = next(m for m in sent if struct.unpack_from("<I", m)[0] == 0x00050000)
    assert len(first) == 32


def test_qdevice_nodeinfo_from_unknown_sender_is_dropped_and_counted():
    c = QCluster(1)
    c.run_until(c.settled((1,)))
    node = c.nodes[1]
    node.host._dispatch(9, encode_nodeinfo(0, 1, 0, 0), False)
    assert node.host.stats.dropped.get("vq_qdevice_unknown_sender") == 1
    node.host._dispatch(1, b"\x00\x00\x05\x00" + bytes(8), False)  # truncated
    assert node.host.stats.dropped.get("truncated", 0) + node.host.stats.dropped.get(
        "exec_short", 0) >= 1
    assert node.quorum.quorate


def test_quorum_client_notifications_v0_and_v1():
    c = QCluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1 = c.nodes[1]
    v0 = n1.connect("quorum")
    n1.request("quorum", v0, qp.REQ_GETTYPE, b"")
    assert v0.responses[-1][0] == qp.RES_GETTYPE
    assert qp.decode_u32(v0.responses[-1][1], "t") == qp.QUORUM_SET
    n1.request("quorum", v0, qp.REQ_GETQUORATE, b"")
    assert v0.responses[-1] == (qp.RES_GETQUORATE, qp.encode_u32(1), 1)
    n1.request("quorum", v0, qp.REQ_TRACKSTART, qp.encode_u32(1 | 2))
    ev = qp.Notification.decode(v0.events[-1][1])
    assert v0.events[-1][0] == qp.EV_NOTIFICATION
    assert ev.quorate and ev.view_list == (1, 2, 3)
    assert ev.ring_seq == n1.host.ring_id.seq
    v1 = n1.connect("quorum")
    n1.request("quorum", v1, qp.REQ_MODEL_GETTYPE, qp.encode_u32(1))
    assert v1.responses[-1][0] == qp.RES_MODEL_GETTYPE
    n1.request("quorum", v1, qp.REQ_TRACKSTART, qp.encode_u32(2))
    assert [e[0] for e in v1.events] == [qp.EV_V1_NODELIST_NOTIFICATION,
                                         qp.EV_V1_QUORUM_NOTIFICATION]
    n1.request("quorum", v1, qp.REQ_TRACKSTART, qp.encode_u32(2))
    assert v1.responses[-1][2] == 14  # CS_ERR_EXIST
    v0.events.clear()
    v1.events.clear()
    c.partition((1,), (2, 3))
    c.run_until(c.settled((1,), (2, 3)))
    ev = qp.Notification.decode(v0.events[-1][1])
    assert not ev.quorate and ev.view_list == (1,)
    nl = [qp.V1NodelistNotification.decode(e[1]) for e in v1.events
          if e[0] == qp.EV_V1_NODELIST_NOTIFICATION][-1]
    assert nl.members == (1,) and nl.left == (2, 3) and nl.joined == ()
    n1.request("quorum", v0, qp.REQ_TRACKSTOP, b"")
    assert v0.responses[-1] == (qp.RES_TRACKSTOP, b"", 1)


def test_votequorum_getinfo_and_tracking():
    c = QCluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1 = c.nodes[1]
    conn = n1.connect("votequorum")
    n1.request("votequorum", conn, vp.REQ_GETINFO, vp.enc_getinfo(0))
    rid, body, err = conn.responses[-1]
    assert (rid, len(body) + 24, err) == (vp.RES_GETINFO, 320, 1)
    info = vp.NodeInfo.decode(body)
    assert (info.nodeid, info.state, info.votes, info.expected_votes, info.highest_expected,
            info.total_votes, info.quorum) == (1, 1, 1, 3, 3, 3, 2)
    assert info.flags == vp.INFO_QUORATE
    n1.request("votequorum", conn, vp.REQ_GETINFO, vp.enc_getinfo(42))
    assert conn.responses[-1][2] == 12 and len(conn.responses[-1][1]) == 296
    n1.request("votequorum", conn, vp.REQ_TRACKSTART, vp.enc_trackstart(77, 1 | 2))
    kinds = [e[0] for e in conn.events]
    assert kinds == [vp.EV_NODELIST_NOTIFICATION, vp.EV_QUORUM_NOTIFICATION]
    nl = vp.NodelistNotification.decode(conn.events[0][1])
    assert nl.context == 77 and nl.nodes == (1, 2, 3)
    assert (nl.ring_nodeid, nl.ring_seq) == (n1.host.ring_id.rep, n1.host.ring_id.seq)
    qn = vp.QuorumNotification.decode(conn.events[1][1])
    assert qn.quorate and qn.nodes == ((2, 1), (3, 1), (1, 1))  # corosync's list order (vq_math.listed_nodes)
    conn.events.clear()
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    qn = vp.QuorumNotification.decode(conn.events[-1][1])
    assert qn.context == 77 and qn.nodes == ((2, 1), (3, 2), (1, 1))
    n1.request("votequorum", conn, vp.REQ_TRACKSTOP, b"")
    assert conn.responses[-1][2] == 1
    n1.request("votequorum", conn, vp.REQ_TRACKSTOP, b"")
    assert conn.responses[-1][2] == 12


def test_setexpected_and_setvotes_through_the_ring():
    c = QCluster(3)
    c.run_until(c.settled((1, 2, 3)))
    n1 = c.nodes[1]
    conn = n1.connect("votequorum")
    n1.request("votequorum", conn, vp.REQ_SETEXPECTED, vp.enc_setexpected(2))
    assert conn.responses[-1] == (vp.RES_STATUS, b"", 7)  # below total votes
    tracker = c.nodes[2].connect("votequorum")
    c.nodes[2].request("votequorum", tracker, vp.REQ_TRACKSTART, vp.enc_trackstart(5, 2))
    n1.request("votequorum", conn, vp.REQ_SETEXPECTED, vp.enc_setexpected(5))
    assert conn.responses[-1] == (vp.RES_STATUS, b"", 1)
    c.run_until(lambda: all(n.vq.vq.us.expected_votes == 5 for n in c.nodes.values()))
    assert all(n.vq.vq.quorum == 3 for n in c.nodes.values())
    ev = [e for e in tracker.events if e[0] == vp.EV_EXPECTEDVOTES_NOTIFICATION][-1]
    assert vp.ExpectedVotesNotification.decode(ev[1]) == vp.ExpectedVotesNotification(5, 5)
    n1.request("votequorum", conn, vp.REQ_SETVOTES, vp.enc_setvotes(2, 3))
    assert conn.responses[-1][2] == 1
    c.run_until(lambda: all(n.vq.vq.nodes[3].votes == 2 for n in c.nodes.values()))
    n1.request("votequorum", conn, vp.REQ_SETVOTES, vp.enc_setvotes(1, 99))
    assert conn.responses[-1][2] == 17  # NAME_NOT_FOUND


def test_disabled_without_provider():
    c = QCluster(1)
    node = c.nodes[1]
    assert "votequorum" in node.host.ipc_handlers
    from corosync.exec.cmap import CmapStore
    from corosync.exec.host import ServiceHost
    from corosync.services.quorum import QuorumService
    from corosync.services.votequorum import VotequorumService
    host = ServiceHost(1, CmapStore(), lambda g, m, q: None,
                       services=[QuorumService, VotequorumService])
    assert "votequorum" not in host.ipc_handlers
    assert host.services[3].quorate and host.services[3].quorum_type == 0
    assert sorted(host.sync.services) == [3]  # votequorum takes no part in sync


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\xff" * 3])
def test_malformed_lib_requests_are_answered(payload):
    c = QCluster(1)
    c.run_until(c.settled((1,)))
    n1 = c.nodes[1]
    conn = n1.connect("votequorum")
    for req in range(10):
        n1.request("votequorum", conn, req, payload)
    assert len(conn.responses) == 10
    qc = n1.connect("quorum")
    for req in range(5):
        n1.request("quorum", qc, req, payload)
    assert len(qc.responses) == 5


def test_cancel_wait_for_all_through_cmap():
    from corosync.exec.cmap import CmapType
    c = QCluster(3, wait_for_all=1)
    c.partition((1, 2), (3,))
    c.run_until(c.settled((1, 2), (3,)))
    assert quorate(c) == {1: False, 2: False, 3: False}
    assert c.nodes[1].cmap.get("runtime.votequorum.wait_for_all_status") == 1
    c.nodes[1].cmap.set("quorum.cancel_wait_for_all", 1, CmapType.UINT8)
    assert c.nodes[1].cmap.get("quorum.cancel_wait_for_all") == 0
    c.run_until(lambda: c.nodes[1].quorum.quorate and c.nodes[2].quorum.quorate)
    assert not c.nodes[3].quorum.quorate
    assert "[VOTEQ] wait_for_all_status reset by user on node 1." in c.nodes[2].logs


def test_runtime_config_reload_changes_expected_votes():
    from corosync.exec.cmap import CmapType
    c = QCluster(3)
    c.run_until(c.settled((1, 2, 3)))
    tracker = c.nodes[3].connect("votequorum")
    c.nodes[3].request("votequorum", tracker, vp.REQ_TRACKSTART, vp.enc_trackstart(9, 2))
    for node in c.nodes.values():  # what a config reload does on every node
        node.cmap.set("config.totemconfig_reload_in_progress", 1, CmapType.UINT8)
        node.cmap.set("quorum.expected_votes", 5, CmapType.UINT32)
        node.cmap.set("config.totemconfig_reload_in_progress", 0, CmapType.UINT8)
    c.run_until(lambda: all(n.vq.vq.us.expected_votes == 5 and n.vq.vq.quorum == 3
                            for n in c.nodes.values()))
    assert all(n.quorum.quorate for n in c.nodes.values())
    assert any(e[0] == vp.EV_EXPECTEDVOTES_NOTIFICATION for e in tracker.events)
    assert c.nodes[1].cmap.get("runtime.votequorum.ev_barrier") == 5


def test_runtime_config_error_keeps_running_data():
    from corosync.exec.cmap import CmapType
    c = QCluster(2)
    c.run_until(c.settled((1, 2)))
    n1 = c.nodes[1]
    n1.cmap.set("quorum.device.model", "net", CmapType.STRING)
    n1.cmap.set("quorum.two_node", 1, CmapType.UINT8)  # two_node + qdevice: refused
    assert "[VOTEQ] will continue with current runtime data" in n1.logs
    assert n1.vq.vq.quorum == 2 and n1.quorum.quorate


def test_startup_logs_and_refused_configurations():
    from corosync.exec.cmap import CmapStore, CmapType
    from corosync.exec.host import ServiceHost
    from corosync.services.quorum import QuorumService
    from corosync.services.vq_math import ConfigError
    from corosync.services.votequorum import VotequorumService

    logs: list[str] = []
    cm = CmapStore()
    cm.set("quorum.provider", "corosync_votequorum", CmapType.STRING)
    cm.set("quorum.expected_votes", 2, CmapType.UINT32)
    ServiceHost(1, cm, lambda g, m, q: None, services=[VotequorumService, QuorumService],
                log=lambda lvl, sub, text: logs.append(f"[{sub}] {text}"))
    assert logs[:3] == ["[QUORUM] Using quorum provider corosync_votequorum",
                        "[SERV] Service engine loaded: corosync vote quorum service v1.0 [5]",
                        "[SERV] Service engine loaded: corosync cluster quorum service v0.1 [3]"]
    bad = CmapStore()
    bad.set("quorum.provider", "corosync_votequorum", CmapType.STRING)  # no nodelist/expected
    logs.clear()
    with pytest.raises(ConfigError, match="nodelist or quorum.expected_votes"):
        ServiceHost(1, bad, lambda g, m, q: None, services=[VotequorumService, QuorumService],
                    log=lambda lvl, sub, text: logs.append(f"[{sub}] {text}"))
    assert "[QUORUM] Quorum provider: corosync_votequorum failed to initialize." in logs
    other = CmapStore()
    other.set("quorum.provider", "corosync_ykd", CmapType.STRING)
    with pytest.raises(ValueError, match="Invalid quorum provider"):
        ServiceHost(1, other, lambda g, m, q: None, services=[QuorumService])


def test_expected_votes_tracking_survives_restart(tmp_path):
    import struct as st

    from corosync.exec.cmap import CmapType
    from corosync.exec.host import ServiceHost
    from corosync.services.quorum import QuorumService
    from corosync.services.votequorum import VotequorumService
    from svc_sim import make_cmap

    def host(expected: int) -> ServiceHost:
        cm = make_cmap(1, 3, {"quorum.provider": "corosync_votequorum",
                              "quorum.expected_votes_tracking": 1,
                              "quorum.expected_votes": expected})
        cm.set("system.state_dir", str(tmp_path), CmapType.STRING)
        return ServiceHost(1, cm, lambda g, m, q: None,
                           services=[VotequorumService, QuorumService])

    h = host(5)
    assert (tmp_path / "ev_tracking").read_bytes() == st.pack("<I", 5)
    assert h.services[5].vq.us.expected_votes == 5
    h = host(3)  # configured lower after a restart: the barrier keeps 5
    assert h.services[5].vq.us.expected_votes == 5
    assert h.cmap.get("runtime.votequorum.ev_tracking_barrier") == 5
    (tmp_path / "ev_tracking").write_bytes(b"\x01")  # short file counts as 0
    h = host(3)
    assert h.services[5].vq.us.expected_votes == 3
    assert (tmp_path / "ev_tracking").read_bytes() == st.pack("<I", 3)


def test_allow_downscale_clean_exit_marks_node_leaving_in_the_ring(tmp_path):
    c = QCluster(3, state_dir=str(tmp_path), allow_downscale=1)
    c.run_until(c.settled((1, 2, 3)))
    assert all(n.vq.vq.quorum == 2 for n in c.nodes.values())
    c.nodes[3].host.exec_exit()  # clean shutdown: NODEINFO with LEAVING goes out first
    c.run_until(lambda: all(c.nodes[i].vq.vq.nodes[3].state == 3 for i in (1, 2)))
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    assert c.nodes[1].quorum.quorate and c.nodes[2].quorum.quorate
    assert (tmp_path / "n1" / "ev_tracking").read_bytes() == (3).to_bytes(4, "little")
    info = c.nodes[1].connect("votequorum")
    c.nodes[1].request("votequorum", info, vp.REQ_GETINFO, vp.enc_getinfo(0))
    assert vp.NodeInfo.decode(info.responses[-1][1]).flags & vp.INFO_ALLOW_DOWNSCALE
