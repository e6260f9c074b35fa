"""Our client <-> our server over SHM and SOCKET: round trips, events, concurrency, slow and
dying clients, policy, rendezvous directories."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import struct
import textwrap

import pytest
import trio
import trio.testing

from corosync.lib.ipc import (DEFAULT_MAX_MSG_SIZE, AsyncIpcClient, CsError, IpcClient,
                              IpcError, IpcType, abstract_address, pack_request)

from ipc_helpers import Service, start_server, unique_name, wait_until

TYPES = ["shm", "socket"]
RUN = trio.to_thread.run_sync


def our_dirs(pid: int | None = None) -> list[str]:
    prefix = f"qb-{pid or os.getpid()}-"
    return [d for d in os.listdir("/dev/shm") if d.startswith(prefix)]


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_round_trips_all_sizes(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)

        def client() -> None:
            with IpcClient.connect(srv.service) as c:
                assert c.conn_type == IpcType[ipc_type.upper()]
                assert c.max_msg_size == DEFAULT_MAX_MSG_SIZE
                # sizes around words, pages and the maximum (request header 16, response 24)
                sizes = [0, 1, 2, 3, 4, 5, 7, 8, 63, 4095, 4096, 4097, 65536, 300000,
                         DEFAULT_MAX_MSG_SIZE - 24]
                # plus enough medium messages to wrap the 1 MiB rings several times
                sizes += [100003] * 40
                for size in sizes:
                    payload = bytes([size % 251]) * size
                    assert c.request(1, payload, timeout=10) == (101, CsError.OK, payload)
                with pytest.raises(IpcError) as exc:
                    c.request(1, b"z" * (DEFAULT_MAX_MSG_SIZE - 15))
                assert exc.value.errno == errno.EMSGSIZE
                assert exc.value.cs_error == CsError.ERR_TOO_BIG
                # still usable after the refused send
                assert c.request(1, b"ok", timeout=10) == (101, CsError.OK, b"ok")

        await RUN(client)
        await wait_until(lambda: len(svc.disconnected) == 1)
        assert srv.stats.requests == 56 and srv.stats.malformed_requests == 0
        assert not our_dirs()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_events_in_order_and_backlog_drains(ipc_type: str) -> None:
    """More events than the client's ring/queue holds: the server parks them and delivers all,
    in order, as the client reads."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)

        def client() -> None:
            with IpcClient.connect(srv.service) as c:
                assert c.request(2, b"hello", timeout=5) == (102, CsError.OK, b"hello")
                assert c.recv_event(5) == (7, CsError.OK, b"hello")
                assert c.recv_event(0) is None
                count, size = 400, 10000     # 4 MB: four times the event ring
                assert c.request(3, f"{count}:{size}".encode(), timeout=5)[2] == b"400"
                for i in range(count):
                    ev = c.recv_event(5)
                    assert ev is not None and ev[0] == 8 and len(ev[2]) == size
                    assert int.from_bytes(ev[2][:4], "little") == i
                assert c.recv_event(0) is None
                # many small events: they all fit the ring, but one notification byte each
                # overflows the setup socket's send buffer; the owed bytes must follow
                assert c.request(3, b"3000:64", timeout=5)[2] == b"3000"
                for i in range(3000):
                    ev = c.recv_event(5)
                    assert ev is not None and int.from_bytes(ev[2][:4], "little") == i
                assert c.recv_event(0) is None

        await RUN(client)
        assert srv.stats.events == 3401
        assert srv.stats.events_queued > 0   # the backlog path was exercised
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_async_client_and_fileno(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        async with await AsyncIpcClient.connect(srv.service) as c:
            assert await c.request(2, b"abc", timeout=5) == (102, CsError.OK, b"abc")
            # the event fd becomes readable for the pending event
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(c.fileno())
            assert await c.recv_event(5) == (7, CsError.OK, b"abc")
            assert await c.recv_event(0.05) is None
            # deferred response: answered by the "service" later
            async with trio.open_nursery() as inner:
                result: list[tuple[int, int, bytes]] = []

                async def ask() -> None:
                    result.append(await c.request(6, b"", timeout=5))

                inner.start_soon(ask)
                await wait_until(lambda: bool(svc.pending))
                svc.pending.pop().send_response(106, b"later", CsError.ERR_TRY_AGAIN)
            assert result == [(106, CsError.ERR_TRY_AGAIN, b"later")]
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_hundred_concurrent_clients(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        clients = []
        async with trio.open_nursery() as conn_n:
            async def connect() -> None:
                clients.append(await AsyncIpcClient.connect(srv.service))
            for _ in range(100):
                conn_n.start_soon(connect)
        assert len(clients) == 100 and srv.stats.active == 100

        async def work(i: int, c: AsyncIpcClient) -> None:
            for j in range(20):
                payload = f"{i}:{j}".encode() * (1 + (i * j) % 50)
                assert await c.request(2, payload, timeout=10) == (102, CsError.OK, payload)
                assert await c.recv_event(10) == (7, CsError.OK, payload)

        with trio.fail_after(30):
            async with trio.open_nursery() as work_n:
                for i, c in enumerate(clients):
                    work_n.start_soon(work, i, c)
        for c in clients:
            c.close()
        await wait_until(lambda: srv.stats.active == 0)
        assert srv.stats.requests == 2000 and srv.stats.disconnects == 100
        assert not our_dirs()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_stuck_client_is_cut_off_others_keep_going(ipc_type: str) -> None:
    """A client that never reads its events costs a bounded queue, then its connection;
    another client is served normally all along."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type, event_queue_max=50)
        stuck = await AsyncIpcClient.connect(srv.service)
        good = await AsyncIpcClient.connect(srv.service)
        stuck_conn = svc.connected[0]
        # fills the ring / datagram queue, then 50 queued, then the cut: the flood request's
        # own response never comes, the client sees the disconnect instead of hanging
        with pytest.raises(IpcError) as exc:
            await stuck.request(3, b"2000:10000", timeout=10)
        assert exc.value.errno == errno.ENOTCONN
        assert srv.stats.slow_disconnects == 1 and stuck_conn.closed
        assert stuck_conn.max_event_backlog == 50
        assert 0 < stuck_conn.events_sent < 2000
        await wait_until(lambda: stuck_conn in svc.disconnected)
        for i in range(50):
            assert await good.request(1, b"%d" % i, timeout=5) == (101, CsError.OK, b"%d" % i)
        stuck.close()
        good.close()
        await wait_until(lambda: srv.stats.active == 0)
        n.cancel_scope.cancel()


CHILD = textwrap.dedent("""
    import sys
    from corosync.lib.ipc import IpcClient
    c = IpcClient.connect(sys.argv[1])
    print(c.request(1, b"ping", timeout=5)[2].decode(), flush=True)
    c.send(b"\\x04\\0\\0\\0\\0\\0\\0\\0\\x10\\0\\0\\0\\0\\0\\0\\0")   # id 4: never answered
    c.recv_response(None)
""")


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_client_killed_mid_request(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, srv.service],
                                stdout=subprocess.PIPE)
        try:
            assert (await RUN(proc.stdout.readline)).strip() == b"ping"  # type: ignore[union-attr]
            await wait_until(lambda: (svc.connected[0].id, 4) in svc.requests)
            conn = svc.connected[0]
            assert os.path.isdir(conn.directory)
            os.kill(proc.pid, signal.SIGKILL)
            await RUN(proc.wait)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        await wait_until(lambda: conn in svc.disconnected)
        assert not os.path.exists(conn.directory)
        assert not our_dirs()
        # the server carries on
        assert await RUN(lambda: IpcClient.connect(srv.service).request(1, b"x", 5)) == \
            (101, CsError.OK, b"x")
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_policy_refusals(ipc_type: str) -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        seen: list[tuple[int, int, int]] = []

        def deny(pid: int, uid: int, gid: int) -> bool:
            seen.append((pid, uid, gid))
            return False

        srv = await start_server(n, svc, ipc_type=ipc_type, auth=deny)
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(srv.service))
        assert exc.value.errno == errno.EACCES and exc.value.cs_error == CsError.ERR_ACCESS
        assert seen == [(os.getpid(), os.geteuid(), os.getegid())]
        assert svc.connected == []     # the service never saw it

        srv.auth = lambda pid, uid, gid: True
        srv.ready = False
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(srv.service))
        assert exc.value.errno == errno.EAGAIN and exc.value.cs_error == CsError.ERR_TRY_AGAIN
        srv.ready = True

        svc.accept = False             # the service itself declines
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(srv.service))
        assert exc.value.errno == errno.EACCES
        await wait_until(lambda: srv.stats.active == 0)
        assert svc.disconnected == []  # declined connections get no on_disconnect
        assert srv.stats.rejected == 3 and not our_dirs()
        n.cancel_scope.cancel()


def _connect_as(uid: int, service: str) -> int:
    """Fork a child that drops to ``uid`` and connects; returns the errno it got (0 = ok).

    A fork, not a new interpreter: the interpreter under /root is not executable by nobody.
    The child only runs the client's pure-Python connect and leaves with os._exit."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            try:
                IpcClient.connect(service, timeout=5).close()
                code = 0
            except IpcError as exc:
                code = exc.errno or 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_default_policy_refuses_other_uid() -> None:
    """default_auth: root or our own uid only; a client running as nobody gets EACCES."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc)
        assert await RUN(lambda: _connect_as(65534, srv.service)) == errno.EACCES
        assert srv.stats.rejected == 1 and svc.connected == []
        srv.auth = lambda pid, uid, gid: uid == 65534   # e.g. cmap uidgid.uid.65534 = 1
        assert await RUN(lambda: _connect_as(65534, srv.service)) == 0
        await wait_until(lambda: len(svc.disconnected) == 1)
        assert svc.connected[0].uid == 65534 and svc.connected[0].gid == 65534
        n.cancel_scope.cancel()


async def test_filesystem_rendezvous_dir(tmp_path, monkeypatch) -> None:
    """ipc_dir / $COROSYNC_IPC_DIR: a socket file in that directory, not an abstract name."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_dir=tmp_path / "ipc", name="cmap")
        assert srv.address == str(tmp_path / "ipc" / "cmap")
        assert os.path.exists(srv.address)
        assert oct(os.stat(srv.address).st_mode & 0o777) == "0o777"
        c = await RUN(lambda: IpcClient.connect("cmap", ipc_dir=tmp_path / "ipc"))
        assert await RUN(lambda: c.request(1, b"fs", 5)) == (101, CsError.OK, b"fs")
        c.close()
        monkeypatch.setenv("COROSYNC_IPC_DIR", str(tmp_path / "ipc"))
        c = await RUN(lambda: IpcClient.connect("cmap"))
        assert await RUN(lambda: c.request(1, b"env", 5)) == (101, CsError.OK, b"env")
        c.close()
        n.cancel_scope.cancel()
    assert not os.path.exists(tmp_path / "ipc" / "cmap")   # unlinked at shutdown


async def test_abstract_name_is_padded(monkeypatch) -> None:
    """Stock libqb clients use the 108-byte padded name; the short form must not reach us."""
    import socket as so
    monkeypatch.delenv("COROSYNC_IPC_DIR", raising=False)
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc)
        assert srv.address == abstract_address(srv.service) and len(srv.address) == 108
        s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        with pytest.raises(ConnectionRefusedError):
            s.connect(b"\0" + srv.service.encode())
        s.close()
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(unique_name("nobody")))
        assert exc.value.errno == errno.ECONNREFUSED
        n.cancel_scope.cancel()


