"""Debian's corosync 3.1.7 (and our executive beside it) in private namespaces, for tests.

One harness for every test that runs ``/usr/sbin/corosync``.  Import it from any tests/
subdirectory as ``import realcorosync`` (tests/conftest.py's directory is on sys.path).

Why namespaces: the real daemon hard-codes /run/corosync.pid and /var/lib/corosync, creates
its libqb IPC files in /dev/shm, and its IPC setup sockets are *abstract* names, i.e. one set
per network namespace.  So each real daemon runs under ``unshare -m`` (plus ``-n`` when it
gets a network namespace of its own) with a tmpfs over those three paths, and its
configuration is passed with ``-c`` (nothing under /etc/corosync is read or written).  No
``--fork``: ``ip netns exec``, ``unshare`` and ``sh`` all exec in place, so the Popen pid *is*
the daemon's pid — it is stopped by that pid, and commands reach its namespaces with
``nsenter -t <pid> -m -n`` (stock tools such as corosync-cmapctl, our tools, our scripts).

Two shapes:

* :class:`Daemon` — one daemon (``kind`` "debian", "debian-socket" or "ours") alone in a new
  network + mount namespace, on 127.0.0.1.  :func:`daemon_fixture` / :data:`real_corosync`
  turn it into module-scoped pytest fixtures.
* :class:`Lab` — corosync-localcluster's bridge topology: one network namespace per node
  (198.18.0.N/24 on a veth into a bridge living in a namespace of its own).  Real nodes get a
  private mount namespace inside theirs; our nodes (``python -m corosync.exec.main``, or any
  argv) run directly in theirs with state_dir/run_dir in their work directory.  Mixed rings.

Without root, iproute2/unshare/nsenter or the Debian package every user skips with the
reason printed (:func:`require`).  Every process started here is stopped by pid.

Typical use::

    from realcorosync import real_corosync          # fixture: Debian's daemon, module scope

    def test_x(real_corosync):
        out = real_corosync.run(realcorosync.CMAPCTL, "-g", "totem.token")

    @pytest.fixture
    def lab(tmp_path):                               # a mixed ring on 198.18.0.0/24
        with realcorosync.Lab.open(tmp_path, "xy", "my interop") as lab:
            yield lab

    def test_y(lab):
        for i, ours in ((1, True), (2, False)):
            d = lab.node_dir(i)
            lab.start(i, ours, realcorosync.conf_text(
                cluster_name="y", nodes=[(1, "198.18.0.1"), (2, "198.18.0.2")],
                log=d / "corosync.log", dirs=d if ours else None))
        realcorosync.wait_for(lambda: lab.synced((1, 2)), 30, lambda: lab.text(1)[-2000:])
        lab.run(2, realcorosync.QUORUMTOOL, "-s")    # inside node 2's namespaces
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pytest

REAL = "/usr/sbin/corosync"
CMAPCTL = "/usr/sbin/corosync-cmapctl"
CPGTOOL = "/usr/sbin/corosync-cpgtool"
QUORUMTOOL = "/usr/sbin/corosync-quorumtool"
CFGTOOL = "/usr/sbin/corosync-cfgtool"
#: our executive, as the tests start it
OURS = [sys.executable, "-m", "corosync.exec.main"]
#: the line every node logs once sync of a new ring is done
SYNC_DONE = "Completed service synchronization, ready to provide service."
MEMBERSHIP_RE = re.compile(r"A new membership \(([\w.]+)\) was formed\. Members(.*)$")
#: what the daemon's private mount namespace gets instead of the host's paths
_MOUNTS = ("mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
           "mount -t tmpfs none /dev/shm")


# ------------------------------------------------------------------------ skipping

def skip_reason(*, real: bool = True, tools: Sequence[str] = ("unshare", "nsenter"),
                files: Sequence[str] = ()) -> str | None:
    """Why namespace tests cannot run here (None: they can).  ``real``: Debian's daemon is
    needed; ``tools``: commands needed on PATH; ``files``: further binaries needed."""
    for path in ((REAL,) if real else ()) + tuple(files):
        if not os.path.exists(path):
            return f"{path} not installed (apt-get install corosync)"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in tools:
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


def require(what: str, **kw: Any) -> None:
    """Skip the calling test (printing why, so the log says it) unless :func:`skip_reason`
    finds nothing missing."""
    reason = skip_reason(**kw)
    if reason:
        print(f"SKIP {what}: {reason}")
        pytest.skip(reason)


# ------------------------------------------------------------------------ config

def conf_text(*, cluster_name: str, nodes: Iterable[tuple[int, str]], log: Path,
              names: bool = True, transport: str = "udpu", token: int | None = 1000,
              token_coefficient: int | None = 0, join: int | None = None,
              crypto_none: bool = True, mcastport: int | None = None,
              timestamp: bool = False, debug: bool = False, ipc_type: str | None = None,
              dirs: Path | None = None) -> str:
    """A corosync.conf as the interop tests use it: votequorum, logging to ``log`` only.

    ``nodes``: (nodeid, ring0_addr); ``names`` adds ``name: n<id>``.  ``None`` for token /
    token_coefficient leaves corosync's default.  ``ipc_type``: system.qb_ipc_type.  ``dirs``:
    our daemon's state_dir/run_dir go below it (a real daemon has tmpfs over its fixed
    paths instead)."""
    totem = ["version: 2", f"cluster_name: {cluster_name}", f"transport: {transport}"]
    if token is not None:
        totem.append(f"token: {token}")
    if token_coefficient is not None:
        totem.append(f"token_coefficient: {token_coefficient}")
    if join is not None:
        totem.append(f"join: {join}")
    if crypto_none:
        totem += ["crypto_cipher: none", "crypto_hash: none"]
    text = "totem {\n" + "".join(f"    {line}\n" for line in totem)
    if mcastport is not None:
        text += f"    interface {{\n        linknumber: 0\n        mcastport: {mcastport}\n    }}\n"
    text += ("}\nlogging {\n    to_stderr: no\n    to_logfile: yes\n"
             f"    logfile: {log}\n    to_syslog: no\n")
    text += "    timestamp: hires\n" if timestamp else ""
    text += "    debug: on\n" if debug else ""
    text += "}\nquorum {\n    provider: corosync_votequorum\n}\nnodelist {\n"
    for nodeid, addr in nodes:
        text += f"    node {{\n        ring0_addr: {addr}\n        nodeid: {nodeid}\n"
        text += f"        name: n{nodeid}\n" if names else ""
        text += "    }\n"
    text += "}\n"
    if dirs is not None or ipc_type:
        text += "system {\n"
        if dirs is not None:
            text += f"    state_dir: {dirs / 'state'}\n    run_dir: {dirs / 'run'}\n"
        if ipc_type:
            text += f"    qb_ipc_type: {ipc_type}\n"
        text += "}\n"
    return text


# ------------------------------------------------------------------------ small helpers

def client_env(**extra: str) -> dict[str, str]:
    """Environment for daemons and clients in a namespace: this interpreter's sys.path (so
    scripts find tests/ helpers and the package), and no COROSYNC_IPC_DIR — clients must
    find the daemon by libqb's abstract names, as Debian's tools do."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **extra}
    env.pop("COROSYNC_IPC_DIR", None)
    return env


