"""The ring-id file ``<state_dir>/ringid_<nodeid>`` (spec §2.10).

Exactly 8 bytes: the last ring sequence number as a u64 in host byte order, the format
the real daemon reads and writes, so a node can be switched between implementations
without its ring seq going backwards (a commit token is only accepted when its seq is
strictly greater than the current one).

Writing happens on every membership change.  The write is fsync'd (a crash right after a
ring formed must not resurrect an older seq), and fsync can take milliseconds, so
:class:`RingIdWriter` does it in a worker thread while the trio loop keeps handling
tokens.  Only the latest value matters: if several changes happen while a write is in
flight, the next write stores the newest seq and the intermediate ones are skipped.
"""

from __future__ import annotations

import os
import struct

import trio

_FMT = "=Q"  # native byte order, like the C daemon's raw uint64_t write


def ringid_path(state_dir: str, nodeid: int) -> str:
    return os.path.join(state_dir, f"ringid_{nodeid}")


def load_ring_seq(state_dir: str, nodeid: int) -> int:
    """Return the stored seq; a missing or short file is (re)created with 0, as the real
    daemon does.  Raises OSError when the directory is not usable."""
    path = ringid_path(state_dir, nodeid)
    try:
        with open(path, "rb") as f:
            data = f.read(8)
    except FileNotFoundError:
        data = b""
    if len(data) == 8:
        return struct.unpack(_FMT, data)[0]
    write_ring_seq(path, 0)
    return 0


def write_ring_seq(path: str, seq: int) -> None:
    """Durably replace the file's content (write temp + fsync + rename)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, struct.pack(_FMT, seq & 0xFFFFFFFFFFFFFFFF))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class RingIdWriter:
    """Latest-value-wins background writer.  ``store(seq)`` never blocks; ``run()`` is
    the task that performs the writes; ``flush()`` waits until the newest value is on
    disk (used at shutdown)."""

    def __init__(self, path: str, on_error=None) -> None:
        self.path = path
        self._pending: int | None = None
        self._written: int | None = None
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._on_error = on_error
        self.writes = 0

    def store(self, seq: int) -> None:
        self._pending = seq
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending is not None and self._pending != self._written:
                seq = self._pending
                try:
                    await trio.to_thread.run_sync(write_ring_seq, self.path, seq)
                    self._written = seq
                    self.writes += 1
                except OSError as exc:
                    if self._on_error is not None:
                        self._on_error(exc)
                    break
            self._idle.set()

    async def flush(self) -> None:
        if self._pending is not None and self._pending != self._written:
            await self._idle.wait()