async def test_ipc_type_parameter_and_mismatch() -> None:
    from corosync.exec.ipc import parse_ipc_type
    assert parse_ipc_type("native") == IpcType.SHM == parse_ipc_type("SHM")
    assert parse_ipc_type("socket") == IpcType.SOCKET
    with pytest.raises(ValueError):
        parse_ipc_type("posix")
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type="socket")
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(srv.service, ipc_type=IpcType.SHM))
        assert exc.value.errno == errno.EPROTO
        await wait_until(lambda: srv.stats.active == 0)
        n.cancel_scope.cancel()


async def test_service_can_close_and_handler_bug_disconnects() -> None:
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc)
        c = await AsyncIpcClient.connect(srv.service)
        with pytest.raises(IpcError) as exc:
            await c.request(5, b"", timeout=5)      # the handler raises
        assert exc.value.errno == errno.ENOTCONN
        assert srv.stats.handler_errors == 1
        c.close()
        c = await AsyncIpcClient.connect(srv.service)
        await c.request(1, b"", timeout=5)
        conn = svc.connected[-1]
        conn.close()
        assert conn.send_event(7, b"late") is False
        await wait_until(lambda: conn in svc.disconnected)
        with pytest.raises(IpcError):
            await c.request(1, b"", timeout=5)
        c.close()
        n.cancel_scope.cancel()


