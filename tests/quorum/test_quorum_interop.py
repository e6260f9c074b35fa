"""Interop: our daemon with the quorum services (tests/quorum/qdaemon.py) in a udpu ring with
two of Debian's corosync 3.1.7, one network namespace per node (198.18.0.x).

The real nodes count our votes only after our NODEINFO, and abort if a qdevice NODEINFO
arrives before it — so a real node reporting 3 nodes / 3 total votes, quorate, *and still
running* is the check that our votequorum sync is right.  Then partitions by killing real
nodes: each side's quorate flag as votequorum says, seen through Debian's
corosync-quorumtool on a real node and through ours and Debian's on our node.  Needs root,
iproute2, unshare, nsenter and /usr/sbin/corosync (else skipped with the reason printed)."""

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

REAL = "/usr/sbin/corosync"
DEB_QT = "/usr/sbin/corosync-quorumtool"
DEB_CT = "/usr/sbin/corosync-cfgtool"
OUR_CT = [sys.executable, "-m", "corosync.tools.cfgtool"]
HERE = Path(__file__).resolve().parent
OUR_QT = [sys.executable, "-m", "corosync.tools.quorumtool"]


def _skip_reason() -> str | None:
    if not os.path.exists(REAL):
        return f"{REAL} not installed"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("ip", "unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


def conf_text(d: Path, ours: bool) -> str:
    """The reference lab's corosync.conf (shared/reference/udpu/corosync.conf), own paths."""
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{i}\n        nodeid: {i}\n"
                    f"        name: n{i}\n    }}\n" for i in (1, 2, 3))
    system = (f"system {{\n    state_dir: {d / 'state'}\n    run_dir: {d / 'run'}\n}}\n"
              if ours else "")
    return ("totem {\n    version: 2\n    cluster_name: qinterop\n    transport: udpu\n"
            "    token: 1000\n    token_coefficient: 0\n    crypto_cipher: none\n"
            "    crypto_hash: none\n}\n"
            "logging {\n    to_stderr: no\n    to_logfile: yes\n"
            f"    logfile: {d / 'corosync.log'}\n    to_syslog: no\n}}\n"
            "quorum {\n    provider: corosync_votequorum\n}\n"
            f"nodelist {{\n{nodes}}}\n{system}")


