"""Differential tests: the same scripted qdevice sessions against Debian's corosync-qnetd
3.0.3 (/usr/bin/corosync-qnetd, skipped when absent) and ours must produce the same bytes on
every connection, and both corosync-qnetd-tool implementations must print the same text.

Determinism without sleeps: after each step every open connection sends an ECHO_REQUEST
"barrier" and reads up to its reply; the server answers in queue order, so everything the
step caused on that connection has arrived.  VOTE_INFOs are answered at once, like a stock
qdevice, and barriers repeat until no more VOTE_INFO arrives."""

import os
import re
import subprocess
import sys

import pytest
import trio

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, Heuristics as H, NodeInfo, RingId, TieBreaker

from qnetd_client import ClientClosed, Daemon, QdeviceClient

STOCK = "/usr/bin/corosync-qnetd"
STOCK_TOOL = "/usr/bin/corosync-qnetd-tool"
pytestmark = pytest.mark.skipif(not os.access(STOCK, os.X_OK), reason="Debian corosync-qnetd not installed")
BARRIER = 0x0BA00000


class Session:
    def __init__(self, port: int, ipc_sock) -> None:
        self.port = port
        self.ipc_sock = ipc_sock
        self.clients: list[QdeviceClient] = []
        self.log: list[list[bytes]] = []
        self.open: list[bool] = []
        self.barrier_seq = BARRIER

    async def connect(self) -> int:
        self.clients.append(await QdeviceClient.connect(self.port))
        self.log.append([])
        self.open.append(True)
        return len(self.clients) - 1

    async def send(self, idx: int, data: bytes) -> None:
        if self.open[idx]:
            try:
                await self.clients[idx].send_raw(data)
            except trio.BrokenResourceError:
                self.open[idx] = False
                self.log[idx].append(b"<closed>")
        await self.sync(first=idx)

    async def close(self, idx: int) -> None:
        """Close, then wait until the server has processed it (IPC client count)."""
        await self.clients[idx].aclose()
        self.open[idx] = False
        want = f"Connected clients:\t\t{sum(self.open)}\n".encode()
        with trio.fail_after(10):
            while want not in await self._ipc(b"status\n"):
                await trio.sleep(0.01)
        await self.sync()

    async def _ipc(self, request: bytes) -> bytes:
        stream = await trio.open_unix_socket(str(self.ipc_sock))
        async with stream:
            await stream.send_all(request)
            out = b""
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out

    async def sync(self, first: int | None = None) -> None:
        """Barrier on the connection that acted first (so its message has been processed and
        everything it caused is queued), then on every other one."""
        order = list(range(len(self.clients)))
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        for _ in range(20):
            answered = False
            for idx in order:
                if self.open[idx]:
                    answered |= await self._drain(idx)
            if not answered:
                return
        raise AssertionError("VOTE_INFO ping-pong does not settle")

    async def _drain(self, idx: int) -> bool:
        """Barrier on one connection, repeated until it had no VOTE_INFO to answer, so its
        VOTE_INFO_REPLYs are processed before any other connection is looked at."""
        c = self.clients[idx]
        answered_any = False
        while True:
            self.barrier_seq += 1
            mine = self.barrier_seq
            answered = False
            try:
                await c.send_raw(P.build_echo_request(mine))
                while True:
                    raw = await c.recv_raw()
                    m = P.decode(raw)
                    if m.seq == mine and m.type in (P.MsgType.ECHO_REPLY, P.MsgType.SERVER_ERROR):
                        break
                    self.log[idx].append(raw)
                    if m.type == P.MsgType.VOTE_INFO:
                        await c.send_raw(P.build_vote_info_reply(m.seq))
                        answered = True
            except (ClientClosed, trio.BrokenResourceError):
                self.open[idx] = False
                self.log[idx].append(b"<closed>")
                return answered_any
            if not answered:
                return answered_any
            answered_any = True

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()


def nodes(*ids):
    return [NodeInfo(i) for i in ids]


