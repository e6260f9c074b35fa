"""Codec micro-benchmark: ops/s per hot operation, pure vs C backend, with ratios.

Columns: pure; C (the C implementation of every op); C/pure; what ``set_backend("c")``
installs for that op (``_wire_c.FASTEST``) and that mix's speed relative to pure.

Run: ``python bench/codec.py [--seconds 0.3]``.  Not a test: numbers depend on the
machine.  Each op runs ``--rounds`` short timed runs per backend, interleaved; best run counts.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from corosync.exec.totem import wire
from corosync.exec.totem.wire import Mcast, OrfToken, RingId, RtrItem

RING = RingId(1, 0x12)
TOKEN0 = OrfToken(2, 100, 7, 99, 1, RING, 3, 4, 0, [], 0)
TOKEN5 = OrfToken(2, 100, 7, 90, 1, RING, 3, 4, 0, [RtrItem(RING, 90 + i) for i in range(5)])
TOKEN30 = OrfToken(2, 100, 7, 60, 1, RING, 3, 4, 0, [RtrItem(RING, 60 + i) for i in range(30)])
PG1 = wire.encode_pg(0, 0, [b"\x01\x00\x01\x00a" + bytes(194)])
PG8 = wire.encode_pg(0, 0, [b"\x01\x00\x01\x00a" + bytes(27)] * 8)
PG_FULL = wire.encode_pg(1, 0, [bytes(1400)])
MCAST = Mcast(1, 1, 19, RING, PG1, 16)
T0, T5, T30, MC = TOKEN0.encode(), TOKEN5.encode(), TOKEN30.encode(), MCAST.encode()


def _capture_payloads() -> list[bytes]:
    """Totem payloads of the shared udpu capture (a realistic mix: 82% tokens), or []."""
    import os
    from corosync.exec.totem.pcap import read_udp
    shared = os.environ.get("COROSYNC_SHARED", os.path.join(os.path.dirname(__file__), "..",
                                                             "..", "shared"))
    path = os.path.join(shared, "spec", "captures", "udpu_2node.pcap")
    if not os.path.exists(path):
        return []
    return [d.payload for d in read_udp(path) if d.dport == 5405]


CAPTURE = _capture_payloads()


def _replay() -> None:
    """Decode every datagram of the capture and unpack the totempg packet of each MCAST."""
    for p in CAPTURE:
        m = wire.decode(p)
        if type(m) is Mcast and m.encapsulated == wire.ENCAP_NORMAL:
            wire.decode_pg(m.payload)


def ops() -> dict[str, Callable[[], object]]:
    pieces8 = [b"\x01\x00\x01\x00a" + bytes(27)] * 8
    extra = {"capture replay (datagrams)": _replay} if CAPTURE else {}
    return {
        "peek_header": lambda: wire.peek_header(T0),
        "decode token (0 rtr)": lambda: wire.decode(T0),
        "decode token (5 rtr)": lambda: wire.decode(T5),
        "decode token (30 rtr)": lambda: wire.decode(T30),
        "encode token (0 rtr)": TOKEN0.encode,
        "encode token (5 rtr)": TOKEN5.encode,
        "decode mcast": lambda: wire.decode(MC),
        "encode mcast": MCAST.encode,
        "decode_pg (1 piece)": lambda: wire.decode_pg(PG1),
        "decode_pg (8 pieces)": lambda: wire.decode_pg(PG8),
        "decode_pg (1400 B frag)": lambda: wire.decode_pg(PG_FULL),
        "encode_pg (1 piece)": lambda: wire.encode_pg(0, 0, [PG1]),
        "encode_pg (8 pieces)": lambda: wire.encode_pg(0, 0, pieces8),
        **extra,
    }


def rate(fn: Callable[[], object], seconds: float) -> float:
    """ops/s of one timed run of about ``seconds``."""
    n, batch = 0, 1 if fn is _replay else 100
    start = time.process_time()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return n * (len(CAPTURE) if fn is _replay else 1) / elapsed


def impls() -> dict[str, dict]:
    """Hook tables: pure, and the C implementation of *every* op (not the per-op mix that
    ``set_backend("c")`` installs, so the table shows what C costs everywhere)."""
    tables = {"pure": dict(wire._PURE_IMPL)}
    if "c" in wire.available_backends():
        from corosync.exec.totem import _wire_c
        tables["c"] = _wire_c.make_c_impl(vars(wire))
        tables["mix"] = _wire_c.make_impl(vars(wire))
    return tables


#: which hook each benchmark row exercises (to show what ``set_backend("c")`` picks)
HOOK = {"peek_header": "peek_header", "decode token": "decode_orf",
        "encode token": "encode_orf", "decode mcast": "decode_mcast",
        "encode mcast": "encode_mcast", "decode_pg": "decode_pg", "encode_pg": "encode_pg"}


def measure(tables: dict[str, dict], seconds: float, rounds: int
            ) -> dict[str, dict[str, float]]:
    """Best of ``rounds`` runs per op and backend, the backends interleaved round by
    round so that a noisy neighbour hurts both alike."""
    results: dict[str, dict[str, float]] = {}
    for op in ops():
        for _ in range(rounds):
            for name, table in tables.items():
                wire._install(table)
                r = rate(ops()[op], seconds / rounds)
                best = results.setdefault(op, {})
                best[name] = max(best.get(name, 0.0), r)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per op and backend")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    tables = impls()
    if "c" not in tables:
        print("C backend not built: only pure numbers")
        fastest: dict[str, str] = {}
    else:
        from corosync.exec.totem import _wire_c
        fastest = _wire_c.FASTEST
    previous = wire.BACKEND
    try:
        results = measure(tables, args.seconds, args.rounds)
    finally:
        wire.set_backend(previous)
    print(f"{'operation':26} {'pure ops/s':>12} {'C ops/s':>12} {'C/pure':>7} "
          f"{'backend c':>10} {'c/pure':>7}")
    for op, r in results.items():
        c, mix = r.get("c"), r.get("mix")
        cs = f"{c:12,.0f}" if c else f"{'-':>12}"
        ratio = f"{c / r['pure']:7.2f}" if c else f"{'-':>7}"
        hook = next((h for prefix, h in HOOK.items() if op.startswith(prefix)), "")
        uses = fastest.get(hook, "mix") if fastest else "-"
        mixr = f"{mix / r['pure']:7.2f}" if mix else f"{'-':>7}"
        print(f"{op:26} {r['pure']:12,.0f} {cs} {ratio} {uses:>10} {mixr}")


if __name__ == "__main__":
    main()
