"""Log line formats of exec/log.py against the real daemon's formats."""

from __future__ import annotations

import io
import re
import socket
import types

from corosync.exec.log import CorosyncLog, RateLimiter
from corosync.exec.totem.events import LogLevel


def settings(**kw):
    base = dict(to_stderr=True, to_logfile=False, logfile=None, to_syslog=False,
                 syslog_facility="daemon", syslog_priority="info", debug="off",
                 timestamp="hires", fileline=False, function_name=False, logger_subsys={})
    base.update(kw)
    return types.SimpleNamespace(**base)


def make(**kw):
    out = io.StringIO()
    log = CorosyncLog(stderr=out)
    log.configure(settings(**kw))
    return log, out


def test_stderr_format_matches_reference():
    log, out = make()
    log.error("MAIN", "Nodeid 1 appears twice in corosync.conf")
    log.notice("QUORUM", "Members[3]: 1 2 3")
    a, b = out.getvalue().splitlines()
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3} error   \[MAIN  \] "
                        r"Nodeid 1 appears twice in corosync.conf", a)
    assert b.endswith(" notice  [QUORUM] Members[3]: 1 2 3")


def test_logfile_format_matches_reference(tmp_path):
    path = tmp_path / "corosync.log"
    log, out = make(to_stderr=False, to_logfile=True, logfile=str(path))
    log.host = "vm"
    log.pid = 11298
    log.notice("TOTEM", "adding new UDPU member {198.18.0.1}")
    assert out.getvalue() == ""
    line = path.read_text().splitlines()[0]
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \[11298\] vm corosync "
                        r"notice  \[TOTEM \] adding new UDPU member \{198\.18\.0\.1\}", line)


def test_timestamp_modes_fileline_function_name():
    log, out = make(timestamp="off", fileline=True, function_name=True)
    log.log(LogLevel.WARNING, "TOTEM", "x", where=("totemsrp.py", 12, "token"))
    assert out.getvalue() == "warning [TOTEM ] totemsrp.py:token:12 x\n"
    log, out = make(timestamp="on", fileline=True)
    log.log(LogLevel.INFO, "MAIN", "y", where=("main.py", 3, "main"))
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d info    \[MAIN  \] main.py:3 y\n",
                        out.getvalue())


def test_debug_levels_and_logger_subsys():
    log, out = make(debug="off", logger_subsys={"TOTEM": {"debug": "on"}})
    log.debug("MAIN", "hidden")
    log.debug("TOTEM", "shown")
    log.log(LogLevel.TRACE, "TOTEM", "trace hidden")
    assert "hidden" not in out.getvalue() and "shown" in out.getvalue()
    log, out = make(debug="trace")
    log.log(LogLevel.TRACE, "MAIN", "trace shown")
    assert "trace   [MAIN  ] trace shown" in out.getvalue()


def test_syslog_datagram(tmp_path):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    log, _ = make(to_stderr=False, to_syslog=True, syslog_facility="local0")
    log.syslog_path = path
    log.pid = 42
    log.notice("TOTEM", "hello")
    log.debug("TOTEM", "not sent")
    data = server.recv(1000)
    assert data == b"<133>corosync[42]: [TOTEM ] hello"  # local0(16)*8 + notice(5)
    server.close()


def test_rate_limiter_counts_suppressed():
    now = [0.0]
    rl = RateLimiter(10, clock=lambda: now[0])
    assert rl.allow("k") == 0
    assert rl.allow("k") is None and rl.allow("k") is None
    now[0] = 10.5
    assert rl.allow("k") == 2
    log, out = make()
    log.limiter = RateLimiter(10, clock=lambda: now[0])
    for _ in range(5):
        log.limited(LogLevel.ERROR, "TOTEM", "digest", "Received message has invalid digest")
    assert out.getvalue().count("invalid digest") == 1
