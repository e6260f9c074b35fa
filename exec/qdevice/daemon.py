"""trio driver of the qdevice net client: TCP/TLS to qnetd, votequorum, timers, local socket.

Every decision is in :class:`~.core.QdeviceNet`; this module only turns its actions into I/O
and I/O into its events.  One executor task carries out action batches strictly in the order
the core produced them (a poll, a send and a TLS handshake never overtake each other); each
TCP connection has a generation number so that late events of a closed connection never
reach the core.
"""

from __future__ import annotations

import logging
import os
import ssl
import struct
import time
from typing import Any, Callable, Optional, Protocol

import trio

from corosync.exec.qnetd import protocol as P

from . import core as C
from .heuristics import HeuristicsRunner
from .ipc import handle_request
from .vq import ExpectedVotesEvent, NodelistEvent, QuorumEvent, VqEvent

log = logging.getLogger("corosync-qdevice")

#: before INIT_REPLY tells us the server's size, accept what the stock client accepts
MAX_MESSAGE = 16 * 1024 * 1024
IPC_MAX_REQUEST = 4096

_LEVELS = {C.LOG_ERR: logging.ERROR, C.LOG_WARNING: logging.WARNING,
           C.LOG_NOTICE: logging.INFO, C.LOG_INFO: logging.INFO, C.LOG_DEBUG: logging.DEBUG}


class VotequorumLike(Protocol):
    async def poll(self, cast_vote: bool, ring: P.RingId) -> None: ...

    async def next_event(self) -> Optional[VqEvent]: ...


class _Closed(Exception):
    pass


