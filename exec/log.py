"""corosync-style logging for the executive (logsys/libqb line formats).

Why our own small logger instead of :mod:`logging` handlers: the line formats are part of
the product (operators grep them, tests and tools parse them), and they depend on the
``logging`` section of corosync.conf in ways that map poorly onto ``logging.Formatter``:

* stderr:   ``[%t ]%7p [%6g] [%n:][%f:%l ]%b``  e.g. ``Nov 22 03:56:41.344 error   [MAIN  ] ...``
* logfile:  ``[%t ][%P] %H %N %7p [%6g] ...`` e.g.
  ``Nov 22 03:59:54.540 [11298] vm corosync notice  [TOTEM ] ...``
* syslog:   the stderr format without timestamp and priority (syslog adds both).

``timestamp: on`` prints seconds, ``timestamp: hires`` milliseconds, ``off`` nothing.
``fileline`` inserts `` file:line`` after the subsystem, ``function_name`` the function
name (``file:function:line`` when both are on, as libqb's format insertion does).
``debug: on`` lets DEBUG through, ``debug: trace`` TRACE too; ``logger_subsys`` entries
override ``debug`` per subsystem.

Repeated error lines are rate limited with :class:`RateLimiter` (a storm of forged packets
must not turn into a storm of log lines).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import IO, Any, Callable

from .totem.events import LogLevel

_LEVEL_NAMES = {
    LogLevel.CRIT: "crit",
    LogLevel.ERROR: "error",
    LogLevel.WARNING: "warning",
    LogLevel.NOTICE: "notice",
    LogLevel.INFO: "info",
    LogLevel.DEBUG: "debug",
    LogLevel.TRACE: "trace",
}

_SYSLOG_FACILITIES = {
    "daemon": 3, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23, "user": 1,
}

_PRIORITIES = {
    "alert": LogLevel.CRIT, "crit": LogLevel.CRIT, "emerg": LogLevel.CRIT,
    "err": LogLevel.ERROR, "error": LogLevel.ERROR, "warning": LogLevel.WARNING,
    "notice": LogLevel.NOTICE, "info": LogLevel.INFO, "debug": LogLevel.DEBUG,
    "trace": LogLevel.TRACE,
}

_DEBUG_THRESHOLD = {"off": LogLevel.INFO, "on": LogLevel.DEBUG, "trace": LogLevel.TRACE}


def _flag(value: Any, default: bool) -> bool:
    """Accept corosync's yes/no/on/off strings as well as real booleans."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "true", "1")


def format_timestamp(when: float, mode: str) -> str:
    """``Nov 22 03:59:54`` (on) or ``Nov 22 03:59:54.540`` (hires); '' when off."""
    if mode == "off":
        return ""
    tm = time.localtime(when)
    base = time.strftime("%b %d %H:%M:%S", tm)
    if mode == "hires":
        return f"{base}.{int((when % 1) * 1000):03d}"
    return base


