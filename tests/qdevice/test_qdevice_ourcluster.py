"""Issue 6, test 6: OUR corosync-qdevice on a 2-node cluster of OUR corosync executive, one
network namespace per node (198.18.0.1/2; the qnetd on 198.18.0.3), arbitrated by
Debian's corosync-qnetd 3.0.3 (plain) or by ours (plain, and TLS ``required`` with client
certificates made by our certutils).

What an operator sees is compared with the reference run of the stock stack
(shared/reference/qdevice, Debian corosync + stock qdevice + stock qnetd):

* both nodes quorate with 3 votes; ``corosync-quorumtool -s`` (Debian's C tool and ours)
  equal to ``running-quorumtool-s.txt`` modulo date / ring id, our qdevice tool to
  ``running-qdevice-tool-s.txt`` modulo the qnetd address;
* qnetd SIGKILLed: the qdevices lose the connection and vote NACK, votequorum shows
  ``A,NV,NMW`` and the cluster keeps quorum with 2 of 3 votes (the stock stack's
  ``qnetd-stopped-quorumtool-s.txt``); restarted, the qdevices reconnect and the vote
  comes back;
* node 2 SIGKILLed (executive and qdevice): node 1 stays quorate with 2 of 3 votes
  (``after-kill-quorumtool-s.txt``, ``after-kill-qdevice-tool-s.txt``, and Debian's
  ``corosync-quorumtool -m`` across the kill equal to ``after-kill-quorumtool-m.txt``);
* ``corosync-qdevice-tool -H``: the qdevice exits 0 and the Qdevice leaves votequorum.

Each daemon runs directly in its node's namespace (``ip netns exec`` execs it, so the pid
is the daemon's); libqb's abstract IPC names are per network namespace, so Debian's
corosync-quorumtool there talks to our executive.  Short timers: token 500 ms, qdevice
timeout 2000 ms (heartbeat 1.6 s, vote refresh 1 s).  Skipped without root / iproute2.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qnetd"))
from test_qnetd_interop import Lab as NetnsLab  # noqa: E402
from test_qnetd_interop import lab_in_namespaces, wait_for  # noqa: E402

from corosync.tools import localcluster  # noqa: E402

DEBIAN_QNETD = "/usr/bin/corosync-qnetd"
DEBIAN_QUORUMTOOL = "/usr/sbin/corosync-quorumtool"
OUR_QUORUMTOOL = [sys.executable, "-m", "corosync.tools.quorumtool"]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    return None


def conf_text(d: Path, tls: str) -> str:
    """The reference run's corosync.conf (shared/reference/qdevice/corosync.conf) with our
    paths, a shorter token and ``quorum.device.timeout: 2000``."""
    nodes = "".join(f"    node {{\n        ring0_addr: 198.18.0.{i}\n        nodeid: {i}\n"
                    f"        name: n{i}\n    }}\n" for i in (1, 2))
    return ("totem {\n    version: 2\n    cluster_name: lab\n    transport: udpu\n"
            "    token: 500\n    token_coefficient: 0\n}\n"
            f"logging {{\n    to_stderr: no\n    to_logfile: yes\n    logfile: {d}/corosync.log\n"
            "    to_syslog: no\n    timestamp: hires\n    debug: off\n}\n"
            "quorum {\n    provider: corosync_votequorum\n    device {\n        model: net\n"
            "        votes: 1\n        timeout: 2000\n        net {\n"
            "            host: 198.18.0.3\n"
            f"            tls: {tls}\n            algorithm: ffsplit\n        }}\n    }}\n}}\n"
            f"nodelist {{\n{nodes}}}\n"
            f"system {{\n    state_dir: {d}/state\n    run_dir: {d}/run\n}}\n")


def mask(text: str) -> str:
    text = re.sub(r"Date:\s+.*", "Date: X", text)
    text = re.sub(r"Ring ID:(\s+)\S+", r"Ring ID:\1X", text)
    return re.sub(r"QNetd host:\t\t\S+", "QNetd host:\t\tX", text)


class Lab(NetnsLab):
    """The qnetd interop lab's namespaces and process handling; our daemons run directly in
    the node namespaces (no mount namespace needed: each has its own run/state dirs)."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.state["prefix"] = f"qo{os.getpid() % 100000}"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # the IPC rendezvous is libqb's abstract namespace of each node's network namespace
        self.env.pop("COROSYNC_IPC_DIR", None)
        self.qnetd_cmd: list[str] = []

    def ns(self, i: int) -> str:
        return localcluster.ns_name(self.state, i)

    def popen(self, name: str, cmd: list[str],  # type: ignore[override]
              env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.out", "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                 env=env or self.env)
        self.procs[name] = p
        return p

    def start_corosync(self, i: int, tls: str) -> None:
        d = self.node_dir(i)
        (d / "corosync.conf").write_text(conf_text(d, tls))
        self.popen(f"corosync{i}", ["ip", "netns", "exec", self.ns(i), sys.executable, "-m",
                                    "corosync.exec.main", "-f", "-c", str(d / "corosync.conf")],
                   env={**self.env, "COROSYNC_LOCAL_ADDRS": f"198.18.0.{i}"})

    def start_qdevice(self, i: int, *settings: str) -> None:
        d = self.node_dir(i)
        opts = ",".join([f"lock_file={d}/qd.pid", f"local_socket_file={d}/qd.sock", *settings])
        self.popen(f"qdevice{i}", ["ip", "netns", "exec", self.ns(i), sys.executable, "-m",
                                   "corosync.tools.qdevice", "-f", "-d", "-S", opts])

    def start_server(self, server: str, *args: str) -> None:
        """Our or Debian's qnetd in the third namespace; the command is kept for restarts."""
        d = self.tmp / "qnetd"
        d.mkdir(exist_ok=True)
        sock = d / "q.sock"
        exe = [DEBIAN_QNETD] if server == "debian" else [sys.executable, "-m",
                                                        "corosync.tools.qnetd"]
        self.qnetd_cmd = ["ip", "netns", "exec", self.ns(3), *exe, "-f", "-d", *args, "-S",
                          f"lock_file={d}/q.pid,local_socket_file={sock}"]
        self.restart_qnetd()

    def restart_qnetd(self) -> None:
        sock = self.tmp / "qnetd" / "q.sock"
        if sock.exists():
            sock.unlink()  # a SIGKILLed qnetd leaves it behind
        self.popen("qnetd", self.qnetd_cmd)
        wait_for(lambda: sock.exists() or self.procs["qnetd"].poll() is not None, 20,
                 "qnetd IPC socket")
        assert self.procs["qnetd"].poll() is None, self.output("qnetd")

    def run(self, i: int, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(i), *cmd], capture_output=True,
                              timeout=30, env=self.env)

    def quorum(self, i: int, ours: bool = False) -> str:
        r = self.run(i, *(OUR_QUORUMTOOL if ours else [DEBIAN_QUORUMTOOL]), "-s")
        return r.stdout.decode(errors="replace") if r.returncode in (0, 2) else ""

    def qdevice_tool(self, i: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "corosync.tools.qdevice_tool", "-p",
                               str(self.node_dir(i) / "qd.sock"), *args],
                              capture_output=True, timeout=20)

    def diag(self, *names: str) -> str:
        return "\n".join(f"--- {n}:\n{self.output(n)}" for n in names)


