"""``corosync``: the cluster engine executable.

Flags as the real 3.1.7 daemon: ``-c FILE`` config, ``-f`` foreground, ``-t`` test the
config and exit, ``-v`` version; ``-p`` / ``-r`` (old scheduler/memlock switches) are
accepted and ignored; anything else prints the usage on stderr and exits 1.

Config path: ``-c``, else ``$COROSYNC_MAIN_CONFIG_FILE``, else /etc/corosync/corosync.conf.
When that default file does not exist and neither ``-c`` nor the variable was given, the
embedded default (one node on 127.0.0.1, udpu) is used with a notice, so ``corosync -f``
works straight after ``pip install``.

Exit codes are corosync's ``e_corosync_done`` values: 8 config, 15 fatal, 16 missing
directory, 17 lock failure, 18 already running; plus what corosync exits with outside that
enum: 1 when the ring port stays in use through the bind retries, 255 when killed by
``corosync-cfgtool -k`` (``exit(-1)``).

The cfg service reaches the executive through three hooks (:class:`ServiceLayer`):
``reload_config`` (exec/reload.py), ``reopen_log_files`` and ``fatal_exit``.

Startup order (and why):

1. parse the config — syntax errors print ``parser error: …`` without any other line,
   like the real daemon; semantic errors are logged after the "starting up" line;
2. without ``-f``: detach (double fork, setsid, chdir /, stdio to /dev/null).  The parent
   waits on a pipe until the daemon reports "running" or an exit code, so scripts see a
   failure instead of a silently dead daemon;
3. logging per the config; pid file ``<run_dir>/corosync.pid`` locked with a POSIX lock
   (same kind as the real daemon, so the two exclude each other on one machine);
4. run the node until SIGTERM/SIGINT, then leave the ring cleanly (peers log the node as
   left instead of waiting for a token loss) and exit 0.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
from typing import Any, Callable, Sequence

import attrs
import trio

from .log import CorosyncLog
from .totem.events import LogLevel

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_FORK = 4
EXIT_CONFIG = 8
EXIT_INIT_SERVICES = 13
EXIT_FATAL = 15
EXIT_DIR_NOT_PRESENT = 16
EXIT_LOCK = 17
EXIT_ALREADY_RUNNING = 18
#: exit(EXIT_FAILURE) after the bind retries (totemudpu.c "Unable to create sockets")
EXIT_SOCKETS = 1
#: exit(-1): COROSYNC_FATAL_ERROR_EXIT, e.g. killed by ``corosync-cfgtool -k``
EXIT_KILLED = 255

DEFAULT_CONFIG = "/etc/corosync/corosync.conf"
WIRE_VERSION = "3.1.7"
FEATURES = "udpu udp totemcrypto-2.4 pure-python"

USAGE = """usage:
        -c     : Corosync config file path.
        -f     : Start application in foreground.
        -t     : Test configuration and exit.
        -v     : Display version, git revision and some useful information about Corosync and exit.
"""


def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("corosync-py")
    except Exception:
        return "0.1.0"


def version_text() -> str:
    return (f"Corosync Cluster Engine, version '{version()}'\n"
            f"corosync-py: a Python implementation, wire-compatible with corosync {WIRE_VERSION}"
            f" (udpu/udp)\n"
            f"\n"
            f"Built-in features: {FEATURES}\n"
            f"Available crypto models: pycryptodome\n"
            f"Available compression models:\n")


@attrs.define
class ConfigSource:
    """The file the daemon was started with, or the embedded default text (path None)."""

    path: str | None
    text: str | None = None

    def read(self) -> Any:
        from .reload import read_new_config

        return read_new_config(self.path, self.text)


class Options:
    def __init__(self) -> None:
        self.config: str | None = None
        self.foreground = False
        self.test = False
        self.version = False
        #: where the configuration was read from (a reload reads the same source again)
        self.config_source: ConfigSource | None = None


def parse_args(argv: Sequence[str]) -> Options | int:
    """getopt-style parsing ("c:ftvpr"); returns the exit code on a usage error."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            break  # getopt stops at the first non-option; extra operands are ignored
        j = 1
        while j < len(arg):
            ch = arg[j]
            if ch == "c":
                value = arg[j + 1:]
                if not value:
                    i += 1
                    if i >= len(argv):
                        sys.stderr.write("corosync: option requires an argument -- 'c'\n"
                                         + USAGE)
                        return EXIT_USAGE
                    value = argv[i]
                opts.config = value
                break
            if ch == "f":
                opts.foreground = True
            elif ch == "t":
                opts.test = True
            elif ch == "v":
                opts.version = True
            elif ch in "pr":
                pass  # accepted for compatibility, no effect
            else:
                sys.stderr.write(f"corosync: invalid option -- '{ch}'\n" + USAGE)
                return EXIT_USAGE
            j += 1
        i += 1
    return opts