async def sc_errors(s: Session) -> None:
    a = await s.connect()
    for data in (
        P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 1)),
        P.build_starttls(1),
        P.build_preinit_reply(1, 0, 0),
        P.build_node_list(5, 0, nodes(1, 2)),
        P.Builder(P.MsgType.PREINIT).seq(1).finish(),
        P.build_preinit(1, b"lab"),
        P.build_init(2, 1, 1, 500, TieBreaker(), RingId(1, 1)),
        P.build_init(2, 1, 7, 8000, TieBreaker(), RingId(1, 1)),
        P.Builder(P.MsgType.INIT).seq(3).u32(P.Opt.NODE_ID, 1).finish(),
        P.build_init(2, 1, 1, 8000, TieBreaker(), RingId(1, 1), with_lists=False),
        P.build_init(3, 1, 1, 8000, TieBreaker(), RingId(1, 1)),
        P.build_set_option(4, heartbeat=999),
        P.build_set_option(4, heartbeat=2000, kap=1),
        P.build_set_option(4),
        P.build_node_list(5, 0, nodes(2, 3)),
        P.build_node_list(5, 2, nodes(2), ring=RingId(1, 2)),
        P.build_node_list(5, 2, nodes(1)),
        P.build_node_list(5, 3, nodes(1)),
        P.build_ask_for_vote(6),
        P.build_heuristics_change(7, 1),
        P.build_vote_info(1, 1, RingId(1, 1)),
        bytes.fromhex("000800000017000000040000002a03e70003616263000000040000002b"),
        bytes.fromhex("00080000000100"),
        bytes.fromhex("000a0000000d00000004000000050012000109"),
        bytes.fromhex("0063000000080000000400000005"),
        bytes.fromhex("006300000000"),
    ):
        await s.send(a, data)
    b = await s.connect()
    await s.send(b, P.build_preinit(1, b"lab"))
    for tb, algo, node in ((TieBreaker(2), 1, 2), (TieBreaker(1), 3, 2), (TieBreaker(1), 1, 1),
                           (TieBreaker(1, 9), 1, 2)):
        await s.send(b, P.build_init(2, node, algo, 8000, tb, RingId(1, 1)))
    # non-empty config lists before the clients leave: with empty ones the stock server
    # reads past an empty list when the last-but-one client disconnects (spec 7.2)
    await s.send(a, P.build_node_list(9, 0, nodes(1, 2)))
    await s.send(b, P.build_node_list(9, 0, nodes(1, 2)))


async def sc_ffsplit_4(s: Session) -> None:
    cs = []
    for i in range(1, 5):
        c = await s.connect()
        await s.send(c, P.build_preinit(1, b"lab"))
        await s.send(c, P.build_init(2, i, Algorithm.FFSPLIT, 8000, TieBreaker(), RingId(1, 1)))
        cs.append(c)
    for c in cs:
        await s.send(c, P.build_node_list(3, 0, nodes(1, 2, 3, 4)))
    for c in cs:
        await s.send(c, P.build_node_list(4, 2, nodes(1, 2, 3, 4), ring=RingId(1, 0x10)))
    for c, ring, ids, h in ((0, RingId(1, 0x14), (1, 2), 0), (1, RingId(1, 0x14), (1, 2), 0),
                            (2, RingId(3, 0x14), (3, 4), H.PASS), (3, RingId(3, 0x14), (3, 4), H.PASS)):
        await s.send(cs[c], P.build_node_list(5, 2, nodes(*ids), ring=ring, heuristics=h))
    await s.send(cs[3], P.build_heuristics_change(6, H.FAIL))
    await s.send(cs[2], P.build_heuristics_change(6, H.FAIL))
    await s.close(cs[3])
    await s.send(cs[0], P.build_node_list(7, 1, nodes(1, 2, 3)))
    await s.send(cs[0], P.build_node_list(8, 3, [NodeInfo(1, 0, 1)], quorate=0))


async def sc_ffsplit_2_kap(s: Session) -> None:
    cs = []
    for i in (1, 2):
        c = await s.connect()
        await s.send(c, P.build_preinit(1, b"lab"))
        await s.send(c, P.build_init(2, i, Algorithm.FFSPLIT, 8000, TieBreaker(), RingId(1, 9)))
        await s.send(c, P.build_set_option(3, kap=1))
        cs.append(c)
    for c in cs:
        await s.send(c, P.build_node_list(4, 0, nodes(1, 2)))
        await s.send(c, P.build_node_list(5, 2, nodes(1, 2), ring=RingId(1, 9)))
    await s.send(cs[0], P.build_node_list(6, 2, nodes(1), ring=RingId(1, 0xd)))
    await s.send(cs[1], P.build_node_list(6, 2, nodes(2), ring=RingId(2, 0xd)))
    await s.send(cs[1], P.build_heuristics_change(7, H.PASS))
    await s.send(cs[0], P.build_heuristics_change(7, H.PASS))
    await s.send(cs[0], P.build_node_list(8, 2, nodes(1, 2), ring=RingId(1, 0x11)))
    await s.send(cs[1], P.build_node_list(8, 2, nodes(1, 2), ring=RingId(1, 0x11)))


