"""corosync-qnetd-certutil: the qnetd CA and certificates as PEM/DER files (spec §10).

``-i`` creates the CA and the server certificate, ``-s -c REQ -n NAME`` signs a node's
certificate request (DER as the stock node tool writes it, or PEM) into
``cluster-NAME.crt`` (DER), ``-G`` drops the group write bit.  Messages, exit codes and
option handling follow the stock script; ``-d DIR`` (not in the stock 3.0.3 script, which
hard-codes the directory) selects another certificate directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from corosync.exec.qnetd.cli_common import Getopt, GetoptError, invocation_name

PROG = "corosync-qnetd-certutil"
DEFAULT_DIR = "/etc/corosync/qnetd/nssdb"


def usage(prog: str = PROG) -> int:
    print(f"{prog}: [-i|-s] [-c certificate] [-G] [-n cluster_name] [-d cert_dir]")
    print()
    print(" -i                  Initialize QNetd CA and generate server certificate")
    print(" -s                  Sign cluster certificate (needs cluster certificate)")
    print(" -c certificate      CRQ certificate file name")
    print(" -G                  Do not set group write bit for new files")
    print(" -n cluster_name     Name of cluster (for -s operation)")
    print(" -d cert_dir         Certificate directory (default " + DEFAULT_DIR + ")")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name; None = the command line: the usage and the
    messages then name ``sys.argv[0]``, as the stock script names its ``$0``."""
    prog = invocation_name(PROG, argv is None)
    args = sys.argv[1:] if argv is None else argv
    operation = None
    cert_file = ""
    cluster = ""
    group_write = True
    cert_dir = DEFAULT_DIR
    try:
        for ch, value in Getopt(args, "isGhc:n:d:", stop_at_operand=True):  # bash getopts
            if ch == "i":
                operation = "init"
            elif ch == "s":
                operation = "sign"
            elif ch == "h":
                return usage(prog)
            elif ch == "G":
                group_write = False
            elif ch == "c":
                cert_file = value or ""
            elif ch == "n":
                cluster = value or ""
            else:  # d
                cert_dir = value or ""
    except GetoptError as exc:
        sys.stderr.write(exc.getopts())
        return 1
    if operation is None:
        return usage(prog)

    from corosync.exec.qnetd.certs import CertError, init_ca, sign_request

    try:
        if operation == "init":
            init_ca(Path(cert_dir), group_write)
        else:
            if not cert_file or not Path(cert_file).exists():
                print(f"Can't open certificate file {cert_file}", file=sys.stderr)
                return 2
            if not cluster:
                print("You have to specify cluster name", file=sys.stderr)
                return 2
            sign_request(Path(cert_dir), Path(cert_file), cluster, group_write, prog=prog)
    except CertError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
