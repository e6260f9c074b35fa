"""The trio driver of our qdevice against a real qnetd process on 127.0.0.1 (ours, and
Debian's 3.0.3 when installed), with an in-memory votequorum standing in for corosync:
TCP, framing, heartbeats, votes turned into qdevice polls, reconnects, the local socket
and corosync-qdevice-tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from corosync.exec.qdevice import core as C
from corosync.exec.qdevice.daemon import QdeviceDriver
from corosync.exec.qdevice.vq import NodelistEvent, QuorumEvent
from corosync.exec.qnetd import protocol as P

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qnetd"))
from qnetd_client import Daemon  # noqa: E402

NODES = (P.NodeInfo(1), P.NodeInfo(2))
DEBIAN_QNETD = "/usr/bin/corosync-qnetd"


class FakeVotequorum:
    """What votequorum would tell a qdevice, and the polls it receives."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel(100)
        self.polls: list[tuple[float, bool, P.RingId]] = []

    async def poll(self, cast_vote: bool, ring: P.RingId) -> None:
        self.polls.append((trio.current_time(), cast_vote, ring))

    async def next_event(self):
        return await self.recv.receive()

    def membership(self, ring: P.RingId, nodes, quorate: bool = True) -> None:
        self.send.send_nowait(NodelistEvent(ring, tuple(nodes)))
        self.send.send_nowait(QuorumEvent(quorate, tuple((n, 1) for n in nodes)))

    def last_vote(self) -> bool | None:
        return self.polls[-1][1] if self.polls else None


async def wait_until(pred, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout) as cs:
        while not pred():
            await trio.sleep(0.01)
    if cs.cancelled_caught:
        pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def qnetd_factory(tmp_path):
    started = []

    def make(binary: str | None = None, port: int | None = None):
        d = tmp_path / f"q{len(started)}"
        d.mkdir()
        args = ("-s", "off") if binary is None else ("-s", "off", "-4")
        dm = Daemon(d, *args, binary=binary, port=port)
        started.append(dm)
        dm.wait_ready()
        return dm

    yield make
    for dm in started:
        dm.stop()


def _node(node_id: int, port: int, tmp: Path, timeout_ms: int = 2000):
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=node_id, host="127.0.0.1", port=port,
                          tls=0, timeout_ms=timeout_ms, config_nodes=NODES)
    vq = FakeVotequorum()
    drv = QdeviceDriver(C.QdeviceNet(cfg), vq, socket_path=str(tmp / f"qdevice{node_id}.sock"))
    return vq, drv


def _tool(sock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corosync.tools.qdevice_tool", "-p", str(sock),
                           *args], capture_output=True, timeout=20)


