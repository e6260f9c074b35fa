"""The IPC (lib) side of cmap and cpg through ServiceHost.ipc_handlers, with a fake
connection: request/response ids, sizes and error codes of spec/ipc-wire.md §4.1/§4.2,
flow control during sync and with a full queue, malformed requests."""

from __future__ import annotations

import struct

import pytest
from svc_helpers import FakeConn

from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.host import ServiceHost
from corosync.exec.service import CsError
from corosync.exec.totem.events import ConfChg, ConfChgKind, PgDeliver
from corosync.exec.totem.wire import RingId
from corosync.services import cmap, cpg
from corosync.services.cmap import CmapService
from corosync.services.cpg import CpgService

OK = CsError.OK


#: the services of the tests that predate cfg/votequorum/quorum in default_services()
CMAP_CPG = [CmapService, CpgService]


class Env:
    def __init__(self, nodeid: int = 1, in_sync: bool = False) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.queue_ok = True
        self.store = CmapStore()
        self.stats = CmapStore()
        self.host = ServiceHost(nodeid, self.store, self._mcast, send_ok=lambda n: self.queue_ok,
                                stats_cmap=self.stats)
        if not in_sync:
            self.host.sync_in_process = False

    def _mcast(self, group: bytes, message: bytes, guarantee: int) -> None:
        if not self.queue_ok:
            raise RuntimeError("queue full")
        self.sent.append((group, message))

    def connect(self, service: str, pid: int = 42) -> FakeConn:
        conn = FakeConn(pid=pid)
        assert self.host.ipc_handlers[service].on_connect(conn)
        return conn

    def req(self, service: str, conn: FakeConn, msg_id: int, payload: bytes):
        self.host.ipc_handlers[service].on_request(conn, msg_id, payload)
        return conn.responses.pop() if conn.responses else None

    def loop_back(self) -> None:
        """Deliver what we sent to ourselves (a one-node ring)."""
        while self.sent:
            group, msg = self.sent.pop(0)
            self.host.on_deliver(PgDeliver(self.host.nodeid, (group,), msg, RingId(1, 1)))


def name(key: str) -> bytes:
    raw = key.encode()
    return struct.pack("<H6x256s", len(raw), raw)


def cmap_set(env, conn, key, t: CmapType, raw: bytes):
    return env.req("cmap", conn, cmap.REQ_SET, name(key) + struct.pack("<QB7x", len(raw), t) + raw)


def cmap_get(env, conn, key, want: int = 16):
    return env.req("cmap", conn, cmap.REQ_GET, name(key) + struct.pack("<Q", want))


# ------------------------------------------------------------------------------ cmap
def test_cmap_set_get_typed_and_sizes():
    env = Env()
    c = env.connect("cmap")
    assert cmap_set(env, c, "test.u32", CmapType.UINT32, struct.pack("<I", 7)) == (0, b"", OK)
    assert env.store.get("test.u32") == 7
    mid, p, err = cmap_get(env, c, "test.u32")
    assert (mid, err, len(p) + 24) == (2, OK, 40 + 16)
    assert struct.unpack_from("<QB", p) == (4, CmapType.UINT32) and p[16:20] == b"\x07\0\0\0"
    # strings: stored with NUL; length query with 0, then exact
    assert cmap_set(env, c, "test.s", CmapType.STRING, b"ipclab")[2] == OK
    mid, p, err = cmap_get(env, c, "test.s", 0)
    assert (len(p) + 24, struct.unpack_from("<QB", p)) == (40, (7, CmapType.STRING))
    assert cmap_get(env, c, "test.s", 7)[1][16:] == b"ipclab\0"
    assert cmap_get(env, c, "test.s", 3) == (2, bytes(16), CsError.ERR_INVALID_PARAM)
    assert cmap_get(env, c, "no.such.key") == (2, bytes(16), CsError.ERR_NOT_EXIST)
    # wrong size for a fixed type, too long value, bad type, value_len beyond NUL
    assert cmap_set(env, c, "test.x", CmapType.UINT16, b"abc")[2] == CsError.ERR_INVALID_PARAM
    assert cmap_set(env, c, "test.x", CmapType.BINARY, bytes(16385))[2] == CsError.ERR_INVALID_PARAM
    assert cmap_set(env, c, "test.x", 13, b"a")[2] == CsError.ERR_INVALID_PARAM
    assert cmap_set(env, c, "test.x", CmapType.STRING, b"ab\0\0")[2] == CsError.ERR_INVALID_PARAM
    assert cmap_set(env, c, "a", CmapType.UINT8, b"\1")[2] == CsError.ERR_NAME_TOO_LONG
    for t, raw, value in ((CmapType.INT8, b"\xff", -1), (CmapType.DOUBLE, struct.pack("<d", 1.5), 1.5),
                          (CmapType.FLOAT, struct.pack("<f", 0.5), 0.5),
                          (CmapType.BINARY, b"\0\1", b"\0\1"), (CmapType.INT64, struct.pack("<q", -5), -5)):
        assert cmap_set(env, c, "test.t", t, raw)[2] == OK
        assert env.store.get("test.t") == value
        assert cmap_get(env, c, "test.t", len(raw))[1][16:] == raw


