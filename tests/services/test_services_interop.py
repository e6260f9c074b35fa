"""Interop: our daemon (``python -m corosync.exec.main``, which embeds the service host) in a
udpu ring with two of Debian's corosync 3.1.7: sync completes on the real nodes (our SERVICE_BUILD and
barriers are counted right), and CPG works across the mixed ring — a client on a real node
and a client on ours see each other join, get both messages in the same order, and the real
side sees our client's death as PROCDOWN.  Needs root, iproute2, unshare, nsenter and
/usr/sbin/corosync (else skipped with the reason printed).  Layout: tests/realcorosync.py's Lab
(one network namespace per node, 198.18.0.x)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import realcorosync
from realcorosync import CMAPCTL, wait_for

HERE = Path(__file__).resolve().parent


class Lab(realcorosync.Lab):
    """Three nodes, ours or Debian's; clients are tests/services/svc_cpg_client.py."""

    def start(self, i: int, ours: bool) -> realcorosync.NsDaemon:  # type: ignore[override]
        d = self.node_dir(i)
        conf = realcorosync.conf_text(
            cluster_name="svcinterop", nodes=[(n, f"198.18.0.{n}") for n in (1, 2, 3)],
            names=False, debug=True, log=d / "corosync.log", dirs=d if ours else None)
        return super().start(i, ours, conf)

    def client_cmd(self, i: int, ours: bool, *args: str) -> list[str]:
        return [*self.enter(i), sys.executable, str(HERE / "svc_cpg_client.py"), *args]

    def watcher(self, i: int, ours: bool, group: str) -> "Watcher":
        w = Watcher(self.client_cmd(i, ours, "watch", group), self.env)
        self.clients.append(w)
        return w


