"""The Simple Availability Manager (libsam): a process watchdog with health checks.

SAM has no executive service in corosync 3: it is a client-side library.  :meth:`Sam.register`
forks.  The *parent* never returns from it: it becomes the watchdog of the *child*, which
returns from ``register()`` with its instance id (1 for the first child, 2 after the first
recovery, ...) and runs the application.  When the child stops sending health checks within
``time_interval`` ms, dies, or (with a quorum policy) the node loses quorum, the watchdog
sends it the warning signal (SIGTERM unless :meth:`Sam.warn_signal_set` chose another), then
SIGKILL one interval later, and recovers per policy: RESTART forks a new child, QUIT exits
the watchdog with the child's exit status.

Example::

    from corosync import sam

    handle = sam.initialize(2000, sam.RecoveryPolicy.RESTART)
    iid = handle.register()            # only the child gets here; iid 1, 2, 3 ...
    state = handle.data_restore()      # bytes stored by a previous instance (b"" at first)
    handle.start()
    while work():
        handle.hc_send()               # at least once every 2 s
        handle.data_store(progress())  # survives the next restart
    handle.stop()

Or let the library send health checks from a thread while a callback says all is well::

    handle.hc_callback_register(lambda: queue_is_moving())
    handle.start()

Facts kept from libsam 3.1.7: the policy values, the state machine (which call is allowed
when), the instance counter, the warning-then-SIGKILL escalation, the data store surviving
restarts, quorum waiting in ``start()`` and the cmap keys ``resources.process.<pid>.``
``recovery`` / ``poll_period`` / ``last_updated`` / ``state``.  The parent/child pipe protocol
is our own (framed, see :class:`FrameDecoder`); the differences from libsam are listed in
docs/python-sam.md.

Errors are :class:`~corosync._common.CsError` with the ``cs_error_t`` libsam would return.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from attrs import frozen

from corosync._common import CsError, CsErrorCode, RateLimitedLog

__all__ = [
    "RecoveryPolicy", "State", "Sam", "initialize", "QuorumSource", "CmapLike",
    "IpcQuorumSource", "LibQuorumSource", "default_quorum_source", "Command", "Frame",
    "FrameDecoder", "ProtocolError", "encode_frame", "encode_reply", "decode_reply", "CsError",
    "CsErrorCode",
]

log = logging.getLogger("corosync.sam")
_bad_input = RateLimitedLog(log)


class RecoveryPolicy(enum.IntFlag):
    """``sam_recovery_policy_t``: QUIT or RESTART, optionally with the QUORUM and CMAP flags."""

    QUIT = 1
    RESTART = 2
    QUORUM = 0x08
    QUORUM_QUIT = 0x09
    QUORUM_RESTART = 0x0A
    CMAP = 0x10
    CONFDB = 0x10        # the corosync 1.x name of CMAP, kept by sam.h


_FLAGS: Final = RecoveryPolicy.QUORUM | RecoveryPolicy.CMAP


class State(enum.Enum):
    """Where a handle is in libsam's life cycle (each call checks it)."""

    INITIALIZED = "initialized"
    REGISTERED = "registered"
    STARTED = "started"
    FINALIZED = "finalized"


#: Values of the cmap ``state`` key (libsam's strings).
CMAP_STATE_FAILED: Final = "failed"
CMAP_STATE_STOPPED: Final = "stopped"
CMAP_STATE_RUNNING: Final = "running"
CMAP_STATE_WAITING: Final = "waiting for quorum"

#: How long the watchdog lets a warned child live when time_interval is 0 (no health checks,
#: but quorum loss still has to end the child): libsam would wait forever.
DEFAULT_KILL_GRACE: Final = 5.0


# --------------------------------------------------------------------------------------------
# The parent/child pipe protocol (ours; libsam's raw bytes are not a compatibility surface)
# --------------------------------------------------------------------------------------------


class Command(enum.IntEnum):
    """What the child tells its watchdog.  START, STOP, DATA_STORE and WARN_SIGNAL_SET are
    answered with one reply; HEALTHCHECK and MARK_FAILED are not (the child must not block on
    them: health checks come from a timer thread, and after MARK_FAILED the child dies)."""

    START = 1
    STOP = 2
    HEALTHCHECK = 3
    DATA_STORE = 4
    WARN_SIGNAL_SET = 5
    MARK_FAILED = 6


_ANSWERED: Final = frozenset({Command.START, Command.STOP, Command.DATA_STORE,
                              Command.WARN_SIGNAL_SET})
