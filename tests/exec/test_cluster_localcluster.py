"""corosync-localcluster end to end: up / status / partition / heal / kill / start / down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from exec_testlib import Daemon, pick_port, wait_until


def lc(d, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "corosync.tools.localcluster", "--dir", str(d),
                        *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def members(d, i):
    return Daemon(d, i, "").members()


def wait_view(d, view: dict[int, tuple[int, ...]], timeout=10.0):
    wait_until(lambda: all(members(d, i) == m for i, m in view.items()), timeout,
               lambda: f"views {view}: " + ", ".join(f"n{i}={members(d, i)}" for i in view))


def ns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_localcluster_loopback_up_kill_start_down(tmp_path):
    d = tmp_path / "lc"
    port = pick_port(["127.0.0.1", "127.0.0.2"])
    try:
        lc(d, "up", "2", "--token", "300", "--port", str(port))
        wait_view(d, {1: (1, 2), 2: (1, 2)})
        out = lc(d, "status").stdout
        assert "n1\t127.0.0.1" in out and "running" in out
        assert lc(d, "partition", "1/2", check=False).returncode == 1  # needs --netns
        lc(d, "kill", "2")
        wait_view(d, {1: (1,)}, timeout=6)
        lc(d, "start", "2")
        wait_view(d, {1: (1, 2), 2: (1, 2)})
    finally:
        state = json.loads((d / "cluster.json").read_text())
        lc(d, "down")
    for pid in state["pids"].values():
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read()


@pytest.mark.parametrize("transport", ["udpu", "udp"])
def test_localcluster_netns_partition_and_heal(tmp_path, transport):
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for network namespaces")
    d = tmp_path / "lc"
    r = lc(d, "up", "3", "--netns", "--transport", transport, "--token", "300", check=False)
    try:
        if r.returncode != 0 and "netns" in r.stderr:
            pytest.skip(f"network namespaces unavailable: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        state = json.loads((d / "cluster.json").read_text())
        # first formation includes three cold interpreter starts on a loaded 2-core box
        wait_view(d, {1: (1, 2, 3), 2: (1, 2, 3), 3: (1, 2, 3)}, timeout=30.0)
        lc(d, "partition", "1,2/3")
        wait_view(d, {1: (1, 2), 2: (1, 2), 3: (3,)})
        lc(d, "heal")
        wait_view(d, {1: (1, 2, 3), 2: (1, 2, 3), 3: (1, 2, 3)})
    finally:
        lc(d, "down")
    listing = ns_list()
    assert all(ns not in listing for ns in state["namespaces"])