def _timestamp_mode(value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    text = str(value).strip().lower()
    if text in ("hires",):
        return "hires"
    if text in ("on", "yes", "true", "1"):
        return "on"
    return "off"


class RateLimiter:
    """Allow one event per ``key`` per ``interval`` seconds; count what was suppressed.

    ``allow(key)`` returns ``None`` when the event must be dropped, else the number of
    events suppressed since the last allowed one (0 normally), so the caller can append
    "(N similar messages suppressed)".
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class _NoLogfile:
    """A ``logging`` section seen without its logfile destination (reconfigure() opens
    the file itself, before changing anything)."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        if name == "to_logfile":
            return False
        return getattr(self._settings, name)


class CorosyncLog:
    """The executive's logger: one instance per process, configured from the
    ``logging`` settings of the loaded config (duck-typed: any object with the
    attributes of ``LoggingSettings``; missing attributes take corosync's defaults).

    Before the config is known (``configure`` not yet called) it logs to stderr with a
    hires timestamp, like the real daemon does for early errors.
    """

    def __init__(self, *, stderr: IO[str] | None = None, app: str = "corosync") -> None:
        self.app = app
        self.host = socket.gethostname().split(".")[0]
        self.pid = os.getpid()
        self._stderr = stderr if stderr is not None else sys.stderr
        self.to_stderr = True
        self.to_logfile = False
        self.to_syslog = False
        self.logfile_path: str | None = None
        self._logfile: IO[str] | None = None
        self.timestamp = "hires"
        self.fileline = False
        self.function_name = False
        self.threshold = LogLevel.INFO
        self.subsys_threshold: dict[str, LogLevel] = {}
        self._syslog_facility = 3
        self._syslog_sock: socket.socket | None = None
        self._syslog_retry_at = 0.0
        self.syslog_path = "/dev/log"
        self.syslog_threshold = LogLevel.INFO
        self.limiter = RateLimiter()
        #: set once the daemon detached from its terminal (stderr is /dev/null then)
        self._detached = False

    # -- configuration -------------------------------------------------------------------

    def configure(self, settings: Any) -> None:
        """Apply a ``logging`` section.  Raises OSError if the logfile cannot be opened
        (the caller turns that into a startup error naming the file)."""
        self.to_stderr = _flag(getattr(settings, "to_stderr", None), True)
        self.to_logfile = _flag(getattr(settings, "to_logfile", None), False)
        self.to_syslog = _flag(getattr(settings, "to_syslog", None), False)
        self.timestamp = _timestamp_mode(getattr(settings, "timestamp", "hires"))
        self.fileline = _flag(getattr(settings, "fileline", None), False)
        self.function_name = _flag(getattr(settings, "function_name", None), False)
        self.threshold = self._debug_threshold(getattr(settings, "debug", "off"))
        self.subsys_threshold = {}
        for subsys, overrides in (getattr(settings, "logger_subsys", None) or {}).items():
            debug = overrides.get("debug") if isinstance(overrides, dict) else getattr(
                overrides, "debug", None)
            if debug is not None:
                self.subsys_threshold[str(subsys).upper()] = self._debug_threshold(debug)
        self.syslog_threshold = _PRIORITIES.get(
            str(getattr(settings, "syslog_priority", "info") or "info").lower(), LogLevel.INFO)
        facility = str(getattr(settings, "syslog_facility", "daemon") or "daemon").lower()
        self._syslog_facility = _SYSLOG_FACILITIES.get(facility, 3)
        self.close_logfile()
        if self.to_logfile:
            path = getattr(settings, "logfile", None) or "/var/log/corosync/corosync.log"
            self.logfile_path = str(path)
            self._logfile = open(self.logfile_path, "a", buffering=1, encoding="utf-8",
                                 errors="replace")

    def reconfigure(self, settings: Any) -> None:
        """Apply a ``logging`` section on a running daemon (config reload).

        The new logfile is opened *before* anything changes: if it cannot be opened the
        daemon keeps logging where it did and OSError tells the caller why.  A daemon that
        detached keeps stderr off whatever the section says (stderr is /dev/null)."""
        new_file: IO[str] | None = None
        keep: IO[str] | None = None
        if _flag(getattr(settings, "to_logfile", None), False):
            path = str(getattr(settings, "logfile", None) or "/var/log/corosync/corosync.log")
            if self._logfile is not None and path == self.logfile_path:
                keep = self._logfile  # same file: no reopen, no lost line
            else:
                new_file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        if keep is not None:
            self._logfile = None  # configure() must not close the file we keep
        self.configure(_NoLogfile(settings))  # closes a replaced file, opens nothing
        if keep is not None:
            self._logfile = keep
        elif new_file is not None:
            self._logfile = new_file
            self.logfile_path = str(getattr(settings, "logfile", None)
                                    or "/var/log/corosync/corosync.log")
        self.to_logfile = self._logfile is not None
        if self._detached:
            self.to_stderr = False

    def reopen_logfile(self) -> None:
        """``corosync-cfgtool -L``: close and reopen the logfile by name, so a file that
        logrotate moved away (or deleted) is replaced by a fresh one at the configured
        path; a copy-truncated file simply continues (append mode).  Raises OSError when
        the path cannot be opened; the old file then stays in use."""
        if not self.to_logfile or not self.logfile_path:
            return
        fresh = open(self.logfile_path, "a", buffering=1, encoding="utf-8", errors="replace")
        old, self._logfile = self._logfile, fresh
        if old is not None:
            try:
                old.close()
            except OSError:
                pass

    @staticmethod
    def _debug_threshold(value: Any) -> LogLevel:
        if value is True:
            return LogLevel.DEBUG
        return _DEBUG_THRESHOLD.get(str(value).strip().lower(), LogLevel.INFO)

    def reopen_after_fork(self) -> None:
        """After daemonizing: new pid, no stderr, and every inherited fd was closed, so the
        logfile and the syslog socket are opened again."""
        self.pid = os.getpid()
        self.to_stderr = False
        self._detached = True
        self._syslog_sock = None
        self.close_logfile()
        if self.to_logfile and self.logfile_path:
            self._logfile = open(self.logfile_path, "a", buffering=1, encoding="utf-8",
                                 errors="replace")

    def close_logfile(self) -> None:
        if self._logfile is not None:
            try:
                self._logfile.close()
            except OSError:
                pass
            self._logfile = None

    # -- emitting ------------------------------------------------------------------------

    def enabled(self, level: LogLevel, subsys: str = "MAIN") -> bool:
        return level <= self.subsys_threshold.get(subsys, self.threshold)

    def log(self, level: LogLevel, subsys: str, message: str, *, where: tuple[str, int, str]
            | None = None) -> None:
        if not self.enabled(level, subsys):
            return
        now = time.time()
        core = self._core(level, subsys, message, where)
        stamp = format_timestamp(now, self.timestamp)
        if self.to_stderr:
            line = f"{stamp} {core}" if stamp else core
            self._write(self._stderr, line)
        if self._logfile is not None:
            prefix = f"[{self.pid}] {self.host} {self.app} "
            line = f"{stamp} {prefix}{core}" if stamp else prefix + core
            self._write(self._logfile, line)
        if self.to_syslog and level <= self.syslog_threshold:
            self._syslog(level, self._core(None, subsys, message, where))

    def _core(self, level: LogLevel | None, subsys: str, message: str,
              where: tuple[str, int, str] | None) -> str:
        parts = []
        if level is not None:
            parts.append(f"{_LEVEL_NAMES.get(level, 'info'):<7}")
        parts.append(f"[{subsys[:6]:<6}]")
        if where is not None and (self.fileline or self.function_name):
            file, line, func = where
            if self.fileline and self.function_name:
                parts.append(f"{file}:{func}:{line}")
            elif self.fileline:
                parts.append(f"{file}:{line}")
            else:
                parts.append(func)
        parts.append(message)
        return " ".join(parts)

    @staticmethod
    def _write(stream: IO[str], line: str) -> None:
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a full disk or closed stderr must not take the node down

    def _syslog(self, level: LogLevel, core: str) -> None:
        pri = self._syslog_facility * 8 + min(int(level), 7)
        payload = f"<{pri}>{self.app}[{self.pid}]: {core}".encode("utf-8", "replace")
        if self._syslog_sock is None:
            now = time.monotonic()
            if now < self._syslog_retry_at:
                return  # no syslog daemon: don't try to connect for every line
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.syslog_path)
            except OSError:
                sock.close()
                self._syslog_retry_at = now + 10.0
                return
            self._syslog_sock = sock
        try:
            self._syslog_sock.send(payload)
        except OSError:
            self._syslog_sock.close()
            self._syslog_sock = None

    def limited(self, level: LogLevel, subsys: str, key: str, message: str) -> None:
        """Log at most one line per ``key`` per limiter interval."""
        suppressed = self.limiter.allow(key)
        if suppressed is None:
            return
        if suppressed:
            message = f"{message} ({suppressed} similar messages suppressed)"
        self.log(level, subsys, message)

    # -- convenience ---------------------------------------------------------------------

    def notice(self, subsys: str, message: str) -> None:
        self.log(LogLevel.NOTICE, subsys, message)

    def info(self, subsys: str, message: str) -> None:
        self.log(LogLevel.INFO, subsys, message)

    def warning(self, subsys: str, message: str) -> None:
        self.log(LogLevel.WARNING, subsys, message)

    def error(self, subsys: str, message: str) -> None:
        self.log(LogLevel.ERROR, subsys, message)

    def debug(self, subsys: str, message: str) -> None:
        self.log(LogLevel.DEBUG, subsys, message)
