"""Wire codec for corosync 3.1.7 totemsrp messages and the totempg packet layer.

Layouts are those of ``shared/spec/totem-wire.md`` §2 and §4.  Every decoder first
validates every length and count against the buffer and raises exactly one error type,
:class:`WireError`, whose ``reason`` is a short stable key callers use as a counter name.
No ``struct.error``/``IndexError`` ever escapes a decoder.

Decoding accepts both byte orders (the 16-bit magic doubles as endian detector) and
normalises values; encoding always emits little-endian, as every real deployment does.

Two backends implement the hot paths (header peek, token and mcast encode/decode,
totempg pack/unpack): pure Python (this module) and a C extension built with cffi
(``corosync._ccodec``).  ``COROSYNC_CODEC=pure|c|auto`` (default ``auto``) selects;
``BACKEND`` tells which one is active.  Both produce identical bytes and objects.
"""

from __future__ import annotations

import enum
import os
import struct
from itertools import accumulate, pairwise
from typing import Union

from attrs import define, field, frozen

__all__ = [
    "MAGIC", "VERSION", "MessageType", "ENCAP_RECOVERY", "ENCAP_NORMAL", "RTR_MAX",
    "PROCESSOR_COUNT_MAX", "WireError", "RingId", "RtrItem", "OrfToken", "Mcast",
    "MergeDetect", "Join", "MembEntry", "CommitToken", "TokenHoldCancel", "Message",
    "decode", "encode", "peek_header", "PgPacket", "decode_pg", "encode_pg",
    "decode_groups", "encode_groups", "BACKEND", "set_backend", "available_backends",
    "HEADER_SIZE", "ORF_TOKEN_SIZE", "MCAST_HEADER_SIZE", "MERGE_DETECT_SIZE", "JOIN_SIZE",
    "COMMIT_TOKEN_SIZE", "TOKEN_HOLD_CANCEL_SIZE", "PG_HEADER_SIZE",
]

MAGIC = 0xC070
MAGIC_SWAPPED = 0x70C0
VERSION = 3
ENCAP_RECOVERY = 1  # MESSAGE_ENCAPSULATED
ENCAP_NORMAL = 2  # MESSAGE_NOT_ENCAPSULATED
RTR_MAX = 30  # RETRANSMIT_ENTRIES_MAX: real nodes copy exactly this many entries
PROCESSOR_COUNT_MAX = 384
U32 = 0xFFFFFFFF

HEADER_SIZE = 13
ORF_TOKEN_SIZE = 57
RTR_ITEM_SIZE = 16
MCAST_HEADER_SIZE = 45
MERGE_DETECT_SIZE = 29
JOIN_SIZE = 33
COMMIT_TOKEN_SIZE = 41
MEMB_ENTRY_SIZE = 24
TOKEN_HOLD_CANCEL_SIZE = 25
PG_HEADER_SIZE = 8


class MessageType(enum.IntEnum):
    ORF_TOKEN = 0
    MCAST = 1
    MEMB_MERGE_DETECT = 2
    MEMB_JOIN = 3
    MEMB_COMMIT_TOKEN = 4
    TOKEN_HOLD_CANCEL = 5


