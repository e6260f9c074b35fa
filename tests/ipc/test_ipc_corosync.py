"""Our client (lib/ipc.py) against Debian's real corosync 3.1.7, SHM (its default) and SOCKET
(`system { qb_ipc_type: socket }`).

The daemon hard-codes /run/corosync.pid, /var/lib/corosync and creates its IPC files in
/dev/shm; its setup sockets are abstract, i.e. per network namespace.  So it runs under
`unshare -m -n` with tmpfs over those paths and our client runs inside the same namespaces
via `nsenter`.  Skipped (reason printed) without root, unshare/nsenter or the daemon.
"""

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

REAL = "/usr/sbin/corosync"
PROBE = Path(__file__).with_name("cmap_probe.py")


def _skip_reason() -> str | None:
    if not os.path.exists(REAL):
        return f"{REAL} not installed (apt-get install corosync)"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


CONF = """totem {{
    version: 2
    cluster_name: ipclab
    transport: udpu
    crypto_cipher: none
    crypto_hash: none
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
        name: n1
    }}
}}
{system}"""


@pytest.fixture
def real_corosync(tmp_path):
    reason = _skip_reason()
    if reason:
        print(f"SKIP real corosync IPC interop: {reason}")
        pytest.skip(reason)
    started: list[subprocess.Popen] = []

    def start(ipc_type: str) -> subprocess.Popen:
        conf = tmp_path / f"corosync-{ipc_type}.conf"
        system = "system {\n    qb_ipc_type: socket\n}\n" if ipc_type == "socket" else ""
        conf.write_text(CONF.format(log=tmp_path / f"{ipc_type}.log", system=system))
        inner = ("ip link set lo up && mount -t tmpfs none /run && "
                 "mount -t tmpfs none /var/lib/corosync && mount -t tmpfs none /dev/shm && "
                 f"exec {REAL} -f -c {conf}")
        # no --fork: unshare and sh exec in place, so this pid is the daemon's
        proc = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", inner],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"{ipc_type}.stderr", "wb"))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _in_ns(pid: int, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("COROSYNC_IPC_DIR", None)
    return subprocess.Popen(["nsenter", "-t", str(pid), "-m", "-n", sys.executable, str(PROBE),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            **kw)


def _probe_until_ready(pid: int, deadline: float) -> dict:
    """The daemon answers ECONNREFUSED before it listens and EAGAIN until it is ready."""
    while True:
        p = _in_ns(pid, "probe")
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
    result = _probe_until_ready(daemon.pid, time.monotonic() + 20)
    assert result["type"] == (1 if ipc_type == "shm" else 0)
    assert result["max"] >= 1048576
    assert result["get"] == [2, 1, 7, 11, "ipclab\0"]       # STRING length includes the NUL
    assert result["track"] == [7, 1, 8]
    assert result["set"] == [0, 1]
    # NOTIFY: the track cookie, the key, ADD (4), STRING, 6 bytes with the NUL
    assert result["notify"] == [9, 1, 0xC0FFEE, "ipctest.s", 4, 11, 6, "hello\0"]
    assert result["blob"] == [1, 2, 1, 16 + 16384, True]

    # our client notices the daemon going away while it waits for events
    waiter = _in_ns(daemon.pid, "wait")
    try:
        assert waiter.stdout.readline().strip() == b"ready"   # type: ignore[union-attr]
        os.kill(daemon.pid, signal.SIGTERM)
        out, _ = waiter.communicate(timeout=20)
        assert out.strip() == b"107"                           # ENOTCONN
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert daemon.wait(15) == 0