@pytest.fixture
def lab(tmp_path):
    yield from lab_in_namespaces(Lab(tmp_path), _skip_reason(), "qdevice on our cluster")


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """qnetd CA + server certificate (our qnetd certutil); node 1: -i, -r, signed, -M;
    node 2: -i, -m with node 1's p12 — the documented flow, run in-process (the CLI
    texts and exit codes are tested in test_qdevice_tls.py; this saves seven start-ups)."""
    from corosync.tools import qdevice_net_certutil, qnetd_certutil

    qdb, n1, n2 = tmp / "qnetd-certs", tmp / "n1-certs", tmp / "n2-certs"
    steps = [
        (qnetd_certutil, ["-i", "-d", qdb]),
        (qdevice_net_certutil, ["-i", "-c", qdb / "qnetd-cacert.crt", "-d", n1]),
        (qdevice_net_certutil, ["-r", "-n", "lab", "-d", n1]),
        (qnetd_certutil, ["-s", "-c", n1 / "qdevice-net-node.crq", "-n", "lab", "-d", qdb]),
        (qdevice_net_certutil, ["-M", "-c", qdb / "cluster-lab.crt", "-d", n1]),
        (qdevice_net_certutil, ["-i", "-c", qdb / "qnetd-cacert.crt", "-d", n2]),
        (qdevice_net_certutil, ["-m", "-c", n1 / "qdevice-net-node.p12", "-d", n2]),
    ]
    for tool, args in steps:
        assert tool.main([str(a) for a in args]) == 0, (tool.__name__, args)
    return qdb, n1, n2


