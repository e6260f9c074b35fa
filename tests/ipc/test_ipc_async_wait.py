"""AsyncIpcClient's waits (lib/ipc.py): no polling, correct under cancellation, woken by close.

SHM responses have no fd (spec/ipc-wire.md §3.5): a helper thread per connection waits in the
response semaphore for a parked task.  These tests check what that design must guarantee:
many sequential calls work (in-process server and a server in another process); a waiting
call is parked, not re-run; a call cancelled or timed out while its request is in flight
never hands its response to the next call (also under random cancellation points); close()
— of the wrapper or of the wrapped IpcClient, from another task or another thread — fails
every waiting task at once with the lost-connection error (ENOTCONN); a server that goes
away is noticed; a burst of sends without response does not block the loop; the blocking
client closed from another thread does not unmap the rings under its sleeper (that was a
segfault); nothing leaks (threads, fds) after many calls and a close."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from corosync.lib.ipc import (AsyncIpcClient, CsError, IpcClient, IpcError, IpcType,
                              pack_request)

from ipc_helpers import Service, start_server, wait_until

TYPES = ["shm", "socket"]
HERE = Path(__file__).resolve().parent


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ipc-")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def expect_closed(outcome: list[BaseException | object], started: float,
                        deadline: float = 2.0) -> float:
    """Wait (bounded) until the pending call recorded its outcome; return how long after
    ``started`` it took.  The outcome must be the lost-connection error."""
    await wait_until(lambda: bool(outcome), timeout=deadline)
    err = outcome[0]
    assert isinstance(err, IpcError), err
    assert err.errno == errno.ENOTCONN and err.cs_error == CsError.ERR_LIBRARY
    return time.monotonic() - started


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_many_sequential_calls(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            assert c.client.conn_type == IpcType[ipc_type.upper()]
            for i in range(1000):
                payload = b"%d" % i * (1 + i % 7)
                assert await c.request(1, payload) == (101, CsError.OK, payload)
            # one helper thread at most, whatever the number of calls
            assert len(helper_threads()) <= (1 if ipc_type == "shm" else 0)
        assert srv.stats.requests == 1000
        n.cancel_scope.cancel()


async def test_calls_against_a_server_in_another_process(tmp_path: Path) -> None:
    """The helper thread really sleeps in a futex another process posts: Debian-style
    libqb SHM from our server running as a separate process (tests/ipc/mini_cmap_server)."""
    keys = tmp_path / "keys"
    keys.write_text("totem.cluster_name (str) = waitlab\nquorum.expected_votes (u32) = 3\n")
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(HERE / "mini_cmap_server.py"), "shm",
                             str(keys)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == b"ready"
        key = b"totem.cluster_name"
        name = struct.pack("<H6x256s", len(key), key)
        get = name + struct.pack("<Q", 64)
        async with await AsyncIpcClient.connect("cmap", ipc_dir=str(tmp_path)) as c:
            assert c.client.conn_type == IpcType.SHM
            for _ in range(300):
                msg_id, err, body = await c.request(2, get, timeout=10)
                assert (msg_id, err) == (2, CsError.OK)
                assert body[16:16 + 8] == b"waitlab\0"
            # other request kinds in between: each call still reads its own answer
            for _ in range(3):
                assert (await c.request(9, struct.pack("<i4x", 0), timeout=10))[:2] == \
                    (10, CsError.OK)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.mark.parametrize("ipc_type", TYPES)
@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-before", "stale-after"])
async def test_cancelled_call_does_not_corrupt_the_next(ipc_type: str,
                                                          stale_first: bool) -> None:
    """A call cancelled while its request is in flight: its response, whenever it comes
    (before the next request, or while the next one waits), is dropped; the next call gets
    its own."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            for round_ in range(3):
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as inner:
                        async def cancel_when_seen() -> None:
                            await wait_until(lambda: bool(svc.pending))
                            scope.cancel()
                        inner.start_soon(cancel_when_seen)
                        await c.request(6, b"")        # deferred: parked until cancelled
                        pytest.fail("the deferred call returned")
                assert scope.cancelled_caught
                stale = svc.pending.pop()
                stale_payload = b"stale-%d" % round_
                if stale_first:
                    stale.send_response(106, stale_payload)
                    if ipc_type == "shm":
                        # the helper thread banks the count nobody waits for any more
                        waiter = c._waiter
                        assert waiter is not None
                        await wait_until(lambda: waiter._banked == 1 or
                                         waiter._sem.value() == 1)
                    fresh = b"fresh-%d" % round_
                    assert await c.request(1, fresh, timeout=5) == (101, CsError.OK, fresh)
                else:
                    result: list[object] = []

                    async def next_call() -> None:
                        result.append(await c.request(6, b"", timeout=5))

                    async with trio.open_nursery() as inner:
                        inner.start_soon(next_call)
                        await wait_until(lambda: bool(svc.pending))
                        stale.send_response(106, stale_payload)
                        svc.pending.pop().send_response(106, b"mine")
                    assert result == [(106, CsError.OK, b"mine")]
            assert c.client._owed_responses == 0
            assert await c.request(1, b"end", timeout=5) == (101, CsError.OK, b"end")
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_timed_out_call_leaves_connection_usable(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            with pytest.raises(IpcError) as exc:
                await c.request(6, b"", timeout=0.05)
            assert exc.value.errno == errno.ETIMEDOUT
            assert c.client._owed_responses == 1
            svc.pending.pop().send_response(106, b"late")
            assert await c.request(1, b"next", timeout=5) == (101, CsError.OK, b"next")
            assert c.client._owed_responses == 0
            # the blocking API on the same connection agrees about the order
            with pytest.raises(IpcError):
                await c.request(6, b"", timeout=0.05)
            svc.pending.pop().send_response(106, b"late again")
            assert await trio.to_thread.run_sync(
                lambda: c.client.request(1, b"sync", timeout=5)) == (101, CsError.OK, b"sync")
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
@pytest.mark.parametrize("how", ["wrapper", "client"])
async def test_close_wakes_pending_request_at_once(ipc_type: str, how: str) -> None:
    """close() from another task: the pending call raises the lost-connection error at once
    (the old wait noticed only at its next liveness slice, ~0.2 s, and said EBADF)."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await AsyncIpcClient.connect(srv.service)
        outcome: list[BaseException | object] = []

        async def pending() -> None:
            try:
                outcome.append(await c.request(4, b""))      # never answered
            except IpcError as exc:
                outcome.append(exc)

        n.start_soon(pending)
        await wait_until(lambda: any(m == 4 for _, m in svc.requests))
        await trio.sleep(0)
        started = time.monotonic()
        (c.close if how == "wrapper" else c.client.close)()
        elapsed = await expect_closed(outcome, started)
        print(f"{ipc_type}/{how}: pending call failed {elapsed * 1000:.1f} ms after close()")
        assert not helper_threads()
        await wait_until(lambda: srv.stats.active == 0)
        # later calls are refused, not hung
        with pytest.raises(IpcError):
            await c.request(1, b"x", timeout=1)
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_close_wakes_event_waiter(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await AsyncIpcClient.connect(srv.service)
        assert await c.request(2, b"ev", timeout=5) == (102, CsError.OK, b"ev")
        assert await c.recv_event(5) == (7, CsError.OK, b"ev")
        outcome: list[BaseException | object] = []
        waiting = trio.Event()

        async def events() -> None:
            waiting.set()
            try:
                outcome.append(await c.recv_event(None))
            except IpcError as exc:
                outcome.append(exc)

        n.start_soon(events)
        await waiting.wait()
        await trio.sleep(0)
        started = time.monotonic()
        c.close()
        await expect_closed(outcome, started)
        n.cancel_scope.cancel()


async def test_server_gone_while_waiting_is_noticed() -> None:
    """The helper thread checks the setup socket between semaphore slices (libqb does
    the same every 2 s): a server that drops the connection fails the parked call."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")
        c = await AsyncIpcClient.connect(srv.service)
        outcome: list[BaseException | object] = []

        async def pending() -> None:
            try:
                outcome.append(await c.request(4, b""))
            except IpcError as exc:
                outcome.append(exc)

        n.start_soon(pending)
        await wait_until(lambda: any(m == 4 for _, m in svc.requests))
        svc.connected[0].close("test drops the client")
        await expect_closed(outcome, time.monotonic(), deadline=5)
        c.close()
        assert not helper_threads()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_no_thread_or_fd_leak(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        # warm-up: trio's to_thread worker (used by connect) is cached from now on
        (await AsyncIpcClient.connect(srv.service)).close()
        await wait_until(lambda: srv.stats.active == 0)
        threads, fds = threading.active_count(), open_fds()

        c = await AsyncIpcClient.connect(srv.service)
        for i in range(1000):
            assert (await c.request(1, b"%d" % i))[2] == b"%d" % i
        for _ in range(50):          # cancelled waits must not add threads either
            with trio.move_on_after(0.001):
                await c.request(6, b"")
            await wait_until(lambda: len(svc.pending) == 1)
            svc.pending.pop().send_response(106, b"late")
        assert (await c.request(1, b"last", timeout=5))[2] == b"last"
        assert len(helper_threads()) == (1 if ipc_type == "shm" else 0)
        c.close()

        await wait_until(lambda: srv.stats.active == 0)
        assert not helper_threads()
        assert threading.active_count() == threads
        assert open_fds() == fds
        n.cancel_scope.cancel()


class _StepCounter(trio.abc.Instrument):
    """Counts how often trio runs one task: a parked task is not run until woken."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_waiting_call_is_parked_not_polling(ipc_type: str) -> None:
    """While its response is outstanding a call is not run at all (the old SHM wait slept
    and retried with a 20 µs → 5 ms back-off, i.e. it ran again and again).  The interval
    is 300 round trips of another connection, not a fixed sleep."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c, \
                await AsyncIpcClient.connect(srv.service) as other:
            counter = _StepCounter()
            result: list[object] = []

            async def deferred() -> None:
                counter.task = trio.lowlevel.current_task()
                result.append(await c.request(6, b"", timeout=10))

            n.start_soon(deferred)
            await wait_until(lambda: bool(svc.pending))
            trio.lowlevel.add_instrument(counter)
            try:
                counter.steps = 0
                for i in range(300):
                    assert (await other.request(1, b"%d" % i, timeout=5))[2] == b"%d" % i
                idle_steps = counter.steps
                svc.pending.pop().send_response(106, b"done")
                await wait_until(lambda: bool(result))
            finally:
                trio.lowlevel.remove_instrument(counter)
            assert result == [(106, CsError.OK, b"done")]
            # SOCKET waits in libqb's liveness slices (0.2 s): at most a wake per slice
            assert idle_steps <= (0 if ipc_type == "shm" else 3), idle_steps
        n.cancel_scope.cancel()


async def test_async_send_burst_does_not_block_the_loop() -> None:
    """Messages without response, faster than the server drains its notification bytes:
    the blocking send would sit in poll() with the (in-process) server unable to run;
    AsyncIpcClient.send awaits writability instead, and every message arrives."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")
        async with await AsyncIpcClient.connect(srv.service) as c:
            with trio.fail_after(20):
                for _ in range(3000):            # id 4: the service never answers it
                    await c.send(pack_request(4))
                assert await c.request(1, b"after", timeout=10) == (101, CsError.OK, b"after")
            assert c.client._unsent_notifications == 0
            assert sum(1 for _, m in svc.requests if m == 4) == 3000
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_random_cancellations_never_mix_up_responses(ipc_type: str) -> None:
    """Echo calls under deadlines that expire at every possible point (before the send,
    while parked, while the helper thread hands over): whatever completes carries its own
    payload, and the connection keeps working."""
    import random

    rng = random.Random(7)
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            completed = 0
            for i in range(400):
                payload = b"call-%d" % i
                with trio.move_on_after(rng.choice([0, 0, 1e-5, 5e-5, 2e-4, 1e-3, 1])):
                    assert await c.request(1, payload) == (101, CsError.OK, payload)
                    completed += 1
            assert 0 < completed < 400
            assert await c.request(1, b"end", timeout=5) == (101, CsError.OK, b"end")
        n.cancel_scope.cancel()


@pytest.mark.parametrize("wait", ["response", "event"])
async def test_blocking_client_closed_from_another_thread(wait: str) -> None:
    """The blocking client sleeps in a semaphore inside the shared mapping: close() from
    another thread wakes it (ENOTCONN) and unmaps only once it is out — unmapping under it
    would crash the process a moment later.  A blocked event wait (poll on the setup
    socket) is released at once too."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")
        c = await trio.to_thread.run_sync(lambda: IpcClient.connect(srv.service))
        outcome: list[BaseException | object] = []
        calling = threading.Event()

        def blocked() -> None:
            calling.set()
            try:
                outcome.append(c.request(4, b"") if wait == "response" else c.recv_event(None))
            except IpcError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=blocked, name="test-blocked")
        thread.start()
        if wait == "response":
            await wait_until(lambda: any(m == 4 for _, m in svc.requests))
            await wait_until(lambda: len(c._users) == 1)
        else:
            await wait_until(calling.is_set)
        started = time.monotonic()
        await trio.to_thread.run_sync(c.close)
        if wait == "response":
            await expect_closed(outcome, started)
        else:   # closed before or while it waits: either way an error, within a slice
            await wait_until(lambda: bool(outcome), timeout=2)
            assert isinstance(outcome[0], IpcError)
            assert outcome[0].errno in (errno.ENOTCONN, errno.EBADF)
        await trio.to_thread.run_sync(thread.join, 5)
        assert not thread.is_alive() and not c._users
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_close_from_a_worker_thread_wakes_trio_tasks(ipc_type: str) -> None:
    """close() called in another thread (e.g. a to_thread worker): the trio tasks waiting
    for a response and for events are woken through trio's thread, before the descriptors
    close."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await AsyncIpcClient.connect(srv.service)
        responses: list[BaseException | object] = []
        events: list[BaseException | object] = []

        async def call(out: list[BaseException | object], coro_fn: Any) -> None:
            try:
                out.append(await coro_fn())
            except IpcError as exc:
                out.append(exc)

        n.start_soon(call, responses, lambda: c.request(4, b""))
        n.start_soon(call, events, lambda: c.recv_event(None))
        await wait_until(lambda: any(m == 4 for _, m in svc.requests))
        await trio.sleep(0)
        started = time.monotonic()
        await trio.to_thread.run_sync(c.close)
        await expect_closed(responses, started)
        await expect_closed(events, started)
        assert not helper_threads()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_recv_event_is_a_schedule_point(ipc_type: str) -> None:
    """Even with events queued, recv_event honours an enclosing cancel scope (no event is
    lost by it) and lets other tasks run every few events."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            assert (await c.request(3, b"200:64", timeout=5))[2] == b"200"
            with trio.CancelScope() as scope:
                scope.cancel()
                await c.recv_event(5)
                pytest.fail("recv_event ignored a cancelled scope")
            assert scope.cancelled_caught
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as inner:
                inner.start_soon(ticker)
                await trio.lowlevel.checkpoint()       # the ticker is running now
                ticks = 0
                for i in range(200):
                    ev = await c.recv_event(5)
                    assert ev is not None and int.from_bytes(ev[2][:4], "little") == i
                inner.cancel_scope.cancel()
            assert ticks >= 200 // 16 - 1, ticks
            assert await c.recv_event(0) is None
        n.cancel_scope.cancel()