async def test_large_max_msg_size_negotiation() -> None:
    """The response carries max(client wish, server size), bounded by the server's limit."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, max_msg_size_limit=2 * DEFAULT_MAX_MSG_SIZE)
        c = await RUN(lambda: IpcClient.connect(srv.service, max_msg_size=1536 * 1024))
        assert c.max_msg_size == 1536 * 1024
        payload = b"L" * (1536 * 1024 - 24)
        assert await RUN(lambda: c.request(1, payload, 10)) == (101, CsError.OK, payload)
        c.close()
        c = await RUN(lambda: IpcClient.connect(srv.service, max_msg_size=1 << 29))
        assert c.max_msg_size == 2 * DEFAULT_MAX_MSG_SIZE
        c.close()
        c = await RUN(lambda: IpcClient.connect(srv.service, max_msg_size=100))
        assert c.max_msg_size == DEFAULT_MAX_MSG_SIZE
        c.close()
        n.cancel_scope.cancel()


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_flow_control_word(ipc_type: str) -> None:
    """conn.set_flow_control publishes libqb's request flow-control word: 1 refuses every
    client send (EAGAIN -> CS_ERR_TRY_AGAIN), 2 only CPG mcast (clients pass fc_enable_max=2)."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await RUN(lambda: IpcClient.connect(srv.service))
        conn = svc.connected[0]
        conn.set_flow_control(1)
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: c.request(1, b"", 5))
        assert exc.value.errno == errno.EAGAIN and exc.value.cs_error == CsError.ERR_TRY_AGAIN
        conn.set_flow_control(2)
        with pytest.raises(IpcError):
            await RUN(lambda: c.send(b"\x02\0\0\0\0\0\0\0\x18\0\0\0\0\0\0\0" + bytes(8),
                                     fc_enable_max=2))
        conn.set_flow_control(0)
        assert await RUN(lambda: c.request(1, b"b", 5)) == (101, CsError.OK, b"b")
        c.close()
        n.cancel_scope.cancel()