#: command u8, body length u32 (host order is fine: both ends are one program on one host)
_FRAME: Final = struct.Struct("=BI")
#: status u8 (0 ok, 1 error), cs_error_t u32
_REPLY: Final = struct.Struct("=BI")
_I32: Final = struct.Struct("=i")
#: Largest data_store payload: the frame decoder refuses bigger bodies, so a corrupted length
#: cannot make the watchdog buffer gigabytes.
MAX_DATA_SIZE: Final = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """The child sent bytes that are not a valid frame (corruption or a foreign writer)."""


@frozen
class Frame:
    """One command from the child with its body (data for DATA_STORE, an i32 signal number
    for WARN_SIGNAL_SET, empty otherwise)."""

    command: Command
    body: bytes = b""


def encode_frame(command: Command, body: bytes = b"") -> bytes:
    return _FRAME.pack(command, len(body)) + body


def _check_body(command: Command, length: int) -> None:
    if command is Command.DATA_STORE:
        if length > MAX_DATA_SIZE:
            raise ProtocolError(f"DATA_STORE of {length} bytes exceeds {MAX_DATA_SIZE}")
    elif command is Command.WARN_SIGNAL_SET:
        if length != _I32.size:
            raise ProtocolError(f"WARN_SIGNAL_SET body of {length} bytes, expected 4")
    elif length:
        raise ProtocolError(f"{command.name} carries {length} unexpected bytes")


