"""Interop of our daemon's *services* with Debian's corosync 3.1.7 and its tools.

(a) Debian's ``corosync-cmapctl`` and ``corosync-cpgtool`` (libcmap/libcpg + libqb, abstract
    socket names, so they run inside the daemon's network namespace) against our
    ``corosync -f``, over SHM (default) and SOCKET (``system { qb_ipc_type: socket }``); the
    same commands against a real daemon with the same configuration in the same namespace;
    outputs compared modulo volatile values (pids, ring sequence numbers, counters).
(c) A mixed udpu ring — ours + two Debian nodes: sync completes everywhere, CPG clients on
    all three nodes (tests/exec/test_daemon_services.py run as a script: our libqb client,
    which speaks to the real daemons too) get every message in one identical order and the
    same membership views, also after a real node is SIGKILLed.

Needs root, iproute2, unshare, nsenter and /usr/sbin/corosync; otherwise skipped with the
reason printed.  Layout: tests/realcorosync.py's Lab.  Every process is stopped by pid.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import realcorosync
from realcorosync import CMAPCTL, CPGTOOL, wait_for

CLIENT = Path(__file__).resolve().parents[1] / "exec" / "test_daemon_services.py"


class Client(realcorosync.JsonLines):
    """A CPG client process (JSON lines, see tests/exec/test_daemon_services.py)."""

    cmd = realcorosync.JsonLines.send

    @property
    def pid(self) -> int | None:
        got = [x["pid"] for x in self.lines if "pid" in x]
        return got[0] if got else None

    def confchgs(self) -> list:
        return [x["c"] for x in self.lines if "c" in x]

    def delivered(self) -> list:
        return [x["d"] for x in self.lines if "d" in x]

    def members(self) -> list | None:
        c = self.confchgs()
        return sorted(c[-1][0]) if c else None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.cmd("quit")
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


class Lab(realcorosync.Lab):
    def start(self, i: int, ours: bool, nodes: tuple[int, ...] = (1, 2, 3),  # type: ignore[override]
              ipc_type: str | None = None, tag: str = "") -> realcorosync.NsDaemon:
        d = self.node_dir(i, tag)
        conf = realcorosync.conf_text(
            cluster_name="svcio", nodes=[(n, f"198.18.0.{n}") for n in nodes], timestamp=True,
            log=d / "corosync.log", ipc_type=ipc_type, dirs=d if ours else None)
        return super().start(i, ours, conf, tag=tag)

    def run(self, i: int, *argv: str) -> subprocess.CompletedProcess:  # type: ignore[override]
        return super().run(i, *argv, timeout=30, text=True)

    def client(self, i: int, group: str) -> Client:
        c = Client([*self.enter(i), sys.executable, str(CLIENT), "cpg", group], self.env)
        self.clients.append(c)
        return c


@pytest.fixture
def lab(tmp_path):
    with Lab.open(tmp_path, "si", "services interop") as lab:
        yield lab


# ------------------------------------------------------------------- (a) Debian's tools

#: (name, argv) run against both daemons; outputs compared after normalize()
TOOL_RUNS = [
    ("get-token", [CMAPCTL, "-g", "totem.token"]),
    ("get-missing", [CMAPCTL, "-g", "no.such.key"]),
    ("get-cluster-name", [CMAPCTL, "-g", "totem.cluster_name"]),
    ("prefix-totem", [CMAPCTL, "totem."]),
    ("prefix-nodelist", [CMAPCTL, "nodelist."]),
    ("prefix-members", [CMAPCTL, "runtime.members."]),
    ("prefix-runtime-config", [CMAPCTL, "runtime.config.totem."]),
    ("cpgtool", [CPGTOOL]),
    ("cpgtool-d", [CPGTOOL, "-d", ","]),
    ("cpgtool-n", [CPGTOOL, "-n"]),
]


def normalize(text: str, pids: dict[int, str]) -> str:
    for pid, name in pids.items():
        text = re.sub(rf"\b{pid}\b", name, text)
    return text


def tool_outputs(lab: Lab, i: int, ipc_type: str | None, ours: bool) -> dict:
    lab.start(i, ours, nodes=(i,), ipc_type=ipc_type, tag="o" if ours else "r")
    wait_for(lambda: lab.synced((i,)), 30, lambda: lab.text(i)[-2000:])
    demo = [lab.client(i, "demo"), lab.client(i, "demo")]
    other = lab.client(i, "other group")
    for c in (*demo, other):
        wait_for(lambda c=c: c.members() is not None, 20, lambda c=c: (c.lines, lab.text(i)))
    wait_for(lambda: len(demo[0].members() or []) == 2, 20, lambda: demo[0].lines)
    pids = {c.pid: f"PID{k}" for k, c in enumerate(sorted((*demo, other), key=lambda c: c.pid))}
    out = {}
    for name, argv in TOOL_RUNS:
        r = lab.run(i, *argv)
        out[name] = (r.returncode, normalize(r.stdout, pids), normalize(r.stderr, pids))
    full = lab.run(i, CMAPCTL)
    out["_keys"] = {line.split(" (")[0] for line in full.stdout.splitlines() if " (" in line}
    stats = lab.run(i, CMAPCTL, "-m", "stats", "stats.")
    # the stats map: key names and types (values are counters)
    out["_stats"] = sorted(line.split(" = ")[0] for line in stats.stdout.splitlines()
                           if line.startswith(("stats.srp.", "stats.pg.", "stats.ipcs.global.")))
    for c in (*demo, other):
        c.stop()
    assert lab.stop(i) == 0, lab.text(i)[-2000:]
    return out


@pytest.mark.parametrize("ipc_type", [None, "socket"], ids=["shm", "socket"])
def test_debian_tools_against_ours_and_real(lab, ipc_type):
    ours = tool_outputs(lab, 1, ipc_type, ours=True)
    real = tool_outputs(lab, 1, ipc_type, ours=False)
    served_cfg = ours["cpgtool"][0] == 0
    differ = []
    for name, _argv in TOOL_RUNS:
        if name.startswith("cpgtool") and not served_cfg:
            # Debian's corosync-cpgtool initialises the cfg service first; ours has none yet.
            code, out, err = ours[name]
            assert code == 1 and out == "", ours[name]
            assert err.startswith("Could not initialize corosync configuration API error"), err
            continue
        if ours[name] != real[name]:
            differ.append((name, ours[name], real[name]))
    assert not differ, "\n".join(f"{n}:\n ours {o!r}\n real {r!r}" for n, o, r in differ)
    assert sorted(real["cpgtool-d"][1].splitlines()[1:]) == [
        "demo,PID0,1", "demo,PID1,1", "other group,PID2,1"]
    stats_only_real = set(real["_stats"]) - set(ours["_stats"])
    stats_only_ours = set(ours["_stats"]) - set(real["_stats"])
    print("\nstats map keys only real:", sorted(stats_only_real),
          "only ours:", sorted(stats_only_ours))
    assert not stats_only_ours
    assert not stats_only_real  # every stats key of the real daemon, in name and type
    only_real = sorted(real["_keys"] - ours["_keys"])
    only_ours = sorted(ours["_keys"] - real["_keys"])
    print(f"\nfull cmapctl listing ({ipc_type or 'shm'}): {len(real['_keys'])} keys real, "
          f"{len(ours['_keys'])} ours; only real: {len(only_real)}, only ours: {len(only_ours)}")
    print("  only real:", " ".join(only_real))
    print("  only ours:", " ".join(only_ours))


# ----------------------------------------------------------------------- (c) mixed ring

@pytest.mark.parametrize("our_id", [2, 1], ids=["ours-middle", "ours-representative"])
def test_mixed_ring_cpg_order_and_views_with_kill(lab, our_id):
    for i in (1, 2, 3):
        lab.start(i, i == our_id)
    wait_for(lambda: lab.synced((1, 2, 3)), 40, lambda: {i: lab.text(i)[-1500:] for i in (1, 2, 3)})
    cs = {i: lab.client(i, "mixed") for i in (1, 2, 3)}
    for c in cs.values():
        wait_for(lambda c=c: c.members() is not None and len(c.members()) == 3, 30,
                 lambda c=c: (c.lines, c.p.stderr.read() if c.p.poll() is not None else ""))
    members3 = sorted([i, cs[i].pid, 0] for i in (1, 2, 3))
    assert all(c.members() == members3 for c in cs.values())
    for i, c in cs.items():
        c.cmd(f"s n{i} 60")
    wait_for(lambda: all(len(c.delivered()) >= 180 for c in cs.values()), 60,
             lambda: {i: len(c.delivered()) for i, c in cs.items()})
    orders = [c.delivered() for c in cs.values()]
    assert orders[0] == orders[1] == orders[2], "delivery order differs between the nodes"
    for i, c in cs.items():
        assert [d[2] for d in orders[0] if d[1] == c.pid] == [f"n{i}:{k}" for k in range(60)]
    # a real node is killed: the others see its process leave with NODEDOWN (3)
    lab.stop(3, signal.SIGKILL)
    dead = [3, cs[3].pid, 3]
    for i in (1, 2):
        wait_for(lambda i=i: any(ch[1] == [dead] for ch in cs[i].confchgs()), 30,
                 lambda i=i: (cs[i].lines[-3:], lab.text(i)[-1500:]))
    wait_for(lambda: lab.synced((1, 2)), 30, lambda: {i: lab.text(i)[-1500:] for i in (1, 2)})
    assert cs[1].confchgs()[-1] == cs[2].confchgs()[-1]
    assert cs[1].members() == sorted([i, cs[i].pid, 0] for i in (1, 2))
    for i, c in ((1, cs[1]), (2, cs[2])):
        c.cmd(f"s after{i} 20")
    wait_for(lambda: all(len(cs[i].delivered()) >= 220 for i in (1, 2)), 40,
             lambda: {i: len(cs[i].delivered()) for i in (1, 2)})
    assert cs[1].delivered() == cs[2].delivered()
    for i in (1, 2):
        assert lab.procs[i].poll() is None, f"n{i} exited: {lab.text(i)[-2000:]}"
        assert "Completed service synchronization" in lab.text(i)
    assert "exiting" not in lab.text(2).lower()


LIBCPG_CLIENT = Path(__file__).resolve().parents[2] / "bench" / "cpgbench.py"


def test_debian_libcpg_clients_through_our_daemon(lab):
    """Debian's libcpg (ctypes, bench/cpgbench.py's client) on every node of a mixed ring,
    ours in the middle: each client joins and sees three members; messages sent from our
    node, from a real node, and from all three at once are delivered in one identical
    order everywhere (cpgbench's client reports a running sha256 of its delivery order)."""
    if not LIBCPG_CLIENT.exists():
        pytest.skip("bench/cpgbench.py missing")
    for i in (1, 2, 3):
        lab.start(i, i == 2)
    wait_for(lambda: lab.synced((1, 2, 3)), 40, lambda: {i: lab.text(i)[-1500:] for i in (1, 2, 3)})
    procs = {}
    for i in (1, 2, 3):
        procs[i] = subprocess.Popen([*lab.enter(i), sys.executable, str(LIBCPG_CLIENT), "client"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=lab.env)
    try:
        def answer(i: int) -> dict:
            line = procs[i].stdout.readline()
            assert line, f"libcpg client at n{i} died: {procs[i].stderr.read()[-2000:]}"
            return json.loads(line)

        for i in (1, 2, 3):
            assert "ready" in answer(i)  # joined, confchg with 3 members seen

        def phase(counts: dict[int, tuple[int, int]], total: int) -> None:
            """Each client sends its (count, size) and waits for ``total`` deliveries; all
            three must then hold the same running hash of the delivery order."""
            for i, (n, size) in counts.items():
                procs[i].stdin.write(f"phase {n} {size} {total}\n")
                procs[i].stdin.flush()
            results = {i: answer(i) for i in counts}
            assert len({r["hash"] for r in results.values()}) == 1, results

        # 300 messages from the client on our node reach the libcpg clients on the real nodes
        phase({1: (0, 0), 2: (300, 1000), 3: (0, 0)}, 300)
        # and the other way: a real node's libcpg client to ours (64000 B: fragmented)
        phase({1: (100, 64000), 2: (0, 0), 3: (0, 0)}, 100)
        # everybody at once: one agreed order across the mixed ring
        phase({1: (200, 100), 2: (200, 100), 3: (200, 100)}, 600)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
    assert lab.procs[2].poll() is None, lab.text(2)[-2000:]
