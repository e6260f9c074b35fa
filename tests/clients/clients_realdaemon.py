"""A real Debian corosync 3.1.7 (or our own executive) in its own network + mount namespace,
for live client tests.

The daemon hard-codes /run/corosync.pid and /var/lib/corosync and puts its IPC files in
/dev/shm; its setup sockets are abstract, i.e. per network namespace.  So it runs under
`unshare -m -n` with tmpfs over those paths, and every client (our Python scripts, our tools,
Debian's tools) runs inside the same namespaces through `nsenter`.

Imported by tests/clients and tests/tools (which add this directory to sys.path).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REAL = "/usr/sbin/corosync"
#: How each kind of daemon is started (same config file, same namespace treatment).
DAEMONS = {"debian": [REAL], "debian-socket": [REAL],
           "ours": [sys.executable, "-m", "corosync.exec.main"]}
#: Debian's daemon serves SHM by default; this kind makes it serve the SOCKET transport.
SOCKET_SECTION = "system {\n    qb_ipc_type: socket\n}\n"
DEBIAN_CMAPCTL = "/usr/sbin/corosync-cmapctl"
DEBIAN_CPGTOOL = "/usr/sbin/corosync-cpgtool"

CONF = """totem {{
    version: 2
    cluster_name: clientlab
    transport: udpu
    crypto_cipher: none
    crypto_hash: none
    token: 1000
    token_coefficient: 0
}}
logging {{
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: {log}
}}
quorum {{
    provider: corosync_votequorum
}}
nodelist {{
    node {{
        ring0_addr: 127.0.0.1
        nodeid: 1
        name: n1
    }}
}}
"""


def skip_reason(kind: str = "debian") -> str | None:
    if kind.startswith("debian") and not os.path.exists(REAL):
        return f"{REAL} not installed (apt-get install corosync)"
    if os.geteuid() != 0:
        return "needs root for network and mount namespaces"
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return f"needs {tool}"
    return None


class RealCorosync:
    """One daemon; :meth:`run` / :meth:`popen` execute commands inside its namespaces."""

    def __init__(self, workdir: Path, kind: str = "debian") -> None:
        self.workdir = workdir
        self.kind = kind
        daemon = " ".join(DAEMONS[kind])
        conf = workdir / "corosync.conf"
        conf.write_text(CONF.format(log=workdir / "corosync.log")
                        + (SOCKET_SECTION if kind.endswith("-socket") else ""))
        inner = ("ip link set lo up 2>/dev/null || ifconfig lo up; "
                 "mount -t tmpfs none /run && mount -t tmpfs none /var/lib/corosync && "
                 f"mount -t tmpfs none /dev/shm && exec {daemon} -f -c {conf}")
        # no --fork: unshare and sh exec in place, so this pid is the daemon's
        self.proc = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", inner],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(workdir / "corosync.stderr", "wb"),
                                     env=self.env())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        env.pop("COROSYNC_IPC_DIR", None)
        return env

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", *args]

    def popen(self, *args: str, **kw: object) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.command(*args), env=self.env(), **kw)  # type: ignore

    def run(self, *args: str, timeout: float = 30, input: bytes | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(), capture_output=True,
                              timeout=timeout, input=input)

    def python(self, script: str | Path, *args: str, timeout: float = 30
               ) -> subprocess.CompletedProcess:
        return self.run(sys.executable, str(script), *args, timeout=timeout)

    def wait_ready(self, deadline: float) -> None:
        """Until our cmap client can read the ring's member list and CPG answers (the
        daemon refuses IPC with EAGAIN until it has formed its first ring)."""
        probe = ("import sys\n"
                 "from corosync.cmap import Cmap\n"
                 "from corosync.cpg import Cpg\n"
                 "with Cmap.initialize() as h:\n"
                 "    h.get('runtime.members.1.status')\n"
                 "with Cpg.initialize() as c:\n"
                 "    c.local_get()\n")
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            p = self.run(sys.executable, "-c", probe, timeout=20)
            if p.returncode == 0:
                return
            last = p.stderr.decode(errors="replace")[-500:]
            time.sleep(0.1)
        log = (self.workdir / "corosync.stderr").read_text(errors="replace")
        pytest.fail(f"{self.kind} corosync not ready: rc={self.proc.poll()} {last}\n{log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def real_corosync(tmp_path_factory: pytest.TempPathFactory):
    reason = skip_reason()
    if reason:
        print(f"SKIP live tests against Debian corosync: {reason}")
        pytest.skip(reason)
    daemon = RealCorosync(tmp_path_factory.mktemp("realcorosync"))
    try:
        daemon.wait_ready(time.monotonic() + 30)
        yield daemon
    finally:
        daemon.stop()


def daemon_fixture(*kinds: str):  # type: ignore[no-untyped-def]
    """A module-scoped fixture running each test once per daemon kind (assign it to a name in
    the test module)."""

    @pytest.fixture(scope="module", params=list(kinds))
    def fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
        reason = skip_reason(request.param)
        if reason:
            print(f"SKIP live tests against {request.param} corosync: {reason}")
            pytest.skip(reason)
        daemon = RealCorosync(tmp_path_factory.mktemp(f"{request.param}corosync"),
                              request.param)
        try:
            daemon.wait_ready(time.monotonic() + 30)
            yield daemon
        finally:
            daemon.stop()

    return fixture


#: Debian's daemon (SHM, its default), Debian's daemon serving SOCKET IPC, then our executive
#: (corosync.exec.main) under the same conditions.
any_corosync = daemon_fixture("debian", "debian-socket", "ours")


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
