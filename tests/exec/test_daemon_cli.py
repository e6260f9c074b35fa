"""The ``corosync`` command line end to end: flags, -t on every reference broken config,
the embedded default config, daemon mode with a pid file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exec_testlib import node_config, pick_port, wait_until

CMD = [sys.executable, "-m", "corosync.exec.main"]
STAMP = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3} ", re.M)


def run(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_version():
    r = run("-v")
    assert r.returncode == 0
    assert re.match(r"Corosync Cluster Engine, version '[\d.]+'\n", r.stdout)
    assert "wire-compatible with corosync 3.1.7" in r.stdout


def test_invalid_option_prints_usage_like_the_real_one(shared_dir):
    r = run("-h")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == (shared_dir / "reference/common/corosync-h.stderr").read_text()


def test_p_and_r_are_accepted(tmp_path):
    r = run("-p", "-r", "-v")
    assert r.returncode == 0


def _reference_cases(shared_dir: Path) -> list[tuple[str, int]]:
    cases = []
    for line in (shared_dir / "reference/broken-config/index.tsv").read_text().splitlines():
        name, rc, _cmd = line.split("\t", 2)
        if name.endswith(".t"):
            cases.append((name[:-2], int(rc)))
    return cases


def test_every_broken_config_with_dash_t(shared_dir, tmp_path):
    confdir = tmp_path / "conf"
    confdir.mkdir()
    cases = _reference_cases(shared_dir)
    assert len(cases) >= 12
    for name, want_rc in cases:
        src = shared_dir / "reference/broken-config" / f"{name}.conf"
        conf = confdir / "corosync.conf"
        conf.write_text(src.read_text().replace("$CONFDIR", str(confdir)))
        if name == "knet-crypto-key-too-short":
            (confdir / "authkey").write_bytes(b"k" * 100)  # 800 bits, as in the reference
        else:
            (confdir / "authkey").unlink(missing_ok=True)
        r = run("-t", "-c", str(conf), env={"COROSYNC_LOCAL_ADDRS": "198.18.0.1"})
        ref = (shared_dir / "reference/broken-config" / f"{name}.t.stderr")
        ref_text = ref.read_text().replace("$CONFDIR", str(confdir)) if ref.exists() else ""
        assert (r.returncode == 0) == (want_rc == 0), (name, r.returncode, r.stderr)
        assert r.stdout == ""
        if want_rc == 0:
            assert r.stderr.rstrip().endswith("Corosync Cluster Engine exiting normally"), name
            continue
        assert r.returncode == want_rc, (name, r.stderr)
        if ref_text.startswith("parser error:"):
            # syntax / integer errors: byte-identical with the real parser's message
            assert r.stderr == ref_text, name
        else:
            lines = STAMP.sub("", r.stderr).splitlines()
            assert lines[-1] == "error   [MAIN  ] Corosync Cluster Engine exiting with status 8."
            # our message names the file (and line/key when known)
            assert str(conf) in r.stderr, (name, r.stderr)
            assert "error   [MAIN  ]" in lines[0]


def test_semantic_error_in_foreground_logs_starting_up_first(shared_dir, tmp_path):
    conf = tmp_path / "corosync.conf"
    shutil.copy(shared_dir / "reference/broken-config/duplicate-nodeid.conf", conf)
    r = run("-f", "-c", str(conf), env={"COROSYNC_LOCAL_ADDRS": "198.18.0.1"})
    assert r.returncode == 8
    lines = STAMP.sub("", r.stderr).splitlines()
    assert lines[0].startswith("notice  [MAIN  ] Corosync Cluster Engine ")
    assert lines[0].endswith(" starting up")
    assert "Nodeid 1 appears twice in corosync.conf" in r.stderr


def test_config_path_from_environment(tmp_path):
    port = pick_port()
    conf = tmp_path / "c.conf"
    conf.write_text(node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port,
                                directory=tmp_path))
    r = run("-t", env={"COROSYNC_MAIN_CONFIG_FILE": str(conf)})
    assert r.returncode == 0, r.stderr
    r = run("-t", env={"COROSYNC_MAIN_CONFIG_FILE": str(tmp_path / "missing.conf")})
    assert r.returncode == 8
    assert "missing.conf" in r.stderr


def test_embedded_default_config_when_etc_file_is_absent(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root + unshare to hide /etc/corosync in a private mount namespace")
    env = {k: v for k, v in os.environ.items() if k != "COROSYNC_MAIN_CONFIG_FILE"}
    inner = (f"mkdir -p /etc/corosync && mount -t tmpfs none /etc/corosync && "
             f"exec {sys.executable} -m corosync.exec.main -t")
    r = subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True,
                       timeout=30, env=env)
    if "mount:" in r.stderr:
        pytest.skip(f"cannot mount in a private namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    assert "not found: using the built-in single-node configuration" in r.stderr


def test_daemon_mode_detaches_and_stops_on_sigterm(tmp_path):
    port = pick_port()
    conf = tmp_path / "corosync.conf"
    conf.write_text(node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port,
                                directory=tmp_path))
    r = run("-c", str(conf), env={"COROSYNC_LOCAL_ADDRS": "127.0.0.1"})
    assert r.returncode == 0, r.stderr
    pidfile = tmp_path / "run" / "corosync.pid"
    pid = int(pidfile.read_text())
    try:
        assert Path(f"/proc/{pid}").exists()
        # detached: own session, cwd /
        assert os.getsid(pid) != os.getsid(0)  # own session (not a session leader:
        assert os.getpgid(pid) != os.getpgid(0)  # double fork, cannot reacquire a tty)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        log = tmp_path / "corosync.log"
        wait_until(lambda: "A new membership" in log.read_text(), 10, "ring formed")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), 10, "daemon exit")
    assert "Corosync Cluster Engine exiting normally" in log.read_text()


def test_daemon_mode_reports_bind_failure(tmp_path):
    port = pick_port()
    conf = tmp_path / "corosync.conf"
    # 192.0.2.1 (TEST-NET-1) is not configured here: bind fails, the parent must say so.
    conf.write_text(node_config(nodeid=1, nodes=[(1, "192.0.2.1")], port=port,
                                directory=tmp_path))
    r = run("-c", str(conf), env={"COROSYNC_LOCAL_ADDRS": "192.0.2.1"})
    assert r.returncode == 15
    assert "Unable to bind the socket to 192.0.2.1" in (tmp_path / "corosync.log").read_text()


def test_plain_corosync_f_runs_with_the_embedded_config():
    """The README's "install and run": ``corosync -f`` with no config anywhere.  Run in
    private mount + network namespaces so /etc/corosync, /run, /var/lib/corosync and port
    5405 on 127.0.0.1 are ours alone."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip for private namespaces")
    env = {k: v for k, v in os.environ.items()
           if k not in ("COROSYNC_MAIN_CONFIG_FILE", "COROSYNC_LOCAL_ADDRS", "COROSYNC_RUN_DIR")}
    inner = ("ip link set lo up && mkdir -p /etc/corosync /var/lib/corosync && "
             "mount -t tmpfs none /etc/corosync && mount -t tmpfs none /var/lib/corosync && "
             "mount -t tmpfs none /run && "
             f"exec {sys.executable} -m corosync.exec.main -f")
    proc = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", inner], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                chunk = os.read(proc.stdout.fileno(), 65536)
            except BlockingIOError:
                chunk = b""
            if chunk:
                lines.append(chunk.decode(errors="replace"))
            text = "".join(lines)
            if "A new membership" in text or "mount:" in text or proc.poll() is not None:
                break
            time.sleep(0.05)
        text = "".join(lines)
        if "mount:" in text:
            pytest.skip(f"cannot mount in a private namespace here: {text.strip()}")
        assert "using the built-in single-node configuration" in text
        assert "A new membership (1." in text and "Members joined: 1" in text
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # unshare and sh exec: this pid is the daemon
        os.set_blocking(proc.stdout.fileno(), True)
        out, _ = proc.communicate(timeout=15)
        rest = out.decode(errors="replace")
    assert proc.returncode == 0, text + rest
    assert "Corosync Cluster Engine exiting normally" in rest


def test_refuses_to_run_setuid(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run with real uid != effective uid")
    port = pick_port()
    conf = tmp_path / "corosync.conf"
    conf.write_text(node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port,
                                directory=tmp_path))
    r = subprocess.run(CMD + ["-f", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30, env={**os.environ, "COROSYNC_LOCAL_ADDRS": "127.0.0.1"},
                       preexec_fn=lambda: os.setresuid(65534, 0, 0))  # as if setuid-root
    assert r.returncode == 15
    assert "refuses to run setuid or setgid" in (tmp_path / "corosync.log").read_text() + r.stderr


def test_unwritable_logfile_is_a_config_error(tmp_path):
    port = pick_port()
    conf = tmp_path / "corosync.conf"
    text = node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port, directory=tmp_path)
    conf.write_text(text.replace(str(tmp_path / "corosync.log"),
                                 str(tmp_path / "missing-dir" / "corosync.log")))
    r = run("-f", "-c", str(conf), env={"COROSYNC_LOCAL_ADDRS": "127.0.0.1"})
    assert r.returncode == 8
    assert "Can't open logfile '" in r.stderr and "missing-dir/corosync.log" in r.stderr
    assert "No such file or directory (2)." in r.stderr
