"""corosync-qdevice-net-certutil: the node side of the qdevice TLS certificates (spec §10).

``-i -c CA`` imports the QNetd CA, ``-r -n NAME`` makes a key and a DER request, ``-M -c CRT``
imports the signed certificate and exports ``qdevice-net-node.p12`` for the other nodes,
``-m -c P12`` imports that p12.  Messages, exit codes and the usage text follow the stock
script.  ``-d DIR`` (not in the stock script, which hard-codes the directory) selects another
certificate directory.  ``-Q`` (the ssh/scp quick start) is not implemented.
"""

from __future__ import annotations

import sys
from pathlib import Path

from corosync.exec.qdevice.tlsfiles import DEFAULT_DB_DIR

PROG = "corosync-qdevice-net-certutil"
QNETD_CA_EXPORT = "/etc/corosync/qnetd/nssdb/qnetd-cacert.crt"


def usage() -> int:
    lines = [
        f"{PROG}: [-i|-m|-M|-r|-s|-Q] [-c certificate] [-n cluster_name]",
        "",
        " -i      Initialize node CA. Needs CA certificate from server",
        " -m      Import cluster certificate on node (needs pk12 certificate)",
        " -r      Generate cluster certificate request",
        " -M      Import signed cluster certificate and export certificate with key to pk12 file",
        " -Q      Quick start. Uses ssh/scp to initialze both qnetd and nodes.",
        "",
        " -c certificate      Ether CA, CRQ, CRT or pk12 certificate (operation dependant)",
        " -n cluster_name     Name of cluster (for -r and -s operations)",
        "",
        "Typical usage:",
        "- Initialize database on QNetd server by running corosync-qnetd-certutil -i",
        f"- Copy exported QNetd CA certificate ({QNETD_CA_EXPORT}) to every node",
        f"- On one of cluster node initialize database by running {PROG} -i -c qnetd-cacert.crt",
        f"- Generate certificate request: {PROG} -r -n Cluster (Cluster name must match "
        "cluster_name key in the corosync.conf)",
        "- Copy exported CRQ to QNetd server",
        "- On QNetd server sign and export cluster certificate by running "
        "corosync-qnetd-certutil -s -c qdevice-net-node.crq -n Cluster",
        "- Copy exported CRT to node where certificate request was created",
        "- Import certificate on node where certificate request was created by running "
        f"{PROG} -M -c cluster-Cluster.crt",
        "- Copy output qdevice-net-node.p12 to all other cluster nodes",
        "- On all other nodes in cluster:",
        f"  - Init database by running {PROG} -i -c qnetd-cacert.crt",
        f"  - Import cluster certificate and key: {PROG} -m -c qdevice-net-node.p12",
        "",
        "It is also possible to use Quick start (-Q). This needs properly configured ssh.",
        f"  {PROG} -Q -n Cluster qnetd_server node1 node2 ... nodeN",
    ]
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    from corosync.exec.qdevice import certs

    args = sys.argv[1:] if argv is None else argv
    operation = None
    cert_file = ""
    cluster = ""
    db = DEFAULT_DB_DIR
    i = 0
    while i < len(args):  # bash getopts ":hiMmQrc:n:" (+ our -d)
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        if arg == "--":
            break
        j = 1
        while j < len(arg):
            ch = arg[j]
            j += 1
            ops = {"i": "init", "r": "request", "M": "import_signed", "m": "import_p12",
                   "Q": "quick"}
            if ch in ops:
                operation = ops[ch]
            elif ch == "h":
                return usage()
            elif ch in "cnd":
                if j < len(arg):
                    value = arg[j:]
                elif i < len(args):
                    value = args[i]
                    i += 1
                else:
                    print(f"Option -{ch} requires an argument.", file=sys.stderr)
                    return 1
                if ch == "c":
                    cert_file = value
                elif ch == "n":
                    cluster = value
                else:
                    db = value
                break
            else:
                print(f"Invalid option: -{ch}", file=sys.stderr)
                return 1
    if operation is None:
        return usage()
    dbp = Path(db)
    try:
        if operation == "quick":
            print("Quick start (-Q) is not supported by this implementation; run the steps "
                  "by hand", file=sys.stderr)
            return 1
        if operation == "request":
            if not cluster:
                print("You have to specify cluster name", file=sys.stderr)
                return 2
            certs.gen_request(dbp, cluster, PROG)
            return 0
        if not Path(cert_file).exists() or not cert_file:
            print(f"Can't open certificate file {cert_file}", file=sys.stderr)
            return 2
        if operation == "init":
            certs.init_node_ca(dbp, Path(cert_file))
        elif operation == "import_signed":
            certs.import_signed(dbp, Path(cert_file), PROG)
        else:
            certs.import_p12(dbp, Path(cert_file), PROG)
    except certs.NodeCertError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"{exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