def test_cmap_read_only_delete_adjust():
    env = Env()
    env.store.set("totem.cluster_name", "x", CmapType.STRING)
    env.store.set("nodelist.node.0.nodeid", 1, CmapType.UINT32)
    c = env.connect("cmap")
    assert cmap_set(env, c, "totem.cluster_name", CmapType.STRING, b"y")[2] == CsError.ERR_ACCESS
    assert env.req("cmap", c, cmap.REQ_DELETE, name("nodelist.node.0.nodeid"))[2] == CsError.ERR_ACCESS
    assert env.req("cmap", c, cmap.REQ_ADJUST_INT, name("nodelist.node.0.nodeid")
                   + struct.pack("<i", 1))[2] == CsError.ERR_ACCESS
    assert cmap_set(env, c, "test.n", CmapType.UINT8, b"\xff")[2] == OK
    assert env.req("cmap", c, cmap.REQ_ADJUST_INT, name("test.n") + struct.pack("<i", 1)) == (3, b"", OK)
    assert env.store.get("test.n") == 0  # wraps
    assert env.req("cmap", c, cmap.REQ_ADJUST_INT, name("test.n") + struct.pack("<i", -1))[2] == OK
    assert env.store.get("test.n") == 255
    assert env.req("cmap", c, cmap.REQ_DELETE, name("test.n")) == (1, b"", OK)
    assert env.req("cmap", c, cmap.REQ_DELETE, name("test.n"))[2] == CsError.ERR_NOT_EXIST


def test_cmap_iteration_prefix_and_handles():
    env = Env()
    for k in ("a.b.c", "a.b.d", "a.c.e", "b.x.y"):
        env.store.set(k, 1, CmapType.UINT8)
    c = env.connect("cmap")
    mid, p, err = env.req("cmap", c, cmap.REQ_ITER_INIT, name("a.b."))
    assert (mid, err, len(p)) == (4, OK, 8)
    (handle,) = struct.unpack("<Q", p)
    keys = []
    while True:
        mid, p, err = env.req("cmap", c, cmap.REQ_ITER_NEXT, struct.pack("<Q", handle))
        assert mid == 5 and len(p) + 24 == 304
        if err == CsError.ERR_NO_SECTIONS:
            break
        keys.append(cmap.decode_name(p))
        assert struct.unpack_from("<QB", p, 264) == (1, CmapType.UINT8)
    assert keys == ["a.b.c", "a.b.d"]
    assert env.req("cmap", c, cmap.REQ_ITER_NEXT, struct.pack("<Q", 999))[2] == CsError.ERR_BAD_HANDLE
    # SET_CURRENT_MAP is refused while a handle is open (response id 10)
    assert env.req("cmap", c, cmap.REQ_SET_CURRENT_MAP, struct.pack("<i", 1)) == (10, b"", CsError.ERR_BUSY)
    assert env.req("cmap", c, cmap.REQ_ITER_FINALIZE, struct.pack("<Q", handle)) == (6, b"", OK)
    assert env.req("cmap", c, cmap.REQ_SET_CURRENT_MAP, struct.pack("<i", 7))[2] == CsError.ERR_NOT_EXIST
    # the stats map: readable, not writable
    env.stats.set("stats.srp.orf_token_tx", 3, CmapType.UINT64)
    assert env.req("cmap", c, cmap.REQ_SET_CURRENT_MAP, struct.pack("<i", 1)) == (10, b"", OK)
    assert cmap_get(env, c, "stats.srp.orf_token_tx", 8)[1][16:] == struct.pack("<Q", 3)
    assert cmap_set(env, c, "stats.x.y", CmapType.UINT8, b"\1")[2] == CsError.ERR_ACCESS
    # iteration with an empty prefix = every key (in the selected map)
    p = env.req("cmap", c, cmap.REQ_ITER_INIT, name(""))[1]
    nxt = env.req("cmap", c, cmap.REQ_ITER_NEXT, p)
    assert cmap.decode_name(nxt[1]) == "stats.srp.orf_token_tx"