class WireError(ValueError):
    """A datagram that is not a valid message.  ``reason`` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- structs
def _pair(fmt: str) -> tuple[struct.Struct, struct.Struct]:
    return struct.Struct("<" + fmt), struct.Struct(">" + fmt)


_HDR = _pair("HBBBII")
_ORF = _pair("HBBBII" "IIII" "IQ" "IIii")
_RTR = _pair("IQI")
_MCAST = _pair("HBBBII" "IIi" "IQ" "Ii")
_MERGE = _pair("HBBBII" "I" "IQ")
_JOIN = _pair("HBBBII" "IIIQ")
_COMMIT = _pair("HBBBII" "I" "IQ" "Iii")
_MEMB = _pair("IQIII")
_HOLD = _pair("HBBBII" "IQ")
_PG = _pair("hhBBH")
_U16 = _pair("H")

assert _ORF[0].size == ORF_TOKEN_SIZE and _MCAST[0].size == MCAST_HEADER_SIZE
assert _MERGE[0].size == MERGE_DETECT_SIZE and _JOIN[0].size == JOIN_SIZE
assert _COMMIT[0].size == COMMIT_TOKEN_SIZE and _HOLD[0].size == TOKEN_HOLD_CANCEL_SIZE
assert _MEMB[0].size == MEMB_ENTRY_SIZE and _RTR[0].size == RTR_ITEM_SIZE

Buffer = Union[bytes, bytearray, memoryview]


# --------------------------------------------------------------------------- values
@frozen(order=False)
class RingId:
    """``memb_ring_id``: representative nodeid and 64-bit ring sequence.

    Equality is corosync's raw 12-byte compare (rep *and* seq).
    """

    rep: int
    seq: int

    def __str__(self) -> str:  # corosync prints rep.seq in hex, e.g. (1.1f)
        return f"{self.rep:x}.{self.seq:x}"


ZERO_RING = RingId(0, 0)


@frozen
class RtrItem:
    ring_id: RingId
    seq: int


@define(slots=True)
class OrfToken:
    """ORF token (type 0).  Mutable: every hop rewrites fields."""

    nodeid: int
    seq: int
    token_seq: int
    aru: int
    aru_addr: int
    ring_id: RingId
    backlog: int = 0
    fcc: int = 0
    retrans_flg: int = 0
    rtr_list: list[RtrItem] = field(factory=list)
    target_nodeid: int = 0

    TYPE = MessageType.ORF_TOKEN

    def encode(self) -> bytes:
        return _impl_encode_orf(self)


@define(slots=True)
class Mcast:
    """MCAST (type 1): 45-byte header and a payload (totempg packet, or a whole older
    MCAST when ``encapsulated == ENCAP_RECOVERY``)."""

    nodeid: int
    system_from: int
    seq: int
    ring_id: RingId
    payload: bytes
    this_seqno: int = 0
    node_id: int = 0
    guarantee: int = 0
    encapsulated: int = ENCAP_NORMAL
    target_nodeid: int = 0
    #: True when the sender was big-endian (services need the flag, §2.1).
    swapped: bool = False

    TYPE = MessageType.MCAST

    def encode(self) -> bytes:
        return _impl_encode_mcast(self)


@define(slots=True)
class MergeDetect:
    nodeid: int
    system_from: int
    ring_id: RingId
    target_nodeid: int = 0

    TYPE = MessageType.MEMB_MERGE_DETECT

    def encode(self) -> bytes:
        return _MERGE[0].pack(MAGIC, VERSION, self.TYPE, 0, self.nodeid, self.target_nodeid,
                              self.system_from, self.ring_id.rep, self.ring_id.seq)


@define(slots=True)
class Join:
    """MEMB_JOIN (type 3).  ``nodeid == 0`` marks a LEAVE (leaver = last failed entry)."""

    nodeid: int
    system_from: int
    proc_list: tuple[int, ...]
    failed_list: tuple[int, ...]
    ring_seq: int
    target_nodeid: int = 0

    TYPE = MessageType.MEMB_JOIN

    @property
    def is_leave(self) -> bool:
        return self.nodeid == 0

    def encode(self) -> bytes:
        p, f = self.proc_list, self.failed_list
        head = _JOIN[0].pack(MAGIC, VERSION, self.TYPE, 0, self.nodeid, self.target_nodeid,
                             self.system_from, len(p), len(f), self.ring_seq)
        return head + struct.pack(f"<{len(p) + len(f)}I", *p, *f)


@define(slots=True)
class MembEntry:
    """One commit-token member entry: that member's previous-ring state."""

    ring_id: RingId = ZERO_RING
    aru: int = 0
    high_delivered: int = 0
    received_flg: int = 0


