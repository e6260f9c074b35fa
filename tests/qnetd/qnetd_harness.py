"""Test helper: drive the sans-IO server core directly (no sockets) with a manual clock."""

from __future__ import annotations

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, NodeInfo, NodeListType, RingId, TieBreaker
from corosync.exec.qnetd.server import Close, QnetdServer, Send, ServerConfig, StartTls


class Harness:
    def __init__(self, **cfg) -> None:
        cfg.setdefault("tls", 0)
        self.server = QnetdServer(ServerConfig(**cfg))
        self.now = 0.0
        self.next_id = 1
        self.inbox: dict[int, list[P.Message]] = {}
        self.raw: dict[int, list[bytes]] = {}
        self.closed: set[int] = set()
        self.tls: set[int] = set()

    def _flush(self) -> None:
        for act in self.server.take_actions():
            if isinstance(act, Send):
                self.raw.setdefault(act.conn_id, []).append(act.data)
                self.inbox.setdefault(act.conn_id, []).append(P.decode(act.data))
            elif isinstance(act, Close):
                self.closed.add(act.conn_id)
            elif isinstance(act, StartTls):
                self.tls.add(act.conn_id)

    def connect(self) -> int:
        cid = self.next_id
        self.next_id += 1
        ok = self.server.accept(cid, f"127.0.0.1:{40000 + cid}", self.now)
        self._flush()
        return cid if ok else -cid

    def send(self, cid: int, data: bytes) -> None:
        hdr = P.parse_header(data)
        if self.server.must_skip(hdr):
            self.server.on_skipped(cid, hdr, self.now)
        else:
            self.server.on_message(cid, data, self.now)
        self._flush()

    def close(self, cid: int) -> None:
        self.server.on_closed(cid, self.now)
        self._flush()

    def tick(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            dl = self.server.next_deadline()
            if dl is None or dl > target:
                break
            self.now = dl
            self.server.advance(dl)
            self._flush()
        self.now = target
        self.server.advance(target)
        self._flush()

    def take(self, cid: int) -> list[P.Message]:
        out = self.inbox.get(cid, [])
        self.inbox[cid] = []
        self.raw[cid] = []
        return out

    def client(self, node_id: int, algorithm: int = Algorithm.FFSPLIT, cluster: bytes = b"lab",
               tb: TieBreaker = TieBreaker(), ring: RingId = RingId(1, 1), hb: int = 8000,
               kap: int | None = None) -> int:
        """Connect, PREINIT, INIT (and optional SET_OPTION kap); replies are discarded."""
        cid = self.connect()
        self.send(cid, P.build_preinit(1, cluster))
        self.send(cid, P.build_init(2, node_id, algorithm, hb, tb, ring))
        replies = self.take(cid)
        assert replies[-1].type == P.MsgType.INIT_REPLY and replies[-1].reply_error_code == 0, replies
        if kap is not None:
            self.send(cid, P.build_set_option(3, kap=kap))
            self.take(cid)
        return cid


def nodes(*ids: int, state: int = 0) -> list[NodeInfo]:
    return [NodeInfo(i, 0, state) for i in ids]


def config(seq: int, *ids: int, changed: bool = False) -> bytes:
    return P.build_node_list(seq, NodeListType.CHANGED_CONFIG if changed else NodeListType.INITIAL_CONFIG,
                             nodes(*ids))


def membership(seq: int, ring: RingId, *ids: int, heuristics: int = 0) -> bytes:
    return P.build_node_list(seq, NodeListType.MEMBERSHIP, nodes(*ids), ring=ring, heuristics=heuristics)


def quorum(seq: int, *ids: int, quorate: int = 1) -> bytes:
    return P.build_node_list(seq, NodeListType.QUORUM, nodes(*ids, state=1), quorate=quorate)
