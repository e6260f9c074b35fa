"""The IPC side of the service host's admission control: the flow-control word without
holding requests (``set_flow_control(level, hold=False)``), and SHM event notification
bytes sent once per batch of events."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

from corosync.lib.ipc import CsError, IpcClient, IpcError, pack_request
from ipc_helpers import Service, start_server, wait_until

RUN = trio.to_thread.run_sync
MCAST = b"\x02\0\0\0\0\0\0\0\x18\0\0\0\0\0\0\0" + bytes(8)  # a 24-byte CPG MCAST header


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_word_without_hold_refuses_the_client_but_takes_written_requests(
        ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await RUN(lambda: IpcClient.connect(srv.service))
        conn = svc.connected[0]
        conn.set_flow_control(2, hold=False)
        assert not conn.paused
        with pytest.raises(IpcError) as exc:                 # what libcpg's mcast sees
            await RUN(lambda: c.send(MCAST, fc_enable_max=2))
        assert exc.value.errno == errno.EAGAIN and exc.value.cs_error == CsError.ERR_TRY_AGAIN
        # a request written before the client saw the word is processed, not held
        c._flow_control = lambda: 0                           # (as if written just before)
        await RUN(lambda: c.send(pack_request(1, b"early")))
        await wait_until(lambda: len(svc.requests) == 1)
        conn.set_flow_control(2)                              # hold=True: libqb's behaviour
        assert conn.paused
        await RUN(lambda: c.send(pack_request(1, b"held")))
        await trio.sleep(0)
        await trio.testing.wait_all_tasks_blocked()
        assert len(svc.requests) == 1                         # waits while held
        conn.set_flow_control(0)
        await wait_until(lambda: len(svc.requests) == 2)
        c.close()
        n.cancel_scope.cancel()


async def test_shm_notifications_are_batched_per_burst() -> None:
    """N events queued in one go reach the client as N events and N notification bytes,
    written by the flusher in one go (no byte per event from inside the producer)."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")
        c = await RUN(lambda: IpcClient.connect(srv.service))
        conn = svc.connected[0]
        channel = conn.channel
        sends = 0
        real_send = channel.setup.send

        class CountingSocket:
            def __getattr__(self, name: str):
                return getattr(channel.setup_real, name)

            def send(self, data: bytes, flags: int = 0) -> int:
                nonlocal sends
                sends += 1
                return real_send(data, flags)

        channel.setup_real = channel.setup
        channel.setup = CountingSocket()
        for i in range(50):
            assert conn.send_event(7, i.to_bytes(4, "little"))
        assert sends == 0 and channel.has_backlog()           # owed, not yet written
        await wait_until(lambda: not channel.has_backlog())
        assert sends == 1                                     # one write for the burst
        got = []
        while len(got) < 50:
            ev = await RUN(lambda: c.recv_event(timeout=5))
            assert ev is not None
            got.append(int.from_bytes(ev[2][:4], "little"))
        assert got == list(range(50))
        assert await RUN(lambda: c.recv_event(timeout=0)) is None
        channel.setup = channel.setup_real
        c.close()
        n.cancel_scope.cancel()