def test_cmap_track_events_and_cleanup():
    env = Env()
    c = env.connect("cmap")
    res = env.req("cmap", c, cmap.REQ_TRACK_ADD, name("test.") + struct.pack("<i4xQ", 1 | 2 | 4 | 8, 77))
    assert res[0] == 7 and res[2] == OK
    (th,) = struct.unpack("<Q", res[1])
    cmap_set(env, c, "test.k", CmapType.STRING, b"v1")
    cmap_set(env, c, "test.k", CmapType.STRING, b"v1")  # same value: no event
    cmap_set(env, c, "test.k", CmapType.STRING, b"v22")
    env.req("cmap", c, cmap.REQ_DELETE, name("test.k"))
    cmap_set(env, c, "other.k", CmapType.UINT8, b"\1")  # outside the prefix
    evs = [e for e in c.events if e[0] == cmap.RES_NOTIFY]
    decoded = [cmap.NOTIFY.unpack_from(p) for _i, p, _e in evs]
    assert [(d[0], d[2], d[3], d[4], d[5], d[6]) for d in decoded] == [
        (77, 4, 11, 0, 3, 0), (77, 2, 11, 11, 4, 3), (77, 1, 0, 11, 0, 4)]
    assert [len(p) + 24 for _i, p, _e in evs] == [336 + 3, 336 + 7, 336 + 4]
    assert evs[1][1][312:] == b"v22\0v1\0"
    # invalid flags
    assert env.req("cmap", c, cmap.REQ_TRACK_ADD, name("x.y.z") + struct.pack("<i4xQ", 16, 1))[2] \
        == CsError.ERR_INVALID_PARAM
    assert env.req("cmap", c, cmap.REQ_TRACK_DELETE, struct.pack("<Q", th)) == (8, struct.pack("<Q", 77), OK)
    assert env.req("cmap", c, cmap.REQ_TRACK_DELETE, struct.pack("<Q", th))[2] == CsError.ERR_BAD_HANDLE
    # tracks die with the connection
    env.req("cmap", c, cmap.REQ_TRACK_ADD, name("") + struct.pack("<i4xQ", 4 | 8, 5))
    env.host.ipc_handlers["cmap"].on_disconnect(c)
    n = len(c.events)
    env.store.set("test.after", 1, CmapType.UINT8)
    assert len(c.events) == n


def test_cmap_config_version_sync_and_mismatch_shutdown():
    env = Env(nodeid=1, in_sync=True)
    env.store.set("totem.config_version", 3, CmapType.UINT64)
    env.sent.clear()  # the tracker announced the version (NEW_CONFIG_VERSION)
    svc = env.host.services[0]
    env.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, (1,), (), (), RingId(1, 4)))
    env.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1, 2), (), (2,), RingId(1, 4)))
    peer = cmap.encode_cmap_mcast(0, [cmap.McastItem("totem.config_version", 8, struct.pack("<Q", 4))])
    svc._exec_mcast(peer, 2)
    assert env.store.get("runtime.members.2.config_version") == 4
    svc.sync_activate()
    assert env.host.shutdown_requested == "config version mismatch"


