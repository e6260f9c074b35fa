"""Byte compatibility of the sync/cpg/cmap exec messages with the real ones in the udpu
capture, decoding of every real service message, and malformed-input robustness."""

from __future__ import annotations

import random
import struct

import pytest
from svc_helpers import capture_messages, udpu_messages

from corosync.exec import sync
from corosync.exec.cmap import CmapStore, CmapType
from corosync.exec.host import ServiceHost
from corosync.exec.service import REQ_HEADER, service_id_make, swap_fields
from corosync.exec.totem.events import ConfChg, ConfChgKind, PgDeliver
from corosync.exec.totem.wire import RingId
from corosync.services import cmap, cpg
from corosync.services.cmap import CmapService
from corosync.services.cpg import CpgService


def rebuild(group: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(our encoding of the same inputs, the real bytes with garbage fields zeroed)."""
    if group == b"sync":
        mid, ring, ids = sync.decode_sync(body)
        return (sync.encode_barrier(ring) if mid == 0
                else sync.encode_service_build(ring, ids)), body
    eid = struct.unpack_from("<i", body)[0]
    if eid in (0x20000, 0x20001):
        pid, reason = struct.unpack_from("<I4xI", body, 152)
        return cpg.encode_procjoin(eid & 0xFFFF, cpg.decode_name(body, 16), pid, reason), body
    if eid == 0x20003:
        msglen, pid, src = struct.unpack_from("<I4xI4xI", body, 152)
        # source.conn (@176) is a pointer on the sender: garbage by the spec
        return (cpg.encode_mcast(cpg.decode_name(body, 16), pid, src, body[184:184 + msglen]),
                body[:176] + bytes(8) + body[184:])
    if eid == 0x20002:
        return cpg.encode_joinlist(cpg.decode_joinlist(body)), body
    if eid == 0x20005:
        old, left = struct.unpack_from("<I4xI", body, 16)
        ours = cpg.encode_downlist(old, list(struct.unpack_from(f"<{left}I", body, 32)))
        # nodeids past left_nodes are stale on real nodes (a static buffer never cleared)
        return ours, body[:32 + 4 * left] + bytes(len(body) - 32 - 4 * left)
    if eid == 0:
        reason, items = cmap.decode_cmap_mcast(body)
        return cmap.encode_cmap_mcast(reason, items), body
    return body, body  # votequorum: not ours


def test_udp_capture_messages_rebuild_byte_identical(shared_dir):
    msgs = capture_messages(str(shared_dir / "spec" / "captures" / "udp_2node.pcap"))
    assert len(msgs) > 40
    for m in msgs:
        ours, real = rebuild(m.group, m.body)
        assert ours == real, f"{m.sender} {m.ring} seq {m.seq} {m.group} {m.exec_id:#x}"


def test_every_service_message_rebuilds_byte_identical(shared_dir):
    msgs = udpu_messages(shared_dir)
    kinds = set()
    for m in msgs:
        ours, real = rebuild(m.group, m.body)
        assert ours == real, f"{m.sender} {m.ring} seq {m.seq} {m.group} {m.exec_id:#x}"
        kinds.add((m.group, m.exec_id))
    # the capture covers every message kind we build
    assert {(b"sync", 0), (b"sync", 1), (b"a", 0), (b"a", 0x20000), (b"a", 0x20001),
            (b"a", 0x20002), (b"a", 0x20003), (b"a", 0x20005)} <= kinds


def test_specific_encodings_match_capture(shared_dir):
    msgs = udpu_messages(shared_dir)
    ring19 = [m for m in msgs if m.ring == RingId(1, 9)]
    procjoin = next(m for m in ring19 if m.group == b"a" and m.exec_id == 0x20000)
    assert cpg.encode_procjoin(cpg.PROCJOIN, b"grp1", 9408, 1) == procjoin.body
    mc = next(m for m in ring19 if m.group == b"a" and m.exec_id == 0x20003 and m.sender == 1)
    ours = cpg.encode_mcast(b"grp1", 9434, 1, b"helloFromA")
    assert len(ours) == 194 and ours[:176] == mc.body[:176] and ours[184:] == mc.body[184:]
    assert sync.encode_service_build(RingId(1, 9), [0, 2, 3, 5]) == next(
        m.body for m in ring19 if m.group == b"sync" and m.exec_id == 1)
    assert cpg.encode_downlist(0, []) == next(
        m.body for m in ring19 if m.exec_id == 0x20005 and m.sender == 2)
    cm = next(m for m in ring19 if m.group == b"a" and m.exec_id == 0)
    assert cmap.encode_cmap_mcast(0, [cmap.McastItem("totem.config_version", 0)]) == cm.body
    assert len(cm.body) == 328
    jl = next(m for m in msgs if m.exec_id == 0x20002 and m.group == b"a")
    assert cpg.encode_joinlist([(9574, b"grp1")]) == jl.body


def _host(nodeid: int = 2) -> tuple[ServiceHost, list]:
    sent: list = []
    # cmap + cpg only: the test counts votequorum's messages as "service not loaded"
    host = ServiceHost(nodeid, CmapStore(), lambda g, m, gu: sent.append((g, m)),
                       services=[CmapService, CpgService])
    host.on_confchg(ConfChg(ConfChgKind.REGULAR, (1, 2), (), (1,), RingId(1, 9)))
    return host, sent


def test_every_real_message_decodes_without_drop(shared_dir):
    host, _sent = _host()
    for m in udpu_messages(shared_dir):
        host.on_deliver(PgDeliver(m.sender, (m.group,), m.body, m.ring))
    assert host.stats.dropped.get("exec_other_service", 0) > 0  # votequorum: not loaded
    assert {k: v for k, v in host.stats.dropped.items() if k != "exec_other_service"} == {}
    assert host.sync.stats.malformed == 0
    assert host.cmap.get("runtime.members.1.config_version") == 0


def test_cmap_mcast_with_version_and_swap_roundtrip():
    item = cmap.McastItem("totem.config_version", int(CmapType.UINT64), struct.pack("<Q", 7))
    msg = cmap.encode_cmap_mcast(1, [item])
    assert len(msg) == 336
    assert cmap.decode_cmap_mcast(msg) == (1, [item])
    # a big-endian sender's message swaps back to ours
    be = bytearray(msg)
    struct.pack_into(">i", be, 0, 0)
    struct.pack_into(">i", be, 8, 336)
    struct.pack_into(">H", be, 48, 20)
    struct.pack_into(">Q", be, 48 + 272, 8)
    struct.pack_into(">Q", be, 48 + 280, 7)
    assert cmap.swap_cmap_mcast(bytes(be)) == msg


def test_cpg_swap_functions_invert_big_endian():
    msg = cpg.encode_procjoin(cpg.PROCLEAVE, b"g", 77, 5)
    be = swap_fields(msg, [(16, "I"), (152, "I"), (160, "I")])  # LE→BE is the same swap
    host, _ = _host()
    host.services[2]._exec_procjoin(msg, 1)  # known-good native message
    host.on_deliver(PgDeliver(1, (b"a",), be, RingId(1, 9), swapped=True))
    assert host.stats.dropped == {}


def _mutations(rng: random.Random, msg: bytes) -> list[bytes]:
    out = [msg[:n] for n in (0, 3, 15, 16, 17, 31, 100, len(msg) - 1) if n < len(msg)]
    for _ in range(30):
        b = bytearray(msg)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    for off in (8, 16, 24, 152, 160):  # size/count/length fields set to huge values
        if off + 4 <= len(msg):
            b = bytearray(msg)
            struct.pack_into("<I", b, off, 0xFFFFFFF0)
            out.append(bytes(b))
    return out


@pytest.mark.parametrize("swapped", [False, True])
def test_malformed_exec_messages_are_dropped_never_crash(shared_dir, swapped):
    rng = random.Random(4)
    samples = [(m.group, m.body) for m in udpu_messages(shared_dir)]
    samples += [(b"a", cpg.encode_partial_mcast(b"grp1", 1, 1, 10, 1, b"0123456789")),
                (b"a", REQ_HEADER.pack(service_id_make(2, 4), 1560) + bytes(1544)),
                (b"a", REQ_HEADER.pack(service_id_make(2, 99), 16)),
                (b"a", REQ_HEADER.pack(service_id_make(63, 0), 16)),
                (b"a", REQ_HEADER.pack(-1, 16))]
    host, _ = _host()
    conn_cls = __import__("svc_helpers").FakeConn
    client = conn_cls(pid=5)
    h = host.ipc_handlers["cpg"]
    h.on_connect(client)
    host.sync_in_process = False
    h.on_request(client, cpg.REQ_JOIN, cpg.encode_name(b"grp1") + struct.pack("<I4xI4x", 5, 0))
    for group, body in samples:
        for bad in _mutations(rng, body):
            host.on_deliver(PgDeliver(1, (group,), bad, RingId(1, 9), swapped=swapped))
    total = sum(host.stats.dropped.values()) + host.sync.stats.malformed
    assert total > 100
    if not swapped:  # (swapped, most ids read as services >= 64 and stop earlier)
        assert host.stats.dropped.get("truncated", 0) > 0
        assert "cpg_bad_size" in host.stats.dropped or "cpg_bad_name" in host.stats.dropped
    # the process list stayed consistent: sorted, no duplicates
    procs = host.services[2].procs
    keys = [(p.nodeid, p.pid) for p in procs]
    assert keys == sorted(keys) and len(set(procs)) == len(procs)
