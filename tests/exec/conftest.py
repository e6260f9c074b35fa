"""Helpers for tests that run real ``corosync -f`` daemons on loopback addresses.

Each daemon gets its own directory (config, log file, state_dir, run_dir) under the
test's tmp_path, runs as ``python -m corosync.exec.main -f -c <conf>`` and is stopped by
PID at teardown (SIGTERM, then SIGKILL after a deadline).  Membership is observed by
parsing the daemons' log files, the same lines an operator reads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import pytest
from realcorosync import free_udp_port

# Test modules import these helpers as ``exec_testlib``: the plain name ``conftest`` is
# shared by every test directory's conftest, so ``from conftest import …`` would resolve to
# whichever was loaded last (e.g. at run time from inside a test function).
sys.modules.setdefault("exec_testlib", sys.modules[__name__])

MEMBERSHIP_RE = re.compile(r"A new membership \((\w+)\.(\w+)\) was formed\. Members(.*)$")
SYNC_MEMBERS_RE = re.compile(r"\[QUORUM\] Sync members\[\d+\]: ([\d ]+)")


def pick_port(ips: Iterable[str] = ("127.0.0.1",)) -> int:
    """A UDP port free on every given address (udp also needs port − 1)."""
    return free_udp_port(*ips)


def node_config(*, nodeid: int, nodes: list[tuple[int, str]], port: int, directory: Path,
                transport: str = "udpu", totem_extra: str = "", mcastaddr: str | None = None,
                keyfile: str | None = None, crypto: tuple[str, str] | None = None,
                token: int = 300) -> str:
    nodelist = "".join(
        f"    node {{\n        ring0_addr: {ip}\n        nodeid: {nid}\n"
        f"        name: n{nid}\n    }}\n" for nid, ip in nodes)
    iface = f"        mcastport: {port}\n"
    if mcastaddr:
        iface += f"        mcastaddr: {mcastaddr}\n"
    extra = totem_extra
    if crypto:
        extra += f"    crypto_cipher: {crypto[0]}\n    crypto_hash: {crypto[1]}\n"
    if keyfile:
        extra += f"    keyfile: {keyfile}\n"
    return (
        "totem {\n"
        "    version: 2\n"
        "    cluster_name: pytest\n"
        f"    transport: {transport}\n"
        f"    token: {token}\n"
        "    token_coefficient: 0\n"
        "    join: 50\n"
        f"{extra}"
        "    interface {\n"
        "        linknumber: 0\n"
        f"{iface}"
        "    }\n"
        "}\n"
        "logging {\n"
        "    to_stderr: no\n"
        "    to_logfile: yes\n"
        f"    logfile: {directory / 'corosync.log'}\n"
        "    to_syslog: no\n"
        "    timestamp: hires\n"
        "    debug: off\n"
        "}\n"
        f"nodelist {{\n{nodelist}}}\n"
        "system {\n"
        f"    state_dir: {directory / 'state'}\n"
        f"    run_dir: {directory / 'run'}\n"
        "}\n"
    )


def wait_until(predicate: Callable[[], object], timeout: float,
               what: str | Callable[[], str], interval: float = 0.05) -> object:
    """Poll ``predicate`` until truthy or ``timeout`` seconds passed (then fail).

    ``what`` may be a callable: it is evaluated at the deadline, so the message shows the
    state that made the wait fail, not the state when it began."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