# ------------------------------------------------------------------------------ cpg
def join_payload(group: bytes, pid: int, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<I4x128sI4xI4x", len(group) if length is None else length, group, pid, flags)


def test_cpg_join_errors_and_states():
    env = Env()
    c = env.connect("cpg", 10)
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 10)) == (0, b"", OK)
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 10))[2] == CsError.ERR_EXIST
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"h", 11))[2] == CsError.ERR_EXIST
    assert env.req("cpg", c, cpg.REQ_LEAVE, cpg.encode_name(b"g") + struct.pack("<I4x", 10))[2] \
        == CsError.ERR_BUSY  # join not delivered yet
    c2 = env.connect("cpg", 12)
    assert env.req("cpg", c2, cpg.REQ_JOIN, join_payload(b"x" * 129, 12, length=129))[2] \
        == CsError.ERR_NAME_TOO_LONG
    assert env.req("cpg", c2, cpg.REQ_LEAVE, cpg.encode_name(b"g") + struct.pack("<I4x", 12))[2] \
        == CsError.ERR_NOT_EXIST
    env.loop_back()
    assert [e[0] for e in c.events] == [cpg.RES_CONFCHG]
    assert env.req("cpg", c, cpg.REQ_LEAVE, cpg.encode_name(b"g") + struct.pack("<I4x", 10)) == (1, b"", OK)
    # leave in flight: the leaving connection still holds pid/group → EXIST
    c3 = env.connect("cpg", 10)
    assert env.req("cpg", c3, cpg.REQ_JOIN, join_payload(b"g", 10))[2] == CsError.ERR_EXIST
    env.loop_back()
    assert env.req("cpg", c3, cpg.REQ_JOIN, join_payload(b"g", 10))[2] == OK
    # after its leave was delivered, the first connection may join again
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 99))[2] == OK
    env.loop_back()
    # a dead client's PROCDOWN leave not yet delivered: same pid/group → TRY_AGAIN
    env.host.ipc_handlers["cpg"].on_disconnect(c3)
    c4 = env.connect("cpg", 10)
    assert env.req("cpg", c4, cpg.REQ_JOIN, join_payload(b"g", 10))[2] == CsError.ERR_TRY_AGAIN
    env.loop_back()
    assert env.req("cpg", c4, cpg.REQ_JOIN, join_payload(b"g", 10))[2] == OK
    lefts = []
    for i, p, _ in c.events:
        m, j, lft = struct.unpack_from("<I4xI4xI", p, 136)
        if i == cpg.RES_CONFCHG and lft:
            lefts.append(struct.unpack_from("<I4xI4xI", p, 160 + 24 * m))
    assert lefts[-1] == (1, 10, cpg.REASON_PROCDOWN)  # c (pid 99) saw c3's process die


def test_cpg_local_get_membership_iteration():
    env = Env(nodeid=3)
    conns = []
    for pid, group in ((5, b"b"), (4, b"a"), (6, b"b"), (7, b"a")):
        conn = env.connect("cpg", pid)
        env.req("cpg", conn, cpg.REQ_JOIN, join_payload(group, pid))
        conns.append(conn)
    env.loop_back()
    c = conns[0]
    assert env.req("cpg", c, cpg.REQ_LOCAL_GET, b"") == (7, struct.pack("<I4x", 3), OK)
    mid, p, err = env.req("cpg", c, cpg.REQ_MEMBERSHIP, cpg.encode_name(b"b"))
    assert (mid, err, len(p) + 24) == (3, OK, 9248)
    assert struct.unpack_from("<I4xI4xI4xI4xI4xI", p, 0)[:5] == (2, 3, 5, 0, 3)

    def iterate(itype: int, group: bytes = b"") -> list[tuple[bytes, int, int]]:
        mid, p, err = env.req("cpg", c, cpg.REQ_ITER_INIT, cpg.encode_name(group)
                              + struct.pack("<I", itype))
        assert (mid, err) == (9, OK)
        out = []
        while True:
            mid, q, err = env.req("cpg", c, cpg.REQ_ITER_NEXT, p)
            assert mid == 10 and len(q) + 24 == 168
            if err == CsError.ERR_NO_SECTIONS:
                break
            out.append((cpg.decode_name(q, 0),) + struct.unpack_from("<II", q, 136))
        assert env.req("cpg", c, cpg.REQ_ITER_FINALIZE, p) == (11, b"", OK)
        return out

    # real nodes' "grouped by name" copy: first entry of a group, then later ones reversed
    assert iterate(cpg.ITER_ALL) == [(b"b", 3, 5), (b"b", 3, 6), (b"a", 3, 4), (b"a", 3, 7)]
    assert iterate(cpg.ITER_NAME_ONLY) == [(b"b", 0, 0), (b"a", 0, 0)]  # new names go first
    assert iterate(cpg.ITER_ONE_GROUP, b"a") == [(b"a", 3, 4), (b"a", 3, 7)]
    assert env.req("cpg", c, cpg.REQ_ITER_NEXT, struct.pack("<Q", 4242))[2] == CsError.ERR_LIBRARY
    assert env.req("cpg", c, cpg.REQ_FINALIZE, b"") == (12, b"", OK)
    assert env.req("cpg", c, cpg.REQ_ZC_ALLOC, bytes(136))[2] == CsError.ERR_NOT_SUPPORTED


