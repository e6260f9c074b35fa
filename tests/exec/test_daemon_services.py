"""Our daemon serves clients: a 3-node ``corosync -f`` cluster on 127.0.0.1-3, each node
with its own ``COROSYNC_IPC_DIR``, and client *processes* speaking libqb IPC to it.

The clients are this file run as a script (``python test_daemon_services.py cpg …``): a
small CPG client on ``corosync.lib.ipc`` with the raw request layouts of
spec/ipc-wire.md §4.2 (it does not depend on the public client modules, which are
developed separately).  It reads commands on stdin and prints one JSON line per event, so
the tests can compare what every member saw:

* ``{"pid": P, "join": E}`` once joined (E = cs_error of JOIN);
* ``{"c": [members, left, joined]}`` per CONFCHG, entries ``[nodeid, pid, reason]``;
* ``{"d": [nodeid, pid, text]}`` per DELIVER (messages over 64 bytes as
  ``"#<len>:<sha1>"``; PARTIAL_DELIVER fragments are reassembled first).

Commands: ``m TEXT`` (one mcast), ``s PREFIX COUNT`` (COUNT mcasts ``PREFIX:i``, at most
WINDOW of them not yet delivered back, as a well-behaved libcpg application would pace
itself), ``big SIZE TAG`` (one SIZE-byte message; PARTIAL_MCAST fragments above the single
request limit, like libcpg), ``leave``, ``hold`` (stop reading events; the stuck client),
``quit``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CPG_JOIN, CPG_LEAVE, CPG_MCAST, CPG_MEMBERSHIP, CPG_PARTIAL = 0, 1, 2, 3, 12
EV_CONFCHG, EV_DELIVER, EV_PARTIAL_DELIVER = 4, 5, 17
CS_OK, CS_TRY_AGAIN, CS_INVALID_PARAM = 1, 6, 7
CMAP_SET, CMAP_DELETE, CMAP_GET, CMAP_TRACK_ADD, EV_CMAP_NOTIFY = 0, 1, 2, 7, 9
WINDOW = 40
#: largest message sent as one MCAST request (40-byte header + message within 1 MiB - 1 KiB)
SINGLE_MAX = 1024 * 1024 - 1024 - 40
FRAGMENT = 512 * 1024


# ----------------------------------------------------------------------------------- client

def _name(group: bytes) -> bytes:
    return struct.pack("<I4x128s", len(group), group)


def _show(msg: bytes) -> str:
    if len(msg) <= 64:
        return msg.decode("utf-8", "replace")
    return f"#{len(msg)}:{hashlib.sha1(msg).hexdigest()}"


class CpgClient:
    """The script side: one connection, one group."""

    def __init__(self, group: bytes) -> None:
        from corosync.lib.ipc import IpcClient, IpcError

        self.IpcError = IpcError
        deadline = time.monotonic() + 20
        while True:
            try:
                self.c = IpcClient.connect("cpg", timeout=10)
                break
            except IpcError as exc:  # not ready yet (EAGAIN) or not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05 if exc.errno in (errno.EAGAIN, errno.ECONNREFUSED) else 0.2)
        self.group = group
        self.pid = os.getpid()
        self.partial: dict[tuple[int, int], bytearray] = {}
        self.own_sent = 0
        self.own_delivered = 0

    def out(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def request(self, msg_id: int, payload: bytes) -> int:
        """A flow-controlled request: retried while the daemon answers TRY_AGAIN."""
        while True:
            _rid, err, _body = self.c.request(msg_id, payload, 10)
            if err != CS_TRY_AGAIN:
                return err
            self.drain(0.02)

    def join(self) -> None:
        err = self.request(CPG_JOIN, _name(self.group) + struct.pack("<I4xI4x", self.pid, 0))
        self.out({"pid": self.pid, "join": err})

    def send_raw(self, message: bytes) -> None:
        while True:
            try:
                self.c.send(message, fc_enable_max=2)
                return
            except self.IpcError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                self.drain(0.01)  # flow control (sync running): keep reading events

    def mcast(self, msg: bytes) -> None:
        if len(msg) <= SINGLE_MAX:
            self.send_raw(struct.pack("<i4xi4xi4xI4xI4x", CPG_MCAST, 40 + len(msg), 0, 2,
                                      len(msg)) + msg)
        else:
            for start in range(0, len(msg), FRAGMENT):
                frag = msg[start:start + FRAGMENT]
                kind = 1 if start == 0 else (3 if start + FRAGMENT >= len(msg) else 2)
                head = struct.pack("<i4xi4xi4xI4xI4xI4xI4x", CPG_PARTIAL, 56 + len(frag), 0,
                                   2, len(msg), len(frag), kind)
                while True:
                    _rid, err, _ = self.c.request_raw(head + frag, 20)
                    if err != CS_TRY_AGAIN:
                        break
                    self.drain(0.02)
                assert err == CS_OK, f"partial mcast error {err}"
        self.own_sent += 1

    def event(self, ev: tuple[int, int, bytes]) -> None:
        eid, _err, body = ev
        if eid == EV_CONFCHG:
            m, j, lft = struct.unpack_from("<I4xI4xI", body, 136)
            ents = [list(struct.unpack_from("<I4xI4xI", body, 160 + 24 * i))
                    for i in range(m + j + lft)]
            self.out({"c": [ents[:m], ents[m:m + lft], ents[m + lft:]]})
        elif eid == EV_DELIVER:
            msglen, nodeid, pid = struct.unpack_from("<I4xI4xI", body, 136)
            self.delivered(nodeid, pid, body[160:160 + msglen])
        elif eid == EV_PARTIAL_DELIVER:
            msglen, fraglen, nodeid, pid, kind = struct.unpack_from("<I4xI4xI4xI4xI", body, 136)
            buf = self.partial.setdefault((nodeid, pid), bytearray())
            buf += body[176:176 + fraglen]
            if kind == 3:
                del self.partial[(nodeid, pid)]
                assert len(buf) == msglen, (len(buf), msglen)
                self.delivered(nodeid, pid, bytes(buf))

    def delivered(self, nodeid: int, pid: int, msg: bytes) -> None:
        if pid == self.pid:
            self.own_delivered += 1
        self.out({"d": [nodeid, pid, _show(msg)]})

    def drain(self, timeout: float) -> None:
        ev = self.c.recv_event(timeout)
        while ev is not None:
            self.event(ev)
            ev = self.c.recv_event(0)

    def stream(self, prefix: str, count: int, commands: "queue.Queue[str | None]") -> None:
        for i in range(count):
            while self.own_sent - self.own_delivered >= WINDOW:
                self.drain(0.05)
            self.mcast(f"{prefix}:{i}".encode())
            if i % 8 == 0:
                self.drain(0)
        self.out({"sent": prefix, "count": count})


def client_main(group: str) -> None:
    commands: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line.rstrip("\n"))
        commands.put(None)

    threading.Thread(target=read_stdin, daemon=True).start()
    cl = CpgClient(group.encode())
    cl.join()
    try:
        while True:
            cl.drain(0.02)
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                continue
            if cmd is None or cmd == "quit":
                break
            verb, _, arg = cmd.partition(" ")
            if verb == "m":
                cl.mcast(arg.encode())
            elif verb == "s":
                prefix, count = arg.split()
                cl.stream(prefix, int(count), commands)
            elif verb == "big":
                size, tag = arg.split()
                body = (tag.encode() * (int(size) // len(tag) + 1))[:int(size)]
                cl.out({"bigsent": _show(body)})
                cl.mcast(body)
            elif verb == "leave":
                cl.out({"leave": cl.request(CPG_LEAVE, _name(cl.group)
                                            + struct.pack("<I4x", cl.pid))})
            elif verb == "hold":
                cl.out({"holding": True})
                while commands.get() not in (None, "quit"):
                    pass
                break
    except cl.IpcError as exc:
        cl.out({"gone": str(exc)})
    cl.c.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "cpg":
        client_main(sys.argv[2])
        sys.exit(0)
    sys.exit("usage: test_daemon_services.py cpg GROUP")


# ------------------------------------------------------------------------------------ tests

from exec_testlib import Cluster, pick_port, wait_until  # noqa: E402  (pytest side only)


class Client:
    """A client process at one node (test side); output lines collected by a thread."""

    def __init__(self, daemon: Any, group: str) -> None:
        env = dict(os.environ, COROSYNC_IPC_DIR=str(daemon.ipc_dir))
        self.nodeid = daemon.nodeid
        self.p = subprocess.Popen([sys.executable, __file__, "cpg", group], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

    def cmd(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    @property
    def pid(self) -> int:
        return self.wait(lambda: [x["pid"] for x in self.lines if "pid" in x], "join")[0]

    def wait(self, pred: Any, what: str, timeout: float = 20.0) -> Any:
        def check() -> Any:
            if self.p.poll() is not None and not pred():
                pytest.fail(f"client at n{self.nodeid} exited: {self.lines[-5:]} "
                            f"{self.p.stderr.read() if self.p.stderr else ''}")
            return pred()
        return wait_until(check, timeout, f"client at n{self.nodeid}: {what} "
                                          f"(last lines {self.lines[-3:]})")

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
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.p.kill()
                self.p.wait(5)


@pytest.fixture
def clients():
    made: list[Client] = []

    def start(daemon: Any, group: str = "g") -> Client:
        c = Client(daemon, group)
        made.append(c)
        return c

    yield start
    for c in made:
        if c.p.poll() is None:
            c.p.kill()
            c.p.wait(5)


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """One 3-node cluster for the tests that do not kill nodes."""
    root = tmp_path_factory.mktemp("svc")
    nodes = [(i, f"127.0.0.{i}") for i in (1, 2, 3)]
    c = Cluster(root, nodes, pick_port([ip for _, ip in nodes]))
    c.start()
    try:
        c.wait_members([1, 2, 3], timeout=20)
        for d in c.daemons.values():
            wait_until(lambda d=d: "Completed service synchronization" in d.log(), 10,
                       f"sync on n{d.nodeid}")
        yield c
    finally:
        c.stop_all()


def _all_alive(c: Cluster) -> None:
    for d in c.daemons.values():
        assert d.alive(), f"n{d.nodeid} died: {d.log()[-3000:]}"


def _is_suffix(short: list, long: list) -> bool:
    return not short or long[len(long) - len(short):] == short


def test_cpg_join_mcast_leave_same_order_and_confchgs_everywhere(ring, clients):
    cs = [clients(ring[n], "order") for n in (1, 2, 3) for _ in range(2)]
    pids = sorted([c.nodeid, c.pid, 0] for c in cs)
    for c in cs:
        c.wait(lambda c=c: c.members() == pids, "all six members")
    assert all(x["join"] == CS_OK for c in cs for x in c.lines if "join" in x)
    per_client = 25
    for i, c in enumerate(cs):
        c.cmd(f"s c{i} {per_client}")
    total = per_client * len(cs)
    for c in cs:
        c.wait(lambda c=c: len(c.delivered()) >= total, f"{total} deliveries", 40)
    orders = [c.delivered() for c in cs]
    assert all(o == orders[0] for o in orders), "delivery order differs between clients"
    assert len(orders[0]) == total
    for i, c in enumerate(cs):  # per sender: every message once, in send order
        mine = [d[2] for d in orders[0] if d[1] == c.pid]
        assert mine == [f"c{i}:{k}" for k in range(per_client)]
    # a later joiner's confchg history is a suffix of an earlier joiner's: one global order
    histories = sorted((c.confchgs() for c in cs), key=len)
    for h in histories:
        assert _is_suffix(h, histories[-1])
    # LEAVE: everyone else sees reason 2, same view
    leaver = cs[3]
    leaver.cmd("leave")
    leaver.wait(lambda: any("leave" in x for x in leaver.lines), "leave answer")
    assert [x["leave"] for x in leaver.lines if "leave" in x] == [CS_OK]
    for c in cs:
        if c is not leaver:
            c.wait(lambda c=c: c.confchgs()[-1][1] == [[leaver.nodeid, leaver.pid, 2]],
                   "leave confchg")
    views = {json.dumps(c.confchgs()[-1]) for c in cs if c is not leaver}
    assert len(views) == 1
    _all_alive(ring)


def test_one_mebibyte_messages(ring, clients):
    sender, receivers = clients(ring[1], "big"), [clients(ring[n], "big") for n in (2, 3)]
    for c in [sender, *receivers]:
        c.wait(lambda c=c: c.members() is not None and len(c.members()) == 3, "3 members")
    sender.cmd(f"big {SINGLE_MAX} single")      # the largest single MCAST request
    sender.cmd(f"big {1024 * 1024} fragmented")  # exactly 1 MiB: PARTIAL_MCAST fragments
    shown = sender.wait(lambda: [x["bigsent"] for x in sender.lines if "bigsent" in x]
                        if sum("bigsent" in x for x in sender.lines) == 2 else None, "sent")
    for c in [sender, *receivers]:
        c.wait(lambda c=c: len(c.delivered()) >= 2, "two big deliveries", 40)
        assert [d[2] for d in c.delivered()] == shown
        assert all(d[:2] == [1, sender.pid] for d in c.delivered())
    _all_alive(ring)


def test_hundred_concurrent_clients(ring):
    from concurrent.futures import ThreadPoolExecutor

    from corosync.lib.ipc import IpcClient

    key = b"totem.cluster_name"
    get = struct.pack("<H6x256sQ", len(key), key, 64)

    def one(i: int) -> Any:
        c = IpcClient.connect("cmap", ipc_dir=str(ring[1 + i % 3].ipc_dir), timeout=20)
        return c

    with ThreadPoolExecutor(20) as pool:
        conns = list(pool.map(one, range(100)))
    try:
        # every connection is open at once; each gets its answer
        for c in conns:
            _rid, err, body = c.request(CMAP_GET, get, 10)
            assert err == CS_OK
            (vlen,) = struct.unpack_from("<Q", body, 0)
            assert body[16:16 + vlen] == b"pytest\0"
    finally:
        for c in conns:
            c.close()
    _all_alive(ring)


def test_client_that_stops_reading_is_cut_off_others_unharmed(ring, clients):
    stuck = clients(ring[2], "slow")
    sender, watcher = clients(ring[1], "slow"), clients(ring[3], "slow")
    for c in (stuck, sender, watcher):
        c.wait(lambda c=c: c.members() is not None and len(c.members()) == 3, "3 members")
    stuck.cmd("hold")
    stuck.wait(lambda: any("holding" in x for x in stuck.lines), "holding")
    # 40 x 512 KiB = 20 MiB of events: more than the 1 MiB ring + 16 MiB per-client backlog
    for i in range(40):
        sender.cmd(f"big {512 * 1024} chunk{i}-")
    watcher.wait(lambda: len(watcher.delivered()) >= 40, "40 deliveries at the watcher", 60)
    # sent back to back, faster than the ring drains: flow control (EAGAIN to the sender),
    # never a lost message
    sent = [x["bigsent"] for x in sender.lines if "bigsent" in x]
    assert [d[2] for d in watcher.delivered()] == sent
    assert "dropped: queue full" not in ring[1].log()
    # the daemon disconnected the stuck client: its peers see it gone (PROCDOWN, reason 5)
    watcher.wait(lambda: any(c[1] == [[2, stuck.pid, 5]] for c in watcher.confchgs()),
                 "stuck client dropped", 20)
    assert f"client pid {stuck.pid} does not read its events" in ring[2].log()
    sender.cmd("m after")
    watcher.wait(lambda: watcher.delivered()[-1][2] == "after", "service goes on")
    _all_alive(ring)


def _raw_setup_connect(path: Path, payload: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return s.recv(100)
    except OSError:
        return b""
    finally:
        s.close()


def test_malformed_ipc_requests_are_refused_and_counted(ring):
    from corosync.lib.ipc import IpcClient

    d = ring[3]
    # garbage on the setup sockets: closed, nothing else
    for service in ("cmap", "cpg"):
        for junk in (b"", b"\xff" * 24, b"x" * 5, struct.pack("<i4xi4x", -1, 1 << 30) + b"\0" * 8):
            assert _raw_setup_connect(d.ipc_dir / service, junk) == b""
    cmap = IpcClient.connect("cmap", ipc_dir=str(d.ipc_dir), timeout=10)
    cpg = IpcClient.connect("cpg", ipc_dir=str(d.ipc_dir), timeout=10)
    try:
        bad = [
            (cmap, 77, b""),                   # unknown request id
            (cmap, CMAP_GET, b"\x01"),         # truncated GET
            (cmap, CMAP_SET, b"\0" * 10),      # truncated SET
            (cmap, CMAP_SET, struct.pack("<H6x256sQB7x", 300, b"k" * 256, 5, 6) + b"x"),
            (cpg, 99, b"junk"),                # unknown request id
            (cpg, CPG_JOIN, b"\0" * 3),        # truncated JOIN
            (cpg, CPG_JOIN, struct.pack("<I4x128sI4xI4x", 4000, b"g", 1, 0)),  # name too long
            (cpg, CPG_MEMBERSHIP, b""),        # truncated MEMBERSHIP
        ]
        for conn, msg_id, payload in bad:
            _rid, err, _body = conn.request(msg_id, payload, 10)
            assert err != CS_OK, (msg_id, payload[:16])
        key = b"totem.cluster_name"
        _rid, err, _ = cmap.request(CMAP_GET, struct.pack("<H6x256sQ", len(key), key, 64), 10)
        assert err == CS_OK  # the same connection still works
    finally:
        cmap.close()
        cpg.close()
    _all_alive(ring)


def test_cmap_track_sees_set_modify_delete(ring):
    from corosync.lib.ipc import IpcClient

    d = ring[2]
    c = IpcClient.connect("cmap", ipc_dir=str(d.ipc_dir), timeout=10)
    try:
        prefix = b"testing."
        _rid, err, body = c.request(CMAP_TRACK_ADD, struct.pack(
            "<H6x256si4xQ", len(prefix), prefix, 4 | 1 | 2 | 8, 4242), 10)
        assert err == CS_OK

        def set_u32(key: bytes, value: int) -> None:
            _rid, err, _ = c.request(CMAP_SET, struct.pack("<H6x256sQB7x", len(key), key, 4, 6)
                                     + struct.pack("<I", value), 10)
            assert err == CS_OK

        set_u32(b"testing.a", 1)
        set_u32(b"testing.a", 2)
        set_u32(b"testing.a", 2)           # equal value: no event
        set_u32(b"other.key", 9)           # outside the prefix: no event
        _rid, err, _ = c.request(CMAP_DELETE, struct.pack("<H6x256s", 9, b"testing.a"), 10)
        assert err == CS_OK
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 3 and time.monotonic() < deadline:
            ev = c.recv_event(0.2)
            if ev is None:
                continue
            eid, _err, b = ev
            assert eid == EV_CMAP_NOTIFY
            cookie, klen = struct.unpack_from("<QH", b, 0)
            key = b[8 + 8:8 + 8 + klen]
            event, nt, ot, nl, ol = struct.unpack_from("<i4xB7xB7xQQ", b, 272)
            new = b[312:312 + nl]
            old = b[312 + nl:312 + nl + ol]
            events.append((cookie, key, event, new, old))
        assert events == [
            (4242, b"testing.a", 4, struct.pack("<I", 1), b""),
            (4242, b"testing.a", 2, struct.pack("<I", 2), struct.pack("<I", 1)),
            (4242, b"testing.a", 1, b"", struct.pack("<I", 2)),
        ]
        assert c.recv_event(0.3) is None
    finally:
        c.close()


def test_our_tools_against_our_daemon(ring, clients):
    cmapctl = pytest.importorskip("corosync.tools.cmapctl")
    cpgtool = pytest.importorskip("corosync.tools.cpgtool")
    d = ring[1]
    env = dict(os.environ, COROSYNC_IPC_DIR=str(d.ipc_dir))
    member = clients(d, "tooling")
    member.wait(lambda: member.members() is not None, "joined")
    out = subprocess.run([sys.executable, "-m", cmapctl.__name__, "-g", "totem.cluster_name"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout == "totem.cluster_name (str) = pytest\n", out
    out = subprocess.run([sys.executable, "-m", cmapctl.__name__, "runtime.members"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert "runtime.members.3.status (str) = joined" in out.stdout, out
    out = subprocess.run([sys.executable, "-m", cpgtool.__name__, "-d", ","], env=env,
                         capture_output=True, text=True, timeout=30)
    if (d.ipc_dir / "cfg").exists():
        assert f"tooling,{member.pid},1" in out.stdout.splitlines(), out
    else:  # corosync-cpgtool needs the cfg service (node addresses); not served yet
        assert (out.returncode, out.stdout) == (1, ""), out
        assert out.stderr.startswith("Could not initialize corosync configuration API"), out
    out = subprocess.run([sys.executable, "-m", cpgtool.__name__, "-n"], env=env,
                         capture_output=True, text=True, timeout=30)
    if (d.ipc_dir / "cfg").exists():
        assert "tooling" in out.stdout.splitlines(), out


def test_node_killed_mid_stream_gives_nodedown_and_loses_nothing(tmp_path, clients):
    nodes = [(i, f"127.0.0.{i}") for i in (1, 2, 3)]
    c = Cluster(tmp_path, nodes, pick_port([ip for _, ip in nodes]))
    c.start()
    try:
        c.wait_members([1, 2, 3], timeout=20)
        cs = {n: clients(c[n], "kill") for n in (1, 2, 3)}
        for cl in cs.values():
            cl.wait(lambda cl=cl: cl.members() is not None and len(cl.members()) == 3,
                    "3 members")
        for n, cl in cs.items():
            cl.cmd(f"s n{n} 400")
        victim = cs[3]
        cs[1].wait(lambda: len(cs[1].delivered()) > 150, "stream under way", 30)
        c[3].kill()
        survivors = [cs[1], cs[2]]
        for cl in survivors:
            cl.wait(lambda cl=cl: any(ch[1] == [[3, victim.pid, 3]] for ch in cl.confchgs()),
                    "NODEDOWN confchg", 20)
            cl.wait(lambda cl=cl: sum(1 for d in cl.delivered() if d[1] != victim.pid) >= 800,
                    "the survivors' 800 messages", 60)
        a, b = (cl.delivered() for cl in survivors)
        n = min(len(a), len(b))
        assert a[:n] == b[:n] and len(a) == len(b), "survivors disagree on the order"
        for n_, cl in ((1, cs[1]), (2, cs[2])):
            mine = [d[2] for d in a if d[1] == cl.pid]
            assert mine == [f"n{n_}:{k}" for k in range(400)], "lost or reordered"
        from_victim = [d[2] for d in a if d[1] == victim.pid]
        assert from_victim == [f"n3:{k}" for k in range(len(from_victim))]
        # the NODEDOWN confchg sits at the same place in both streams (virtual synchrony)
        def cut(cl: Client) -> int:
            seen = 0
            for x in cl.lines:
                if "d" in x:
                    seen += 1
                elif "c" in x and x["c"][1] == [[3, victim.pid, 3]]:
                    return seen
            raise AssertionError("no NODEDOWN confchg")
        assert cut(cs[1]) == cut(cs[2])
        last_view = [sorted(cl.confchgs()[-1][0]) for cl in survivors]
        assert last_view[0] == last_view[1] == sorted([[1, cs[1].pid, 0], [2, cs[2].pid, 0]])
        for n_ in (1, 2):
            assert c[n_].alive()
    finally:
        c.stop_all()


def test_sigterm_disconnects_clients_cleans_up_and_leaves(tmp_path, clients):
    nodes = [(i, f"127.0.0.{i}") for i in (1, 2)]
    c = Cluster(tmp_path, nodes, pick_port([ip for _, ip in nodes]))
    c.start()
    try:
        c.wait_members([1, 2], timeout=20)
        a, b = clients(c[1], "bye"), clients(c[2], "bye")
        for cl in (a, b):
            cl.wait(lambda cl=cl: cl.members() is not None and len(cl.members()) == 2, "2")
        pid2 = c[2].pid
        shm = [e for e in os.listdir("/dev/shm") if e.startswith(f"qb-{pid2}-")]
        assert shm, "an SHM client should have a connection directory"
        assert (c[2].ipc_dir / "cpg").exists()
        assert c[2].stop() == 0
        b.wait(lambda: any("gone" in x for x in b.lines), "client told the server is gone")
        # node 2's process is gone for node 1: PROCDOWN if its PROCLEAVE made it out before
        # the LEAVE, NODEDOWN otherwise (both are what corosync can report)
        a.wait(lambda: a.confchgs()[-1][1] in ([[2, b.pid, 5]], [[2, b.pid, 3]]),
               "node 2's process left")
        assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"qb-{pid2}-")]
        assert not (c[2].ipc_dir / "cpg").exists() and not (c[2].ipc_dir / "cmap").exists()
        c.wait_members([1], ids=[1])
        assert "Failed to receive the leave message" not in c[1].log()
        log2 = c[2].log()
        assert "Corosync Cluster Engine exiting normally" in log2
        assert log2.index("[SERV  ] Unloading all Corosync service engines.") < log2.index(
            "[SERV  ] Service engine unloaded: corosync configuration map access") < log2.index(
            "exiting normally")
    finally:
        c.stop_all()


def test_ipc_accept_policy_follows_cmap_uidgid():
    from corosync.exec.cmap import CmapStore, CmapType
    from corosync.exec.main import uidgid_auth

    store = CmapStore()
    allowed = uidgid_auth(store)
    me = os.geteuid()
    other = 4242 if me != 4242 else 4343
    assert allowed(1, 0, other) and allowed(1, other, 0) and allowed(1, me, other)
    assert not allowed(1, other, other)
    store.set(f"uidgid.uid.{other}", 1, CmapType.UINT8)       # as pacemakerd does
    assert allowed(1, other, other)
    store.set(f"uidgid.uid.{other}", 1, CmapType.UINT32)      # must be u8 1
    assert not allowed(1, other, other)
    store.delete(f"uidgid.uid.{other}")
    store.set(f"uidgid.config.gid.{other}", 1, CmapType.UINT8)  # from uidgid { gid: }
    assert allowed(1, 12345, other) and not allowed(1, other, 12345)
    store.set(f"uidgid.config.gid.{other}", 0, CmapType.UINT8)
    assert not allowed(1, 12345, other)


async def test_service_layer_in_process_ready_timers_and_stop(tmp_path, monkeypatch):
    """exec/main.py's ServiceLayer driven in this trio loop: IPC servers listen (refusing
    with EAGAIN) before the first sync, serve after it; service timers fire once unless
    deleted; stop() disconnects clients and removes the sockets."""
    import io

    import trio

    from corosync.exec.cmap import CmapStore
    from corosync.exec.config.model import load_config
    from corosync.exec.log import CorosyncLog
    from corosync.exec.main import ServiceLayer
    from corosync.exec.node import Node
    from corosync.exec.transport import make_transport
    from corosync.lib.ipc import IpcClient, IpcError
    from exec_testlib import node_config

    ipc_dir = tmp_path / "ipc"
    monkeypatch.setenv("COROSYNC_IPC_DIR", str(ipc_dir))
    (tmp_path / "state").mkdir()
    text = node_config(nodeid=1, nodes=[(1, "127.0.0.1")], port=pick_port(), directory=tmp_path)
    cfg = load_config(str(tmp_path / "corosync.conf"), text=text, local_addrs=["127.0.0.1"])
    log = CorosyncLog(stderr=io.StringIO())
    log.configure(cfg.logging)
    cmap = CmapStore()
    cmap.load_config(cfg)
    node = Node(cfg, log=log, transport=make_transport(cfg), cmap=cmap,
                stats_cmap=CmapStore())
    layer = ServiceLayer(node, cmap, node.stats_cmap, log)

    # Hold "ready" back after the first sync until we let it through.
    release = trio.Event()
    real_ready = layer._ready

    def held() -> None:
        async def later() -> None:
            await release.wait()
            real_ready()
        layer._nursery.start_soon(later)

    layer._ready = held  # type: ignore[method-assign]
    fired: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with trio.fail_after(10):
            while layer.host.members != (1,):
                await trio.sleep(0.01)
        assert {s.service for s in layer.servers} >= {"cmap", "cpg"}
        assert (ipc_dir / "cmap").exists() and not any(s.ready for s in layer.servers)
        with pytest.raises(IpcError) as refused:
            await trio.to_thread.run_sync(lambda: IpcClient.connect("cmap", timeout=5))
        assert refused.value.errno == errno.EAGAIN
        release.set()
        with trio.fail_after(10):
            await layer.first_sync_done.wait()
        assert all(s.ready for s in layer.servers)
        client = await trio.to_thread.run_sync(lambda: IpcClient.connect("cmap", timeout=5))
        key = b"totem.cluster_name"
        _rid, err, _ = await trio.to_thread.run_sync(
            lambda: client.request(CMAP_GET, struct.pack("<H6x256sQ", len(key), key, 64), 5))
        assert err == CS_OK
        layer.host.timer_add(30, lambda: fired.append("a"))
        gone = layer.host.timer_add(30, lambda: fired.append("b"))
        layer.host.timer_del(gone)
        with trio.fail_after(5):
            while not fired:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert fired == ["a"]
        node.stop()
        with trio.fail_after(10):
            await node.wait_stopped()
    assert not (ipc_dir / "cmap").exists() and not (ipc_dir / "cpg").exists()
    with pytest.raises(IpcError):
        client.recv_event(1)
    client.close()


def test_public_client_api_against_our_daemons(ring):
    """corosync.cpg / corosync.cmap (the public API) against two of our nodes: join, agreed
    delivery to both, membership, local node id, iteration; cmap tracking."""
    from corosync import cmap as pcmap
    from corosync import cpg as pcpg

    got: dict[int, list] = {1: [], 3: []}
    handles = {}
    for n in (1, 3):
        handles[n] = pcpg.Cpg.initialize(
            deliver=lambda h, g, nodeid, pid, msg, n=n: got[n].append((nodeid, pid, msg)),
            confchg=lambda h, g, members, left, joined: None, ipc_dir=ring[n].ipc_dir)
    try:
        for n, h in handles.items():
            deadline = time.monotonic() + 10
            while True:
                try:
                    h.join(b"public api")
                    break
                except pcpg.CsError as exc:  # TRY_AGAIN while a sync runs
                    assert time.monotonic() < deadline, exc
                    time.sleep(0.05)
            assert h.local_get() == n

        def members() -> list:
            return [(a.nodeid, a.pid) for a in handles[1].membership_get(b"public api")]

        wait_until(lambda: len(members()) == 2, 10, "two members of the group")
        assert members() == [(1, os.getpid()), (3, os.getpid())]
        handles[3].mcast_joined(pcpg.Guarantee.AGREED, b"via ", b"corosync.cpg")

        def both() -> bool:
            for h in handles.values():
                h.dispatch(pcpg.DispatchFlags.ALL)
            return len(got[1]) >= 1 and len(got[3]) >= 1

        wait_until(both, 10, "delivery on both nodes")
        assert got[1] == got[3] == [(3, os.getpid(), b"via corosync.cpg")]
        groups = [d.group for d in handles[1].iteration(pcpg.IterationType.NAME_ONLY)]
        assert b"public api" in groups
    finally:
        for h in handles.values():
            h.finalize()

    notes: list = []
    c = pcmap.Cmap.initialize(ipc_dir=ring[2].ipc_dir)
    try:
        c.track_add("public.", pcmap.TrackType.ADD | pcmap.TrackType.MODIFY
                    | pcmap.TrackType.DELETE | pcmap.TrackType.PREFIX, notes.append)
        c.set_uint32("public.x", 7)
        c.set_uint32("public.x", 8)
        c.delete("public.x")
        wait_until(lambda: c.dispatch(pcmap.DispatchFlags.ALL) is not None and len(notes) >= 3,
                   10, "three notifications")
        assert [(n.event, n.key) for n in notes] == [
            (pcmap.TrackType.ADD, "public.x"), (pcmap.TrackType.MODIFY, "public.x"),
            (pcmap.TrackType.DELETE, "public.x")]
        assert notes[1].new_value.value == 8 and notes[1].old_value.value == 7
    finally:
        c.finalize()


def test_ipc_name_taken_is_fatal_with_exit_13(tmp_path):
    nodes = [(1, "127.0.0.1")]
    c = Cluster(tmp_path, nodes, pick_port(["127.0.0.1"]))
    d = c[1]
    (d.ipc_dir / "cmap").mkdir(parents=True)  # not a socket: the server cannot bind there
    d.start()
    try:
        assert d.proc is not None and d.proc.wait(30) == 13
        log = d.log()
        assert f"Can't start the IPC server cmap at '{d.ipc_dir / 'cmap'}'" in log
        assert "Corosync Cluster Engine exiting with status 13." in log
    finally:
        d.stop()
