"""Hostile and broken clients: malformed setup bytes, bad requests on both transports,
forged shared memory.  The server must refuse, count, and keep serving everybody else."""

from __future__ import annotations

import random
import socket
import struct

import pytest
import trio

from corosync.lib.ipc import (CONN_RESPONSE_SIZE, MAGIC_WRITING, CsError, IpcClient, IpcError,
                              abstract_address, pack_request, unpack_response)

from ipc_helpers import Service, start_server, wait_until, wait_until_sync

RUN = trio.to_thread.run_sync


def _raw_setup(address: str | bytes, data: bytes, half_close: bool) -> bytes:
    """Send raw bytes to the setup socket; return whatever the server answers before EOF."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def _setup_cases() -> list[tuple[bytes, bool]]:
    auth = struct.pack("<i4xi4xI4x", -1, 24, 1048576)
    cases = [
        (b"", True), (b"\xff", True), (auth[:23], True), (auth[:10], False),   # timeout path
        (struct.pack("<i4xi4xI4x", 0, 24, 1048576), False),     # wrong id
        (struct.pack("<i4xi4xI4x", -1, 25, 1048576), False),    # wrong size
        (struct.pack("<i4xi4xI4x", -3, 24, 0), False),
        (b"\0" * 24, False), (b"\xff" * 24, False), (b"GET / HTTP/1.0\r\n\r\n" * 100, True),
    ]
    rng = random.Random(4242)
    for _ in range(30):
        n = rng.choice([1, 7, 16, 23, 24, 25, 100])
        cases.append((bytes(rng.getrandbits(8) for _ in range(n)), rng.random() < 0.5))
    return cases


async def test_setup_socket_fuzz() -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, handshake_timeout=0.3)
        cases = _setup_cases()
        accepted = 0
        for data, half_close in cases:
            answer = await RUN(lambda: _raw_setup(srv.address, data, half_close))
            mid, size, max_msg = struct.unpack("<i4xi4xI4x", (data + b"\0" * 24)[:24])
            if len(data) >= 24 and mid == -1 and size == 24:
                # a well-formed request (possibly followed by junk): a full response
                assert len(answer) == CONN_RESPONSE_SIZE
                accepted += 1
            else:
                assert answer == b""               # libqb closes silently
        await wait_until(lambda: srv.stats.active == 0)
        assert srv.stats.handshake_failures == len(cases) - accepted
        assert not svc.requests
        # alive and well
        c = await RUN(lambda: IpcClient.connect(srv.service))
        assert await RUN(lambda: c.request(1, b"ok", 5)) == (101, CsError.OK, b"ok")
        c.close()
        n.cancel_scope.cancel()


async def test_socket_transport_bad_requests() -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="socket")
        c = await RUN(lambda: IpcClient.connect(srv.service))
        generic = (0, CsError.ERR_INVALID_PARAM, b"")

        def raw(data: bytes) -> tuple[int, int, bytes]:
            c._req_sock.send(data)          # bypass the client's own checks
            answer = c.recv_response(5)
            assert answer is not None
            return unpack_response(answer)

        def run() -> None:
            # before the first response the request socket is unconnected: a datagram from
            # a foreign socket is dropped (counted), not handed to the service
            spy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            spy.sendto(pack_request(1, b"spoof"), abstract_address(c_base() + "-request"))
            spy.close()
            wait_until_sync(lambda: srv.stats.malformed_requests == 1, what="spoof dropped")
            assert svc.requests == []
            assert raw(b"") == generic                                   # empty datagram
            assert raw(b"\x01\0\0\0") == generic                          # truncated header
            assert raw(struct.pack("<i4xi4x", 1, 99) + b"x") == generic   # size disagrees
            assert raw(struct.pack("<i4xi4x", -2, 16)) == generic         # negative id
            assert raw(b"\x01" + b"\0" * (c.max_msg_size + 100)) == generic   # oversized
            rng = random.Random(7)
            for _ in range(200):
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
                mid, size = struct.unpack("<i4xi4x", (data + b"\0" * 16)[:16])
                if len(data) >= 16 and (size == 0 or mid == -3):
                    continue                  # those mean "disconnect" in libqb
                expected = generic if (len(data) < 16 or size != len(data) or mid < 0) \
                    else None
                got = raw(data)
                if expected is not None:
                    assert got == expected
            assert c.request(1, b"still fine", 5) == (101, CsError.OK, b"still fine")
            # now the server's socket is connected to the client's: the kernel refuses others
            spy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            with pytest.raises(PermissionError):
                spy.sendto(pack_request(1, b"spoof"), abstract_address(c_base() + "-request"))
            spy.close()

        def c_base() -> str:
            return svc.connected[0].channel.base   # type: ignore[union-attr]

        await RUN(run)
        assert srv.stats.malformed_requests >= 5 + 1
        assert len(svc.disconnected) == 0
        # a size-0 header is libqb's "disconnect me"
        c._req_sock.send(struct.pack("<i4xi4x", 1, 0))
        await wait_until(lambda: len(svc.disconnected) == 1)
        c.close()
        n.cancel_scope.cancel()


async def test_shm_transport_forged_memory() -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")

        def connect() -> IpcClient:
            return IpcClient.connect(srv.service)

        # 1. a wake-up byte without a chunk: counted, ignored
        c = await RUN(connect)
        c._setup.send(b"\0")
        await wait_until(lambda: srv.stats.stray_notifications == 1)
        # 2. a committed chunk whose header disagrees with its length: generic error
        ring = c._rings[0]
        ring.write(struct.pack("<i4xi4x", 1, 500) + b"x" * 4)
        c._setup.send(b"\0")
        answer = await RUN(lambda: c.recv_response(5))
        assert answer is not None and unpack_response(answer) == (0, CsError.ERR_INVALID_PARAM, b"")
        assert await RUN(lambda: c.request(1, b"fine", 5)) == (101, CsError.OK, b"fine")
        # 3. an uncommitted chunk: protocol violation, the connection is dropped and cleaned
        conn = svc.connected[-1]
        write_pt = struct.unpack_from("<I", ring._hdr, 0)[0]
        ring.write(pack_request(1, b"half"))
        ring._set_word(write_pt + 1, MAGIC_WRITING)
        c._setup.send(b"\0")
        await wait_until(lambda: conn in svc.disconnected)
        with pytest.raises(IpcError):
            await RUN(lambda: c.request(1, b"", 5))
        c.close()
        # 4. a forged length and 5. a forged read pointer: same
        for forge in ("length", "read_pt"):
            c = await RUN(connect)
            conn = svc.connected[-1]
            ring = c._rings[0]
            if forge == "length":
                ring.write(pack_request(1, b"x"))
                ring._set_word(0, 0x7FFFFFF0)
            else:
                struct.pack_into("<I", ring._hdr, 4, 0xFFFFFF00)
                ring.sem.post()
            c._setup.send(b"\0")
            await wait_until(lambda: conn in svc.disconnected)
            assert not __import__("os").path.exists(conn.directory)
            c.close()
        assert srv.stats.malformed_requests == 1 + 3
        c = await RUN(connect)
        assert await RUN(lambda: c.request(1, b"alive", 5)) == (101, CsError.OK, b"alive")
        c.close()
        n.cancel_scope.cancel()


async def test_corrupted_event_ring_hurts_only_its_owner() -> None:
    """A client that scribbles over its own event ring header is dropped when an event is
    written for it, even from another client's request handler; that other client is fine."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="shm")
        victim = await RUN(lambda: IpcClient.connect(srv.service))
        sender = await RUN(lambda: IpcClient.connect(srv.service))
        victim_conn = svc.connected[0]
        struct.pack_into("<I", victim._rings[2]._hdr, 4, 0xFFFFFFF0)   # event read_pt
        assert await RUN(lambda: sender.request(9, b"hi", 5)) == (109, CsError.OK, b"1")
        await wait_until(lambda: victim_conn in svc.disconnected)
        assert sender.recv_event(0) == (7, CsError.OK, b"hi")
        assert srv.stats.handler_errors == 0
        victim.close()
        sender.close()
        n.cancel_scope.cancel()
