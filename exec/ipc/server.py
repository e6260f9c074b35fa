"""The setup socket of one service: accept, handshake, credentials, policy, transport setup.

Accept procedure (spec/ipc-wire.md §1.9): read the 24-byte connection request, take the
client's pid/uid/gid from SO_PEERCRED, apply the policy (ready? connection limit? allowed
uid/gid?), build the private /dev/shm directory and the transport objects, ask the service,
send the 12328-byte response and serve the connection in its own task.  Every step that
waits on the client has a deadline, so a silent or hostile client costs one task and one fd,
never the accept loop.
"""

from __future__ import annotations

import errno
import itertools
import logging
import mmap
import os
import re
import shutil
import socket
import stat
import tempfile
from typing import Any, Awaitable, Callable, Mapping, Protocol

import attrs
import trio

from corosync.exec.ipc.connection import (SUBSYS, IpcConnection, ShmChannel, SocketChannel)
from corosync.exec.log import RateLimiter
from corosync.exec.totem.events import LogLevel
from corosync.lib.ipc import (CONN_REQUEST, CONN_REQUEST_SIZE, CONTROL_SIZE,
                              DEFAULT_MAX_MSG_SIZE, QB_IPC_MSG_AUTHENTICATE, SHM_DIR, IpcType,
                              ShmRing, abstract_address, connection_directory_prefix,
                              pack_conn_response, peer_credentials, resolve_ipc_dir)

#: A 1 MiB default like corosync; larger client wishes are honoured up to this bound, so a
#: hostile client cannot make us create gigabyte rings.
DEFAULT_MAX_MSG_SIZE_LIMIT = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 5.0


class IpcHandler(Protocol):
    """What a service implements.  ``on_request`` may be a coroutine function; requests of one
    connection are handled one after the other (clients keep one in flight anyway)."""

    def on_connect(self, conn: IpcConnection) -> bool: ...
    def on_request(self, conn: IpcConnection, msg_id: int,
                   payload: bytes) -> None | Awaitable[None]: ...
    def on_disconnect(self, conn: IpcConnection) -> None: ...


AuthHook = Callable[[int, int, int], bool]
"""auth(pid, uid, gid) -> allowed: the daemon plugs cmap's uidgid.* lookups in here."""


def default_auth(pid: int, uid: int, gid: int) -> bool:
    """corosync's rule (root uid or gid) plus our own uid, so unprivileged test runs work."""
    return uid == 0 or gid == 0 or uid == os.geteuid()


def parse_ipc_type(value: str | int | IpcType) -> IpcType:
    """corosync's ``system.qb_ipc_type``: native (= shm), shm, socket."""
    if isinstance(value, IpcType):
        return value
    if isinstance(value, int):
        return IpcType(value)
    text = value.strip().lower()
    if text in ("native", "shm"):
        return IpcType.SHM
    if text == "socket":
        return IpcType.SOCKET
    raise ValueError(f"qb_ipc_type must be native, shm or socket, not {value!r}")


@attrs.define
class IpcStats:
    """Counters (per server); the executive may publish them in the stats map."""

    accepted: int = 0
    rejected: int = 0
    handshake_failures: int = 0
    active: int = 0
    requests: int = 0
    responses: int = 0
    events: int = 0
    events_queued: int = 0
    malformed_requests: int = 0
    stray_notifications: int = 0
    slow_disconnects: int = 0
    handler_errors: int = 0
    disconnects: int = 0