class Lab:
    def __init__(self, tmp: Path, state: dict) -> None:
        self.tmp, self.state = tmp, state
        self.procs: dict[int, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.env.pop("COROSYNC_IPC_DIR", None)

    def start(self, i: int, ours: bool) -> None:
        d = self.tmp / f"n{i}"
        d.mkdir(exist_ok=True)
        (d / "corosync.conf").write_text(conf_text(d, ours))
        ns = localcluster.ns_name(self.state, i)
        if ours:
            cmd = ["ip", "netns", "exec", ns, sys.executable, str(HERE / "qdaemon.py"), "-f",
                   "-c", str(d / "corosync.conf")]
        else:
            inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                     f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c {d / 'corosync.conf'}")
            cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", inner]
        err = open(d / "stderr", "ab")
        self.procs[i] = subprocess.Popen(cmd, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                         env={**self.env,
                                              "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if p.poll() is None:
            os.kill(p.pid, sig)  # ip/unshare/sh exec in place: this pid is the daemon
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def run(self, i: int, ours: bool, *args: str) -> subprocess.CompletedProcess:
        if ours:
            cmd = ["ip", "netns", "exec", localcluster.ns_name(self.state, i), *args]
        else:
            cmd = ["nsenter", "-t", str(self.procs[i].pid), "-m", "-n", *args]
        return subprocess.run(cmd, capture_output=True, timeout=60, env=self.env)

    def log(self, i: int) -> str:
        try:
            return (self.tmp / f"n{i}" / "corosync.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i, signal.SIGTERM)
        localcluster.netns_down(self.state)


@pytest.fixture
def lab(tmp_path):
    reason = _skip_reason()
    if reason:
        print(f"SKIP quorum interop: {reason}")
        pytest.skip(reason)
    state = {"n": 3, "prefix": f"qi{os.getpid() % 100000}", "namespaces": [], "netns": True}
    try:
        localcluster.netns_up(state)
    except localcluster.LocalClusterError as exc:
        localcluster.netns_down(state)
        pytest.skip(f"cannot build network namespaces: {exc}")
    lab = Lab(tmp_path, state)
    try:
        yield lab
    finally:
        lab.close()


def fields(text: bytes) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z ]+):\s+(.*?)\s*$", text.decode(), re.M))


def wait_status(lab: Lab, i: int, ours: bool, tool: list[str], want: dict[str, str],
                timeout: float = 40) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = lab.run(i, ours, *tool, "-s")
        f = fields(last.stdout)
        if all(f.get(k) == v for k, v in want.items()):
            return last
        time.sleep(0.2)
    pytest.fail(f"node {i} never showed {want}: {last!r}\n{lab.log(i)[-3000:]}")


_VOLATILE = re.compile(rb"^(Date|Ring ID): .*$", re.M)


def same_as_reference(lab: Lab, shared: Path, phase: str) -> None:
    """Our node n1 answers Debian's tools (and ours) exactly as Debian's n1 did when the
    reference outputs were taken (same 198.18.0.x layout, names n1..n3, udpu)."""
    ref = shared / "reference" / "udpu" / phase
    for name, args in (("cfgtool-s", ("-s",)), ("cfgtool-n", ("-n",)), ("cfgtool-a1", ("-a", "1"))):
        want = (ref / f"{name}.txt").read_bytes()
        assert lab.run(1, True, DEB_CT, *args).stdout == want, (phase, name)
        assert lab.run(1, True, *OUR_CT, *args).stdout == want, (phase, name)
    for name, args in (("quorumtool-s", ("-s",)), ("quorumtool-s-p", ("-s", "-p")),
                       ("quorumtool-l", ("-l",)), ("quorumtool-l-i", ("-l", "-i"))):
        want = _VOLATILE.sub(rb"\1:", (ref / f"{name}.txt").read_bytes())
        for tool in ([DEB_QT], OUR_QT):
            got = lab.run(1, True, *tool, *args).stdout
            assert _VOLATILE.sub(rb"\1:", got) == want, (phase, name, tool)


def test_votequorum_across_a_mixed_ring(lab, shared_dir):
    lab.start(1, True)
    lab.start(2, False)
    lab.start(3, False)
    full = {"Nodes": "3", "Quorate": "Yes", "Total votes": "3", "Expected votes": "3",
            "Quorum": "2"}
    wait_status(lab, 2, False, [DEB_QT], full)
    ours = wait_status(lab, 1, True, OUR_QT, full)
    assert ours.returncode == 0
    deb_on_ours = lab.run(1, True, DEB_QT, "-s")
    norm = re.compile(rb"^Date: .*$", re.M)
    assert norm.sub(b"", deb_on_ours.stdout) == norm.sub(b"", ours.stdout)
    assert lab.procs[2].poll() is None and lab.procs[3].poll() is None  # nobody aborted
    # the membership tables agree across implementations (except the "(local)" mark)
    t_real = lab.run(2, False, DEB_QT, "-l").stdout.replace(b" (local)", b"")
    t_ours = lab.run(1, True, *OUR_QT, "-l").stdout.replace(b" (local)", b"")
    assert t_real == t_ours
    assert "This node is within the primary component and will provide service." in lab.log(1)
    assert "Members[3]: 1 2 3" in lab.log(1)
    same_as_reference(lab, shared_dir, "running")
    # a real node dies: 2 of 3 votes keep quorum on both remaining nodes
    lab.kill(3)
    two = {"Nodes": "2", "Quorate": "Yes", "Total votes": "2", "Quorum": "2"}
    wait_status(lab, 2, False, [DEB_QT], two)
    wait_status(lab, 1, True, OUR_QT, two)
    same_as_reference(lab, shared_dir, "after-kill-n3")
    # and the last real node: ours alone is not quorate (exit code 2, activity blocked)
    lab.kill(2)
    alone = wait_status(lab, 1, True, OUR_QT, {"Nodes": "1", "Quorate": "No"})
    assert alone.returncode == 2
    assert b"Quorum:           2 Activity blocked\n" in alone.stdout
    assert "This node is within the non-primary component and will NOT provide any " \
           "services." in lab.log(1)


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cfg_exec_messages_across_a_mixed_ring(lab):
    """RELOAD_CONFIG and KILLNODE both ways between our cfg service and real nodes."""
    for i, ours in ((1, True), (2, False), (3, False)):
        lab.start(i, ours)
    wait_status(lab, 2, False, [DEB_QT], {"Nodes": "3", "Quorate": "Yes", "Total votes": "3"})
    wait_status(lab, 1, True, OUR_QT, {"Nodes": "3", "Quorate": "Yes"})
    # a real node asks for a cluster-wide reload: every node (ours too) sees the request
    r = lab.run(2, False, DEB_CT, "-R")
    assert (r.returncode, r.stdout) == (0, b"Reloading corosync.conf...\nDone\n"), r
    wait_for(lambda: "Config reload requested by node 2" in lab.log(1), 20, "reload on ours")
    # our tool kills a real node through our cfg service
    k = lab.run(1, True, *OUR_CT, "-k", "3")
    assert (k.returncode, k.stdout, k.stderr) == (0, b"Killing node 3\n", b"")
    wait_for(lambda: lab.procs[3].poll() is not None, 20, "real node 3 to exit")
    assert "Killed by node 1 : Killed by corosync-cfgtool" in lab.log(3)
    # and a real node kills ours
    k = lab.run(2, False, DEB_CT, "-k", "1")
    assert (k.returncode, k.stdout) == (0, b"Killing node 1\n"), k
    wait_for(lambda: "Killed by node 2 : Killed by corosync-cfgtool" in lab.log(1), 20,
             "our node to log the kill")
    wait_for(lambda: lab.procs[1].poll() is not None, 30, "our node to exit")
    assert lab.procs[2].poll() is None  # the survivor keeps running