def test_cpg_model_v1_initial_totem_confchg_and_partial():
    env = Env(nodeid=1, in_sync=True)
    env.host.on_confchg(ConfChg(ConfChgKind.TRANSITIONAL, (1,), (), (), RingId(1, 4)))
    env.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (), RingId(1, 4)))
    env.loop_back()
    assert not env.host.sync_in_process
    c = env.connect("cpg", 8)
    env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 8, cpg.MODEL_V1_DELIVER_INITIAL_TOTEM_CONF))
    env.loop_back()
    assert [e[0] for e in c.events] == [cpg.RES_CONFCHG, cpg.RES_TOTEM_CONFCHG]
    totem = c.events[1][1]
    assert len(totem) + 24 == 48 + 4 and struct.unpack_from("<I4xQII", totem) == (1, 4, 1, 1)
    # PARTIAL_MCAST: answered (id 18), delivered as event 17
    frag = b"x" * 10
    body = bytes(8) + struct.pack("<I4xI4xI4xI4x", 2, 30, len(frag), 1) + frag
    assert env.req("cpg", c, cpg.REQ_PARTIAL_MCAST, body) == (18, b"", OK)
    env.loop_back()
    ev = c.events[-1]
    assert ev[0] == cpg.RES_PARTIAL_DELIVER and len(ev[1]) + 24 == 200 + 10
    assert struct.unpack_from("<I4xI4xI4xI4xI", ev[1], 136) == (30, 10, 1, 8, 1)


def test_flow_control_during_sync_and_full_queue():
    env = Env(in_sync=True)  # never synced yet: corosync starts "in sync"
    c = env.connect("cpg", 9)
    assert c.fc_level == 2
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 9)) == (0, b"", CsError.ERR_TRY_AGAIN)
    # not flow controlled: answered during sync
    assert env.req("cpg", c, cpg.REQ_LOCAL_GET, b"")[2] == OK
    # MCAST is never answered: dropped and counted
    assert env.req("cpg", c, cpg.REQ_MCAST, bytes(8) + struct.pack("<I4xI4x", 2, 1) + b"x") is None
    assert env.host.stats.ipc_dropped == 1
    env.host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (), RingId(1, 8)))
    env.loop_back()
    assert not env.host.sync_in_process and c.fc_level == 0
    env.queue_ok = False
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 9))[2] == CsError.ERR_TRY_AGAIN
    env.queue_ok = True
    assert env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", 9))[2] == OK


@pytest.mark.parametrize("service,msg_id,payload", [
    ("cpg", cpg.REQ_JOIN, b"short"), ("cpg", cpg.REQ_MEMBERSHIP, b""),
    ("cpg", cpg.REQ_ITER_NEXT, b"\1"), ("cpg", 77, b""), ("cmap", cmap.REQ_GET, bytes(10)),
    ("cmap", cmap.REQ_SET, name("a.b.c") + struct.pack("<QB7x", 100, 7) + b"xy"),
    ("cmap", cmap.REQ_TRACK_ADD, bytes(5)), ("cmap", 55, b"")])
def test_malformed_requests_get_invalid_param(service, msg_id, payload):
    env = Env()
    c = env.connect(service)
    res = env.req(service, c, msg_id, payload)
    if service == "cmap" and msg_id == cmap.REQ_SET:
        assert res == (0, b"", CsError.ERR_INVALID_PARAM)  # value_len beyond the request
    else:
        assert res == (0, b"", CsError.ERR_INVALID_PARAM)
    assert sum(env.host.stats.dropped.values()) >= (0 if msg_id == cmap.REQ_SET else 1)


def test_malformed_cpg_mcast_request_is_not_answered():
    env = Env()
    c = env.connect("cpg")
    assert env.req("cpg", c, cpg.REQ_MCAST, bytes(8) + struct.pack("<I4xI4x", 2, 500) + b"x") is None
    assert env.host.stats.dropped["ipc_malformed"] == 1


