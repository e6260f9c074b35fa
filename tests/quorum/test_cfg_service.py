"""The cfg service (services/cfg.py) on simulated clusters: node data for cfgtool, KILLNODE,
shutdown with tracking and vetoes, cluster-wide reload."""

from __future__ import annotations

import struct

import pytest
from svc_sim import QCluster

from corosync.exec.cmap import CmapType
from corosync.lib.proto import cfg as cp


def cluster(n: int = 3) -> QCluster:
    c = QCluster(n)
    c.run_until(c.settled(tuple(range(1, n + 1))))
    for node in c.nodes.values():
        for i in range(1, n + 1):
            node.cmap.set(f"runtime.members.{i}.status", "joined", CmapType.STRING)
    return c


def test_node_data_for_cfgtool():
    c = cluster()
    n1 = c.nodes[1]
    conn = n1.connect("cfg")
    n1.request("cfg", conn, cp.REQ_LOCAL_GET, b"")
    assert conn.responses[-1] == (cp.RES_LOCAL_GET, cp.enc_u32(1), 1)
    n1.request("cfg", conn, cp.REQ_GET_NODE_ADDRS, cp.GetNodeAddrsRequest(2).encode())
    rid, body, err = conn.responses[-1]
    assert (rid, err) == (cp.RES_GET_NODE_ADDRS, 1)
    assert cp.GetNodeAddrsResponse.decode(body).addresses() == ["127.0.0.2"]
    n1.request("cfg", conn, cp.REQ_GET_NODE_ADDRS, cp.GetNodeAddrsRequest(0).encode())
    assert cp.GetNodeAddrsResponse.decode(conn.responses[-1][1]).addresses() == ["127.0.0.1"]
    n1.request("cfg", conn, cp.REQ_GET_NODE_ADDRS, cp.GetNodeAddrsRequest(9).encode())
    assert conn.responses[-1][2] == 12  # NOT_EXIST
    n1.request("cfg", conn, cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(3))
    rid, body, err = conn.responses[-1]
    assert (rid, len(body) + 24, err) == (cp.RES_NODESTATUSGET, 4200, 1)
    st = cp.NodeStatus.decode(body)
    assert st.reachable and st.links[0] == cp.LinkStatus(True, True, False, 1410, "127.0.0.3", "")
    c.crash(3)
    c.run_until(c.settled((1, 2)))
    n1.request("cfg", conn, cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(3))
    st = cp.NodeStatus.decode(conn.responses[-1][1])
    assert not st.reachable and st.links[0].enabled and not st.links[0].connected
    n1.request("cfg", conn, cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(3, 2))
    assert conn.responses[-1] == (cp.RES_NODESTATUSGET, cp.enc_u32(2), 19)
    n1.request("cfg", conn, cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(42))
    rid, body, err = conn.responses[-1]  # as Debian's udpu node: OK, nothing known
    assert err == 1 and cp.NodeStatus.decode(body) == cp.NodeStatus(
        42, False, links=(cp.LinkStatus(),) * 8)
    n1.cfg.api.node_status = lambda nodeid: None  # type: ignore[attr-defined]
    n1.request("cfg", conn, cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(42))
    assert conn.responses[-1][2] == 21  # FAILED_OPERATION from the transport hook
    del n1.cfg.api.node_status
    n1.request("cfg", conn, cp.REQ_RINGSTATUSGET, b"")
    rs = cp.RingStatus.decode(conn.responses[-1][1])
    assert rs.interfaces == (("0 127.0.0.1", "OK"),)
    n1.request("cfg", conn, cp.REQ_RINGREENABLE, b"")
    assert conn.responses[-1] == (cp.RES_RINGREENABLE, b"", 19)


def test_killnode_kills_only_the_target():
    c = cluster()
    n1 = c.nodes[1]
    conn = n1.connect("cfg")
    n1.request("cfg", conn, cp.REQ_KILLNODE, cp.enc_killnode(7, "x"))
    assert conn.responses[-1] == (cp.RES_KILLNODE, b"", 12)
    n1.request("cfg", conn, cp.REQ_KILLNODE, cp.enc_killnode(2, "Killed by corosync-cfgtool"))
    assert conn.responses[-1] == (cp.RES_KILLNODE, b"", 1)
    c.run_until(lambda: c.nodes[2].host.shutdown_requested is not None)
    assert "[CFG] Killed by node 1 : Killed by corosync-cfgtool" in c.nodes[2].logs
    assert c.nodes[1].host.shutdown_requested is None
    assert c.nodes[3].host.shutdown_requested is None


def test_shutdown_without_listeners_goes_down_cluster_wide_log():
    c = cluster()
    n1 = c.nodes[1]
    conn = n1.connect("cfg")
    n1.request("cfg", conn, cp.REQ_TRYSHUTDOWN, cp.enc_u32(cp.SHUTDOWN_FLAG_REQUEST))
    assert conn.responses[-1] == (cp.RES_TRYSHUTDOWN, b"", 1)
    c.run_until(lambda: all("[CFG] Node 1 was shut down by sysadmin" in n.logs
                            for n in c.nodes.values()))
    assert n1.host.shutdown_requested == "cfg shutdown"
    assert c.nodes[2].host.shutdown_requested is None


