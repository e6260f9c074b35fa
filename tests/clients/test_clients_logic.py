"""corosync.cmap / corosync.cpg logic without a daemon: call plans fed scripted replies, and
handles over a scripted in-memory client (retries, error codes, fragmentation, reassembly,
dispatch modes, hostile events); the shared handle bases through quorum, votequorum and
cfg."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync._common import (CsError, CsErrorCode, DispatchFlags, Pause, Reply, Request,
                              cs_strerror, gnu_getopt, GetoptError, run_blocking)
from corosync.cmap import Cmap, CmapValue, TrackType, ValueType
from corosync.cpg import Cpg, DeliverEvent, Guarantee, MAX_ATOMIC_MSGSIZE
from corosync.cfg import Cfg
from corosync.lib.ipc import IpcError, pack_request, unpack_request_header
from corosync.lib.proto import cfg as pcfg
from corosync.lib.proto import cmap as pc
from corosync.lib.proto import cpg as pp
from corosync.lib.proto import quorum as pq
from corosync.lib.proto import votequorum as pvq
from corosync.quorum import NodelistNotification, Quorum, QuorumNotification
from corosync.votequorum import Votequorum

OK = CsErrorCode.OK


class ScriptedClient:
    """Duck-types IpcClient: answers requests with ``respond(message) -> (id, error, body)``
    and serves queued events."""

    def __init__(self, respond: Callable[[bytes], tuple[int, int, bytes]] | None = None) -> None:
        self.respond = respond or (lambda m: (0, OK, b""))
        self.sent: list[tuple[bytes, int | None]] = []
        self.events: list[tuple[int, int, bytes]] = []
        self.closed = False
        self.fail_with: int | None = None

    def request_raw(self, message: bytes, timeout: float | None = None) -> tuple[int, int, bytes]:
        if self.fail_with is not None:
            raise IpcError(self.fail_with, "scripted failure")
        self.sent.append((message, None))
        return self.respond(message)

    def send(self, message: bytes, *, fc_enable_max: int = 1) -> None:
        if self.fail_with is not None:
            raise IpcError(self.fail_with, "scripted failure")
        self.sent.append((message, fc_enable_max))

    def recv_event(self, timeout: float | None = 0.0) -> tuple[int, int, bytes] | None:
        if self.events:
            return self.events.pop(0)
        if timeout is None:
            raise IpcError(errno.ENOTCONN, "no more scripted events")
        return None

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed = True


def req_id(message: bytes) -> int:
    return unpack_request_header(message)[0]


def drive(plan: Any, replies: list[Reply | None]) -> tuple[Any, list[Any]]:
    """Run a plan against a list of replies; returns (result, steps)."""
    steps = []
    reply = None
    try:
        while True:
            step = plan.send(reply)
            steps.append(step)
            reply = replies.pop(0) if isinstance(step, Request) else None
    except StopIteration as done:
        return done.value, steps


# --------------------------------------------------------------------------------------------
# common
# --------------------------------------------------------------------------------------------


def test_cs_error_names_and_unknown_codes() -> None:
    assert cs_strerror(1) == "success"
    assert cs_strerror(12) == "CS_ERR_NOT_EXIST"
    assert cs_strerror(29) == "unknown error"
    e = CsError(6, "x")
    assert e.code is CsErrorCode.ERR_TRY_AGAIN and str(e) == "CS_ERR_TRY_AGAIN: x"
    odd = CsError(999)
    assert odd.code == 999 and str(odd) == "unknown error"


def test_transport_errors_become_cs_errors() -> None:
    client = ScriptedClient()
    client.fail_with = errno.ECONNREFUSED
    with pytest.raises(CsError) as info:
        run_blocking(client, Cmap._plan_delete("a.b"))  # type: ignore[arg-type]
    assert info.value.code is CsErrorCode.ERR_LIBRARY
    client.fail_with = errno.EAGAIN
    with pytest.raises(CsError) as info:
        run_blocking(client, Cmap._plan_delete("a.b"))  # type: ignore[arg-type]
    assert info.value.code is CsErrorCode.ERR_TRY_AGAIN


def test_getopt_like_glibc() -> None:
    items = list(gnu_getopt(["k1", "-bq", "-m", "stats", "k2", "--", "-d"], "m:bqd", "t"))
    assert items == [("b", None), ("q", None), ("m", "stats"), ["k1", "k2", "-d"]]
    seen = []
    with pytest.raises(GetoptError) as info:
        for item in gnu_getopt(["-b", "-z", "-q"], "bq", "tool"):
            seen.append(item)
    assert seen == [("b", None)]          # options before the bad one were acted on
    assert info.value.message == "tool: invalid option -- 'z'"


# --------------------------------------------------------------------------------------------
# cmap
# --------------------------------------------------------------------------------------------


def get_reply(value_len: int, vtype: int, value: bytes = b"", error: int = OK) -> Reply:
    return Reply(2, error, pc.GetResponse(value_len, vtype, value).encode())


def test_cmap_get_probes_then_fetches_and_retries_when_the_value_grows() -> None:
    h = Cmap(ScriptedClient())  # type: ignore[arg-type]
    replies = [get_reply(4, 11), Reply(2, CsErrorCode.ERR_INVALID_PARAM, bytes(16)),
               get_reply(6, 11), get_reply(6, 11, b"grown\0")]
    value, steps = drive(h._plan_get("a.key"), replies)
    assert value == CmapValue(ValueType.STRING, "grown")
    lens = [pc.GetRequest.decode(s.message[16:]).value_len for s in steps]
    assert lens == [0, 4, 0, 6]


def test_cmap_errors_carry_the_code() -> None:
    h = Cmap(ScriptedClient())  # type: ignore[arg-type]
    with pytest.raises(CsError) as info:
        drive(h._plan_get("no.such"), [Reply(2, CsErrorCode.ERR_NOT_EXIST, bytes(16))])
    assert info.value.code is CsErrorCode.ERR_NOT_EXIST
    # typed getter: one 16-byte GET, then a type check
    with pytest.raises(CsError) as info:
        drive(h._plan_get_typed("k.x", ValueType.UINT32), [get_reply(1, 2, b"\x05")])
    assert info.value.code is CsErrorCode.ERR_INVALID_PARAM
    value, steps = drive(h._plan_get_typed("k.x", ValueType.UINT8), [get_reply(1, 2, b"\x05")])
    assert value == 5 and len(steps) == 1


def test_cmap_refuses_long_names_and_bad_values_before_sending() -> None:
    client = ScriptedClient()
    h = Cmap(client)  # type: ignore[arg-type]
    with pytest.raises(CsError) as info:
        h.get("k" * 256)
    assert info.value.code is CsErrorCode.ERR_NAME_TOO_LONG
    with pytest.raises(CsError) as info:
        h.set_uint8("a.b", 300)
    assert info.value.code is CsErrorCode.ERR_INVALID_PARAM
    assert client.sent == []


def test_cmap_iteration_ends_on_no_sections_and_finalizes() -> None:
    keys = ["a.one", "a.two"]

    def respond(message: bytes) -> tuple[int, int, bytes]:
        rid = req_id(message)
        if rid == pc.ReqId.ITER_INIT:
            return 4, OK, pc.IterInitResponse(77).encode()
        if rid == pc.ReqId.ITER_NEXT:
            if keys:
                return 5, OK, pc.IterNextResponse(keys.pop(0), 4, 6).encode()
            return 5, CsErrorCode.ERR_NO_SECTIONS, bytes(280)
        return rid, OK, b""

    client = ScriptedClient(respond)
    h = Cmap(client)  # type: ignore[arg-type]
    assert [e.key for e in h.iter_prefix("a.")] == ["a.one", "a.two"]
    assert [req_id(m) for m, _ in client.sent] == [4, 5, 5, 5, 6]


def notify(cookie: int, key: str, event: int, new: tuple[int, bytes] = (0, b""),
           old: tuple[int, bytes] = (0, b"")) -> tuple[int, int, bytes]:
    return 9, OK, pc.NotifyEvent(cookie, key, event, new[0], new[1], old[0], old[1]).encode()


def test_cmap_tracking_and_dispatch_modes() -> None:
    client = ScriptedClient(lambda m: (7, OK, pc.TrackAddResponse(555).encode()))
    h = Cmap(client)  # type: ignore[arg-type]
    seen = []
    th = h.track_add("a.", TrackType.ADD | TrackType.PREFIX, seen.append, user_data="ud")
    assert th == 555
    cookie = pc.TrackAddRequest.decode(client.sent[0][0][16:]).track_inst_handle
    client.events = [notify(cookie, "a.x", 4, new=(6, b"\x01\0\0\0")),
                     notify(cookie, "a.x", 2, new=(6, b"\x02\0\0\0"), old=(6, b"\x01\0\0\0")),
                     notify(cookie, "a.x", 1, old=(6, b"\x02\0\0\0"))]
    assert h.dispatch(DispatchFlags.ONE_NONBLOCKING) == 1
    assert h.dispatch(DispatchFlags.ALL) == 2
    assert h.dispatch(DispatchFlags.ALL) == 0
    assert [(n.event, n.new_value, n.old_value) for n in seen] == [
        (TrackType.ADD, CmapValue(ValueType.UINT32, 1), None),
        (TrackType.MODIFY, CmapValue(ValueType.UINT32, 2), CmapValue(ValueType.UINT32, 1)),
        (TrackType.DELETE, None, CmapValue(ValueType.UINT32, 2))]
    assert seen[0].track_handle == 555 and seen[0].user_data == "ud"
    # a notification for a deleted tracker is ignored, not an error
    h._tracks.clear()
    client.events = [notify(cookie, "a.x", 4, new=(2, b"\x01"))]
    assert h.dispatch(DispatchFlags.ALL) == 1 and len(seen) == 3
    assert h.dropped_events == 0


def test_cmap_hostile_events_are_dropped_and_counted() -> None:
    client = ScriptedClient(lambda m: (7, OK, pc.TrackAddResponse(1).encode()))
    h = Cmap(client)  # type: ignore[arg-type]
    seen = []
    h.track_add("a.", TrackType.ADD | TrackType.PREFIX, seen.append)
    cookie = pc.TrackAddRequest.decode(client.sent[0][0][16:]).track_inst_handle
    client.events = [(42, OK, b"junk"),                                  # unknown id
                     (9, OK, b"\0" * 20),                                # truncated
                     notify(cookie, "a.x", 4, new=(6, b"\x01")),         # u32 of 1 byte
                     notify(cookie, "a.x", 4, new=(99, b"")),            # unknown type
                     notify(cookie, "a.ok", 4, new=(2, b"\x07"))]
    assert h.dispatch(DispatchFlags.ALL) == 5
    assert h.dropped_events == 4
    assert [n.key for n in seen] == ["a.ok"]


def test_cmap_blocking_dispatch_stops_when_a_callback_finalizes() -> None:
    client = ScriptedClient(lambda m: (7, OK, pc.TrackAddResponse(1).encode()))
    h = Cmap(client)  # type: ignore[arg-type]
    h.track_add("a.", TrackType.ADD | TrackType.PREFIX, lambda n: h.finalize())
    cookie = pc.TrackAddRequest.decode(client.sent[0][0][16:]).track_inst_handle
    client.events = [notify(cookie, "a.x", 4, new=(2, b"\x01")),
                     notify(cookie, "a.y", 4, new=(2, b"\x01"))]
    assert h.dispatch(DispatchFlags.BLOCKING) == 1
    assert client.closed
    with pytest.raises(CsError) as info:
        h.get("a.x")
    assert info.value.code is CsErrorCode.ERR_BAD_HANDLE


def test_cmap_lost_connection_in_dispatch_raises() -> None:
    h = Cmap(ScriptedClient())  # type: ignore[arg-type]
    with pytest.raises(CsError) as info:
        h.dispatch(DispatchFlags.ONE)       # scripted client: ENOTCONN when waiting forever
    assert info.value.code is CsErrorCode.ERR_LIBRARY


# --------------------------------------------------------------------------------------------
# cpg
# --------------------------------------------------------------------------------------------


def test_cpg_join_retries_busy_and_reports_other_errors() -> None:
    h = Cpg(ScriptedClient())  # type: ignore[arg-type]
    _, steps = drive(h._plan_join(b"g"), [Reply(0, CsErrorCode.ERR_BUSY, b""),
                                          Reply(0, OK, b"")])
    assert [type(s) for s in steps] == [Request, Pause, Request]
    with pytest.raises(CsError) as info:
        drive(h._plan_join(b"g"), [Reply(0, CsErrorCode.ERR_EXIST, b"")])
    assert info.value.code is CsErrorCode.ERR_EXIST
    with pytest.raises(CsError) as info:
        h.join(b"x" * 129)
    assert info.value.code is CsErrorCode.ERR_NAME_TOO_LONG


def test_cpg_small_mcast_is_one_unanswered_send_with_fc_2() -> None:
    client = ScriptedClient()
    h = Cpg(client)  # type: ignore[arg-type]
    h.mcast_joined(Guarantee.AGREED, b"he", b"llo")
    [(message, fc)] = client.sent
    assert fc == 2 and message == pp.mcast_message(2, b"hello")


def test_cpg_large_mcast_is_fragmented_and_retried() -> None:
    big = bytes(range(256)) * ((2 * MAX_ATOMIC_MSGSIZE + 1000) // 256)
    h = Cpg(ScriptedClient())  # type: ignore[arg-type]
    replies: list[Reply | None] = [Reply(18, OK, b""), Reply(18, CsErrorCode.ERR_TRY_AGAIN, b""),
                                   Reply(18, OK, b""), Reply(18, OK, b"")]
    _, steps = drive(h._plan_mcast(Guarantee.SAFE, (big,)), replies)
    sends = [pp.PartialMcastRequest.decode(s.message[24:]) for s in steps
             if isinstance(s, Request)]
    assert [s.type for s in sends] == [1, 2, 2, 3]          # FIRST, CONTINUED (retried), LAST
    assert any(isinstance(s, Pause) for s in steps)
    assert all(s.msglen == len(big) for s in sends)
    assert b"".join(s.fragment for i, s in enumerate(sends) if i != 1) == big
    with pytest.raises(CsError) as info:
        drive(h._plan_mcast(Guarantee.SAFE, (big,)),
              [Reply(18, CsErrorCode.ERR_INTERRUPT, b"")])
    assert info.value.code is CsErrorCode.ERR_INTERRUPT


def partial(ptype: int, frag: bytes, msglen: int, pid: int = 9) -> tuple[int, int, bytes]:
    return 17, OK, pp.PartialDeliverEvent(b"g", msglen, 1, pid, ptype, frag).encode()


def test_cpg_partial_deliveries_are_reassembled() -> None:
    client = ScriptedClient()
    got: list[tuple[Any, ...]] = []
    h = Cpg(client, deliver=lambda *a: got.append(a[1:]))  # type: ignore[arg-type]
    client.events = [partial(1, b"ab", 6), partial(1, b"XY", 4, pid=8), partial(2, b"cd", 6),
                     partial(3, b"ZW", 4, pid=8), partial(3, b"ef", 6)]
    assert h.dispatch(DispatchFlags.ALL) == 5
    assert got == [(b"g", 1, 8, b"XYZW"), (b"g", 1, 9, b"abcdef")]
    # a sender that leaves mid-message loses its assembly; orphans and overflows are dropped
    confchg = pp.ConfchgEvent(b"g", (), (pp.Address(1, 9, pp.Reason.PROCDOWN),), ())
    client.events = [partial(1, b"ab", 6), (4, OK, confchg.encode()), partial(3, b"cd", 6),
                     partial(1, b"abc", 2)]
    h.dispatch(DispatchFlags.ALL)
    assert len(got) == 2 and h.dropped_events == 1


def test_cpg_events_reach_callbacks_and_next_event() -> None:
    client = ScriptedClient()
    calls: list[str] = []
    h = Cpg(client, deliver=lambda *a: calls.append("deliver"),  # type: ignore[arg-type]
            confchg=lambda *a: calls.append(f"confchg {a[2][0].pid} {a[4][0].reason}"),
            totem_confchg=lambda h, ring, members: calls.append(f"totem {ring} {members}"))
    join = pp.ConfchgEvent(b"g", (pp.Address(1, 5),), (), (pp.Address(1, 5, 1),))
    totem = pp.TotemConfchgEvent(pp.RingId(1, 0x1c), (1, 2))
    client.events = [(4, OK, join.encode()), (13, OK, totem.encode()),
                     (5, OK, pp.DeliverEvent(b"g", 1, 5, b"m").encode()), (6, OK, b"")]
    assert h.dispatch(DispatchFlags.ALL) == 4
    assert calls == ["confchg 5 1", "totem 1.1c [1, 2]", "deliver"]
    assert h.dropped_events == 1          # id 6 (flow control) is never valid
    client.events = [(5, OK, pp.DeliverEvent(b"g", 2, 7, b"x").encode())]
    assert h.next_event(0) == DeliverEvent(b"g", 2, 7, b"x")
    assert h.next_event(0) is None


def test_cpg_finalize_sends_finalize_once() -> None:
    client = ScriptedClient(lambda m: (12, OK, b""))
    h = Cpg(client)  # type: ignore[arg-type]
    h.finalize()
    h.finalize()
    assert [req_id(m) for m, _ in client.sent] == [pp.ReqId.FINALIZE]
    assert client.closed
    assert h.max_atomic_msgsize() == 1048576 - 1024
    assert int(h.flow_control_state_get()) == 0


def test_cpg_fragment_refused_by_a_full_ring_is_resent() -> None:
    """EAGAIN on *sending* a fragment (request ring full) is CS_ERR_TRY_AGAIN: retried."""
    calls = {"n": 0}

    class FullOnce(ScriptedClient):
        def request_raw(self, message: bytes, timeout: float | None = None
                        ) -> tuple[int, int, bytes]:
            calls["n"] += 1
            if calls["n"] == 2:
                raise IpcError(errno.EAGAIN, "request ring full")
            return super().request_raw(message, timeout)

    client = FullOnce(lambda m: (18, OK, b""))
    h = Cpg(client)  # type: ignore[arg-type]
    h.mcast_joined(Guarantee.AGREED, bytes(MAX_ATOMIC_MSGSIZE + 10))
    kinds = [pp.PartialMcastRequest.decode(m[24:]).type for m, _ in client.sent]
    assert kinds == [1, 3] and calls["n"] == 3


# --------------------------------------------------------------------------------------------
# the shared handle bases (quorum, votequorum, cfg over a scripted client)
# --------------------------------------------------------------------------------------------


def test_a_plan_is_closed_whatever_ends_it() -> None:
    closed: list[str] = []

    def plan() -> Any:
        try:
            yield Request(pack_request(1))
            yield Request(pack_request(2))
        finally:
            closed.append("closed")

    client = ScriptedClient()
    client.fail_with = errno.ECONNRESET
    with pytest.raises(CsError):
        run_blocking(client, plan())  # type: ignore[arg-type]
    client.fail_with = None
    assert run_blocking(client, plan()) is None  # type: ignore[arg-type]
    assert closed == ["closed", "closed"] and len(client.sent) == 2


def test_quorum_events_reach_callbacks_and_bad_ones_are_counted() -> None:
    client = ScriptedClient()
    seen: list[Any] = []
    q = Quorum(client)  # type: ignore[arg-type]
    q.notify, q.nodelist = seen.append, seen.append
    client.events = [
        (pq.EV_NOTIFICATION, OK, pq.Notification(True, 5, (1, 2)).encode()),
        (pq.EV_NOTIFICATION, OK, b"\0" * 4),                                   # truncated
        (pq.EV_V1_QUORUM_NOTIFICATION, OK, pq.V1QuorumNotification(False, 2, 6, (2,)).encode()),
        (42, OK, b""),                                                         # unknown id
        (pq.EV_V1_NODELIST_NOTIFICATION, OK,
         pq.V1NodelistNotification(2, 6, (2,), (), (1,)).encode()),
    ]
    assert q.dispatch(DispatchFlags.ALL) == 5
    assert seen == [QuorumNotification(True, 5, (1, 2)), QuorumNotification(False, 6, (2,), 2),
                    NodelistNotification(2, 6, (2,), (), (1,))]
    assert q.dropped_events == 2


def test_a_callback_error_is_not_a_dropped_event() -> None:
    client = ScriptedClient()
    v = Votequorum(client)  # type: ignore[arg-type]

    def boom(event: Any) -> None:
        raise ValueError("bug in the application")

    v.expected_fn = boom
    client.events = [(pvq.EV_EXPECTEDVOTES_NOTIFICATION, OK,
                      pvq.ExpectedVotesNotification(1, 3).encode())]
    with pytest.raises(ValueError, match="bug in the application"):
        v.dispatch(DispatchFlags.ALL)
    assert v.dropped_events == 0


def test_finalized_handles_refuse_calls_and_finalize_once() -> None:
    for handle_cls in (Cfg, Votequorum, Quorum):
        client = ScriptedClient()
        h = handle_cls(client)  # type: ignore[arg-type]
        with h:
            h.context_set({"app": 1})
            assert h.context_get() == {"app": 1}
        assert client.closed
        h.finalize()
        with pytest.raises(CsError) as info:
            h._call(1)
        assert info.value.code is CsErrorCode.ERR_BAD_HANDLE
        assert client.sent == [] and h.dispatch(DispatchFlags.ALL) == 0


def test_quorum_model_is_checked_before_connecting() -> None:
    with pytest.raises(CsError) as info:
        Quorum.initialize(model=7, ipc_dir="/nonexistent")
    assert info.value.code is CsErrorCode.ERR_INVALID_PARAM


def test_cfg_ring_status_ignores_the_error_field_like_libcfg() -> None:
    body = pcfg.RingStatus((("0 10.0.0.1", "OK"),)).encode()
    client = ScriptedClient(lambda m: (pcfg.RES_RINGSTATUSGET, CsErrorCode.ERR_LIBRARY, body))
    assert Cfg(client).ring_status_get().interfaces == (("0 10.0.0.1", "OK"),)  # type: ignore
    client = ScriptedClient(lambda m: (pcfg.RES_KILLNODE, CsErrorCode.ERR_NOT_EXIST, b""))
    with pytest.raises(CsError) as info:
        Cfg(client).kill_node(9, "x" * 400)  # type: ignore[arg-type]
    assert info.value.code is CsErrorCode.ERR_NOT_EXIST
    assert len(client.sent[0][0]) == 288      # an over-long reason is cut, as libcfg does


@settings(max_examples=300, deadline=None)
@given(handle_cls=st.sampled_from([Quorum, Votequorum, Cfg, Cmap, Cpg]),
       msg_id=st.integers(-2, 20), payload=st.binary(max_size=300))
def test_no_event_bytes_make_dispatch_raise(handle_cls: type, msg_id: int,
                                            payload: bytes) -> None:
    client = ScriptedClient()
    handle = handle_cls(client)
    client.events = [(msg_id, OK, payload)]
    before = handle.dropped_events
    assert handle.dispatch(DispatchFlags.ALL) == 1
    assert handle.dropped_events in (before, before + 1)