@pytest.mark.parametrize("service", ["cmap", "cpg"])
def test_random_requests_one_answer_each_never_raise(service):
    """Every request except CPG MCAST gets exactly one response, whatever its bytes."""
    import random

    rng = random.Random(11)
    env = Env()
    env.store.set("a.b.c", 1, CmapType.UINT8)
    conns = [env.connect(service, pid) for pid in (1, 2, 3)]
    ids = list(env.host.ipc_handlers[service].service.lib_handlers) + [13, 200]
    for i in range(3000):
        conn = rng.choice(conns)
        msg_id = rng.choice(ids)
        size = rng.choice((0, 1, 8, 24, 136, 140, 152, 264, 272, 280, 296, rng.randrange(400)))
        payload = bytes(rng.randrange(4) and rng.randrange(256) for _ in range(size))
        before = len(conn.responses)
        env.host.ipc_handlers[service].on_request(conn, msg_id, payload)
        expect = 0 if (service == "cpg" and msg_id == cpg.REQ_MCAST) else 1
        assert len(conn.responses) - before == expect, (msg_id, payload)
        if i % 50 == 0:
            env.loop_back()
    env.loop_back()
    for conn in conns:
        env.host.ipc_handlers[service].on_disconnect(conn)
    env.loop_back()
    if service == "cpg":
        assert env.host.services[2].procs == []


def test_service_keys_and_counters_like_the_real_daemon():
    logs = []
    store = CmapStore()
    sent = []
    host = ServiceHost(1, store, lambda g, m, gu: sent.append((g, m)),
                       log=lambda lvl, sub, text: logs.append((sub, text)),
                       services=CMAP_CPG)
    host.sync_in_process = False
    # the keys corosync's service loader publishes (reference/udpu/running/cmapctl.txt)
    assert store.dump("internal_configuration.service.") == (
        "internal_configuration.service.0.name (str) = corosync_cmap\n"
        "internal_configuration.service.0.ver (u32) = 0\n"
        "internal_configuration.service.2.name (str) = corosync_cpg\n"
        "internal_configuration.service.2.ver (u32) = 0\n")
    assert store.get("runtime.services.cpg.service_id") == 2
    assert store.keys("runtime.services.cpg.6.")  # one rx/tx pair per exec function
    assert ("SERV", "Service engine loaded: corosync cluster closed process group service "
                    "v1.01 [2]") in logs
    conn = FakeConn(pid=3)
    host.ipc_handlers["cpg"].on_connect(conn)
    host.ipc_handlers["cpg"].on_request(conn, cpg.REQ_JOIN, join_payload(b"g", 3))
    for group, msg in sent:
        host.on_deliver(PgDeliver(1, (group,), msg, RingId(1, 1)))
        host.on_deliver(PgDeliver(2, (group,), msg, RingId(1, 1)))
    assert store.get("runtime.services.cpg.0.rx") == 0  # counted in memory …
    c = FakeConn()
    host.ipc_handlers["cmap"].on_connect(c)
    host.ipc_handlers["cmap"].on_request(c, cmap.REQ_GET, name("runtime.services.cpg.0.rx")
                                         + struct.pack("<Q", 8))
    assert c.responses[-1][1][16:] == struct.pack("<Q", 2)  # … published before cmap reads
    assert store.get("runtime.services.cpg.0.tx") == 1
    # clients cannot write them
    host.ipc_handlers["cmap"].on_request(c, cmap.REQ_DELETE, name("runtime.services.cpg.0.rx"))
    assert c.responses[-1][2] == CsError.ERR_ACCESS


def test_on_ready_fires_once_after_the_first_sync():
    fired = []
    sent = []
    host = ServiceHost(1, CmapStore(), lambda g, m, gu: sent.append((g, m)),
                       on_ready=lambda: fired.append(True))
    assert not host.ready
    for seq in (4, 8):
        host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1,), (), (), RingId(1, seq)))
        while sent:
            g, m = sent.pop(0)
            host.on_deliver(PgDeliver(1, (g,), m, RingId(1, seq)))
    assert host.ready and fired == [True] and host.sync.stats.completed == 2


