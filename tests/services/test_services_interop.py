"""Interop: our daemon (``python -m corosync.exec.main``, which embeds the service host) in a
udpu ring with two of Debian's corosync 3.1.7: sync completes on the real nodes (our SERVICE_BUILD and
barriers are counted right), and CPG works across the mixed ring — a client on a real node
and a client on ours see each other join, get both messages in the same order, and the real
side sees our client's death as PROCDOWN.  Needs root, iproute2, unshare, nsenter and
/usr/sbin/corosync (else skipped with the reason printed).  Layout as
tests/interop/test_interop_totem.py: one network namespace per node (198.18.0.x)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corosync.tools import localcluster

REAL = "/usr/sbin/corosync"
HERE = Path(__file__).resolve().parent
SYNC_DONE = "Completed service synchronization, ready to provide service."


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
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{i}\n        nodeid: {i}\n"
                    f"    }}\n" for i in (1, 2, 3))
    system = (f"system {{\n    state_dir: {d / 'state'}\n    run_dir: {d / 'run'}\n}}\n"
              if ours else "")
    return ("totem {\n    version: 2\n    cluster_name: svcinterop\n    transport: udpu\n"
            "    token: 1000\n    token_coefficient: 0\n    crypto_cipher: none\n"
            "    crypto_hash: none\n}\n"
            "logging {\n    to_stderr: no\n    to_logfile: yes\n"
            f"    logfile: {d / 'corosync.log'}\n    to_syslog: no\n    debug: on\n}}\n"
            "quorum {\n    provider: corosync_votequorum\n}\n"
            f"nodelist {{\n{nodes}}}\n{system}")


def wait_for(pred, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


class Lab:
    """Three network namespaces; real nodes in private mount namespaces (as the totem
    interop test); ours is our daemon.  Every process is stopped by pid."""

    def __init__(self, tmp_path: Path, state: dict) -> None:
        self.tmp = tmp_path
        self.state = state
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}
        self.clients: list[subprocess.Popen] = []
        self.env = {**os.environ,
                    "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def ns(self, i: int) -> str:
        return localcluster.ns_name(self.state, i)

    def start(self, i: int, ours: bool) -> None:
        d = self.tmp / f"n{i}"
        d.mkdir(exist_ok=True)
        (d / "corosync.conf").write_text(conf_text(d, ours))
        self.logs[i] = d / "corosync.log"
        if ours:
            cmd = ["ip", "netns", "exec", self.ns(i), sys.executable, "-m",
                   "corosync.exec.main", "-f", "-c", str(d / "corosync.conf")]
        else:
            inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                     f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c {d / 'corosync.conf'}")
            cmd = ["ip", "netns", "exec", self.ns(i), "unshare", "-m", "sh", "-c", inner]
        err = open(d / "stderr", "ab")
        self.procs[i] = subprocess.Popen(cmd, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                         env={**self.env,
                                              "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        p = self.procs.get(i)
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, sig)  # ip/unshare/sh exec in place: this pid is the daemon
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)

    def text(self, i: int) -> str:
        try:
            return self.logs[i].read_text(errors="replace")
        except (FileNotFoundError, KeyError):
            return ""

    def client_cmd(self, i: int, ours: bool, *args: str) -> list[str]:
        script = [sys.executable, str(HERE / "svc_cpg_client.py"), *args]
        if ours:
            return ["ip", "netns", "exec", self.ns(i), *script]
        return ["nsenter", "-t", str(self.procs[i].pid), "-m", "-n", *script]

    def watcher(self, i: int, ours: bool, group: str) -> "Watcher":
        p = subprocess.Popen(self.client_cmd(i, ours, "watch", group), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                             text=True)
        self.clients.append(p)
        return Watcher(p)

    def close(self) -> None:
        for p in self.clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        for i in list(self.procs):
            self.stop(i)
        localcluster.netns_down(self.state)


class Watcher:
    """A ``svc_cpg_client.py watch`` process: JSON lines read by a thread."""

    def __init__(self, p: subprocess.Popen) -> None:
        import threading

        self.p = p
        self.lines: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

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
    reason = _skip_reason()
    if reason:
        print(f"SKIP services interop: {reason}")
        pytest.skip(reason)
    state = {"n": 3, "prefix": f"sv{os.getpid() % 100000}", "namespaces": [], "netns": True}
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


def synced_ring(lab: Lab, nodes: tuple[int, ...]) -> bool:
    """Every node's last membership line is followed by a completed sync and the
    reconstructed view is ``nodes``."""
    for i in nodes:
        t = lab.text(i)
        pos = t.rfind("A new membership")
        if pos < 0 or SYNC_DONE not in t[pos:] or view(t) != nodes:
            return False
    return True


def view(text: str) -> tuple[int, ...]:
    import re

    current: set[int] = set()
    for line in text.splitlines():
        m = re.search(r"A new membership \(([\w.]+)\) was formed\. Members(.*)$", line)
        if not m:
            continue
        j = re.search(r"joined: ([\d ]+?)(?: left:|$)", m.group(2))
        lft = re.search(r"left: ([\d ]+)$", m.group(2))
        if j:
            current |= {int(x) for x in j.group(1).split()}
        if lft:
            current -= {int(x) for x in lft.group(1).split()}
    return tuple(sorted(current))


def test_cpg_across_a_mixed_ring(lab):
    for i, ours in ((1, False), (2, False), (3, True)):
        lab.start(i, ours)
    wait_for(lambda: synced_ring(lab, (1, 2, 3)), 40,
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
    cmapctl = "/usr/sbin/corosync-cmapctl"  # Debian's tool (not a same-named shim)
    real_view = subprocess.run(["nsenter", "-t", str(lab.procs[1].pid), "-m", "-n", cmapctl,
                                "-g", "runtime.members.3.config_version"],
                               capture_output=True, text=True, timeout=20)
    assert real_view.stdout.strip() == "runtime.members.3.config_version (u64) = 0", real_view
    our_view = subprocess.run(["ip", "netns", "exec", lab.ns(3), cmapctl,
                               "-g", "runtime.members.1.config_version"],
                              capture_output=True, text=True, timeout=20)
    assert our_view.stdout.strip() == "runtime.members.1.config_version (u64) = 0", our_view
    name = subprocess.run(["ip", "netns", "exec", lab.ns(3), cmapctl, "-g", "totem.cluster_name"],
                          capture_output=True, text=True, timeout=20)
    assert name.stdout.strip() == "totem.cluster_name (str) = svcinterop", name
    for i in (1, 2, 3):
        assert lab.procs[i].poll() is None, f"n{i} exited: {lab.text(i)[-2000:]}"


def test_ours_as_representative_learns_joinlist_and_sees_nodedown(lab):
    """Ours is node 1 (ring representative).  A real node's process that joined before we
    started is learned from its JOINLIST during our first sync; killing that real node
    gives our client NODEDOWN, and the other real node agrees."""
    lab.start(2, False)
    lab.start(3, False)
    wait_for(lambda: synced_ring(lab, (2, 3)), 30, lambda: lab.text(2)[-1500:])
    w2 = lab.watcher(2, False, "grp")
    w3 = lab.watcher(3, False, "grp")
    wait_for(lambda: len(w2.lines) > 0 and len(w3.lines) > 0
             and any(len(c[0]) == 2 for c in w3.confchgs()), 20,
             lambda: (w2.lines, w3.lines, w2.p.stderr.read() if w2.p.poll() is not None else ""))
    lab.start(1, True)
    wait_for(lambda: synced_ring(lab, (1, 2, 3)), 40,
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