class FrameDecoder:
    """Incremental decoder of the child's byte stream.

    Why incremental: the watchdog must never block on a half-written frame (a child stopped
    or killed in the middle of a large DATA_STORE would otherwise freeze the watchdog and with
    it every health-check deadline).  It reads whatever the pipe has and decodes whole frames.
    Anything malformed raises :class:`ProtocolError`; the stream cannot be trusted after that.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= _FRAME.size:
            raw_cmd, length = _FRAME.unpack_from(self._buf)
            try:
                command = Command(raw_cmd)
            except ValueError:
                raise ProtocolError(f"unknown command {raw_cmd}") from None
            _check_body(command, length)
            end = _FRAME.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(command, bytes(self._buf[_FRAME.size:end])))
            del self._buf[:end]
        return frames


def encode_reply(error: int) -> bytes:
    return _REPLY.pack(0 if error == CsErrorCode.OK else 1, int(error))


def decode_reply(raw: bytes) -> int:
    """The cs_error_t carried by a reply (CS_OK for success)."""
    if len(raw) != _REPLY.size:
        raise ProtocolError(f"reply of {len(raw)} bytes")
    status, error = _REPLY.unpack(raw)
    if status == 0:
        return CsErrorCode.OK
    if status != 1 or error == CsErrorCode.OK:
        raise ProtocolError(f"bad reply status {status} / error {error}")
    return error


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.read(fd, size - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Seams: where quorum state and the cmap keys come from
# --------------------------------------------------------------------------------------------


class QuorumSource(Protocol):
    """What the watchdog needs to know about quorum (the seam for tests and other providers).

    A source knows the current state when it is created.  ``fileno()`` becomes readable when
    news is pending; ``dispatch()`` processes it without blocking and raises
    :class:`CsError` once the source is dead (executive gone), which the watchdog treats like
    a loss of quorum.
    """

    @property
    def quorate(self) -> bool: ...

    def fileno(self) -> int: ...

    def dispatch(self) -> None: ...

    def close(self) -> None: ...


class CmapLike(Protocol):
    """The part of :class:`corosync.cmap.Cmap` the watchdog uses for the CMAP policy flag."""

    def set_string(self, key: str, value: str) -> None: ...

    def set_uint64(self, key: str, value: int) -> None: ...

    def delete(self, key: str) -> None: ...

    def iter_prefix(self, prefix: str = "") -> Iterable[Any]: ...

    def finalize(self) -> None: ...


#: quorum service ids (spec/ipc-wire.md §4.3)
_Q_REQ_TRACKSTART: Final = 1
_Q_REQ_GETTYPE: Final = 3
_Q_RES_GETTYPE: Final = 4
_Q_EVT_NOTIFICATION: Final = 3
_Q_TRACK_CHANGES: Final = 0x02
_Q_NOTIFY_HEAD: Final = struct.Struct("<i4xQI")     # quorate, ring_seq, view_list_entries


class IpcQuorumSource:
    """Quorum state from the executive's ``quorum`` service, the way libsam follows it:
    connect in model V0 (GETTYPE), TRACKSTART with CS_TRACK_CHANGES, then every V0
    NOTIFICATION carries the quorate flag.

    It speaks the three messages directly over :mod:`corosync.lib.ipc` so that SAM does not
    depend on the full quorum client library.  Undecodable events are dropped and counted.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._quorate: bool | None = None
        self.quorum_type: int | None = None
        self.dropped_events = 0

    @classmethod
    def connect(cls, *, ipc_dir: str | os.PathLike[str] | None = None,
                timeout: float = 30.0) -> "IpcQuorumSource":
        """Connect, start tracking and wait (up to ``timeout`` s) for the first state."""
        from corosync.lib.ipc import IpcClient, IpcError

        try:
            client = IpcClient.connect("quorum", ipc_dir=ipc_dir)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), f"quorum: {exc}") from None
        source = cls(client)
        try:
            source._start(timeout)
        except BaseException:
            source.close()
            raise
        return source

    def _start(self, timeout: float) -> None:
        from corosync.lib.ipc import IpcError

        try:
            res_id, error, payload = self._client.request(_Q_REQ_GETTYPE, b"", timeout)
            if res_id != _Q_RES_GETTYPE or error != CsErrorCode.OK or len(payload) < 4:
                raise CsError(error if error != CsErrorCode.OK
                              else CsErrorCode.ERR_MESSAGE_ERROR, "quorum GETTYPE")
            self.quorum_type = struct.unpack_from("<I", payload)[0]
            _res, error, _ = self._client.request(
                _Q_REQ_TRACKSTART, struct.pack("<I4x", _Q_TRACK_CHANGES), timeout)
            if error != CsErrorCode.OK:
                raise CsError(error, "quorum TRACKSTART")
            deadline = time.monotonic() + timeout
            while self._quorate is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CsError(CsErrorCode.ERR_TIMEOUT, "quorum: no initial notification")
                event = self._client.recv_event(left)
                if event is not None:
                    self._handle(event)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), f"quorum: {exc}") from None

    def _handle(self, event: tuple[int, int, bytes]) -> None:
        msg_id, _error, payload = event
        if msg_id != _Q_EVT_NOTIFICATION or len(payload) < _Q_NOTIFY_HEAD.size:
            self.dropped_events += 1
            _bad_input.warning("quorum-event", "sam: dropped quorum event id %d (%d bytes)",
                               msg_id, len(payload))
            return
        quorate, _seq, entries = _Q_NOTIFY_HEAD.unpack_from(payload)
        if _Q_NOTIFY_HEAD.size + 4 * entries > len(payload):
            self.dropped_events += 1
            _bad_input.warning("quorum-event", "sam: dropped truncated quorum notification")
            return
        self._quorate = bool(quorate)

    @property
    def quorate(self) -> bool:
        return bool(self._quorate)

    def fileno(self) -> int:
        return int(self._client.fileno())

    def dispatch(self) -> None:
        from corosync.lib.ipc import IpcError

        try:
            while (event := self._client.recv_event(0.0)) is not None:
                self._handle(event)
        except IpcError as exc:
            raise CsError(int(exc.cs_error), f"quorum: {exc}") from None

    def close(self) -> None:
        self._client.close()


