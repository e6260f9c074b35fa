"""Things every corosync client library shares: ``cs_error_t``, :class:`CsError`, dispatch and
track flags, and the small machinery that lets one protocol description drive both a blocking
handle and a trio handle.

Why a "call plan" instead of two implementations: every library call is a short, fixed
conversation with the executive (send a request, read one response, maybe send another).  The
conversation is written once as a generator that *yields* what it wants sent
(:class:`Request`, :class:`SendOnly`, :class:`Pause`) and receives the decoded reply; a blocking
runner (:func:`run_blocking`) and a trio runner (:func:`run_async`) execute it.  The protocol
logic is therefore identical for both APIs and can be tested without any transport.

The same split shapes the handles: :class:`ServiceHandle` (blocking) and
:class:`AsyncServiceHandle` (trio) own the connection plumbing every library shares —
connect, run a plan, finalize, context, event decoding with dropped-event accounting,
``dispatch`` / the async event iterator — and each library adds only its calls and how its
events decode (``_decode_event``) and reach callbacks (``_callback``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar, Final, TypeVar

from attrs import frozen

from corosync.lib.ipc import AsyncIpcClient, IpcClient, IpcError, pack_request
from corosync.lib.ipc import CsError as CsErrorCode  # the one cs_error_t enum
from corosync.lib.proto.common import ProtoError

__all__ = [
    "CsErrorCode", "CsError", "DispatchFlags", "TrackFlags", "cs_strerror", "Request",
    "SendOnly", "Pause", "Reply", "Plan", "run_blocking", "run_async", "check",
    "RateLimitedLog", "ServiceHandle", "AsyncServiceHandle", "decode_reply", "encode_body",
    "single_request", "event_decoder", "HandleCore",
]


def cs_strerror(code: int) -> str:
    """The text corosync's ``cs_strerror`` prints: the enum name, "success" for CS_OK and
    "unknown error" for anything else (the tools print these verbatim)."""
    if code == CsErrorCode.OK:
        return "success"
    try:
        return CsErrorCode(code).c_name
    except ValueError:
        return "unknown error"


class CsError(Exception):
    """A corosync call failed; ``code`` is the ``cs_error_t`` the C library would return.

    The raw integer is kept when the executive sends a value outside the enum, so nothing is
    lost (``code`` is then a plain int and ``str()`` says "unknown error").
    """

    def __init__(self, code: int, detail: str = "") -> None:
        try:
            self.code: CsErrorCode | int = CsErrorCode(code)
        except ValueError:
            self.code = int(code)
        self.detail = detail
        text = cs_strerror(code)
        super().__init__(f"{text}: {detail}" if detail else text)


class DispatchFlags(enum.IntEnum):
    """``cs_dispatch_flags_t``: how much :meth:`dispatch` processes."""

    ONE = 1                #: wait for one event and process it
    ALL = 2                #: process every event already queued, never wait
    BLOCKING = 3           #: process events until the handle is finalized or the link dies
    ONE_NONBLOCKING = 4    #: process at most one queued event, never wait


class TrackFlags(enum.IntFlag):
    """CS_TRACK_* (quorum/votequorum style tracking)."""

    CURRENT = 0x01
    CHANGES = 0x02
    CHANGES_ONLY = 0x04


# --------------------------------------------------------------------------------------------
# Call plans
# --------------------------------------------------------------------------------------------


@frozen
class Request:
    """Send ``message`` (header included) and wait for its response."""

    message: bytes


@frozen
class SendOnly:
    """Send ``message`` and expect no response (CPG MCAST).  ``fc_enable_max`` is libqb's
    flow-control threshold for this send (libcpg raises it to 2 around MCAST)."""

    message: bytes
    fc_enable_max: int = 1


@frozen
class Pause:
    """Wait a little before the next step (retry loops such as CPG JOIN on CS_ERR_BUSY)."""

    seconds: float


@frozen
class Reply:
    """A decoded response header and its body (everything after the 24-byte header)."""

    msg_id: int
    error: int
    payload: bytes


Step = Request | SendOnly | Pause
T = TypeVar("T")
Plan = Generator[Step, "Reply | None", T]


def _ipc_failure(exc: IpcError) -> CsError:
    return CsError(int(exc.cs_error), str(exc))


def _refused_send(step: Step, exc: IpcError) -> Reply:
    """A request the transport refused to *send* (ring or socket full, flow control: EAGAIN)
    is answered CS_ERR_TRY_AGAIN, as libcorosync's send-and-receive does, so that plans can
    retry it (libcpg retries fragments).  ``request_raw`` sends before it waits, so EAGAIN
    always means nothing is in flight.  Any other failure is raised."""
    if isinstance(step, Request) and exc.errno == errno.EAGAIN:
        return Reply(-1, CsErrorCode.ERR_TRY_AGAIN, b"")
    raise _ipc_failure(exc) from None


class _PlanSteps:
    """Walks a plan for a runner: iterating gives the steps to execute; the runner stores
    each step's outcome in :attr:`reply` (None for steps without an answer) before asking
    for the next, and reads :attr:`result` at the end.  The plan is closed however the walk
    ends.  Both runners share it, so only *how* a step is executed differs between them."""

    def __init__(self, plan: Plan[T]) -> None:
        self._plan = plan
        self.reply: Reply | None = None
        self.result: Any = None

    def __iter__(self) -> Generator[Step, None, None]:
        try:
            while True:
                try:
                    step = self._plan.send(self.reply)
                except StopIteration as done:
                    self.result = done.value
                    return
                self.reply = None
                yield step
        finally:
            self._plan.close()

    def refused(self, step: Step, exc: IpcError) -> None:
        self.reply = _refused_send(step, exc)


def run_blocking(client: IpcClient, plan: Plan[T], timeout: float | None = None) -> T:
    """Execute a call plan over a blocking :class:`IpcClient`."""
    walk = _PlanSteps(plan)
    with contextlib.closing(iter(walk)) as steps:
        for step in steps:
            try:
                if isinstance(step, Request):
                    walk.reply = Reply(*client.request_raw(step.message, timeout))
                elif isinstance(step, SendOnly):
                    client.send(step.message, fc_enable_max=step.fc_enable_max)
                else:
                    time.sleep(step.seconds)
            except IpcError as exc:
                walk.refused(step, exc)
    return walk.result  # type: ignore[no-any-return]


async def run_async(client: AsyncIpcClient, plan: Plan[T], timeout: float | None = None) -> T:
    """Execute a call plan over a trio :class:`AsyncIpcClient`."""
    import trio

    walk = _PlanSteps(plan)
    with contextlib.closing(iter(walk)) as steps:
        for step in steps:
            try:
                if isinstance(step, Request):
                    walk.reply = Reply(*await client.request_raw(step.message, timeout))
                elif isinstance(step, SendOnly):
                    await client.send(step.message, fc_enable_max=step.fc_enable_max)
                else:
                    await trio.sleep(step.seconds)
            except IpcError as exc:
                walk.refused(step, exc)
            except ValueError as exc:   # AsyncIpcClient surfaces a bad header as ValueError
                raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None
    return walk.result  # type: ignore[no-any-return]


def check(reply: Reply | None, what: str) -> Reply:
    """Raise :class:`CsError` unless ``reply`` says CS_OK; return it otherwise."""
    if reply is None:
        raise CsError(CsErrorCode.ERR_LIBRARY, f"{what}: no response")
    if reply.error != CsErrorCode.OK:
        raise CsError(reply.error, what)
    return reply


# --------------------------------------------------------------------------------------------
# Logging bad input without flooding
# --------------------------------------------------------------------------------------------


class RateLimitedLog:
    """Log a warning at most once per ``interval`` seconds per message kind.

    A misbehaving executive could send thousands of malformed events; the library drops and
    counts them, and this keeps the log readable while still saying that it happens.
    """

    INTERVAL: Final = 10.0

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.INTERVAL:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        dropped = self._suppressed.pop(kind, 0)
        if dropped:
            message += f" ({dropped} similar messages suppressed)"
        self._logger.warning(message, *args)


# --------------------------------------------------------------------------------------------
# Handles: the connection plumbing every client library shares
# --------------------------------------------------------------------------------------------

#: An event as the IPC layer hands it over: (id, error, payload).
RawEvent = tuple[int, int, bytes]
_bad_event_logs: dict[str, RateLimitedLog] = {}


def _bad_event_log(service: str) -> RateLimitedLog:
    """One rate-limited log per service, on logger ``corosync.<service>``."""
    log = _bad_event_logs.get(service)
    if log is None:
        log = _bad_event_logs[service] = RateLimitedLog(logging.getLogger(f"corosync.{service}"))
    return log


def single_request(msg_id: int, body: bytes = b"") -> Plan["Reply | None"]:
    """The plan of most calls: one request (16-byte header + ``body``), its reply unchecked."""
    reply = yield Request(pack_request(msg_id, body))
    return reply


def decode_reply(cls: Any, reply: Reply, what: str) -> Any:
    """``cls.decode`` of a response body; a body that does not decode is the executive's
    fault and becomes CS_ERR_MESSAGE_ERROR (as the C libraries answer a short response)."""
    try:
        return cls.decode(reply.payload)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, f"{what}: {exc}") from None


def encode_body(fn: Callable[..., bytes], *args: Any) -> bytes:
    """``fn(*args)`` for a request body; arguments that cannot be encoded (a name too long
    for its field) are the caller's fault: CS_ERR_INVALID_PARAM, nothing is sent."""
    try:
        return fn(*args)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_INVALID_PARAM, str(exc)) from None


