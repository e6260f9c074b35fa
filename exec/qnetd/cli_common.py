"""Command-line plumbing shared by the qnetd / qdevice programs (corosync-qnetd, -qnetd-tool,
-qnetd-certutil, corosync-qdevice, -qdevice-tool, -qdevice-net-certutil).

* :class:`Getopt`: option scanning with glibc ``getopt`` semantics (the C programs:
  clustered flags, ``-pVALUE`` / ``-p VALUE``, operands skipped, ``--`` ends options) or
  bash ``getopts`` semantics (the certutil scripts: scanning stops at the first operand).
  Options come out one at a time, in order, so that an early ``-h`` acts before a later
  invalid option — as in the originals.
* :func:`invocation_name`: the ``argv[0]`` glibc's getopt messages name.
* :func:`ipc_exchange` / :func:`print_ipc_reply`: the local-socket request of both status
  tools (one request line, the daemon answers ``OK``/``Error`` + text and closes).

It lives here (not under tools/) because the qnetd daemon's own option parser
(:mod:`.settings`) uses it too; the tools depend on exec, never the other way round.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import BinaryIO, Iterator, Optional

EXIT_OK, EXIT_CANT_CONNECT, EXIT_ERROR = 0, 3, 4  # shared exit codes of both status tools


class GetoptError(Exception):
    """An unknown option (``missing`` False) or a missing argument (``missing`` True)."""

    def __init__(self, option: str, missing: bool) -> None:
        super().__init__(option)
        self.option = option
        self.missing = missing

    def glibc(self, argv0: str) -> str:
        """glibc getopt's message (it names ``argv[0]``), with the newline."""
        if self.missing:
            return f"{argv0}: option requires an argument -- '{self.option}'\n"
        return f"{argv0}: invalid option -- '{self.option}'\n"

    def getopts(self) -> str:
        """The certutil scripts' messages (bash ``getopts`` in silent mode), with the newline."""
        if self.missing:
            return f"Option -{self.option} requires an argument.\n"
        return f"Invalid option: -{self.option}\n"


class Getopt:
    """Iterate over ``(option, value)`` pairs of ``argv`` (without the program name).

    ``optstring`` as getopt's: letters, a ``:`` after those that take a value (value None for
    flags).  A bad option raises :class:`GetoptError` when the scan reaches it.  After the
    scan, :attr:`operands` holds the non-option words (glibc: all of them, the C programs
    ignore them; ``stop_at_operand``: the first one and everything after it)."""

    def __init__(self, argv: list[str], optstring: str, *,
                 stop_at_operand: bool = False) -> None:
        self.argv = list(argv)
        self.stop_at_operand = stop_at_operand
        self.flags: set[str] = set()
        self.with_value: set[str] = set()
        for k, ch in enumerate(optstring):
            if ch == ":":
                continue
            if k + 1 < len(optstring) and optstring[k + 1] == ":":
                self.with_value.add(ch)
            else:
                self.flags.add(ch)
        self.operands: list[str] = []

    def __iter__(self) -> Iterator[tuple[str, Optional[str]]]:
        argv = self.argv
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            if arg == "--":
                self.operands += argv[i:]
                return
            if not arg.startswith("-") or arg == "-":
                if self.stop_at_operand:
                    self.operands += argv[i - 1:]
                    return
                self.operands.append(arg)
                continue
            j = 1
            while j < len(arg):
                ch = arg[j]
                j += 1
                if ch in self.flags:
                    yield ch, None
                    continue
                if ch not in self.with_value:
                    raise GetoptError(ch, missing=False)
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise GetoptError(ch, missing=True)
                yield ch, value
                break


def invocation_name(prog: str, from_command_line: bool) -> str:
    """What glibc's getopt messages call the program: ``argv[0]`` as it was started (a
    console script's path) when running from the command line; ``prog`` when called with
    an explicit argument list (``python -m``, whose argv[0] is a module path, and tests)."""
    return sys.argv[0] if from_command_line and sys.argv[0] else prog


class IpcConnectError(OSError):
    """The daemon's local socket cannot be reached."""


def ipc_exchange(path: str, request: bytes) -> bytes:
    """Send one request line and read the reply until the daemon closes.

    Raises :class:`IpcConnectError` if the socket cannot be reached, OSError for a failure
    after connecting (the callers word these differently, as the stock tools do)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise IpcConnectError(exc.errno, exc.strerror) from None
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


def print_ipc_reply(reply: bytes, prog: str, out: Optional[BinaryIO] = None,
                    err: Optional[BinaryIO] = None) -> int:
    """The stock tools' reply handling: ``OK`` → the text on stdout, exit 0; ``Error`` →
    ``Error: <text>`` on stderr, exit 4; no complete first line → nothing, exit 0; anything
    else → ``<prog>: Unknown status line returned by IPC server``, exit 3."""
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    if b"\n" not in reply:
        return EXIT_OK
    first, _, rest = reply.partition(b"\n")
    status = first.replace(b"\r", b"").lower()
    if status == b"ok":
        out.write(rest)
        out.flush()
        return EXIT_OK
    if status == b"error":
        err.write(b"Error: " + rest)
        err.flush()
        return EXIT_ERROR
    err.write(f"{prog}: Unknown status line returned by IPC server\n".encode())
    err.flush()
    return EXIT_CANT_CONNECT


def strerror(exc: OSError) -> str:
    return os.strerror(exc.errno or 0)