class LibQuorumSource:
    """Quorum state through :class:`corosync.quorum.Quorum`, used exactly as libsam uses
    libquorum: ``initialize`` (model V0), ``trackstart(CS_TRACK_CHANGES)``, one blocking
    ``dispatch(ONE)`` for the initial state, then ``dispatch(ALL)`` whenever the fd is
    readable.  Malformed events are dropped (and logged) by the quorum library."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._quorate: bool | None = None

    @classmethod
    def connect(cls, *, ipc_dir: str | os.PathLike[str] | None = None) -> "LibQuorumSource":
        from corosync.quorum import DispatchFlags, Quorum, TrackFlags

        source = cls(None)
        source._handle = Quorum.initialize(notify=source._notify, ipc_dir=ipc_dir)
        try:
            source._handle.trackstart(TrackFlags.CHANGES)
            while source._quorate is None:
                source._handle.dispatch(DispatchFlags.ONE)
        except BaseException:
            source.close()
            raise
        return source

    def _notify(self, note: Any) -> None:
        self._quorate = bool(note.quorate)

    @property
    def quorate(self) -> bool:
        return bool(self._quorate)

    def fileno(self) -> int:
        return int(self._handle.fileno())

    def dispatch(self) -> None:
        from corosync.quorum import DispatchFlags

        self._handle.dispatch(DispatchFlags.ALL)

    def close(self) -> None:
        self._handle.finalize()


def default_quorum_source() -> QuorumSource:
    """:class:`LibQuorumSource` when :mod:`corosync.quorum` is installed, else the built-in
    :class:`IpcQuorumSource` (the same three messages, spoken directly)."""
    try:
        import corosync.quorum  # noqa: F401
    except ImportError:
        return IpcQuorumSource.connect()
    return LibQuorumSource.connect()


def _default_cmap() -> CmapLike:
    from corosync.cmap import Cmap

    return Cmap.initialize()


class _CmapKeys:
    """The ``resources.process.<pid>.*`` keys one watchdog maintains (CMAP policy flag)."""

    def __init__(self, cmap: CmapLike, pid: int) -> None:
        self.cmap = cmap
        self.prefix = f"resources.process.{pid}."

    def register(self, policy: RecoveryPolicy, time_interval: int) -> None:
        base = "quit" if int(policy) & ~int(_FLAGS) == RecoveryPolicy.QUIT else "restart"
        self.cmap.set_string(self.prefix + "recovery", base)
        self.cmap.set_uint64(self.prefix + "poll_period", time_interval)

    def state(self, value: str) -> None:
        self.cmap.set_string(self.prefix + "state", value)

    def touch(self) -> None:
        # cs_timestamp_get(): nanoseconds since the epoch
        self.cmap.set_uint64(self.prefix + "last_updated", time.time_ns())

    def destroy(self) -> None:
        keys = [getattr(entry, "key", entry) for entry in self.cmap.iter_prefix(self.prefix)]
        for key in keys:
            try:
                self.cmap.delete(key)
            except CsError:
                pass


# --------------------------------------------------------------------------------------------
# The watchdog (parent side)
# --------------------------------------------------------------------------------------------


class _Outcome(enum.Enum):
    QUIT = "quit"            # child ended while not started: leave with its status
    RECOVERY = "recovery"    # child failed (timeout, death while started, quorum, mark_failed)


def _exit_code(wait_status: int) -> int:
    """The shell convention: the child's exit code, or 128 + signal when it was killed."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


