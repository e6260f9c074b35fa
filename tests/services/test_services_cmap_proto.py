"""The cmap service speaks lib/proto/cmap.py: requests encoded by the client-side classes are
served, and every response/event decodes with them (one layout per struct, both sides)."""

from __future__ import annotations

import struct

import pytest
from svc_helpers import FakeConn

from corosync.exec.cmap import CmapStore
from corosync.exec.host import ServiceHost
from corosync.exec.service import CsError
from corosync.lib.proto import cmap as p
from corosync.services.cmap import CmapService


class Node:
    """One executive (ServiceHost with the cmap service only) and one client connection."""

    def __init__(self) -> None:
        self.store = CmapStore()
        self.stats = CmapStore()
        self.host = ServiceHost(1, self.store, lambda g, m, gu: None, send_ok=lambda n: True,
                                stats_cmap=self.stats, services=[CmapService])
        self.host.sync_in_process = False
        self.conn = FakeConn()
        assert self.host.ipc_handlers["cmap"].on_connect(self.conn)

    def call(self, req, *, raw: bytes | None = None) -> tuple[int, bytes, CsError]:
        body = req.encode() if raw is None else raw
        self.host.ipc_handlers["cmap"].on_request(self.conn, req.ID, body)
        msg_id, payload, error = self.conn.responses.pop()
        return msg_id, payload, CsError(error)


def _examples() -> list[tuple[p.ValueType, object]]:
    """Edge values of every type (hypothesis covers the codec itself in
    tests/clients/test_proto_cmap.py; here the service's wiring)."""
    out: list[tuple[p.ValueType, object]] = []
    for vtype in p.ValueType:
        if vtype.is_integer:
            out += [(vtype, v) for v in p.int_range(vtype)]
    out += [(p.ValueType.FLOAT, 1.5), (p.ValueType.FLOAT, float("-inf")),
            (p.ValueType.DOUBLE, -0.25), (p.ValueType.DOUBLE, 1e300),
            (p.ValueType.STRING, ""), (p.ValueType.STRING, "ipclab"),
            (p.ValueType.STRING, "é\udcff"),          # not UTF-8: carried as the bytes
            (p.ValueType.BINARY, b""), (p.ValueType.BINARY, b"\0\x01\xff")]
    return out


@pytest.mark.parametrize("typed", _examples(), ids=repr)
def test_set_get_iterate_and_notify_through_the_shared_classes(typed) -> None:
    vtype, value = typed
    node = Node()
    cookie = 0xC0FFEE
    _i, res, err = node.call(p.TrackAddRequest("t.", int(p.TrackType.ADD | p.TrackType.PREFIX),
                                               cookie))
    assert err == CsError.OK and p.TrackAddResponse.decode(res).track_handle > 0

    raw = p.encode_value(vtype, value)
    assert node.call(p.SetRequest("t.key", vtype, raw)) == (p.ResId.SET, b"", CsError.OK)
    stored = p.encode_stored_value(vtype, value)

    ev_id, ev, _e = node.conn.events.pop()
    assert ev_id == p.ResId.NOTIFY
    assert p.NotifyEvent.decode(ev) == p.NotifyEvent(cookie, "t.key", int(p.TrackType.ADD),
                                                     vtype, stored, 0, b"")

    _i, res, err = node.call(p.GetRequest("t.key", 0))  # type and length only
    assert (err, p.GetResponse.decode(res)) == (CsError.OK, p.GetResponse(len(stored), vtype))
    _i, res, err = node.call(p.GetRequest("t.key", len(stored) + 3))
    got = p.GetResponse.decode(res)
    assert len(res) == 16 + len(stored) + 3
    assert err == CsError.OK and p.decode_value(got.type, got.value) == value

    _i, res, _e = node.call(p.IterInitRequest("t."))
    handle = p.IterInitResponse.decode(res).iter_handle
    _i, res, err = node.call(p.IterNextRequest(handle))
    assert (err, p.IterNextResponse.decode(res)) == (
        CsError.OK, p.IterNextResponse("t.key", len(stored), vtype))
    _i, res, err = node.call(p.IterNextRequest(handle))
    assert err == CsError.ERR_NO_SECTIONS
    assert p.IterNextResponse.decode(res) == p.IterNextResponse("", 0, 0)


def test_error_bodies_keep_their_full_size() -> None:
    node = Node()
    _i, res, err = node.call(p.GetRequest("no.such", 16))
    assert (err, res) == (CsError.ERR_NOT_EXIST, bytes(16))
    _i, res, err = node.call(p.IterNextRequest(77))
    assert (err, len(res)) == (CsError.ERR_BAD_HANDLE, p.RESPONSE_BUFFER[p.ResId.ITER_NEXT])
    _i, res, err = node.call(p.TrackDeleteRequest(5))
    assert (err, p.TrackDeleteResponse.decode(res)) == (CsError.ERR_BAD_HANDLE,
                                                        p.TrackDeleteResponse(0))
    assert node.call(p.SetCurrentMapRequest(7)) == (p.ResId.SET_CURRENT_MAP, b"",
                                                    CsError.ERR_NOT_EXIST)


@pytest.mark.parametrize("vtype, raw", [
    (p.ValueType.UINT32, b"\1\0"),                 # wrong size for a fixed type
    (p.ValueType.STRING, b"ab\0cd"),               # value_len beyond strlen + 1
    (99, b""),                                     # no such type
    (p.ValueType.BINARY, bytes(p.VALUE_MAX + 1)),  # too long
])
def test_bad_values_are_invalid_param(vtype, raw) -> None:
    node = Node()
    assert node.call(p.SetRequest("a.b.c", vtype, raw))[2] == CsError.ERR_INVALID_PARAM
    assert "a.b.c" not in node.store


def test_read_only_keys_are_refused_before_the_value_is_looked_at() -> None:
    node = Node()
    node.store.set("totem.cluster_name", "x", p.ValueType.STRING)
    assert node.call(p.SetRequest("totem.cluster_name", 99, b"junk"))[2] == CsError.ERR_ACCESS
    assert node.call(p.AdjustIntRequest("totem.cluster_name", 1))[2] == CsError.ERR_ACCESS


def test_trailing_bytes_are_ignored_and_short_bodies_counted() -> None:
    node = Node()
    req = p.SetRequest("a.b.c", p.ValueType.UINT16, b"\1\2")
    assert node.call(req, raw=req.encode() + b"junk")[2] == CsError.OK
    assert node.store.get("a.b.c") == 0x0201
    short = struct.pack("<H6x256sQB7x", 5, b"a.b.c", 100, 7) + b"xy"  # value_len 100, 2 sent
    assert node.call(req, raw=short) == (0, b"", CsError.ERR_INVALID_PARAM)
    assert node.call(p.GetRequest("a.b.c", 0), raw=bytes(10)) == (0, b"", CsError.ERR_INVALID_PARAM)
    assert node.host.stats.dropped.get("ipc_malformed") == 2
