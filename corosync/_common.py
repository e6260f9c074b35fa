"""Things every corosync client library shares: ``cs_error_t``, :class:`CsError`, dispatch and
track flags, and the small machinery that lets one protocol description drive both a blocking
handle and a trio handle.

Why a "call plan" instead of two implementations: every library call is a short, fixed
conversation with the executive (send a request, read one response, maybe send another).  The
conversation is written once as a generator that *yields* what it wants sent
(:class:`Request`, :class:`SendOnly`, :class:`Pause`) and receives the decoded reply; a blocking
runner (:func:`run_blocking`) and a trio runner (:func:`run_async`) execute it.  The protocol
logic is therefore identical for both APIs and can be tested without any transport.
"""

from __future__ import annotations

import enum
import errno
import logging
import time
from collections.abc import Generator
from typing import Any, Final, TypeVar

from attrs import frozen

from corosync.lib.ipc import AsyncIpcClient, IpcClient, IpcError
from corosync.lib.ipc import CsError as CsErrorCode  # the one cs_error_t enum

__all__ = [
    "CsErrorCode", "CsError", "DispatchFlags", "TrackFlags", "cs_strerror", "Request",
    "SendOnly", "Pause", "Reply", "Plan", "run_blocking", "run_async", "check",
    "RateLimitedLog",
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


def run_blocking(client: IpcClient, plan: Plan[T], timeout: float | None = None) -> T:
    """Execute a call plan over a blocking :class:`IpcClient`."""
    reply: Reply | None = None
    try:
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = None
            try:
                if isinstance(step, Request):
                    reply = Reply(*client.request_raw(step.message, timeout))
                elif isinstance(step, SendOnly):
                    client.send(step.message, fc_enable_max=step.fc_enable_max)
                else:
                    time.sleep(step.seconds)
            except IpcError as exc:
                reply = _refused_send(step, exc)
    finally:
        plan.close()


async def run_async(client: AsyncIpcClient, plan: Plan[T], timeout: float | None = None) -> T:
    """Execute a call plan over a trio :class:`AsyncIpcClient`."""
    import trio

    reply: Reply | None = None
    try:
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = None
            try:
                if isinstance(step, Request):
                    reply = Reply(*await client.request_raw(step.message, timeout))
                elif isinstance(step, SendOnly):
                    client.client.send(step.message, fc_enable_max=step.fc_enable_max)
                else:
                    await trio.sleep(step.seconds)
            except IpcError as exc:
                reply = _refused_send(step, exc)
            except ValueError as exc:   # AsyncIpcClient surfaces a bad header as ValueError
                raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None
    finally:
        plan.close()


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