class _Watchdog:
    """Supervises one child from fork to reaping; :meth:`run` says how it ended.

    One poll loop over the command pipe, the child's pidfd (exit, even if the child leaked the
    pipe into a grandchild) and the quorum fd, with a single deadline: the health-check
    deadline while started, or the SIGKILL deadline once the child has been warned.
    """

    def __init__(self, sam: "Sam", pid: int, cmd_fd: int, reply_fd: int) -> None:
        self.sam = sam
        self.pid = pid
        self.cmd_fd = cmd_fd
        self.reply_fd = reply_fd
        self.decoder = FrameDecoder()
        self.started = False
        self.start_pending = False          # START received, waiting for quorum
        self.hc_deadline: float | None = None
        self.kill_deadline: float | None = None
        self.warned = False
        self.failed = False                 # killed by us or marked failed: recovery
        self.pipe_open = True
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None

    # -- helpers ------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return self.sam.time_interval / 1000.0

    def _arm_hc(self) -> None:
        self.hc_deadline = (time.monotonic() + self.interval
                            if self.started and self.sam.time_interval > 0 else None)

    def _reply(self, error: int) -> None:
        try:
            _write_all(self.reply_fd, encode_reply(error))
        except OSError:
            pass        # the child is gone; its exit is noticed separately

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _kill(self, why: str) -> None:
        """First call: the warning signal; afterwards SIGKILL (libsam's two-step kill)."""
        self.failed = True
        if not self.warned:
            self.warned = True
            log.info("sam: child %d %s: sending %s", self.pid, why,
                     signal.Signals(self.sam.warn_signal).name)
            self._signal(self.sam.warn_signal)
            grace = self.interval if self.sam.time_interval > 0 else DEFAULT_KILL_GRACE
            self.kill_deadline = time.monotonic() + grace
            self.hc_deadline = None
        else:
            log.info("sam: child %d %s: sending SIGKILL", self.pid, why)
            self._signal(signal.SIGKILL)
            self.kill_deadline = None

    def _cmap(self, what: Callable[[_CmapKeys], None]) -> int:
        keys = self.sam._cmap_keys
        if keys is None:
            return CsErrorCode.OK
        try:
            what(keys)
        except CsError as exc:
            log.warning("sam: cmap update failed: %s", exc)
            return int(exc.code)
        return CsErrorCode.OK

    # -- commands -----------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        self._cmap(_CmapKeys.touch)
        if not self.warned:
            self._arm_hc()     # any word from the child proves it alive (libsam does the same)
        cmd = frame.command
        if cmd is Command.HEALTHCHECK:
            return
        if cmd is Command.START:
            self._on_start()
        elif cmd is Command.STOP:
            error = CsErrorCode.OK
            if self.started or self.start_pending:
                error = self._cmap(lambda k: k.state(CMAP_STATE_STOPPED))
                if error == CsErrorCode.OK:
                    self.started = self.start_pending = False
                    self._arm_hc()
            self._reply(error)
        elif cmd is Command.DATA_STORE:
            self.sam._data = frame.body
            self._reply(CsErrorCode.OK)
        elif cmd is Command.WARN_SIGNAL_SET:
            (sig,) = _I32.unpack(frame.body)
            error = CsErrorCode.OK
            try:
                self.sam.warn_signal = signal.Signals(sig)
            except ValueError:
                error = CsErrorCode.ERR_INVALID_PARAM
            self._reply(error)
        elif cmd is Command.MARK_FAILED:
            # libsam: no warning signal, and no restart afterwards whatever the policy
            self.sam._effective_policy = (self.sam._effective_policy & _FLAGS) | \
                RecoveryPolicy.QUIT
            self.warned = True
            self._kill("marked itself failed")

    def _on_start(self) -> None:
        if self.started or self.start_pending:
            self._reply(CsErrorCode.OK)
            return
        if self.sam.recovery_policy & RecoveryPolicy.QUORUM:
            source = self.sam._quorum
            if source is None:
                self._reply(CsErrorCode.ERR_LIBRARY)
                return
            if not source.quorate:
                self.start_pending = True
                self._cmap(lambda k: k.state(CMAP_STATE_WAITING))
                return       # answered when quorum arrives (see _on_quorum)
        self._become_started()

    def _become_started(self) -> None:
        error = self._cmap(lambda k: k.state(CMAP_STATE_RUNNING))
        self.start_pending = False
        if error == CsErrorCode.OK:
            self.started = True
            self._arm_hc()
        self._reply(error)

    def _on_quorum(self) -> None:
        source = self.sam._quorum
        assert source is not None
        try:
            source.dispatch()
            quorate = source.quorate
        except CsError as exc:
            log.warning("sam: quorum source failed: %s", exc)
            self.sam._drop_quorum()
            quorate = False
            if self.start_pending:
                self.start_pending = False
                self._cmap(lambda k: k.state(CMAP_STATE_STOPPED))
                self._reply(int(exc.code))
        if self.start_pending and quorate:
            self._become_started()
        elif self.started and not quorate and not self.warned:
            self._kill("lost quorum")

    # -- the loop -----------------------------------------------------------------------------

    def _read_commands(self) -> None:
        """Drain the pipe; EOF closes it for good, a protocol error ends the child."""
        while self.pipe_open:
            try:
                data = os.read(self.cmd_fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.pipe_open = False
                return
            try:
                frames = self.decoder.feed(data)
            except ProtocolError as exc:
                self.sam.protocol_errors += 1
                _bad_input.warning("frame", "sam: child %d broke the protocol (%s): killing it",
                                   self.pid, exc)
                self.pipe_open = False
                self.warned = True
                self._kill("protocol error")
                return
            for frame in frames:
                self._on_frame(frame)

    def run(self) -> tuple[_Outcome, int]:
        """Supervise until the child is gone; returns the outcome and its wait status."""
        os.set_blocking(self.cmd_fd, False)
        try:
            while True:
                poller = select.poll()
                if self.pipe_open:
                    poller.register(self.cmd_fd, select.POLLIN)
                if self.pidfd is not None:
                    poller.register(self.pidfd, select.POLLIN)
                quorum = self.sam._quorum
                if quorum is not None:
                    poller.register(quorum.fileno(), select.POLLIN)
                if self.pidfd is None and not self.pipe_open:
                    break          # no pidfd: EOF is all we can know, like libsam
                deadline = self.kill_deadline if self.warned else self.hc_deadline
                timeout_ms = None
                if deadline is not None:
                    timeout_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                ready = {fd for fd, _ev in poller.poll(timeout_ms)}
                if self.cmd_fd in ready:
                    self._read_commands()
                if quorum is not None and quorum.fileno() in ready and self.sam._quorum:
                    self._on_quorum()
                if self.pidfd is not None and self.pidfd in ready:
                    self._read_commands()      # what it said just before dying still counts
                    break
                now = time.monotonic()
                if self.warned and self.kill_deadline is not None and now >= self.kill_deadline:
                    self._kill("survived its warning")
                elif (not self.warned and self.hc_deadline is not None
                      and now >= self.hc_deadline):
                    self._kill("missed its health check")
            _, status = os.waitpid(self.pid, 0)
        finally:
            if self.pidfd is not None:
                os.close(self.pidfd)
        if self.failed or self.started or self.start_pending:
            return _Outcome.RECOVERY, status
        return _Outcome.QUIT, status


# --------------------------------------------------------------------------------------------
# The handle
# --------------------------------------------------------------------------------------------

#: One process can be supervised by one SAM instance: after register() the fork model owns
#: the process (libsam keeps this in a global, so a restarted child cannot register again).
_registered_in_this_process = False


class Sam:
    """A SAM handle.  Create it with :func:`initialize` (or ``Sam(...)`` directly, which does
    the same).  Methods raise :class:`CsError` with libsam's codes: CS_ERR_BAD_HANDLE when the
    call is not allowed in the current :class:`State`, CS_ERR_INVALID_PARAM for bad
    arguments, CS_ERR_LIBRARY when the watchdog cannot be reached."""

    def __init__(self, time_interval: int, recovery_policy: RecoveryPolicy | int, *,
                 quorum_source: Callable[[], QuorumSource] | None = None,
                 cmap_factory: Callable[[], CmapLike] | None = None) -> None:
        try:
            policy = RecoveryPolicy(recovery_policy)
        except ValueError:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM,
                          f"recovery policy {recovery_policy!r}") from None
        if int(policy) & ~int(_FLAGS) not in (RecoveryPolicy.QUIT, RecoveryPolicy.RESTART):
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, f"recovery policy {policy!r}")
        if not isinstance(time_interval, int) or time_interval < 0:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, f"time_interval {time_interval!r}")
        self.time_interval = time_interval
        self.recovery_policy = policy
        #: the policy the watchdog acts on (mark_failed turns RESTART into QUIT)
        self._effective_policy = policy
        self.warn_signal: int = signal.SIGTERM
        self.instance_id = 0
        self.state = State.INITIALIZED
        self.is_child = False
        #: frames from a child that broke the pipe protocol (watchdog side)
        self.protocol_errors = 0
        self._data = b""
        self._lock = threading.RLock()
        self._cmap_factory = cmap_factory or _default_cmap
        self._cmap: CmapLike | None = None
        self._cmap_keys: _CmapKeys | None = None
        self._child_out = -1           # child -> watchdog commands
        self._child_in = -1            # watchdog -> child replies
        self._hc_callback: Callable[[], bool] | None = None
        self._hc_thread: threading.Thread | None = None
        self._hc_started = threading.Condition(threading.Lock())
        self._hc_running = False
        self._quorum: QuorumSource | None = None
        self._inherited: tuple[Any, ...] = ()
        if policy & RecoveryPolicy.QUORUM:
            factory = quorum_source or default_quorum_source
            self._quorum = factory()

    # -- state checks -------------------------------------------------------------------------

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, f"not allowed while {self.state.value}")

    _LIVE: Final = (State.INITIALIZED, State.REGISTERED, State.STARTED)

    def _exchange(self, command: Command, body: bytes = b"") -> None:
        """Send one command to the watchdog and, if it is answered, wait for the answer.

        Signals are blocked while the frame is written: a Python signal handler (the warning
        signal's, typically) that itself calls :meth:`data_store` would otherwise interleave
        its frame with a half-written large one.  Replies carry no id, so a handler's call
        made while this one waits for its reply only ever swaps two replies."""
        with self._lock:
            try:
                old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                try:
                    _write_all(self._child_out, encode_frame(command, body))
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                if command in _ANSWERED:
                    error = decode_reply(_read_exact(self._child_in, _REPLY.size))
                    if error != CsErrorCode.OK:
                        raise CsError(error, f"watchdog refused {command.name}")
            except (OSError, EOFError, ProtocolError) as exc:
                raise CsError(CsErrorCode.ERR_LIBRARY, f"watchdog unreachable: {exc!r}") \
                    from None

    # -- data store ---------------------------------------------------------------------------

    def data_getsize(self) -> int:
        """Size of the stored data (0 when nothing is stored)."""
        self._require(*self._LIVE)
        with self._lock:
            return len(self._data)

    def data_restore(self) -> bytes:
        """The stored data (``b""`` when nothing is stored): what this or a previous instance
        last gave to :meth:`data_store`."""
        self._require(*self._LIVE)
        with self._lock:
            return self._data

    def data_store(self, data: bytes | bytearray | memoryview | None) -> None:
        """Store ``data`` (None deletes it) so that restarted instances can read it back.  In
        the child this is a round trip to the watchdog, which keeps the copy that survives."""
        self._require(*self._LIVE)
        raw = b"" if data is None else bytes(data)
        if len(raw) > MAX_DATA_SIZE:
            raise CsError(CsErrorCode.ERR_TOO_BIG, f"{len(raw)} bytes > {MAX_DATA_SIZE}")
        with self._lock:
            if self.is_child:
                self._exchange(Command.DATA_STORE, raw)
            self._data = raw

    # -- signals ------------------------------------------------------------------------------

    def warn_signal_set(self, sig: int) -> None:
        """The signal sent before SIGKILL (default SIGTERM; SIGKILL means no warning)."""
        self._require(*self._LIVE)
        try:
            valid = signal.Signals(sig)
        except ValueError:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, f"signal {sig!r}") from None
        with self._lock:
            if self.is_child:
                self._exchange(Command.WARN_SIGNAL_SET, _I32.pack(valid))
            self.warn_signal = valid

    # -- register: the fork -------------------------------------------------------------------

    def register(self) -> int:
        """Fork; return the instance id in the child.  The calling process becomes the
        watchdog and never returns: it restarts children per policy and finally exits
        (``SystemExit``) with the last child's exit code (128 + signal if it was killed)."""
        global _registered_in_this_process
        self._require(State.INITIALIZED)
        if _registered_in_this_process:
            raise CsError(CsErrorCode.ERR_BAD_HANDLE, "this process is already registered")
        if self.recovery_policy & RecoveryPolicy.CMAP:
            self._cmap = self._cmap_factory()
            self._cmap_keys = _CmapKeys(self._cmap, os.getpid())
            try:
                self._cmap_keys.register(self.recovery_policy, self.time_interval)
            except CsError:
                self._cmap_keys.destroy()
                self._cmap.finalize()
                self._cmap = self._cmap_keys = None
                raise
        _registered_in_this_process = True
        while True:
            if self._cmap_keys is not None:
                try:
                    self._cmap_keys.state(CMAP_STATE_STOPPED)
                except CsError as exc:
                    # informational keys: a restart must not fail because cmap did
                    log.warning("sam: cmap state update failed: %s", exc)
            cmd_r, cmd_w = os.pipe()
            rep_r, rep_w = os.pipe()
            self.instance_id += 1
            _flush_stdio()      # else buffered output would be written by both processes
            try:
                pid = os.fork()
            except OSError as exc:
                self.instance_id -= 1
                for fd in (cmd_r, cmd_w, rep_r, rep_w):
                    os.close(fd)
                raise CsError(CsErrorCode.ERR_LIBRARY, f"fork: {exc}") from None
            if pid == 0:
                os.close(cmd_r)
                os.close(rep_w)
                self._become_child(cmd_w, rep_r)
                return self.instance_id
            os.close(cmd_w)
            os.close(rep_r)
            try:
                outcome, status = _Watchdog(self, pid, cmd_r, rep_w).run()
            finally:
                os.close(cmd_r)
                os.close(rep_w)
            log.info("sam: instance %d (pid %d) ended: %s, %s", self.instance_id, pid,
                     outcome.value, _describe(status))
            if outcome is _Outcome.RECOVERY and self._effective_policy & RecoveryPolicy.RESTART:
                continue
            self._quit(outcome, status)

    def _become_child(self, cmd_w: int, rep_r: int) -> None:
        self.is_child = True
        self.state = State.REGISTERED
        self._child_out = cmd_w
        self._child_in = rep_r
        self._lock = threading.RLock()
        # The watchdog's cmap and quorum connections belong to the watchdog: the child keeps
        # the inherited objects untouched (closing them would shut the shared sockets down).
        self._inherited = (self._cmap, self._quorum)
        self._cmap = self._cmap_keys = None
        self._quorum = None

    def _drop_quorum(self) -> None:
        if self._quorum is not None:
            try:
                self._quorum.close()
            except Exception:
                pass
            self._quorum = None

    def _quit(self, outcome: _Outcome, status: int) -> None:
        self._drop_quorum()
        if self._cmap_keys is not None:
            try:
                if outcome is _Outcome.RECOVERY:
                    self._cmap_keys.state(CMAP_STATE_FAILED)
                else:
                    self._cmap_keys.destroy()
                self._cmap_keys.cmap.finalize()
            except CsError as exc:
                log.warning("sam: final cmap update failed: %s", exc)
        sys.exit(_exit_code(status))

    # -- health checking (child side) ---------------------------------------------------------

    def start(self) -> None:
        """Start health checking.  With a QUORUM policy this blocks until the node is
        quorate.  From now on :meth:`hc_send` (or the callback thread) must keep the
        watchdog satisfied every ``time_interval`` ms."""
        self._require(State.REGISTERED)
        self._exchange(Command.START)
        self.state = State.STARTED
        self._hc_thread_set(True)

    def stop(self) -> None:
        """Stop health checking (the watchdog no longer expects health checks)."""
        self._require(State.STARTED)
        self._exchange(Command.STOP)
        self.state = State.REGISTERED
        self._hc_thread_set(False)

    def hc_send(self) -> None:
        """One health check: "I am alive"."""
        self._require(State.STARTED)
        self._exchange(Command.HEALTHCHECK)

    def mark_failed(self) -> None:
        """Ask to be killed at once (no warning signal) and not restarted: the watchdog exits
        and the cmap ``state`` key says "failed".  Needs the CMAP policy flag."""
        self._require(State.REGISTERED, State.STARTED)
        if not self.recovery_policy & RecoveryPolicy.CMAP:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, "mark_failed needs RecoveryPolicy.CMAP")
        self._exchange(Command.MARK_FAILED)

    def hc_callback_register(self, callback: Callable[[], bool] | None) -> None:
        """Event-driven health checking: a library thread sends the health checks (every
        time_interval/4 ms while started) and asks ``callback`` once per interval whether all
        is well.  When it returns a false value or raises, the thread stops sending and the
        watchdog's timeout does the rest.  None switches back to :meth:`hc_send`."""
        self._require(State.REGISTERED)
        if self.time_interval == 0:
            raise CsError(CsErrorCode.ERR_INVALID_PARAM, "no time_interval to check against")
        if self._hc_thread is None:
            if callback is None:
                raise CsError(CsErrorCode.ERR_INVALID_PARAM, "callback is None")
            self._hc_callback = callback
            self._hc_thread = threading.Thread(target=self._hc_loop, name="sam-hc", daemon=True)
            self._hc_thread.start()
            return
        self._hc_callback = callback

    def _hc_thread_set(self, running: bool) -> None:
        with self._hc_started:
            self._hc_running = running
            self._hc_started.notify_all()

    def _hc_loop(self) -> None:
        tick = self.time_interval / 4000.0
        ticks = 0
        healthy = True
        while True:
            with self._hc_started:
                while not self._hc_running or self.state is not State.STARTED:
                    ticks = 0
                    self._hc_started.wait()
                self._hc_started.wait(tick)      # woken early by stop(): re-check
                if not self._hc_running:
                    continue
            callback = self._hc_callback
            if callback is None or not healthy:
                continue
            try:
                self.hc_send()
            except CsError:
                continue
            ticks += 1
            if ticks >= 4:
                ticks = 0
                try:
                    healthy = bool(callback())
                except Exception:
                    log.exception("sam: health-check callback raised")
                    healthy = False
                if not healthy:
                    log.warning("sam: health-check callback reported failure; "
                                "no more health checks")

    # -- teardown -----------------------------------------------------------------------------

    def finalize(self) -> None:
        """Stop health checking if started; afterwards no call is allowed.  The watchdog
        treats the child's later exit like any exit while not started (it quits)."""
        self._require(*self._LIVE)
        if self.state is State.STARTED:
            self.stop()
        self.state = State.FINALIZED
        self._data = b""
        if not self.is_child:
            self._drop_quorum()


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def initialize(time_interval: int, recovery_policy: RecoveryPolicy | int, *,
               quorum_source: Callable[[], QuorumSource] | None = None,
               cmap_factory: Callable[[], CmapLike] | None = None) -> Sam:
    """``sam_initialize``: a handle with the health-check period (ms, 0 = only watch for the
    child's death) and the recovery policy.

    With a QUORUM policy the quorum state is read now (``quorum_source`` is a factory
    returning a :class:`QuorumSource`; default: :func:`default_quorum_source`, the
    executive's quorum service).  ``cmap_factory`` gives the connection used for the CMAP
    flag's keys (default: :meth:`corosync.cmap.Cmap.initialize`).
    """
    return Sam(time_interval, recovery_policy, quorum_source=quorum_source,
               cmap_factory=cmap_factory)