def free_udp_port(ip: str = "127.0.0.1", *more: str) -> int:
    """A UDP port free on ``ip`` (and every address in ``more``, IPv4 or IPv6) together
    with port − 1 (corosync binds both for udp)."""
    for _ in range(200):
        port = random.randint(20000, 60000)
        socks: list[socket.socket] = []
        try:
            for addr in (ip, *more):
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                for p in (port, port - 1):
                    s = socket.socket(family, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((addr, p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = 15) -> int | None:
    """Signal ``proc`` by its pid (if still running), wait, SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def wait_for(pred: Callable[[], object], timeout: float, what: str | Callable[[], object],
             interval: float = 0.1) -> None:
    """Poll ``pred`` until true; fail after ``timeout`` s.  A callable ``what`` is evaluated
    at the deadline, so the message shows the state that made the wait fail."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for "
                        f"{what() if callable(what) else what}")
        time.sleep(interval)


def view(log: str | Path) -> tuple[int, ...] | None:
    """The membership a log (its text, or its path) ends with, rebuilt from its "Members
    joined/left" lines (the lines both implementations print); None before the first
    membership (or file)."""
    if isinstance(log, Path):
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            return None
    else:
        text = log
    current: set[int] = set()
    seen = False
    for line in text.splitlines():
        m = MEMBERSHIP_RE.search(line)
        if not m:
            continue
        seen = True
        joined = re.search(r"joined: ([\d ]+?)(?: left:|$)", m.group(2))
        left = re.search(r"left: ([\d ]+)$", m.group(2))
        if joined:
            current |= {int(x) for x in joined.group(1).split()}
        if left:
            current -= {int(x) for x in left.group(1).split()}
    return tuple(sorted(current)) if seen else None


class JsonLines:
    """A child process printing JSON lines, collected by a reader thread into ``lines``."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def stderr_if_dead(self) -> str:
        return self.p.stderr.read() if self.p.poll() is not None and self.p.stderr else ""

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


class LineReader:
    """Lines of a child's stdout with a deadline on every wait (a silent child fails the test
    instead of hanging it).  Reads the pipe's fd directly, so do not mix with proc.stdout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def readline(self, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"pid {self.proc.pid}: no line within {timeout} s "
                                     f"(have {self.buf[-200:]!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"pid {self.proc.pid} closed stdout "
                                         f"(rc {self.proc.poll()}, have {self.buf[-200:]!r})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"