@define(slots=True)
class CommitToken:
    nodeid: int
    token_seq: int
    ring_id: RingId
    memb_index: int
    addr: list[int]
    memb_list: list[MembEntry]
    retrans_flg: int = 0
    target_nodeid: int = 0

    TYPE = MessageType.MEMB_COMMIT_TOKEN

    def encode(self) -> bytes:
        n = len(self.addr)
        if len(self.memb_list) != n:
            raise ValueError("commit token: memb_list and addr differ in length")
        parts = [_COMMIT[0].pack(MAGIC, VERSION, self.TYPE, 0, self.nodeid, self.target_nodeid,
                                 self.token_seq, self.ring_id.rep, self.ring_id.seq,
                                 self.retrans_flg, self.memb_index, n),
                 struct.pack(f"<{n}I", *self.addr)]
        pack = _MEMB[0].pack
        for e in self.memb_list:
            parts.append(pack(e.ring_id.rep, e.ring_id.seq, e.aru, e.high_delivered,
                              e.received_flg))
        return b"".join(parts)


@define(slots=True)
class TokenHoldCancel:
    nodeid: int
    ring_id: RingId
    target_nodeid: int = 0

    TYPE = MessageType.TOKEN_HOLD_CANCEL

    def encode(self) -> bytes:
        return _HOLD[0].pack(MAGIC, VERSION, self.TYPE, 0, self.nodeid, self.target_nodeid,
                             self.ring_id.rep, self.ring_id.seq)


Message = Union[OrfToken, Mcast, MergeDetect, Join, CommitToken, TokenHoldCancel]


# --------------------------------------------------------------------------- pure codec
def _pure_peek_header(buf: Buffer) -> tuple[int, int, bool]:
    """Validate the common header; return ``(type, nodeid, swapped)``."""
    if len(buf) < HEADER_SIZE:
        raise WireError("truncated", f"{len(buf)} bytes, header needs {HEADER_SIZE}")
    magic, version, mtype, _encap, nodeid, _target = _HDR[0].unpack_from(buf, 0)
    if magic == MAGIC:
        swapped = False
    elif magic == MAGIC_SWAPPED:
        swapped = True
        nodeid = _HDR[1].unpack_from(buf, 0)[4]
    else:
        raise WireError("bad_magic", f"0x{magic:04x}")
    if version != VERSION:
        raise WireError("bad_version", str(version))
    if mtype > 5:
        raise WireError("bad_type", str(mtype))
    return mtype, nodeid, swapped


def _pure_decode_orf(buf: Buffer, swapped: bool) -> OrfToken:
    n = len(buf)
    if n < ORF_TOKEN_SIZE:
        raise WireError("truncated", f"orf token of {n} bytes")
    (_m, _v, _t, _e, nodeid, target, seq, token_seq, aru, aru_addr, rrep, rseq, backlog, fcc,
     retrans_flg, entries) = _ORF[swapped].unpack_from(buf, 0)
    if entries < 0 or entries > RTR_MAX:
        raise WireError("bad_count", f"orf token rtr_list_entries {entries}")
    if n < ORF_TOKEN_SIZE + RTR_ITEM_SIZE * entries:
        raise WireError("truncated", f"orf token of {n} bytes with {entries} rtr entries")
    rtr = []
    unpack = _RTR[swapped].unpack_from
    off = ORF_TOKEN_SIZE
    for _ in range(entries):
        irep, iseq, s = unpack(buf, off)
        rtr.append(RtrItem(RingId(irep, iseq), s))
        off += RTR_ITEM_SIZE
    return OrfToken(nodeid, seq, token_seq, aru, aru_addr, RingId(rrep, rseq), backlog, fcc,
                    retrans_flg, rtr, target)


def _pure_encode_orf(t: OrfToken) -> bytes:
    if len(t.rtr_list) > RTR_MAX:
        raise ValueError(f"orf token: {len(t.rtr_list)} rtr entries (max {RTR_MAX})")
    head = _ORF[0].pack(MAGIC, VERSION, 0, 0, t.nodeid, t.target_nodeid, t.seq, t.token_seq,
                        t.aru, t.aru_addr, t.ring_id.rep, t.ring_id.seq, t.backlog, t.fcc,
                        t.retrans_flg, len(t.rtr_list))
    if not t.rtr_list:
        return head
    pack = _RTR[0].pack
    return head + b"".join(pack(i.ring_id.rep, i.ring_id.seq, i.seq) for i in t.rtr_list)


