"""One accepted libqb IPC connection: its transport channel (SHM or SOCKET) and its queues.

The executive is a single trio process, so nothing here may block: every send is attempted
immediately and, when the client is not keeping up (ring full, datagram queue full, setup
socket full), parked in a per-connection queue that a small flusher task drains.  The queue
is bounded; a client that lets it overflow is disconnected (corosync itself queues without
limit, which lets one stuck client eat the daemon's memory).
"""

from __future__ import annotations

import collections
import errno
import inspect
import mmap
import os
import socket
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

import trio

from corosync.exec.totem.events import LogLevel
from corosync.lib.ipc import (CTRL_EVENT_SENT, CTRL_REQUEST_FLOW_CONTROL, CTRL_REQUEST_SENT,
                              CTRL_RESPONSE_SENT, QB_IPC_MSG_DISCONNECT, REQUEST_HEADER,
                              RESPONSE_HEADER, CsError, IpcType, RingError, ShmRing,
                              abstract_address, control_add, pack_response)

if TYPE_CHECKING:
    from corosync.exec.ipc.server import IpcServer

SUBSYS = "IPC"
#: How long the flusher waits before retrying a send the client could not take yet (a full
#: ring gives no wake-up: libqb retries on a timer as well).
_RETRY_MIN = 0.001
_RETRY_MAX = 0.05


class Disconnect(Exception):
    """Raised inside a connection's tasks to end it (peer gone or protocol violation)."""