# ------------------------------------------------------------------------ one daemon

class NsDaemon:
    """One daemon process in namespaces, and the way to run commands beside it.

    ``argv`` is the daemon without ``-f -c``.  ``netns``: run inside that existing network
    namespace (``ip netns exec``), else in a new one (``unshare -n``, loopback brought up).
    ``private_mounts``: tmpfs over /run, /var/lib/corosync, /dev/shm in a new mount
    namespace (needed by Debian's daemon; ours is told its paths in the config instead)."""

    def __init__(self, workdir: Path, conf: str, argv: Sequence[str], *,
                 netns: str | None = None, private_mounts: bool = True,
                 env: dict[str, str] | None = None, stderr_name: str = "stderr") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "corosync.conf"
        self.conf.write_text(conf)
        self.netns = netns
        self.private_mounts = private_mounts
        self.environ = env if env is not None else client_env()
        daemon = [*argv, "-f", "-c", str(self.conf)]
        if private_mounts:
            steps = [] if netns else ["(ip link set lo up 2>/dev/null || ifconfig lo up)"]
            inner = " && ".join([*steps, _MOUNTS, "exec " + " ".join(daemon)])
            cmd = ["unshare", "-m", *([] if netns else ["-n"]), "sh", "-c", inner]
        else:
            assert netns, "a daemon without private mounts needs a network namespace"
            cmd = daemon
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.stderr_path = workdir / stderr_name
        with open(self.stderr_path, "ab") as err:
            # ip netns exec / unshare / sh exec in place: this pid is the daemon's
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=err, env=self.environ)

    def env(self) -> dict[str, str]:
        """A copy of the environment for commands beside the daemon."""
        return dict(self.environ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def enter(self) -> list[str]:
        """The prefix that runs a command where this daemon's clients live."""
        if self.private_mounts:
            return ["nsenter", "-t", str(self.pid), "-m", "-n"]
        return ["ip", "netns", "exec", str(self.netns)]

    def command(self, *args: str) -> list[str]:
        return [*self.enter(), *args]

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("env", self.environ)
        return subprocess.Popen(self.command(*args), **kw)

    def run(self, *args: str, timeout: float = 30, input: bytes | str | None = None,
            text: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.environ, capture_output=True,
                              timeout=timeout, input=input, text=text)

    def python(self, script: str | Path, *args: str, timeout: float = 30
               ) -> subprocess.CompletedProcess:
        return self.run(sys.executable, str(script), *args, timeout=timeout)

    def log_text(self, name: str = "corosync.log") -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        return stop_process(self.proc, sig, timeout)


#: How each kind of standalone daemon is started (same config, same namespace treatment).
DAEMONS = {"debian": [REAL], "debian-socket": [REAL], "ours": OURS}
#: Debian's daemon serves SHM by default; "debian-socket" makes it serve SOCKET IPC.
SOCKET_SECTION = "system {\n    qb_ipc_type: socket\n}\n"


class Daemon(NsDaemon):
    """One daemon alone in a new network + mount namespace, udpu on 127.0.0.1.

    ``conf``: the whole configuration (default: cluster ``clientlab``, one node n1, token
    1000 ms; "debian-socket" appends :data:`SOCKET_SECTION`)."""

    def __init__(self, workdir: Path, kind: str = "debian", conf: str | None = None,
                 stderr_name: str = "corosync.stderr") -> None:
        self.kind = kind
        if conf is None:
            conf = conf_text(cluster_name="clientlab", nodes=[(1, "127.0.0.1")],
                             log=workdir / "corosync.log")
            conf += SOCKET_SECTION if kind.endswith("-socket") else ""
        super().__init__(workdir, conf, DAEMONS[kind], stderr_name=stderr_name)

    def wait_ready(self, deadline: float) -> None:
        """Until our cmap client can read the ring's member list and CPG answers (the
        daemon refuses IPC with EAGAIN until it has formed its first ring)."""
        probe = ("from corosync.cmap import Cmap\n"
                 "from corosync.cpg import Cpg\n"
                 "with Cmap.initialize() as h:\n"
                 "    h.get('runtime.members.1.status')\n"
                 "with Cpg.initialize() as c:\n"
                 "    c.local_get()\n")
        self.wait_until(lambda: self.run(sys.executable, "-c", probe, timeout=20),
                        deadline - time.monotonic())

    def wait_until(self, attempt: Callable[[], subprocess.CompletedProcess],
                   timeout: float) -> None:
        """Repeat ``attempt`` (a command in the namespace) until it exits 0; fail with its
        output and the daemon's stderr if the daemon dies or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        last: subprocess.CompletedProcess | None = None
        while time.monotonic() < deadline and self.alive():
            last = attempt()
            if last.returncode == 0:
                return
            time.sleep(0.1)
        err = last.stderr[-500:] if last is not None else ""
        pytest.fail(f"{self.kind} corosync not ready: rc={self.proc.poll()} {err!r}\n"
                    f"{self.stderr_path.read_text(errors='replace')}")

    @contextlib.contextmanager
    def running(self, timeout: float = 30) -> Iterator["Daemon"]:
        """Wait until ready, yield, stop by pid whatever happens."""
        try:
            self.wait_ready(time.monotonic() + timeout)
            yield self
        finally:
            self.stop()


def daemon_fixture(*kinds: str, scope: str = "module"):  # type: ignore[no-untyped-def]
    """A pytest fixture running each test once per daemon kind (assign it to a name in the
    test module, or import the ready-made ones below)."""

    @pytest.fixture(scope=scope, params=list(kinds))
    def fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
        require(f"live tests against {request.param} corosync",
                real=request.param.startswith("debian"))
        with Daemon(tmp_path_factory.mktemp(f"{request.param}corosync"),
                    request.param).running() as daemon:
            yield daemon

    return fixture


#: Debian's daemon, module scope (the fixture name is the variable it is imported as).
real_corosync = daemon_fixture("debian")
#: Debian's daemon (SHM, its default), Debian's daemon serving SOCKET IPC, then our executive
#: under the same conditions.
any_corosync = daemon_fixture("debian", "debian-socket", "ours")


# ------------------------------------------------------------------------ mixed rings

class Lab:
    """N nodes on 198.18.0.0/24, one network namespace each, bridged in a namespace of its
    own (corosync-localcluster's netns layout).  Use :meth:`open` from a fixture."""

    def __init__(self, tmp: Path, state: dict, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.state = state
        self.env = env if env is not None else client_env()
        self.nodes: dict[int, NsDaemon] = {}
        self.clients: list[Any] = []  # Popen or JsonLines: killed at close()

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp: Path, prefix: str, what: str, n: int = 3,
             tools: Sequence[str] = ("ip", "unshare", "nsenter")) -> Iterator["Lab"]:
        """Skip (reason printed) unless possible; build the namespaces; tear all down."""
        from corosync.tools import localcluster

        require(what, tools=tools)
        state = {"n": n, "prefix": f"{prefix}{os.getpid() % 100000}", "namespaces": [],
                 "netns": True}
        try:
            localcluster.netns_up(state)
        except localcluster.LocalClusterError as exc:
            localcluster.netns_down(state)
            pytest.skip(f"cannot build network namespaces: {exc}")
        lab = cls(tmp, state)
        try:
            yield lab
        finally:
            lab.close()
            localcluster.netns_down(state)

    def ns(self, i: int) -> str:
        from corosync.tools import localcluster

        return localcluster.ns_name(self.state, i)

    def start(self, i: int, ours: bool, conf: str, *, argv: Sequence[str] | None = None,
              tag: str = "") -> NsDaemon:
        """Node i (work directory n<i><tag>): Debian's daemon in a private mount namespace,
        or ours (``argv``, default ``python -m corosync.exec.main``) straight in the node's
        network namespace.  ``conf`` is written as given (see :func:`conf_text` and
        :meth:`node_dir`)."""
        d = self.node_dir(i, tag)
        self.nodes[i] = NsDaemon(d, conf, argv or (OURS if ours else [REAL]),
                                 netns=self.ns(i), private_mounts=not ours,
                                 env={**self.env, "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})
        return self.nodes[i]

    def node_dir(self, i: int, tag: str = "") -> Path:
        return self.tmp / f"n{i}{tag}"

    @property
    def procs(self) -> dict[int, subprocess.Popen]:
        return {i: d.proc for i, d in self.nodes.items()}

    def stop(self, i: int, sig: int = signal.SIGTERM) -> int | None:
        node = self.nodes.get(i)
        return None if node is None else node.stop(sig)

    def text(self, i: int) -> str:
        node = self.nodes.get(i)
        return "" if node is None else node.log_text()

    def enter(self, i: int) -> list[str]:
        return self.nodes[i].enter()

    def run(self, i: int, *argv: str, timeout: float = 60, text: bool = False
            ) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter(i), *argv], capture_output=True, text=text,
                              timeout=timeout, env=self.env)

    def synced(self, nodes: tuple[int, ...]) -> bool:
        """Every node's last membership is ``nodes`` and its sync has completed."""
        for i in nodes:
            t = self.text(i)
            pos = t.rfind("A new membership")
            if pos < 0 or SYNC_DONE not in t[pos:] or view(t) != nodes:
                return False
        return True

    def close(self) -> None:
        for c in self.clients:
            p = c.p if isinstance(c, JsonLines) else c
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for node in self.nodes.values():
            node.stop()
