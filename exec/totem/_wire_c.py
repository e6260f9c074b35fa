"""C backend of the totem wire codec: thin Python glue around ``corosync._ccodec``.

The C side validates every length and count and converts the byte order; it hands the
numbers back in one ``int64_t`` array that a single ``ffi.unpack`` turns into a Python
list (totempg: the common case packed into the return value, no array read at all), from
which the same attrs objects as the pure codec are built.  Encoders write into a scratch
buffer that ``ffi.unpack`` copies out as ``bytes``.

Error semantics are identical to the pure codec *by construction*: when C reports a
malformed buffer (or an encoder argument does not fit its field), the pure function is
called on the same input to raise the exact same exception, reason and detail text.  This
path is only taken for bad input, so its cost does not matter; the C code never relies on
it for safety (it has refused the buffer before reading beyond the checked length).

Importing this module raises ImportError when the extension is missing or is the old
placeholder build (ABI version 0), so ``wire._select_backend`` falls back to pure.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Callable

try:
    from corosync._ccodec import ffi, lib  # type: ignore[import-not-found]
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(f"corosync._ccodec not built: {exc}") from exc

ABI_VERSION = 1
if not hasattr(lib, "cc_peek_header") or lib.ccodec_abi_version() != ABI_VERSION:
    raise ImportError("corosync._ccodec is a stale/placeholder build; rebuild the package")

_REASONS = {1: "truncated", 2: "bad_magic", 3: "bad_version", 4: "bad_type",
            5: "bad_count", 6: "pg_truncated", 7: "pg_bad_length"}
_M64 = 0xFFFFFFFFFFFFFFFF
_PG_VT = (struct.Struct("<hh"), struct.Struct(">hh"))

_raw_new = ffi.new_allocator(should_clear_after_alloc=False)


class _Scratch(threading.local):
    """Per-thread output buffers.  Allocating per call costs as much as the C work
    itself, and one module-wide buffer is unsafe: another thread may run between the C
    call that fills it and the ``ffi.unpack`` that reads it (and cffi would release the
    GIL during the call itself if build_codec.py did not prevent it)."""

    def __init__(self) -> None:
        self.orf = _raw_new("int64_t[]", lib.CC_ORF_FIELDS + 3 * 30)
        self.mcast = _raw_new("int64_t[]", lib.CC_MCAST_FIELDS)
        self.enc = _raw_new("char[]", max(lib.CC_ORF_MAX_SIZE, lib.CC_MCAST_SIZE))
        self.pg = _raw_new("int64_t[]", 1024)
        self.pg_slots = 1024


#: Which implementation ``make_impl`` installs per hook, from ``bench/codec.py`` (see
#: docs/corosync-totemdump.md, "The codec underneath").  A cffi call plus ``ffi.unpack`` costs
#: more than ``struct.unpack_from``/``pack`` of a fixed header, and the attrs objects cost
#: the same either way, so C only wins where the pure code does per-packet Python work
#: that the C side removes: totempg unpack (~1.3x).  Everything else stays pure.
FASTEST = {"peek_header": "pure", "decode_orf": "pure", "encode_orf": "pure",
           "decode_mcast": "pure", "encode_mcast": "pure", "decode_pg": "pure",
           "encode_pg": "pure"}


def make_impl(ns: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """The hooks ``wire`` installs for backend ``c``: per op the faster of the C and pure
    implementations (``FASTEST``)."""
    c_impl = make_c_impl(ns)
    return {op: c_impl[op] if FASTEST[op] == "c" else ns["_pure_" + op] for op in c_impl}


def make_c_impl(ns: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """Build the C implementation of every hook against ``wire``'s namespace (its classes
    and the pure functions used for error reporting).  Tests install this one to exercise
    all the C code; production uses :func:`make_impl`."""
    WireError = ns["WireError"]
    RingId = ns["RingId"]
    RtrItem = ns["RtrItem"]
    OrfToken = ns["OrfToken"]
    Mcast = ns["Mcast"]
    PgPacket = ns["PgPacket"]
    pure_peek = ns["_pure_peek_header"]
    pure_decode_orf = ns["_pure_decode_orf"]
    pure_encode_orf = ns["_pure_encode_orf"]
    pure_decode_mcast = ns["_pure_decode_mcast"]
    pure_encode_mcast = ns["_pure_encode_mcast"]
    pure_decode_pg = ns["_pure_decode_pg"]
    pure_encode_pg = ns["_pure_encode_pg"]
    rtr_max = ns["RTR_MAX"]

    from_buffer = ffi.from_buffer
    unpack = ffi.unpack
    c_peek = lib.cc_peek_header
    c_decode_orf = lib.cc_decode_orf
    c_decode_mcast = lib.cc_decode_mcast
    c_decode_pg = lib.cc_decode_pg
    c_encode_orf = lib.cc_encode_orf
    c_encode_mcast = lib.cc_encode_mcast_header
    c_encode_pg = lib.cc_encode_pg_header
    scratch = _Scratch()
    mcast_size = lib.CC_MCAST_SIZE
    null = ffi.NULL

    # Input buffers: bytes pass to ``const char *`` without a copy; others need a view.

    def _fail(code: int, pure: Callable[..., Any], *args: Any) -> Any:
        pure(*args)  # raises the identical WireError (reason and detail)
        raise WireError(_REASONS.get(-code, "malformed"), "C and pure codecs disagree")

    def peek_header(buf: Any) -> tuple[int, int, bool]:
        r = c_peek(buf if type(buf) is bytes else from_buffer(buf), len(buf))
        if r < 0:
            return _fail(r, pure_peek, buf)
        return r & 0xFF, r >> 9, bool(r & 0x100)

    def decode_orf(buf: Any, swapped: bool) -> Any:
        out = scratch.orf
        n = c_decode_orf(buf if type(buf) is bytes else from_buffer(buf), len(buf), swapped,
                         out)
        if n < 0:
            return _fail(n, pure_decode_orf, buf, swapped)
        (nodeid, target, seq, token_seq, aru, aru_addr, rep, rseq, backlog, fcc, retrans,
         entries) = unpack(out, 12)
        rid = RingId(rep, rseq & _M64)
        rtr = []
        if entries:
            f = unpack(out + 12, 3 * entries)
            for i in range(0, 3 * entries, 3):
                rtr.append(RtrItem(RingId(f[i], f[i + 1] & _M64), f[i + 2]))
        return OrfToken(nodeid, seq, token_seq, aru, aru_addr, rid, backlog, fcc, retrans,
                        rtr, target)

    def encode_orf(t: Any) -> bytes:
        items = t.rtr_list
        n = len(items)
        if n > rtr_max:
            return pure_encode_orf(t)  # raises ValueError
        out = scratch.enc
        try:
            if n:
                flat = []
                for it in items:
                    flat += (it.ring_id.rep, it.ring_id.seq, it.seq)
                rtr = ffi.new("uint64_t[]", flat)
            else:
                rtr = null
            rid = t.ring_id
            size = c_encode_orf(out, t.nodeid, t.target_nodeid, t.seq, t.token_seq, t.aru,
                                t.aru_addr, rid.rep, rid.seq, t.backlog, t.fcc,
                                t.retrans_flg, rtr, n)
        except (OverflowError, TypeError):
            size = -1
        if size < 0:
            return pure_encode_orf(t)  # raises the pure codec's exception
        return unpack(out, size)

    def decode_mcast(buf: Any, swapped: bool) -> Any:
        out = scratch.mcast
        n = c_decode_mcast(buf if type(buf) is bytes else from_buffer(buf), len(buf), swapped,
                           out)
        if n < 0:
            return _fail(n, pure_decode_mcast, buf, swapped)
        (encap, nodeid, target, system_from, seq, this_seqno, rep, rseq, node_id,
         guarantee) = unpack(out, 10)
        return Mcast(nodeid, system_from, seq, RingId(rep, rseq & _M64),
                     bytes(buf[mcast_size:]), this_seqno, node_id, guarantee, encap, target,
                     swapped)

    def encode_mcast(m: Any) -> bytes:
        out = scratch.enc
        rid = m.ring_id
        try:
            c_encode_mcast(out, m.encapsulated, m.nodeid, m.target_nodeid, m.system_from,
                           m.seq, m.this_seqno, rid.rep, rid.seq, m.node_id, m.guarantee)
            return unpack(out, mcast_size) + m.payload
        except (OverflowError, TypeError):
            return pure_encode_mcast(m)

    def decode_pg(buf: Any, swapped: bool = False) -> Any:
        n = len(buf)
        cap = (n - 8) // 2 if n > 8 else 0
        lens = scratch.pg if cap <= scratch.pg_slots else _raw_new("int64_t[]", cap)
        r = c_decode_pg(buf if type(buf) is bytes else from_buffer(buf), n, swapped, lens, cap)
        if r < 0:
            return _fail(r, pure_decode_pg, buf, swapped)
        count = r & 0xFFFF
        if r >> 32:  # non-zero version/type: never sent by real nodes
            version, ptype = _PG_VT[bool(swapped)].unpack_from(buf, 0)
        else:
            version = ptype = 0
        if count == 1:  # the common case: one piece filling the packet
            pieces = [bytes(buf[10:])]
        elif count == 0:
            pieces = []
        else:
            pieces = []
            off = 8 + 2 * count
            mv = memoryview(buf)
            for ln in unpack(lens, count):
                pieces.append(bytes(mv[off:off + ln]))
                off += ln
        return PgPacket((r >> 24) & 0xFF, (r >> 16) & 0xFF, pieces, version, ptype)

    def encode_pg(fragmented: int, continuation: int, pieces: list[bytes]) -> bytes:
        count = len(pieces)
        out = scratch.enc if count <= 100 else _raw_new("char[]", 8 + 2 * count)
        try:
            lens = ffi.new("uint32_t[]", [len(p) for p in pieces]) if count else null
            size = c_encode_pg(out, fragmented, continuation, lens, count)
        except (OverflowError, TypeError):
            size = -1
        if size < 0:
            return pure_encode_pg(fragmented, continuation, pieces)  # raises
        return b"".join([unpack(out, size), *pieces])

    return {"peek_header": peek_header, "decode_orf": decode_orf, "encode_orf": encode_orf,
            "decode_mcast": decode_mcast, "encode_mcast": encode_mcast,
            "decode_pg": decode_pg, "encode_pg": encode_pg}
