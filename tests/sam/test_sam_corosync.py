"""corosync.sam against Debian's real corosync 3.1.7: the cmap keys (read by our cmap client
and by Debian's corosync-cmapctl) and the quorum policy through the executive's quorum service.

The daemon runs alone in a network + mount namespace (tests/realcorosync.py) and the SAM
application runs inside the same namespaces through `nsenter`.  The nodelist names a second
node that never comes, so votequorum starts inquorate (expected votes 2) until the test
lowers expected votes to 1.
Skipped, with the reason printed, without root, unshare/nsenter or the daemon.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import realcorosync
from realcorosync import CMAPCTL, QUORUMTOOL
from realcorosync import Daemon as RealDaemon


class Daemon(RealDaemon):
    """Debian's daemon; the nodelist names a second node that never comes."""

    def __init__(self, workdir: Path) -> None:
        conf = realcorosync.conf_text(cluster_name="samlab", log=workdir / "corosync.log",
                                      nodes=[(1, "127.0.0.1"), (2, "127.0.0.2")],
                                      names=False, token_coefficient=None)
        super().__init__(workdir, conf=conf)

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return super().run(*args, text=True, **kw)

    def wait_ready(self, deadline: float) -> None:
        self.wait_until(lambda: self.run(CMAPCTL, "-g", "runtime.votequorum.this_node_id"),
                        deadline - time.monotonic())


@pytest.fixture
def daemon(tmp_path: Path):
    realcorosync.require("SAM against Debian corosync", files=(CMAPCTL, QUORUMTOOL))
    with Daemon(tmp_path).running() as d:
        yield d


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_cmap_keys_written_and_removed(daemon: Daemon, sam_app) -> None:
    app = sam_app("real_cmap", prefix=daemon.enter())
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
    app = sam_app("real_mark_failed", prefix=daemon.enter())
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
    app = sam_app("real_quorum", prefix=daemon.enter(), args=(source,))
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
