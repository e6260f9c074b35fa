"""The heuristics worker: a separate process that runs the ``exec_*`` commands for the qdevice.

Why a process of its own (as the stock corosync-qdevice has): the daemon's event loop must
never depend on what a site's heuristics command does.  Spawning, reaping and killing
children happen here; the daemon only exchanges one line per request and per result over a
pipe (:mod:`.heuristics`), and restarts this worker if it dies.

Protocol — JSON, one object per line:

* daemon → worker: ``{"op": "exec", "seq": N, "timeout_ms": T, "execs": [[name, cmd], …]}``.
  A new request abandons the previous one (its processes are killed, no result is sent).
* worker → daemon: ``{"op": "result", "seq": N, "passed": bool}`` — sent as soon as one
  command fails (exit status ≠ 0 or killed by a signal), when all have exited 0, or at the
  timeout (fail), as the stock worker decides; ``{"op": "log", "level": L, "text": S}`` for
  the stock worker's messages (``process NAME executed``, ``… finished with status N``,
  ``Not all heuristics execs finished on time`` …).

Commands run through ``/bin/sh -c`` with stdin/stdout/stderr on /dev/null, each in a session
of its own so that a timed-out command is killed with everything it started (SIGTERM, then
SIGKILL one second later).  End of input: the worker kills what still runs and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, Optional

import trio

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL (the stock kill-list timer)


def _killpg(proc: trio.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Worker:
    def __init__(self, out: Any) -> None:
        self.out = out
        self._run_scope: Optional[trio.CancelScope] = None

    def emit(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj) + "\n")
        self.out.flush()

    def log(self, level: str, text: str) -> None:
        self.emit({"op": "log", "level": level, "text": text})

    async def _reap(self, procs: list[trio.Process]) -> None:
        """Kill what still runs: SIGTERM to each process group, SIGKILL after the grace."""
        alive = [p for p in procs if p.returncode is None]
        if not alive:
            return
        for p in alive:
            _killpg(p, signal.SIGTERM)
        with trio.move_on_after(KILL_GRACE):
            for p in alive:
                await p.wait()
        for p in alive:
            if p.returncode is None:
                _killpg(p, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            for p in alive:
                await p.wait()

    async def run(self, seq: int, timeout_ms: int, execs: list[tuple[str, str]],
                  nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        procs: list[trio.Process] = []
        with scope:
            result: Optional[bool] = None
            done = trio.Event()
            remaining = len(execs)

            async def one(name: str, command: str) -> None:
                nonlocal remaining, result
                try:
                    proc = await trio.lowlevel.open_process(
                        ["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
                except OSError as exc:
                    self.log("error", f"Can't execute process {name}: {exc.strerror}")
                    result = False
                    done.set()
                    return
                procs.append(proc)
                self.log("debug", f"process {name} executed")
                status = await proc.wait()
                if status == 0:
                    self.log("debug", f"process {name} successfully finished")
                    remaining -= 1
                    if remaining == 0 and result is None:
                        result = True
                        done.set()
                    return
                if status < 0:
                    self.log("warning", f"process {name} killed by signal {-status}")
                else:
                    self.log("warning", f"process {name} finished with status {status}")
                if result is None:
                    result = False
                    done.set()

            if not execs:
                result = True
                done.set()
            with trio.move_on_after(timeout_ms / 1000):
                async with trio.open_nursery() as inner:
                    for name, command in execs:
                        inner.start_soon(one, name, command)
                    await done.wait()
                    inner.cancel_scope.cancel()
            if result is None:
                self.log("warning", "Not all heuristics execs finished on time")
                result = False
            self.emit({"op": "result", "seq": seq, "passed": result})
        # reaping (also of an abandoned run) must not delay the next request
        nursery.start_soon(self._reap, procs)

    async def main(self) -> int:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        async with trio.open_nursery() as nursery:
            while True:
                chunk = await stdin.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._dispatch(line, nursery)
            if self._run_scope is not None:
                self._run_scope.cancel()
        return 0

    def _dispatch(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            req = json.loads(line)
            if req.get("op") != "exec":
                raise ValueError(f"unknown op {req.get('op')!r}")
            seq, timeout_ms = int(req["seq"]), int(req["timeout_ms"])
            execs = [(str(n), str(c)) for n, c in req["execs"]]
        except (ValueError, KeyError, TypeError) as exc:
            self.log("error", f"bad request from the daemon: {exc}")
            return
        if self._run_scope is not None:
            self._run_scope.cancel()  # a new request abandons the previous one
        # the scope exists from now on, so that a request right behind this one can cancel
        # the run even before its task got to start
        self._run_scope = trio.CancelScope()
        nursery.start_soon(self.run, seq, timeout_ms, execs, nursery, self._run_scope)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's ^C is for the daemon
    return trio.run(Worker(sys.stdout).main)


if __name__ == "__main__":
    sys.exit(main())
