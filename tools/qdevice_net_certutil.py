"""corosync-qdevice-net-certutil: the node side of the qdevice TLS certificates (spec §10).

``-i -c CA`` imports the QNetd CA, ``-r -n NAME`` makes a key and a DER request, ``-M -c CRT``
imports the signed certificate and exports ``qdevice-net-node.p12`` for the other nodes,
``-m -c P12`` imports that p12.  Messages, exit codes and the usage text follow the stock
script.  ``-d DIR`` (not in the stock script, which hard-codes the directory) selects another
certificate directory.  ``-Q -n NAME QNETD NODE1 [NODE...]`` is the stock quick start: the
same ssh/scp command sequence (see :func:`quick_start`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from corosync.exec.qdevice.tlsfiles import DEFAULT_DB_DIR
from corosync.exec.qnetd.cli_common import Getopt, GetoptError, invocation_name

PROG = "corosync-qdevice-net-certutil"
QNETD_DB_DIR = "/etc/corosync/qnetd/nssdb"
QNETD_CA_EXPORT = f"{QNETD_DB_DIR}/qnetd-cacert.crt"
QNETD_CERTUTIL = "corosync-qnetd-certutil"
CRQ_BASE = "qdevice-net-node.crq"
P12_BASE = "qdevice-net-node.p12"

#: runs one ssh/scp command line, stdout kept or discarded, and returns its exit status
Runner = Callable[[Sequence[str], bool], int]


def _run(cmd: Sequence[str], quiet: bool = False) -> int:
    try:
        return subprocess.run(list(cmd), stdout=subprocess.DEVNULL if quiet else None).returncode
    except OSError as exc:
        print(f"{cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127  # what bash reports for a command it cannot run


def quick_start(cluster: str, qnetd: str, master: str, others: Sequence[str], self_cmd: str,
                run: Runner = _run) -> int:
    """The stock ``-Q``: initialise the qnetd CA, every node's certificate directory, sign
    the master node's request and spread its p12 — all as root over ssh/scp, with the stock
    script's command lines (so a site's ssh configuration and sudo rules see the same
    commands).  Like the stock script it only stops early on its two sanity checks; the exit
    status is that of the last command.

    ``self_cmd`` is how the remote nodes run this tool (the stock script uses its own $0).
    Deliberate differences: the p12 copy to the other nodes goes to ``root@NODE`` (the stock
    script drops the ``root@`` there and so copies as the local user); with only the master
    node the status is that of its ``-M`` import (the stock script's empty loop gives 0)."""
    node_db = DEFAULT_DB_DIR
    nodes = [master, *others]
    for node in nodes:
        if run(["ssh", f"root@{node}", f'[ -d "{node_db}" ]'], False) == 0:
            print(f"Node {node} seems to be already initialized. Please delete {node_db}",
                  file=sys.stderr)
            return 1
        if run(["ssh", f"root@{node}", self_cmd], True) != 0:
            print(f"Node {node} doesn't have {self_cmd} installed", file=sys.stderr)
            return 1

    def remote_scp(src: str, dst: str) -> int:
        """scp through a local temporary file: two remote hosts in one scp command do not
        work with agent forwarding and no key between the two machines."""
        fd, tmp = tempfile.mkstemp()
        os.close(fd)
        try:
            run(["scp", src, tmp], False)
            return run(["scp", tmp, dst], False)
        finally:
            os.unlink(tmp)

    ca_base = os.path.basename(QNETD_CA_EXPORT)
    run(["ssh", f"root@{qnetd}", f"{QNETD_CERTUTIL} -i"], False)
    for node in nodes:
        remote_scp(f"root@{qnetd}:{QNETD_CA_EXPORT}", f"root@{node}:/tmp/{ca_base}")
        run(["ssh", f"root@{node}",
             f'{self_cmd} -i -c "/tmp/{ca_base}" && rm /tmp/{ca_base}'], False)
    run(["ssh", f"root@{master}", f'{self_cmd} -r -n "{cluster}"'], False)
    remote_scp(f"root@{master}:{node_db}/{CRQ_BASE}", f"root@{qnetd}:/tmp/{CRQ_BASE}")
    run(["ssh", f"root@{qnetd}", f'{QNETD_CERTUTIL} -s -c "/tmp/{CRQ_BASE}" -n "{cluster}"'],
        False)
    crt = f"cluster-{cluster}.crt"
    remote_scp(f"root@{qnetd}:{QNETD_DB_DIR}/{crt}", f"root@{master}:{node_db}/{crt}")
    status = run(["ssh", f"root@{master}", f'{self_cmd} -M -c "{node_db}/{crt}"'], False)
    for node in others:
        remote_scp(f"root@{master}:{node_db}/{P12_BASE}", f"root@{node}:{node_db}/{P12_BASE}")
        status = run(["ssh", f"root@{node}", f'{self_cmd} -m -c "{node_db}/{P12_BASE}"'], False)
    return status


def usage(prog: str = PROG) -> int:
    """The stock usage text; it names the script as it was started (``$0``)."""
    lines = [
        f"{prog}: [-i|-m|-M|-r|-s|-Q] [-c certificate] [-n cluster_name]",
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
        f"- On one of cluster node initialize database by running {prog} -i -c qnetd-cacert.crt",
        f"- Generate certificate request: {prog} -r -n Cluster (Cluster name must match "
        "cluster_name key in the corosync.conf)",
        "- Copy exported CRQ to QNetd server",
        "- On QNetd server sign and export cluster certificate by running "
        "corosync-qnetd-certutil -s -c qdevice-net-node.crq -n Cluster",
        "- Copy exported CRT to node where certificate request was created",
        "- Import certificate on node where certificate request was created by running "
        f"{prog} -M -c cluster-Cluster.crt",
        "- Copy output qdevice-net-node.p12 to all other cluster nodes",
        "- On all other nodes in cluster:",
        f"  - Init database by running {prog} -i -c qnetd-cacert.crt",
        f"  - Import cluster certificate and key: {prog} -m -c qdevice-net-node.p12",
        "",
        "It is also possible to use Quick start (-Q). This needs properly configured ssh.",
        f"  {prog} -Q -n Cluster qnetd_server node1 node2 ... nodeN",
    ]
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None, run: Runner = _run) -> int:
    """``argv`` without the program name.  From a console script (argv None) the usage and
    messages name ``sys.argv[0]`` and the remote nodes of ``-Q`` run it, as the stock script
    does with its ``$0``; otherwise (``python -m``, tests) the command's name (``-Q``: found
    on the remote PATH)."""
    from corosync.exec.qdevice import certs

    prog = invocation_name(PROG, argv is None)
    args = sys.argv[1:] if argv is None else argv
    operation = None
    cert_file = ""
    cluster = ""
    db = DEFAULT_DB_DIR
    ops = {"i": "init", "r": "request", "M": "import_signed", "m": "import_p12", "Q": "quick"}
    scan = Getopt(args, "hiMmQrc:n:d:", stop_at_operand=True)  # bash getopts (+ our -d)
    try:
        for ch, value in scan:
            if ch in ops:
                operation = ops[ch]
            elif ch == "h":
                return usage(prog)
            elif ch == "c":
                cert_file = value or ""
            elif ch == "n":
                cluster = value or ""
            else:  # d
                db = value or ""
    except GetoptError as exc:
        sys.stderr.write(exc.getopts())
        return 1
    if operation is None:
        return usage(prog)
    dbp = Path(db)
    try:
        if operation == "quick":
            rest = scan.operands
            if not cluster:
                print("You have to specify cluster name", file=sys.stderr)
                return 2
            if not rest or not rest[0]:
                print("No QNetd server address provided.", file=sys.stderr)
                return 2
            if len(rest) < 2 or not rest[1]:
                print("No nodes provided.", file=sys.stderr)
                return 2
            return quick_start(cluster, rest[0], rest[1], [n for n in rest[2:] if n],
                               prog, run)
        if operation == "request":
            if not cluster:
                print("You have to specify cluster name", file=sys.stderr)
                return 2
            certs.gen_request(dbp, cluster, prog)
            return 0
        if not Path(cert_file).exists() or not cert_file:
            print(f"Can't open certificate file {cert_file}", file=sys.stderr)
            return 2
        if operation == "init":
            certs.init_node_ca(dbp, Path(cert_file))
        elif operation == "import_signed":
            certs.import_signed(dbp, Path(cert_file), prog)
        else:
            certs.import_p12(dbp, Path(cert_file), prog)
    except certs.NodeCertError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"{exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
