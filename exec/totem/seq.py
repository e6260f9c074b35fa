"""32-bit Totem sequence-number arithmetic (``shared/spec/totem-wire.md`` §2.11).

Message seqs, token seqs and arus are unsigned 32-bit and wrap.  corosync does not use
serial-number arithmetic; it uses a cheaper rule that is exact for the values a ring can
hold at one time (at most 16384 outstanding messages): when either operand is past the
half-way point 0x80000000, both are shifted down by 0x10000 (mod 2³²) before a plain
compare.  The shift maps 0xFFFFFFFF ("−1", the aru of a brand-new ring) below 0 and
0, 1, 2 … just after a wrap above 0xFFFFxxxx, which is all that matters in practice.
We must reproduce it *exactly*, not a "better" comparison: the other nodes of a mixed
cluster decide duplicate tokens and aru movements with this rule.
"""

from __future__ import annotations

U32 = 0xFFFFFFFF
ROLLOVER_POINT = 0x80000000
ROLLOVER_VALUE = 0x10000


def sq_lt(a: int, b: int) -> bool:
    """corosync ``sq_lt_compare``: ``a < b`` for wrapping 32-bit seqs."""
    if a > ROLLOVER_POINT or b > ROLLOVER_POINT:
        return ((a - ROLLOVER_VALUE) & U32) < ((b - ROLLOVER_VALUE) & U32)
    return a < b


def sq_lte(a: int, b: int) -> bool:
    """corosync ``sq_lte_compare``: ``a <= b`` for wrapping 32-bit seqs."""
    if a > ROLLOVER_POINT or b > ROLLOVER_POINT:
        return ((a - ROLLOVER_VALUE) & U32) <= ((b - ROLLOVER_VALUE) & U32)
    return a <= b


def sq_min(a: int, b: int) -> int:
    """The smaller of two seqs under :func:`sq_lt`."""
    return a if sq_lt(a, b) else b