class _StdLog:
    """Fallback when the daemon passes no CorosyncLog: stdlib logging, same call shape."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("corosync.ipc")
        self.limiter = RateLimiter()

    def log(self, level: LogLevel, subsys: str, message: str, **_kw: Any) -> None:
        py = {LogLevel.CRIT: 50, LogLevel.ERROR: 40, LogLevel.WARNING: 30,
              LogLevel.NOTICE: 25, LogLevel.INFO: 20}.get(level, 10)
        self._logger.log(py, "[%s] %s", subsys, message)

    def limited(self, level: LogLevel, subsys: str, key: str, message: str) -> None:
        suppressed = self.limiter.allow(key)
        if suppressed is None:
            return
        if suppressed:
            message = f"{message} ({suppressed} similar messages suppressed)"
        self.log(level, subsys, message)


class IpcServer:
    """libqb IPC server for one service, run with ``await nursery.start(server.serve)``.

    ``ipc_type`` is corosync's ``system.qb_ipc_type`` (native/shm -> SHM, socket -> SOCKET).
    ``ipc_dir`` (or $COROSYNC_IPC_DIR, or libqb's force-filesystem-sockets file) puts the
    setup socket in that directory; otherwise it is libqb's padded abstract name.
    Set ``ready = False`` until the services are up: clients then get EAGAIN (they retry).
    """

    def __init__(self, service: str, handler: IpcHandler, *,
                 ipc_dir: str | os.PathLike[str] | None = None,
                 ipc_type: str | int | IpcType = "native",
                 max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
                 max_msg_size_limit: int = DEFAULT_MAX_MSG_SIZE_LIMIT,
                 auth: AuthHook = default_auth, log: Any = None,
                 max_connections: int = 4096,
                 event_queue_max: int = 10000,
                 event_queue_bytes: int = 16 * 1024 * 1024,
                 shm_dir: str = SHM_DIR,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if max_msg_size < 64 or max_msg_size > max_msg_size_limit:
            raise ValueError(f"max_msg_size {max_msg_size} out of range")
        self.service = service
        self.handler = handler
        self.ipc_dir = resolve_ipc_dir(ipc_dir)
        self.ipc_type = parse_ipc_type(ipc_type)
        self.max_msg_size = max_msg_size
        self.max_msg_size_limit = max_msg_size_limit
        self.auth = auth
        self.log = log if log is not None else _StdLog()
        self.max_connections = max_connections
        self.event_queue_max = event_queue_max
        self.event_queue_bytes = event_queue_bytes
        self.shm_dir = shm_dir
        self.handshake_timeout = handshake_timeout
        self.ready = True
        self.stats = IpcStats()
        self.connections: set[IpcConnection] = set()
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._socket_path: str | None = None
        self._rxbuf = bytearray()

    def receive_buffer(self, size: int) -> memoryview:
        """A scratch buffer of ``size`` bytes shared by this server's SOCKET connections."""
        if len(self._rxbuf) < size:
            self._rxbuf = bytearray(size)
        return memoryview(self._rxbuf)[:size]

    # -- addresses / logging -----------------------------------------------------------------

    @property
    def address(self) -> str | bytes:
        """Where the setup socket listens (a path, or the padded abstract name)."""
        if self.ipc_dir is not None:
            return os.path.join(self.ipc_dir, self.service)
        return abstract_address(self.service)

    def log_limited(self, level: LogLevel, key: str, message: str) -> None:
        try:
            self.log.limited(level, SUBSYS, key, message)
        except Exception:   # logging must never take the server down
            pass

    # -- lifecycle -----------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            address = self.address
            if isinstance(address, str):
                os.makedirs(os.path.dirname(address), exist_ok=True)
                try:
                    if stat.S_ISSOCK(os.lstat(address).st_mode):
                        os.unlink(address)   # stale socket of a previous run
                except FileNotFoundError:
                    pass
                sock.bind(address)
                os.chmod(address, 0o777)    # access is decided by credentials, like libqb
                self._socket_path = address
            else:
                sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen, report started, accept until cancelled; then drop every client."""
        listener = self._listen()
        self._listener = listener
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as exc:   # EMFILE and friends: back off, keep serving
                        self.log_limited(LogLevel.ERROR, f"accept:{self.service}",
                                         f"{self.service}: accept failed: {exc}")
                        await trio.sleep(0.1)
                        continue
                    sock.setblocking(False)
                    nursery.start_soon(self._handle_new, sock)
        finally:
            listener.close()
            self._listener = None
            if self._socket_path is not None:
                try:
                    os.unlink(self._socket_path)
                except OSError:
                    pass
            for conn in list(self.connections):
                conn.cleanup()

    # -- accept path -----------------------------------------------------------------------------

    async def _read_request(self, sock: socket.socket) -> bytes | None:
        buf = b""
        with trio.move_on_after(self.handshake_timeout):
            while len(buf) < CONN_REQUEST_SIZE:
                await trio.lowlevel.wait_readable(sock)
                try:
                    chunk = sock.recv(CONN_REQUEST_SIZE - len(buf))
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return None
                if not chunk:
                    return None
                buf += chunk
            return buf
        return None

    async def _send_all(self, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        with trio.move_on_after(self.handshake_timeout):
            while view:
                try:
                    sent = sock.send(view, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError:
                    return False
                view = view[sent:]
            return True
        return False

    async def _reject(self, sock: socket.socket, err: int, why: str, pid: int) -> None:
        self.stats.rejected += 1
        self.log_limited(LogLevel.INFO, f"reject:{self.service}:{err}",
                         f"{self.service}: refusing client pid {pid}: {why}")
        await self._send_all(sock, pack_conn_response(-err))
        sock.close()

    async def _handle_new(self, sock: socket.socket) -> None:
        try:
            await self._handshake(sock)
        except Exception as exc:   # never let one client take the accept loop down
            self.stats.handshake_failures += 1
            self.log_limited(LogLevel.ERROR, f"setup:{self.service}",
                             f"{self.service}: connection setup failed: {exc!r}")
            sock.close()

    async def _handshake(self, sock: socket.socket) -> None:
        raw = await self._read_request(sock)
        if raw is None:
            self.stats.handshake_failures += 1
            sock.close()
            return
        msg_id, size, wanted = CONN_REQUEST.unpack(raw)
        if msg_id != QB_IPC_MSG_AUTHENTICATE or size != CONN_REQUEST_SIZE:
            # libqb closes silently on anything but an authentication request
            self.stats.handshake_failures += 1
            self.log_limited(LogLevel.WARNING, f"badsetup:{self.service}",
                             f"{self.service}: invalid connection request "
                             f"(id {msg_id}, size {size})")
            sock.close()
            return
        pid, uid, gid = peer_credentials(sock)
        if not self.ready:
            return await self._reject(sock, errno.EAGAIN, "executive not ready", pid)
        if len(self.connections) >= self.max_connections:
            return await self._reject(sock, errno.EMFILE, "too many connections", pid)
        try:
            allowed = bool(self.auth(pid, uid, gid))
        except Exception as exc:
            self.log_limited(LogLevel.ERROR, f"auth:{self.service}",
                             f"{self.service}: auth hook failed: {exc!r}")
            allowed = False
        if not allowed:
            return await self._reject(sock, errno.EACCES, f"uid {uid} gid {gid} not allowed",
                                      pid)
        max_msg = min(max(wanted, self.max_msg_size), self.max_msg_size_limit)
        conn_id = next(self._ids)
        try:
            directory = tempfile.mkdtemp(
                prefix=connection_directory_prefix(os.getpid(), pid, sock.fileno()),
                dir=self.shm_dir)
        except OSError as exc:
            self.stats.handshake_failures += 1
            self.log_limited(LogLevel.ERROR, f"transport:{self.service}",
                             f"{self.service}: cannot create a connection directory in "
                             f"{self.shm_dir}: {exc}")
            await self._send_all(sock, pack_conn_response(-(exc.errno or errno.EIO)))
            sock.close()
            return
        conn = IpcConnection(self, conn_id=conn_id, pid=pid, uid=uid, gid=gid,
                             conn_type=self.ipc_type, max_msg_size=max_msg,
                             directory=directory, setup=sock)
        try:
            os.chmod(directory, 0o770)
            try:
                os.chown(directory, uid, gid)
            except OSError:
                pass
            if self.ipc_type == IpcType.SHM:
                paths = self._setup_shm(conn)
            else:
                paths = self._setup_socket(conn)
        except OSError as exc:   # /dev/shm full, fd limit, ...: tell the client why
            self.stats.handshake_failures += 1
            self.log_limited(LogLevel.ERROR, f"transport:{self.service}",
                             f"{self.service}: cannot set up a connection for pid {pid}: "
                             f"{exc}")
            await self._send_all(sock, pack_conn_response(-(exc.errno or errno.EIO)))
            conn.cleanup()
            return
        except Exception:
            conn.cleanup()
            raise
        self.connections.add(conn)
        self.stats.active = len(self.connections)
        try:
            accepted = bool(self.handler.on_connect(conn))
        except Exception as exc:
            self.stats.handler_errors += 1
            self.log_limited(LogLevel.ERROR, f"connect:{self.service}",
                             f"{self.service}: on_connect failed: {exc!r}")
            accepted = False
        conn._connected_to_service = accepted
        if not accepted or conn.closed:
            self.stats.rejected += 1
            conn._connected_to_service = False
            await self._send_all(sock, pack_conn_response(-errno.EACCES))
            conn.cleanup()
            return
        ok = await self._send_all(sock, pack_conn_response(
            0, int(self.ipc_type), max_msg, conn_id, *paths))
        if not ok:
            self.stats.handshake_failures += 1
            conn.cleanup()
            return
        self.stats.accepted += 1
        await conn.run()

    def _setup_shm(self, conn: IpcConnection) -> tuple[str, str, str]:
        rings: list[ShmRing] = []
        try:
            for kind in ("request", "response", "event"):
                rings.append(ShmRing.create(f"{conn.description}-{kind}-{self.service}",
                                            conn.max_msg_size, uid=conn.uid, gid=conn.gid))
        except BaseException:
            for ring in rings:
                ring.close()
            raise
        conn.channel = ShmChannel(conn.setup, rings[0], rings[1], rings[2], conn.max_msg_size)
        return rings[0].header_path[:-7], rings[1].header_path[:-7], rings[2].header_path[:-7]

    def _setup_socket(self, conn: IpcConnection) -> tuple[str, str, str]:
        control_path = f"{conn.description}-control-{self.service}"
        base = f"{conn.description}-{self.service}"
        if len(base) + len("-event-tx") > 106:
            raise OSError(errno.ENAMETOOLONG, f"{base}: too long for an abstract address")
        fd = os.open(control_path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        socks: list[socket.socket] = []
        try:
            os.ftruncate(fd, CONTROL_SIZE)
            try:
                os.fchown(fd, conn.uid, conn.gid)
            except OSError:
                pass
            control = mmap.mmap(fd, CONTROL_SIZE)
            for suffix in ("-request", "-event-tx"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                socks.append(s)
                s.bind(abstract_address(base + suffix))
                _size_buffers(s, conn.max_msg_size)
                s.setblocking(False)
        except BaseException:
            for s in socks:
                s.close()
            try:
                os.unlink(control_path)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        conn.channel = SocketChannel(conn.setup, base, socks[0], socks[1], control,
                                     control_path, conn.max_msg_size)
        return control_path, base, ""

    def _forget(self, conn: IpcConnection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.stats.active = len(self.connections)
        self.stats.disconnects += 1
        if conn._connected_to_service:
            conn._connected_to_service = False
            try:
                self.handler.on_disconnect(conn)
            except Exception as exc:
                self.stats.handler_errors += 1
                self.log_limited(LogLevel.ERROR, f"disconnect:{self.service}",
                                 f"{self.service}: on_disconnect failed: {exc!r}")


async def serve_services(handlers: Mapping[str, IpcHandler], *,
                         task_status: trio.TaskStatus[list[IpcServer]] =
                         trio.TASK_STATUS_IGNORED, **options: Any) -> None:
    """Run one :class:`IpcServer` per ``{service name: handler}`` with shared ``options``.

    ``servers = await nursery.start(serve_services, host.ipc_handlers, ipc_type=...)``
    returns the started servers (all listening); cancel the nursery to stop them all.
    """
    servers = [IpcServer(name, handler, **options) for name, handler in handlers.items()]
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.serve)
        task_status.started(servers)


_CONN_DIR = re.compile(r"^qb-(\d+)-(\d+)-(\d+)-")


def remove_stale_dirs(shm_dir: str = SHM_DIR, *, server_pid: int | None = None) -> int:
    """Remove connection directories (``qb-<server pid>-<client pid>-<fd>-*``) left by a
    server that died without cleaning up; returns how many were removed.

    With ``server_pid`` (e.g. the pid in a stale corosync.pid) only that server's
    directories go; otherwise every directory whose server pid no longer exists.  Caveat of
    the second form: a server in another pid namespace sharing this /dev/shm looks dead.
    Our own pid is never touched.
    """
    removed = 0
    try:
        entries = os.listdir(shm_dir)
    except OSError:
        return 0
    for entry in entries:
        m = _CONN_DIR.match(entry)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or (server_pid is not None and pid != server_pid):
            continue
        if server_pid is None:
            try:
                os.kill(pid, 0)
                continue          # alive (or not ours to signal): leave it
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        path = os.path.join(shm_dir, entry)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += not os.path.exists(path)
    return removed


def _size_buffers(sock: socket.socket, size: int) -> None:
    """SO_SNDBUF/SO_RCVBUF >= max_msg_size (§2.3); root may exceed wmem_max with FORCE."""
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):
        if sock.getsockopt(socket.SOL_SOCKET, opt) >= size:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)   # SO_SNDBUFFORCE/SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
