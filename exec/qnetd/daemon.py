"""corosync-qnetd: the trio driver around the sans-IO :class:`~.server.QnetdServer`.

It owns everything with side effects: the TCP listener (dual-stack by default), one task
pair per client connection (an exact-size reader and a queue-draining writer), STARTTLS
with Python's ``ssl`` through :class:`trio.SSLStream`, the local IPC unix socket, the
lock file, signals, logging (syslog, plus stderr with ``-f``) and the clock for the core's
timers.  Start-up order and failure texts follow the stock daemon (spec §9.3).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket as pysocket
import ssl
import sys
import syslog
import time
from collections import deque
from pathlib import Path
from typing import Optional

import trio

from . import protocol as P
from .certs import CertError, peer_names, server_context
from .ipc import StatusInfo, handle_request
from .server import (LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_WARNING, Close, QnetdServer, Send,
                     ServerConfig, StartTls)
from .settings import Options

_PRIO_NAMES = {0: "emerg", 1: "alert", 2: "crit", 3: "error", 4: "warning", 5: "notice",
               6: "info", 7: "debug"}


class Logger:
    """Syslog always (ident corosync-qnetd, facility daemon); stderr with ``-f``.

    ``-d`` enables debug lines; ``-dd`` also sends them to syslog (at priority info, as
    upstream does).  Repeated identical warnings are rate-limited so a misbehaving client
    cannot flood the logs."""

    def __init__(self, debug: int, to_stderr: bool, use_syslog: bool = True) -> None:
        self.debug = debug
        self.to_stderr = to_stderr
        self.use_syslog = use_syslog
        self._recent: dict[str, float] = {}
        if use_syslog:
            syslog.openlog("corosync-qnetd", 0, syslog.LOG_DAEMON)

    def __call__(self, level: int, text: str) -> None:
        if level == LOG_DEBUG and not self.debug:
            return
        if level in (LOG_WARNING, LOG_ERR) and self._suppressed(text):
            return
        if self.use_syslog and (level != LOG_DEBUG or self.debug >= 2):
            syslog.syslog(LOG_INFO if level == LOG_DEBUG else level, text)
        if self.to_stderr:
            stamp = time.strftime("%b %d %H:%M:%S")
            try:
                sys.stderr.write(f"{stamp} {_PRIO_NAMES[level]:<7} {text}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def _suppressed(self, text: str) -> bool:
        now = time.monotonic()
        key = text
        last = self._recent.get(key)
        if last is not None and now - last < 1.0:
            return True
        if len(self._recent) > 1000:
            self._recent.clear()
        self._recent[key] = now
        return False


class StartupError(Exception):
    pass


def acquire_lock(path: str) -> int:
    """Create the parent directory (one level), lock the file, write our pid."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        try:
            os.mkdir(parent, 0o770)
        except OSError:
            pass  # the open below reports the real problem
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    except OSError as exc:
        raise StartupError(f"Can't acquire lock ({exc.errno}): {os.strerror(exc.errno)}")
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise StartupError("Another instance is running")
        raise StartupError(f"Can't acquire lock ({exc.errno}): {os.strerror(exc.errno)}")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _addr_text(sockaddr) -> str:
    return f"{sockaddr[0]}:{sockaddr[1]}"


class _Conn:
    """One client connection: the stream in use (plain, later TLS) and its send queue."""

    def __init__(self, conn_id: int, stream: trio.abc.Stream, addr: str) -> None:
        self.conn_id = conn_id
        self.stream: trio.abc.Stream = stream
        self.addr = addr
        self.outbox: deque[bytes] = deque()
        self.wakeup = trio.Event()
        self.flushed = trio.Event()  # set by the writer whenever the queue became empty
        self.paused = False  # during the TLS handshake nothing may be written
        self.start_tls = False
        self.scope = trio.CancelScope()
        self.closed_by_core = False

    def kick(self) -> None:
        self.wakeup.set()