@pytest.mark.parametrize("server", ["ours", "debian"])
async def test_two_nodes_ffsplit_votes_and_node_loss(qnetd_factory, tmp_path, server):
    if server == "debian" and not os.path.exists(DEBIAN_QNETD):
        pytest.skip("Debian corosync-qnetd not installed")
    qn = qnetd_factory(DEBIAN_QNETD if server == "debian" else None)
    ring = P.RingId(1, 8)
    vq1, d1 = _node(1, qn.port, tmp_path)
    vq2, d2 = _node(2, qn.port, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(d1.run)
        await nursery.start(d2.run)
        vq1.membership(ring, (1, 2))
        vq2.membership(ring, (1, 2))
        await wait_until(lambda: vq1.last_vote() and vq2.last_vote(), 10, "both ACK")
        assert vq1.polls[-1][2] == ring
        # the vote is refreshed every timeout/2 while connected
        n = len(vq1.polls)
        await wait_until(lambda: len(vq1.polls) >= n + 2, 5, "periodic polls")
        # status over the local socket, through the real tool
        r = await trio.to_thread.run_sync(_tool, tmp_path / "qdevice1.sock", "-s", "-v")
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert "State:\t\t\tConnected\n" in out and "Membership node list:\t1, 2\n" in out
        assert "Poll timer running:\tYes (cast vote)\n" in out
        # node 2 dies: its qdevice goes away, votequorum on node 1 reports the new ring
        d2.stop()
        ring2 = P.RingId(1, 12)
        vq1.membership(ring2, (1,))
        await wait_until(lambda: vq1.polls[-1][2] == ring2 and vq1.last_vote(), 10,
                         "node 1 keeps the qdevice vote alone")
        assert d1.core.state == C.State.CONNECTED
        r = await trio.to_thread.run_sync(_tool, tmp_path / "qdevice1.sock", "-H")
        assert r.returncode == 0 and r.stdout == b""
    assert d1.exit_code == 0


async def test_qnetd_loss_nack_then_reconnect(qnetd_factory, tmp_path):
    qn = qnetd_factory()
    ring = P.RingId(1, 4)
    vq1, d1 = _node(1, qn.port, tmp_path, timeout_ms=1250)  # heartbeat 1000 ms
    async with trio.open_nursery() as nursery:
        await nursery.start(d1.run)
        vq1.membership(ring, (1,))
        await wait_until(lambda: vq1.last_vote() is True, 10, "ACK")
        await trio.to_thread.run_sync(qn.stop)
        # ffsplit: connection lost -> keep polling with cast_vote false (no vote)
        await wait_until(lambda: vq1.last_vote() is False, 10, "NACK after qnetd loss")
        assert d1.core.state != C.State.CONNECTED
        qnetd_factory(port=qn.port)
        await wait_until(lambda: d1.core.state == C.State.CONNECTED and vq1.last_vote(), 15,
                         "reconnected and ACK again")
        d1.stop()


async def test_garbage_server_is_survived(tmp_path):
    """A 'qnetd' that answers PREINIT with junk: the client disconnects and retries, the
    driver keeps running (no exception escapes)."""
    conns = []

    async def handler(stream):
        conns.append(stream)
        await stream.receive_some(100)
        await stream.send_all(b"\x00\x01\x00\x00\x00\x03abc")  # TLV truncated
        await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        vq, d = _node(1, port, tmp_path, timeout_ms=1250)
        d.core._rng = lambda n: 0
        await nursery.start(d.run)
        vq.membership(P.RingId(1, 1), (1,))
        await wait_until(lambda: len(conns) >= 2, 10, "a reconnect after the junk")
        assert d.core.stats["decode_errors"] >= 1
        d.stop()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("version,host,prefix", [(6, "::1", b"::1:"),
                                                  (4, "127.0.0.1", b"::ffff:127.0.0.1:"),
                                                  (4, "::1", None)])
async def test_force_ip_version(qnetd_factory, tmp_path, version, host, prefix):
    """quorum.device.net.force_ip_version: only addresses of that family are tried (our
    qnetd's dual-stack socket shows which one was used); status shows the setting."""
    qn = qnetd_factory()
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host=host, port=qn.port,
                          tls=0, timeout_ms=2000, config_nodes=(P.NodeInfo(1),),
                          force_ip_version=version)
    vq = FakeVotequorum()
    d = QdeviceDriver(C.QdeviceNet(cfg, rng=lambda n: 0), vq,
                      socket_path=str(tmp_path / "qd.sock"))
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        vq.membership(P.RingId(1, 2), (1,))
        if prefix is None:  # an IPv6 literal has no IPv4 address: connect fails, retried
            await wait_until(lambda: d.core.disconnect_reason == C.Reason.CONNECT_FAILED, 10,
                             "refused by family")
            assert d.core.state != C.State.CONNECTED
            assert not any(cast for _, cast, _ in vq.polls)  # ffsplit offline: NACK only
            assert d.core.reconnect_due is not None
            assert d.core.reconnect_due - trio.current_time() > 0.5  # no busy retry loop
            d.stop()
            return
        await wait_until(lambda: vq.last_vote() is True, 10, "ACK")
        listing = subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_tool", "-p",
                                  str(qn.sock), "-l", "-v"], capture_output=True).stdout
        assert b"Client address:\t\t" + prefix in listing, listing
        r = await trio.to_thread.run_sync(_tool, tmp_path / "qd.sock", "-s", "-v")
        assert f"Force IP version:\t{version}\n" in r.stdout.decode()
        d.stop()


