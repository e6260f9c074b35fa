"""corosync-qdevice-tool: show the status of (``-s [-v]``) or stop (``-H``) a running
corosync-qdevice over its local socket.

Behaviour of the stock 3.0.3 tool: the request is ``status [verbose ]\\n`` or
``shutdown \\n``; the first reply line decides between success (rest to stdout, exit 0) and
error (``Error: ...`` to stderr, exit 4); no reachable socket: exit 3; usage: exit 1.
"""

from __future__ import annotations

import sys

from corosync.exec.qnetd.cli_common import (EXIT_CANT_CONNECT, Getopt, GetoptError,
                                            IpcConnectError, invocation_name, ipc_exchange,
                                            print_ipc_reply, strerror)

PROG = "corosync-qdevice-tool"
DEFAULT_SOCKET = "/var/run/corosync-qdevice/corosync-qdevice.sock"
USAGE = f"usage: {PROG} [-Hhsv] [-p qdevice_ipc_socket_path]\n"

EXIT_USAGE, EXIT_INTERNAL, EXIT_ERROR = 1, 2, 4


def build_request(operation: str, verbose: bool) -> bytes:
    req = operation.encode() + b" "
    if verbose and operation == "status":
        req += b"verbose "
    return req + b"\n"


def parse_args(argv: list[str], argv0: str = PROG) -> tuple[str | None, bool, str] | int:
    """getopt "Hhsvp:"; errors name ``argv0`` as glibc does."""
    operation: str | None = None
    verbose = False
    path = DEFAULT_SOCKET
    try:
        for ch, value in Getopt(argv, "Hhsvp:"):
            if ch == "H":
                operation = "shutdown"
            elif ch == "s":
                operation = "status"
            elif ch == "v":
                verbose = True
            elif ch == "p":
                assert value is not None
                path = value
            else:  # h
                sys.stdout.write(USAGE)
                return EXIT_USAGE
    except GetoptError as exc:
        sys.stderr.write(exc.glibc(argv0))
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    return operation, verbose, path


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name; None = the command line (getopt errors then name
    ``sys.argv[0]``, like glibc)."""
    argv0 = invocation_name(PROG, argv is None)
    parsed = parse_args(sys.argv[1:] if argv is None else argv, argv0)
    if isinstance(parsed, int):
        return parsed
    operation, verbose, path = parsed
    if operation is None:
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    try:
        reply = ipc_exchange(path, build_request(operation, verbose))
    except IpcConnectError as exc:
        sys.stderr.write(f"{PROG}: Can't connect to QDevice socket (is QDevice running?): "
                         f"{strerror(exc)}\n")
        return EXIT_CANT_CONNECT
    except OSError:
        sys.stderr.write(f"{PROG}: Can't send command\n")
        return EXIT_INTERNAL
    return print_ipc_reply(reply, PROG)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