class QnetdDaemon:
    def __init__(self, opts: Options, log: Logger) -> None:
        self.opts = opts
        adv = opts.advanced
        self.log = log
        self.cfg = ServerConfig(
            tls=opts.tls, client_cert_required=opts.client_cert_required,
            max_clients=opts.max_clients, max_client_receive_size=adv.max_client_receive_size,
            max_client_send_size=adv.max_client_send_size,
            max_client_send_buffers=adv.max_client_send_buffers,
            heartbeat_interval_min=adv.heartbeat_interval_min,
            heartbeat_interval_max=adv.heartbeat_interval_max, dpd_enabled=adv.dpd_enabled,
            dpd_interval_coefficient=adv.dpd_interval_coefficient,
            keep_active_partition_tie_breaker=adv.keep_active_partition_tie_breaker)
        self.server = QnetdServer(self.cfg, log)
        self.status_info = StatusInfo(opts.listen_addr, opts.port, opts.tls,
                                      opts.client_cert_required, opts.max_clients,
                                      adv.max_client_send_size, adv.max_client_receive_size)
        self.conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._ipc_clients = 0
        self._timer_kick = trio.Event()
        self._shutdown = trio.Event()
        self.ssl_ctx: Optional[ssl.SSLContext] = None
        self.tcp_raw: Optional[pysocket.socket] = None
        self.ipc_raw: Optional[pysocket.socket] = None
        self.tcp_sock = None
        self.ipc_sock = None

    # ---------------------------------------------------------------- start-up

    def load_tls(self) -> None:
        if self.opts.tls == P.TlsSupported.UNSUPPORTED:
            return
        adv = self.opts.advanced
        try:
            self.ssl_ctx = server_context(Path(adv.nss_db_dir), adv.cert_nickname,
                                          self.opts.client_cert_required)
        except CertError as exc:
            raise StartupError(str(exc))

    def open_ipc_socket(self) -> None:
        path = self.opts.advanced.local_socket_file
        raw = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
        try:
            if os.path.lexists(path):
                os.unlink(path)
            raw.bind(path)
            raw.listen(self.opts.advanced.local_socket_backlog)
        except OSError as exc:
            raw.close()
            raise StartupError(f"Can't create unix socket ({exc.errno}): {os.strerror(exc.errno)}")
        self.ipc_raw = raw

    def open_tcp_socket(self) -> None:
        opts = self.opts
        backlog = opts.advanced.listen_backlog
        candidates: list[tuple[int, tuple]] = []
        if opts.listen_addr is None:
            if opts.family == 4:
                candidates.append((pysocket.AF_INET, ("0.0.0.0", opts.port)))
            else:
                candidates.append((pysocket.AF_INET6, ("::", opts.port)))
        else:
            fam = {4: pysocket.AF_INET, 6: pysocket.AF_INET6}.get(opts.family, pysocket.AF_UNSPEC)
            try:
                infos = pysocket.getaddrinfo(opts.listen_addr, opts.port, fam,
                                             pysocket.SOCK_STREAM, 0, pysocket.AI_ADDRCONFIG)
            except pysocket.gaierror as exc:
                raise StartupError(f"Can't resolve address {opts.listen_addr}: {exc.strerror}")
            candidates.extend((i[0], i[4]) for i in infos)
        last: Optional[OSError] = None
        for family, addr in candidates:
            raw = pysocket.socket(family, pysocket.SOCK_STREAM)
            try:
                raw.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
                raw.bind(addr)
                raw.listen(backlog)
            except OSError as exc:
                raw.close()
                last = exc
                continue
            self.tcp_raw = raw
            return
        err = last.errno if last else 0
        raise StartupError(f"Can't create listening socket ({err}): {os.strerror(err)}")

    # ---------------------------------------------------------------- main loop

    async def run(self) -> None:
        self.log(LOG_DEBUG, "QNetd ready to provide service")
        notify_ready()
        self._timer_kick = trio.Event()
        self._shutdown = trio.Event()
        assert self.tcp_raw is not None and self.ipc_raw is not None
        self.tcp_sock = trio.socket.from_stdlib_socket(self.tcp_raw)
        self.ipc_sock = trio.socket.from_stdlib_socket(self.ipc_raw)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._signals)
                nursery.start_soon(self._timers)
                nursery.start_soon(self._accept_tcp, nursery)
                nursery.start_soon(self._accept_ipc, nursery)
                await self._shutdown.wait()
                self.log(LOG_DEBUG, "Shutting down")
                self.server.shutdown(trio.current_time())
                self._apply(self.server.take_actions())
                for conn in list(self.conns.values()):
                    await self._close_stream(conn)
                nursery.cancel_scope.cancel()
        finally:
            for s in (self.tcp_sock, self.ipc_sock):
                if s is not None:
                    s.close()
            try:
                os.unlink(self.opts.advanced.local_socket_file)
            except OSError:
                pass

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for signum in sigs:
                self.log(LOG_DEBUG, f"{signal.Signals(signum).name} received - closing server")
                self._shutdown.set()
                return

    async def _timers(self) -> None:
        while True:
            deadline = self.server.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._timer_kick.wait()
            self._timer_kick = trio.Event()
            self.server.advance(trio.current_time())
            self._apply(self.server.take_actions())

    def _apply(self, actions) -> None:
        """Carry out the core's actions; the core may add more (e.g. overflow disconnect)."""
        while actions:
            for act in actions:
                conn = self.conns.get(act.conn_id)
                if conn is None:
                    continue
                if isinstance(act, Send):
                    self._queue(conn, act.data)
                elif isinstance(act, StartTls):
                    conn.start_tls = True
                elif isinstance(act, Close):
                    conn.closed_by_core = True
                    conn.scope.cancel()
            actions = self.server.take_actions()
        self._timer_kick.set()

    def _queue(self, conn: _Conn, data: bytes) -> None:
        if conn.closed_by_core:
            return
        if len(data) > self.cfg.max_client_send_size:
            self.server.disconnect(conn.conn_id, trio.current_time(),
                                   f"message of {len(data)} bytes exceeds max_client_send_size")
            return
        if len(conn.outbox) >= self.cfg.max_client_send_buffers:
            self.server.disconnect(conn.conn_id, trio.current_time(), "send buffer is full")
            return
        conn.outbox.append(data)
        conn.kick()

    # ---------------------------------------------------------------- TCP clients

    async def _accept_tcp(self, nursery: trio.Nursery) -> None:
        assert self.tcp_sock is not None
        while True:
            try:
                sock, addr = await self.tcp_sock.accept()
            except OSError as exc:
                # a connection that died in the backlog is nothing; anything else (out of
                # descriptors or memory) is logged and retried a little later, not spun on
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    self.log(LOG_ERR, f"Can't accept connection: {os.strerror(exc.errno or 0)}")
                    await trio.sleep(0.1)
                continue
            try:
                sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn_id = self._next_id
            self._next_id += 1
            addr_text = _addr_text(addr)
            if not self.server.accept(conn_id, addr_text, trio.current_time()):
                sock.close()
                continue
            conn = _Conn(conn_id, trio.SocketStream(sock), addr_text)
            self.conns[conn_id] = conn
            nursery.start_soon(self._serve_client, conn)
            self._timer_kick.set()

    async def _serve_client(self, conn: _Conn) -> None:
        try:
            with conn.scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._writer, conn)
                    await self._reader(conn)
                    inner.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError,
                ConnectionError, trio.TooSlowError) as exc:
            self.log(LOG_DEBUG, f"Client {conn.addr} connection error: {exc!r}")
        except BaseExceptionGroup as exc:  # reader and writer failing together
            self.log(LOG_DEBUG, f"Client {conn.addr} connection errors: {exc!r}")
        except Exception as exc:  # a bug must cost one connection, never the daemon
            self.log(LOG_ERR, f"Client {conn.addr}: internal error {exc!r}. Disconnecting")
        finally:
            self.conns.pop(conn.conn_id, None)
            if not conn.closed_by_core:
                self.server.on_closed(conn.conn_id, trio.current_time())
                self._apply(self.server.take_actions())
            with trio.CancelScope(shield=True):
                await self._close_stream(conn)

    async def _close_stream(self, conn: _Conn) -> None:
        try:
            with trio.move_on_after(1):
                if isinstance(conn.stream, trio.SSLStream):
                    await conn.stream.transport_stream.aclose()
                else:
                    await conn.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _read_exact(self, conn: _Conn, n: int) -> Optional[bytes]:
        """Exactly n bytes, never more (STARTTLS: the ClientHello follows); None on EOF."""
        buf = bytearray()
        while len(buf) < n:
            chunk = await conn.stream.receive_some(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    async def _discard(self, conn: _Conn, n: int) -> bool:
        while n > 0:
            chunk = await conn.stream.receive_some(min(n, 65536))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    async def _reader(self, conn: _Conn) -> None:
        while True:
            head = await self._read_exact(conn, P.HEADER_SIZE)
            if head is None:
                return
            hdr = P.parse_header(head)
            if self.server.must_skip(hdr):
                if not await self._discard(conn, hdr.length):
                    return
                self.server.on_skipped(conn.conn_id, hdr, trio.current_time())
            else:
                body = await self._read_exact(conn, hdr.length) if hdr.length else b""
                if body is None:
                    return
                self.server.on_message(conn.conn_id, head + body, trio.current_time())
            self._apply(self.server.take_actions())
            if conn.start_tls:
                conn.start_tls = False
                await self._starttls(conn)

    async def _starttls(self, conn: _Conn) -> None:
        assert self.ssl_ctx is not None
        # whatever is still queued (normally nothing) goes out in plain text first
        while conn.outbox:
            conn.flushed = trio.Event()
            conn.kick()
            await conn.flushed.wait()
        conn.paused = True
        tls = trio.SSLStream(conn.stream, self.ssl_ctx, server_side=True)
        with trio.fail_after(max(10.0, self.cfg.dpd_interval_coefficient * 120.0)):
            await tls.do_handshake()
        conn.stream = tls
        names = peer_names(tls.getpeercert()) if self.opts.client_cert_required else None
        self.server.on_tls_established(conn.conn_id, names, trio.current_time())
        conn.paused = False
        conn.kick()

    async def _writer(self, conn: _Conn) -> None:
        while True:
            if not conn.outbox or conn.paused:
                await conn.wakeup.wait()
                conn.wakeup = trio.Event()
                continue
            # take one message only; with TLS paused mid-queue the rest waits for the handshake
            data = conn.outbox[0]
            await conn.stream.send_all(data)
            conn.outbox.popleft()
            if not conn.outbox:
                conn.flushed.set()

    # ---------------------------------------------------------------- local IPC

    async def _accept_ipc(self, nursery: trio.Nursery) -> None:
        assert self.ipc_sock is not None
        while True:
            try:
                sock, _ = await self.ipc_sock.accept()
            except OSError:
                await trio.sleep(0.05)
                continue
            limit = self.opts.advanced.ipc_max_clients
            if limit and self._ipc_clients >= limit:
                sock.close()
                continue
            self._ipc_clients += 1
            nursery.start_soon(self._serve_ipc, trio.SocketStream(sock))

    async def _serve_ipc(self, stream: trio.SocketStream) -> None:
        adv = self.opts.advanced
        shutdown = False
        counted = True
        try:
            buf = bytearray()
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return  # EOF before a newline: no answer
                buf += chunk
                if len(buf) > adv.ipc_max_receive_size:
                    return
                if b"\n" in chunk:
                    break
            reply = handle_request(bytes(buf), self.server, self.status_info, adv.ipc_max_send_size)
            # the slot is free once the request is answered: a client that has read its
            # reply never finds its own connection still counted
            self._ipc_clients -= 1
            counted = False
            await stream.send_all(reply.data)
            shutdown = reply.shutdown
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # never let one IPC request take the daemon down
            self.log(LOG_ERR, f"IPC request failed: {exc!r}")
        finally:
            if counted:
                self._ipc_clients -= 1
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            if shutdown:
                self.log(LOG_DEBUG, "IPC shutdown request - closing server")
                self._shutdown.set()


def notify_ready() -> None:
    """systemd ``Type=notify``: send READY=1 when started by systemd (NOTIFY_SOCKET set)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
    except OSError:
        pass  # not fatal: systemd would time the unit out and say so


def daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def run_daemon(opts: Options) -> int:
    log = Logger(opts.debug, opts.foreground)
    adv = opts.advanced
    if opts.tls != P.TlsSupported.UNSUPPORTED and not os.path.isdir(adv.nss_db_dir):
        e = errno.ENOENT if not os.path.exists(adv.nss_db_dir) else errno.ENOTDIR
        log(LOG_ERR, f"Can't open NSS DB directory ({e}): {os.strerror(e)}")
        return 1
    if not opts.foreground:
        daemonize()
    try:
        lock_fd = acquire_lock(adv.lock_file)
    except StartupError as exc:
        log(LOG_ERR, str(exc))
        return 1
    daemon = QnetdDaemon(opts, log)
    try:
        daemon.load_tls()
        log(LOG_DEBUG, "Initializing local socket")
        daemon.open_ipc_socket()
        log(LOG_DEBUG, "Creating listening socket")
        daemon.open_tcp_socket()
    except StartupError as exc:
        log(LOG_ERR, str(exc))
        return 1
    try:
        trio.run(daemon.run)
    finally:
        os.close(lock_fd)
    return 0
