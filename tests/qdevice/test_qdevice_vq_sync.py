"""The executive side of test 6's finding: votequorum's IPC stays open while sync runs.

corosync lifts the sync-time flow control for the votequorum service only (ipc_glue.c:
"Allow message processing for votequorum service even in sync phase"), because votequorum's
sync waits for the quorum device to poll with the *new* ring id.  Flow-controlled, the
device's libqb client holds the poll back, the sync waits for it until
``quorum.device.sync_timeout`` and the device's vote is lost for that membership (seen on a
real 2-node cluster: the survivor of a SIGKILL went inquorate for 30 s).
"""

from __future__ import annotations

from svc_sim import FakeConn, QCluster

from corosync.lib.proto import votequorum as vp


class RecordingConn(FakeConn):
    """A fake IPC connection that remembers the libqb flow-control word it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_levels: list[int] = []

    def set_flow_control(self, level: int) -> None:
        self.fc_levels.append(level)

    @property
    def fc(self) -> int:
        return self.fc_levels[-1] if self.fc_levels else 0


def test_votequorum_connections_are_not_flow_controlled_during_sync():
    c = QCluster(2, **{"device.model": "net", "device.votes": 1})
    c.run_until(c.settled((1, 2)))
    n1 = c.nodes[1]
    vq_conn, q_conn = RecordingConn(), RecordingConn()
    n1.host.ipc_handlers["votequorum"].on_connect(vq_conn)
    n1.host.ipc_handlers["quorum"].on_connect(q_conn)
    n1.request("votequorum", vq_conn, vp.REQ_QDEVICE_REGISTER, vp.enc_qdevice_name("Qdevice"))
    c.run_until(lambda: vq_conn.responses != [])
    assert vq_conn.responses[-1][2] == 1
    ring = n1.vq.ring_id
    n1.request("votequorum", vq_conn, vp.REQ_QDEVICE_POLL,
               vp.enc_qdevice_poll("Qdevice", True, ring.rep, ring.seq))
    assert vq_conn.responses[-1][2] == 1
    # a membership change: sync starts and waits for the device's poll
    c.partition((1,), (2,))
    c.run_until(lambda: n1.host.sync_in_process and n1.vq._sync_wait_poll
                and n1.host.members == (1,))
    assert q_conn.fc == 2, "other services are flow-controlled while sync runs"
    assert vq_conn.fc == 0, "votequorum must stay open for the device's poll"
    # the poll goes through now and lets the sync finish long before sync_timeout
    ring = n1.vq.ring_id
    n1.request("votequorum", vq_conn, vp.REQ_QDEVICE_POLL,
               vp.enc_qdevice_poll("Qdevice", True, ring.rep, ring.seq))
    assert vq_conn.responses[-1][2] == 1
    c.run_until(lambda: not n1.host.sync_in_process, 2000)
    assert q_conn.fc == 0
    assert n1.quorum.quorate  # 1 node vote + the device's of 3