class _CloseBeforeStep(trio.abc.Instrument):
    """Closes the client just before the watched task's n-th step: i.e. while the task is
    suspended at a schedule point inside a call."""

    def __init__(self, task: trio.lowlevel.Task, step: int, close: Any) -> None:
        self.task, self.step, self.close, self.seen = task, step, close, 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.seen += 1
            if self.seen == self.step:
                self.close()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_close_while_call_suspended_at_its_schedule_point(ipc_type: str) -> None:
    """close() lands while a call sits at its first schedule point (request out, response
    not yet looked for): the call must fail cleanly, never touch the unmapped rings."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await AsyncIpcClient.connect(srv.service)
        assert await c.request(1, b"warm", timeout=5) == (101, CsError.OK, b"warm")
        outcome: list[BaseException | object] = []

        async def call() -> None:
            instrument = _CloseBeforeStep(trio.lowlevel.current_task(), 2, c.close)
            trio.lowlevel.add_instrument(instrument)
            try:
                # step 1 runs up to the first schedule point, step 2 would resume it
                await trio.lowlevel.cancel_shielded_checkpoint()
                instrument.seen = 1
                outcome.append(await c.request(1, b"x"))
            except IpcError as exc:
                outcome.append(exc)
            finally:
                trio.lowlevel.remove_instrument(instrument)

        n.start_soon(call)
        await expect_closed(outcome, time.monotonic())
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_close_fails_queued_calls_too(ipc_type: str) -> None:
    """Calls queued behind the one in flight (one request at a time) fail with the same
    lost-connection error when the client closes; calls made afterwards get EBADF."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await AsyncIpcClient.connect(srv.service)
        outcomes: list[BaseException | object] = []

        async def call(msg_id: int) -> None:
            try:
                outcomes.append(await c.request(msg_id, b""))
            except IpcError as exc:
                outcomes.append(exc)

        n.start_soon(call, 4)                  # never answered: holds the request lock
        await wait_until(lambda: any(m == 4 for _, m in svc.requests))
        for _ in range(3):
            n.start_soon(call, 1)              # queued behind it
        await trio.testing.wait_all_tasks_blocked()
        c.close()
        await wait_until(lambda: len(outcomes) == 4)
        for err in outcomes:
            assert isinstance(err, IpcError) and err.errno == errno.ENOTCONN, err
        assert sum(1 for _, m in svc.requests if m == 1) == 0
        with pytest.raises(IpcError) as exc:
            await c.request(1, b"")
        assert exc.value.errno == errno.EBADF
        with pytest.raises(IpcError) as exc:
            await c.recv_event(0)
        assert exc.value.errno == errno.EBADF
        n.cancel_scope.cancel()
