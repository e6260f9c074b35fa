"""The qnetd server core, sans-IO: message handling, clusters, timers (spec §5, §6).

The driver (:mod:`.daemon` with trio, or a test replaying a capture) owns sockets and the
clock.  It tells the core what happened -- a connection was accepted, a complete message
arrived, a message was skipped by the framer, TLS came up, the peer went away, time
passed -- always with its current time ``now`` in seconds, and then carries out the
actions from :meth:`QnetdServer.take_actions` in order:

* :class:`Send`: queue these bytes on that connection (order matters: VOTE_INFO produced
  while handling a message is queued before that message's reply, as upstream does).
* :class:`StartTls`: the next bytes on that connection are a TLS ClientHello; become a
  TLS server, then call :meth:`QnetdServer.on_tls_established`.
* :class:`Close`: close that connection (the core has already forgotten it).

Timers (dead-peer detection and the lms algorithm timer) are deadlines kept in the client
state; the driver sleeps until :meth:`QnetdServer.next_deadline` and calls
:meth:`QnetdServer.advance`.  Keeping the clock outside makes every decision replayable
from a packet capture with the capture's own timestamps.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import attrs
from attrs import frozen

from . import protocol as P
from .algorithms import ALGORITHMS, AlgoError
from .model import Client, Cluster
from .protocol import Err, Header, Message, MsgType, NodeListType, RingId, Vote

LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG = 3, 4, 5, 6, 7


@frozen
class Send:
    conn_id: int
    data: bytes


@frozen
class StartTls:
    conn_id: int


@frozen
class Close:
    conn_id: int


Action = Union[Send, StartTls, Close]


@attrs.define
class ServerConfig:
    """The behaviour-relevant settings (CLI ``-s``/``-c``/``-m`` and ``-S`` values)."""

    tls: int = P.TlsSupported.SUPPORTED
    client_cert_required: bool = True
    max_clients: int = 0
    max_client_receive_size: int = 32768
    max_client_send_size: int = 32768
    max_client_send_buffers: int = 32
    heartbeat_interval_min: int = 1000
    heartbeat_interval_max: int = 120000
    dpd_enabled: bool = True
    dpd_interval_coefficient: float = 1.5
    keep_active_partition_tie_breaker: bool = False


def cert_name_matches(names: list[str], cluster_name: bytes) -> bool:
    """NSS-style host-name match: ASCII case-insensitive, optional leading ``*.``."""
    try:
        wanted = cluster_name.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    for name in names:
        n = name.lower()
        if n == wanted:
            return True
        if n.startswith("*.") and "." in wanted:
            head, _, tail = wanted.partition(".")
            if head and tail == n[2:]:
                return True
    return False


class QnetdServer:
    def __init__(self, cfg: ServerConfig,
                 log: Optional[Callable[[int, str], None]] = None) -> None:
        self.cfg = cfg
        self.clients: dict[int, Client] = {}
        self.clusters: dict[bytes, Cluster] = {}
        self._actions: list[Action] = []
        self._log = log or (lambda level, text: None)
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ driver API

    def take_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def accept(self, conn_id: int, addr: str, now: float) -> bool:
        """A TCP connection arrived; False = over ``-m``: close it without a word."""
        if self.cfg.max_clients and len(self.clients) >= self.cfg.max_clients:
            self._count("refused_max_clients")
            self._log(LOG_ERR, f"Maximum clients reached. Not accepting connection from {addr}")
            return False
        self._now = now
        client = Client(conn_id=conn_id, addr=addr)
        self.clients[conn_id] = client
        self._restart_dpd(client, now)
        self._log(LOG_DEBUG, f"New client connected from {addr}")
        return True

    def on_skipped(self, conn_id: int, header: Header, now: float) -> None:
        """The framer skipped a message (unknown type or too long); payload discarded."""
        client = self.clients.get(conn_id)
        if client is None:
            return
        if not P.is_known_type(header.type):
            code = Err.UNSUPPORTED_MESSAGE if header.length else Err.NO_ERROR  # stock quirk
            self._count("unsupported_message")
        else:
            code = Err.MESSAGE_TOO_LONG
            self._count("message_too_long")
        self._send(client, P.build_server_error(None, code))

    def must_skip(self, header: Header) -> bool:
        return (not P.is_known_type(header.type)
                or header.total > self.cfg.max_client_receive_size)

    def on_message(self, conn_id: int, data: bytes, now: float) -> None:
        client = self.clients.get(conn_id)
        if client is None:
            return
        if len(data) >= P.HEADER_SIZE and self.must_skip(P.parse_header(data)):
            self.on_skipped(conn_id, P.parse_header(data), now)  # a driver that did not frame
            return
        self._restart_dpd(client, now)
        try:
            msg = P.decode(data)
        except P.DecodeError as exc:
            self._count("decode_errors")
            self._log(LOG_WARNING, f"Client {client.addr} sent undecodable message: {exc.reason}")
            self._send(client, P.build_server_error(exc.seq, Err.ERROR_DECODING_MSG))
            return
        self._log(LOG_DEBUG, f"Client {client.addr} sent {P.MSG_TYPE_TEXT[msg.type]} message, "
                             f"seq {msg.seq}")
        self._dispatch(client, msg, data, now)

    def on_tls_established(self, conn_id: int, peer_names: Optional[list[str]], now: float) -> None:
        client = self.clients.get(conn_id)
        if client is None:
            return
        client.peer_cert_names = peer_names
        client.tls_peer_verified = peer_names is not None

    def on_closed(self, conn_id: int, now: float) -> None:
        """The peer closed the connection or it failed (the driver already closed it)."""
        self._now = now
        client = self.clients.get(conn_id)
        if client is not None:
            self._disconnect(client, server_going_down=False, emit_close=False)

    def disconnect(self, conn_id: int, now: float, reason: str) -> None:
        """Driver-detected fatal condition (send queue overflow, TLS failure)."""
        client = self.clients.get(conn_id)
        if client is not None:
            self._log(LOG_WARNING, f"Client {client.addr}: {reason}. Disconnecting")
            self._disconnect(client, server_going_down=False, emit_close=True)

    def shutdown(self, now: float) -> None:
        for client in list(self.clients.values()):
            self._disconnect(client, server_going_down=True, emit_close=True)

    def next_deadline(self) -> Optional[float]:
        best: Optional[float] = None
        for c in self.clients.values():
            for d in (c.dpd_deadline, c.algo_deadline):
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def advance(self, now: float) -> None:
        """Fire every timer due at ``now`` (earliest first)."""
        self._now = now
        while True:
            due: Optional[tuple[float, int, Client]] = None
            for c in self.clients.values():
                for kind, d in ((0, c.dpd_deadline), (1, c.algo_deadline)):
                    if d is not None and d <= now and (due is None or d < due[0]):
                        due = (d, kind, c)
            if due is None:
                return
            _, kind, c = due
            if kind == 0:
                c.dpd_deadline = None
                ms = int(round(c.heartbeat_ms * self.cfg.dpd_interval_coefficient))
                self._log(LOG_WARNING, f"Client {c.addr} doesn't sent any message during {ms}ms. "
                                       "Disconnecting")
                self._count("dpd_disconnects")
                self._disconnect(c, server_going_down=False, emit_close=True)
            else:
                c.algo_deadline = None
                ALGORITHMS[c.algorithm].timer(self, c)

    # ------------------------------------------------------------------ AlgoContext

    def send_vote_info(self, client: Client, seq: int, vote: int, ring: RingId) -> None:
        self._log(LOG_DEBUG, f"Sending vote info to client {client.addr} (cluster "
                             f"{client.cluster_name!r}, node_id {client.node_id}): seq {seq}, "
                             f"vote {P.VOTE_TEXT[vote]}, ring id ({ring})")
        self._record_vote(client, vote)
        self._send(client, P.build_vote_info(seq, vote, ring))

    def start_algo_timer(self, client: Client, ms: int) -> None:
        client.algo_deadline = self._now + ms / 1000.0

    def stop_algo_timer(self, client: Client) -> None:
        client.algo_deadline = None

    # ------------------------------------------------------------------ internals

    _now: float = 0.0

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _send(self, client: Client, data: bytes) -> None:
        self._actions.append(Send(client.conn_id, data))

    def _error(self, client: Client, msg: Message, code: int) -> None:
        self._send(client, P.build_server_error(msg.seq, code))

    def _restart_dpd(self, client: Client, now: float) -> None:
        self._now = now
        if self.cfg.dpd_enabled:
            client.dpd_deadline = now + client.heartbeat_ms * self.cfg.dpd_interval_coefficient / 1000.0

    def _record_vote(self, client: Client, vote: int) -> None:
        client.last_sent_vote = vote
        if vote in (Vote.ACK, Vote.NACK):
            client.last_sent_ack_nack = vote

    def _disconnect(self, client: Client, server_going_down: bool, emit_close: bool) -> None:
        if client.initialised:
            ALGORITHMS[client.algorithm].disconnect(self, client, server_going_down)
        client.dpd_deadline = None
        client.algo_deadline = None
        if emit_close:
            self._actions.append(Close(client.conn_id))
        cl = client.cluster
        if cl is not None:
            cl.clients.remove(client)
            client.cluster = None
            if not cl.clients:
                del self.clusters[cl.name]
        self.clients.pop(client.conn_id, None)

    def _tls_check(self, client: Client, msg: Message) -> bool:
        """Gate of spec §5.2; False = the message must not be processed."""
        if self.cfg.tls == P.TlsSupported.UNSUPPORTED:
            return True
        if self.cfg.tls == P.TlsSupported.REQUIRED and not client.tls_started:
            self._error(client, msg, Err.TLS_REQUIRED)
            return False
        if client.tls_started and self.cfg.client_cert_required and not client.cert_name_checked:
            names = client.peer_cert_names or []
            if not cert_name_matches(names, client.cluster_name or b""):
                self._log(LOG_ERR, f"Client {client.addr} certificate names {names} do not match "
                                   f"cluster name {client.cluster_name!r}. Disconnecting")
                self._count("cert_name_mismatch")
                self._disconnect(client, server_going_down=False, emit_close=True)
                return False
            client.cert_name_checked = True
        return True

    def _dispatch(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        t = msg.type
        if t in P.SERVER_SIDE_TYPES:
            self._count("unexpected_message")
            self._error(client, msg, Err.UNEXPECTED_MESSAGE)
        elif t == MsgType.PREINIT:
            self._preinit(client, msg)
        elif t == MsgType.STARTTLS:
            self._starttls(client, msg)
        elif t == MsgType.INIT:
            if self._tls_check(client, msg):
                self._init(client, msg, now)
        else:
            if not self._tls_check(client, msg):
                return
            if not client.initialised:
                self._error(client, msg, Err.INIT_REQUIRED)
                return
            handler = {
                MsgType.SET_OPTION: self._set_option,
                MsgType.ECHO_REQUEST: self._echo,
                MsgType.NODE_LIST: self._node_list,
                MsgType.ASK_FOR_VOTE: self._ask_for_vote,
                MsgType.VOTE_INFO_REPLY: self._vote_info_reply,
                MsgType.HEURISTICS_CHANGE: self._heuristics_change,
            }[MsgType(t)]
            handler(client, msg, raw, now)

    def _preinit(self, client: Client, msg: Message) -> None:
        if msg.cluster_name is None:
            self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        if client.cluster_name != msg.cluster_name:
            # a certificate was checked against the old name only (upstream never re-checks)
            client.cert_name_checked = False
        client.cluster_name = msg.cluster_name
        client.preinit_received = True
        self._send(client, P.build_preinit_reply(msg.seq, self.cfg.tls,
                                                 1 if self.cfg.client_cert_required else 0))

    def _starttls(self, client: Client, msg: Message) -> None:
        if not client.preinit_received:
            self._error(client, msg, Err.PREINIT_REQUIRED)
            return
        if self.cfg.tls == P.TlsSupported.UNSUPPORTED or client.tls_started:
            # -s off: no certificate, the stock server just closes.  A second STARTTLS is
            # unguarded upstream; we refuse it the same way instead of nesting TLS.
            self._disconnect(client, server_going_down=False, emit_close=True)
            return
        client.tls_started = True
        self._actions.append(StartTls(client.conn_id))

    def _init(self, client: Client, msg: Message, now: float) -> None:
        cfg = self.cfg
        code = Err.NO_ERROR
        if not client.preinit_received:
            code = Err.PREINIT_REQUIRED
        elif msg.node_id is None or msg.ring_id is None or msg.heartbeat_interval is None:
            code = Err.DOESNT_CONTAIN_REQUIRED_OPTION
        hb = msg.heartbeat_interval
        if client.preinit_received and not (
                cfg.heartbeat_interval_min <= (hb or 0) <= cfg.heartbeat_interval_max):
            # upstream range-checks even a missing interval (as 0) and overwrites earlier
            # codes: an INIT without heartbeat gets 13, not 7 (verified against Debian)
            code = Err.INVALID_HEARTBEAT_INTERVAL
        if code == Err.NO_ERROR and msg.tie_breaker is None:
            code = Err.DOESNT_CONTAIN_REQUIRED_OPTION
        if code == Err.NO_ERROR:
            if msg.decision_algorithm is None:
                code = Err.DOESNT_CONTAIN_REQUIRED_OPTION
            elif msg.decision_algorithm not in ALGORITHMS:
                code = Err.UNSUPPORTED_DECISION_ALGORITHM
        cluster = self.clusters.get(client.cluster_name or b"")
        if code == Err.NO_ERROR and cluster is not None:
            for other in cluster.clients:
                if not other.tie_breaker.same_as(msg.tie_breaker):
                    code = Err.TIE_BREAKER_DIFFERS_FROM_OTHER_NODES
                elif other.algorithm != msg.decision_algorithm:
                    code = Err.ALGORITHM_DIFFERS_FROM_OTHER_NODES
                elif other.node_id == msg.node_id:
                    code = Err.DUPLICATE_NODE_ID
                if code:
                    break
        if code == Err.NO_ERROR and client.initialised:
            code = Err.DUPLICATE_NODE_ID  # a second INIT never re-registers a client
        if code == Err.NO_ERROR:
            assert msg.node_id is not None and msg.ring_id is not None and hb is not None
            assert msg.tie_breaker is not None and msg.decision_algorithm is not None
            client.node_id = msg.node_id
            client.algorithm = msg.decision_algorithm
            client.tie_breaker = msg.tie_breaker
            client.heartbeat_ms = hb
            client.kap = cfg.keep_active_partition_tie_breaker
            client.ring_id = msg.ring_id
            if cluster is None:
                cluster = Cluster(client.cluster_name or b"")
                self.clusters[cluster.name] = cluster
            cluster.add(client)
            client.cluster = cluster
            client.initialised = True
            self._restart_dpd(client, now)
            ALGORITHMS[client.algorithm].init(self, client)
        else:
            self._count("init_refused")
        reply = P.build_init_reply(code, msg.seq, msg.supported_messages is not None,
                                   cfg.max_client_receive_size, cfg.max_client_send_size,
                                   with_options=msg.supported_options is not None)
        self._send(client, reply)

    def _set_option(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        hb = msg.heartbeat_interval
        if hb is not None:
            if not (self.cfg.heartbeat_interval_min <= hb <= self.cfg.heartbeat_interval_max):
                self._error(client, msg, Err.INVALID_HEARTBEAT_INTERVAL)
                return
            client.heartbeat_ms = hb
            self._restart_dpd(client, now)
        if msg.keep_active_partition_tie_breaker is not None:
            client.kap = bool(msg.keep_active_partition_tie_breaker)
        self._send(client, P.build_set_option_reply(
            msg.seq, client.heartbeat_ms if hb is not None else None,
            int(client.kap) if msg.keep_active_partition_tie_breaker is not None else None))

    def _echo(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        self._send(client, P.build_echo_reply(raw))

    def _node_list(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        if msg.node_list_type is None or msg.seq is None:
            self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        algo = ALGORITHMS[client.algorithm]
        lt = msg.node_list_type
        try:
            if lt in (NodeListType.INITIAL_CONFIG, NodeListType.CHANGED_CONFIG):
                vote = algo.config_list(self, client, lt, msg.nodes)
            elif lt == NodeListType.MEMBERSHIP:
                if msg.ring_id is None:
                    self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
                    return
                vote = algo.membership_list(self, client, msg.ring_id, msg.nodes,
                                            msg.heuristics or 0)
            else:
                if msg.quorate is None:
                    self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
                    return
                vote = algo.quorum_list(self, client, msg.quorate, msg.nodes)
        except AlgoError as exc:
            self._error(client, msg, exc.code)
            return
        if lt in (NodeListType.INITIAL_CONFIG, NodeListType.CHANGED_CONFIG):
            client.config_list = list(msg.nodes)
            client.config_version = msg.config_version
            client.config_received = True
        elif lt == NodeListType.MEMBERSHIP:
            assert msg.ring_id is not None
            client.membership = list(msg.nodes)
            client.membership_received = True
            client.ring_id = msg.ring_id
            client.heur_membership = client.heur_latest = msg.heuristics or 0
        else:
            client.quorum_list = list(msg.nodes)
            client.quorate = msg.quorate or 0
        self._record_vote(client, vote)
        self._send(client, P.build_node_list_reply(msg.seq, lt, client.ring_id, vote))

    def _ask_for_vote(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        if msg.seq is None:
            self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        try:
            vote = ALGORITHMS[client.algorithm].ask_for_vote(self, client)
        except AlgoError as exc:
            self._error(client, msg, exc.code)
            return
        self._record_vote(client, vote)
        self._send(client, P.build_ask_for_vote_reply(msg.seq, vote, client.ring_id))

    def _vote_info_reply(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        if msg.seq is None:
            self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        ALGORITHMS[client.algorithm].vote_info_reply(self, client, msg.seq)

    def _heuristics_change(self, client: Client, msg: Message, raw: bytes, now: float) -> None:
        if msg.seq is None or msg.heuristics is None:
            self._error(client, msg, Err.DOESNT_CONTAIN_REQUIRED_OPTION)
            return
        try:
            vote = ALGORITHMS[client.algorithm].heuristics_change(self, client, msg.heuristics)
        except AlgoError as exc:
            self._error(client, msg, exc.code)
            return
        self._record_vote(client, vote)
        client.heur_regular = client.heur_latest = msg.heuristics
        self._send(client, P.build_heuristics_change_reply(msg.seq, vote, client.ring_id,
                                                           msg.heuristics))
