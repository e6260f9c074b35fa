"""corosync.sam against *our* executive (``python -m corosync.exec.main``): one node on
127.0.0.1 with its own ``COROSYNC_IPC_DIR``, so nothing but loopback and a temp directory is
needed.  The cmap keys must behave as with Debian's daemon; the quorum policy runs when our
daemon serves the quorum service (skipped, with the reason printed, until it does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import realcorosync


class OwnDaemon:
    def __init__(self, root: Path) -> None:
        self.dir = root / "daemon"
        for sub in ("state", "run", "ipc"):
            (self.dir / sub).mkdir(parents=True)
        conf = self.dir / "corosync.conf"
        conf.write_text(realcorosync.conf_text(
            cluster_name="samown", nodes=[(1, "127.0.0.1"), (2, "127.0.0.2")], names=False,
            log=self.dir / "corosync.log", token=300, join=50, crypto_none=False,
            mcastport=realcorosync.free_udp_port(), dirs=self.dir))
        self.env = dict(os.environ, COROSYNC_IPC_DIR=str(self.dir / "ipc"),
                        COROSYNC_LOCAL_ADDRS="127.0.0.1")
        self.stderr = open(self.dir / "stderr", "wb")
        self.proc = subprocess.Popen([*realcorosync.OURS, "-f", "-c", str(conf)], env=self.env,
                                     stdout=self.stderr, stderr=subprocess.STDOUT)

    def serves(self, service: str) -> bool:
        return (self.dir / "ipc" / service).exists()

    def wait_ready(self, timeout: float = 30.0) -> None:
        probe = ("from corosync.cmap import Cmap\n"
                 "with Cmap.initialize() as c:\n"
                 "    c.get('totem.cluster_name')\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.serves("cmap") and subprocess.run(
                    [sys.executable, "-c", probe], env=self.env, capture_output=True,
                    timeout=30).returncode == 0:
                return
            time.sleep(0.05)
        pytest.fail(f"our daemon not ready: rc={self.proc.poll()} "
                    f"{(self.dir / 'stderr').read_text(errors='replace')[-2000:]}")

    def tool(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, *args], env=self.env,
                              capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        realcorosync.stop_process(self.proc)
        self.stderr.close()


@pytest.fixture
def own_daemon(tmp_path: Path):
    d = OwnDaemon(tmp_path)
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def cmap_keys(daemon: OwnDaemon, prefix: str) -> dict[str, Any]:
    script = ("import json, sys\n"
              "from corosync.cmap import Cmap\n"
              "with Cmap.initialize() as c:\n"
              "    print(json.dumps({k: v.value for k, v in c.items(sys.argv[1])}))\n")
    out = subprocess.run([sys.executable, "-c", script, prefix], env=daemon.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_cmap_keys_with_our_daemon(own_daemon: OwnDaemon, sam_app) -> None:
    app = sam_app("real_cmap", env=own_daemon.env)
    assert app.wait_exit(30) == 0, app.output()
    (inst,) = of(app.events(), "instance")
    assert (inst["recovery"], inst["poll_period"]) == ("quit", 3000)
    assert (inst["state0"], inst["state1"], inst["state2"]) == ("stopped", "running", "stopped")
    assert inst["advanced"] is True
    assert cmap_keys(own_daemon, f"resources.process.{app.pid}.") == {}


def test_mark_failed_with_our_daemon(own_daemon: OwnDaemon, sam_app) -> None:
    app = sam_app("real_mark_failed", env=own_daemon.env)
    assert app.wait_exit(30) == 128 + signal.SIGKILL
    prefix = f"resources.process.{app.pid}."
    keys = cmap_keys(own_daemon, prefix)
    assert keys[prefix + "state"] == "failed"
    assert keys[prefix + "recovery"] == "restart"
    assert keys[prefix + "poll_period"] == 1000
    assert abs(keys[prefix + "last_updated"] / 1e9 - time.time()) < 60


def test_quorum_policy_with_our_daemon(own_daemon: OwnDaemon, sam_app) -> None:
    if not own_daemon.serves("quorum"):
        print("SKIP SAM quorum policy with our daemon: it does not serve `quorum` yet")
        pytest.skip("our daemon does not serve the quorum service yet")
    app = sam_app("real_quorum", env=own_daemon.env, args=("default",))
    key = f"resources.process.{app.pid}.state"
    app.wait_for(lambda ev: cmap_keys(own_daemon, key).get(key) == "waiting for quorum",
                 timeout=30)
    assert not of(app.events(), "started")
    assert own_daemon.tool("corosync.tools.quorumtool", "-e", "1").returncode == 0
    app.wait_for(lambda ev: bool(of(ev, "started")), timeout=30)
    own_daemon.stop()
    assert app.wait_exit(30) == 128 + signal.SIGTERM
