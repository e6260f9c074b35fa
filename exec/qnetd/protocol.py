"""The qdevice-net / qnetd wire protocol (corosync-qdevice 3.0.3), both directions.

A message is a 6-byte header (u16 type, u32 payload length, big-endian) followed by a
sequence of TLVs (u16 option, u16 length, value).  See ``spec/qnetd-wire.md`` §1-§4.

Design:

* :func:`parse_header` only looks at the 6 header bytes, so a reader can decide to skip an
  unknown or oversized message *before* reading its payload (the server must never read
  past the current message: after STARTTLS the next bytes are a TLS ClientHello).
* :func:`decode` is strict: every length is checked before use, values outside the
  allowed sets are refused, and a :class:`DecodeError` carries the sequence number when
  it had been decoded before the failing TLV (the server echoes it in SERVER_ERROR).
* Unknown options are ignored (forward compatibility), a repeated option replaces the
  earlier one, except ``node_info`` which accumulates.
* The ``build_*`` functions emit TLVs in exactly the order the stock 3.0.3 daemons use, so
  our replies are byte-identical to theirs.
"""

from __future__ import annotations

import enum
import struct
from typing import Iterable, Optional

import attrs
from attrs import frozen

HEADER_SIZE = 6
TLV_HEADER_SIZE = 4


class MsgType(enum.IntEnum):
    PREINIT = 0
    PREINIT_REPLY = 1
    STARTTLS = 2
    INIT = 3
    INIT_REPLY = 4
    SERVER_ERROR = 5
    SET_OPTION = 6
    SET_OPTION_REPLY = 7
    ECHO_REQUEST = 8
    ECHO_REPLY = 9
    NODE_LIST = 10
    NODE_LIST_REPLY = 11
    ASK_FOR_VOTE = 12
    ASK_FOR_VOTE_REPLY = 13
    VOTE_INFO = 14
    VOTE_INFO_REPLY = 15
    HEURISTICS_CHANGE = 16
    HEURISTICS_CHANGE_REPLY = 17


#: Text names as printed by ``corosync-qnetd -v`` (in type order).
MSG_TYPE_TEXT = (
    "Preinit", "Preinit reply", "StartTLS", "Init", "Init reply", "Server error",
    "Set option", "Set option reply", "Echo request", "Echo reply", "Node list",
    "Node list reply", "Ask for vote", "Ask for vote reply", "Vote info",
    "Vote info reply", "Heuristics change", "Heuristics change reply",
)

#: Types only a server may send; a client sending one gets UNEXPECTED_MESSAGE.
SERVER_SIDE_TYPES = frozenset({
    MsgType.PREINIT_REPLY, MsgType.INIT_REPLY, MsgType.SERVER_ERROR,
    MsgType.SET_OPTION_REPLY, MsgType.ECHO_REPLY, MsgType.NODE_LIST_REPLY,
    MsgType.ASK_FOR_VOTE_REPLY, MsgType.VOTE_INFO, MsgType.HEURISTICS_CHANGE_REPLY,
})


class Opt(enum.IntEnum):
    MSG_SEQ_NUMBER = 0
    CLUSTER_NAME = 1
    TLS_SUPPORTED = 2
    TLS_CLIENT_CERT_REQUIRED = 3
    SUPPORTED_MESSAGES = 4
    SUPPORTED_OPTIONS = 5
    REPLY_ERROR_CODE = 6
    SERVER_MAXIMUM_REQUEST_SIZE = 7
    SERVER_MAXIMUM_REPLY_SIZE = 8
    NODE_ID = 9
    SUPPORTED_DECISION_ALGORITHMS = 10
    DECISION_ALGORITHM = 11
    HEARTBEAT_INTERVAL = 12
    RING_ID = 13
    CONFIG_VERSION = 14
    DATA_CENTER_ID = 15
    NODE_STATE = 16
    NODE_INFO = 17
    NODE_LIST_TYPE = 18
    VOTE = 19
    QUORATE = 20
    TIE_BREAKER = 21
    HEURISTICS = 22
    KEEP_ACTIVE_PARTITION_TIE_BREAKER = 23