class QdeviceDriver:
    def __init__(self, core: C.QdeviceNet, vq: VotequorumLike, *,
                 tls_context: Optional[Callable[[], ssl.SSLContext]] = None,
                 qnetd_cn: str = "Qnetd Server",
                 socket_path: Optional[str] = None) -> None:
        self.core = core
        self.vq = vq
        self.tls_context = tls_context
        self.qnetd_cn = qnetd_cn
        self.socket_path = socket_path
        self.exit_code = 0
        self.exit_reason: Optional[str] = None
        self._gen = 0
        self._conn_scope: Optional[trio.CancelScope] = None
        self._stream: Optional[trio.abc.Stream] = None
        self._raw: Optional[trio.SocketStream] = None
        self._tls_done = trio.Event()
        self._wake = trio.Event()
        self._send_q, self._recv_q = trio.open_memory_channel[list](float("inf"))
        self._nursery: Optional[trio.Nursery] = None
        self.stats = {"polls": 0, "poll_errors": 0, "messages_in": 0, "messages_out": 0}
        #: the heuristics worker process (started in run() when heuristics are configured)
        self.heuristics = HeuristicsRunner(self._heuristics_result)

    # ------------------------------------------------------------------ glue
    def wall(self, mono: float) -> float:
        """Core (trio) clock -> epoch seconds, for the status timestamps."""
        return time.time() - (trio.current_time() - mono)

    def _pump(self) -> None:
        actions = self.core.take_actions()
        if actions:
            self._send_q.send_nowait(actions)
        self._wake.set()

    def _event(self, gen: Optional[int], fn: Callable[[float], None]) -> None:
        if gen is not None and gen != self._gen:
            return  # a connection the core has already given up
        fn(trio.current_time())
        self._pump()

    def event(self, fn: Callable[[float], None]) -> None:
        """Feed an outside event (e.g. a configuration change) to the core."""
        self._event(None, fn)

    def stop(self, code: int = 0) -> None:
        self.exit_code = code
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> int:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._executor)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._vq_events)
            if self.core.cfg.heuristics_enabled:
                await nursery.start(self.heuristics.serve)
            if self.socket_path:
                await nursery.start(self._ipc_server)
            task_status.started()
        return self.exit_code

    # ------------------------------------------------------------------ tasks
    async def _timers(self) -> None:
        while True:
            self._wake = trio.Event()
            deadline = self.core.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await self._wake.wait()
            self.core.advance(trio.current_time())
            self._pump()

    async def _vq_events(self) -> None:
        while True:
            try:
                ev = await self.vq.next_event()
            except (OSError, EOFError) as exc:
                log.error("Connection with corosync lost (%s), exiting", exc)
                self.exit_reason = "corosync connection closed"
                self.stop(1)
                return
            if isinstance(ev, NodelistEvent):
                log.debug("Votequorum nodelist notify callback: ring id (%s), nodes %s",
                          ev.ring_id, list(ev.nodes))
                self._event(None, lambda now, e=ev: self.core.on_vq_nodelist(e.ring_id, e.nodes, now))
            elif isinstance(ev, QuorumEvent):
                log.debug("Votequorum quorum notify callback: quorate %d, nodes %s",
                          ev.quorate, list(ev.nodes))
                self._event(None, lambda now, e=ev: self.core.on_vq_quorum(e.quorate, e.nodes, now))
            elif isinstance(ev, ExpectedVotesEvent):
                self._event(None, lambda now, e=ev: self.core.on_vq_expected_votes(
                    e.expected_votes, now))

    async def _executor(self) -> None:
        async for batch in self._recv_q:
            for act in batch:
                await self._execute(act)

    async def _execute(self, act: C.Action) -> None:
        if isinstance(act, C.Log):
            log.log(_LEVELS.get(act.level, logging.INFO), "%s", act.text)
        elif isinstance(act, C.Send):
            await self._send(act.data)
        elif isinstance(act, C.Connect):
            self._drop_connection()
            self._gen += 1
            scope = trio.CancelScope()
            self._conn_scope = scope
            assert self._nursery is not None
            self._nursery.start_soon(self._connection, self._gen, act.host, act.port,
                                     act.ip_version, scope)
        elif isinstance(act, C.Close):
            self._drop_connection()
        elif isinstance(act, C.StartTls):
            await self._start_tls(self._gen)
        elif isinstance(act, C.Poll):
            try:
                await self.vq.poll(act.cast_vote, act.ring_id)
                self.stats["polls"] += 1
            except Exception as exc:  # stale ring id etc.: logged, next poll will do
                self.stats["poll_errors"] += 1
                log.info("votequorum qdevice poll failed: %s", exc)
        elif isinstance(act, C.RunHeuristics):
            self.heuristics.request(act.seq, act.timeout_ms, self.core.cfg.heuristics_execs)
        elif isinstance(act, C.Exit):
            log.error("Giving up: %s", act.reason)
            self.exit_reason = act.reason
            self.stop(1)

    def _heuristics_result(self, seq: int, passed: bool) -> None:
        self._event(None, lambda now: self.core.on_heuristics_result(seq, passed, now))

    def _drop_connection(self) -> None:
        self._gen += 1  # events of the old connection are stale from now on
        if self._conn_scope is not None:
            self._conn_scope.cancel()
            self._conn_scope = None
        self._stream = None
        self._raw = None
        self._tls_done.set()

    async def _send(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        gen = self._gen
        try:
            await stream.send_all(data)
            self.stats["messages_out"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.error("Can't send message to qnetd: %s", exc)
            self._event(gen, self.core.on_closed)

    async def _start_tls(self, gen: int) -> None:
        raw = self._raw
        if raw is None or gen != self._gen:
            return
        try:
            if self.tls_context is None:
                raise ssl.SSLError("no TLS configuration (certificate directory)")
            ctx = self.tls_context()
            tls = trio.SSLStream(raw, ctx, server_hostname=self.qnetd_cn)
            await tls.do_handshake()
        except Exception as exc:  # unreadable certificate files included: retried like NSS
            log.error("TLS handshake with qnetd failed: %s", exc)
            self._event(gen, self.core.on_closed)
            self._tls_done.set()
            return
        self._stream = tls
        # TLS 1.3 sends the certificate request inside the handshake: a client certificate was
        # offered whenever the context carries one and the server asked (it always does on -c on)
        self.core.tls_cert_sent = bool(getattr(ctx, "_qdevice_has_cert", False))
        self._event(gen, self.core.on_tls_established)
        self._tls_done.set()

    async def _open(self, host: str, port: int, ip_version: int) -> trio.SocketStream:
        """All resolved addresses in order (only IPv4 / IPv6 with force_ip_version)."""
        if not ip_version:
            return await trio.open_tcp_stream(host, port)
        family = trio.socket.AF_INET if ip_version == 4 else trio.socket.AF_INET6
        infos = await trio.socket.getaddrinfo(host, port, family, trio.socket.SOCK_STREAM)
        last: Optional[OSError] = None
        for *_, sockaddr in infos:
            try:
                return await trio.open_tcp_stream(sockaddr[0], port)
            except OSError as exc:
                last = exc
        raise last or OSError(f"no IPv{ip_version} address for {host}")

    async def _connection(self, gen: int, host: str, port: int, ip_version: int,
                          scope: trio.CancelScope) -> None:
        stream: Optional[trio.SocketStream] = None
        with scope:
            try:
                stream = await self._open(host, port, ip_version)
            except OSError as exc:
                log.error("Can't connect to qnetd host %s:%d: %s", host, port, exc)
                self._event(gen, self.core.on_connect_failed)
                return
            try:
                stream.setsockopt(6, 1, 1)  # TCP_NODELAY: our messages are small and paced
            except OSError:
                pass
            self._raw = stream
            self._stream = stream
            self._tls_done = trio.Event()
            self._event(gen, self.core.on_connected)
            try:
                while gen == self._gen:
                    msg = await self._read_message()
                    self.stats["messages_in"] += 1
                    self._event(gen, lambda now, m=msg: self.core.on_message(m, now))
                    if self.core.state == C.State.WAITING_TLS:
                        await self._tls_done.wait()
            except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError,
                    ssl.SSLError, OSError) as exc:
                log.debug("Connection with qnetd ended: %s", exc or "closed")
                self._event(gen, self.core.on_closed)
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            stream = self._stream
            if stream is None:
                raise _Closed()
            chunk = await stream.receive_some(n - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return bytes(buf)

    async def _read_message(self) -> bytes:
        """Exactly one message: never reads past it (the TLS handshake may follow)."""
        header = await self._read_exact(P.HEADER_SIZE)
        _mtype, length = struct.unpack(">HI", header)
        if P.HEADER_SIZE + length > MAX_MESSAGE:
            log.error("Server wants to send too long message %d bytes", P.HEADER_SIZE + length)
            raise _Closed()
        return header + (await self._read_exact(length) if length else b"")

    # ------------------------------------------------------------------ local socket
    async def _ipc_server(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.socket_path
        path = self.socket_path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(10)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._ipc_client, [listener])
        finally:
            with trio.CancelScope(shield=True):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def _ipc_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = bytearray()
            try:
                with trio.move_on_after(10):
                    while b"\n" not in data:
                        chunk = await stream.receive_some(IPC_MAX_REQUEST)
                        if not chunk:
                            return
                        data += chunk
                        if len(data) > IPC_MAX_REQUEST:
                            return
                if b"\n" not in data:
                    return
                try:
                    reply, shutdown = handle_request(bytes(data), self.core, self.wall)
                except Exception as exc:  # never let a status request take the daemon down
                    log.error("Can't process IPC request: %s", exc)
                    reply, shutdown = b"Error\nInternal error\n", False
                await stream.send_all(reply)
            except (trio.BrokenResourceError, OSError):
                return
            if shutdown:
                log.info("Shutdown requested over the local socket")
                self.stop(0)