def _exit_error(log: CorosyncLog, status: int) -> int:
    log.error("MAIN", f"Corosync Cluster Engine exiting with status {status}.")
    return status


def load(opts: Options, log: CorosyncLog) -> tuple[Any, Any] | int:
    """Config + crypto envelope, or an exit code after printing the error."""
    from .config.errors import ConfigError
    from .config.model import default_config_text, load_config

    path = opts.config or os.environ.get("COROSYNC_MAIN_CONFIG_FILE")
    use_default_text = path is None and not os.path.exists(DEFAULT_CONFIG)
    starting = not opts.test

    def starting_up() -> None:
        if starting:
            log.notice("MAIN", f"Corosync Cluster Engine {version()} starting up")
            log.info("MAIN", f"Corosync built-in features: {FEATURES}")

    # absolute: the daemon chdirs to / when it detaches, and a reload re-reads this path
    opts.config_source = (ConfigSource(None, default_config_text()) if use_default_text
                          else ConfigSource(os.path.abspath(path or DEFAULT_CONFIG)))
    try:
        if use_default_text:
            config = load_config(text=default_config_text())
        else:
            config = load_config(path or DEFAULT_CONFIG)
    except ConfigError as exc:
        if getattr(exc, "parser_style", False):
            sys.stderr.write(f"{exc}\n")
            return getattr(exc, "exit_code", EXIT_CONFIG)
        starting_up()
        log.error("MAIN", f"parse error in config: {exc}")
        return _exit_error(log, getattr(exc, "exit_code", EXIT_CONFIG))
    except OSError as exc:
        starting_up()
        log.error("MAIN", f"Could not read {path or DEFAULT_CONFIG}: {exc.strerror}")
        return _exit_error(log, EXIT_CONFIG)

    if not opts.test:
        try:
            log.configure(config.logging)
        except OSError as exc:
            log.to_stderr = True  # the configured destinations are not usable
            starting_up()
            log.error("MAIN", f"parse error in config: Can't open logfile '{exc.filename}' "
                              f"for reason: {exc.strerror} ({exc.errno}).")
            return _exit_error(log, EXIT_CONFIG)
    starting_up()
    if use_default_text:
        log.notice("MAIN", f"{DEFAULT_CONFIG} not found: using the built-in single-node "
                           f"configuration (127.0.0.1, udpu)")
        private = _private_dirs_for_unprivileged(config)
        if private:
            log.notice("MAIN", f"not running as root: state and pid files go to {private}")
    for warning in getattr(config, "warnings", []) or []:
        log.warning("MAIN", str(warning))

    try:
        from .transport.crypto import envelope_from_config

        envelope = envelope_from_config(config.totem)
    except Exception as exc:  # CryptoConfigError / KeyFileError: message names the key/file
        log.error("MAIN", str(exc))
        return _exit_error(log, EXIT_CONFIG)
    if str(getattr(config.totem, "transport", "udpu")) not in ("udpu", "udp"):
        log.error("MAIN", f"parse error in config: transport {config.totem.transport} is not "
                          f"supported by this implementation; use udpu or udp")
        return _exit_error(log, EXIT_CONFIG)
    return config, envelope


def _private_dirs_for_unprivileged(config: Any) -> str | None:
    """With the embedded config, a non-root user cannot write /var/lib/corosync or /run;
    use a private directory instead so ``corosync -f`` just works after pip install.
    Only the embedded config gets this treatment: a real config means what it says."""
    system = config.system
    if os.geteuid() == 0 or (_writable(system.state_dir) and _writable(system.run_dir)):
        return None
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache")
    private = os.path.join(base, "corosync-py")
    system.state_dir = os.path.join(private, "state")
    system.run_dir = os.path.join(private, "run")
    return private


def _writable(path: str) -> bool:
    while path and not os.path.exists(path):
        path = os.path.dirname(path.rstrip("/")) or "/"
    return os.access(path, os.W_OK)