def _hnode(node_id: int, port: int, tmp: Path, command: str, mode: int, **kw):
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=node_id, host="127.0.0.1", port=port,
                          tls=0, timeout_ms=2000, config_nodes=NODES, heuristics_mode=mode,
                          heuristics_execs=(("check", command),), **kw)
    vq = FakeVotequorum()
    drv = QdeviceDriver(C.QdeviceNet(cfg), vq, socket_path=str(tmp / f"qdevice{node_id}.sock"))
    return vq, drv


@pytest.mark.parametrize("server", ["ours", "debian"])
async def test_heuristics_decide_a_50_50_split(qnetd_factory, tmp_path, server):
    """mode sync: node 1 fails its heuristics, node 2 passes. In a 50:50 split the passing
    partition wins although the tie-breaker (lowest id) would pick node 1."""
    if server == "debian" and not os.path.exists(DEBIAN_QNETD):
        pytest.skip("Debian corosync-qnetd not installed")
    qn = qnetd_factory(DEBIAN_QNETD if server == "debian" else None)
    vq1, d1 = _hnode(1, qn.port, tmp_path, "exit 1", C.HEURISTICS_SYNC)
    vq2, d2 = _hnode(2, qn.port, tmp_path, "true", C.HEURISTICS_SYNC)
    async with trio.open_nursery() as nursery:
        await nursery.start(d1.run)
        await nursery.start(d2.run)
        ring = P.RingId(1, 8)
        vq1.membership(ring, (1, 2))
        vq2.membership(ring, (1, 2))
        await wait_until(lambda: vq1.last_vote() and vq2.last_vote(), 10, "both ACK")
        r1, r2 = P.RingId(1, 12), P.RingId(2, 12)
        vq1.membership(r1, (1,))
        vq2.membership(r2, (2,))
        await wait_until(lambda: vq2.polls[-1][2] == r2 and vq2.last_vote() is True
                         and not vq1.last_vote(), 10, "node 2 wins on heuristics")
        r = await trio.to_thread.run_sync(_tool, tmp_path / "qdevice1.sock", "-s", "-v")
        out = r.stdout.decode()
        assert "Heuristics:\t\tEnabled only on sync\n" in out
        assert ("Heuristics result:\tFail (regular: Undefined, membership: Fail, "
                "connect: Undefined)\n") in out
        d1.stop()
        d2.stop()


async def test_regular_heuristics_change_is_sent(qnetd_factory, tmp_path):
    """mode on: connect heuristics, then a regular run every interval; a changed result is
    sent as HEURISTICS_CHANGE and shows up in the qnetd's view of the client."""
    qn = qnetd_factory()
    flag = tmp_path / "healthy"
    vq, d = _hnode(1, qn.port, tmp_path, f"test -e {flag}", C.HEURISTICS_ON,
                   heuristics_interval_ms=200)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        vq.membership(P.RingId(1, 3), (1,))
        await wait_until(lambda: d.core.connected and d.core.latest_connect_heuristics
                         == P.Heuristics.FAIL, 10, "connected with failing heuristics")
        flag.write_text("")
        await wait_until(lambda: d.core.latest_regular_heuristics == P.Heuristics.PASS, 10,
                         "regular heuristics pass")

        def qnetd_view() -> bytes:
            return subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_tool", "-p",
                                   str(qn.sock), "-l", "-v"], capture_output=True).stdout

        await wait_until(lambda: b"Heuristics:\t\tPass (membership: Fail, regular: Pass)\n"
                         in qnetd_view(), 10, "qnetd got HEURISTICS_CHANGE")
        d.stop()
