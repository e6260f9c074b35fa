"""Test helper: replay the client side of a capture into the sans-IO server core, using the
capture's timestamps as the clock, and collect what the core sends per connection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.server import Close, QnetdServer, Send, ServerConfig

from qnetd_pcap import read_events, split_messages


@dataclass
class ConnResult:
    expected: list[bytes] = field(default_factory=list)
    got: list[bytes] = field(default_factory=list)
    server_closed_expected: float | None = None  # capture time of the server's FIN
    server_closed_got: float | None = None


def replay(pcap: Path, cfg: ServerConfig, until: float | None = None) -> dict[str, ConnResult]:
    return replay_with_server(pcap, cfg, until)[0]


def replay_with_server(pcap: Path, cfg: ServerConfig,
                       until: float | None = None) -> tuple[dict[str, ConnResult], QnetdServer]:
    events = read_events(pcap)
    server = QnetdServer(cfg)
    ids: dict[str, int] = {}
    names: dict[int, str] = {}
    bufs: dict[str, bytes] = {}
    s2c: dict[str, bytes] = {}
    client_fin: set[str] = set()
    results: dict[str, ConnResult] = {}

    def flush(now: float) -> None:
        for act in server.take_actions():
            res = results[names[act.conn_id]]
            if isinstance(act, Send):
                res.got.append(act.data)
            elif isinstance(act, Close):
                res.server_closed_got = now

    def advance(now: float) -> None:
        # fire timers one deadline at a time, so each action is stamped with its own time
        while True:
            dl = server.next_deadline()
            if dl is None or dl > now:
                break
            server.advance(dl)
            flush(dl)
        server.advance(now)
        flush(now)

    for ev in events:
        if until is not None and ev.t > until:
            break
        advance(ev.t)
        res = results.setdefault(ev.conn, ConnResult())
        if ev.kind == "open":
            cid = len(ids) + 1
            ids[ev.conn] = cid
            names[cid] = ev.conn
            assert server.accept(cid, "::ffff:" + ev.conn, ev.t)
        elif ev.kind == "c2s":
            bufs[ev.conn] = bufs.get(ev.conn, b"") + ev.data
            for msg in split_messages(bufs[ev.conn]):
                bufs[ev.conn] = bufs[ev.conn][len(msg):]
                server.on_message(ids[ev.conn], msg, ev.t)
        elif ev.kind == "s2c":
            s2c[ev.conn] = s2c.get(ev.conn, b"") + ev.data
        elif ev.kind == "fin_c":
            client_fin.add(ev.conn)
            server.on_closed(ids[ev.conn], ev.t)
        elif ev.kind == "fin_s":
            if ev.conn not in client_fin:
                res.server_closed_expected = ev.t
        flush(ev.t)
    for conn, data in s2c.items():
        results[conn].expected = split_messages(data)
    return results, server


def describe(data: bytes) -> str:
    try:
        m = P.decode(data)
    except P.DecodeError as exc:
        return f"<undecodable {data.hex()}: {exc.reason}>"
    return f"{P.MsgType(m.type).name} seq={m.seq} vote={m.vote} ring={m.ring_id} err={m.reply_error_code}"