# -- process management ------------------------------------------------------------------

def daemonize() -> int:
    """Detach; returns the write end of the readiness pipe (in the daemon).  The original
    process never returns: it exits with the status the daemon reports."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        raise SystemExit(EXIT_FORK)
    if pid > 0:
        os.close(w)
        os.waitpid(pid, 0)  # the intermediate child exits at once
        status = os.read(r, 1)
        os._exit(status[0] if status else EXIT_FATAL)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    os.closerange(3, w)
    os.closerange(w + 1, 4096)
    return w


def report_ready(pipe_fd: int | None, status: int) -> None:
    if pipe_fd is None:
        return
    try:
        os.write(pipe_fd, bytes([status & 0xFF]))
        os.close(pipe_fd)
    except OSError:
        pass


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.previous_pid: int | None = None

    def acquire(self, log: CorosyncLog) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            log.error("MAIN", f"Corosync Executive couldn't create lock file. ({self.path}: "
                              f"{exc.strerror})")
            return EXIT_LOCK
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                log.error("MAIN", "Another Corosync instance is already running.")
                return EXIT_ALREADY_RUNNING
            log.error("MAIN", f"Corosync Executive couldn't acquire lock. Error was "
                              f"{exc.strerror}")
            return EXIT_LOCK
        try:  # a pid left by a daemon that died: its IPC directories can be removed
            old = os.pread(fd, 32, 0).split()
            self.previous_pid = int(old[0]) if old and old[0].isdigit() else None
        except (OSError, ValueError):
            self.previous_pid = None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return EXIT_OK

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def ensure_dir(path: str, log: CorosyncLog) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        return True
    except OSError as exc:
        log.error("MAIN", f"Directory {path} is not usable: {exc.strerror}")
        return False


def uidgid_auth(cmap: Any) -> Callable[[int, int, int], bool]:
    """corosync's IPC accept policy (spec/ipc-wire.md §1.2): root uid or gid, or a cmap
    ``uidgid.uid.<uid>`` / ``uidgid.gid.<gid>`` (runtime, e.g. set by pacemakerd) or
    ``uidgid.config.*`` (from the config file) key holding u8 1.  Our own euid is admitted
    too, so an unprivileged daemon can serve its own user's tools."""
    from .cmap import CmapType

    def flag(key: str) -> bool:
        try:
            return cmap.get_type(key) == CmapType.UINT8 and cmap.get(key) == 1
        except Exception:
            return False

    def allowed(pid: int, uid: int, gid: int) -> bool:
        if uid == 0 or gid == 0 or uid == os.geteuid():
            return True
        return (flag(f"uidgid.uid.{uid}") or flag(f"uidgid.config.uid.{uid}")
                or flag(f"uidgid.gid.{gid}") or flag(f"uidgid.config.gid.{gid}"))

    return allowed


class ServiceStartError(Exception):
    """An IPC server could not listen (e.g. another daemon owns the name): fatal."""


