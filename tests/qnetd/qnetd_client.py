"""Test helper: the qdevice side of the protocol, just enough to drive our daemon the way a
stock corosync-qdevice does (PREINIT, optional STARTTLS, INIT, SET_OPTION, node lists,
VOTE_INFO_REPLY, echoes), plus the daemon process fixture helpers."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import trio

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, RingId, TieBreaker


class ClientClosed(Exception):
    pass


class QdeviceClient:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.seq = 1
        self.buf = b""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> "QdeviceClient":
        return cls(await trio.open_tcp_stream(host, port))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self, timeout: float = 5.0) -> P.Message:
        data = await self.recv_raw(timeout)
        return P.decode(data)

    async def recv_raw(self, timeout: float = 5.0) -> bytes:
        with trio.fail_after(timeout):
            while True:
                if len(self.buf) >= 6:
                    hdr = P.parse_header(self.buf)
                    if len(self.buf) >= hdr.total:
                        data, self.buf = self.buf[:hdr.total], self.buf[hdr.total:]
                        return data
                try:
                    chunk = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, ssl.SSLError) as exc:
                    raise ClientClosed() from exc
                if not chunk:
                    raise ClientClosed()
                self.buf += chunk

    async def expect_closed(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                self.buf += chunk

    async def preinit(self, cluster: bytes = b"lab") -> P.Message:
        await self.send_raw(P.build_preinit(self.seq, cluster))
        return await self.recv()

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        self.seq += 1
        await self.send_raw(P.build_starttls(self.seq))
        self.stream = trio.SSLStream(self.stream, ctx, server_hostname="Qnetd Server")
        await self.stream.do_handshake()

    async def init(self, node_id: int, algorithm: int = Algorithm.FFSPLIT, hb: int = 8000,
                   tb: TieBreaker = TieBreaker(), ring: RingId = RingId(1, 1)) -> P.Message:
        self.seq += 1
        self.ring = ring
        await self.send_raw(P.build_init(self.seq, node_id, algorithm, hb, tb, ring))
        return await self.recv()

    async def send(self, builder, *args, **kw) -> None:
        self.seq += 1
        await self.send_raw(builder(self.seq, *args, **kw))

    async def start(self, node_id: int, config_ids, member_ids, ring: RingId,
                    algorithm: int = Algorithm.FFSPLIT, cluster: bytes = b"lab",
                    hb: int = 8000, tls: Optional[ssl.SSLContext] = None) -> None:
        """The stock start sequence up to the three node lists (replies left unread)."""
        r = await self.preinit(cluster)
        assert r.type == P.MsgType.PREINIT_REPLY
        if tls is not None:
            await self.starttls(tls)
        r = await self.init(node_id, algorithm, hb=hb, ring=ring)
        assert r.type == P.MsgType.INIT_REPLY and r.reply_error_code == 0, r
        await self.send(P.build_set_option, kap=1)
        assert (await self.recv()).type == P.MsgType.SET_OPTION_REPLY
        nodes = lambda ids, state=0: [P.NodeInfo(i, 0, state) for i in ids]  # noqa: E731
        await self.send(P.build_node_list, P.NodeListType.INITIAL_CONFIG, nodes(config_ids))
        await self.send(P.build_node_list, P.NodeListType.MEMBERSHIP, nodes(member_ids), ring=ring)
        await self.send(P.build_node_list, P.NodeListType.QUORUM, nodes(member_ids, 1), quorate=1)

    async def wait_vote(self, timeout: float = 5.0) -> int:
        """Read until a VOTE_INFO (answered like a stock qdevice) or a reply with ACK/NACK."""
        with trio.fail_after(timeout):
            while True:
                m = await self.recv(timeout)
                if m.type == P.MsgType.VOTE_INFO:
                    await self.send_raw(P.build_vote_info_reply(m.seq))
                    if m.vote in (P.Vote.ACK, P.Vote.NACK):
                        return m.vote
                elif m.vote in (P.Vote.ACK, P.Vote.NACK):
                    return m.vote

    async def aclose(self) -> None:
        try:
            if isinstance(self.stream, trio.SSLStream):
                await self.stream.transport_stream.aclose()
            else:
                await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def free_port() -> int:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tool(sock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_tool", "-p", str(sock), *args],
                          capture_output=True, timeout=20)


class Daemon:
    """A corosync-qnetd subprocess in a temp dir, always stopped by PID."""

    def __init__(self, tmp: Path, *args: str, port: Optional[int] = None,
                 binary: Optional[str] = None, debug: bool = True) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.sock = tmp / "qnetd.sock"
        self.lock = tmp / "qnetd.pid"
        self.stderr_path = tmp / "qnetd.stderr"
        prog = [binary] if binary else [sys.executable, "-m", "corosync.tools.qnetd"]
        cmd = [*prog, "-f", *(["-d"] if debug else []), "-p", str(self.port),
               "-S", f"lock_file={self.lock},local_socket_file={self.sock}", *args]
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._err)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"qnetd exited {self.proc.returncode}: {self.stderr()}")
            if self.sock.exists():  # an IPC answer means the main loop (and TCP) is up
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.settimeout(2)
                        s.connect(str(self.sock))
                        s.sendall(b"status\n")
                        if s.recv(3) == b"OK\n":
                            return
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"qnetd not ready: {self.stderr()}")

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait(timeout=10)
        self._err.close()
        return rc
