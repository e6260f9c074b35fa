"""corosync-qnetd as a process on 127.0.0.1 (ephemeral port, temp dir), driven by the
Python qdevice test client; corosync-qnetd-tool against it."""

import re
import struct

import pytest
import trio

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, RingId, Vote

from qnetd_client import ClientClosed, Daemon, QdeviceClient, tool

A, N = Vote.ACK, Vote.NACK
FAST = ("-S", "heartbeat_interval_min=100")


@pytest.fixture
def daemon_factory(tmp_path):
    started = []

    def make(*args, sub="d"):
        d = tmp_path / f"{sub}{len(started)}"
        d.mkdir()
        dm = Daemon(d, *args)
        started.append(dm)
        dm.wait_ready()
        return dm

    yield make
    for dm in started:
        rc = dm.stop()
        assert rc == 0, dm.stderr()


@pytest.fixture
def qnetd(daemon_factory):
    return daemon_factory("-s", "off", *FAST)


def _mask_addresses(text: bytes) -> bytes:
    return re.sub(rb"(Client address:\t\t)\S+", rb"\1ADDR", text)


async def test_ffsplit_2node_kill_one_other_keeps_vote(qnetd, shared_dir):
    ring = RingId(1, 9)
    c1 = await QdeviceClient.connect(qnetd.port)
    await c1.start(1, [1, 2], [1, 2], ring)
    c2 = await QdeviceClient.connect(qnetd.port)
    await c2.start(2, [1, 2], [1, 2], ring)
    assert await c1.wait_vote() == A
    assert await c2.wait_vote() == A
    # read the remaining replies (NO_CHANGE) so the tool shows the stock state
    for c in (c1, c2):
        with trio.move_on_after(0.3):
            while True:
                m = await c.recv()
                if m.type == P.MsgType.VOTE_INFO:
                    await c.send_raw(P.build_vote_info_reply(m.seq))
    r = tool(qnetd.sock, "-l", "-v")
    assert r.returncode == 0
    ref = (shared_dir / "reference/qdevice/qnetd/ffsplit-2node/running-qnetd-tool-l-v.txt").read_bytes()
    assert _mask_addresses(r.stdout) == _mask_addresses(ref)
    assert b"::ffff:127.0.0.1:" in r.stdout
    r = tool(qnetd.sock, "-s")
    assert r.stdout == (shared_dir / "reference/qdevice/qnetd/ffsplit-2node/running-qnetd-tool-s.txt") \
        .read_bytes().replace(b"*:5403", f"*:{qnetd.port}".encode())
    await c2.aclose()  # n2 killed: the disconnect hook re-decides, n1 keeps its vote
    assert await c1.wait_vote() == A
    await c1.send(P.build_node_list, P.NodeListType.MEMBERSHIP, [P.NodeInfo(1)], ring=RingId(1, 0xd))
    assert await c1.wait_vote() == A
    await c1.aclose()


async def test_lms_3node_partition_decided_by_timer(qnetd):
    ring = RingId(1, 0x30)
    cs = []
    for i in (1, 2, 3):
        c = await QdeviceClient.connect(qnetd.port)
        await c.start(i, [1, 2, 3], [1, 2, 3], ring, algorithm=Algorithm.LMS, hb=400)
        cs.append(c)
    for c in cs:
        votes = [(await c.recv()).vote for _ in range(3)]
        assert votes == [Vote.NO_CHANGE, A, A]
    r12, r3 = RingId(1, 0x34), RingId(3, 0x34)
    for c, r, ids in ((cs[0], r12, [1, 2]), (cs[1], r12, [1, 2]), (cs[2], r3, [3])):
        await c.send(P.build_node_list, P.NodeListType.MEMBERSHIP, [P.NodeInfo(i) for i in ids], ring=r)
    for c in cs:
        assert (await c.recv()).vote == Vote.WAIT_FOR_REPLY
    got = []
    for c in cs:  # the algorithm timer (heartbeat / 4 = 100 ms) decides
        got.append(await c.wait_vote(timeout=3))
    assert got == [A, A, N]
    for c in cs:
        await c.aclose()


async def test_dead_peer_detection_others_unaffected(qnetd):
    silent = await QdeviceClient.connect(qnetd.port)
    assert (await silent.preinit()).type == P.MsgType.PREINIT_REPLY
    assert (await silent.init(1, hb=200)).reply_error_code == 0
    alive = await QdeviceClient.connect(qnetd.port)
    await alive.preinit()
    assert (await alive.init(2, hb=4000)).reply_error_code == 0
    start = trio.current_time()
    echoes = []

    async def keep_alive():
        while True:
            await trio.sleep(0.05)
            await alive.send(P.build_echo_request)
            while True:
                m = await alive.recv()
                if m.type == P.MsgType.ECHO_REPLY:
                    echoes.append(m.seq)
                    break

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_alive)
        await silent.expect_closed(timeout=5)
        closed_at = trio.current_time()
        await trio.sleep(0.5)  # the other client keeps being served meanwhile
        nursery.cancel_scope.cancel()
    start, end = start, closed_at
    assert len(echoes) >= 5
    elapsed = end - start
    assert 0.25 <= elapsed <= 1.5  # 1.5 x 200 ms after its last message
    r = tool(qnetd.sock, "-l")
    assert b"Node ID 2:" in r.stdout and b"Node ID 1:" not in r.stdout
    await alive.aclose()