class ServiceLayer:
    """The service host and its IPC servers, embedded in a :class:`~.node.Node`.

    Wiring (docs/services.md): the host sees every confchg and totempg delivery of the
    node, sends through ``node.mcast`` (TotemPg: ``QueueFull`` is its flow-control answer,
    ``send_ok`` is asked before accepting IPC requests), runs sync and, when it completes,
    calls ``node.sync_completed`` (logs the "Completed service synchronization" line and
    releases Totem's queue through ``trans_ack``).  The IPC servers refuse clients with
    EAGAIN until the first sync completed: before that there is no membership to serve.
    """

    def __init__(self, node: Any, cmap: Any, stats_cmap: Any, log: CorosyncLog, *,
                 config_source: ConfigSource | None = None,
                 exit_process: Callable[[int], Any] = os._exit) -> None:
        self.node = node
        self.log = log
        #: what ``corosync-cfgtool -R`` re-reads; None: reload answers NOT_SUPPORTED
        self.config_source = config_source
        self._exit_process = exit_process
        self.cmap = cmap
        self.stats_cmap = stats_cmap
        self.host: Any = None
        self.totem_watcher: Any = None
        self.servers: list[Any] = []
        self.first_sync_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._scopes: list[trio.CancelScope] = []
        self._running = 0
        self._closed = trio.Event()
        node.services = self

    def _build_host(self) -> Any:
        """The host is built when the node starts (not earlier) so that its "Service engine
        loaded" lines follow "The network interface … is now up", as in corosync."""
        from .host import ServiceHost

        node = self.node
        host = ServiceHost(node.nodeid, self.cmap, self._mcast, send_ok=node.pg.send_ok,
                           trans_ack=self._sync_completed, log=self.log.log,
                           shutdown=self._shutdown, stats_cmap=self.stats_cmap,
                           on_ready=self._ready, timer_add=self._timer_add,
                           timer_del=self._timer_del, log_sync_completed=False,
                           hooks=self._hooks())
        node.confchg_handlers.append(host.on_confchg)
        node.deliver_handlers.append(host.on_deliver)
        node.sync_hook = self._sync_started
        if hasattr(node, "apply_totem_config"):
            from .reload import TotemKeyWatcher

            # operators' run-time totem.* edits through cmap reach the running Totem
            self.totem_watcher = TotemKeyWatcher(self.cmap, node, lambda: node.srp.config,
                                                 self.log.log)
        return host

    # -- executive hooks offered to the services (services/cfg.py probes them) ------------

    def _hooks(self) -> dict[str, Callable[..., Any]]:
        hooks: dict[str, Callable[..., Any]] = {
            "reopen_log_files": self._reopen_log_files,
            "fatal_exit": self._fatal_exit,
        }
        if self.config_source is not None:
            hooks["reload_config"] = self._reload_config
        return hooks

    def _reload_config(self) -> int:
        """RELOAD_CONFIG reached this node (exec/reload.py does the work); the cs_error_t
        goes back to the requesting client when this node originated the request."""
        from .reload import reload_config

        node = self.node
        assert self.config_source is not None
        result = reload_config(node.config, self.config_source.read, self.cmap, node,
                               node.srp.config, self.log.log)
        if result.config is not None:
            node.config = result.config
            if result.plan is not None and result.plan.totem_config is not None:
                node.config.totem_config = result.plan.totem_config
        return result.status

    def _reopen_log_files(self) -> int:
        """``corosync-cfgtool -L`` (logrotate's postrotate): the logfile is reopened by
        name.  Like corosync, the debug line goes to the old file, and the answer is
        CS_OK unless the file cannot be opened again."""
        from ..lib.ipc import CsError

        self.log.debug("CFG", "Reopening logging files")
        try:
            self.log.reopen_logfile()
        except OSError as exc:
            self.log.error("MAIN", f"Can't reopen logfile '{exc.filename}' for reason: "
                                   f"{exc.strerror} ({exc.errno})")
            return int(CsError.ERR_LIBRARY)
        return int(CsError.OK)

    def _fatal_exit(self, reason: str) -> None:
        """KILLNODE naming this node: corosync calls its fatal-error exit with
        COROSYNC_FATAL_ERROR_EXIT (-1), i.e. logs the line below (byte-identical, log
        scrapers know it) and ``exit(-1)``: status 255, no LEAVE (peers see a token loss),
        no service unloading, the pid file left behind (the next start cleans up)."""
        self.log.debug("MAIN", f"fatal exit requested: {reason}")
        self.log.error("MAIN", "Corosync Cluster Engine exiting with status -1 at cfg.c:566.")
        self.log.close_logfile()
        self._exit_process(EXIT_KILLED)

    def _mcast(self, group: bytes, message: bytes, guarantee: Any) -> None:
        self.node.mcast([group], message, guarantee)

    @staticmethod
    def _sync_started(chg: Any) -> None:
        """The host runs sync itself (it saw the confchg first); nothing to do here."""

    def _sync_completed(self) -> None:
        self.node.sync_completed()
        self._ready()

    def _ready(self) -> None:
        """The first sync completed: the IPC servers may accept clients (corosync refuses
        them with EAGAIN before).  Called by the host (``on_ready``) and, as a fallback for
        hosts without that hook, on every sync completion (idempotent)."""
        if not self.first_sync_done.is_set():
            for server in self.servers:
                server.ready = True
            self.first_sync_done.set()

    # -- service timers (one-shot; votequorum and friends) ------------------------------

    def _timer_add(self, ms: int, fn: Callable[[], None]) -> trio.CancelScope:
        """Run ``fn`` after ``ms`` in the node's task group; the handle is a cancel scope.
        The host wraps ``fn`` (guarded, followed by a pump); Totem calls it makes are
        queued by the node's driver like any other input, never nested."""
        scope = trio.CancelScope()

        async def fire() -> None:
            with scope:
                await trio.sleep(max(ms, 0) / 1000.0)
            if not scope.cancelled_caught:
                fn()

        assert self._nursery is not None, "timers exist only while the node runs"
        self._nursery.start_soon(fire)
        return scope

    @staticmethod
    def _timer_del(handle: Any) -> None:
        if isinstance(handle, trio.CancelScope):
            handle.cancel()

    def _shutdown(self, reason: str) -> None:
        self.log.error("MAIN", f"Shutdown requested by a service: {reason}")
        self.node.stop()

    def ipc_type(self) -> str:
        try:
            return str(self.cmap.get("system.qb_ipc_type"))
        except Exception:
            return "native"

    async def start(self, nursery: trio.Nursery) -> None:
        from .ipc import IpcServer

        self._nursery = nursery
        self.host = self._build_host()
        ipc_type = self.ipc_type()
        auth = uidgid_auth(self.cmap)
        for svc in sorted(self.host.services.values(), key=lambda s: s.id):
            handler = self.host.ipc_handlers.get(svc.ipc_name or "")
            if handler is None:
                continue
            server = IpcServer(svc.ipc_name, handler, ipc_type=ipc_type, auth=auth,
                               log=self.log)
            server.ready = self.first_sync_done.is_set()
            try:
                await nursery.start(self._serve, server)
            except OSError as exc:
                raise ServiceStartError(
                    f"Can't start the IPC server {svc.ipc_name} at {server.address!r}: "
                    f"{exc.strerror or exc}") from exc
            self.servers.append(server)
            self.log.info("QB", f"server name: {svc.ipc_name}")
        nursery.start_soon(self._tick)

    async def _serve(self, server: Any, *,
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        scope = trio.CancelScope()
        self._scopes.append(scope)
        self._running += 1
        try:
            with scope:
                await server.serve(task_status=task_status)
        finally:
            self._running -= 1
            if self._running == 0:
                self._closed.set()

    async def stop(self) -> None:
        """Close every IPC server; their clients are disconnected (services see lib_exit).
        Logged like corosync's service unloading (Pacemaker's test suite looks for the
        first line); services are unloaded highest id first."""
        self.log.notice("SERV", "Unloading all Corosync service engines.")
        for server in self.servers:
            server.ready = False
        for scope in self._scopes:
            scope.cancel()
        if self._running:
            await self._closed.wait()  # the servers' cleanup (connections closed) is done
        if self.host is None:
            return
        try:
            self.host.exec_exit()
        except Exception as exc:
            self.log.limited(LogLevel.ERROR, "SERV", "exec_exit", f"exec_exit failed: {exc!r}")
        for svc in sorted(self.host.services.values(), key=lambda s: -int(s.id)):
            self.log.notice("SERV", f"Service engine unloaded: {svc.name}")

    async def _tick(self) -> None:
        """Once a second: retry sends a full queue refused and re-check the queue-level IPC
        flow control (deliveries pump too; this covers an idle ring), publish the service
        and IPC counters."""
        from .cmap import CmapType

        while True:
            try:
                self.host.pump()  # also re-evaluates the queue-level flow control
                flush = getattr(self.host, "flush_stats", None)
                if flush is not None:
                    flush()
                active = sum(s.stats.active for s in self.servers)
                closed = sum(s.stats.disconnects for s in self.servers)
                self.stats_cmap.set("stats.ipcs.global.active", active, CmapType.UINT64)
                self.stats_cmap.set("stats.ipcs.global.closed", closed, CmapType.UINT64)
            except Exception as exc:
                self.log.limited(LogLevel.ERROR, "SERV", f"tick:{type(exc).__name__}",
                                 f"service housekeeping failed: {exc!r}")
            await trio.sleep(1.0)


def _sole_cause(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups: trio's strict
    exception groups (the default from trio 0.25) wrap what a task group raises."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _pid_alive(pid: int) -> bool:
    """A stale pid file's pid may have been reused: never clean up after a live process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def run_node(config: Any, envelope: Any, log: CorosyncLog, ready_fd: int | None,
                   stale_server_pid: int | None = None,
                   config_source: ConfigSource | None = None) -> int:
    from .cmap import CmapStore
    from .ipc import remove_stale_dirs
    from .node import Node
    from .transport import make_transport

    cmap = CmapStore()
    try:
        cmap.load_config(config)
    except Exception as exc:
        log.warning("MAIN", f"cmap: could not load the configuration keys: {exc!r}")
    stats_cmap = CmapStore()

    def transport_log(level: Any, key: str, message: str) -> None:
        log.limited(level, "TOTEM", key, message)

    if envelope is not None and config.totem_config.transport_overhead != envelope.overhead:
        # Leave room for the envelope so encrypted datagrams still fit netmtu (spec §6.3).
        config.totem_config = attrs.evolve(config.totem_config,
                                           transport_overhead=envelope.overhead)
    transport = make_transport(config, envelope=envelope, log=transport_log)
    try:
        node = Node(config, log=log, transport=transport, cmap=cmap, stats_cmap=stats_cmap)
    except OSError as exc:
        log.error("MAIN", f"Can't read the ring id file in {config.system.state_dir}: "
                          f"{exc.strerror}")
        return EXIT_DIR_NOT_PRESENT
    if stale_server_pid is not None and not _pid_alive(stale_server_pid):
        removed = remove_stale_dirs(server_pid=stale_server_pid)
        if removed:
            log.info("MAIN", f"Removed {removed} IPC directories left by pid {stale_server_pid}")
    ServiceLayer(node, cmap, stats_cmap, log, config_source=config_source)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(node.run)
            except Exception as raised:
                exc = _sole_cause(raised)
                if isinstance(exc, ServiceStartError):
                    log.error("MAIN", str(exc))
                    return EXIT_INIT_SERVICES
                if isinstance(exc, OSError):
                    if exc.errno == errno.EADDRINUSE:  # after corosync's bind retries
                        log.error("TOTEM", f"Unable to create sockets, exiting: "
                                           f"{exc.strerror} ({exc.errno})")
                        return EXIT_SOCKETS
                    log.error("TOTEM", f"Unable to bind the socket to {transport.local_ip}: "
                                       f"{exc.strerror} ({exc.errno})")
                    return EXIT_FATAL
                raise

            async def on_signal() -> None:
                async for _sig in signals:
                    log.notice("MAIN", "Node was shut down by a signal")
                    node.stop()
                    break

            nursery.start_soon(on_signal)
            report_ready(ready_fd, EXIT_OK)
            await node.wait_stopped()
            nursery.cancel_scope.cancel()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parsed = parse_args(list(sys.argv[1:] if argv is None else argv))
    if isinstance(parsed, int):
        return parsed
    opts = parsed
    if opts.version:
        sys.stdout.write(version_text())
        return EXIT_OK
    log = CorosyncLog()
    loaded = load(opts, log)
    if isinstance(loaded, int):
        return loaded
    config, envelope = loaded
    if opts.test:
        log.notice("MAIN", "Corosync Cluster Engine exiting normally")
        return EXIT_OK

    if os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        log.error("MAIN", "Corosync Cluster Engine refuses to run setuid or setgid.")
        return _exit_error(log, EXIT_FATAL)

    run_dir = str(getattr(config.system, "run_dir", "/run") or "/run")
    state_dir = str(config.system.state_dir)
    for d in (run_dir, state_dir):
        if not ensure_dir(d, log):
            return _exit_error(log, EXIT_DIR_NOT_PRESENT)

    ready_fd: int | None = None
    if not opts.foreground:
        ready_fd = daemonize()
        log.reopen_after_fork()

    pidfile = PidFile(os.path.join(run_dir, "corosync.pid"))
    status = pidfile.acquire(log)
    if status != EXIT_OK:
        report_ready(ready_fd, status)
        return _exit_error(log, status)
    try:
        stale = pidfile.previous_pid if pidfile.previous_pid != os.getpid() else None
        status = trio.run(run_node, config, envelope, log, ready_fd, stale,
                          opts.config_source)
    except Exception as exc:  # a bug must still end in a logged, non-zero exit
        log.error("MAIN", f"Fatal error: {exc!r}")
        status = EXIT_FATAL
    finally:
        pidfile.release()
    if status == EXIT_OK:
        log.notice("MAIN", "Corosync Cluster Engine exiting normally")
    else:
        report_ready(ready_fd, status)
        if status != EXIT_SOCKETS:  # corosync's exit(EXIT_FAILURE) logs nothing more
            _exit_error(log, status)
    log.close_logfile()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
