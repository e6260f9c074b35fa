"""The live side of a reload and its neighbours: the logger (reconfigure, -L reopen), the
node (new Totem values, transport members, bind retries) and the executive hooks
(exec/main.py ServiceLayer: reload_config, reopen_log_files, fatal_exit)."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest

from corosync.exec.log import CorosyncLog
from corosync.exec.node import Node
from corosync.exec.totem.config import derive
from corosync.exec.totem.events import LogLevel
from corosync.exec.transport.udp import UdpTransport
from corosync.exec.transport.udpu import UdpuTransport

import exec_testlib as lib


def settings(**kw):
    base = dict(to_stderr=False, to_logfile=False, logfile=None, to_syslog=False,
                syslog_facility="daemon", syslog_priority="info", debug="off",
                timestamp="hires", fileline=False, function_name=False, logger_subsys={})
    base.update(kw)
    return types.SimpleNamespace(**base)


# -- logger -------------------------------------------------------------------------------
def test_reopen_after_logrotate_move_writes_a_new_file(tmp_path: Path):
    path = tmp_path / "corosync.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(path)))
    log.notice("MAIN", "before")
    moved = tmp_path / "corosync.log.1"
    os.rename(path, moved)
    log.notice("MAIN", "still the old file")
    log.reopen_logfile()
    log.notice("MAIN", "after")
    assert "before" in moved.read_text() and "still the old file" in moved.read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_reopen_after_copytruncate_continues_at_the_start(tmp_path: Path):
    path = tmp_path / "corosync.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(path)))
    log.notice("MAIN", "x" * 200)
    os.truncate(path, 0)
    log.reopen_logfile()
    log.notice("MAIN", "fresh")
    text = path.read_text()
    assert text.endswith("fresh\n") and "\0" not in text and "xxxx" not in text


def test_reopen_failure_keeps_the_old_file(tmp_path: Path):
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "corosync.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(path)))
    os.rename(path, tmp_path / "moved.log")
    d.rmdir()
    with pytest.raises(OSError):
        log.reopen_logfile()
    log.notice("MAIN", "still logged")
    assert "still logged" in (tmp_path / "moved.log").read_text()


def test_reconfigure_switches_file_debug_and_timestamp(tmp_path: Path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(a)))
    log.debug("MAIN", "hidden")
    log.reconfigure(settings(to_logfile=True, logfile=str(b), debug="on", timestamp="off"))
    log.debug("MAIN", "shown")
    assert "hidden" not in a.read_text() and "shown" not in a.read_text()
    assert b.read_text().startswith(f"[{log.pid}] ")  # timestamp off
    assert "debug   [MAIN  ] shown" in b.read_text()


def test_reconfigure_same_file_is_kept_open_and_bad_file_changes_nothing(tmp_path: Path):
    a = tmp_path / "a.log"
    err = io.StringIO()
    log = CorosyncLog(stderr=err)
    log.configure(settings(to_logfile=True, logfile=str(a)))
    before = log._logfile
    log.reconfigure(settings(to_logfile=True, logfile=str(a), debug="on"))
    assert log._logfile is before and log.enabled(LogLevel.DEBUG)
    with pytest.raises(OSError):
        log.reconfigure(settings(to_logfile=True, logfile=str(tmp_path / "no" / "x.log"),
                                 to_stderr=True))
    log.notice("MAIN", "kept")
    assert "kept" in a.read_text() and err.getvalue() == ""  # nothing changed
    log.reconfigure(settings(to_logfile=False, to_stderr=True))
    log.notice("MAIN", "to stderr only")
    assert "to stderr only" in err.getvalue() and "to stderr only" not in a.read_text()


def test_detached_daemon_keeps_stderr_off(tmp_path: Path):
    err = io.StringIO()
    log = CorosyncLog(stderr=err)
    log.configure(settings(to_stderr=True))
    log.reopen_after_fork()
    log.reconfigure(settings(to_stderr=True))
    log.notice("MAIN", "x")
    assert err.getvalue() == ""


# -- node -----------------------------------------------------------------------------------
class FakeSrp:
    def __init__(self, config):
        self.config = config


def make_node(tmp_path: Path, transport) -> tuple[Node, io.StringIO]:
    node_entry = types.SimpleNamespace(nodeid=1, ring0_addr="127.0.0.1", name="n1")
    cfg = types.SimpleNamespace(
        local_node=node_entry, nodes=[node_entry],
        system=types.SimpleNamespace(state_dir=str(tmp_path), run_dir=str(tmp_path)),
        totem=types.SimpleNamespace(transport="udpu", mcastport=transport.port),
        totem_config=derive(1, token=300, join=50))
    out = io.StringIO()
    node = Node(cfg, log=CorosyncLog(stderr=out), transport=transport,
                pg=FakeSrp(cfg.totem_config))
    return node, out


def test_apply_totem_config_replaces_timers_not_netmtu(tmp_path: Path):
    t = UdpuTransport("127.0.0.1", lib.pick_port(), [(1, "127.0.0.1")])
    node, _ = make_node(tmp_path, t)
    new = derive(2, token=900, join=50, block_unlisted_ips=False)
    node.apply_totem_config(new)
    assert node.srp.config is new and node.config.totem_config is new
    assert t.block_unlisted_ips is False
    with pytest.raises(ValueError):
        node.apply_totem_config(attrs.evolve(new, netmtu=1200))


def test_members_added_and_removed_udpu_and_udp(tmp_path: Path):
    t = UdpuTransport("127.0.0.1", lib.pick_port(), [(1, "127.0.0.1")])
    node, out = make_node(tmp_path, t)
    node.add_member(2, "127.0.0.2")
    assert "127.0.0.2" in t.member_ips and t._accept(("127.0.0.2", 1))
    assert "notice  [TOTEM ] adding new UDPU member {127.0.0.2}" in out.getvalue()
    node.remove_member(2, "127.0.0.2")
    assert "127.0.0.2" not in t.member_ips and not t._accept(("127.0.0.2", 1))
    assert "notice  [TOTEM ] removing UDPU member {127.0.0.2}" in out.getvalue()
    u = UdpTransport("127.0.0.1", 5405, "239.192.1.1", [(1, "127.0.0.1")])
    u.add_member(3, "127.0.0.3")
    assert u._members[3] == ("127.0.0.3", 5405)
    u.remove_member(3)
    assert 3 not in u._members


class Busy:
    """A transport whose bind fails ``fails`` times with ``err``."""

    name = "UDP/IP Unicast"
    local_ip = "127.0.0.1"
    port = 5405

    def __init__(self, fails: int, err: int = errno.EADDRINUSE) -> None:
        self.fails, self.err, self.opens = fails, err, 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.fails:
            raise OSError(self.err, os.strerror(self.err))


async def test_bind_retries_then_succeeds(tmp_path: Path):
    t = Busy(3)
    node, out = make_node(tmp_path, t)
    node.bind_retry_interval_ms = 1
    await node._open_transport()
    assert t.opens == 4
    assert out.getvalue().count(
        "warning [TOTEM ] bind token socket failed: Address already in use (98)") == 3


async def test_bind_gives_up_after_ten_retries(tmp_path: Path):
    t = Busy(100)
    node, out = make_node(tmp_path, t)
    node.bind_retry_interval_ms = 1
    with pytest.raises(OSError):
        await node._open_transport()
    assert t.opens == 11 and out.getvalue().count("bind token socket failed") == 11
    t = Busy(100, errno.EADDRNOTAVAIL)  # not retried: the address is not here
    node, out = make_node(tmp_path, t)
    with pytest.raises(OSError):
        await node._open_transport()
    assert t.opens == 1 and "bind token socket failed" not in out.getvalue()


def test_daemon_exits_1_when_the_port_stays_busy(tmp_path: Path):
    """After the retries: "Unable to create sockets, exiting: …" and exit(EXIT_FAILURE),
    as corosync 3.1.7 (retry interval shortened to 1 ms for the test)."""
    port = lib.pick_port(["127.0.0.1"])
    conf = tmp_path / "corosync.conf"
    conf.write_text(lib.node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port,
                                    directory=tmp_path))
    code = ("import sys, corosync.exec.node as n; n.BIND_RETRIES_INTERVAL_MS = 1; "
            "from corosync.exec.main import main; sys.exit(main())")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        r = subprocess.run([sys.executable, "-c", code, "-f", "-c", str(conf)],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "COROSYNC_LOCAL_ADDRS": "127.0.0.1"})
    log = (tmp_path / "corosync.log").read_text()
    assert r.returncode == 1, (r, log)
    assert log.count("bind token socket failed: Address already in use (98)") == 11
    assert log.rstrip().endswith(
        "error   [TOTEM ] Unable to create sockets, exiting: Address already in use (98)")
    assert "exiting with status" not in log


# -- executive hooks ------------------------------------------------------------------------
def test_fatal_exit_hook_logs_corosyncs_line_and_exits_255(tmp_path: Path):
    from corosync.exec.main import ServiceLayer

    path = tmp_path / "corosync.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(path)))
    node = types.SimpleNamespace(services=None)
    exits: list[int] = []
    layer = ServiceLayer(node, None, None, log, exit_process=exits.append)
    hooks = layer._hooks()
    assert set(hooks) == {"reopen_log_files", "fatal_exit"}  # no source: no reload hook
    hooks["fatal_exit"]("killed by node 2")
    assert exits == [255]
    assert path.read_text().rstrip().endswith(
        "error   [MAIN  ] Corosync Cluster Engine exiting with status -1 at cfg.c:566.")


def test_reopen_hook_answers_ok_or_library_error(tmp_path: Path):
    from corosync.exec.main import ConfigSource, ServiceLayer
    from corosync.lib.ipc import CsError

    d = tmp_path / "logs"
    d.mkdir()
    path = d / "corosync.log"
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(settings(to_logfile=True, logfile=str(path), debug="on"))
    layer = ServiceLayer(types.SimpleNamespace(services=None), None, None, log,
                         config_source=ConfigSource(str(tmp_path / "c.conf")))
    hooks = layer._hooks()
    assert "reload_config" in hooks
    os.rename(path, tmp_path / "old.log")
    assert hooks["reopen_log_files"]() == CsError.OK
    assert "Reopening logging files" in (tmp_path / "old.log").read_text()
    assert path.exists()
    os.rename(path, tmp_path / "old2.log")
    d.rmdir()
    assert hooks["reopen_log_files"]() == CsError.ERR_LIBRARY


def test_detached_daemon_reloads_a_relative_config_path(tmp_path: Path):
    """``corosync -c corosync.conf`` (relative) without -f: the daemon chdirs to / when it
    detaches, yet ``-R`` re-reads the file it was started with."""
    import signal

    port = lib.pick_port(["127.0.0.1"])
    conf = tmp_path / "corosync.conf"
    conf.write_text(lib.node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=port,
                                    directory=tmp_path))
    env = {**os.environ, "COROSYNC_LOCAL_ADDRS": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-m", "corosync.exec.main", "-c", "corosync.conf"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    pid = int((tmp_path / "run" / "corosync.pid").read_text())
    try:
        log = tmp_path / "corosync.log"
        lib.wait_until(lambda: "Completed service synchronization" in log.read_text(), 15,
                       "the daemon's first ring")
        conf.write_text(conf.read_text().replace("token: 300", "token: 450"))
        ct = subprocess.run([sys.executable, "-m", "corosync.tools.cfgtool", "-R"], env=env,
                            capture_output=True, text=True, timeout=60)
        assert (ct.returncode, ct.stdout) == (0, "Reloading corosync.conf...\nDone\n"), ct
        cm = subprocess.run([sys.executable, "-m", "corosync.tools.cmapctl", "-g",
                             "runtime.config.totem.token"], env=env, capture_output=True,
                            text=True, timeout=60)
        assert cm.stdout == "runtime.config.totem.token (u32) = 450\n", cm
    finally:
        os.kill(pid, signal.SIGTERM)
    lib.wait_until(lambda: not Path(f"/proc/{pid}").exists(), 15, "the daemon to exit")
