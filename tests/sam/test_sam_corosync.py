"""corosync.sam against Debian's real corosync 3.1.7: the cmap keys (read by our cmap client
and by Debian's corosync-cmapctl) and the quorum policy through the executive's quorum service.

The daemon runs under `unshare -m -n` (tmpfs over /run, /var/lib/corosync, /dev/shm; its IPC
sockets are abstract, i.e. per network namespace) and the SAM application runs inside the same
namespaces through `nsenter`.  The nodelist names a second node that never comes, so
votequorum starts inquorate (expected votes 2) until the test lowers expected votes to 1.
Skipped, with the reason printed, without root, unshare/nsenter or the daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REAL = "/usr/sbin/corosync"
CMAPCTL = "/usr/sbin/corosync-cmapctl"
QUORUMTOOL = "/usr/sbin/corosync-quorumtool"

CONF = """totem {{
    version: 2
    cluster_name: samlab
    transport: udpu
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}}
logging {{
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: {log}
}}
quorum {{
    provider: corosync_votequorum
}}
nodelist {{
    node {{
        ring0_addr: 127.0.0.1
        nodeid: 1
    }}
    node {{
        ring0_addr: 127.0.0.2
        nodeid: 2
    }}
}}
"""


def _skip_reason() -> str | None:
    for tool in (REAL, CMAPCTL, QUORUMTOOL):
        if not os.path.exists(tool):
            return f"{tool} not installed (apt-get install corosync)"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


class Daemon:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        conf = workdir / "corosync.conf"
        conf.write_text(CONF.format(log=workdir / "corosync.log"))
        inner = ("ip link set lo up 2>/dev/null || ifconfig lo up; "
                 "mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                 f"mount -t tmpfs none /dev/shm && exec {REAL} -f -c {conf}")
        # unshare and sh exec in place: this pid is the daemon's
        self.proc = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", inner],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), "-m", "-n"]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *args], capture_output=True, text=True,
                              timeout=30)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            last = self.run(CMAPCTL, "-g", "runtime.votequorum.this_node_id")
            if last.returncode == 0:
                return
            time.sleep(0.1)
        pytest.fail(f"corosync not ready: rc={self.proc.poll()} {last}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def daemon(tmp_path: Path):
    reason = _skip_reason()
    if reason:
        print(f"SKIP SAM against Debian corosync: {reason}")
        pytest.skip(reason)
    d = Daemon(tmp_path)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_cmap_keys_written_and_removed(daemon: Daemon, sam_app) -> None:
    app = sam_app("real_cmap", prefix=daemon.prefix())
    assert app.wait_exit(30) == 0, app.output()
    (inst,) = of(app.events(), "instance")
    assert inst["recovery"] == "quit"
    assert inst["poll_period"] == 3000
    assert (inst["state0"], inst["state1"], inst["state2"]) == ("stopped", "running", "stopped")
    assert inst["advanced"] is True
    listing = daemon.run(CMAPCTL)                       # the whole map
    assert listing.returncode == 0 and "totem.cluster_name (str) = samlab" in listing.stdout
    assert f"resources.process.{app.pid}." not in listing.stdout   # destroyed on a clean quit


def test_mark_failed_state_seen_by_debian_cmapctl(daemon: Daemon, sam_app) -> None:
    app = sam_app("real_mark_failed", prefix=daemon.prefix())
    assert app.wait_exit(30) == 128 + signal.SIGKILL
    assert [e["iid"] for e in of(app.events(), "instance")] == [1]
    listing = daemon.run(CMAPCTL, f"resources.process.{app.pid}.").stdout
    assert f"resources.process.{app.pid}.state (str) = failed" in listing
    assert f"resources.process.{app.pid}.recovery (str) = restart" in listing
    assert f"resources.process.{app.pid}.poll_period (u64) = 1000" in listing
    assert f"resources.process.{app.pid}.last_updated (u64) = " in listing


@pytest.mark.parametrize("source", ["default", "lib", "ipc"])
def test_quorum_wait_then_executive_loss(daemon: Daemon, sam_app, source: str) -> None:
    """Both quorum sources: corosync.quorum (LibQuorumSource, the default) and the built-in
    IpcQuorumSource."""
    if source == "lib":
        pytest.importorskip("corosync.quorum")
    status = daemon.run(QUORUMTOOL, "-s")
    assert status.returncode == 2, status.stdout        # inquorate: expected votes 2
    app = sam_app("real_quorum", prefix=daemon.prefix(), args=(source,))
    app.wait_for(lambda ev: bool(of(ev, "starting")), timeout=30)
    key = f"resources.process.{app.pid}.state"
    deadline = time.monotonic() + 30
    while daemon.run(CMAPCTL, "-g", key).stdout.strip() != f"{key} (str) = waiting for quorum":
        assert time.monotonic() < deadline, "watchdog never waited for quorum"
        time.sleep(0.05)
    assert not of(app.events(), "started")              # start() is blocked in the child
    assert daemon.run(QUORUMTOOL, "-e", "1").returncode == 0
    app.wait_for(lambda ev: bool(of(ev, "started")), timeout=30)
    assert daemon.run(CMAPCTL, "-g", key).stdout.strip() == f"{key} (str) = running"
    daemon.stop()                                      # quorum service gone: kill, then QUIT
    assert app.wait_exit(30) == 128 + signal.SIGTERM