class Daemon:
    def __init__(self, root: Path, nodeid: int, ip: str, *, netns: str | None = None) -> None:
        self.nodeid = nodeid
        self.ip = ip
        self.dir = root / f"n{nodeid}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "corosync.conf"
        self.logfile = self.dir / "corosync.log"
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        # Several daemons share one network namespace here: each gets its own IPC
        # rendezvous directory (libqb's abstract names would collide).
        self.ipc_dir = self.dir / "ipc"
        self.env_extra: dict[str, str] = {"COROSYNC_LOCAL_ADDRS": ip,
                                          "COROSYNC_IPC_DIR": str(self.ipc_dir)}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "corosync.exec.main", "-f", "-c", str(self.conf)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        env = dict(os.environ)
        env.update(self.env_extra)
        self.stderr = open(self.dir / "stderr", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.stderr,
                                     stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def memberships(self) -> list[tuple[str, str]]:
        """(ring id text, rest of line) for every membership formed, in order."""
        out = []
        for line in self.log().splitlines():
            m = MEMBERSHIP_RE.search(line)
            if m:
                out.append((f"{m.group(1)}.{m.group(2)}", m.group(3)))
        return out

    def members(self) -> tuple[int, ...] | None:
        """Current membership, from the log.

        The quorum service logs the full list of each new ring ("[QUORUM] Sync
        members[N]: ...") right before TOTEM's "A new membership" line; that is used when
        present.  Otherwise the view is rebuilt as (previous - left) | joined.  Those lists
        are relative to the transitional set, so a node that is in both (it came from
        another old ring, e.g. "joined: 1 4 5 left: 1 5") must be removed first and
        added back, and only the full list is exact in every case."""
        current: set[int] = set()
        full: set[int] | None = None
        seen = False
        for line in self.log().splitlines():
            m_full = SYNC_MEMBERS_RE.search(line)
            if m_full:
                full = {int(x) for x in m_full.group(1).split()}
                continue
            m = MEMBERSHIP_RE.search(line)
            if not m:
                continue
            seen = True
            if full is not None:
                current = full
            else:
                rest = m.group(3)
                m_j = re.search(r"joined: ([\d ]+?)(?: left:|$)", rest)
                m_l = re.search(r"left: ([\d ]+)$", rest)
                if m_l:
                    current -= {int(x) for x in m_l.group(1).split()}
                if m_j:
                    current |= {int(x) for x in m_j.group(1).split()}
            full = None
            current.add(self.nodeid)
        return tuple(sorted(current)) if seen else None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.stderr.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Cluster:
    def __init__(self, root: Path, nodes: list[tuple[int, str]], port: int, *,
                 netns: str | None = None, **conf) -> None:
        self.port = port
        self.nodes = nodes
        self.daemons = {nid: Daemon(root, nid, ip, netns=netns) for nid, ip in nodes}
        for nid, d in self.daemons.items():
            d.conf.write_text(node_config(nodeid=nid, nodes=nodes, port=port,
                                          directory=d.dir, **conf))

    def __getitem__(self, nodeid: int) -> Daemon:
        return self.daemons[nodeid]

    def start(self, *ids: int) -> None:
        for nid in ids or self.daemons:
            self.daemons[nid].start()

    def wait_members(self, expected: Iterable[int], ids: Iterable[int] | None = None,
                     timeout: float = 10.0) -> None:
        want = tuple(sorted(expected))
        ids = list(want if ids is None else ids)

        def ok() -> bool:
            for nid in ids:
                d = self.daemons[nid]
                assert d.alive(), f"n{nid} died:\n{d.log()}\n{(d.dir / 'stderr').read_text()}"
                if d.members() != want:
                    return False
            return True

        wait_until(ok, timeout, lambda: f"membership {want} on nodes {ids}: " + "; ".join(
            f"n{n}={self.daemons[n].members()}" for n in ids))

    def stop_all(self) -> None:
        for d in self.daemons.values():
            d.stop()


@pytest.fixture
def cluster_factory(tmp_path):
    made: list[Cluster] = []

    def make(n: int, *, transport: str = "udpu", base: str = "127.0.0.",
             netns: str | None = None, **conf) -> Cluster:
        nodes = [(i, f"{base}{i}") for i in range(1, n + 1)]
        port = pick_port([ip for _, ip in nodes]) if netns is None else 5405
        c = Cluster(tmp_path / f"c{len(made)}", nodes, port, transport=transport,
                    netns=netns, **conf)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_all()


@pytest.fixture
def loopback_netns():
    """A private network namespace whose loopback has multicast enabled (root + ip)."""
    import shutil
    import uuid

    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a private network namespace")
    name = f"cpytest-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        for cmd in (["ip", "link", "set", "lo", "multicast", "on"], ["ip", "link", "set", "lo", "up"]):
            subprocess.run(["ip", "netns", "exec", name] + cmd, check=True)
        # IPv6 multicast needs a route on lo (IPv4 uses IP_MULTICAST_IF alone).
        subprocess.run(["ip", "-n", name, "-6", "route", "add", "ff00::/8", "dev", "lo"],
                       capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(autouse=True)
def _private_ipc_dir(tmp_path, monkeypatch):
    """Daemons started by tests here listen in a private IPC directory, never on libqb's
    abstract names of this network namespace (which another test, a real corosync or a
    concurrently running suite may own).  Cluster daemons get per-node directories."""
    monkeypatch.setenv("COROSYNC_IPC_DIR", str(tmp_path / "ipc-private"))
