"""corosync-qnetd-tool: query or stop a running corosync-qnetd over its local socket.

Request and output handling follow the stock 3.0.3 tool byte for byte (spec §8.2): the
request is ``<command> [verbose ][cluster "<name>" ]\\n``, the first reply line decides
between success (rest to stdout, exit 0) and error (``Error: ...`` on stderr, exit 4).
"""

from __future__ import annotations

import os
import sys

from corosync.exec.qnetd.cli_common import (EXIT_CANT_CONNECT, EXIT_ERROR, EXIT_OK, Getopt,
                                            GetoptError, IpcConnectError, invocation_name,
                                            ipc_exchange, print_ipc_reply, strerror)

PROG = "corosync-qnetd-tool"
DEFAULT_SOCKET = "/var/run/corosync-qnetd/corosync-qnetd.sock"
USAGE = f"usage: {PROG} [-Hhlsv] [-c cluster_name] [-p qnetd_ipc_socket_path]\n"

EXIT_USAGE = 1
__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_CANT_CONNECT", "EXIT_ERROR", "main", "parse_args",
           "build_request", "quote"]


def quote(name: str) -> bytes:
    raw = os.fsencode(name)
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def build_request(operation: str, verbose: bool, cluster: str | None) -> bytes:
    req = operation.encode() + b" "
    if verbose:
        req += b"verbose "
    if cluster is not None:
        req += b"cluster " + quote(cluster) + b" "
    return req + b"\n"


def parse_args(argv: list[str], argv0: str = PROG
               ) -> tuple[str | None, bool, str | None, str] | int:
    """getopt "Hhlsvc:p:" (operands are ignored, as the stock tool does); errors name
    ``argv0`` as glibc does."""
    operation = None
    verbose = False
    cluster = None
    path = DEFAULT_SOCKET
    try:
        for ch, value in Getopt(argv, "Hhlsvc:p:"):
            if ch in "Hls":
                operation = {"H": "shutdown", "l": "list", "s": "status"}[ch]
            elif ch == "v":
                verbose = True
            elif ch == "h":
                sys.stdout.write(USAGE)
                return EXIT_USAGE
            elif ch == "c":
                cluster = value
            else:  # p
                assert value is not None
                path = value
    except GetoptError as exc:
        sys.stderr.write(exc.glibc(argv0))
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    return operation, verbose, cluster, path


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name; None = the command line (getopt errors then name
    ``sys.argv[0]``, like glibc)."""
    argv0 = invocation_name(PROG, argv is None)
    parsed = parse_args(sys.argv[1:] if argv is None else argv, argv0)
    if isinstance(parsed, int):
        return parsed
    operation, verbose, cluster, path = parsed
    if operation is None:
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    try:
        reply = ipc_exchange(path, build_request(operation, verbose, cluster))
    except IpcConnectError as exc:
        sys.stderr.write(f"{PROG}: Can't connect to qnetd socket (is QNetd running?): "
                         f"{strerror(exc)}\n")
        return EXIT_CANT_CONNECT
    except OSError as exc:
        sys.stderr.write(f"{PROG}: Can't read reply from qnetd: {strerror(exc)}\n")
        return EXIT_CANT_CONNECT
    return print_ipc_reply(reply, PROG)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