@pytest.mark.parametrize("answer,expected", [(1, 1), (0, 10)])
def test_shutdown_listener_vote(answer, expected):
    c = cluster(1)
    n1 = c.nodes[1]
    listener = n1.connect("cfg")
    n1.request("cfg", listener, cp.REQ_TRACKSTART, cp.enc_u32(0))
    assert listener.responses[-1] == (cp.RES_TRACKSTART, b"", 1)
    tool = n1.connect("cfg")
    n1.request("cfg", tool, cp.REQ_TRYSHUTDOWN, cp.enc_u32(cp.SHUTDOWN_FLAG_REQUEST))
    assert tool.responses == []  # deferred until the listener answered
    assert listener.events == [(cp.EV_TESTSHUTDOWN, cp.enc_u32(0), 1)]
    other = n1.connect("cfg")
    n1.request("cfg", other, cp.REQ_TRYSHUTDOWN, cp.enc_u32(0))
    assert other.responses[-1] == (cp.RES_TRYSHUTDOWN, b"", 14)  # EXIST: one at a time
    n1.request("cfg", listener, cp.REQ_REPLYTOSHUTDOWN, cp.enc_u32(answer))
    assert listener.responses[-1] == (cp.RES_REPLYTOSHUTDOWN, b"", 1)
    assert tool.responses == [(cp.RES_TRYSHUTDOWN, b"", expected)]
    c.run_for(50)
    assert (n1.host.shutdown_requested is not None) == (answer == 1)
    n1.request("cfg", listener, cp.REQ_REPLYTOSHUTDOWN, cp.enc_u32(1))
    assert listener.responses[-1][2] == 11  # ACCESS: no shutdown pending


def test_shutdown_listener_disconnect_counts_yes_and_timeout_counts_no():
    c = cluster(1)
    n1 = c.nodes[1]
    listener = n1.connect("cfg")
    n1.request("cfg", listener, cp.REQ_TRACKSTART, b"")
    tool = n1.connect("cfg")
    n1.request("cfg", tool, cp.REQ_TRYSHUTDOWN, cp.enc_u32(0))
    n1.host.ipc_handlers["cfg"].on_disconnect(listener)
    assert tool.responses == [(cp.RES_TRYSHUTDOWN, b"", 1)]
    # a silent listener: the timeout (cfg.shutdown_timeout) decides NO
    c2 = cluster(1)
    n = c2.nodes[1]
    n.cmap.set("cfg.shutdown_timeout", 300, CmapType.UINT32)
    silent = n.connect("cfg")
    n.request("cfg", silent, cp.REQ_TRACKSTART, b"")
    tool = n.connect("cfg")
    n.request("cfg", tool, cp.REQ_TRYSHUTDOWN, cp.enc_u32(0))
    c2.run_for(400)
    assert tool.responses == [(cp.RES_TRYSHUTDOWN, b"", 10)]
    assert silent.events[-1] == (cp.EV_TESTSHUTDOWN, cp.enc_u32(0), 5)  # CS_ERR_TIMEOUT
    assert n.host.shutdown_requested is None


def test_shutdown_regardless_ignores_no():
    c = cluster(1)
    n1 = c.nodes[1]
    listener = n1.connect("cfg")
    n1.request("cfg", listener, cp.REQ_TRACKSTART, b"")
    tool = n1.connect("cfg")
    n1.request("cfg", tool, cp.REQ_TRYSHUTDOWN, cp.enc_u32(cp.SHUTDOWN_FLAG_REGARDLESS))
    n1.request("cfg", listener, cp.REQ_REPLYTOSHUTDOWN, cp.enc_u32(0))
    assert tool.responses == [(cp.RES_TRYSHUTDOWN, b"", 1)]


def test_reload_goes_round_and_answers_originator():
    c = cluster()
    calls = []
    for node in c.nodes.values():
        node.cfg.api.reload_config = (lambda i=node.nodeid: calls.append(i) or 1)  # type: ignore
    n2 = c.nodes[2]
    conn = n2.connect("cfg")
    n2.request("cfg", conn, cp.REQ_RELOAD_CONFIG, b"")
    assert conn.responses == []
    c.run_until(lambda: conn.responses != [])
    assert conn.responses == [(cp.RES_RELOAD_CONFIG, b"", 1)]
    c.run_until(lambda: sorted(calls) == [1, 2, 3])
    assert "[CFG] Config reload requested by node 2" in c.nodes[3].logs


def test_reload_without_hook_is_not_supported_and_reopen_ok():
    c = cluster(1)
    n1 = c.nodes[1]
    conn = n1.connect("cfg")
    n1.request("cfg", conn, cp.REQ_RELOAD_CONFIG, b"")
    c.run_until(lambda: conn.responses != [])
    assert conn.responses[-1] == (cp.RES_RELOAD_CONFIG, b"", 19)
    n1.request("cfg", conn, cp.REQ_REOPEN_LOG_FILES, b"")
    assert conn.responses[-1] == (cp.RES_REOPEN_LOG_FILES, b"", 1)


def test_malformed_requests_and_exec_messages():
    c = cluster(1)
    n1 = c.nodes[1]
    conn = n1.connect("cfg")
    for req in range(12):
        n1.request("cfg", conn, req, b"\x01")
    assert len(conn.responses) == 11  # RELOAD_CONFIG answers after its round trip
    c.run_until(lambda: len(conn.responses) == 12)
    n1.host._dispatch(1, struct.pack("<i4xi4x", 0x00010001, 20) + bytes(4), False)
    n1.host._dispatch(1, struct.pack("<i4xi4x", 0x00010003, 20) + bytes(4), False)
    assert sum(n1.host.stats.dropped.values()) >= 2
    assert n1.host.shutdown_requested is None
