"""corosync-qnetd command line: stdout, stderr and exit codes as reference/qdevice/qnetd/cli."""

import re
import subprocess
import sys

import pytest

from qnetd_client import Daemon

DATE = re.compile(rb"^[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d ", re.M)


def qnetd(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "corosync.tools.qnetd", *args],
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("name,args", [
    ("qnetd-v", ["-v"]), ("qnetd-h", ["-h"]), ("qnetd-bad-option", ["-Z"]),
    ("qnetd-s-required", ["-s", "required"]), ("qnetd-c-maybe", ["-c", "maybe"]),
    ("qnetd-p-0", ["-p", "0"]), ("qnetd-m-neg", ["-m", "-1"]),
    ("qnetd-S-unknown", ["-S", "bogus=1"]), ("qnetd-S-bad-value", ["-S", "listen_backlog=0"]),
    ("qnetd-S-dpd_interval", ["-S", "dpd_interval=1000", "-v"]),
    ("qnetd-S-coef-low", ["-S", "dpd_interval_coefficient=0.5"]),
])
def test_cli_outputs(shared_dir, name, args):
    ref = shared_dir / "reference/qdevice/qnetd/cli"
    r = qnetd(*args)
    assert r.returncode == 1
    assert r.stdout == (ref / f"{name}.txt").read_bytes()
    err = ref / f"{name}.stderr"
    assert r.stderr == (err.read_bytes() if err.exists() else b"")


def _strip_dates(data: bytes) -> bytes:
    return DATE.sub(b"DATE ", data)


def test_startup_failures(shared_dir, tmp_path):
    ref = shared_dir / "reference/qdevice/qnetd/cli"
    cases = [
        ("qnetd-S-nssdb-missing", ["-f", "-S", f"nss_db_dir={tmp_path}/nonexistent,"
                                              f"lock_file={tmp_path}/l.pid"]),
        ("qnetd-S-lockfile-bad", ["-f", "-s", "off", "-S", f"lock_file={tmp_path}/nonexistent-dir/x/y.pid"]),
        ("qnetd-S-socket-bad", ["-f", "-s", "off", "-p", "1", "-S",
                                f"lock_file={tmp_path}/s.pid,local_socket_file={tmp_path}/nonexistent-dir/x/y.sock"]),
    ]
    for name, args in cases:
        r = qnetd(*args)
        assert r.returncode == 1, name
        assert r.stdout == b""
        assert _strip_dates(r.stderr) == _strip_dates((ref / f"{name}.stderr").read_bytes()), name


def test_second_instance_and_lock_file(shared_dir, tmp_path):
    d = Daemon(tmp_path, "-s", "off")
    try:
        d.wait_ready()
        assert d.lock.read_text() == f"{d.proc.pid}\n"
        r = qnetd("-f", "-s", "off", "-S", f"lock_file={d.lock},local_socket_file={tmp_path}/x.sock")
        assert r.returncode == 1
        assert _strip_dates(r.stderr) == _strip_dates(
            (shared_dir / "reference/qdevice/qnetd/cli/qnetd-second-instance.stderr").read_bytes())
    finally:
        assert d.stop() == 0
    assert d.lock.exists() and not d.sock.exists()  # lock file stays, socket goes


def test_listen_options(tmp_path):
    """-4 / -l ADDR change the listener and the address shown by the tool."""
    from qnetd_client import tool
    d = Daemon(tmp_path, "-s", "off", "-4", "-l", "127.0.0.1")
    try:
        d.wait_ready()
        r = tool(d.sock, "-s")
        assert r.stdout.startswith(f"QNetd address:\t\t\t127.0.0.1:{d.port}\n".encode())
    finally:
        assert d.stop() == 0


def test_daemonizes_without_f(tmp_path):
    """Without -f the daemon forks, detaches and writes its own pid to the lock file."""
    import os
    import signal
    import time

    from qnetd_client import free_port, tool
    lock, sock = tmp_path / "q.pid", tmp_path / "q.sock"
    r = qnetd("-s", "off", "-p", str(free_port()), "-S", f"lock_file={lock},local_socket_file={sock}")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    deadline = time.monotonic() + 20
    pid = None
    while time.monotonic() < deadline:
        text = lock.read_text() if lock.exists() else ""
        if text.endswith("\n") and sock.exists() and tool(sock, "-s").returncode == 0:
            pid = int(text)
            break
        time.sleep(0.05)
    assert pid is not None, "daemon did not come up"
    try:
        assert os.getsid(pid) != os.getsid(0)  # detached into its own session
        assert tool(sock, "-H").returncode == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def test_systemd_ready_notification(tmp_path):
    import os
    import socket

    from qnetd_client import free_port, tool
    path = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(20)
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen([sys.executable, "-m", "corosync.tools.qnetd", "-f", "-s", "off", "-p",
                             str(free_port()), "-S", f"lock_file={tmp_path}/q.pid,local_socket_file={sock}"],
                            env={**os.environ, "NOTIFY_SOCKET": path},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert listener.recv(100) == b"READY=1"
        assert tool(sock, "-s").returncode == 0
    finally:
        listener.close()
        proc.terminate()
        assert proc.wait(10) == 0