def _pure_decode_mcast(buf: Buffer, swapped: bool) -> Mcast:
    n = len(buf)
    if n < MCAST_HEADER_SIZE:
        raise WireError("truncated", f"mcast of {n} bytes")
    (_m, _v, _t, encap, nodeid, target, system_from, seq, this_seqno, rrep, rseq, node_id,
     guarantee) = _MCAST[swapped].unpack_from(buf, 0)
    return Mcast(nodeid, system_from, seq, RingId(rrep, rseq), bytes(buf[MCAST_HEADER_SIZE:]),
                 this_seqno, node_id, guarantee, encap, target, swapped)


def _pure_encode_mcast(m: Mcast) -> bytes:
    return _MCAST[0].pack(MAGIC, VERSION, 1, m.encapsulated, m.nodeid, m.target_nodeid,
                          m.system_from, m.seq, m.this_seqno, m.ring_id.rep, m.ring_id.seq,
                          m.node_id, m.guarantee) + m.payload


def _decode_merge(buf: Buffer, swapped: bool) -> MergeDetect:
    if len(buf) < MERGE_DETECT_SIZE:
        raise WireError("truncated", f"merge detect of {len(buf)} bytes")
    _m, _v, _t, _e, nodeid, target, system_from, rrep, rseq = _MERGE[swapped].unpack_from(buf)
    return MergeDetect(nodeid, system_from, RingId(rrep, rseq), target)


def _decode_join(buf: Buffer, swapped: bool) -> Join:
    n = len(buf)
    if n < JOIN_SIZE:
        raise WireError("truncated", f"join of {n} bytes")
    (_m, _v, _t, _e, nodeid, target, system_from, p, f,
     ring_seq) = _JOIN[swapped].unpack_from(buf, 0)
    if p > PROCESSOR_COUNT_MAX or f > PROCESSOR_COUNT_MAX:
        raise WireError("bad_count", f"join lists of {p}+{f} entries")
    if n < JOIN_SIZE + 4 * (p + f):
        raise WireError("truncated", f"join of {n} bytes with {p}+{f} entries")
    ids = struct.unpack_from(f"{'>' if swapped else '<'}{p + f}I", buf, JOIN_SIZE)
    return Join(nodeid, system_from, ids[:p], ids[p:], ring_seq, target)


def _decode_commit(buf: Buffer, swapped: bool) -> CommitToken:
    n = len(buf)
    if n < COMMIT_TOKEN_SIZE:
        raise WireError("truncated", f"commit token of {n} bytes")
    (_m, _v, _t, _e, nodeid, target, token_seq, rrep, rseq, retrans_flg, memb_index,
     entries) = _COMMIT[swapped].unpack_from(buf, 0)
    if entries < 1 or entries > PROCESSOR_COUNT_MAX:
        raise WireError("bad_count", f"commit token addr_entries {entries}")
    if memb_index < 0 or memb_index > entries:
        raise WireError("bad_count", f"commit token memb_index {memb_index} of {entries}")
    if n < COMMIT_TOKEN_SIZE + (4 + MEMB_ENTRY_SIZE) * entries:
        raise WireError("truncated", f"commit token of {n} bytes with {entries} members")
    order = ">" if swapped else "<"
    addr = list(struct.unpack_from(f"{order}{entries}I", buf, COMMIT_TOKEN_SIZE))
    off = COMMIT_TOKEN_SIZE + 4 * entries
    unpack = _MEMB[swapped].unpack_from
    memb = []
    for _ in range(entries):
        erep, eseq, aru, hd, rf = unpack(buf, off)
        memb.append(MembEntry(RingId(erep, eseq), aru, hd, rf))
        off += MEMB_ENTRY_SIZE
    return CommitToken(nodeid, token_seq, RingId(rrep, rseq), memb_index, addr, memb,
                       retrans_flg, target)