def test_remove_stale_dirs(tmp_path) -> None:
    from corosync.exec.ipc import remove_stale_dirs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                        # a pid that no longer exists
    for name in (f"qb-{dead.pid}-1-2-abc", f"qb-{os.getpid()}-1-2-mine",
                 f"qb-{os.getppid()}-1-2-alive", "unrelated"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "qb-request-cmap-header").write_bytes(b"x")
    assert remove_stale_dirs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"qb-{os.getpid()}-1-2-mine", f"qb-{os.getppid()}-1-2-alive", "unrelated"])
    assert remove_stale_dirs(str(tmp_path), server_pid=os.getppid()) == 1
    assert remove_stale_dirs(str(tmp_path / "missing")) == 0


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_flow_control_holds_requests(ipc_type: str) -> None:
    """Like libqb, the server processes no request of a flow-controlled connection; they are
    handled in order once the word is cleared, and a client leaving meanwhile is noticed."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await RUN(lambda: IpcClient.connect(srv.service))
        conn = svc.connected[0]
        conn.set_flow_control(2)               # the client may still send ordinary requests
        answers: list[tuple[int, int, bytes]] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(RUN, lambda: answers.append(c.request(1, b"held", 10)))
            if ipc_type == "shm":
                await wait_until(lambda: conn.channel.deferred == 1)  # type: ignore[union-attr]
            else:
                await wait_until(lambda: struct.unpack_from(
                    "<i", c._control, 0)[0] == 1)     # client's request.sent counter
            await trio.testing.wait_all_tasks_blocked()
            assert svc.requests == [] and answers == []
            conn.set_flow_control(0)
        assert answers == [(101, CsError.OK, b"held")]
        # paused again, then the client dies: cleanup still happens
        conn.set_flow_control(1)
        c._flow_control = lambda: 0            # a client ignoring the word
        c.send(pack_request(1, b"x"))
        c.close()
        await wait_until(lambda: conn in svc.disconnected)
        n.cancel_scope.cancel()


async def test_transport_setup_failure_is_reported(tmp_path) -> None:
    """No usable shm directory: the client gets the errno, not a hang or a reset."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, shm_dir=str(tmp_path / "missing"))
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: IpcClient.connect(srv.service))
        assert exc.value.errno == errno.ENOENT
        assert srv.stats.handshake_failures == 1 and svc.connected == []
        srv.shm_dir = str(tmp_path)
        c = await RUN(lambda: IpcClient.connect(srv.service))
        assert await RUN(lambda: c.request(1, b"ok", 5)) == (101, CsError.OK, b"ok")
        c.close()
        await wait_until(lambda: srv.stats.active == 0)
        assert list(tmp_path.iterdir()) == []
        n.cancel_scope.cancel()


