"""Integration: two Debian corosync 3.1.7 nodes (udpu, network + mount namespaces) with OUR
corosync-qdevice on both, arbitrated by our corosync-qnetd or Debian's 3.0.3 one.

Checks what an operator sees: corosync-quorumtool on the Debian nodes shows the Qdevice
vote (byte-identical to the reference run with the stock qdevice, addresses masked), our
corosync-qdevice-tool output matches Debian's, and after SIGKILL of node 2 node 1 stays
quorate through the qdevice vote (ffsplit).  Reuses the qnetd interop lab (namespaces,
per-node mount namespace, stop by PID)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qnetd"))
from test_qnetd_interop import (Lab, _mask, _skip_reason, lab_in_namespaces,  # noqa: E402
                                wait_for)

from corosync.tools import localcluster  # noqa: E402

DEBIAN_QNETD = "/usr/bin/corosync-qnetd"


class OurQdeviceLab(Lab):
    def start_corosync(self, i: int, tls: str) -> None:
        """The qnetd lab's node, with quorum.device.timeout 2000 ms (heartbeat 1600 ms) so
        that a lost qnetd is noticed within seconds."""
        super().start_corosync(i, tls)
        conf = self.node_dir(i) / "corosync.conf"
        conf.write_text(conf.read_text().replace("        votes: 1\n",
                                                 "        votes: 1\n        timeout: 2000\n"))

    def start_qdevice(self, i: int) -> None:
        d = self.node_dir(i)
        pid = self.procs[f"corosync{i}"].pid
        self.popen(f"qdevice{i}", [
            "nsenter", "-t", str(pid), "-m", "-n", sys.executable, "-m", "corosync.tools.qdevice",
            "-f", "-d", "-S", f"lock_file={d}/qd.pid,local_socket_file={d}/qd.sock"])

    def start_debian_qnetd(self) -> None:
        d = self.tmp / "qnetd"
        d.mkdir(exist_ok=True)
        ns = localcluster.ns_name(self.state, 3)
        self.popen("qnetd", ["ip", "netns", "exec", ns, DEBIAN_QNETD, "-f", "-d", "-s", "off",
                             "-S", f"lock_file={d}/q.pid,local_socket_file={d}/q.sock"])
        wait_for(lambda: (d / "q.sock").exists(), 20, "Debian qnetd IPC socket")

    def qdevice_tool(self, i: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "corosync.tools.qdevice_tool", "-p",
                               str(self.node_dir(i) / "qd.sock"), *args],
                              capture_output=True, timeout=20)


@pytest.fixture
def lab(tmp_path):
    yield from lab_in_namespaces(OurQdeviceLab(tmp_path), _skip_reason(),
                                 "our qdevice on Debian nodes")


def _host(text: str) -> str:
    return re.sub(r"QNetd host:\t\t\S+", "QNetd host:\t\tX", text)


@pytest.mark.parametrize("server", ["ours", "debian"])
def test_our_qdevices_keep_node1_quorate_after_node2_killed(lab, shared_dir, server):
    if server == "ours":
        lab.start_qnetd("-s", "off")
    else:
        if not os.path.exists(DEBIAN_QNETD):
            pytest.skip("Debian corosync-qnetd not installed")
        lab.start_debian_qnetd()
    for i in (1, 2):
        lab.start_corosync(i, "off")
    for i in (1, 2):
        wait_for(lambda i=i: "Nodes:            2" in lab.quorum(i), 30,
                 lambda i=i: f"corosync n{i}: {lab.quorum(i)} {lab.output(f'corosync{i}')}")
    for i in (1, 2):
        lab.start_qdevice(i)
    wait_for(lambda: "Total votes:      3" in lab.quorum(1) and "Total votes:      3" in lab.quorum(2),
             30, lambda: f"{lab.quorum(1)}\n{lab.output('qdevice1')}\n{lab.output('qnetd')}")
    ref = shared_dir / "reference/qdevice"
    strip = lambda t: _mask(t).replace("Node ID:          1", "")  # noqa: E731
    running = strip((ref / "running-quorumtool-s.txt").read_text())
    wait_for(lambda: strip(lab.quorum(1)) == running, 30, lambda: lab.quorum(1))
    r = lab.qdevice_tool(1, "-s")
    assert r.returncode == 0, r.stderr
    assert _host(r.stdout.decode()) == _host((ref / "running-qdevice-tool-s.txt").read_text())
    # a configuration reload (corosync-cfgtool -R) that gives node 2 a data center: the
    # qdevice follows the reload in cmap and sends CHANGED_CONFIG; reverting restores the
    # reference output
    conf = lab.node_dir(1) / "corosync.conf"
    plain = conf.read_text()
    conf.write_text(plain.replace("nodeid: 2\n", "nodeid: 2\n        datacenterid: 7\n"))
    r = lab.in_node(1, "corosync-cfgtool", "-R")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: "    1\tNode ID = 2, Data center ID = 7\n" in
             lab.qdevice_tool(1, "-s").stdout.decode(), 15, lambda: lab.output("qdevice1"))
    assert "Sending changed config node list" in lab.output("qdevice1")
    conf.write_text(plain)
    r = lab.in_node(1, "corosync-cfgtool", "-R")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: _host(lab.qdevice_tool(1, "-s").stdout.decode())
             == _host((ref / "running-qdevice-tool-s.txt").read_text()), 15,
             lambda: lab.qdevice_tool(1, "-s").stdout.decode())
    # qnetd stops answering (SIGSTOP, as in the reference run): the echo reply is missed, the
    # qdevices disconnect and vote NACK ("A,NV,NMW"), the cluster keeps quorum with 2 of 3
    dpd = ref / "qnetd" / "heartbeat-dpd"
    stopped = _mask((dpd / "qnetd-stopped-quorumtool-s.txt").read_text())
    os.kill(lab.procs["qnetd"].pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _mask(lab.quorum(1)) == stopped, 30,
                 lambda: lab.quorum(1) + lab.output("qdevice1"))
        want = _host((dpd / "qnetd-stopped-qdevice-tool-s.txt").read_text())
        wait_for(lambda: _host(lab.qdevice_tool(1, "-s").stdout.decode()) == want, 15,
                 lambda: lab.qdevice_tool(1, "-s").stdout.decode())
    finally:
        os.kill(lab.procs["qnetd"].pid, signal.SIGCONT)
    wait_for(lambda: strip(lab.quorum(1)) == running, 30, lambda: lab.quorum(1))
    # node 2 dies (corosync and its qdevice): node 1 keeps 1 + 1 (qdevice) of 3 votes
    lab.stop("qdevice2", signal.SIGKILL)
    lab.stop("corosync2", signal.SIGKILL)
    after = _mask((ref / "after-kill-quorumtool-s.txt").read_text())
    wait_for(lambda: _mask(lab.quorum(1)) == after, 30,
             lambda: lab.quorum(1) + lab.output("qdevice1"))
    want = _host((ref / "after-kill-qdevice-tool-s.txt").read_text())
    wait_for(lambda: _host(lab.qdevice_tool(1, "-s").stdout.decode()) == want, 15,
             lambda: lab.qdevice_tool(1, "-s").stdout.decode())
    # clean stop through the tool: the daemon exits 0 and unregisters from votequorum
    r = lab.qdevice_tool(1, "-H")
    assert r.returncode == 0, r.stderr
    assert lab.procs["qdevice1"].wait(15) == 0, lab.output("qdevice1")
    wait_for(lambda: "Qdevice" not in lab.quorum(1), 15, lambda: lab.quorum(1))
