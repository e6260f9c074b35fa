"""The heuristics worker process and the daemon's runner (exec/qdevice/heuristics*.py):
results as the stock worker decides them (first failure at once, all passed, timeout),
killing of timed-out commands with what they started, abandoned runs, hostile input, and
the runner surviving a worker that crashes or hangs — while the daemon's loop keeps going."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from corosync.exec.qdevice import heuristics as H

WORKER = [sys.executable, "-m", "corosync.exec.qdevice.heuristics_worker"]


class WorkerProc:
    """The worker driven line by line from a test."""

    def __init__(self) -> None:
        self.p = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, obj) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write((obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n")
        self.p.stdin.flush()

    def exec(self, seq: int, timeout_ms: int, *execs: tuple[str, str]) -> None:
        self.send({"op": "exec", "seq": seq, "timeout_ms": timeout_ms, "execs": list(execs)})

    def until_result(self) -> tuple[dict, list[str]]:
        logs = []
        assert self.p.stdout is not None
        while True:
            line = self.p.stdout.readline()
            assert line, "worker exited"
            msg = json.loads(line)
            if msg["op"] == "result":
                return msg, logs
            logs.append(f"{msg['level']}: {msg['text']}")

    def close(self) -> int:
        assert self.p.stdin is not None
        self.p.stdin.close()
        return self.p.wait(15)


@pytest.fixture
def worker():
    w = WorkerProc()
    try:
        yield w
    finally:
        if w.p.poll() is None:
            w.p.kill()
            w.p.wait(5)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of another parent still answers kill(0); its state says it is dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_pass_fail_and_first_failure_wins_at_once(worker):
    worker.exec(1, 5000, ("a", "true"), ("b", "exit 0"))
    msg, logs = worker.until_result()
    assert msg == {"op": "result", "seq": 1, "passed": True}
    assert "debug: process a executed" in logs and "debug: process b successfully finished" in logs
    t0 = time.monotonic()
    worker.exec(2, 20000, ("slow", "sleep 30"), ("bad", "exit 3"))
    msg, logs = worker.until_result()
    assert msg == {"op": "result", "seq": 2, "passed": False}
    assert "warning: process bad finished with status 3" in logs
    assert time.monotonic() - t0 < 10  # did not wait for "slow"
    assert worker.close() == 0


def test_timeout_kills_the_command_and_what_it_started(worker, tmp_path):
    pidfile = tmp_path / "child.pid"
    worker.exec(7, 300, ("hang", f"sleep 60 & echo $! > {pidfile}; wait"))
    msg, logs = worker.until_result()
    assert msg == {"op": "result", "seq": 7, "passed": False}
    assert "warning: Not all heuristics execs finished on time" in logs
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child):
        assert time.monotonic() < deadline, "the background child of the command survived"
        time.sleep(0.05)
    assert worker.close() == 0


def test_new_request_abandons_the_previous_run_and_bad_lines_are_ignored(worker):
    worker.exec(1, 20000, ("slow", "sleep 30"))
    worker.send(b"this is not json")
    worker.send({"op": "format_disk"})
    worker.send({"op": "exec", "seq": "x"})
    worker.exec(2, 5000, ("ok", "true"))
    msg, logs = worker.until_result()
    assert msg["seq"] == 2 and msg["passed"] is True  # no result for the abandoned run 1
    assert sum(line.startswith("error: bad request") for line in logs) == 3
    assert worker.close() == 0


def test_a_signal_is_a_failure(worker):
    worker.exec(3, 5000, ("sig", "kill -TERM $$"))
    msg, logs = worker.until_result()
    assert msg["passed"] is False and "warning: process sig killed by signal 15" in logs
    assert worker.close() == 0


async def _runner(command=H.WORKER_CMD):
    results: list[tuple[int, bool]] = []
    return H.HeuristicsRunner(lambda seq, ok: results.append((seq, ok)), command), results


async def _wait(pred, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.02)


async def test_runner_keeps_the_loop_running_while_a_command_hangs():
    runner, results = await _runner()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.serve)
        nursery.start_soon(ticker)
        runner.request(1, 5000, [("ok", "true")])
        await _wait(lambda: results, 15, "first result")
        assert results == [(1, True)]
        t0, before = trio.current_time(), ticks
        runner.request(2, 400, [("hang", "sleep 60")])
        await _wait(lambda: len(results) == 2, 15, "timeout result")
        assert results[1] == (2, False)
        assert trio.current_time() - t0 < 5
        assert ticks - before > 10  # the event loop was never blocked
        nursery.cancel_scope.cancel()
    assert runner.starts == 1


async def test_runner_restarts_a_crashed_worker(monkeypatch):
    monkeypatch.setattr(H, "RESTART_DELAY", 0.05)
    # a "worker" that reads one request and dies without answering
    crashy = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.exit(3)"]
    runner, results = await _runner(crashy)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.serve)
        runner.request(1, 5000, [("x", "true")])
        await _wait(lambda: results == [(1, False)], 10, "failure of the crashed run")
        await _wait(lambda: runner.starts >= 2 and runner.proc is not None, 10, "restart")
        runner.command = list(H.WORKER_CMD)  # the next start gets a real worker
        runner.request(2, 5000, [("x", "true")])  # crashes again: fails, restarts
        await _wait(lambda: len(results) == 2 and runner.starts >= 3
                    and runner.proc is not None, 10, "restart with the real worker")
        runner.request(3, 5000, [("x", "true")])
        await _wait(lambda: len(results) == 3, 15, "real result")
        assert results[2] == (3, True)
        nursery.cancel_scope.cancel()


async def test_runner_fails_a_hung_worker_and_replaces_it(monkeypatch):
    monkeypatch.setattr(H, "ANSWER_GRACE", 0.2)
    monkeypatch.setattr(H, "RESTART_DELAY", 0.05)
    hung = [sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"]
    runner, results = await _runner(hung)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.serve)
        first = runner.proc
        assert first is not None
        t0 = trio.current_time()
        runner.request(1, 300, [("x", "true")])
        await _wait(lambda: results == [(1, False)], 10, "watchdog failure")
        assert trio.current_time() - t0 < 5
        await _wait(lambda: runner.starts == 2, 10, "replacement worker")
        assert first.returncode is not None  # the hung one was killed
        nursery.cancel_scope.cancel()


async def test_request_without_a_worker_fails_at_once():
    runner, results = await _runner()
    runner.request(5, 1000, [("x", "true")])  # serve() never started
    assert results == [(5, False)]
