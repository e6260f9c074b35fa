"""Our client (lib/ipc.py) against Debian's real corosync 3.1.7, SHM (its default) and SOCKET
(`system { qb_ipc_type: socket }`).

The daemon runs alone in a network + mount namespace (tests/realcorosync.py) and our
client runs inside them via `nsenter`.  Skipped (reason printed) without root,
unshare/nsenter/ip or the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import realcorosync

PROBE = Path(__file__).with_name("cmap_probe.py")


@pytest.fixture
def real_corosync(tmp_path):
    """Start Debian's daemon (one node ipclab, corosync's default timers) serving ``ipc_type``."""
    realcorosync.require("real corosync IPC interop", tools=("unshare", "nsenter", "ip"))
    started: list[realcorosync.Daemon] = []

    def start(ipc_type: str) -> realcorosync.Daemon:
        d = tmp_path / ipc_type
        conf = realcorosync.conf_text(cluster_name="ipclab", nodes=[(1, "127.0.0.1")],
                                      log=d / "corosync.log", token=None,
                                      token_coefficient=None,
                                      ipc_type="socket" if ipc_type == "socket" else None)
        started.append(realcorosync.Daemon(d, conf=conf))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def _in_ns(daemon: realcorosync.Daemon, *args: str, **kw) -> subprocess.Popen:
    return daemon.popen(sys.executable, str(PROBE), *args, **kw)


def _probe_until_ready(daemon: realcorosync.Daemon, deadline: float) -> dict:
    """The daemon answers ECONNREFUSED before it listens and EAGAIN until it is ready."""
    while True:
        p = _in_ns(daemon, "probe")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err.decode()
        result = json.loads(out)
        if "connect_errno" not in result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"real corosync never accepted IPC: {result}")
        time.sleep(0.1)


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
def test_our_client_against_real_corosync(real_corosync, ipc_type: str) -> None:
    daemon = real_corosync(ipc_type)
    result = _probe_until_ready(daemon, time.monotonic() + 20)
    assert result["type"] == (1 if ipc_type == "shm" else 0)
    assert result["max"] >= 1048576
    assert result["get"] == [2, 1, 7, 11, "ipclab\0"]       # STRING length includes the NUL
    assert result["track"] == [7, 1, 8]
    assert result["set"] == [0, 1]
    # NOTIFY: the track cookie, the key, ADD (4), STRING, 6 bytes with the NUL
    assert result["notify"] == [9, 1, 0xC0FFEE, "ipctest.s", 4, 11, 6, "hello\0"]
    assert result["blob"] == [1, 2, 1, 16 + 16384, True]

    # our client notices the daemon going away while it waits for events
    waiter = _in_ns(daemon, "wait")
    try:
        assert waiter.stdout.readline().strip() == b"ready"   # type: ignore[union-attr]
        os.kill(daemon.pid, signal.SIGTERM)
        out, _ = waiter.communicate(timeout=20)
        assert out.strip() == b"107"                           # ENOTCONN
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert daemon.proc.wait(15) == 0
