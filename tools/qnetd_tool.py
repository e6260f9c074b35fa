"""corosync-qnetd-tool: query or stop a running corosync-qnetd over its local socket.

Request and output handling follow the stock 3.0.3 tool byte for byte (spec §8.2): the
request is ``<command> [verbose ][cluster "<name>" ]\\n``, the first reply line decides
between success (rest to stdout, exit 0) and error (``Error: ...`` on stderr, exit 4).
"""

from __future__ import annotations

import os
import socket
import sys

PROG = "corosync-qnetd-tool"
DEFAULT_SOCKET = "/var/run/corosync-qnetd/corosync-qnetd.sock"
USAGE = f"usage: {PROG} [-Hhlsv] [-c cluster_name] [-p qnetd_ipc_socket_path]\n"

EXIT_OK, EXIT_USAGE, EXIT_CANT_CONNECT, EXIT_ERROR = 0, 1, 3, 4


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


def parse_args(argv: list[str]) -> tuple[str | None, bool, str | None, str] | int:
    operation = None
    verbose = False
    cluster = None
    path = DEFAULT_SOCKET
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue  # getopt permutes operands away; the tool ignores them
        j = 1
        while j < len(arg):
            ch = arg[j]
            j += 1
            if ch in "Hls":
                operation = {"H": "shutdown", "l": "list", "s": "status"}[ch]
            elif ch == "v":
                verbose = True
            elif ch == "h":
                sys.stdout.write(USAGE)
                return EXIT_USAGE
            elif ch in "cp":
                if j < len(arg):
                    value = arg[j:]
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    sys.stderr.write(f"{PROG}: option requires an argument -- '{ch}'\n")
                    sys.stdout.write(USAGE)
                    return EXIT_USAGE
                if ch == "c":
                    cluster = value
                else:
                    path = value
                break
            else:
                sys.stderr.write(f"{PROG}: invalid option -- '{ch}'\n")
                sys.stdout.write(USAGE)
                return EXIT_USAGE
    return operation, verbose, cluster, path


def main(argv: list[str] | None = None) -> int:
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, int):
        return parsed
    operation, verbose, cluster, path = parsed
    if operation is None:
        sys.stdout.write(USAGE)
        return EXIT_USAGE
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: Can't connect to qnetd socket (is QNetd running?): "
                         f"{os.strerror(exc.errno or 0)}\n")
        sock.close()
        return EXIT_CANT_CONNECT
    try:
        sock.sendall(build_request(operation, verbose, cluster))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        sys.stderr.write(f"{PROG}: Can't read reply from qnetd: {os.strerror(exc.errno or 0)}\n")
        return EXIT_CANT_CONNECT
    finally:
        sock.close()
    reply = b"".join(chunks)
    if b"\n" not in reply:
        return EXIT_OK
    first, _, rest = reply.partition(b"\n")
    status = first.replace(b"\r", b"").lower()
    out = sys.stdout.buffer
    if status == b"ok":
        out.write(rest)
        out.flush()
        return EXIT_OK
    if status == b"error":
        sys.stderr.buffer.write(b"Error: " + rest)
        sys.stderr.flush()
        return EXIT_ERROR
    sys.stderr.write(f"{PROG}: Unknown status line returned by IPC server\n")
    return EXIT_CANT_CONNECT


if __name__ == "__main__":
    sys.exit(main())
