"""Files of our qdevice's certificate directory (the stock ``nssdb`` directory, PEM based).

The stock qdevice keeps an NSS database in ``/etc/corosync/qdevice/net/nssdb``; we keep plain
files in the same directory so corosync-qdevice-net-certutil's flow (``-i`` CA import, ``-r``
request, ``-M`` import of the signed certificate) maps one to one:

* ``qnetd-cacert.crt``: the QNetd CA (PEM; the stock export with its text dump is accepted);
* ``qdevice-net-node.key``: the node's private key, made by ``-r`` (mode 0600);
* ``qdevice-net-node.crq``: the certificate request, DER (what the stock qnetd ``-s`` signs);
* ``cluster-cert.pem``: the cluster certificate imported by ``-M`` / ``-m``;
* ``qdevice-net-node.p12``: PKCS#12 export for the other nodes (friendly name ``Cluster Cert``,
  empty password: the stock ``pk12util`` imports it).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

DEFAULT_DB_DIR = "/etc/corosync/qdevice/net/nssdb"
CA_FILE = "qnetd-cacert.crt"
KEY_FILE = "qdevice-net-node.key"
CRQ_FILE = "qdevice-net-node.crq"
CERT_FILE = "cluster-cert.pem"
P12_FILE = "qdevice-net-node.p12"
P12_NICKNAME = b"Cluster Cert"


class TlsFilesError(Exception):
    pass


def pem_blocks(data: bytes, kind: bytes = b"CERTIFICATE") -> bytes:
    """The PEM blocks of ``kind`` in ``data`` (skips the text dump the stock export adds)."""
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    out = []
    pos = 0
    while (start := data.find(begin, pos)) >= 0:
        stop = data.find(end, start)
        if stop < 0:
            break
        out.append(data[start:stop + len(end)] + b"\n")
        pos = stop + len(end)
    return b"".join(out)


def client_context(db_dir: str) -> ssl.SSLContext:
    """TLS client context: verify the server against the imported CA, by the name
    ``Qnetd Server`` (CN, no SAN: Python's hostname check falls back to the CN), and offer the
    cluster certificate when one was imported."""
    d = Path(db_dir)
    try:
        ca = pem_blocks((d / CA_FILE).read_bytes())
    except OSError as exc:
        raise TlsFilesError(f"Can't read CA certificate {d / CA_FILE}: {exc.strerror}") from None
    if not ca:
        raise TlsFilesError(f"{d / CA_FILE}: no PEM certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.decode("ascii"))
    has_cert = (d / CERT_FILE).exists() and (d / KEY_FILE).exists()
    if has_cert:
        ctx.load_cert_chain(str(d / CERT_FILE), str(d / KEY_FILE))
    ctx._qdevice_has_cert = has_cert  # type: ignore[attr-defined]
    return ctx


def check_db_dir(db_dir: str) -> None:
    if not os.path.isdir(db_dir):
        raise TlsFilesError(f"NSS database directory {db_dir} doesn't exist")