class Err(enum.IntEnum):
    NO_ERROR = 0
    UNSUPPORTED_NEEDED_MESSAGE = 1
    UNSUPPORTED_NEEDED_OPTION = 2
    TLS_REQUIRED = 3
    UNSUPPORTED_MESSAGE = 4
    MESSAGE_TOO_LONG = 5
    PREINIT_REQUIRED = 6
    DOESNT_CONTAIN_REQUIRED_OPTION = 7
    UNEXPECTED_MESSAGE = 8
    ERROR_DECODING_MSG = 9
    INTERNAL_ERROR = 10
    INIT_REQUIRED = 11
    UNSUPPORTED_DECISION_ALGORITHM = 12
    INVALID_HEARTBEAT_INTERVAL = 13
    UNSUPPORTED_DECISION_ALGORITHM_MESSAGE = 14
    TIE_BREAKER_DIFFERS_FROM_OTHER_NODES = 15
    ALGORITHM_DIFFERS_FROM_OTHER_NODES = 16
    DUPLICATE_NODE_ID = 17
    INVALID_CONFIG_NODE_LIST = 18
    INVALID_MEMBERSHIP_NODE_LIST = 19


class TlsSupported(enum.IntEnum):
    UNSUPPORTED = 0
    SUPPORTED = 1
    REQUIRED = 2


TLS_SUPPORTED_TEXT = {0: "Unsupported", 1: "Supported", 2: "Required"}


class Algorithm(enum.IntEnum):
    TEST = 0
    FFSPLIT = 1
    TWO_NODE_LMS = 2
    LMS = 3


ALGORITHM_TEXT = {0: "Test", 1: "Fifty-Fifty split", 2: "2 Node LMS", 3: "LMS"}


class Vote(enum.IntEnum):
    UNDEFINED = 0  # internal only, never on the wire
    ACK = 1
    NACK = 2
    ASK_LATER = 3
    WAIT_FOR_REPLY = 4
    NO_CHANGE = 5


VOTE_TEXT = {0: "Undefined", 1: "ACK", 2: "NACK", 3: "Ask later", 4: "Wait for reply",
             5: "No change"}


class Heuristics(enum.IntEnum):
    UNDEFINED = 0  # internal only, never on the wire
    PASS = 1
    FAIL = 2


HEURISTICS_TEXT = {0: "Undefined", 1: "Pass", 2: "Fail"}


class NodeListType(enum.IntEnum):
    INITIAL_CONFIG = 0
    CHANGED_CONFIG = 1
    MEMBERSHIP = 2
    QUORUM = 3


class NodeState(enum.IntEnum):
    MEMBER = 1
    DEAD = 2
    LEAVING = 3


class TieBreakerMode(enum.IntEnum):
    LOWEST = 1
    HIGHEST = 2
    NODE_ID = 3


ALL_MESSAGE_TYPES: tuple[int, ...] = tuple(range(18))
ALL_OPTIONS: tuple[int, ...] = tuple(range(24))
ALL_ALGORITHMS: tuple[int, ...] = tuple(range(4))


@frozen(order=True)
class RingId:
    """corosync ring id as carried by qdevice (u32 node id + u64 seq); prints ``%x.%x``."""

    node_id: int = 0
    seq: int = 0

    def __str__(self) -> str:
        return f"{self.node_id:x}.{self.seq:x}"


@frozen
class TieBreaker:
    """The node id only matters in NODE_ID mode; equality follows the stock rule."""

    mode: int = TieBreakerMode.LOWEST
    node_id: int = 0

    def same_as(self, other: "TieBreaker") -> bool:
        if self.mode != other.mode:
            return False
        return self.mode != TieBreakerMode.NODE_ID or self.node_id == other.node_id

    def text(self) -> str:
        if self.mode == TieBreakerMode.LOWEST:
            return "Node with lowest node ID"
        if self.mode == TieBreakerMode.HIGHEST:
            return "Node with highest node ID"
        return f"Node with node ID {self.node_id}"


@frozen
class NodeInfo:
    node_id: int
    data_center_id: int = 0  # 0 = not set, never sent
    node_state: int = 0  # 0 = not set, never sent


