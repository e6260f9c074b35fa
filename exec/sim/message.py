"""Application messages the simulator sends: uniquely tagged and self-verifying.

Every message carries a 20-byte header ``b"SIM1" | sender u32 | counter u64 | size u32``
followed by ``size - 20`` filler bytes that are a pure function of (sender, counter).
A checker can therefore recognise any delivered message, know who sent it, and detect a
single flipped, lost or duplicated byte anywhere in it (including inside a 1 MiB message
reassembled from ~750 totempg fragments) without keeping a copy of what was sent.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = b"SIM1"
_HEAD = struct.Struct("<4sIQI")
HEADER_SIZE = _HEAD.size  # 20
_BYTES = bytes(range(256))


class Tag(NamedTuple):
    """The identity of one application message: who sent it, and its per-node counter.

    Counters are kept by the simulator's driver, not by the node, so they keep growing
    across crashes and restarts and a tag is unique for the whole run.  (A tuple, not an
    attrs class: checkers hash millions of them.)"""

    sender: int
    counter: int

    def __str__(self) -> str:
        return f"{self.sender}#{self.counter}"


def _filler(tag: Tag, n: int) -> bytes:
    start = (tag.sender * 31 + tag.counter * 7) & 0xFF
    pattern = _BYTES[start:] + _BYTES[:start]
    reps, rest = divmod(n, 256)
    return pattern * reps + pattern[:rest]


def make_message(tag: Tag, size: int) -> bytes:
    """The exact bytes of the message ``tag`` with total length ``size`` (≥ 20)."""
    size = max(size, HEADER_SIZE)
    return _HEAD.pack(MAGIC, tag.sender, tag.counter, size) + _filler(tag, size - HEADER_SIZE)


def parse_message(data: bytes) -> tuple[Tag | None, bool]:
    """Return ``(tag, intact)``; ``tag`` is None when the header is not ours at all."""
    if len(data) < HEADER_SIZE:
        return None, False
    magic, sender, counter, size = _HEAD.unpack_from(data)
    if magic != MAGIC:
        return None, False
    tag = Tag(sender, counter)
    intact = size == len(data) and data[HEADER_SIZE:] == _filler(tag, size - HEADER_SIZE)
    return tag, intact