async def test_malformed_input_disconnects_or_errors_others_unaffected(qnetd):
    good = await QdeviceClient.connect(qnetd.port)
    await good.start(1, [1, 2], [1, 2], RingId(1, 1), hb=8000)

    async def fresh():
        c = await QdeviceClient.connect(qnetd.port)
        await c.preinit()
        return c

    bad = await fresh()
    await bad.send_raw(struct.pack(">HI", 8, 40000) + b"\0" * 40000)  # oversized: skipped
    m = await bad.recv()
    assert (m.type, m.reply_error_code, m.seq) == (P.MsgType.SERVER_ERROR, 5, None)
    await bad.send_raw(struct.pack(">HI", 99, 4) + b"abcd")  # unknown type
    assert (await bad.recv()).reply_error_code == 4
    await bad.send_raw(P.build_echo_request(3)[:-2] + b"")  # length says more: wait...
    await bad.send_raw(b"\0\0")  # ...completed by junk: the seq TLV is fine again
    m = await bad.recv()
    assert m.type in (P.MsgType.SERVER_ERROR,)  # echo before INIT: INIT_REQUIRED
    await bad.send_raw(struct.pack(">HI", 3, 3) + b"\0\0\0")  # undecodable INIT
    assert (await bad.recv()).reply_error_code == 9
    await bad.send_raw(P.build_vote_info(1, 1, RingId(1, 1)))  # server-side type
    assert (await bad.recv()).reply_error_code == 8
    await bad.send_raw(struct.pack(">HI", 10, 100) + b"\0\0\0\4\0\0")  # truncated, then EOF
    await bad.aclose()
    # random garbage from several connections at once
    for seed in range(5):
        g = await fresh()
        blob = bytes((seed * 37 + i * 101) % 256 for i in range(300))
        await g.send_raw(blob)
        await g.aclose()
    await good.send(P.build_echo_request)
    while True:
        m = await good.recv()
        if m.type == P.MsgType.ECHO_REPLY:
            break
    r = tool(qnetd.sock, "-s")
    assert b"Connected clients:\t\t1\n" in r.stdout
    await good.aclose()


async def test_max_clients(daemon_factory):
    d = daemon_factory("-s", "off", "-m", "2")
    a = await QdeviceClient.connect(d.port)
    b = await QdeviceClient.connect(d.port)
    assert (await a.preinit()).type == P.MsgType.PREINIT_REPLY
    assert (await b.preinit()).type == P.MsgType.PREINIT_REPLY
    c = await QdeviceClient.connect(d.port)
    await c.expect_closed()
    assert c.buf == b""
    r = tool(d.sock, "-s", "-v")
    assert b"Maximum allowed clients:\t2\n" in r.stdout and b"Connected clients:\t\t2\n" in r.stdout
    await a.aclose()
    with trio.fail_after(5):
        while True:  # the slot frees once the server noticed the close
            c = await QdeviceClient.connect(d.port)
            try:
                m = await c.preinit()
                break
            except ClientClosed:
                await trio.sleep(0.05)
    assert m.type == P.MsgType.PREINIT_REPLY
    await b.aclose()
    await c.aclose()


async def test_send_queue_and_size_limits(daemon_factory):
    """An echo reply larger than max_client_send_size disconnects that client only."""
    d = daemon_factory("-s", "off", "-S", "max_client_send_size=200,max_client_receive_size=400")
    c = await QdeviceClient.connect(d.port)
    await c.preinit()
    r = await c.init(1)
    assert (r.server_maximum_reply_size, r.server_maximum_request_size) == (200, 400)
    other = await QdeviceClient.connect(d.port)
    await other.preinit()
    assert (await other.init(2)).reply_error_code == 0
    big = P.Builder(P.MsgType.ECHO_REQUEST).seq(5).raw(999, b"x" * 250).finish()
    await c.send_raw(big)
    await c.expect_closed()
    assert c.buf == b""
    await other.send(P.build_echo_request)
    while (m := await other.recv()).type != P.MsgType.ECHO_REPLY:
        pass
    await other.aclose()


