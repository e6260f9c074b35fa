"""Command lines of corosync-qdevice and corosync-qdevice-tool: usage texts, exit codes,
messages (as Debian's 3.0.3 binaries), lock file, and the tool against a stub socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

USAGE_D = b"usage: corosync-qdevice [-dfh] [-S option=value[,option2=value2,...]]\n"
USAGE_T = b"usage: corosync-qdevice-tool [-Hhsv] [-p qdevice_ipc_socket_path]\n"


def run(module: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"corosync.tools.{module}", *args],
                          capture_output=True, timeout=30, env=env)


def test_daemon_usage_and_settings(tmp_path):
    r = run("qdevice", "-h")
    assert (r.returncode, r.stdout) == (1, USAGE_D)
    r = run("qdevice", "-x")
    assert r.returncode == 1 and r.stdout == USAGE_D and b"invalid option -- 'x'" in r.stderr
    r = run("qdevice", "-S", "foo=1")
    assert (r.returncode, r.stderr) == (1, b"corosync-qdevice: Unknown option 'foo'\n")
    r = run("qdevice", "-S", "master_wins=perhaps")
    assert r.returncode == 1 and b"Invalid value 'perhaps' for option 'master_wins'" in r.stderr


def test_daemon_without_corosync_exits_1_and_releases_lock(tmp_path):
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path / "noipc")}
    lock = tmp_path / "qd.pid"
    r = run("qdevice", "-f", "-S", f"lock_file={lock},local_socket_file={tmp_path}/qd.sock",
            env=env)
    assert r.returncode == 1 and b"Can't initialize votequorum" in r.stderr
    assert not lock.exists()


def test_daemon_lock_held(tmp_path):
    import fcntl
    lock = tmp_path / "qd.pid"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o640)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        r = run("qdevice", "-f", "-S", f"lock_file={lock}")
        assert r.returncode == 1 and b"Another instance is running" in r.stderr
    finally:
        os.close(fd)


def test_tool_usage_and_errors(tmp_path):
    for args in ((), ("-h",), ("-v",)):
        r = run("qdevice_tool", *args)
        assert (r.returncode, r.stdout) == (1, USAGE_T), args
    r = run("qdevice_tool", "-s", "-p", str(tmp_path / "none"))
    assert r.returncode == 3
    assert r.stderr == (b"corosync-qdevice-tool: Can't connect to QDevice socket "
                        b"(is QDevice running?): No such file or directory\n")


@pytest.mark.parametrize("reply,code,out,err", [
    (b"OK\nhello\n", 0, b"hello\n", b""),
    (b"Error\nbroken\n", 4, b"", b"Error: broken\n"),
    (b"Huh\n", 3, b"", b"corosync-qdevice-tool: Unknown status line returned by IPC server\n"),
])
def test_tool_reply_handling(tmp_path, reply, code, out, err):
    path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\n" not in data:
                data += conn.recv(100)
            got.append(data)
            conn.sendall(reply)

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = run("qdevice_tool", "-s", "-v", "-p", path)
    finally:
        t.join(10)
        srv.close()
    assert got == [b"status verbose \n"]
    assert (r.returncode, r.stdout, r.stderr) == (code, out, err)