def _decode_hold(buf: Buffer, swapped: bool) -> TokenHoldCancel:
    if len(buf) < TOKEN_HOLD_CANCEL_SIZE:
        raise WireError("truncated", f"token hold cancel of {len(buf)} bytes")
    _m, _v, _t, _e, nodeid, target, rrep, rseq = _HOLD[swapped].unpack_from(buf)
    return TokenHoldCancel(nodeid, RingId(rrep, rseq), target)


# --------------------------------------------------------------------------- totempg
@define(slots=True)
class PgPacket:
    """A totempg packet: pieces of messages; the last may continue in the sender's next
    packet (``fragmented`` = its fragment id), the first may continue the previous one
    (``continuation`` = that id)."""

    fragmented: int
    continuation: int
    pieces: list[bytes]
    version: int = 0
    type: int = 0


def _pure_decode_pg(buf: Buffer, swapped: bool = False) -> PgPacket:
    n = len(buf)
    if n < PG_HEADER_SIZE:
        raise WireError("pg_truncated", f"totempg packet of {n} bytes")
    version, ptype, fragmented, continuation, count = _PG[swapped].unpack_from(buf, 0)
    lens_end = PG_HEADER_SIZE + 2 * count
    if n < lens_end:
        raise WireError("pg_truncated", f"{count} lengths in {n} bytes")
    # Piece boundaries as one running sum, then plain bytes slices: about 25% faster
    # than slicing a memoryview and copying each slice (this runs once per delivered
    # packet on every node).
    offs = list(accumulate(struct.unpack_from(f"{'>' if swapped else '<'}{count}H", buf,
                                              PG_HEADER_SIZE), initial=lens_end))
    if offs[-1] != n:
        raise WireError("pg_bad_length", f"{n} bytes, header says {offs[-1]}")
    if type(buf) is not bytes:
        buf = bytes(buf)
    return PgPacket(fragmented, continuation, [buf[a:b] for a, b in pairwise(offs)],
                    version, ptype)


def _pure_encode_pg(fragmented: int, continuation: int, pieces: list[bytes]) -> bytes:
    count = len(pieces)
    for p in pieces:
        if len(p) > 0xFFFF:
            raise ValueError("totempg piece longer than 65535 bytes")
    return (_PG[0].pack(0, 0, fragmented, continuation, count)
            + struct.pack(f"<{count}H", *map(len, pieces)) + b"".join(pieces))


def decode_groups(msg: Buffer, swapped: bool = False) -> tuple[list[bytes], int]:
    """Parse a totempg group header; return the group names and the payload offset."""
    n = len(msg)
    if n < 2:
        raise WireError("pg_bad_groups", "message shorter than its group count")
    order = ">" if swapped else "<"
    (count,) = struct.unpack_from(order + "H", msg, 0)
    if count < 1 or count > 32:
        raise WireError("pg_bad_groups", f"group count {count}")
    end = 2 + 2 * count
    if n < end:
        raise WireError("pg_bad_groups", "truncated group lengths")
    lens = struct.unpack_from(f"{order}{count}H", msg, 2)
    groups = []
    for ln in lens:
        if end + ln > n:
            raise WireError("pg_bad_groups", "truncated group name")
        groups.append(bytes(msg[end:end + ln]))
        end += ln
    return groups, end


def encode_groups(groups: list[bytes]) -> bytes:
    if not 1 <= len(groups) <= 32:
        raise ValueError("1..32 groups")
    return (struct.pack(f"<{len(groups) + 1}H", len(groups), *map(len, groups))
            + b"".join(groups))


# --------------------------------------------------------------------------- dispatch
_impl_peek_header = _pure_peek_header
_impl_decode_orf = _pure_decode_orf
_impl_encode_orf = _pure_encode_orf
_impl_decode_mcast = _pure_decode_mcast
_impl_encode_mcast = _pure_encode_mcast
_impl_decode_pg = _pure_decode_pg
_impl_encode_pg = _pure_encode_pg