def event_decoder(wire: Any, public: type, *fields: str) -> Callable[[bytes], Any]:
    """A decoder for :attr:`HandleCore.EVENT_DECODERS`: ``wire.decode`` the payload (the
    layout in ``corosync.lib.proto``) and build the public event class from ``fields`` of
    it, in order (the public classes keep the C callback's argument order)."""
    def decode(payload: bytes) -> Any:
        event = wire.decode(payload)
        return public(*(getattr(event, name) for name in fields))
    return decode


def _answered(reply: "Reply | None") -> Reply:
    if reply is None:
        raise CsError(CsErrorCode.ERR_LIBRARY, "no response")
    return reply


def _lost_link(exc: BaseException) -> CsError:
    if isinstance(exc, IpcError):
        return _ipc_failure(exc)
    return CsError(CsErrorCode.ERR_LIBRARY, f"connection lost: {exc}")


class HandleCore:
    """What a handle is, independent of how it waits: the connection, the user's context,
    the finalized flag, and turning raw events into objects.

    Libraries describe their events either with the two tables below (quorum, votequorum,
    cfg: one decoder per event id, one callback attribute per event class) or by overriding
    :meth:`_decode_event` and :meth:`_callback` (cmap, cpg).  A decoder raises
    ``ProtoError`` / ``ValueError`` / :class:`CsError` for input it cannot accept; the event
    is then dropped, counted in :attr:`dropped_events` and logged (rate-limited): a lying
    executive never makes ``dispatch`` or an event iterator raise.
    """

    SERVICE: ClassVar[str] = ""
    #: event id -> decoder(payload) -> the event object handed to callbacks and iterators
    EVENT_DECODERS: ClassVar[Mapping[int, Callable[[bytes], Any]]] = {}
    #: event class -> name of the attribute holding its callback (called with the event)
    EVENT_CALLBACKS: ClassVar[Mapping[type, str]] = {}

    def __init__(self, client: Any, context: Any = None) -> None:
        self._client = client
        self._finalized = False
        self.context = context
        #: Events the executive sent that could not be decoded or have an unknown id.
        self.dropped_events = 0

    def _decode_event(self, msg_id: int, payload: bytes) -> Any:
        """The event object, or None for an event that is valid but not for us (ignored
        without counting)."""
        decoder = self.EVENT_DECODERS.get(msg_id)
        if decoder is None:
            raise ValueError(f"unknown event id {msg_id}")
        return decoder(payload)

    def _callback(self, event: Any) -> None:
        """Run the user's callback for ``event`` (outside the decoding error handling, so
        that an exception of the callback reaches the caller)."""
        name = self.EVENT_CALLBACKS.get(type(event))
        fn = getattr(self, name, None) if name is not None else None
        if fn is not None:
            fn(event)

    def _accept(self, raw: RawEvent) -> Any:
        msg_id, _error, payload = raw
        try:
            return self._decode_event(msg_id, payload)
        except (ProtoError, ValueError, CsError, struct.error) as exc:
            self.dropped_events += 1
            _bad_event_log(self.SERVICE).warning(
                "event", "%s: dropped event %d: %s", self.SERVICE, msg_id, exc)
            return None

    def _check_open(self) -> None:
        if self._finalized:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "handle finalized")

    def _goodbye(self) -> "Plan[Any] | None":
        """A request to send before disconnecting (libcpg's FINALIZE); most libraries have
        none: the executive notices the closed connection."""
        return None

    def context_get(self) -> Any:
        return self.context

    def context_set(self, context: Any) -> None:
        self.context = context


