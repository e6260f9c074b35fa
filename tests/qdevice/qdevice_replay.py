"""Test helper: replay the *server* side of a Debian qnetd capture into our sans-IO qdevice
client, one client per cluster node, with the capture's timestamps as the clock.

What the capture cannot show -- votequorum's notifications to the stock qdevice -- is
reconstructed from what the stock client sent: its first INIT/MEMBERSHIP/QUORUM lists give
the initial votequorum view, and a MEMBERSHIP or QUORUM list that our client has not produced
by the time the stock one sent it is injected as the votequorum event that caused it.  The
comparison is then strict: our client's bytes, in order, must equal the stock client's."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qnetd"))

from qnetd_pcap import read_events, split_messages  # noqa: E402

from corosync.exec.qdevice import core as C  # noqa: E402
from corosync.exec.qnetd import protocol as P  # noqa: E402


@dataclass
class NodeResult:
    expected: list[bytes] = field(default_factory=list)
    got: list[bytes] = field(default_factory=list)
    expected_times: list[float] = field(default_factory=list)
    got_times: list[float] = field(default_factory=list)
    polls: list[tuple[float, bool]] = field(default_factory=list)
    closes: list[tuple[float, C.Reason]] = field(default_factory=list)
    client_fins: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)
    core: C.QdeviceNet | None = None


def _first(msgs: list[P.Message], pred) -> P.Message | None:
    return next((m for m in msgs if pred(m)), None)


def config_from_capture(client_msgs: list[bytes], host: str = "198.18.0.100") -> C.QdeviceConfig:
    msgs = [P.decode(m) for m in client_msgs]
    preinit = _first(msgs, lambda m: m.type == P.MsgType.PREINIT)
    init = _first(msgs, lambda m: m.type == P.MsgType.INIT)
    conf = _first(msgs, lambda m: m.type == P.MsgType.NODE_LIST
                  and m.node_list_type == P.NodeListType.INITIAL_CONFIG)
    kap = _first(msgs, lambda m: m.type == P.MsgType.SET_OPTION)
    assert preinit and init and conf
    return C.QdeviceConfig(
        cluster_name=preinit.cluster_name, node_id=init.node_id, host=host,
        tls=0, algorithm=init.decision_algorithm, tie_breaker=init.tie_breaker,
        timeout_ms=init.heartbeat_interval * 10 // 8,
        keep_active_partition_tie_breaker=bool(kap and kap.keep_active_partition_tie_breaker),
        config_nodes=tuple(conf.nodes), config_version=conf.config_version)


def _vq_event(core: C.QdeviceNet, msg: P.Message, t: float) -> None:
    if msg.node_list_type == P.NodeListType.MEMBERSHIP:
        core.on_vq_nodelist(msg.ring_id, tuple(n.node_id for n in msg.nodes), t)
    elif msg.node_list_type == P.NodeListType.QUORUM:
        core.on_vq_quorum(bool(msg.quorate), tuple((n.node_id, n.node_state) for n in msg.nodes), t)


def replay(pcap: Path, until: float | None = None,
           frozen: dict[str, tuple[float, float]] | None = None) -> dict[str, NodeResult]:
    """``frozen``: node address -> (SIGSTOP, SIGCONT) times of that node's stock qdevice;
    our client's clock does not run in between and what arrives meanwhile is delivered at
    SIGCONT, before any timer (what a stopped process sees when it resumes)."""
    events = read_events(pcap)
    by_node: dict[str, list] = {}
    for ev in events:
        by_node.setdefault(ev.conn.split(":")[0], []).append(ev)
    return {node: _replay_node(evs, until, (frozen or {}).get(node))
            for node, evs in by_node.items()}


def _replay_node(events, until: float | None, frozen: tuple[float, float] | None) -> NodeResult:
    res = NodeResult()
    # all client messages of this node, for the configuration and the initial vq view
    c2s_all: dict[str, bytes] = {}
    for ev in events:
        if ev.kind == "c2s":
            c2s_all[ev.conn] = c2s_all.get(ev.conn, b"") + ev.data
    first_conn = [split_messages(v) for v in c2s_all.values()][0]
    cfg = config_from_capture(first_conn)
    # the reconnect delay is random: take the capture's realisation of it (the delay that
    # makes our next Connect coincide with the stock client's next TCP open)
    opens = [ev.t for ev in events if ev.kind == "open"]
    clock = [events[0].t]

    def rng(n: int) -> int:
        later = [t for t in opens if t > clock[0] + 1e-6]
        if not later:
            return 0
        return max(0, min(n - 1, int((later[0] - clock[0]) * 1000)))

    core = C.QdeviceNet(cfg, rng=rng)
    res.core = core
    decoded = [P.decode(m) for m in first_conn]
    init = _first(decoded, lambda m: m.type == P.MsgType.INIT)
    memb = _first(decoded, lambda m: m.type == P.MsgType.NODE_LIST
                  and m.node_list_type == P.NodeListType.MEMBERSHIP)
    quor = _first(decoded, lambda m: m.type == P.MsgType.NODE_LIST
                  and m.node_list_type == P.NodeListType.QUORUM)
    t0 = events[0].t
    core.on_vq_nodelist(init.ring_id, tuple(n.node_id for n in memb.nodes), t0)
    if quor is not None:
        core.on_vq_quorum(bool(quor.quorate), tuple((n.node_id, n.node_state) for n in quor.nodes), t0)

    def flush(now: float) -> None:
        for act in core.take_actions():
            if isinstance(act, C.Send):
                res.got.append(act.data)
                res.got_times.append(now)
            elif isinstance(act, C.Poll):
                res.polls.append((now, act.cast_vote))
            elif isinstance(act, C.Close):
                res.closes.append((now, act.reason))
            elif isinstance(act, C.Connect):
                res.connects.append(now)
            elif isinstance(act, C.Exit):
                res.exits.append(act.reason)

    def advance(now: float) -> None:
        # a deadline that passed while the process was stopped fires late, at resume time
        while True:
            dl = core.next_deadline()
            if dl is None or dl > now:
                break
            clock[0] = max(dl, clock[0])
            core.advance(clock[0])
            flush(clock[0])
        clock[0] = now
        core.advance(now)
        flush(now)

    flush(t0)
    bufs: dict[str, bytes] = {}
    retimed: set[int] = set()
    if frozen is not None:
        stop, cont = frozen
        for ev in events:
            if stop <= ev.t < cont:
                ev.t = cont  # delivered on resume, in arrival order
                retimed.add(id(ev))
        events = sorted(events, key=lambda ev: ev.t)
    did_stop = False
    current = None  # the connection the client uses now; older ones are gone for it
    for ev in events:
        if until is not None and ev.t > until:
            break
        if frozen is not None and not did_stop and ev.t >= frozen[0]:
            advance(frozen[0])  # timers run up to the SIGSTOP only
            did_stop = True
        if id(ev) in retimed:
            clock[0] = ev.t  # resumed: read what is pending before any timer fires
        else:
            advance(ev.t)
        if ev.kind == "open":
            current = ev.conn
            core.on_connected(ev.t)
        elif ev.kind == "c2s":
            bufs[ev.conn] = bufs.get(ev.conn, b"") + ev.data
            for raw in split_messages(bufs[ev.conn]):
                bufs[ev.conn] = bufs[ev.conn][len(raw):]
                res.expected.append(raw)
                res.expected_times.append(ev.t)
                if len(res.got) < len(res.expected):
                    msg = P.decode(raw)
                    if msg.type == P.MsgType.NODE_LIST:
                        _vq_event(core, msg, ev.t)
        elif ev.conn != current:
            pass
        elif ev.kind == "s2c":
            bufs["s" + ev.conn] = bufs.get("s" + ev.conn, b"") + ev.data
            for raw in split_messages(bufs["s" + ev.conn]):
                bufs["s" + ev.conn] = bufs["s" + ev.conn][len(raw):]
                core.on_message(raw, ev.t)
        elif ev.kind == "fin_s":
            core.on_closed(ev.t)
        elif ev.kind == "fin_c":
            res.client_fins.append(ev.t)
            if not any(abs(t - ev.t) < 0.05 for t, _ in res.closes):
                current = None  # the stock qdevice was stopped or killed: nothing follows
        flush(ev.t)
    if until is not None:
        advance(until)
    return res


def describe(data: bytes) -> str:
    try:
        m = P.decode(data)
    except P.DecodeError as exc:
        return f"<undecodable {data.hex()}: {exc.reason}>"
    extra = f" list={m.node_list_type}" if m.node_list_type is not None else ""
    return f"{P.MsgType(m.type).name} seq={m.seq} ring={m.ring_id}{extra}"
