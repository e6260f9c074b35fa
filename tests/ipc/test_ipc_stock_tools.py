"""Debian's corosync-cmapctl (libcmap + libqb 2.0.6) through our IPC server, SHM and SOCKET.

A minimal read-only cmap service (mini_cmap_server.py) serves keys taken from the
reference dump of a real 3.1.7 node; the stock tool's output must reproduce those lines
byte for byte.  The server runs in its own network namespace (`unshare -n`: the abstract
name `cmap` is then ours alone) and the tool joins it with `nsenter -n`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CMAPCTL = "/usr/sbin/corosync-cmapctl"
SERVER = Path(__file__).with_name("mini_cmap_server.py")
SUPPORTED = ("(str)", "(u8)", "(u16)", "(u32)", "(u64)", "(i8)", "(i16)", "(i32)", "(i64)")


def _skip_reason() -> str | None:
    if not os.path.exists(CMAPCTL):
        return f"{CMAPCTL} not installed (apt-get install corosync)"
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


@pytest.fixture
def reference_lines(shared_dir) -> list[str]:
    ref = shared_dir / "reference" / "udpu" / "running" / "cmapctl.txt"
    if not ref.exists():
        pytest.skip(f"{ref} missing")
    return [line for line in ref.read_text().splitlines()
            if any(f" {t} = " in line for t in SUPPORTED)]


def _tool(pid: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", CMAPCTL, *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
def test_corosync_cmapctl_through_our_server(tmp_path, shared_dir, reference_lines,
                                            ipc_type: str) -> None:
    reason = _skip_reason()
    if reason:
        print(f"SKIP stock-tool IPC interop: {reason}")
        pytest.skip(reason)
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(reference_lines) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("COROSYNC_IPC_DIR", None)
    server = subprocess.Popen(["unshare", "-n", sys.executable, str(SERVER), ipc_type,
                               str(keys)], stdout=subprocess.PIPE, env=env)
    try:
        assert server.stdout.readline().strip() == b"ready"   # type: ignore[union-attr]
        everything = _tool(server.pid)
        assert everything.returncode == 0, everything.stderr
        assert everything.stdout.splitlines() == sorted(reference_lines)
        assert len(reference_lines) > 50

        ref_dir = shared_dir / "reference" / "udpu" / "running"
        one = _tool(server.pid, "-g", "totem.token")
        assert one.stdout == (ref_dir / "cmapctl-g-totem.token.txt").read_text()
        missing = _tool(server.pid, "-g", "no.such.key")
        assert missing.returncode == 1
        assert missing.stderr == (ref_dir / "cmapctl-g-missing.stderr").read_text()
        prefix = _tool(server.pid, "runtime.members")
        assert prefix.stdout == (ref_dir / "cmapctl-prefix-runtime.members.txt").read_text()
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
    assert server.returncode == 0
    assert not [d for d in os.listdir("/dev/shm") if d.startswith(f"qb-{server.pid}-")]