class ServiceHandle(HandleCore):
    """A blocking connection to one corosync service: run calls, dispatch events, finalize.
    Use as a context manager."""

    _client: IpcClient

    @classmethod
    def _connect(cls, ipc_dir: str | os.PathLike[str] | None) -> IpcClient:
        try:
            return IpcClient.connect(cls.SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise _ipc_failure(exc) from None

    def _start(self, plan: Plan[Any]) -> None:
        """Run the first call of a fresh handle; on any failure the handle is finalized
        (nothing leaks) and the error raised."""
        try:
            self._run(plan)
        except BaseException:
            self.finalize()
            raise

    def _run(self, plan: Plan[T]) -> T:
        self._check_open()
        return run_blocking(self._client, plan)

    def _call_raw(self, msg_id: int, body: bytes = b"") -> Reply:
        """One request; the reply whatever its error field says."""
        return _answered(self._run(single_request(msg_id, body)))

    def _call(self, msg_id: int, body: bytes = b"", what: str = "") -> Reply:
        """One request; raises CsError unless the response says CS_OK."""
        return check(self._call_raw(msg_id, body), what or f"{self.SERVICE} request {msg_id}")

    def _iterate(self, init: Plan[int], step: Callable[[int], Plan["T | None"]],
                 finish: Callable[[int], Plan[None]]) -> Iterator[T]:
        """An executive-side iteration as a generator: ``init`` gives its handle, ``step``
        the next entry (None at the end); ``finish`` runs when the generator ends or is
        closed, unless the connection is gone."""
        handle = self._run(init)
        try:
            while (entry := self._run(step(handle))) is not None:
                yield entry
        finally:
            if not self._finalized and not self._client.closed:
                try:
                    self._run(finish(handle))
                except CsError:
                    pass

    def fileno(self) -> int:
        """The descriptor that becomes readable when events are pending."""
        return self._client.fileno()

    def dispatch(self, flags: DispatchFlags = DispatchFlags.ALL) -> int:
        """Run callbacks for pending events; returns how many events were read.

        ONE waits for one event; ALL handles what is queued without waiting;
        ONE_NONBLOCKING handles at most one queued event; BLOCKING runs until the handle is
        finalized (e.g. from a callback).  A lost connection raises CsError.
        """
        count = 0
        wait: float | None = None if flags in (DispatchFlags.ONE, DispatchFlags.BLOCKING) else 0.0
        while not self._finalized:
            try:
                raw = self._client.recv_event(wait)
            except IpcError as exc:
                raise _ipc_failure(exc) from None
            if raw is None:
                break
            count += 1
            event = self._accept(raw)
            if event is not None:
                self._callback(event)
            if flags in (DispatchFlags.ONE, DispatchFlags.ONE_NONBLOCKING):
                break
        return count

    def finalize(self) -> None:
        """Disconnect (after the library's goodbye request, if it has one).  Safe to call
        twice."""
        if self._finalized:
            return
        goodbye = self._goodbye()
        try:
            if goodbye is not None and not self._client.closed:
                run_blocking(self._client, goodbye, timeout=5.0)
        except CsError:
            pass
        finally:
            self._finalized = True
            self._client.close()

    close = finalize

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()


class AsyncServiceHandle(HandleCore):
    """The trio flavour of :class:`ServiceHandle`: calls are coroutines, events an async
    iterator (:meth:`events`).  Use with ``async with``.

    Finalizing the handle — from any task — ends every iteration over :meth:`events`
    quietly: the waiting task is woken (``trio.lowlevel.notify_closing``) instead of
    sleeping on a descriptor that no longer exists.
    """

    _client: AsyncIpcClient

    @classmethod
    async def _connect(cls, ipc_dir: str | os.PathLike[str] | None) -> AsyncIpcClient:
        try:
            return await AsyncIpcClient.connect(cls.SERVICE, ipc_dir=ipc_dir)
        except IpcError as exc:
            raise _ipc_failure(exc) from None

    async def _start(self, plan: Plan[Any]) -> None:
        try:
            await self._run(plan)
        except BaseException:
            self._close()
            raise

    async def _run(self, plan: Plan[T]) -> T:
        self._check_open()
        return await run_async(self._client, plan)

    async def _call_raw(self, msg_id: int, body: bytes = b"") -> Reply:
        return _answered(await self._run(single_request(msg_id, body)))

    async def _call(self, msg_id: int, body: bytes = b"", what: str = "") -> Reply:
        return check(await self._call_raw(msg_id, body),
                     what or f"{self.SERVICE} request {msg_id}")

    async def _iterate(self, init: Plan[int], step: Callable[[int], Plan["T | None"]],
                       finish: Callable[[int], Plan[None]]) -> AsyncGenerator[T, None]:
        """:meth:`ServiceHandle._iterate`, awaited.  Leaving an ``async for`` early: wrap
        it in ``contextlib.aclosing`` so that ``finish`` runs at once."""
        handle = await self._run(init)
        try:
            while (entry := await self._run(step(handle))) is not None:
                yield entry
        finally:
            if not self._finalized and not self._client.client.closed:
                try:
                    await self._run(finish(handle))
                except CsError:
                    pass

    def fileno(self) -> int:
        return self._client.fileno()

    async def events(self) -> AsyncIterator[Any]:
        """Every decoded event (callbacks run too), until the handle is finalized; a lost
        connection raises CsError.  Malformed events are dropped and counted."""
        import trio

        while not self._finalized:
            try:
                raw = await self._client.recv_event(None)
            except (IpcError, OSError, ValueError, trio.ClosedResourceError) as exc:
                if self._finalized:
                    return
                raise _lost_link(exc) from None
            if raw is None:
                continue
            event = self._accept(raw)
            if event is None:
                continue
            self._callback(event)
            yield event

    def _close(self) -> None:
        """Mark finalized, wake any task waiting for events, disconnect."""
        if self._finalized and self._client.client.closed:
            return
        self._finalized = True
        if not self._client.client.closed:
            try:
                import trio

                trio.lowlevel.notify_closing(self._client.fileno())
            except (RuntimeError, OSError, ValueError, TypeError):
                pass   # not inside trio, or no descriptor: nobody can be waiting on it
        self._client.close()

    def finalize(self) -> None:
        """Disconnect now (no goodbye request; see :meth:`aclose`).  Safe to call twice."""
        self._close()

    close = finalize

    async def aclose(self) -> None:
        """Disconnect after the library's goodbye request, if it has one (what ``async
        with`` does on exit).  Safe to call twice."""
        if self._finalized:
            return
        goodbye = self._goodbye()
        try:
            if goodbye is not None and not self._client.client.closed:
                await run_async(self._client, goodbye, timeout=5.0)
        except CsError:
            pass
        finally:
            self._close()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------------------------
# Command-line parsing as the C tools do it
# --------------------------------------------------------------------------------------------


class GetoptError(Exception):
    """An option error, already worded like glibc's getopt (``message``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def gnu_getopt(args: list[str], optstring: str, prog: str
               ) -> Generator[tuple[str, str | None] | list[str], None, None]:
    """glibc ``getopt`` semantics, one option at a time, in command-line order.

    Yields ``(option, argument)`` pairs and finally the list of operands.  Like glibc, operands
    may appear between options (they are collected, the scan goes on), ``--`` ends the
    options, ``-`` alone is an operand, clustered options (``-bg``) and attached arguments
    (``-mstats``) work.  The C tools act on each option as it comes (``-h`` exits at once,
    before a later bad option is seen), hence a generator instead of a parsed result.
    Raises :class:`GetoptError` with glibc's wording at the offending option.
    """
    with_arg = {c for i, c in enumerate(optstring) if c != ":" and
                optstring[i + 1:i + 2] == ":"}
    known = set(optstring.replace(":", ""))
    operands: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            operands.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        pos = 1
        while pos < len(arg):
            opt = arg[pos]
            pos += 1
            if opt not in known:
                raise GetoptError(f"{prog}: invalid option -- '{opt}'")
            if opt in with_arg:
                if pos < len(arg):
                    value = arg[pos:]
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    raise GetoptError(f"{prog}: option requires an argument -- '{opt}'")
                yield opt, value
                break
            yield opt, None
    yield operands