async def sc_2nodelms_lms(s: Session) -> None:
    a, b = await s.connect(), await s.connect()
    for c, i in ((a, 1), (b, 2)):
        await s.send(c, P.build_preinit(1, b"two"))
        await s.send(c, P.build_init(2, i, Algorithm.TWO_NODE_LMS, 8000, TieBreaker(2), RingId(1, 1)))
        await s.send(c, P.build_node_list(3, 0, nodes(1, 2)))
        await s.send(c, P.build_node_list(4, 2, nodes(1, 2), ring=RingId(1, 0x20)))
    await s.send(a, P.build_node_list(5, 2, nodes(1), ring=RingId(1, 0x24), heuristics=H.FAIL))
    await s.send(b, P.build_node_list(5, 2, nodes(2), ring=RingId(2, 0x24)))
    await s.send(a, P.build_ask_for_vote(6))
    await s.send(b, P.build_ask_for_vote(6))
    await s.send(a, P.build_node_list(7, 0, nodes(1, 2, 3)))
    await s.close(b)
    await s.send(a, P.build_node_list(8, 2, nodes(1), ring=RingId(1, 0x28)))
    ls = []
    for i in (1, 2, 3):
        c = await s.connect()
        ring = RingId(1, 0x30) if i < 3 else RingId(3, 0x30)
        await s.send(c, P.build_preinit(1, b"lms"))
        await s.send(c, P.build_init(2, i, Algorithm.LMS, 8000, TieBreaker(), ring))
        await s.send(c, P.build_node_list(3, 0, nodes(1, 2, 3)))
        await s.send(c, P.build_node_list(4, 2, nodes(1, 2) if i < 3 else nodes(3), ring=ring))
        await s.send(c, P.build_node_list(5, 3, [NodeInfo(i, 0, 1)], quorate=1))
        ls.append(c)
    await s.send(ls[2], P.build_ask_for_vote(6))
    await s.send(ls[0], P.build_heuristics_change(7, H.PASS))


def random_scenario(seed: int):
    """A seeded random session: 2-4 nodes of one cluster, one algorithm, random lists, rings,
    heuristics, vote requests and departures (always after a config list: with none the stock
    ffsplit crashes, spec 7.2).  Heartbeat 120000 ms keeps lms timers out of the run."""
    import random

    async def scenario(s: Session) -> None:
        rnd = random.Random(seed)  # fresh per run: both daemons get the same session
        algo = rnd.choice([Algorithm.FFSPLIT, Algorithm.FFSPLIT, Algorithm.TWO_NODE_LMS,
                           Algorithm.LMS, Algorithm.TEST])
        n = 2 if algo == Algorithm.TWO_NODE_LMS else rnd.randint(2, 4)
        tb = rnd.choice([TieBreaker(1), TieBreaker(2), TieBreaker(3, rnd.randint(1, n))])
        name = f"r{seed}".encode()
        ids = list(range(1, n + 1))
        cs, seq, ring = [], {}, RingId(1, 0x10)
        for i in ids:
            c = await s.connect()
            await s.send(c, P.build_preinit(1, name))
            await s.send(c, P.build_init(2, i, algo, 120000, tb, ring))
            await s.send(c, P.build_set_option(3, kap=rnd.choice([0, 1])))
            await s.send(c, P.build_node_list(4, 0, nodes(*ids)))
            cs.append(c)
            seq[c] = 4
        alive = {c: i for c, i in zip(cs, ids)}
        for _ in range(25):
            c = rnd.choice(list(alive))
            seq[c] += 1
            k = rnd.random()
            if k < 0.35:
                members = sorted(rnd.sample(ids, rnd.randint(1, n)))
                if alive[c] not in members and rnd.random() < 0.8:
                    members = sorted(members + [alive[c]])
                r = RingId(min(members), rnd.randint(0x11, 0x16))
                await s.send(c, P.build_node_list(seq[c], 2, nodes(*members), ring=r,
                                                  heuristics=rnd.choice([0, 0, 1, 2])))
            elif k < 0.5:
                await s.send(c, P.build_node_list(seq[c], 3, [NodeInfo(alive[c], 0, 1)],
                                                  quorate=rnd.choice([0, 1])))
            elif k < 0.65:
                await s.send(c, P.build_heuristics_change(seq[c], rnd.choice([1, 2])))
            elif k < 0.75:
                await s.send(c, P.build_ask_for_vote(seq[c]))
            elif k < 0.85:
                cfg = sorted(rnd.sample(ids + [n + 1], rnd.randint(1, n + 1)))
                await s.send(c, P.build_node_list(seq[c], 1, nodes(*cfg)))
            elif k < 0.9 and len(alive) > 1:
                await s.close(c)
                del alive[c]
            else:
                await s.send(c, P.build_echo_request(seq[c]))

    return scenario