# Debian's qnetd plain, ours with TLS required + client certificates (ours plain is the
# same path as Debian's here and is covered on Debian nodes by test_qdevice_interop.py)
@pytest.mark.parametrize("server,tls", [("debian", "off"), ("ours", "on")])
def test_our_qdevice_on_our_cluster(lab, shared_dir, server, tls):
    if server == "debian" and not os.path.exists(DEBIAN_QNETD):
        pytest.skip(f"{DEBIAN_QNETD} not installed")
    have_deb_tool = os.path.exists(DEBIAN_QUORUMTOOL)
    qdevice_settings: dict[int, list[str]] = {1: [], 2: []}
    if tls == "on":
        qdb, *node_dbs = _certificates(lab.tmp)
        lab.start_server(server, "-s", "req", "-c", "on", "-S", f"nss_db_dir={qdb}")
        for i, db in zip((1, 2), node_dbs):
            qdevice_settings[i] = [f"net_nss_db_dir={db}"]
    else:
        lab.start_server(server, "-s", "off")
    for i in (1, 2):
        lab.start_corosync(i, tls)
    for i in (1, 2):
        wait_for(lambda i=i: "Nodes:            2" in lab.quorum(i, ours=True), 30,
                 lambda i=i: lab.quorum(i, ours=True) + lab.diag(f"corosync{i}"))
    for i in (1, 2):
        lab.start_qdevice(i, *qdevice_settings[i])

    ref = shared_dir / "reference" / "qdevice"
    tools = [False, True] if have_deb_tool else [True]

    def same(i: int, reference: Path, drop_node_id: bool = False) -> bool:
        want = mask(reference.read_text())
        if drop_node_id:
            want = want.replace("Node ID:          1", "")
        for ours in tools:
            got = mask(lab.quorum(i, ours))
            if drop_node_id:
                got = got.replace("Node ID:          1", "")
            if got != want:
                return False
        return True

    def both(*names: str) -> str:
        return lab.quorum(1) + lab.quorum(1, True) + lab.diag(*names)

    # 1. running: 3 votes on both nodes, outputs as the stock stack's
    wait_for(lambda: "Total votes:      3" in lab.quorum(1, True)
             and "Total votes:      3" in lab.quorum(2, True), 20,
             lambda: lab.quorum(2, True) + both("qdevice1", "qdevice2", "qnetd"))
    running = ref / "running-quorumtool-s.txt"
    wait_for(lambda: same(1, running), 15, lambda: both("qdevice1"))
    node2 = lab.quorum(2)
    assert "Flags:            Quorate Qdevice \n" in node2
    assert "         2          1    A,V,NMW n2 (local)\n" in node2
    r = lab.qdevice_tool(1, "-s")
    assert r.returncode == 0, r.stderr
    assert mask(r.stdout.decode()) == mask((ref / "running-qdevice-tool-s.txt").read_text())
    verbose = lab.qdevice_tool(1, "-s", "-v").stdout.decode()
    # GETINFO at start-up gives the expected votes, as in running-qdevice-tool-s-v.txt
    assert "Expected votes:\t\t3\n" in verbose, verbose
    if tls == "on":
        assert "TLS active:\t\tYes (client certificate sent)\n" in verbose, verbose

    # 2. qnetd lost (SIGKILL): NACK, A,NV,NMW, quorate with 2 of 3; back: reconnect, 3 votes
    lab.stop("qnetd", signal.SIGKILL)
    stopped = ref / "qnetd" / "heartbeat-dpd" / "qnetd-stopped-quorumtool-s.txt"
    wait_for(lambda: same(1, stopped), 15, lambda: both("qdevice1"))
    wait_for(lambda: "A,NV,NMW n2 (local)" in lab.quorum(2, True), 15,
             lambda: lab.quorum(2, True) + lab.diag("qdevice2"))
    state = lab.qdevice_tool(1, "-s").stdout.decode()
    assert re.search(r"State:\t\t\t(Connecting|Connect failed|Disconnected)\n", state), state
    lab.restart_qnetd()
    wait_for(lambda: same(1, running), 20, lambda: both("qdevice1", "qnetd"))
    wait_for(lambda: "A,V,NMW n2 (local)" in lab.quorum(2, True), 15,
             lambda: lab.quorum(2, True) + lab.diag("qdevice2"))

    # 3. node 2 dies: node 1 keeps its vote and the qdevice's (ffsplit), 2 of 3; Debian's
    # `corosync-quorumtool -m` across the kill prints exactly the reference's two blocks
    # (no intermediate notification)
    monitor = have_deb_tool and shutil.which("stdbuf") is not None
    if monitor:
        lab.popen("monitor", ["ip", "netns", "exec", lab.ns(1), "stdbuf", "-oL",
                              DEBIAN_QUORUMTOOL, "-m"])
        wait_for(lambda: "Qdevice\n" in lab.output("monitor"), 15,
                 lambda: lab.output("monitor"))
    lab.stop("qdevice2", signal.SIGKILL)
    lab.stop("corosync2", signal.SIGKILL)
    wait_for(lambda: same(1, ref / "after-kill-quorumtool-s.txt"), 20,
             lambda: both("qdevice1", "corosync1"))
    if monitor:
        want_m = mask((ref / "after-kill-quorumtool-m.txt").read_text())
        wait_for(lambda: mask(lab.output("monitor")) == want_m, 10,
                 lambda: lab.output("monitor"))
        lab.stop("monitor")
    want = mask((ref / "after-kill-qdevice-tool-s.txt").read_text())
    wait_for(lambda: mask(lab.qdevice_tool(1, "-s").stdout.decode()) == want, 15,
             lambda: lab.qdevice_tool(1, "-s").stdout.decode())

    # 4. clean stop through the tool: exit 0, the device leaves votequorum
    r = lab.qdevice_tool(1, "-H")
    assert r.returncode == 0, r.stderr
    assert lab.procs["qdevice1"].wait(15) == 0, lab.output("qdevice1")
    wait_for(lambda: "Qdevice" not in lab.quorum(1, True), 15, lambda: lab.quorum(1, True))
    assert lab.procs["corosync1"].poll() is None, lab.output("corosync1")
