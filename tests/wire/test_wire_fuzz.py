"""Hypothesis fuzz: random and mutated datagrams either decode or raise WireError —
never anything else — and both backends agree on every input (same object or same
reason).  Encoders agree too, and encode∘decode is idempotent."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corosync.exec.totem import wire
from wire_helpers import CAPTURES, be_encode, outcome, totem_datagrams

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# Representative real packets: a few of every type from the captures (loaded once).
_SHARED = None


def _samples(shared_dir) -> list[bytes]:
    global _SHARED
    if _SHARED is None:
        by_type: dict[int, list[bytes]] = {}
        for name in CAPTURES:
            for d in totem_datagrams(shared_dir, name):
                by_type.setdefault(d.payload[3], []).append(d.payload)
        picked = []
        for mtype in sorted(by_type):
            packets = sorted(set(by_type[mtype]), key=len)
            picked += packets[:: max(1, len(packets) // 6)]
        _SHARED = picked
    return _SHARED


@pytest.fixture
def samples(shared_dir) -> list[bytes]:
    return _samples(shared_dir)


def _agree(impls, fn, *args):
    """Run ``fn`` on both backends, assert identical outcomes, return the outcome."""
    results = {name: outcome(impl, fn, *args) for name, impl in impls.items()}
    assert all(r == results["pure"] for r in results.values()), (fn, args, results)
    return results["pure"]


def _check_decode(impls, data: bytes):
    result = _agree(impls, "decode", data)
    _agree(impls, "peek_header", data)
    if result[0] == "ok":
        msg = result[1]
        for impl in impls.values():  # encode∘decode is idempotent on both backends
            wire._install(impl)
            once = wire.encode(msg)
            again = wire.decode(once)
            assert wire.encode(again) == once
            if isinstance(msg, wire.Mcast):
                assert again.payload == msg.payload and not again.swapped
            else:
                assert again == msg
    return result


# Offsets of count fields per message type (spec §2).
COUNT_FIELDS = {0: [53], 3: [17, 21], 4: [33, 37], 1: [51]}
HOSTILE = [0, 1, 2, 30, 31, 384, 385, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes(both_impls, data):
    _check_decode(both_impls, data)


@FUZZ
@given(mtype=st.integers(0, 7), order=st.sampled_from([b"\x70\xc0", b"\xc0\x70"]),
       version=st.sampled_from([3, 3, 3, 2]), tail=st.binary(max_size=700))
def test_plausible_headers(both_impls, mtype, order, version, tail):
    _check_decode(both_impls, order + bytes([version, mtype]) + tail)


@FUZZ
@given(data=st.data())
def test_mutated_real_packets(both_impls, samples, data):
    pkt = bytearray(data.draw(st.sampled_from(samples)))
    if data.draw(st.booleans()):  # big-endian sender variant
        wire._install(both_impls["pure"])
        pkt = bytearray(be_encode(wire.decode(bytes(pkt))))
    big = pkt[:2] == b"\xc0\x70"
    mutation = data.draw(st.sampled_from(["truncate", "count", "flip", "extend"]))
    if mutation == "truncate":
        pkt = pkt[:data.draw(st.integers(0, max(0, len(pkt) - 1)))]
    elif mutation == "count":
        offsets = COUNT_FIELDS.get(pkt[3], [5])
        off = data.draw(st.sampled_from(offsets))
        value = data.draw(st.sampled_from(HOSTILE) | st.integers(0, 0xFFFFFFFF))
        if pkt[3] == 1:  # totempg msg_count: u16
            struct.pack_into(">H" if big else "<H", pkt, off, value & 0xFFFF)
        else:
            struct.pack_into(">I" if big else "<I", pkt, off, value)
    elif mutation == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(pkt) - 1))
            pkt[i] = data.draw(st.integers(0, 255))
    else:
        pkt += data.draw(st.binary(min_size=1, max_size=64))
    kind, value = _check_decode(both_impls, bytes(pkt))
    if kind == "ok" and isinstance(value, wire.Mcast):
        _agree(both_impls, "decode_pg", value.payload, value.swapped)


@FUZZ
@given(data=st.binary(max_size=120), swapped=st.booleans())
def test_random_totempg(both_impls, data, swapped):
    _agree(both_impls, "decode_pg", data, swapped)


@FUZZ
@given(count=st.integers(0, 40), lens=st.lists(st.integers(0, 40), max_size=40),
       extra=st.integers(-3, 3), swapped=st.booleans(), frag=st.integers(0, 255))
def test_structured_totempg(both_impls, count, lens, extra, swapped, frag):
    order = ">" if swapped else "<"
    body = b"".join(bytes([i & 0xFF]) * ln for i, ln in enumerate(lens))
    pkt = (struct.pack(order + "hhBBH", 0, 0, frag, 0, count)
           + struct.pack(f"{order}{len(lens)}H", *lens) + body)
    pkt = pkt[:len(pkt) + extra] if extra < 0 else pkt + bytes(extra)
    kind, value = _agree(both_impls, "decode_pg", pkt, swapped)
    if count == len(lens) and extra == 0:
        assert kind == "ok" and [len(p) for p in value.pieces] == lens
        wire._install(both_impls.get("c", both_impls["pure"]))
        le = wire.encode_pg(value.fragmented, value.continuation, value.pieces)
        wire._install(both_impls["pure"])
        assert le == wire.encode_pg(value.fragmented, value.continuation, value.pieces)


# ------------------------------------------------------------------ encoders agree
U32ish = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([-1, 0x1_0000_0000]))
I32ish = st.one_of(st.integers(-0x80000000, 0x7FFFFFFF), st.sampled_from([0x80000000]))
U64ish = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([-1, 2**64]))


def _encode_outcome(impl, fn):
    wire._install(impl)
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - the *kind* of refusal must match
        return "raise", type(exc).__name__


@FUZZ
@given(u=st.lists(U32ish, min_size=9, max_size=9), rseq=U64ish, retrans=I32ish,
       rtr=st.lists(st.tuples(U32ish, U64ish, U32ish), max_size=32))
def test_encode_orf_agrees(both_impls, u, rseq, retrans, rtr):
    tok = wire.OrfToken(u[0], u[1], u[2], u[3], u[4], wire.RingId(u[5], rseq), u[6], u[7],
                        retrans, [wire.RtrItem(wire.RingId(a, b), c) for a, b, c in rtr], u[8])
    res = {n: _encode_outcome(i, tok.encode) for n, i in both_impls.items()}
    assert all(r == res["pure"] for r in res.values())
    if len(rtr) > wire.RTR_MAX:
        assert res["pure"] == ("raise", "ValueError")
    elif res["pure"][0] == "ok":
        wire._install(both_impls.get("c", both_impls["pure"]))
        assert wire.decode(res["pure"][1]) == tok


@FUZZ
@given(u=st.lists(U32ish, min_size=6, max_size=6), rseq=U64ish, i=st.lists(I32ish, min_size=2,
       max_size=2), encap=st.integers(-1, 256), payload=st.binary(max_size=20))
def test_encode_mcast_agrees(both_impls, u, rseq, i, encap, payload):
    m = wire.Mcast(u[0], u[1], u[2], wire.RingId(u[3], rseq), payload, i[0], u[4], i[1],
                   encap, u[5])
    res = {n: _encode_outcome(impl, m.encode) for n, impl in both_impls.items()}
    assert all(r == res["pure"] for r in res.values())


@FUZZ
@given(frag=st.integers(-1, 256), cont=st.integers(-1, 256),
       lens=st.lists(st.sampled_from([0, 1, 5, 0xFFFF, 0x10000]), max_size=4))
def test_encode_pg_agrees(both_impls, frag, cont, lens):
    pieces = [bytes(n) for n in lens]
    res = {n: _encode_outcome(impl, lambda: wire.encode_pg(frag, cont, pieces))
           for n, impl in both_impls.items()}
    assert all(r == res["pure"] for r in res.values())


def test_hostile_counts_exhaustive(both_impls, samples):
    """Every count field of every sample set to every boundary value (both byte orders,
    with the packet also extended so the declared entries could fit): same outcome."""
    checked = 0
    for pkt0 in samples:
        wire._install(both_impls["pure"])
        variants = [pkt0, be_encode(wire.decode(pkt0))]
        for base in variants:
            big = base[:2] == b"\xc0\x70"
            for off in COUNT_FIELDS.get(base[3], []):
                for value in HOSTILE:
                    for pad in (0, 16 * 31, 28 * 386):
                        pkt = bytearray(base) + bytes(pad)
                        if base[3] == 1:
                            struct.pack_into(">H" if big else "<H", pkt, off, value & 0xFFFF)
                        else:
                            struct.pack_into(">I" if big else "<I", pkt, off, value)
                        kind, msg = _check_decode(both_impls, bytes(pkt))
                        if kind == "ok" and isinstance(msg, wire.Mcast):
                            _agree(both_impls, "decode_pg", msg.payload, msg.swapped)
                        checked += 1
    assert checked > 1000
