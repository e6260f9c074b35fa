"""The corosync-qdevice model-net client, sans-IO (spec/qnetd-wire.md §6, §12).

The driver (:mod:`.daemon` with trio, or a test replaying a capture) owns the TCP/TLS
socket, the votequorum connection and the clock.  It reports what happened -- votequorum
node-list / quorum notifications, the connection came up or failed, a complete message
arrived, TLS is up, the peer went away, time passed -- always with its current time ``now``
in seconds, then carries out :meth:`QdeviceNet.take_actions` in order:

* :class:`Connect`: open a TCP connection to the qnetd (driver enforces ``timeout_ms``),
  then call :meth:`~QdeviceNet.on_connected` or :meth:`~QdeviceNet.on_connect_failed`.
* :class:`Send`: write these bytes.
* :class:`StartTls`: become a TLS client on the connection, then call
  :meth:`~QdeviceNet.on_tls_established` (or :meth:`~QdeviceNet.on_closed` on failure).
* :class:`Close`: close the connection (the core already considers it gone).
* :class:`Poll`: votequorum ``qdevice_poll(cast_vote, ring_id)``.
* :class:`Exit`: the client gave up (incompatible server, fatal error); the daemon exits.

Why sans-IO: the stock client's behaviour is defined by the *order* of messages relative to
votequorum events and timers.  With the clock and the events outside, a test can replay the
server side of a Debian capture with the capture's own timestamps and compare our client's
bytes with the stock client's, message by message.

Heuristics: with ``mode: off`` (the default, and what every capture shows) the result is
"Undefined" and no heuristics TLV is sent.  Otherwise the core asks the driver to run the
commands (:class:`RunHeuristics`) on membership changes, after connect and every interval
(mode ``on``), and the lists / HEURISTICS_CHANGE carry the result.
"""

from __future__ import annotations

import enum
import random
from typing import Callable, Optional, Union

import attrs
from attrs import frozen

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, MsgType, NodeInfo, RingId, Vote

#: minimum pause before retrying a connect that failed outright (refused, unresolvable)
CONNECT_RETRY_FLOOR_MS = 1000
#: the qdevice's own limits (qnet-config.h): the server must accept at least this much ...
MIN_SERVER_REQUEST_SIZE = 32768
#: ... and must not send more than this
MAX_SERVER_REPLY_SIZE = 16 * 1024 * 1024


class State(enum.Enum):
    WAITING_RING_ID = "waiting for ring id"
    WAITING_RECONNECT = "waiting before reconnect"
    CONNECTING = "connecting"
    WAITING_PREINIT_REPLY = "waiting for preinit reply"
    WAITING_TLS = "waiting for TLS handshake"
    WAITING_INIT_REPLY = "waiting for init reply"
    CONNECTED = "connected"
    EXITED = "exited"


#: texts corosync-qdevice-tool prints for the state (qdevice-net-instance.h order)
STATE_TEXT = {
    State.WAITING_RING_ID: "Waiting for ring id",
    State.WAITING_RECONNECT: "Connect failed",
    State.CONNECTING: "Waiting for connect",
    State.WAITING_PREINIT_REPLY: "Waiting for preinit reply",
    State.WAITING_TLS: "Waiting for TLS",
    State.WAITING_INIT_REPLY: "Waiting for init reply",
    State.CONNECTED: "Connected",
    State.EXITED: "Exited",
}


