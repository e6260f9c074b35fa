"""corosync-cpgtool: list CPG groups and their members (corosync 3.1.7's tool: same options,
same output bytes, same exit codes).

The member table needs each node's addresses, which come from the cfg service
(GET_NODE_ADDRS), exactly as the C tool gets them.  Formatting is pure (:func:`format_names`,
:func:`format_members`) so it can be checked against the reference outputs without a daemon.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterable
from typing import IO, Final

from corosync._common import CsError, CsErrorCode, GetoptError, gnu_getopt
from corosync.cpg import Cpg, IterationDescription, IterationType
from corosync.lib.ipc import IpcClient, IpcError
from corosync.lib.proto.cfg import GetNodeAddrsRequest, GetNodeAddrsResponse
from corosync.lib.proto.common import ProtoError

PROG: Final = "corosync-cpgtool"
OPTSTRING: Final = "hd:ne"

AddrLookup = Callable[[int], list[str | None]]


def usage(prog: str = PROG) -> str:
    return (f"{prog} [-d delimiter] [-e] [-n] [-h]\n\n"
            "A tool for displaying cpg groups and members.\n"
            "options:\n"
            "\t-d\tDelimiter between fields.\n"
            "\t-e\tDon't escape unprintable characters in group name.\n"
            "\t-n\tDisplay only all existing group names.\n"
            "\t-h\tDisplay this help.\n")


def format_group(group: bytes, escape: bool = True) -> bytes:
    """A group name: raw with ``-e``; otherwise printable ASCII as is, ``\\`` doubled, other
    bytes ``\\xNN`` (sign-extended for bytes >= 0x80, as the C tool formats a signed char)."""
    if not escape:
        return group
    out = bytearray()
    for b in group:
        if 0x20 <= b < 0x7F and b != 0x5C:
            out.append(b)
        elif b == 0x5C:
            out += b"\\\\"
        else:
            out += b"\\x%02X" % ((b if b < 0x80 else b - 0x100) & 0xFFFFFFFF)
    return bytes(out)


def format_names(groups: Iterable[bytes], delimiter: bytes = b"", escape: bool = True) -> bytes:
    """``-n``: one group per line, or all on one line separated (and ended) by the
    delimiter, followed by a newline."""
    out = bytearray()
    for group in groups:
        out += format_group(group, escape) + (delimiter or b"\n")
    if delimiter:
        out += b"\n"
    return bytes(out)


def format_addrs(addrs: list[str | None]) -> bytes:
    """Addresses separated by single spaces; unused (None) entries are skipped, but the
    separator depends on the position, not on what was printed (as in the C tool)."""
    out = bytearray()
    for i, addr in enumerate(addrs):
        if addr is None:
            continue
        if i != 0:
            out += b" "
        out += addr.encode()
    return bytes(out)


def format_members_header(delimiter: bytes = b"") -> bytes:
    if delimiter:
        return b"GRP_NAME" + delimiter + b"PID" + delimiter + b"NODEID\n"
    return b"Group Name\t%10s\t%10s\n" % (b"PID", b"Node ID")


def format_member(entry: IterationDescription, previous: bytes | None, delimiter: bytes,
                  escape: bool, lookup: AddrLookup) -> bytes:
    """One member line (preceded by the group's name line when the group changes, in the
    table form)."""
    if delimiter:
        return (format_group(entry.group, escape) + delimiter + b"%d" % entry.pid + delimiter
                + b"%d\n" % entry.nodeid)
    out = b""
    # the C tool starts from a zeroed name, so an empty first group name is never printed
    if entry.group != (previous if previous is not None else b""):
        out += format_group(entry.group, escape) + b"\n"
    return out + (b"\t\t%10d\t%10d (" % (entry.pid, entry.nodeid)
                  + format_addrs(lookup(entry.nodeid)) + b")\n")


def format_members(entries: Iterable[IterationDescription], delimiter: bytes = b"",
                   escape: bool = True, lookup: AddrLookup = lambda _n: []) -> bytes:
    out = bytearray(format_members_header(delimiter))
    previous: bytes | None = None
    for entry in entries:
        out += format_member(entry, previous, delimiter, escape, lookup)
        previous = entry.group
    return bytes(out)


class CfgAddrs:
    """Just enough of libcfg for the address column: one ``cfg`` connection and
    GET_NODE_ADDRS per member line."""

    def __init__(self, client: IpcClient) -> None:
        self.client = client

    def __call__(self, nodeid: int) -> list[str | None]:
        try:
            _id, error, payload = self.client.request(
                GetNodeAddrsRequest.ID, GetNodeAddrsRequest(nodeid).encode())
            if error != CsErrorCode.OK:
                return []
            return GetNodeAddrsResponse.decode(payload).addresses()
        except (IpcError, ProtoError):
            return []

    def close(self) -> None:
        self.client.close()


def run(argv: list[str], out: IO[bytes], err: IO[bytes], prog: str = PROG) -> int:
    """The tool on ``argv`` (without the program name); ``prog`` is the argv[0] getopt's
    messages start with."""
    delimiter = b""
    escape = True
    names_only = False

    def error(text: str) -> None:
        out.flush()
        err.write(text.encode())
        err.flush()

    try:
        for item in gnu_getopt(argv, OPTSTRING, prog):
            if isinstance(item, list):
                break
            opt, arg = item
            if opt == "d":
                if arg:
                    delimiter = arg.encode("utf-8", "surrogateescape")[:1]
            elif opt == "n":
                names_only = True
            elif opt == "e":
                escape = False
            elif opt == "h":
                out.write(usage().encode())
                return 0
    except GetoptError as exc:
        error(exc.message + "\n")
        return 1

    try:
        cpg = Cpg.initialize()
    except CsError as exc:
        error(f"Could not initialize corosync cpg API error {int(exc.code)}\n")
        return 1
    try:
        try:
            cfg = CfgAddrs(IpcClient.connect("cfg"))
        except IpcError as exc:
            error(f"Could not initialize corosync configuration API error "
                  f"{int(exc.cs_error)}\n")
            return 1
        try:
            ok = (show_names(cpg, delimiter, escape, out, error) if names_only
                  else show_members(cpg, delimiter, escape, cfg, out, error))
        finally:
            cfg.close()
    finally:
        cpg.finalize()
        out.flush()
    return 0 if ok else 1


def show_names(cpg: Cpg, delimiter: bytes, escape: bool, out: IO[bytes],
               error: Callable[[str], None]) -> bool:
    try:
        handle = cpg.iteration_initialize(IterationType.NAME_ONLY)
    except CsError as exc:
        error(f"Cannot initialize cpg iterator error {int(exc.code)}\n")
        return False
    groups = []
    while True:
        try:
            entry = cpg.iteration_next(handle)
        except CsError:
            break
        if entry is None:
            break
        groups.append(entry.group)
    out.write(format_names(groups, delimiter, escape))
    try:
        cpg.iteration_finalize(handle)
    except CsError:
        pass
    return True


def show_members(cpg: Cpg, delimiter: bytes, escape: bool, lookup: AddrLookup, out: IO[bytes],
                 error: Callable[[str], None]) -> bool:
    try:
        handle = cpg.iteration_initialize(IterationType.ALL)
    except CsError as exc:
        error(f"Cannot initialize cpg iterator error {int(exc.code)}\n")
        return False
    out.write(format_members_header(delimiter))
    previous: bytes | None = None
    while True:
        try:
            entry = cpg.iteration_next(handle)
        except CsError as exc:
            error(f"cpg iteration error {int(exc.code)}\n")
            return False
        if entry is None:
            break
        out.write(format_member(entry, previous, delimiter, escape, lookup))
        previous = entry.group
    try:
        cpg.iteration_finalize(handle)
    except CsError:
        pass
    return True


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name.  From the command line (argv None) getopt errors
    name the program as ``sys.argv[0]``, like glibc names argv[0] (a console script's path
    as it was started); otherwise as :data:`PROG`."""
    # like the C tool: a closed pipe or ^C ends the process silently, no traceback
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    prog = sys.argv[0] if argv is None and sys.argv[0] else PROG
    return run(sys.argv[1:] if argv is None else argv, sys.stdout.buffer, sys.stderr.buffer,
               prog)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