@attrs.define
class Message:
    """A decoded message: ``None`` means "the option was absent"."""

    type: int
    seq: Optional[int] = None
    cluster_name: Optional[bytes] = None
    tls_supported: Optional[int] = None
    tls_client_cert_required: Optional[int] = None
    supported_messages: Optional[tuple[int, ...]] = None
    supported_options: Optional[tuple[int, ...]] = None
    reply_error_code: Optional[int] = None
    server_maximum_request_size: Optional[int] = None
    server_maximum_reply_size: Optional[int] = None
    node_id: Optional[int] = None
    supported_decision_algorithms: Optional[tuple[int, ...]] = None
    decision_algorithm: Optional[int] = None
    heartbeat_interval: Optional[int] = None
    ring_id: Optional[RingId] = None
    config_version: Optional[int] = None
    node_list_type: Optional[int] = None
    vote: Optional[int] = None
    quorate: Optional[int] = None
    tie_breaker: Optional[TieBreaker] = None
    heuristics: Optional[int] = None
    keep_active_partition_tie_breaker: Optional[int] = None
    nodes: list[NodeInfo] = attrs.field(factory=list)


class DecodeError(Exception):
    """Undecodable message; ``seq`` is set when the sequence number was decoded first."""

    def __init__(self, reason: str, seq: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


@frozen
class Header:
    type: int
    length: int  # payload length (bytes after the header)

    @property
    def total(self) -> int:
        return HEADER_SIZE + self.length


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise DecodeError("truncated header")
    mtype, length = struct.unpack_from(">HI", data, 0)
    return Header(mtype, length)


def is_known_type(mtype: int) -> bool:
    return 0 <= mtype < len(MSG_TYPE_TEXT)


# ----------------------------------------------------------------------------- decoding

def iter_tlvs(payload: bytes) -> Iterable[tuple[int, bytes]]:
    """Yield (option, value); a TLV that does not fit, or leftover bytes, is an error."""
    pos = 0
    end = len(payload)
    while pos < end:
        if end - pos < TLV_HEADER_SIZE:
            raise DecodeError("trailing bytes after the last TLV")
        opt, vlen = struct.unpack_from(">HH", payload, pos)
        pos += TLV_HEADER_SIZE
        if vlen > end - pos:
            raise DecodeError(f"option {opt} length {vlen} exceeds the message")
        yield opt, payload[pos:pos + vlen]
        pos += vlen


def _uint(value: bytes, size: int, what: str) -> int:
    if len(value) != size:
        raise DecodeError(f"{what}: length {len(value)}, expected {size}")
    return int.from_bytes(value, "big")


def _u8_in(value: bytes, allowed: Iterable[int], what: str) -> int:
    v = _uint(value, 1, what)
    if v not in allowed:
        raise DecodeError(f"{what}: invalid value {v}")
    return v


def _u16_array(value: bytes, what: str) -> tuple[int, ...]:
    if len(value) % 2:
        raise DecodeError(f"{what}: odd length {len(value)}")
    return struct.unpack(f">{len(value) // 2}H", value)


def _node_info(value: bytes) -> NodeInfo:
    node_id: Optional[int] = None
    dc = 0
    state = 0
    for opt, v in iter_tlvs(value):
        if opt == Opt.NODE_ID:
            node_id = _uint(v, 4, "node_info.node_id")
        elif opt == Opt.DATA_CENTER_ID:
            dc = _uint(v, 4, "node_info.data_center_id")
        elif opt == Opt.NODE_STATE:
            state = _u8_in(v, (1, 2, 3), "node_info.node_state")
    if not node_id:
        raise DecodeError("node_info without a (non-zero) node id")
    return NodeInfo(node_id, dc, state)


def decode(data: bytes) -> Message:
    """Decode one complete message (header included)."""
    hdr = parse_header(data)
    if hdr.total != len(data):
        raise DecodeError(f"length field {hdr.length} does not match {len(data) - HEADER_SIZE}")
    payload = data[HEADER_SIZE:]
    msg = Message(hdr.type)
    if not payload:
        raise DecodeError("message without any option")
    try:
        for opt, v in iter_tlvs(payload):
            _apply_option(msg, opt, v)
    except DecodeError as exc:
        exc.seq = msg.seq
        raise
    return msg


def _apply_option(msg: Message, opt: int, v: bytes) -> None:
    if opt == Opt.MSG_SEQ_NUMBER:
        msg.seq = _uint(v, 4, "msg_seq_number")
    elif opt == Opt.CLUSTER_NAME:
        msg.cluster_name = bytes(v)
    elif opt == Opt.TLS_SUPPORTED:
        msg.tls_supported = _u8_in(v, (0, 1, 2), "tls_supported")
    elif opt == Opt.TLS_CLIENT_CERT_REQUIRED:
        msg.tls_client_cert_required = _uint(v, 1, "tls_client_cert_required")
    elif opt == Opt.SUPPORTED_MESSAGES:
        msg.supported_messages = _u16_array(v, "supported_messages")
    elif opt == Opt.SUPPORTED_OPTIONS:
        msg.supported_options = _u16_array(v, "supported_options")
    elif opt == Opt.REPLY_ERROR_CODE:
        msg.reply_error_code = _uint(v, 2, "reply_error_code")
    elif opt == Opt.SERVER_MAXIMUM_REQUEST_SIZE:
        msg.server_maximum_request_size = _uint(v, 4, "server_maximum_request_size")
    elif opt == Opt.SERVER_MAXIMUM_REPLY_SIZE:
        msg.server_maximum_reply_size = _uint(v, 4, "server_maximum_reply_size")
    elif opt == Opt.NODE_ID:
        msg.node_id = _uint(v, 4, "node_id")
    elif opt == Opt.SUPPORTED_DECISION_ALGORITHMS:
        msg.supported_decision_algorithms = _u16_array(v, "supported_decision_algorithms")
    elif opt == Opt.DECISION_ALGORITHM:
        msg.decision_algorithm = _uint(v, 2, "decision_algorithm")
    elif opt == Opt.HEARTBEAT_INTERVAL:
        msg.heartbeat_interval = _uint(v, 4, "heartbeat_interval")
    elif opt == Opt.RING_ID:
        if len(v) != 12:
            raise DecodeError(f"ring_id: length {len(v)}, expected 12")
        nid, seq = struct.unpack(">IQ", v)
        msg.ring_id = RingId(nid, seq)
    elif opt == Opt.CONFIG_VERSION:
        msg.config_version = _uint(v, 8, "config_version")
    elif opt == Opt.DATA_CENTER_ID:
        _uint(v, 4, "data_center_id")  # only meaningful inside node_info
    elif opt == Opt.NODE_STATE:
        _u8_in(v, (1, 2, 3), "node_state")
    elif opt == Opt.NODE_INFO:
        msg.nodes.append(_node_info(v))
    elif opt == Opt.NODE_LIST_TYPE:
        msg.node_list_type = _u8_in(v, (0, 1, 2, 3), "node_list_type")
    elif opt == Opt.VOTE:
        msg.vote = _u8_in(v, (1, 2, 3, 4, 5), "vote")
    elif opt == Opt.QUORATE:
        msg.quorate = _u8_in(v, (0, 1), "quorate")
    elif opt == Opt.TIE_BREAKER:
        if len(v) != 5:
            raise DecodeError(f"tie_breaker: length {len(v)}, expected 5")
        mode, nid = struct.unpack(">BI", v)
        if mode not in (1, 2, 3):
            raise DecodeError(f"tie_breaker: invalid mode {mode}")
        msg.tie_breaker = TieBreaker(mode, nid if mode == TieBreakerMode.NODE_ID else 0)
    elif opt == Opt.HEURISTICS:
        msg.heuristics = _u8_in(v, (1, 2), "heuristics")
    elif opt == Opt.KEEP_ACTIVE_PARTITION_TIE_BREAKER:
        msg.keep_active_partition_tie_breaker = _u8_in(v, (0, 1), "keep_active_partition_tie_breaker")
    # unknown options: ignored on purpose


# ----------------------------------------------------------------------------- encoding

class Builder:
    """Accumulates TLVs in call order; :meth:`finish` adds the header."""

    def __init__(self, mtype: int) -> None:
        self.mtype = mtype
        self.parts: list[bytes] = []

    def raw(self, opt: int, value: bytes) -> "Builder":
        if len(value) > 0xFFFF:
            raise ValueError(f"option {opt} value too long ({len(value)})")
        self.parts.append(struct.pack(">HH", opt, len(value)) + value)
        return self

    def u8(self, opt: int, v: int) -> "Builder":
        return self.raw(opt, struct.pack(">B", v))

    def u16(self, opt: int, v: int) -> "Builder":
        return self.raw(opt, struct.pack(">H", v))

    def u32(self, opt: int, v: int) -> "Builder":
        return self.raw(opt, struct.pack(">I", v))

    def u64(self, opt: int, v: int) -> "Builder":
        return self.raw(opt, struct.pack(">Q", v))

    def u16_array(self, opt: int, vs: Iterable[int]) -> "Builder":
        vs = tuple(vs)
        return self.raw(opt, struct.pack(f">{len(vs)}H", *vs))

    def ring_id(self, r: RingId) -> "Builder":
        return self.raw(Opt.RING_ID, struct.pack(">IQ", r.node_id, r.seq))

    def tie_breaker(self, tb: TieBreaker) -> "Builder":
        nid = tb.node_id if tb.mode == TieBreakerMode.NODE_ID else 0
        return self.raw(Opt.TIE_BREAKER, struct.pack(">BI", tb.mode, nid))

    def node_info(self, n: NodeInfo) -> "Builder":
        inner = struct.pack(">HHI", Opt.NODE_ID, 4, n.node_id)
        if n.data_center_id:
            inner += struct.pack(">HHI", Opt.DATA_CENTER_ID, 4, n.data_center_id)
        if n.node_state:
            inner += struct.pack(">HHB", Opt.NODE_STATE, 1, n.node_state)
        return self.raw(Opt.NODE_INFO, inner)

    def seq(self, seq: Optional[int]) -> "Builder":
        return self if seq is None else self.u32(Opt.MSG_SEQ_NUMBER, seq)

    def finish(self) -> bytes:
        payload = b"".join(self.parts)
        return struct.pack(">HI", self.mtype, len(payload)) + payload


def build_preinit_reply(seq: Optional[int], tls_supported: int, cert_required: int) -> bytes:
    return (Builder(MsgType.PREINIT_REPLY).seq(seq)
            .u8(Opt.TLS_SUPPORTED, tls_supported)
            .u8(Opt.TLS_CLIENT_CERT_REQUIRED, cert_required).finish())


def build_init_reply(error: int, seq: Optional[int], with_messages: bool,
                     max_request: int, max_reply: int, with_options: Optional[bool] = None) -> bytes:
    """Lists are echoed only when the INIT carried its own (each list separately)."""
    b = Builder(MsgType.INIT_REPLY).u16(Opt.REPLY_ERROR_CODE, error)
    if with_messages:
        b.u16_array(Opt.SUPPORTED_MESSAGES, ALL_MESSAGE_TYPES)
    if with_messages if with_options is None else with_options:
        b.u16_array(Opt.SUPPORTED_OPTIONS, ALL_OPTIONS)
    b.seq(seq)
    b.u32(Opt.SERVER_MAXIMUM_REQUEST_SIZE, max_request & 0xFFFFFFFF)
    b.u32(Opt.SERVER_MAXIMUM_REPLY_SIZE, max_reply & 0xFFFFFFFF)
    b.u16_array(Opt.SUPPORTED_DECISION_ALGORITHMS, ALL_ALGORITHMS)
    return b.finish()


def build_server_error(seq: Optional[int], error: int) -> bytes:
    return Builder(MsgType.SERVER_ERROR).seq(seq).u16(Opt.REPLY_ERROR_CODE, error).finish()


def build_set_option_reply(seq: Optional[int], heartbeat: Optional[int],
                           kap: Optional[int]) -> bytes:
    b = Builder(MsgType.SET_OPTION_REPLY).seq(seq)
    if heartbeat is not None:
        b.u32(Opt.HEARTBEAT_INTERVAL, heartbeat)
    if kap is not None:
        b.u8(Opt.KEEP_ACTIVE_PARTITION_TIE_BREAKER, kap)
    return b.finish()


def build_echo_reply(request: bytes) -> bytes:
    """The request byte for byte, retyped (unknown TLVs included)."""
    return struct.pack(">H", MsgType.ECHO_REPLY) + request[2:]


def build_node_list_reply(seq: Optional[int], list_type: int, ring: RingId, vote: int) -> bytes:
    return (Builder(MsgType.NODE_LIST_REPLY).seq(seq).u8(Opt.NODE_LIST_TYPE, list_type)
            .ring_id(ring).u8(Opt.VOTE, vote).finish())


def build_ask_for_vote_reply(seq: Optional[int], vote: int, ring: RingId) -> bytes:
    return Builder(MsgType.ASK_FOR_VOTE_REPLY).seq(seq).u8(Opt.VOTE, vote).ring_id(ring).finish()


def build_vote_info(seq: int, vote: int, ring: RingId) -> bytes:
    return Builder(MsgType.VOTE_INFO).seq(seq).u8(Opt.VOTE, vote).ring_id(ring).finish()


def build_heuristics_change_reply(seq: Optional[int], vote: int, ring: RingId,
                                  heuristics: int) -> bytes:
    return (Builder(MsgType.HEURISTICS_CHANGE_REPLY).seq(seq).u8(Opt.VOTE, vote)
            .ring_id(ring).u8(Opt.HEURISTICS, heuristics).finish())


# Client-side builders (used by our test client and, later, corosync-qdevice).

def build_preinit(seq: int, cluster_name: bytes) -> bytes:
    return Builder(MsgType.PREINIT).seq(seq).raw(Opt.CLUSTER_NAME, cluster_name).finish()


def build_starttls(seq: int) -> bytes:
    return Builder(MsgType.STARTTLS).seq(seq).finish()


def build_init(seq: int, node_id: int, algorithm: int, heartbeat: int, tie_breaker: TieBreaker,
               ring: RingId, with_lists: bool = True) -> bytes:
    b = Builder(MsgType.INIT).seq(seq)
    if with_lists:
        b.u16_array(Opt.SUPPORTED_MESSAGES, ALL_MESSAGE_TYPES)
        b.u16_array(Opt.SUPPORTED_OPTIONS, ALL_OPTIONS)
    return (b.u32(Opt.NODE_ID, node_id).u16(Opt.DECISION_ALGORITHM, algorithm)
            .u32(Opt.HEARTBEAT_INTERVAL, heartbeat).tie_breaker(tie_breaker).ring_id(ring)
            .finish())


def build_set_option(seq: int, heartbeat: Optional[int] = None,
                     kap: Optional[int] = None) -> bytes:
    b = Builder(MsgType.SET_OPTION).seq(seq)
    if heartbeat is not None:
        b.u32(Opt.HEARTBEAT_INTERVAL, heartbeat)
    if kap is not None:
        b.u8(Opt.KEEP_ACTIVE_PARTITION_TIE_BREAKER, kap)
    return b.finish()


def build_echo_request(seq: int) -> bytes:
    return Builder(MsgType.ECHO_REQUEST).seq(seq).finish()


def build_node_list(seq: int, list_type: int, nodes: Iterable[NodeInfo],
                    ring: Optional[RingId] = None, config_version: Optional[int] = None,
                    quorate: Optional[int] = None, heuristics: int = 0) -> bytes:
    b = Builder(MsgType.NODE_LIST).seq(seq).u8(Opt.NODE_LIST_TYPE, list_type)
    if ring is not None:
        b.ring_id(ring)
    if config_version is not None:
        b.u64(Opt.CONFIG_VERSION, config_version)
    if quorate is not None:
        b.u8(Opt.QUORATE, quorate)
    for n in nodes:
        b.node_info(n)
    if heuristics:
        b.u8(Opt.HEURISTICS, heuristics)
    return b.finish()


def build_ask_for_vote(seq: int) -> bytes:
    return Builder(MsgType.ASK_FOR_VOTE).seq(seq).finish()


def build_vote_info_reply(seq: int) -> bytes:
    return Builder(MsgType.VOTE_INFO_REPLY).seq(seq).finish()


def build_heuristics_change(seq: int, heuristics: int) -> bytes:
    return Builder(MsgType.HEURISTICS_CHANGE).seq(seq).u8(Opt.HEURISTICS, heuristics).finish()