class Reason(enum.Enum):
    """Why a connection ended; ``retry`` says whether the stock client reconnects (§12.6)."""

    CANT_DECODE = ("can't decode a message", True)
    SERVER_CLOSED = ("server closed the connection", True)
    CONNECT_FAILED = ("can't connect to qnetd", True)
    CONNECT_TIMEOUT = ("connect timeout", True)
    ECHO_REPLY_NOT_RECEIVED = ("server didn't send echo reply message on time", True)
    ECHO_REPLY_WRONG_SEQ = ("echo reply with unexpected seq number", False)
    INIT_REPLY_RETRYABLE = ("init reply error (tie-breaker/algorithm/node id)", True)
    INIT_REPLY_ERROR = ("init reply error", False)
    SERVER_ERROR = ("server sent an error", False)
    INCOMPATIBLE_TLS = ("incompatible TLS configuration", False)
    REQUIRED_OPTION_MISSING = ("required option missing in reply", False)
    UNEXPECTED_SEQ = ("unexpected sequence number", False)
    INCOMPATIBLE_SIZES = ("server sizes incompatible", False)
    UNSUPPORTED_ALGORITHM = ("server doesn't support the decision algorithm", False)
    UNEXPECTED_MESSAGE = ("unexpected message", False)

    @property
    def text(self) -> str:
        return self.value[0]

    @property
    def retry(self) -> bool:
        return self.value[1]


@frozen
class Connect:
    host: str
    port: int
    timeout_ms: int
    ip_version: int = 0


@frozen
class Send:
    data: bytes


@frozen
class StartTls:
    pass


@frozen
class Close:
    reason: Reason


@frozen
class Poll:
    cast_vote: bool
    ring_id: RingId


@frozen
class RunHeuristics:
    """Run the configured ``exec_*`` commands (all must exit 0 to pass) within
    ``timeout_ms``, then call :meth:`QdeviceNet.on_heuristics_result` with ``seq``."""

    seq: int
    timeout_ms: int


@frozen
class Exit:
    reason: str


@frozen
class Log:
    level: int
    text: str


Action = Union[Connect, Send, StartTls, Close, Poll, RunHeuristics, Exit, Log]

HEURISTICS_OFF, HEURISTICS_ON, HEURISTICS_SYNC = 0, 1, 2
HEURISTICS_MODE_TEXT = {0: "Disabled", 1: "Enabled", 2: "Enabled only on sync"}

LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG = 3, 4, 5, 6, 7


@frozen
class AlgoTraits:
    """How the client-side algorithms differ (§12.5); the server does the deciding."""

    nack_on_disconnect: bool
    reconnect_after_error: bool


TRAITS = {
    Algorithm.FFSPLIT: AlgoTraits(nack_on_disconnect=True, reconnect_after_error=False),
    Algorithm.LMS: AlgoTraits(nack_on_disconnect=True, reconnect_after_error=True),
    Algorithm.TWO_NODE_LMS: AlgoTraits(nack_on_disconnect=False, reconnect_after_error=False),
    Algorithm.TEST: AlgoTraits(nack_on_disconnect=False, reconnect_after_error=False),
}


@attrs.define
class QdeviceConfig:
    """Everything the protocol needs, already derived from corosync.conf (§12.1)."""

    cluster_name: bytes
    node_id: int
    host: str
    port: int = 5403
    tls: int = P.TlsSupported.SUPPORTED  # quorum.device.net.tls: 0 off, 1 on, 2 required
    algorithm: int = Algorithm.FFSPLIT
    tie_breaker: P.TieBreaker = P.TieBreaker()
    timeout_ms: int = 10000  # quorum.device.timeout
    sync_timeout_ms: int = 30000  # quorum.device.sync_timeout
    connect_timeout_ms: Optional[int] = None  # default: the heartbeat interval
    force_ip_version: int = 0  # 0: any address family, 4 or 6: only that one
    # quorum.device.heuristics: mode off/on/sync, the exec_* commands, timers (ms; None =
    # the stock defaults timeout/2, sync_timeout/2, timeout*3)
    heuristics_mode: int = HEURISTICS_OFF
    heuristics_execs: tuple[tuple[str, str], ...] = ()
    heuristics_timeout_ms: Optional[int] = None
    heuristics_sync_timeout_ms: Optional[int] = None
    heuristics_interval_ms: Optional[int] = None
    keep_active_partition_tie_breaker: bool = True
    wait_for_all: bool = False
    config_nodes: tuple[NodeInfo, ...] = ()
    config_version: Optional[int] = None

    @property
    def heartbeat_ms(self) -> int:
        return min(max(int(self.timeout_ms * 0.8), 1000), 120000)

    @property
    def sync_heartbeat_ms(self) -> int:
        return min(max(int(self.sync_timeout_ms * 0.8), 1000), 120000)

    @property
    def cast_vote_interval_ms(self) -> int:
        return int(self.timeout_ms * 0.5)

    @property
    def heur_timeout_ms(self) -> int:
        return self.heuristics_timeout_ms or self.timeout_ms // 2

    @property
    def heur_sync_timeout_ms(self) -> int:
        return self.heuristics_sync_timeout_ms or self.sync_timeout_ms // 2

    @property
    def heur_interval_ms(self) -> int:
        return self.heuristics_interval_ms or self.timeout_ms * 3

    @property
    def heuristics_enabled(self) -> bool:
        return self.heuristics_mode != HEURISTICS_OFF and bool(self.heuristics_execs)

    @property
    def connect_ms(self) -> int:
        return self.connect_timeout_ms if self.connect_timeout_ms is not None else self.heartbeat_ms