class Channel(Protocol):
    """What a transport provides to :class:`IpcConnection`."""

    def try_send_response(self, message: bytes) -> bool: ...
    def try_send_event(self, message: bytes) -> bool: ...
    def has_backlog(self) -> bool: ...
    def flush(self) -> None: ...
    async def wait_progress(self, delay: float) -> None: ...
    async def receive(self, conn: "IpcConnection") -> None: ...
    def set_flow_control(self, level: int) -> None: ...
    def close(self) -> None: ...


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of the waits completes (the others are cancelled)."""
    async with trio.open_nursery() as nursery:
        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(one, wait)


# --------------------------------------------------------------------------------------------
# SHM
# --------------------------------------------------------------------------------------------


class ShmChannel:
    """Three rings + the setup socket as the request wake-up and event notification path."""

    def __init__(self, setup: socket.socket, request: ShmRing, response: ShmRing,
                 event: ShmRing, max_msg_size: int) -> None:
        self.setup = setup
        self.rings = (request, response, event)
        self.max_msg_size = max_msg_size
        self._owed_bytes = 0    # notification bytes not yet written (setup socket was full)
        self.deferred = 0       # wake-up bytes received, requests not yet processed

    @staticmethod
    def _write(ring: ShmRing, message: bytes) -> bool:
        try:
            return ring.write(message)
        except RingError as exc:
            # the client scribbled over its ring header: its problem, never the sender's
            # (send_event may run in another client's request handler)
            raise Disconnect(f"client ring: {exc}") from None

    def try_send_response(self, message: bytes) -> bool:
        return self._write(self.rings[1], message)

    def try_send_event(self, message: bytes) -> bool:
        """Write the event into the ring; its notification byte is only *owed* here.

        libqb's client reads one setup-socket byte per event, and only reads an event once
        its byte arrived; a byte per event means a syscall and a client wake-up per event.
        The connection's flusher sends every owed byte in one write once the task that
        produced the events yields (e.g. after a token's worth of deliveries), so a burst
        of events costs one syscall and wakes the client once."""
        if not self._write(self.rings[2], message):
            return False
        self._owed_bytes += 1
        return True

    def flush(self) -> None:
        self._flush_bytes()

    def _flush_bytes(self) -> None:
        while self._owed_bytes:
            try:
                sent = self.setup.send(b"\0" * min(self._owed_bytes, 4096), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise Disconnect(f"setup socket: {exc}") from None
            self._owed_bytes -= sent

    def has_backlog(self) -> bool:
        return self._owed_bytes > 0

    async def wait_progress(self, delay: float) -> None:
        if self._owed_bytes:
            with trio.move_on_after(_RETRY_MAX):
                await trio.lowlevel.wait_writable(self.setup)
            self._flush_bytes()
        else:
            await trio.sleep(delay)

    async def receive(self, conn: "IpcConnection") -> None:
        request = self.rings[0]
        while True:
            if self.deferred and not conn.paused:
                self.deferred -= 1
                if not request.sem.trywait():
                    conn.count_stray()
                    continue
                try:
                    message = request.read_taken(self.max_msg_size)
                except RingError as exc:
                    conn.malformed(f"request ring: {exc}")
                    raise Disconnect(str(exc)) from None
                await conn.dispatch(message)
                continue
            if self.deferred:
                # paused by flow control: keep watching the socket (a client may leave)
                await _first_of(lambda: trio.lowlevel.wait_readable(self.setup),
                                conn.wait_unpaused)
            else:
                await trio.lowlevel.wait_readable(self.setup)
            try:
                data = self.setup.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:   # ECONNRESET: client exited with unread bytes
                raise Disconnect(f"setup socket: {exc}") from None
            if not data:
                raise Disconnect("client closed the setup socket")
            self.deferred += len(data)     # one wake-up byte per request (§3.5)

    def set_flow_control(self, level: int) -> None:
        self.rings[0].flow_control = level

    def close(self) -> None:
        for ring in self.rings:
            try:
                ring.close()
            except (OSError, ValueError, BufferError):
                pass


# --------------------------------------------------------------------------------------------
# SOCKET
# --------------------------------------------------------------------------------------------


class SocketChannel:
    """Datagram sockets ``<B>-request`` (requests in, responses out) and ``<B>-event-tx``."""

    def __init__(self, setup: socket.socket, base: str, request_sock: socket.socket,
                 event_sock: socket.socket, control: mmap.mmap, control_path: str,
                 max_msg_size: int) -> None:
        self.setup = setup
        self.base = base
        self.request_sock = request_sock
        self.event_sock = event_sock
        self.control = control
        self.control_path = control_path
        self.max_msg_size = max_msg_size
        self._client_response = abstract_address(base + "-response")
        self._connected = {"request": False, "event": False}

    def _send(self, sock: socket.socket, which: str, peer: str, message: bytes) -> bool:
        if not self._connected[which]:
            try:
                sock.connect(abstract_address(self.base + peer))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN):
                    return False    # client has not bound its socket yet: retry later
                raise Disconnect(f"connect {peer}: {exc}") from None
            self._connected[which] = True
        try:
            sock.send(message, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return False
            raise Disconnect(f"send to {peer}: {exc}") from None
        return True

    def try_send_response(self, message: bytes) -> bool:
        if self._send(self.request_sock, "request", "-response", message):
            control_add(self.control, CTRL_RESPONSE_SENT, 1)
            return True
        return False

    def try_send_event(self, message: bytes) -> bool:
        if self._send(self.event_sock, "event", "-event", message):
            control_add(self.control, CTRL_EVENT_SENT, 1)
            return True
        return False

    def has_backlog(self) -> bool:
        return False

    def flush(self) -> None:
        """Nothing is owed: every datagram is its own notification."""

    async def wait_progress(self, delay: float) -> None:
        # A connected unix datagram socket polls writable when the peer's queue has room;
        # before the lazy connect there is nothing to wait on but time.
        if self._connected["event"] or self._connected["request"]:
            with trio.move_on_after(max(delay, _RETRY_MAX)):
                await trio.lowlevel.wait_writable(
                    self.event_sock if self._connected["event"] else self.request_sock)
        else:
            await trio.sleep(delay)

    async def receive(self, conn: "IpcConnection") -> None:
        # one byte more than allowed, to detect oversized datagrams; the buffer is shared by
        # every connection of the server (each datagram is copied out before any await)
        rxbuf = conn.server.receive_buffer(self.max_msg_size + 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_setup)
            while True:
                await conn.wait_unpaused()   # libqb reads no requests under flow control
                await trio.lowlevel.wait_readable(self.request_sock)
                if conn.paused:
                    continue                 # paused while we were waiting
                try:
                    n, sender = self.request_sock.recvfrom_into(rxbuf)
                    data = bytes(rxbuf[:n])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    raise Disconnect(f"request socket: {exc}") from None
                if sender != self._client_response:
                    # only the client's bound "-response" socket may talk on this connection
                    conn.malformed(f"datagram from a foreign socket {sender!r}")
                    continue
                control_add(self.control, CTRL_REQUEST_SENT, -1)
                if len(data) > self.max_msg_size:
                    conn.malformed(f"datagram larger than max_msg_size {self.max_msg_size}")
                    conn.reply_generic_error(CsError.ERR_INVALID_PARAM)
                    continue
                await conn.dispatch(data)

    async def _watch_setup(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.setup)
            try:
                data = self.setup.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise Disconnect(f"setup socket: {exc}") from None
            if not data:
                raise Disconnect("client closed the setup socket")

    def set_flow_control(self, level: int) -> None:
        if not self.control.closed:
            self.control[CTRL_REQUEST_FLOW_CONTROL:CTRL_REQUEST_FLOW_CONTROL + 4] = \
                level.to_bytes(4, "little", signed=True)

    def close(self) -> None:
        for s in (self.request_sock, self.event_sock):
            s.close()
        try:
            self.control.close()
        except (BufferError, ValueError):
            pass
        try:
            os.unlink(self.control_path)
        except OSError:
            pass   # the libqb client removes it itself (§2.5)


# --------------------------------------------------------------------------------------------
# The connection as services see it
# --------------------------------------------------------------------------------------------


class IpcConnection:
    """A connected client of one service.

    Services get it in ``on_connect``/``on_request``/``on_disconnect`` and answer with
    :meth:`send_response` (exactly once per request, except requests the protocol leaves
    unanswered such as CPG MCAST) and push :meth:`send_event`.  Both are synchronous and
    never block.  ``context`` is free for the service's per-connection state.
    """

    def __init__(self, server: "IpcServer", *, conn_id: int, pid: int, uid: int, gid: int,
                 conn_type: IpcType, max_msg_size: int, directory: str,
                 setup: socket.socket) -> None:
        self.server = server
        self.service = server.service
        self.id = conn_id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.conn_type = conn_type
        self.max_msg_size = max_msg_size
        self.directory = directory
        self.description = os.path.join(directory, "qb")
        self.context: Any = None
        self.setup = setup
        self.channel: Channel | None = None
        self._responses: collections.deque[bytes] = collections.deque()
        self._events: collections.deque[bytes] = collections.deque()
        self._event_bytes = 0
        self._established = False
        self._closed = False
        self._wake = trio.Event()
        self._scope: trio.CancelScope | None = None
        self.requests = 0
        self.events_sent = 0
        self.max_event_backlog = 0
        self.close_reason = ""
        self._fc_level = 0
        self._paused = False
        self._fc_clear = trio.Event()
        self._fc_clear.set()
        self._cleaned = False
        self._connected_to_service = False   # on_connect accepted: on_disconnect is owed

    def __repr__(self) -> str:
        return (f"<IpcConnection {self.service} #{self.id} pid={self.pid} "
                f"{self.conn_type.name}{' closed' if self._closed else ''}>")

    # -- service API ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def event_backlog(self) -> int:
        """Events accepted by send_event but not yet in the client's ring/socket."""
        return len(self._events)

    def send_response(self, msg_id: int, payload: bytes = b"",
                      error: int = CsError.OK) -> bool:
        """Queue the response to the current request (24-byte header + payload).

        Raises ValueError if the message exceeds the negotiated max_msg_size (a service bug:
        the client could not receive it).  Returns False if the connection is closed.
        """
        return self._send_response_raw(self._build(msg_id, payload, error))

    def send_event(self, msg_id: int, payload: bytes = b"", error: int = CsError.OK) -> bool:
        """Queue an event; never blocks.  If the client lets its backlog exceed the server's
        bounds it is disconnected and False is returned."""
        if self._closed:
            return False
        message = self._build(msg_id, payload, error)
        stats = self.server.stats
        if self._established and not self._events and self.channel is not None:
            try:
                if self.channel.try_send_event(message):
                    self.events_sent += 1
                    stats.events += 1
                    self._wake.set()   # notification bytes owed: the flusher sends them
                    return True
            except Disconnect as exc:
                self.close(str(exc))
                return False
        if (len(self._events) >= self.server.event_queue_max
                or self._event_bytes + len(message) > self.server.event_queue_bytes):
            stats.slow_disconnects += 1
            self.server.log_limited(LogLevel.WARNING, f"slow:{self.service}",
                                    f"{self.service}: client pid {self.pid} does not read its "
                                    f"events ({len(self._events)} queued), disconnecting")
            self.close("event queue overflow")
            return False
        self._events.append(message)
        self._event_bytes += len(message)
        self.max_event_backlog = max(self.max_event_backlog, len(self._events))
        stats.events_queued += 1
        self._wake.set()
        return True

    def set_flow_control(self, level: int, hold: bool = True) -> None:
        """libqb's request flow control: 0 off, 1 the client refuses every send, 2 it refuses
        only CPG mcast (what corosync sets during sync).  While non-zero and ``hold`` the
        server also stops processing this connection's requests (they wait, in order),
        like libqb; with ``hold=False`` only the client is told (the executive's admission
        bound: requests written before the client saw the word are still taken in)."""
        self._fc_level = level
        paused = level != 0 and hold
        self._paused = paused
        if not paused:
            self._fc_clear.set()
        elif self._fc_clear.is_set():
            self._fc_clear = trio.Event()
        if self.channel is not None and not self._closed:
            self.channel.set_flow_control(level)

    @property
    def paused(self) -> bool:
        return self._paused

    async def wait_unpaused(self) -> None:
        while self._paused:
            await self._fc_clear.wait()

    def close(self, reason: str = "closed by service") -> None:
        """Disconnect the client (idempotent; cleanup happens in the connection's task)."""
        if not self._closed:
            self._closed = True
            self.close_reason = reason
            if self._scope is not None:
                self._scope.cancel()

    # -- internals used by the channel/server --------------------------------------------------

    def _build(self, msg_id: int, payload: bytes, error: int) -> bytes:
        size = RESPONSE_HEADER.size + len(payload)
        if size > self.max_msg_size:
            raise ValueError(f"{self.service}: message of {size} bytes exceeds the client's "
                             f"max_msg_size {self.max_msg_size}")
        return pack_response(msg_id, payload, error)

    def _send_response_raw(self, message: bytes) -> bool:
        if self._closed:
            return False
        self.server.stats.responses += 1
        if self._established and not self._responses and self.channel is not None:
            try:
                if self.channel.try_send_response(message):
                    return True
            except Disconnect as exc:
                self.close(str(exc))
                return False
        # one request in flight per client: this queue stays tiny unless the client misbehaves
        if len(self._responses) >= self.server.event_queue_max:
            self.close("response queue overflow")
            return False
        self._responses.append(message)
        self._wake.set()
        return True

    def reply_generic_error(self, error: CsError) -> None:
        """corosync's pre-dispatch rejection: a bare 24-byte response with id 0."""
        self._send_response_raw(pack_response(0, b"", error))

    def malformed(self, what: str) -> None:
        self.server.stats.malformed_requests += 1
        self.server.log_limited(LogLevel.WARNING, f"malformed:{self.service}",
                                f"{self.service}: malformed request from pid {self.pid}: {what}")

    def count_stray(self) -> None:
        self.server.stats.stray_notifications += 1

    async def dispatch(self, message: bytes) -> None:
        """Validate libqb framing, then hand (id, payload after the 16-byte header) over."""
        if len(message) < REQUEST_HEADER.size:
            self.malformed(f"{len(message)}-byte request shorter than its header")
            self.reply_generic_error(CsError.ERR_INVALID_PARAM)
            return
        msg_id, size = REQUEST_HEADER.unpack_from(message)
        if size == 0 or msg_id == QB_IPC_MSG_DISCONNECT:
            raise Disconnect("client asked to disconnect")
        if size != len(message) or msg_id < 0:
            self.malformed(f"header id {msg_id} size {size} for a {len(message)}-byte message")
            self.reply_generic_error(CsError.ERR_INVALID_PARAM)
            return
        self.requests += 1
        self.server.stats.requests += 1
        try:
            result = self.server.handler.on_request(self, msg_id,
                                                    message[REQUEST_HEADER.size:])
            if inspect.isawaitable(result):
                await result
        except (trio.Cancelled, Disconnect):
            raise
        except Exception as exc:   # a service bug must not kill the executive
            self.server.stats.handler_errors += 1
            self.server.log_limited(LogLevel.ERROR, f"handler:{self.service}",
                                    f"{self.service}: request {msg_id} handler failed: "
                                    f"{exc!r}; disconnecting the client")
            raise Disconnect("handler error") from exc

    def _drain(self) -> None:
        """Push queued messages; Disconnect propagates to the flusher (ends the connection)."""
        assert self.channel is not None
        while self._responses and self.channel.try_send_response(self._responses[0]):
            self._responses.popleft()
        while self._events and self.channel.try_send_event(self._events[0]):
            self._event_bytes -= len(self._events.popleft())
            self.events_sent += 1
            self.server.stats.events += 1
        self.channel.flush()

    async def _flusher(self) -> None:
        delay = _RETRY_MIN
        assert self.channel is not None
        while True:
            self._drain()
            if not self._responses and not self._events and not self.channel.has_backlog():
                delay = _RETRY_MIN
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            await self.channel.wait_progress(delay)
            delay = min(delay * 2, _RETRY_MAX)

    async def run(self) -> None:
        """Serve until the client leaves, the service closes us or the server stops."""
        assert self.channel is not None
        self._established = True
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._closed:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._flusher)
                    try:
                        await self.channel.receive(self)
                    except Disconnect as exc:
                        self.close_reason = str(exc)
                    nursery.cancel_scope.cancel()
        except* Disconnect as group:
            self.close_reason = str(group.exceptions[0])
        finally:
            self._closed = True
            self.cleanup()

    def cleanup(self) -> None:
        """Release everything (idempotent): sockets, rings, files, directory, service state."""
        if self._cleaned:
            return
        self._cleaned = True
        self._closed = True
        try:
            self.setup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.setup.close()
        if self.channel is not None:
            self.channel.close()
        try:
            os.rmdir(self.directory)
        except OSError:
            pass
        self.server._forget(self)
