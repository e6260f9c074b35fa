"""Interop: our daemon with the quorum services (tests/quorum/qdaemon.py) in a udpu ring with
two of Debian's corosync 3.1.7, one network namespace per node (198.18.0.x).

The real nodes count our votes only after our NODEINFO, and abort if a qdevice NODEINFO
arrives before it — so a real node reporting 3 nodes / 3 total votes, quorate, *and still
running* is the check that our votequorum sync is right.  Then partitions by killing real
nodes: each side's quorate flag as votequorum says, seen through Debian's
corosync-quorumtool on a real node and through ours and Debian's on our node.  Needs root,
iproute2, unshare, nsenter and /usr/sbin/corosync (else skipped with the reason printed)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import realcorosync
from realcorosync import CFGTOOL as DEB_CT
from realcorosync import QUORUMTOOL as DEB_QT
from realcorosync import wait_for

OUR_CT = [sys.executable, "-m", "corosync.tools.cfgtool"]
HERE = Path(__file__).resolve().parent
OUR_QT = [sys.executable, "-m", "corosync.tools.quorumtool"]


class Lab(realcorosync.Lab):
    def start(self, i: int, ours: bool) -> realcorosync.NsDaemon:  # type: ignore[override]
        """The reference lab's corosync.conf (shared/reference/udpu/corosync.conf), own
        paths; ours is tests/quorum/qdaemon.py."""
        d = self.node_dir(i)
        conf = realcorosync.conf_text(
            cluster_name="qinterop", nodes=[(n, f"198.18.0.{n}") for n in (1, 2, 3)],
            log=d / "corosync.log", dirs=d if ours else None)
        return super().start(i, ours, conf,
                             argv=[sys.executable, str(HERE / "qdaemon.py")] if ours else None)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        self.stop(i, sig)

    def run(self, i: int, ours: bool, *args: str) -> subprocess.CompletedProcess:  # type: ignore[override]
        return super().run(i, *args)

    def log(self, i: int) -> str:
        return self.text(i)


@pytest.fixture
def lab(tmp_path):
    with Lab.open(tmp_path, "qi", "quorum interop") as lab:
        yield lab


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
