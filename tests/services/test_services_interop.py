"""Interop: our node with the service host (tests/services/svc_node.py) in a udpu ring with
two of Debian's corosync 3.1.7: sync completes on the real nodes (our SERVICE_BUILD and
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


def test_cpg_across_a_mixed_ring(tmp_path):
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
    procs: dict[int, subprocess.Popen] = {}
    logs: dict[int, Path] = {}
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        for i, ours in ((1, False), (2, False), (3, True)):
            d = tmp_path / f"n{i}"
            d.mkdir()
            (d / "corosync.conf").write_text(conf_text(d, ours))
            logs[i] = d / "corosync.log"
            ns = localcluster.ns_name(state, i)
            if ours:
                cmd = ["ip", "netns", "exec", ns, sys.executable, str(HERE / "svc_node.py"),
                       "-f", "-c", str(d / "corosync.conf")]
            else:
                inner = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                         f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c {d / 'corosync.conf'}")
                cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", inner]
            err = open(d / "stderr", "ab")
            procs[i] = subprocess.Popen(cmd, stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                        env={**env, "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})

        def text(i: int) -> str:
            try:
                return logs[i].read_text(errors="replace")
            except FileNotFoundError:
                return ""

        def synced_with_all(i: int) -> bool:
            t = text(i)
            pos = max(t.rfind("Members joined: 1 2 3"), t.rfind("Members joined: 3"),
                      t.rfind("Members joined: 1 2"), t.rfind("Members joined: 1"),
                      t.rfind("Members joined: 2"))
            return pos >= 0 and SYNC_DONE in t[pos:]

        def all_three() -> bool:
            return all(("A new membership" in text(i)) for i in (1, 2, 3)) and all(
                synced_with_all(i) for i in (1, 2, 3))

        wait_for(all_three, 40, lambda: {i: text(i)[-1500:] for i in (1, 2, 3)})
        # the real nodes completed a sync with us in the ring: our build/barriers counted
        for i in (1, 2):
            t = text(i)
            assert "Members joined" in t and " 3" in t[t.find("Members joined"):]
        # clients: one on real node 1 (inside its mount + network namespaces), one on ours
        real_client = subprocess.Popen(
            ["nsenter", "-t", str(procs[1].pid), "-m", "-n", sys.executable,
             str(HERE / "svc_cpg_client.py"), "mixed", "from-real", "2", "stay"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        ours_client = subprocess.Popen(
            ["ip", "netns", "exec", localcluster.ns_name(state, 3), sys.executable,
             str(HERE / "svc_cpg_client.py"), "mixed", "from-ours", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out_ours, err_ours = ours_client.communicate(timeout=40)
            out_real, err_real = real_client.communicate(timeout=40)
        finally:
            for p in (ours_client, real_client):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert ours_client.returncode == 0, err_ours.decode()[-3000:] + text(3)[-3000:]
        assert real_client.returncode == 0, err_real.decode()[-3000:] + text(1)[-3000:]
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
        # cmap: each side recorded the other's config_version from our CMAP_MCAST exchange;
        # Debian's corosync-cmapctl reads ours through our IPC server
        cmapctl = "/usr/sbin/corosync-cmapctl"  # Debian's tool (not a same-named shim)
        real_view = subprocess.run(["nsenter", "-t", str(procs[1].pid), "-m", "-n", cmapctl,
                                    "-g", "runtime.members.3.config_version"],
                                   capture_output=True, text=True, timeout=20)
        assert real_view.stdout.strip() == "runtime.members.3.config_version (u64) = 0", \
            real_view
        our_view = subprocess.run(["ip", "netns", "exec", localcluster.ns_name(state, 3),
                                   cmapctl, "-g", "runtime.members.1.config_version"],
                                  capture_output=True, text=True, timeout=20)
        assert our_view.stdout.strip() == "runtime.members.1.config_version (u64) = 0", our_view
        name = subprocess.run(["ip", "netns", "exec", localcluster.ns_name(state, 3),
                               cmapctl, "-g", "totem.cluster_name"],
                              capture_output=True, text=True, timeout=20)
        assert name.stdout.strip() == "totem.cluster_name (str) = svcinterop", name
        for i in (1, 2, 3):
            assert procs[i].poll() is None, f"n{i} exited: {text(i)[-2000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(5)
        localcluster.netns_down(state)