class Watcher(realcorosync.JsonLines):
    """A ``svc_cpg_client.py watch`` process: JSON lines read by a thread."""

    @property
    def pid(self) -> int:
        return self.lines[0]["pid"]

    def confchgs(self) -> list:
        return [x["confchg"] for x in self.lines if "confchg" in x]

    def stop(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        self.p.wait(10)


@pytest.fixture
def lab(tmp_path):
    with Lab.open(tmp_path, "sv", "services interop") as lab:
        yield lab


def test_cpg_across_a_mixed_ring(lab):
    for i, ours in ((1, False), (2, False), (3, True)):
        lab.start(i, ours)
    wait_for(lambda: lab.synced((1, 2, 3)), 40,
             lambda: {i: lab.text(i)[-1500:] for i in (1, 2, 3)})
    # clients: one on real node 1 (inside its mount + network namespaces), one on ours
    real_client = subprocess.Popen(lab.client_cmd(1, False, "mixed", "from-real", "2", "stay"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lab.env)
    ours_client = subprocess.Popen(lab.client_cmd(3, True, "mixed", "from-ours", "2"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=lab.env)
    lab.clients += [real_client, ours_client]
    out_ours, err_ours = ours_client.communicate(timeout=40)
    out_real, err_real = real_client.communicate(timeout=40)
    assert ours_client.returncode == 0, err_ours.decode()[-3000:] + lab.text(3)[-3000:]
    assert real_client.returncode == 0, err_real.decode()[-3000:] + lab.text(1)[-3000:]
    ours, real = json.loads(out_ours), json.loads(out_real)
    assert ours["join"] == [0, 1] and real["join"] == [0, 1]
    # same delivery order on both sides, each message exactly once
    assert ours["deliver"] == real["deliver"]
    assert sorted(d[2] for d in ours["deliver"]) == ["from-ours", "from-real"]
    members = sorted([[1, real["pid"], 0], [3, ours["pid"], 0]])
    assert sorted(ours["confchg"][-1][0]) == members
    assert any(sorted(c[0]) == members for c in real["confchg"])
    # our client exited: the real side saw it leave with reason PROCDOWN (5)
    assert real["confchg"][-1][2] == [[3, ours["pid"], 5]]
    # cmap: each side recorded the other's config_version from the CMAP_MCAST exchange;
    # Debian's corosync-cmapctl reads ours through our IPC server
    real_view = lab.run(1, CMAPCTL, "-g", "runtime.members.3.config_version", text=True)
    assert real_view.stdout.strip() == "runtime.members.3.config_version (u64) = 0", real_view
    our_view = lab.run(3, CMAPCTL, "-g", "runtime.members.1.config_version", text=True)
    assert our_view.stdout.strip() == "runtime.members.1.config_version (u64) = 0", our_view
    name = lab.run(3, CMAPCTL, "-g", "totem.cluster_name", text=True)
    assert name.stdout.strip() == "totem.cluster_name (str) = svcinterop", name
    for i in (1, 2, 3):
        assert lab.procs[i].poll() is None, f"n{i} exited: {lab.text(i)[-2000:]}"


def test_ours_as_representative_learns_joinlist_and_sees_nodedown(lab):
    """Ours is node 1 (ring representative).  A real node's process that joined before we
    started is learned from its JOINLIST during our first sync; killing that real node
    gives our client NODEDOWN, and the other real node agrees."""
    lab.start(2, False)
    lab.start(3, False)
    wait_for(lambda: lab.synced((2, 3)), 30, lambda: lab.text(2)[-1500:])
    w2 = lab.watcher(2, False, "grp")
    w3 = lab.watcher(3, False, "grp")
    wait_for(lambda: len(w2.lines) > 0 and len(w3.lines) > 0
             and any(len(c[0]) == 2 for c in w3.confchgs()), 20,
             lambda: (w2.lines, w3.lines, w2.p.stderr.read() if w2.p.poll() is not None else ""))
    lab.start(1, True)
    wait_for(lambda: lab.synced((1, 2, 3)), 40,
             lambda: {i: lab.text(i)[-1500:] for i in (1, 2, 3)})
    w1 = lab.watcher(1, True, "grp")
    wait_for(lambda: len(w1.lines) > 0 and w1.confchgs(), 20, lambda: w1.lines)
    expected = sorted([[1, w1.pid, 0], [2, w2.pid, 0], [3, w3.pid, 0]])
    # our first confchg already lists the real processes: learned via their JOINLISTs
    assert sorted(w1.confchgs()[0][0]) == expected
    wait_for(lambda: any(c[1] == [[1, w1.pid, 1]] for c in w3.confchgs()), 20,
             lambda: w3.lines)
    assert sorted(w3.confchgs()[-1][0]) == expected
    # a second group on the real node 3: iteration order must be identical on both sides
    w3b = lab.watcher(3, False, "another")
    wait_for(lambda: w3b.confchgs(), 20, lambda: w3b.lines)

    def iteration(i: int, ours: bool) -> list:
        return json.loads(subprocess.run(lab.client_cmd(i, ours, "iterate"), env=lab.env,
                                         capture_output=True, text=True, timeout=30).stdout)

    wait_for(lambda: len(iteration(1, True)) == 4, 20, lambda: iteration(1, True))
    ours_list, real_list = iteration(1, True), iteration(3, False)
    assert ours_list == real_list, (ours_list, real_list)
    assert [g for g, _n, _p in ours_list] == ["another", "grp", "grp", "grp"]
    w3b.stop()
    lab.stop(2, signal.SIGKILL)
    wait_for(lambda: w1.confchgs()[-1][2] == [[2, w2.pid, 3]]
             and w3.confchgs()[-1][2] == [[2, w2.pid, 3]], 30,
             lambda: (w1.lines, w3.lines, lab.text(1)[-2000:]))
    assert sorted(w1.confchgs()[-1][0]) == sorted(w3.confchgs()[-1][0]) == sorted(
        [[1, w1.pid, 0], [3, w3.pid, 0]])
    for i in (1, 3):
        assert lab.procs[i].poll() is None, f"n{i} exited: {lab.text(i)[-2000:]}"
    # and the other way round: our node dies, the real node reports our process NODEDOWN
    lab.stop(1, signal.SIGKILL)
    wait_for(lambda: w3.confchgs()[-1][2] == [[1, w1.pid, 3]], 30, lambda: w3.lines)
    assert w3.confchgs()[-1][0] == [[3, w3.pid, 0]]
    w3.stop()