SCENARIOS = {"errors": sc_errors, "ffsplit-4": sc_ffsplit_4, "ffsplit-2-kap": sc_ffsplit_2_kap,
             "2nodelms-lms": sc_2nodelms_lms,
             **{f"random-{seed}": random_scenario(seed) for seed in range(int(os.environ.get("QNETD_DIFF_SEEDS", "12")))}}


def _tool(binary, sock, *args):
    cmd = [binary] if binary else [sys.executable, "-m", "corosync.tools.qnetd_tool"]
    return subprocess.run([*cmd, "-p", str(sock), *args], capture_output=True, timeout=20)


def _mask(out: bytes) -> bytes:
    return re.sub(rb"(Client address:\t\t)\S+", rb"\1ADDR", re.sub(rb"\*:\d+", b"*:PORT", out))


async def _run(tmp_path, binary):
    """Every scenario in turn on one daemon; returns transcripts and tool outputs per scenario."""
    # no -d for the stock daemon: its SIGTERM handler can deadlock while debug logging (spec 9.3)
    d = Daemon(tmp_path, "-s", "off", binary=binary, debug=binary is None)
    results = {}
    try:
        d.wait_ready()
        have_stock_tool = os.access(STOCK_TOOL, os.X_OK)
        for name, scenario in SCENARIOS.items():
            s = Session(d.port, d.sock)
            await scenario(s)
            tools = {}
            for args in (("-l",), ("-l", "-v"), ("-s", "-v"), ("-l", "-c", "lab")):
                r = _tool(STOCK_TOOL if have_stock_tool else None, d.sock, *args)
                tools[args] = (r.returncode, _mask(r.stdout), r.stderr)
            if name == "ffsplit-4":  # our tool must print what the stock one does
                r = _tool(None, d.sock, "-l", "-v")
                assert (r.returncode, _mask(r.stdout), r.stderr) == tools[("-l", "-v")]
            for idx in range(len(s.clients)):
                if s.open[idx]:
                    await s.close(idx)  # waits until the server saw it: next scenario starts clean
            await s.aclose()
            results[name] = (s.log, tools)
        return results
    finally:
        assert d.stop() == 0, d.stderr()


async def test_same_bytes_as_debian(tmp_path):
    (tmp_path / "stock").mkdir()
    (tmp_path / "ours").mkdir()
    stock = await _run(tmp_path / "stock", STOCK)
    ours = await _run(tmp_path / "ours", None)
    for name in SCENARIOS:
        stock_log, stock_tools = stock[name]
        our_log, our_tools = ours[name]
        assert sum(len(x) for x in stock_log) >= 5, name
        assert len(our_log) == len(stock_log)
        for idx, (exp, got) in enumerate(zip(stock_log, our_log)):
            assert [_describe(x) for x in got] == [_describe(x) for x in exp], f"{name} connection {idx}"
            assert got == exp, f"{name} connection {idx}"
        assert our_tools == stock_tools, name


def _describe(raw: bytes) -> str:
    if raw.startswith(b"<"):
        return raw.decode()
    m = P.decode(raw)
    return (f"{P.MsgType(m.type).name} seq={m.seq} err={m.reply_error_code} vote={m.vote} "
            f"ring={m.ring_id} hb={m.heartbeat_interval}")


def test_stock_tool_stops_our_daemon(tmp_path):
    if not os.access(STOCK_TOOL, os.X_OK):
        pytest.skip("Debian corosync-qnetd-tool not installed")
    d = Daemon(tmp_path, "-s", "off")
    try:
        d.wait_ready()
        r = _tool(STOCK_TOOL, d.sock, "-H")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
        assert d.proc.wait(timeout=10) == 0
    finally:
        assert d.stop() == 0
