"""Our client against broken or hostile servers: it must fail with a clean IpcError and
never touch files outside the connection directory it was given."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from corosync.lib.ipc import (CONN_RESPONSE_SIZE, IpcClient, IpcError, ShmRing,
                              pack_conn_response, setup_address)

from ipc_helpers import unique_name, wait_until_sync


def _fake_server(name: str, answer) -> threading.Thread:
    """Accept one client, read its 24 bytes, then run answer(sock)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(setup_address(name))
    listener.listen(1)
    listener.settimeout(10)

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with conn:
                data = b""
                while len(data) < 24:
                    chunk = conn.recv(24 - len(data))
                    if not chunk:
                        return
                    data += chunk
                answer(conn)
        finally:
            listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _connect_expect(name: str, answer, **kw) -> IpcError:
    t = _fake_server(name, answer)
    with pytest.raises(IpcError) as exc:
        IpcClient.connect(name, **kw)
    t.join(10)
    assert not t.is_alive()
    return exc.value


def test_truncated_response() -> None:
    err = _connect_expect(unique_name("trunc"),
                          lambda s: s.sendall(pack_conn_response(0)[:5000]))
    assert err.errno == errno.ENOTCONN


def test_refusal_errno_passed_through() -> None:
    err = _connect_expect(unique_name("busy"),
                          lambda s: s.sendall(pack_conn_response(-errno.EBUSY)))
    assert err.errno == errno.EBUSY


def test_garbage_response() -> None:
    err = _connect_expect(unique_name("garbage"),
                          lambda s: s.sendall(b"\x07" * CONN_RESPONSE_SIZE))
    assert err.errno == errno.EPROTO


def test_silent_server_times_out() -> None:
    # the fake server just waits for the client to give up and close
    err = _connect_expect(unique_name("silent"), lambda s: s.recv(1), timeout=0.2)
    assert err.errno == errno.ETIMEDOUT


def test_unknown_connection_type() -> None:
    err = _connect_expect(unique_name("mq"),
                          lambda s: s.sendall(pack_conn_response(0, 2, 1048576)))
    assert err.errno == errno.ENOTSUP


def test_socket_type_with_missing_control_file(tmp_path) -> None:
    err = _connect_expect(unique_name("noctl"), lambda s: s.sendall(pack_conn_response(
        0, 0, 1048576, 0, str(tmp_path / "qb-control-x"), str(tmp_path / "qb-x"))))
    assert err.errno == errno.ENOENT


def test_shm_ring_pointing_outside_its_directory(tmp_path) -> None:
    """A fake server's header names /elsewhere/victim as data file: refused, victim intact."""
    conn_dir = tmp_path / "conn"
    conn_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 200000)
    rings = [ShmRing.create(str(conn_dir / f"qb-{k}-x"), 1048576) for k in ("a", "b", "c")]
    try:
        hdr = rings[0]._hdr
        path = str(victim).encode()
        hdr[4108:4108 + 4096] = path + b"\0" * (4096 - len(path))
        err = _connect_expect(unique_name("evil"), lambda s: s.sendall(pack_conn_response(
            0, 1, 1048576, 0, *(r.header_path[:-7] for r in rings))))
        assert err.errno == errno.EPROTO
        assert victim.read_bytes() == b"precious" * 200000
    finally:
        for r in rings:
            r.close()


def test_shm_wrong_ring_size() -> None:
    """word_size must follow the announced max_msg_size (spec §3.1 pitfall)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="qb-test-", dir="/dev/shm")
    rings = [ShmRing.create(os.path.join(d, f"qb-{k}-x"), 65536) for k in ("a", "b", "c")]
    try:
        err = _connect_expect(unique_name("size"), lambda s: s.sendall(pack_conn_response(
            0, 1, 1048576, 0, *(r.header_path[:-7] for r in rings))))
        assert err.errno == errno.EPROTO
    finally:
        for r in rings:
            r.close()
        os.rmdir(d)


def test_wakeup_bytes_survive_a_slow_server(tmp_path) -> None:
    """The SHM client owes one byte per committed request: when the server does not drain
    its setup socket for a while, send() waits instead of losing the byte (which would leave
    a request in the ring that the server never looks at)."""
    import tempfile
    name = unique_name("slow")
    d = tempfile.mkdtemp(prefix="qb-test-", dir="/dev/shm")
    rings = [ShmRing.create(os.path.join(d, f"qb-{k}-x"), 1048576) for k in ("a", "b", "c")]
    release = threading.Event()
    received = []

    def answer(s: socket.socket) -> None:
        s.sendall(pack_conn_response(0, 1, 1048576, 0, *(r.header_path[:-7] for r in rings)))
        release.wait(10)
        total = 0
        while total < 2000:
            chunk = s.recv(65536)
            if not chunk:
                break
            total += len(chunk)
        received.append(total)

    t = _fake_server(name, answer)
    try:
        client = IpcClient.connect(name)
        sender = threading.Thread(target=lambda: [client.send(b"\x01" + bytes(15))
                                                  for _ in range(2000)])
        sender.start()
        # the socket fills long before 2000 bytes (one skb per byte); before the fix send()
        # raised EAGAIN there with the chunk already committed
        wait_until_sync(lambda: rings[0].sem.value() >= 150, what="requests committed")
        release.set()
        sender.join(10)
        assert not sender.is_alive()
        t.join(10)
        assert received == [2000] and rings[0].sem.value() == 2000
        client.close()
    finally:
        release.set()
        for r in rings:
            r.close()
        os.rmdir(d)