def test_event_over_a_clients_max_size_is_lost_for_that_client_only():
    env = Env()
    small, big = env.connect("cpg", 1), env.connect("cpg", 2)
    small.max_msg_size = 4096
    for c in (small, big):
        env.req("cpg", c, cpg.REQ_JOIN, join_payload(b"g", c.pid))
    env.loop_back()
    data = b"z" * 8000
    env.req("cpg", big, cpg.REQ_MCAST, bytes(8) + struct.pack("<I4xI4x", 2, len(data)) + data)
    env.loop_back()
    assert [e[0] for e in big.events][-1] == cpg.RES_DELIVER
    assert cpg.RES_DELIVER not in [e[0] for e in small.events]
    assert env.host.services[2].stats.events_lost == 1 and env.host.stats.dropped == {}
    # cmap GET larger than the client can receive: an error, not a broken connection
    c = env.connect("cmap")
    c.max_msg_size = 4096
    env.store.set("big.value.x", b"q" * 5000, CmapType.BINARY)
    assert cmap_get(env, c, "big.value.x", 5000) == (2, bytes(16), CsError.ERR_NO_MEMORY)


def test_iteration_order_matches_reference_cpgtool(shared_dir):
    """shared/reference/udpu/running/cpgtool-d.txt: Debian's corosync-cpgtool -d , lists
    what ITERATION_ALL returns; the same process list must iterate in the same order."""
    lines = (shared_dir / "reference" / "udpu" / "running" / "cpgtool-d.txt").read_text()
    rows = [line.split(",") for line in lines.splitlines()[1:] if line]
    env = Env()
    svc = env.host.services[2]
    for group, pid, nodeid in sorted(rows, key=lambda r: (int(r[2]), int(r[1]))):
        svc._exec_procjoin(cpg.encode_procjoin(cpg.PROCJOIN, group.encode(), int(pid), 1),
                           int(nodeid))
    c = env.connect("cpg")
    _mid, handle, _err = env.req("cpg", c, cpg.REQ_ITER_INIT, bytes(136) + struct.pack("<I", 3))
    got = []
    while True:
        _mid, item, err = env.req("cpg", c, cpg.REQ_ITER_NEXT, handle)
        if err != OK:
            break
        nodeid, pid = struct.unpack_from("<II", item, 136)
        got.append([cpg.decode_name(item, 0).decode(), str(pid), str(nodeid)])
    assert got == rows


def test_ipc_during_sync_services_get_no_sync_flow_control():
    from corosync.exec.service import LibHandler, Service

    class Voting(Service):
        id = 5
        name = "test voting service"
        ipc_name = "voting"
        ipc_during_sync = True

        def __init__(self, api):
            super().__init__(api)
            self.lib_handlers = {0: LibHandler(lambda c, p: c.send_response(0, b"ok"))}

    host = ServiceHost(1, CmapStore(), lambda g, m, gu: None,
                       services=[lambda api: cmap.CmapService(api), Voting])
    v, m = FakeConn(), FakeConn()
    host.ipc_handlers["voting"].on_connect(v)
    host.ipc_handlers["cmap"].on_connect(m)
    assert (v.fc_level, m.fc_level) == (0, 2)  # starting up = in sync
    host.ipc_handlers["voting"].on_request(v, 0, b"")
    assert v.responses == [(0, b"ok", 1)]


def test_service_timers_only_with_a_driver_and_guarded():
    host = ServiceHost(1, CmapStore(), lambda g, m, gu: None)
    api = host.services[2].api
    assert getattr(api, "timer_add", None) is None  # no driver timers: not offered
    pending: dict[int, object] = {}
    logs = []
    ids = iter(range(1, 100))

    def add(ms, fn):
        handle = next(ids)
        pending[handle] = (ms, fn)
        return handle

    host = ServiceHost(1, CmapStore(), lambda g, m, gu: None, timer_add=add,
                       timer_del=lambda h: pending.pop(h, None),
                       log=lambda lvl, sub, text: logs.append(text))
    api = host.services[2].api
    fired = []
    h1 = api.timer_add(30, lambda: fired.append(1))
    h2 = api.timer_add(50, lambda: 1 / 0)
    h3 = api.timer_add(70, lambda: fired.append(3))
    api.timer_del(h3)
    assert sorted(pending) == [h1, h2] and pending[h1][0] == 30
    for h in (h1, h2):
        pending.pop(h)[1]()
    assert fired == [1] and any("ZeroDivisionError" in line for line in logs)
