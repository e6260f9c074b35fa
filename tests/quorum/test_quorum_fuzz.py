"""Hostile input never breaks the quorum services or their client decoders: random exec
messages (native and byte-swapped) and random IPC requests to cfg, quorum and votequorum are
dropped/counted or answered exactly once; the services keep working afterwards."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svc_sim import QCluster

from corosync.lib.proto import cfg as cp
from corosync.lib.proto import quorum as qp
from corosync.lib.proto import votequorum as vp
from corosync.lib.proto.common import ProtoError

_CLUSTER = QCluster(1)
_CLUSTER.run_until(_CLUSTER.settled((1,)))
NODE = _CLUSTER.nodes[1]

exec_msgs = st.tuples(st.sampled_from([1, 3, 5]), st.integers(0, 6), st.binary(max_size=600),
                      st.booleans(), st.integers(0, 9))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(exec_msgs)
def test_random_exec_messages(msg):
    service, fn, body, swapped, sender = msg
    head = struct.pack(">i4xi4x" if swapped else "<i4xi4x", (service << 16) | fn, 16 + len(body))
    before = NODE.host.shutdown_requested
    NODE.host._dispatch(sender, head + body, swapped)
    # only a KILLNODE/SHUTDOWN naming us may stop the node; nothing raises
    if before is None and NODE.host.shutdown_requested is not None:
        NODE.host.shutdown_requested = None
    assert NODE.vq.vq is not None and NODE.vq.vq.quorum >= 1


services = st.sampled_from(["cfg", "quorum", "votequorum"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(services, st.integers(0, 13), st.binary(max_size=600))
def test_random_ipc_requests_get_one_answer(service, req, payload):
    conn = NODE.connect(service)
    deferred = (service == "cfg" and req in (cp.REQ_RELOAD_CONFIG, cp.REQ_TRYSHUTDOWN)) or (
        service == "votequorum" and req == vp.REQ_QDEVICE_REGISTER)
    NODE.host.ipc_handlers[service].on_request(conn, req, payload)
    assert len(conn.responses) <= 1
    if not deferred:
        assert len(conn.responses) == 1
    NODE.host.ipc_handlers[service].on_disconnect(conn)


decoders = st.sampled_from([qp.Notification, qp.V1QuorumNotification, qp.V1NodelistNotification,
                            vp.NodeInfo, vp.QuorumNotification, vp.NodelistNotification,
                            vp.ExpectedVotesNotification, cp.NodeStatus, cp.RingStatus,
                            cp.GetNodeAddrsResponse])


@settings(max_examples=400, deadline=None)
@given(decoders, st.binary(max_size=5000))
def test_client_decoders_refuse_or_decode(cls, body):
    try:
        cls.decode(body)
    except ProtoError:
        pass


def test_services_still_work_after_fuzzing():
    conn = NODE.connect("votequorum")
    NODE.request("votequorum", conn, vp.REQ_GETINFO, vp.enc_getinfo(0))
    assert conn.responses[-1][0] == vp.RES_GETINFO