class QdeviceNet:
    """One qdevice's net model: connection state, votequorum view, vote timer."""

    def __init__(self, cfg: QdeviceConfig, rng: Optional[Callable[[int], int]] = None) -> None:
        self.cfg = cfg
        #: rng(n) -> 0..n-1, for the reconnect delay (tests pass a deterministic one)
        self._rng = rng or (lambda n: random.randrange(n) if n > 0 else 0)
        self._actions: list[Action] = []
        self.state = State.WAITING_RING_ID
        # client message counter: starts at 1, never reset; PREINIT reuses the current value
        # (so a reconnect's PREINIT repeats the last seq sent, pitfall 8)
        self.msg_seq = 1
        self.echo_seq = 0
        self.echo_reply_seq = 0
        # votequorum view
        self.vq_ring_id: Optional[RingId] = None
        self.vq_nodes: tuple[int, ...] = ()
        self.vq_quorate = False
        self.vq_quorum_nodes: tuple[tuple[int, int], ...] = ()
        self.expected_votes = 0
        # vote timer (qdevice-net-cast-vote-timer semantics)
        self.vote: int = Vote.UNDEFINED
        self.vote_timer_due: Optional[float] = None  # None = stopped
        self.vote_timer_paused = False
        self.last_poll: Optional[tuple[float, bool]] = None
        # connection
        self.last_sent_ring_id: Optional[RingId] = None
        self.echo_due: Optional[float] = None
        self.reconnect_due: Optional[float] = None
        #: from Connect until INIT_REPLY is accepted (a server that accepts TCP but never
        #: answers -- e.g. SIGSTOPped -- is given up after connect_timeout, as upstream)
        self.connect_due: Optional[float] = None
        self.server_supports_kap = False
        self.tls_active = False
        self.tls_cert_sent = False  # the driver sets it when the server asked for our cert
        self.last_echo_reply: Optional[float] = None
        self.tls_server: Optional[int] = None
        self.connected_since: Optional[float] = None
        self.disconnect_reason: Optional[Reason] = None
        self.stats = {"decode_errors": 0, "ignored_votes": 0}
        # heuristics: one outstanding run at a time, identified by seq; what it was for
        self.server_supports_heuristics = False
        self._heur_seq = 0
        self._heur_purpose: dict[int, str] = {}
        self.heur_due: Optional[float] = None  # regular run (mode on, while connected)
        self.latest_heuristics = P.Heuristics.UNDEFINED
        self.latest_regular_heuristics = P.Heuristics.UNDEFINED
        self.latest_vq_heuristics = P.Heuristics.UNDEFINED
        self.latest_connect_heuristics = P.Heuristics.UNDEFINED

    # ------------------------------------------------------------------ plumbing
    def take_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def _log(self, level: int, text: str) -> None:
        self._actions.append(Log(level, text))

    def _send(self, data: bytes) -> None:
        self._actions.append(Send(data))

    def _next_seq(self) -> int:
        self.msg_seq = (self.msg_seq + 1) & 0xFFFFFFFF
        return self.msg_seq

    def next_deadline(self) -> Optional[float]:
        dues = [d for d in (self.echo_due, self.reconnect_due, self.connect_due, self.heur_due)
                if d is not None]
        if self.vote_timer_due is not None and not self.vote_timer_paused:
            dues.append(self.vote_timer_due)
        return min(dues) if dues else None

    @property
    def connected(self) -> bool:
        return self.state == State.CONNECTED

    # ------------------------------------------------------------------ vote timer
    def _poll(self, now: float) -> None:
        cast = self.vote == Vote.ACK
        self.last_poll = (now, cast)
        assert self.vq_ring_id is not None
        self._actions.append(Poll(cast, self.vq_ring_id))

    def _update_vote(self, vote: int, now: float) -> None:
        """ACK/NACK: (re)start polling now; ASK_LATER/WAIT_FOR_REPLY: stop; NO_CHANGE: keep."""
        if vote in (Vote.NO_CHANGE, Vote.UNDEFINED):
            return
        self.vote = vote
        if vote in (Vote.ACK, Vote.NACK):
            if self.vote_timer_due is None:
                self._log(LOG_DEBUG, f"Cast vote timer is now scheduled every "
                          f"{self.cfg.cast_vote_interval_ms}ms voting {P.VOTE_TEXT[vote]}.")
            self.vote_timer_due = now + self.cfg.cast_vote_interval_ms / 1000
            if not self.vote_timer_paused:
                self._poll(now)
        else:
            if self.vote_timer_due is not None:
                self._log(LOG_DEBUG, "Cast vote timer is now stopped.")
            self.vote_timer_due = None

    @property
    def vote_timer_running(self) -> bool:
        return self.vote_timer_due is not None and not self.vote_timer_paused

    # ------------------------------------------------------------------ votequorum events
    def on_vq_nodelist(self, ring_id: RingId, nodes: tuple[int, ...], now: float) -> None:
        """votequorum node list notification (the driver runs it first, then quorum ones)."""
        self.vq_ring_id = ring_id
        self.vq_nodes = tuple(nodes)
        if self.cfg.heuristics_enabled:
            # pause the vote timer, run the heuristics (sync timeout), then send the list
            self.heur_due = None
            if not self.connected and self.vote == Vote.ACK:
                self._update_vote(Vote.NACK, now)
            self.vote_timer_paused = True
            self._run_heuristics("membership", self.cfg.heur_sync_timeout_ms)
            if self.state == State.WAITING_RING_ID:
                self._start_connect(now)
            return
        # the real client pauses the vote timer, then (heuristics disabled: at once) sends the
        # membership list and resumes with WAIT_FOR_REPLY; offline an ACK decays to NACK
        if self.connected:
            self._send_membership()
            self._update_vote(Vote.WAIT_FOR_REPLY, now)
        elif self.vote == Vote.ACK:
            self._update_vote(Vote.NACK, now)
        if self.state == State.WAITING_RING_ID:
            self._start_connect(now)

    def on_vq_quorum(self, quorate: bool, nodes: tuple[tuple[int, int], ...], now: float) -> None:
        self.vq_quorate = quorate
        self.vq_quorum_nodes = tuple(nodes)
        if self.connected:
            self._send_quorum()
        elif self.vote == Vote.ACK:
            self._update_vote(Vote.NACK, now)

    def on_vq_expected_votes(self, expected: int, now: float) -> None:
        self.expected_votes = expected

    # ------------------------------------------------------------------ connection
    def _start_connect(self, now: float) -> None:
        self.state = State.CONNECTING
        self.reconnect_due = None
        self.connect_due = now + self.cfg.connect_ms / 1000
        self._log(LOG_DEBUG, f"Trying connect to qnetd server {self.cfg.host}:{self.cfg.port} "
                  f"(timeout = {self.cfg.connect_ms}ms)")
        self._actions.append(Connect(self.cfg.host, self.cfg.port, self.cfg.connect_ms,
                                     self.cfg.force_ip_version))

    def on_connected(self, now: float) -> None:
        if self.state != State.CONNECTING:
            return
        self.state = State.WAITING_PREINIT_REPLY
        self._log(LOG_DEBUG, "Sending preinit msg to qnetd")
        self._send(P.build_preinit(self.msg_seq, self.cfg.cluster_name))

    def on_connect_failed(self, now: float) -> None:
        if self.state == State.CONNECTING:
            self._disconnected(Reason.CONNECT_FAILED, now, close=False)

    def on_closed(self, now: float) -> None:
        """The peer closed, a read/write failed, or the TLS handshake failed."""
        if self.state in (State.WAITING_PREINIT_REPLY, State.WAITING_TLS,
                          State.WAITING_INIT_REPLY, State.CONNECTED):
            self._disconnected(Reason.SERVER_CLOSED, now, close=False)

    def on_tls_established(self, now: float) -> None:
        if self.state != State.WAITING_TLS:
            return
        self.tls_active = True
        self._send_init()

    def _send_init(self) -> None:
        self.state = State.WAITING_INIT_REPLY
        assert self.vq_ring_id is not None
        self.last_sent_ring_id = self.vq_ring_id
        self._log(LOG_DEBUG, "Sending init msg to qnetd")
        self._send(P.build_init(self._next_seq(), self.cfg.node_id, self.cfg.algorithm,
                                self.cfg.heartbeat_ms, self.cfg.tie_breaker, self.vq_ring_id))

    def _disconnected(self, reason: Reason, now: float, close: bool = True) -> None:
        """Tear down the connection; vote per algorithm; reconnect after a random delay or exit."""
        if close:
            self._actions.append(Close(reason))
        level = LOG_DEBUG if reason == Reason.CONNECT_FAILED else LOG_ERR
        self._log(level, f"Disconnected from qnetd: {reason.text}")
        self.disconnect_reason = reason
        self.echo_due = None
        self.connect_due = None
        self.heur_due = None
        self._heur_purpose = {k: v for k, v in self._heur_purpose.items() if v == "membership"}
        self.tls_active = False
        self.connected_since = None
        self.vote_timer_paused = False
        traits = TRAITS.get(Algorithm(self.cfg.algorithm), TRAITS[Algorithm.FFSPLIT])
        if traits.nack_on_disconnect:
            keep = (self.cfg.algorithm == Algorithm.LMS and self.vq_quorate
                    and self.cfg.wait_for_all)
            if not keep:
                self._update_vote(Vote.NACK, now)
        retry = reason.retry or traits.reconnect_after_error
        if not retry:
            self.state = State.EXITED
            self.vote_timer_due = None
            self._actions.append(Exit(reason.text))
            return
        self.state = State.WAITING_RECONNECT
        delay_ms = self._rng(int(self.cfg.cast_vote_interval_ms * 0.9))
        if reason == Reason.CONNECT_FAILED:
            # upstream retries a failed connect at once; an unresolvable or refusing host
            # would make that a busy loop (and a log flood), so wait at least a second
            delay_ms = max(delay_ms, CONNECT_RETRY_FLOOR_MS)
        self.reconnect_due = now + delay_ms / 1000
        self._log(LOG_DEBUG, f"Sleeping for {delay_ms} ms before reconnect")

    # ------------------------------------------------------------------ timers
    def advance(self, now: float) -> None:
        if self.connect_due is not None and now >= self.connect_due:
            self._log(LOG_ERR, "Connect timeout")
            self._disconnected(Reason.CONNECT_TIMEOUT, now)
        if self.reconnect_due is not None and now >= self.reconnect_due:
            self._start_connect(now)
        if self.echo_due is not None and now >= self.echo_due:
            self._echo_tick(now)
        if self.heur_due is not None and now >= self.heur_due:
            self.heur_due = None
            self._run_heuristics("regular", self.cfg.heur_timeout_ms)
        if self.vote_timer_running and self.vote_timer_due is not None \
                and now >= self.vote_timer_due:
            self.vote_timer_due += self.cfg.cast_vote_interval_ms / 1000
            if self.vote_timer_due <= now:  # the driver slept long; do not burst
                self.vote_timer_due = now + self.cfg.cast_vote_interval_ms / 1000
            self._poll(now)

    def _echo_tick(self, now: float) -> None:
        if self.echo_seq != self.echo_reply_seq:
            lms_keeps = (self.cfg.algorithm == Algorithm.LMS and self.vq_quorate
                         and self.cfg.wait_for_all)
            if not lms_keeps:
                self._log(LOG_ERR, "Server didn't send echo reply message on time")
                self._disconnected(Reason.ECHO_REPLY_NOT_RECEIVED, now)
                return
        self.echo_seq = (self.echo_seq + 1) & 0xFFFFFFFF
        self._send(P.build_echo_request(self.echo_seq))
        self.echo_due = now + self.cfg.heartbeat_ms / 1000

    # ------------------------------------------------------------------ node lists
    def _send_config(self, list_type: int = P.NodeListType.INITIAL_CONFIG) -> None:
        self._send(P.build_node_list(self._next_seq(), list_type, self.cfg.config_nodes,
                                     config_version=self.cfg.config_version))

    def _send_membership(self, heuristics: int = P.Heuristics.UNDEFINED) -> None:
        assert self.vq_ring_id is not None
        self.last_sent_ring_id = self.vq_ring_id
        self._send(P.build_node_list(self._next_seq(), P.NodeListType.MEMBERSHIP,
                                     [NodeInfo(n) for n in self.vq_nodes], ring=self.vq_ring_id,
                                     heuristics=heuristics))

    def _send_quorum(self) -> None:
        nodes = [NodeInfo(n, node_state=s) for n, s in self.vq_quorum_nodes
                 if n != 0 and s in (1, 2, 3)]
        self._send(P.build_node_list(self._next_seq(), P.NodeListType.QUORUM, nodes,
                                     quorate=int(self.vq_quorate)))

    def config_changed(self, nodes: tuple[NodeInfo, ...], version: Optional[int],
                       now: float) -> None:
        """nodelist reload: CHANGED_CONFIG while connected, else an ACK decays to NACK."""
        self.cfg.config_nodes = tuple(nodes)
        self.cfg.config_version = version
        if self.connected:
            self._log(LOG_DEBUG, "Sending changed config node list")
            self._send_config(P.NodeListType.CHANGED_CONFIG)
        elif self.vote == Vote.ACK:
            self._update_vote(Vote.NACK, now)

    # ------------------------------------------------------------------ messages
    def on_message(self, data: bytes, now: float) -> None:
        """One complete message from the server (the driver frames by the 6-byte header)."""
        if self.state not in (State.WAITING_PREINIT_REPLY, State.WAITING_INIT_REPLY,
                              State.CONNECTED):
            return
        try:
            msg = P.decode(data)
        except P.DecodeError as exc:
            self.stats["decode_errors"] += 1
            self._log(LOG_ERR, f"Invalid message received from qnetd: {exc.reason}")
            self._disconnected(Reason.CANT_DECODE, now)
            return
        handler = {
            MsgType.PREINIT_REPLY: self._preinit_reply,
            MsgType.INIT_REPLY: self._init_reply,
            MsgType.SERVER_ERROR: self._server_error,
            MsgType.SET_OPTION_REPLY: self._set_option_reply,
            MsgType.ECHO_REPLY: self._echo_reply,
            MsgType.NODE_LIST_REPLY: self._vote_reply,
            MsgType.ASK_FOR_VOTE_REPLY: self._vote_reply,
            MsgType.VOTE_INFO: self._vote_info,
            MsgType.HEURISTICS_CHANGE_REPLY: self._vote_reply,
        }.get(msg.type)  # type: ignore[call-overload]
        if handler is None:
            self._log(LOG_ERR, f"Received unexpected message type {msg.type}")
            self._disconnected(Reason.UNEXPECTED_MESSAGE, now)
            return
        handler(msg, now)

    def _expect_state(self, msg: P.Message, state: State, now: float) -> bool:
        if self.state != state:
            self._log(LOG_ERR, f"Received unexpected {P.MSG_TYPE_TEXT[msg.type]} message")
            self._disconnected(Reason.UNEXPECTED_MESSAGE, now)
            return False
        return True

    def _preinit_reply(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.WAITING_PREINIT_REPLY, now):
            return
        self._log(LOG_DEBUG, "Received preinit reply msg")
        if msg.seq != self.msg_seq:
            self._disconnected(Reason.UNEXPECTED_SEQ, now)
            return
        if msg.tls_supported is None or msg.tls_client_cert_required is None:
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        self.tls_server = msg.tls_supported
        server, client = msg.tls_supported, self.cfg.tls
        if (server == 0 and client == 2) or (server == 2 and client == 0):
            self._log(LOG_ERR, f"Incompatible tls configuration (server {server} client {client})")
            self._disconnected(Reason.INCOMPATIBLE_TLS, now)
            return
        if server != 0 and client != 0:
            self.state = State.WAITING_TLS
            self._send(P.build_starttls(self._next_seq()))
            self._actions.append(StartTls())
            return
        self._send_init()

    def _init_reply(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.WAITING_INIT_REPLY, now):
            return
        self._log(LOG_DEBUG, "Received init reply msg")
        if msg.seq != self.msg_seq:
            self._disconnected(Reason.UNEXPECTED_SEQ, now)
            return
        if msg.reply_error_code is None:
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        if msg.reply_error_code != 0:
            self._log(LOG_ERR, f"Received init reply message with error code {msg.reply_error_code}")
            retry = msg.reply_error_code in (15, 16, 17)
            self._disconnected(Reason.INIT_REPLY_RETRYABLE if retry else Reason.INIT_REPLY_ERROR,
                               now)
            return
        if (msg.server_maximum_request_size is None or msg.server_maximum_reply_size is None
                or msg.supported_messages is None or msg.supported_options is None
                or msg.supported_decision_algorithms is None):
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        if self.cfg.algorithm not in msg.supported_decision_algorithms:
            self._disconnected(Reason.UNSUPPORTED_ALGORITHM, now)
            return
        if (msg.server_maximum_request_size < MIN_SERVER_REQUEST_SIZE
                or msg.server_maximum_reply_size > MAX_SERVER_REPLY_SIZE):
            self._disconnected(Reason.INCOMPATIBLE_SIZES, now)
            return
        self.server_supports_kap = P.Opt.KEEP_ACTIVE_PARTITION_TIE_BREAKER in msg.supported_options
        self.server_supports_heuristics = P.Opt.HEURISTICS in msg.supported_options
        if self.cfg.heuristics_enabled and not self.server_supports_heuristics:
            self._log(LOG_ERR, "Heuristics are enabled but the server doesn't support them")
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        # echo timer: counter reset, first ECHO_REQUEST (seq 1) one interval later
        self.echo_seq = self.echo_reply_seq = 0
        self.echo_due = now + self.cfg.heartbeat_ms / 1000
        self._log(LOG_DEBUG, f"Scheduling send of heartbeat every {self.cfg.heartbeat_ms}ms")
        if self.cfg.heuristics_mode == HEURISTICS_ON and self.cfg.heuristics_execs:
            # after-connect heuristics; the lists follow when the result is in
            self._log(LOG_DEBUG, "Executing after-connect heuristics.")
            self._run_heuristics("connect", self.cfg.heur_timeout_ms)
            return
        self._connected(P.Heuristics.UNDEFINED, now)

    def _connected(self, heuristics: int, now: float) -> None:
        """After the connect heuristics: options and the three lists, in the stock order."""
        if self.server_supports_kap:
            self._send(P.build_set_option(self._next_seq(),
                                          kap=int(self.cfg.keep_active_partition_tie_breaker)))
        self._send_config()
        self._send_membership(heuristics)
        self._send_quorum()
        self.state = State.CONNECTED
        self.connect_due = None
        self.connected_since = now
        self._update_vote(Vote.WAIT_FOR_REPLY, now)
        self.latest_connect_heuristics = self.latest_heuristics = heuristics
        self._schedule_regular_heuristics(now)

    # ------------------------------------------------------------------ heuristics
    def _run_heuristics(self, purpose: str, timeout_ms: int) -> None:
        self._heur_seq += 1
        # a newer run supersedes an older one of the same purpose
        self._heur_purpose = {k: v for k, v in self._heur_purpose.items() if v != purpose}
        self._heur_purpose[self._heur_seq] = purpose
        self._actions.append(RunHeuristics(self._heur_seq, timeout_ms))

    def _schedule_regular_heuristics(self, now: float) -> None:
        if self.cfg.heuristics_mode == HEURISTICS_ON and self.cfg.heuristics_execs \
                and self.connected:
            self.heur_due = now + self.cfg.heur_interval_ms / 1000

    def on_heuristics_result(self, seq: int, passed: bool, now: float) -> None:
        purpose = self._heur_purpose.pop(seq, None)
        if purpose is None:
            return  # superseded or stale
        result = P.Heuristics.PASS if passed else P.Heuristics.FAIL
        self._log(LOG_DEBUG, f"Heuristics ({purpose}) result: {P.HEURISTICS_TEXT[result]}")
        if purpose == "connect":
            if self.state == State.WAITING_INIT_REPLY:
                self._connected(result, now)
        elif purpose == "membership":
            self.latest_vq_heuristics = self.latest_heuristics = result
            self.vote_timer_paused = False
            if self.connected:
                self._send_membership(result)
                self._update_vote(Vote.WAIT_FOR_REPLY, now)
            elif self.vote_timer_due is not None and self.vote_timer_due <= now:
                self.vote_timer_due = now  # resume polling at once
            self._schedule_regular_heuristics(now)
        else:  # regular
            if result != self.latest_heuristics:
                self._log(LOG_NOTICE if result == P.Heuristics.PASS else LOG_ERR,
                          f"Heuristics result changed from "
                          f"{P.HEURISTICS_TEXT[self.latest_heuristics]} to "
                          f"{P.HEURISTICS_TEXT[result]}")
                if self.connected:
                    self._send(P.build_heuristics_change(self._next_seq(), result))
            self.latest_regular_heuristics = self.latest_heuristics = result
            self._schedule_regular_heuristics(now)

    def _server_error(self, msg: P.Message, now: float) -> None:
        self._log(LOG_ERR, f"Received server error {msg.reply_error_code}")
        self._disconnected(Reason.SERVER_ERROR, now)

    def _set_option_reply(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.CONNECTED, now):
            return
        if msg.heartbeat_interval is not None:
            self.echo_seq = self.echo_reply_seq = 0
            self.echo_due = now + self.cfg.heartbeat_ms / 1000

    def _echo_reply(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.CONNECTED, now):
            return
        if msg.seq != self.echo_seq:
            self._log(LOG_ERR, f"Received echo reply with seq {msg.seq}, expected {self.echo_seq}")
            self._disconnected(Reason.ECHO_REPLY_WRONG_SEQ, now)
            return
        self.echo_reply_seq = self.echo_seq
        self.last_echo_reply = now

    def _effective_vote(self, msg: P.Message) -> int:
        """A vote about another ring than the one we last sent is NO_CHANGE (§6.5)."""
        if msg.ring_id != self.last_sent_ring_id:
            self.stats["ignored_votes"] += 1
            return Vote.NO_CHANGE
        return msg.vote if msg.vote is not None else Vote.NO_CHANGE

    def _vote_reply(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.CONNECTED, now):
            return
        if msg.seq is None or msg.vote is None or msg.ring_id is None or (
                msg.type == MsgType.NODE_LIST_REPLY and msg.node_list_type is None) or (
                msg.type == MsgType.HEURISTICS_CHANGE_REPLY and msg.heuristics is None):
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        self._update_vote(self._effective_vote(msg), now)

    def _vote_info(self, msg: P.Message, now: float) -> None:
        if not self._expect_state(msg, State.CONNECTED, now):
            return
        if msg.seq is None or msg.vote is None or msg.ring_id is None:
            self._disconnected(Reason.REQUIRED_OPTION_MISSING, now)
            return
        # the stock client acts on the vote (poll), then queues the reply
        self._update_vote(self._effective_vote(msg), now)
        self._send(P.build_vote_info_reply(msg.seq))