def peek_header(buf: Buffer) -> tuple[int, int, bool]:
    """Validate the 13-byte common header: ``(type, sender nodeid, swapped)``."""
    return _impl_peek_header(buf)


def decode(buf: Buffer) -> Message:
    """Decode one totemsrp datagram; raise :class:`WireError` if it is not valid."""
    mtype, _nodeid, swapped = _impl_peek_header(buf)
    if mtype == 0:
        return _impl_decode_orf(buf, swapped)
    if mtype == 1:
        return _impl_decode_mcast(buf, swapped)
    if mtype == 2:
        return _decode_merge(buf, swapped)
    if mtype == 3:
        return _decode_join(buf, swapped)
    if mtype == 4:
        return _decode_commit(buf, swapped)
    return _decode_hold(buf, swapped)


def encode(msg: Message) -> bytes:
    """Encode a message little-endian, exactly as corosync 3.1.7 on x86_64/arm64."""
    return msg.encode()


def decode_pg(buf: Buffer, swapped: bool = False) -> PgPacket:
    return _impl_decode_pg(buf, swapped)


def encode_pg(fragmented: int, continuation: int, pieces: list[bytes]) -> bytes:
    return _impl_encode_pg(fragmented, continuation, pieces)


_PURE_IMPL = {
    "peek_header": _pure_peek_header, "decode_orf": _pure_decode_orf,
    "encode_orf": _pure_encode_orf, "decode_mcast": _pure_decode_mcast,
    "encode_mcast": _pure_encode_mcast, "decode_pg": _pure_decode_pg,
    "encode_pg": _pure_encode_pg,
}


def _install(impl: dict) -> None:
    """Point the ``_impl_*`` hooks (used by the functions and ``encode`` methods) at
    ``impl``; the hooks are module globals so a switch takes effect everywhere at once."""
    global _impl_peek_header, _impl_decode_orf, _impl_encode_orf, _impl_decode_mcast
    global _impl_encode_mcast, _impl_decode_pg, _impl_encode_pg
    _impl_peek_header = impl["peek_header"]
    _impl_decode_orf = impl["decode_orf"]
    _impl_encode_orf = impl["encode_orf"]
    _impl_decode_mcast = impl["decode_mcast"]
    _impl_encode_mcast = impl["encode_mcast"]
    _impl_decode_pg = impl["decode_pg"]
    _impl_encode_pg = impl["encode_pg"]


def _c_impl() -> dict:
    """The C hot paths; ImportError when the extension is not built."""
    from corosync.exec.totem import _wire_c
    return _wire_c.make_impl(globals())


def available_backends() -> list[str]:
    """Backends usable in this process: always ``pure``, plus ``c`` when built."""
    try:
        _c_impl()
    except ImportError:
        return ["pure"]
    return ["pure", "c"]


def set_backend(name: str) -> str:
    """Switch the hot paths to backend ``name`` (``pure`` or ``c``) at run time and
    return the previous one.  Meant for tests and benchmarks that exercise both backends
    in one process; production picks once at import (``COROSYNC_CODEC``)."""
    global BACKEND
    if name not in ("pure", "c"):
        raise ValueError(f"unknown codec backend {name!r}")
    _install(_c_impl() if name == "c" else _PURE_IMPL)
    previous, BACKEND = BACKEND, name
    return previous


def _select_backend() -> str:
    """Install the C hot paths when available and wanted; return the backend name."""
    want = os.environ.get("COROSYNC_CODEC", "auto").lower()
    if want not in ("auto", "c", "pure"):
        raise RuntimeError(f"COROSYNC_CODEC={want!r}: expected auto, c or pure")
    if want == "pure":
        return "pure"
    try:
        impl = _c_impl()
    except ImportError as exc:
        if want == "c":
            raise RuntimeError(f"COROSYNC_CODEC=c but the C codec is unavailable: {exc}")
        return "pure"
    _install(impl)
    return "c"


BACKEND = _select_backend()