async def test_serve_services_runs_one_server_per_handler(tmp_path) -> None:
    from corosync.exec.ipc import serve_services
    handlers = {name: Service() for name in ("cmap", "cpg", "quorum")}
    async with trio.open_nursery() as n:
        servers = await n.start(lambda task_status: serve_services(
            handlers, ipc_dir=tmp_path, ipc_type="socket", task_status=task_status))
        assert sorted(s.service for s in servers) == ["cmap", "cpg", "quorum"]
        for name in handlers:
            c = await RUN(lambda: IpcClient.connect(name, ipc_dir=tmp_path))
            assert c.conn_type == IpcType.SOCKET
            assert (await RUN(lambda: c.request(1, name.encode(), 5)))[2] == name.encode()
            c.close()
        assert all(len(h.connected) == 1 for h in handlers.values())
        n.cancel_scope.cancel()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("ipc_type", TYPES)
async def test_bad_response_header_is_ebadmsg(ipc_type: str) -> None:
    """Both clients report a response whose header disagrees with its length as EBADMSG."""
    svc = Service()
    async with trio.open_nursery() as n:
        srv = await start_server(n, svc, ipc_type=ipc_type)
        c = await RUN(lambda: IpcClient.connect(srv.service))
        with pytest.raises(IpcError) as exc:
            await RUN(lambda: c.request(10, b"", 5))
        assert exc.value.errno == errno.EBADMSG and exc.value.cs_error == CsError.ERR_MESSAGE_ERROR
        c.close()
        a = await AsyncIpcClient.connect(srv.service)
        with pytest.raises(IpcError) as exc:
            await a.request(10, b"", 5)
        assert exc.value.errno == errno.EBADMSG
        a.close()
        n.cancel_scope.cancel()
