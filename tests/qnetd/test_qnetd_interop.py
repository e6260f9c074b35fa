"""Interop: Debian's corosync 3.1.7 + corosync-qdevice 3.0.3 (model net) on two nodes use
OUR corosync-qnetd as their arbitrator, without and with TLS.

Topology (root, iproute2, unshare/nsenter and the Debian packages, else skipped with the
reason): corosync-localcluster's network namespaces, 198.18.0.1/2 = cluster nodes, 198.18.0.3
= our qnetd.  Each Debian node runs in a private mount namespace (tmpfs over /run,
/var/lib/corosync, /dev/shm; its own directory bind-mounted over /etc/corosync), and its
qdevice joins that namespace with nsenter so both share corosync's IPC.  Every process is
stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corosync.tools import localcluster

COROSYNC = "/usr/sbin/corosync"
QDEVICE = "/usr/sbin/corosync-qdevice"
QDEVICE_CERTUTIL = "/usr/sbin/corosync-qdevice-net-certutil"


def _skip_reason() -> str | None:
    for path in (COROSYNC, QDEVICE, "/usr/sbin/corosync-quorumtool"):
        if not os.path.exists(path):
            return f"{path} not installed (apt-get install corosync corosync-qdevice)"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("ip", "unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


def conf_text(d: Path, tls: str) -> str:
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{i}\n        nodeid: {i}\n"
                    f"        name: n{i}\n    }}\n" for i in (1, 2))
    return ("totem {\n    version: 2\n    cluster_name: lab\n    transport: udpu\n"
            "    token: 1000\n}\n"
            f"logging {{\n    to_stderr: no\n    to_logfile: yes\n    logfile: {d}/corosync.log\n"
            "    to_syslog: no\n    timestamp: hires\n}\n"
            "quorum {\n    provider: corosync_votequorum\n    device {\n        model: net\n"
            "        votes: 1\n        net {\n            host: 198.18.0.3\n"
            f"            tls: {tls}\n            algorithm: ffsplit\n        }}\n    }}\n}}\n"
            f"nodelist {{\n{nodes}}}\n")


def wait_for(pred, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = {"n": 3, "prefix": f"qn{os.getpid() % 100000}", "namespaces": [], "netns": True}
        self.procs: dict[str, subprocess.Popen] = {}

    def popen(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.out", "ab")
        p = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self.procs[name] = p
        return p

    def start_qnetd(self, *args: str) -> Path:
        d = self.tmp / "qnetd"
        d.mkdir(exist_ok=True)
        ns = localcluster.ns_name(self.state, 3)
        self.popen("qnetd", ["ip", "netns", "exec", ns, sys.executable, "-m", "corosync.tools.qnetd",
                             "-f", "-d", "-S", f"lock_file={d}/q.pid,local_socket_file={d}/q.sock",
                             *args])
        sock = d / "q.sock"
        wait_for(lambda: sock.exists(), 20, "qnetd IPC socket")
        return sock

    def node_dir(self, i: int) -> Path:
        d = self.tmp / f"n{i}"
        d.mkdir(exist_ok=True)
        return d

    def start_corosync(self, i: int, tls: str) -> None:
        d = self.node_dir(i)
        (d / "corosync.conf").write_text(conf_text(d, tls))
        inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                 f"mount -t tmpfs none /dev/shm && mount --bind {d} /etc/corosync && "
                 f"exec {COROSYNC} -f")
        self.popen(f"corosync{i}", ["ip", "netns", "exec", localcluster.ns_name(self.state, i),
                                    "unshare", "-m", "sh", "-c", inner])

    def in_node(self, i: int, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        pid = self.procs[f"corosync{i}"].pid
        return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", *cmd], capture_output=True,
                              timeout=timeout)

    def quorum(self, i: int) -> str:
        r = self.in_node(i, "corosync-quorumtool", "-s")
        return r.stdout.decode(errors="replace") if r.returncode in (0, 2) else ""

    def start_qdevice(self, i: int) -> None:
        pid = self.procs[f"corosync{i}"].pid
        self.popen(f"qdevice{i}", ["nsenter", "-t", str(pid), "-m", "-n", QDEVICE, "-f", "-d"])

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, sig)  # ip netns exec / nsenter / sh exec the daemon: same pid
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")[-3000:]


def lab_in_namespaces(lab: Lab, skip_reason: str | None, what: str):
    """Fixture body shared by the qnetd/qdevice labs: skip with the reason, build the
    namespaces, hand out the lab, then stop every process by PID (qdevices first, so they
    do not log a lost corosync) and remove the namespaces."""
    if skip_reason:
        print(f"SKIP {what}: {skip_reason}")
        pytest.skip(skip_reason)
    try:
        localcluster.netns_up(lab.state)
    except localcluster.LocalClusterError as exc:
        localcluster.netns_down(lab.state)
        pytest.skip(f"cannot build network namespaces: {exc}")
    try:
        yield lab
    finally:
        for name in [n for n in lab.procs if n.startswith("qdevice")] + \
                    [n for n in lab.procs if not n.startswith("qdevice")]:
            lab.stop(name)
        localcluster.netns_down(lab.state)


@pytest.fixture
def lab(tmp_path):
    yield from lab_in_namespaces(Lab(tmp_path), _skip_reason(), "qnetd interop")


def tool(sock: Path, *args: str) -> bytes:
    return subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_tool", "-p", str(sock), *args],
                          capture_output=True, timeout=20).stdout


def _bring_up(lab: Lab, sock: Path, tls: str) -> None:
    for i in (1, 2):
        lab.start_corosync(i, tls)
    for i in (1, 2):
        wait_for(lambda i=i: "Nodes:            2" in lab.quorum(i), 30,
                 lambda i=i: f"corosync n{i} up: {lab.quorum(i)} {lab.output(f'corosync{i}')}")
    for i in (1, 2):
        lab.start_qdevice(i)
    wait_for(lambda: "Total votes:      3" in lab.quorum(1) and "Total votes:      3" in lab.quorum(2),
             30, lambda: f"qdevice votes: {lab.quorum(1)}\n{tool(sock, '-l', '-v').decode()}\n"
                         f"{lab.output('qdevice1')}\n{lab.output('qnetd')}")


def _mask(text: str) -> str:
    text = re.sub(r"Date:\s+.*", "Date: X", text)
    text = re.sub(r"Ring ID:(\s+)\S+", r"Ring ID:\1X", text)
    return re.sub(r"Client address:\t\t\S+", "Client address:\t\tX", text)


def test_debian_qdevices_vote_through_our_qnetd(lab, shared_dir):
    sock = lab.start_qnetd("-s", "off")
    _bring_up(lab, sock, "off")
    ref = shared_dir / "reference/qdevice"
    strip = lambda t: _mask(t).replace("Node ID:          1", "")  # noqa: E731
    running = strip((ref / "running-quorumtool-s.txt").read_text())
    # compared with a deadline: on a loaded machine Debian's own membership may flap once
    wait_for(lambda: strip(lab.quorum(1)) == running, 30, lambda: lab.quorum(1))
    wait_for(lambda: tool(sock, "-l").count(b"(ACK)") == 2, 15, "both ACK in our tool")
    # n2 is killed (corosync and qdevice): our disconnect hook and n1's new membership keep
    # the vote with n1, which stays quorate with 1 + 1 (qdevice) of 3 votes
    lab.stop("qdevice2", signal.SIGKILL)
    lab.stop("corosync2", signal.SIGKILL)
    after = _mask((ref / "after-kill-quorumtool-s.txt").read_text())
    wait_for(lambda: _mask(lab.quorum(1)) == after, 30,
             lambda: lab.quorum(1) + tool(sock, "-l", "-v").decode())
    listing = _mask((ref / "after-kill-qnetd-tool-l.txt").read_text())
    wait_for(lambda: _mask(tool(sock, "-l").decode()) == listing, 15,
             lambda: tool(sock, "-l").decode())


def test_debian_qdevices_over_tls_with_client_certificates(lab, tmp_path):
    if not os.path.exists(QDEVICE_CERTUTIL):
        pytest.skip(f"{QDEVICE_CERTUTIL} not installed")
    db = tmp_path / "qnetd-certs"
    r = subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_certutil", "-i", "-d", str(db)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sock = lab.start_qnetd("-s", "req", "-c", "on", "-S", f"nss_db_dir={db}")
    for i in (1, 2):
        lab.start_corosync(i, "on")
    for i in (1, 2):
        wait_for(lambda i=i: "Nodes:            2" in lab.quorum(i), 30, f"corosync n{i}")
        # the stock node-side flow: import our CA, make a DER request, sign it with our
        # certutil, import the signed DER certificate
        d = lab.node_dir(i)
        shutil.copy(db / "qnetd-cacert.crt", d / "ca.crt")
        r = lab.in_node(i, QDEVICE_CERTUTIL, "-i", "-c", "/etc/corosync/ca.crt")
        assert r.returncode == 0, r.stdout + r.stderr
        r = lab.in_node(i, QDEVICE_CERTUTIL, "-r", "-n", "lab")
        assert r.returncode == 0, r.stdout + r.stderr
        crq = d / "qdevice" / "net" / "nssdb" / "qdevice-net-node.crq"
        r = subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_certutil", "-s", "-c", str(crq),
                            "-n", f"lab{i}", "-d", str(db)], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        shutil.copy(db / f"cluster-lab{i}.crt", d / "cluster.crt")
        r = lab.in_node(i, QDEVICE_CERTUTIL, "-M", "-c", "/etc/corosync/cluster.crt")
        assert r.returncode == 0, r.stdout + r.stderr
    for i in (1, 2):
        lab.start_qdevice(i)
    wait_for(lambda: "Total votes:      3" in lab.quorum(1) and "Total votes:      3" in lab.quorum(2),
             40, lambda: f"{lab.quorum(1)}\n{tool(sock, '-l', '-v').decode()}\n"
                         f"{lab.output('qdevice1')}\n{lab.output('qnetd')}")
    listing = tool(sock, "-l", "-v")
    assert listing.count(b"TLS active:\t\tYes (client certificate verified)\n") == 2, listing
    assert b"TLS:\t\t\t\tRequired (client certificate required)\n" in tool(sock, "-s")