async def test_tool_shutdown_and_cli(qnetd, shared_dir):
    ref = shared_dir / "reference/qdevice/qnetd/cli"
    for args, name in ((["-l"], "tool-empty-l"), (["-l", "-v", "-c", "x"], "tool-empty-l-v-c-x"),
                       (["-s", "-v"], "tool-empty-s-v"), (["-s"], "tool-empty-s"), ([], "tool-noop"),
                       (["-h"], "tool-h"), (["-v"], "tool-v-only"), (["-C"], "tool-bad-option")):
        r = tool(qnetd.sock, *args)
        expect = (ref / f"{name}.txt").read_bytes().replace(b"*:5403", f"*:{qnetd.port}".encode())
        assert r.stdout == expect, name
        err = ref / f"{name}.stderr"
        assert r.stderr == (err.read_bytes() if err.exists() else b""), name
        rc = {"tool-noop": 1, "tool-h": 1, "tool-v-only": 1, "tool-bad-option": 1}.get(name, 0)
        assert r.returncode == rc, name
    r = tool(qnetd.sock, "-H")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert qnetd.proc.wait(timeout=10) == 0
    assert not qnetd.sock.exists()
    r = tool(qnetd.sock, "-s")
    assert r.returncode == 3
    assert r.stderr == (ref / "tool-nodaemon-s.stderr").read_bytes()


async def test_ipv6_client_address_and_ipc_limits(daemon_factory):
    d = daemon_factory("-s", "off", "-6", "-S", "ipc_max_receive_size=1024")
    c = QdeviceClient(await trio.open_tcp_stream("::1", d.port))
    await c.start(1, [1], [1], RingId(1, 1))
    assert await c.wait_vote() == A
    assert re.search(rb"Client address:\t\t::1:\d+\n", tool(d.sock, "-l").stdout)

    async def ipc(data: bytes, close_write: bool = True) -> bytes:
        s = await trio.open_unix_socket(str(d.sock))
        async with s:
            await s.send_all(data)
            if close_write:
                await s.send_eof()
            out = b""
            with trio.fail_after(5):
                while chunk := await s.receive_some(65536):
                    out += chunk
            return out

    assert await ipc(b"status") == b""  # EOF before a newline: no answer
    assert await ipc(b"x" * 2000 + b"\n") == b""  # longer than ipc_max_receive_size
    assert await ipc(b"bogus arg\n") == b"Error\nUnknown command 'bogus'\n"
    stuck = await trio.open_unix_socket(str(d.sock))  # unterminated: the server keeps waiting
    await stuck.send_all(b"sta")
    with trio.move_on_after(0.3) as cs:
        await stuck.receive_some(10)
    assert cs.cancelled_caught
    await stuck.aclose()
    r = tool(d.sock, "-s")
    assert r.returncode == 0 and b"Connected clients:\t\t1\n" in r.stdout
    await c.aclose()


async def test_ipc_max_clients(daemon_factory):
    d = daemon_factory("-s", "off", "-S", "ipc_max_clients=1")
    first = await trio.open_unix_socket(str(d.sock))
    await first.send_all(b"sta")  # holds the only IPC slot
    second = await trio.open_unix_socket(str(d.sock))
    with trio.fail_after(5):
        assert await second.receive_some(10) == b""  # accepted and closed
    await first.send_all(b"tus\n")
    with trio.fail_after(5):
        assert (await first.receive_some(100)).startswith(b"OK\nQNetd address:")
    await first.aclose()
    await second.aclose()


async def test_send_queue_overflow_disconnects(tmp_path):
    """The 33rd pending message for a client that does not read disconnects it."""
    from corosync.exec.qnetd.daemon import Logger, QnetdDaemon, _Conn
    from corosync.exec.qnetd.server import Close
    from corosync.exec.qnetd.settings import Options

    daemon = QnetdDaemon(Options(tls=0), Logger(0, False, use_syslog=False))
    assert daemon.server.accept(1, "127.0.0.1:1", 0.0)
    conn = _Conn(1, None, "127.0.0.1:1")
    daemon.conns[1] = conn
    for i in range(32):
        daemon._queue(conn, P.build_echo_reply(P.build_echo_request(i)))
    assert len(conn.outbox) == 32 and not conn.closed_by_core
    daemon._queue(conn, P.build_echo_reply(P.build_echo_request(99)))
    daemon._apply(daemon.server.take_actions())
    assert conn.closed_by_core and 1 not in daemon.server.clients


async def test_many_clusters_and_clients(qnetd):
    """20 lms clusters of 3 nodes connect at once; every client gets its ACK."""
    clients = []

    async def node(cluster: int, node_id: int) -> None:
        c = await QdeviceClient.connect(qnetd.port)
        clients.append(c)
        ring = RingId(1, 0x10 + cluster)
        await c.start(node_id, [1, 2, 3], [1, 2, 3], ring, algorithm=Algorithm.LMS,
                      cluster=f"c{cluster}".encode())
        votes = [(await c.recv(timeout=20)).vote for _ in range(3)]
        assert votes == [Vote.NO_CHANGE, A, A]  # all on one ring: one partition, ACK

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for cluster in range(20):
            for node_id in (1, 2, 3):
                nursery.start_soon(node, cluster, node_id)
    elapsed = trio.current_time() - start
    r = tool(qnetd.sock, "-s")
    assert b"Connected clients:\t\t60\nConnected clusters:\t\t20\n" in r.stdout
    listing = tool(qnetd.sock, "-l").stdout
    assert listing.count(b"Cluster \"c") == 20 and listing.count(b"(ACK)") == 60
    print(f"60 clients in 20 clusters up and voted in {elapsed:.2f}s")
    for c in clients:
        await c.aclose()
