"""corosync-qdevice-tool: show the status of (``-s [-v]``) or stop (``-H``) a running
corosync-qdevice over its local socket.

Behaviour of the stock 3.0.3 tool: the request is ``status [verbose ]\\n`` or
``shutdown \\n``; the first reply line decides between success (rest to stdout, exit 0) and
error (``Error: ...`` to stderr, exit 4); no reachable socket: exit 3; usage: exit 1.
"""

from __future__ import annotations

import os
import socket
import sys

PROG = "corosync-qdevice-tool"
DEFAULT_SOCKET = "/var/run/corosync-qdevice/corosync-qdevice.sock"
USAGE = f"usage: {PROG} [-Hhsv] [-p qdevice_ipc_socket_path]\n"

EXIT_OK, EXIT_USAGE, EXIT_INTERNAL, EXIT_CANT_CONNECT, EXIT_ERROR = 0, 1, 2, 3, 4


def build_request(operation: str, verbose: bool) -> bytes:
    req = operation.encode() + b" "
    if verbose and operation == "status":
        req += b"verbose "
    return req + b"\n"


def parse_args(argv: list[str]) -> tuple[str | None, bool, str] | int:
    """glibc getopt semantics for "Hhsvp:" (clustered flags, -pPATH / -p PATH)."""
    operation: str | None = None
    verbose = False
    path = DEFAULT_SOCKET
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        j = 1
        while j < len(arg):
            ch = arg[j]
            j += 1
            if ch == "H":
                operation = "shutdown"
            elif ch == "s":
                operation = "status"
            elif ch == "v":
                verbose = True
            elif ch == "p":
                if j < len(arg):
                    path = arg[j:]
                elif i < len(argv):
                    path = argv[i]
                    i += 1
                else:
                    sys.stderr.write(f"{PROG}: option requires an argument -- 'p'\n")
                    sys.stdout.write(USAGE)
                    return EXIT_USAGE
                break
            else:
                if ch != "h":
                    sys.stderr.write(f"{PROG}: invalid option -- '{ch}'\n")
                sys.stdout.write(USAGE)
                return EXIT_USAGE
    return operation, verbose, path


def main(argv: list[str] | None = None) -> int:
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    operation, verbose, path = parsed
    if operation is None:
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: Can't connect to QDevice socket (is QDevice running?): "
                         f"{os.strerror(exc.errno or 0)}\n")
        sock.close()
        return EXIT_CANT_CONNECT
    try:
        sock.sendall(build_request(operation, verbose))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        sys.stderr.write(f"{PROG}: Can't send command\n")
        return EXIT_INTERNAL
    finally:
        sock.close()
    reply = b"".join(chunks)
    if b"\n" not in reply:
        return EXIT_OK
    first, _, rest = reply.partition(b"\n")
    status = first.replace(b"\r", b"").lower()
    if status == b"ok":
        sys.stdout.buffer.write(rest)
        sys.stdout.flush()
        return EXIT_OK
    if status == b"error":
        sys.stderr.buffer.write(b"Error: " + rest)
        sys.stderr.flush()
        return EXIT_ERROR
    sys.stderr.write(f"{PROG}: Unknown status line returned by IPC server\n")
    return EXIT_CANT_CONNECT


if __name__ == "__main__":
    sys.exit(main())
