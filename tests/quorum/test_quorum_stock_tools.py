"""Debian's corosync-quorumtool / corosync-cfgtool (the real C libraries) against OUR services
(tests/quorum/qserver.py: cmap + cfg + quorum + votequorum behind exec/ipc in a private
network namespace), compared with the same tools against Debian's corosync 3.1.7 and with our
own tools.  Skipped with a printed reason without root/unshare/the Debian tools."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import realcorosync
from realcorosync import CFGTOOL as DEB_CT
from realcorosync import QUORUMTOOL as DEB_QT
from realcorosync import real_corosync  # noqa: F401  (fixture)

HERE = Path(__file__).resolve().parent
OUR_QT = [sys.executable, "-m", "corosync.tools.quorumtool"]
OUR_CT = [sys.executable, "-m", "corosync.tools.cfgtool"]
_VOLATILE = re.compile(rb"^(Date|Ring ID): .*$", re.M)


class OurServer:
    def __init__(self, *args: str) -> None:
        self.env = env = realcorosync.client_env()
        inner = f"ip link set lo up 2>/dev/null; exec {sys.executable} {HERE / 'qserver.py'} " \
                + " ".join(args)
        self.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", inner], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until "ready" or exit
        if line != b"ready\n" or time.monotonic() > deadline:
            self.stop()
            pytest.fail(f"qserver not ready: {line!r} {self.proc.stderr.read()!r}")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-n", *args], env=self.env,
                              capture_output=True, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # EOF ends the server
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def served(*args: str, what: str = "stock tools against our services") -> Iterator[OurServer]:
    """qserver.py (with ``args``) in its own network namespace, stopped on exit; skips
    (reason printed) without root, unshare/nsenter or Debian's tools."""
    realcorosync.require(what, real=False, files=(DEB_QT, DEB_CT))
    server = OurServer(*args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def our_server():
    with served() as server:
        yield server


def _norm(p: subprocess.CompletedProcess) -> tuple[int, bytes, bytes]:
    return p.returncode, _VOLATILE.sub(rb"\1:", p.stdout), p.stderr


QT_ARGS = [["-s"], ["-s", "-p"], ["-l"], ["-l", "-i"], ["-s", "-H"], ["-l", "-a"], ["-f"],
           ["-e", "1"], ["-e", "5"], ["-v", "1"], ["-v", "2", "-n", "9"]]
CT_ARGS = [["-s"], ["-n"], ["-s", "-b"], ["-a", "1"], ["-a", "3"], ["-k", "7"]]


@pytest.mark.parametrize("args", QT_ARGS)
def test_debian_quorumtool_same_on_our_services_as_on_debian(our_server, real_corosync,  # noqa: F811
                                                            args):
    ours = our_server.run(DEB_QT, *args)
    theirs = real_corosync.run(DEB_QT, *args)
    assert _norm(ours) == _norm(theirs)
    assert _norm(our_server.run(*OUR_QT, *args)) == _norm(ours)


@pytest.mark.parametrize("args", CT_ARGS)
def test_debian_cfgtool_same_on_our_services_as_on_debian(our_server, real_corosync,  # noqa: F811
                                                          args):
    ours = our_server.run(DEB_CT, *args)
    theirs = real_corosync.run(DEB_CT, *args)
    assert _norm(ours) == _norm(theirs)
    assert _norm(our_server.run(*OUR_CT, *args)) == _norm(ours)


def test_library_calls_on_our_services(our_server) -> None:
    script = (
        "from corosync.quorum import Quorum, MODEL_V1\n"
        "from corosync.votequorum import Votequorum\n"
        "from corosync.cfg import Cfg\n"
        "seen, nl = [], []\n"
        "with Quorum.initialize(notify=seen.append, nodelist=nl.append, model=MODEL_V1) as q:\n"
        "    assert q.quorum_type == 1 and q.getquorate()\n"
        "    q.trackstart(1)\n"
        "    q.dispatch(1); q.dispatch(1)\n"
        "    assert nl[0].members == (1,) and seen[0].view_list == (1,), (nl, seen)\n"
        "with Votequorum.initialize() as v:\n"
        "    i = v.getinfo(0)\n"
        "    assert (i.nodeid, i.votes, i.expected_votes, i.quorum) == (1, 1, 1, 1), i\n"
        "    v.trackstart(5, 1)\n"
        "    v.dispatch(1)\n"
        "with Cfg.initialize() as c:\n"
        "    assert c.local_get() == 1 and c.get_node_addrs(1) == ['127.0.0.1']\n"
        "    assert c.node_status_get(1).links[0].mtu == 1410\n"
        "print('ok')\n")
    p = our_server.run(sys.executable, "-c", script)
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr.decode()


def test_without_provider_both_tools_agree() -> None:
    with served("--no-votequorum", what="quorumtool without a provider") as server:
        for args in (["-s"], ["-l"], ["-e", "2"], ["-v", "1"], ["-f"], ["-m"]):
            deb = server.run(DEB_QT, *args)
            ours = server.run(*OUR_QT, *args)
            assert _norm(ours) == _norm(deb), args
        # corosync-quorumtool 3.1.7 cannot show status without a provider (its own bug)
        assert server.run(DEB_QT, "-s").stderr == \
            b"Unable to start votequorum status tracking: CS_ERR_BAD_HANDLE\n"


def _first_block(p: subprocess.Popen, timeout: float = 20.0) -> bytes:
    """Output of a ``-m`` run up to the end of its first status (table + blank line), read
    with a deadline (the process never exits by itself)."""
    import select

    assert p.stdout is not None
    fd = p.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while not (out.endswith(b"\n\n") and b"Membership information" in out):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out


def test_monitor_first_status_same_as_debian(our_server) -> None:
    procs = [subprocess.Popen(["nsenter", "-t", str(our_server.proc.pid), "-n", *cmd, "-m"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=our_server.env) for cmd in (["stdbuf", "-oL", DEB_QT], OUR_QT)]
    try:
        deb, ours = (_first_block(p) for p in procs)
    finally:
        for p in procs:
            p.kill()  # by pid; -m runs until interrupted
            p.wait(10)
    assert b"Quorate:          Yes" in deb
    assert _VOLATILE.sub(rb"\1:", ours) == _VOLATILE.sub(rb"\1:", deb)


def test_trio_clients_on_our_services(our_server) -> None:
    script = (
        "import trio\n"
        "from corosync.quorum import AsyncQuorum, MODEL_V1\n"
        "from corosync.votequorum import AsyncVotequorum\n"
        "from corosync.cfg import AsyncCfg\n"
        "async def main():\n"
        "    async with await AsyncQuorum.initialize(model=MODEL_V1) as q:\n"
        "        assert await q.getquorate()\n"
        "        await q.trackstart(1)\n"
        "        kinds = []\n"
        "        async for ev in q.notifications():\n"
        "            kinds.append(type(ev).__name__)\n"
        "            if len(kinds) == 2: break\n"
        "        assert kinds == ['NodelistNotification', 'QuorumNotification'], kinds\n"
        "    async with await AsyncVotequorum.initialize() as v:\n"
        "        assert (await v.getinfo(0)).quorum == 1\n"
        "        await v.trackstart(3, 1)\n"
        "        async for ev in v.notifications():\n"
        "            assert ev.context == 3\n"
        "            break\n"
        "    async with await AsyncCfg.initialize() as c:\n"
        "        assert await c.local_get() == 1\n"
        "        assert await c.get_node_addrs(0) == ['127.0.0.1']\n"
        "        assert (await c.node_status_get(1)).reachable\n"
        "    print('ok')\n"
        "trio.run(main)\n")
    p = our_server.run(sys.executable, "-c", script)
    assert (p.returncode, p.stdout) == (0, b"ok\n"), p.stderr.decode()


def test_cfgtool_shutdown_against_our_services() -> None:
    """``-H`` / ``-H --force`` (our qserver records the shutdown request but keeps serving)."""
    with served(what="cfgtool -H against our services") as server:
        for args in (["-H"], ["-H", "--force"]):
            deb = server.run(DEB_CT, *args)
            ours = server.run(*OUR_CT, *args)
            assert (deb.returncode, deb.stdout, deb.stderr) == (0, b"Shutting down corosync\n", b"")
            assert (ours.returncode, ours.stdout, ours.stderr) == \
                (deb.returncode, deb.stdout, deb.stderr)
    assert server.proc.stdout is not None
    assert server.proc.stdout.read().count(b"shutdown: cfg shutdown\n") == 4


def test_raw_protocol_answers_same_as_debian(our_server, real_corosync) -> None:  # noqa: F811
    """Response ids, errors and sizes and the events each request causes, request by request
    (tests/quorum/qprobe.py), against Debian's corosync and against our services."""
    import json

    probe = [sys.executable, str(HERE / "qprobe.py")]
    ours, theirs = our_server.run(*probe), real_corosync.run(*probe)
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr, theirs.stderr)
    o, t = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert len(o) == len(t)
    for a, b in zip(o, t):
        assert a == b
