"""corosync.cmap / corosync.cpg against a REAL Debian corosync 3.1.7 and against our own
executive (single node, udpu on 127.0.0.1, own network + mount namespace; skipped with a
printed reason when unavailable).

Our clients run inside the daemon's namespaces (tests/clients/clients_scenarios.py).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from clients_realdaemon import RealCorosync, any_corosync  # noqa: F401  (fixture)

SCENARIOS = Path(__file__).with_name("clients_scenarios.py")


def scenario(daemon: RealCorosync, name: str) -> dict[str, Any]:
    p = daemon.python(SCENARIOS, name)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def test_cmap_blocking_api(any_corosync: RealCorosync) -> None:
    r = scenario(any_corosync, "cmap_sync")
    assert r["cluster_name"] == "clientlab" and r["token"] == 1000
    assert r["nodeid_typed_mismatch"] == 7                  # CS_ERR_INVALID_PARAM
    assert r["roundtrip"] == r["expected"]                  # every type, set then read back
    assert r["iter_keys"] == sorted(r["iter_keys"]) and len(r["iter_keys"]) == 12
    assert r["iter_lens"]["clienttest.v.str"] == 12         # "hello world" + NUL
    assert r["iter_lens"]["clienttest.v.u64"] == 8
    assert r["after_adjust"] == [202, -6]
    assert r["info"] == [12, 11]
    assert r["deleted"] == 12 and r["delete_missing"] == 12  # CS_ERR_NOT_EXIST
    assert r["readonly"] == 11                               # CS_ERR_ACCESS
    assert r["notes"] == [
        ["ADD", "clienttest.t.a", ["str", "one"], None],
        ["MODIFY", "clienttest.t.a", ["str", "two"], ["str", "one"]],
        ["ADD", "clienttest.t.only", ["u32", 1], None],
        ["MODIFY", "clienttest.t.only", ["u32", 2], ["u32", 1]],
        ["DELETE", "clienttest.t.a", None, ["str", "two"]],
    ]
    assert r["notes_meta"] == [True, "ud"]
    assert r["single"] == [["MODIFY", "clienttest.t.only", ["u32", 2]]]
    assert r["after_track_delete"] == 5
    assert r["stats_keys"] > 10 and r["stats_readonly"] == 11


def test_cmap_trio_api(any_corosync: RealCorosync) -> None:
    r = scenario(any_corosync, "cmap_async")
    assert r == {"get": 7, "keys": ["asynctest.x"],
                 "notes": [["ADD", "asynctest.y"], ["MODIFY", "asynctest.x"],
                           ["DELETE", "asynctest.y"]]}


def test_cpg_trio_api(any_corosync: RealCorosync) -> None:
    r = scenario(any_corosync, "cpg_async")
    assert r["local"] == 1
    assert r["events"] == ["ConfchgEvent", "TotemConfchgEvent", "DeliverEvent"]
    assert r["message"] == [101, True]
    assert r["membership"] == [[1, True]]
    assert "async group" in r["groups"]


class Peer:
    """One cpg_peer process; its JSON event lines arrive through a reader thread so that
    every wait has a deadline."""

    def __init__(self, daemon: RealCorosync, group: str) -> None:
        self.proc = daemon.popen(sys.executable, str(SCENARIOS), "cpg_peer", group,
                                 stdin=subprocess.PIPE)
        self.events: list[dict[str, Any]] = []
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pid = self.wait_for(lambda e: e["ev"] == "joined")["pid"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
                 ) -> dict[str, Any]:
        for e in self.events:
            if pred(e) and not e.get("_used"):
                e["_used"] = True
                return e
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"peer {self.proc.pid}: timeout; {len(self.events)} "
                                     f"events, last {self.events[-5:]}")
            try:
                e = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if e is None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"peer {self.proc.pid} exited: {err[-2000:]}")
            self.events.append(e)
            if pred(e):
                e["_used"] = True
                return e

    def count(self, ev: str) -> int:
        return sum(1 for e in self.events if e["ev"] == ev)

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def deliveries(self) -> list[tuple[int, int, str]]:
        return [(e["nodeid"], e["pid"], e["msg"]) for e in self.events if e["ev"] == "deliver"]

    def confchgs(self) -> list[dict[str, Any]]:
        return [{k: e[k] for k in ("members", "left", "joined")}
                for e in self.events if e["ev"] == "confchg"]

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def peers(any_corosync: RealCorosync):
    started: list[Peer] = []

    def start(group: str) -> Peer:
        peer = Peer(any_corosync, group)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.close()


def wait_members(peer: Peer, n: int) -> None:
    peer.wait_for(lambda e: e["ev"] == "confchg" and len(e["members"]) == n)


def test_cpg_two_clients_see_identical_order_and_confchgs(peers) -> None:
    a = peers("order lab")
    wait_members(a, 1)
    b = peers("order lab")
    wait_members(a, 2)
    wait_members(b, 2)
    count = 200
    a.command(f"send {count} a")
    b.command(f"send {count} b")
    b.command("sendbig 6000")                       # 1.5 MB: fragmented, reassembled
    for p in (a, b):
        p.wait_for(lambda e, p=p: p.count("deliver") >= 2 * count + 1)
    assert a.deliveries() == b.deliveries()          # agreed order, byte for byte
    delivered = a.deliveries()
    assert len(delivered) == 2 * count + 1
    for peer, tag in ((a, "a"), (b, "b")):
        own = [m for n, pid, m in delivered if pid == peer.pid and not m.startswith("big")]
        assert own == [f"{tag}-{i}" for i in range(count)]   # FIFO per sender
    # the fragmented message arrives whole, once, after its sender's earlier messages
    bigs = [i for i, (_n, _p, m) in enumerate(delivered) if m.startswith("big")]
    assert [delivered[i] for i in bigs] == [(1, b.pid, "big:1536000:0001020304050607")]
    assert bigs[0] > max(i for i, (_n, pid, _m) in enumerate(delivered)
                         if pid == b.pid and not _m.startswith("big"))
    # confchgs: a saw itself join, then b; b saw itself join with both as members
    me_a, me_b = [1, a.pid], [1, b.pid]
    assert a.confchgs()[0] == {"members": [me_a], "left": [], "joined": [me_a + [1]]}
    assert a.confchgs()[1] == {"members": sorted([me_a, me_b]), "left": [],
                               "joined": [me_b + [1]]}
    assert b.confchgs() == [a.confchgs()[1]]
    # the initial totem confchg came right after our own join confchg
    totems = [e for e in b.events if e["ev"] == "totem"]
    assert totems and totems[0]["members"] == [1]


def test_cpg_leave_and_procdown_reasons(peers) -> None:
    watcher = peers("reason lab")
    wait_members(watcher, 1)
    leaver = peers("reason lab")
    wait_members(watcher, 2)
    leaver.command("leave")
    left = watcher.wait_for(lambda e: e["ev"] == "confchg" and e["left"])
    assert left["left"] == [[1, leaver.pid, 2]]      # CPG_REASON_LEAVE
    assert left["members"] == [[1, watcher.pid]]
    # the leaver sees its own leave too
    own = leaver.wait_for(lambda e: e["ev"] == "confchg" and e["left"])
    assert own["left"] == [[1, leaver.pid, 2]] and own["members"] == [[1, watcher.pid]]

    victim = peers("reason lab")
    wait_members(watcher, 2)
    os.kill(victim.pid, signal.SIGKILL)
    gone = watcher.wait_for(lambda e: e["ev"] == "confchg" and e["left"])
    assert gone["left"] == [[1, victim.pid, 5]]      # CPG_REASON_PROCDOWN
    watcher.command("membership")
    assert watcher.wait_for(lambda e: e["ev"] == "membership")["members"] == [[1, watcher.pid]]
