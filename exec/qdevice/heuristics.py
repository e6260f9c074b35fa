"""The daemon's side of the heuristics worker (:mod:`.heuristics_worker`).

The qdevice core asks for a run (:class:`~.core.RunHeuristics`, a sequence number and a
timeout); :meth:`HeuristicsRunner.request` writes one line to the worker and the result line
comes back to ``on_result(seq, passed)``.  The daemon never waits on a command itself:

* the worker is a separate process, started when the runner starts (only with heuristics
  configured) and restarted — after a short pause — whenever it exits or its pipe breaks;
* a run that gets no answer within its timeout plus :data:`ANSWER_GRACE` counts as failed
  and the worker is killed and restarted (a hung worker cannot hold the vote back);
* a request while no worker is up fails at once (logged), as a command that cannot be run.

Only the result of the most recent request is reported (the core ignores stale sequence
numbers anyway); worker log lines are logged under the daemon's logger.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any, Callable, Optional, Sequence

import trio

log = logging.getLogger("corosync-qdevice")

ANSWER_GRACE = 2.0  # seconds on top of a run's timeout before the worker counts as hung
RESTART_DELAY = 1.0  # seconds between a worker's death and its replacement
WORKER_CMD = (sys.executable, "-m", "corosync.exec.qdevice.heuristics_worker")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class HeuristicsRunner:
    def __init__(self, on_result: Callable[[int, bool], None],
                 command: Sequence[str] = WORKER_CMD) -> None:
        self.on_result = on_result
        self.command = list(command)
        self.proc: Optional[trio.Process] = None
        self.starts = 0  # workers started (restarts = starts - 1)
        self._pending: Optional[int] = None
        self._deadline = float("inf")
        self._wake = trio.Event()
        self._outbox, self._outbox_rx = trio.open_memory_channel[bytes](16)

    # ------------------------------------------------------------------ requests
    def request(self, seq: int, timeout_ms: int, execs: Sequence[tuple[str, str]]) -> None:
        """Ask for a run; the answer arrives through ``on_result`` (never synchronously
        from here unless the worker is down, then it fails at once)."""
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            log.error("Heuristics worker is not running, heuristics %d fail", seq)
            self._report(seq, False)
            return
        line = json.dumps({"op": "exec", "seq": seq, "timeout_ms": timeout_ms,
                           "execs": [list(e) for e in execs]}) + "\n"
        self._pending = seq
        self._deadline = trio.current_time() + timeout_ms / 1000 + ANSWER_GRACE
        self._wake.set()
        try:
            self._outbox.send_nowait(line.encode())
        except trio.WouldBlock:  # the worker stopped reading: the watchdog restarts it
            log.error("Heuristics worker does not read its requests, heuristics %d fail", seq)
            self._report(seq, False)

    def _report(self, seq: int, passed: bool) -> None:
        if self._pending == seq:
            self._pending = None
            self._deadline = float("inf")
        self.on_result(seq, passed)

    # ------------------------------------------------------------------ worker life
    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a worker running until cancelled."""
        outbox_rx = self._outbox_rx
        started = False
        while True:
            try:
                proc = await trio.lowlevel.open_process(
                    self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=None)
            except OSError as exc:
                log.error("Can't start heuristics worker: %s", exc)
                proc = None
            if proc is not None:
                self.proc = proc
                self.starts += 1
                if not started:
                    started = True
                    task_status.started()
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer, proc, outbox_rx, nursery)
                        nursery.start_soon(self._reader, proc, nursery)
                        nursery.start_soon(self._watchdog, proc, nursery)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop(proc)
                    self.proc = None
                log.error("Heuristics worker exited (status %s), restarting", proc.returncode)
            elif not started:
                started = True
                task_status.started()
            if self._pending is not None:
                self._report(self._pending, False)
            await trio.sleep(RESTART_DELAY)

    async def _stop(self, proc: trio.Process) -> None:
        if proc.stdin is not None:
            await proc.stdin.aclose()  # end of input: the worker kills its children, exits
        with trio.move_on_after(3):
            await proc.wait()
            return
        proc.kill()
        await proc.wait()

    async def _writer(self, proc: trio.Process, rx: Any, nursery: trio.Nursery) -> None:
        assert proc.stdin is not None
        async for data in rx:
            try:
                await proc.stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                nursery.cancel_scope.cancel()
                return

    async def _reader(self, proc: trio.Process, nursery: trio.Nursery) -> None:
        assert proc.stdout is not None
        buf = b""
        while True:
            try:
                chunk = await proc.stdout.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                nursery.cancel_scope.cancel()
                return
            buf += chunk
            if len(buf) > 1 << 20:
                log.error("Heuristics worker sent an overlong line, restarting it")
                nursery.cancel_scope.cancel()
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "log":
                log.log(_LEVELS.get(str(msg.get("level")), logging.INFO), "%s",
                        str(msg.get("text")))
            elif op == "result":
                seq, passed = int(msg["seq"]), msg["passed"] is True
                if seq == self._pending:
                    self._report(seq, passed)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("Heuristics worker sent an unreadable line (%s): %r", exc, line[:80])

    async def _watchdog(self, proc: trio.Process, nursery: trio.Nursery) -> None:
        while True:
            self._wake = trio.Event()
            with trio.move_on_at(self._deadline):
                await self._wake.wait()
                continue
            if self._pending is not None:
                log.error("Heuristics worker did not answer heuristics %d in time, "
                          "restarting it", self._pending)
                self._report(self._pending, False)
                proc.kill()
                nursery.cancel_scope.cancel()
                return
            self._deadline = float("inf")
