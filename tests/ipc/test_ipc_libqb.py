"""A real libqb 2.0.6 client (Debian's libqb.so.100, through ctypes in a child process)
against our server, SHM and SOCKET: handshake, round trips up to the maximum size, events
with a backlog bigger than the event ring, refusal errno, cleanup."""

from __future__ import annotations

import ctypes.util
import errno
import json
import os
import sys
from pathlib import Path

import pytest
import trio

from ipc_helpers import Service, start_server, wait_until

HELPER = Path(__file__).with_name("libqb_client.py")


def _have_libqb() -> bool:
    try:
        ctypes.CDLL("libqb.so.100")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _have_libqb(),
                                reason="Debian's libqb100 (libqb.so.100) not installed")


async def _run(service: str, scenario: str) -> dict:
    proc = await trio.run_process([sys.executable, str(HELPER), service, scenario],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_libqb_client_against_our_server(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        with trio.fail_after(30):
            out = await _run(srv.service, "echo")
        assert out["fd_rc"] == 0 and out["buffer_size"] == 1048576
        if ipc_type == "shm":
            # the poll fd is the setup socket: its peer is us (Pacemaker requires uid/gid 0)
            assert out["peercred"] == [os.getpid(), os.geteuid(), os.getegid()]
        else:
            # a connected datagram socket carries no credentials: Pacemaker refuses SOCKET
            assert out["peercred"] == [0, 0xFFFFFFFF, 0xFFFFFFFF]
        assert all(ok for _size, ok in out["echo"]), out["echo"]
        assert out["event"] == [24 + 12, 7, 36, 1, "event please"]
        assert out["flood_in_order"] is True
        assert out["no_more"] == -errno.EAGAIN      # nothing left, nothing stray
        await wait_until(lambda: len(svc.disconnected) == 1)
        assert srv.stats.malformed_requests == 0 and srv.stats.stray_notifications == 0
        assert not [d for d in os.listdir("/dev/shm") if d.startswith(f"qb-{os.getpid()}-")]
        n.cancel_scope.cancel()


async def test_libqb_client_sees_our_refusal() -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, auth=lambda pid, uid, gid: False)
        out = await _run(srv.service, "echo")
        assert out == {"connect_errno": errno.EACCES}
        srv.auth = lambda pid, uid, gid: True
        srv.ready = False
        assert await _run(srv.service, "echo") == {"connect_errno": errno.EAGAIN}
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", ["shm", "socket"])
async def test_libqb_client_honours_flow_control(ipc_type: str) -> None:
    svc = Service(fc_on_connect=1)
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        out = await _run(srv.service, "fc")
        assert out["send"] == -errno.EAGAIN and svc.requests == []
        n.cancel_scope.cancel()
