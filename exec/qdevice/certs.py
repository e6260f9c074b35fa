"""Node-side certificate operations of corosync-qdevice-net-certutil (spec §10.4, §10.5).

Files live in the qdevice's certificate directory (see :mod:`.tlsfiles`).  Interop facts the
design follows: the request is written DER with subject ``CN=<cluster>`` (the stock qnetd ``-s``
only signs DER), the signed certificate may come DER or PEM, and the PKCS#12 export carries
friendly name ``Cluster Cert`` with an empty password (the nickname the stock qdevice looks up,
the password the stock ``pk12util -W ""`` uses).
"""

from __future__ import annotations

import os
from pathlib import Path

from .tlsfiles import CA_FILE, CERT_FILE, CRQ_FILE, KEY_FILE, P12_FILE, P12_NICKNAME, pem_blocks


class NodeCertError(Exception):
    """Message for stderr; ``code`` is the stock script's exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def db_exists(db: Path) -> bool:
    return (db / CA_FILE).exists()


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _load_cert(data: bytes):
    from cryptography import x509

    try:
        pem = pem_blocks(data)
        if pem:
            return x509.load_pem_x509_certificate(pem)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise NodeCertError(f"Invalid certificate: {exc}") from exc


def init_node_ca(db: Path, ca_file: Path, log=print) -> None:
    """``-i -c CA``: create the directory and import the QNetd CA (stock export, PEM or DER)."""
    from cryptography.hazmat.primitives import serialization

    if db_exists(db):
        raise NodeCertError("Certificate database already exists. Delete it to continue")
    ca = _load_cert(ca_file.read_bytes())
    if not db.is_dir():
        log(f"Creating {db}")
        db.mkdir(mode=0o770, parents=True)
    log("Creating new key and cert db")
    log("Importing CA")
    _write(db / CA_FILE, ca.public_bytes(serialization.Encoding.PEM), 0o660)


def _need_db(db: Path, prog: str) -> None:
    if not db_exists(db):
        raise NodeCertError(f"Certificate database doesn't exists. Use {prog} -i to create it")


def gen_request(db: Path, cluster: str, prog: str, log=print) -> Path:
    """``-r -n NAME``: new RSA 2048 key, PKCS#10 request CN=NAME (SHA-256), DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    _need_db(db, prog)
    log("Creating new certificate request")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)]))
           .sign(key, hashes.SHA256()))
    _write(db / KEY_FILE, key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    out = db / CRQ_FILE
    _write(out, req.public_bytes(serialization.Encoding.DER), 0o660)
    log(f"Certificate request stored in {out}")
    return out


def import_signed(db: Path, cert_file: Path, prog: str, log=print) -> Path:
    """``-M -c CRT``: keep the signed certificate (must match our key) and export a p12."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    _need_db(db, prog)
    log("Importing signed cluster certificate")
    cert = _load_cert(cert_file.read_bytes())
    try:
        key = serialization.load_pem_private_key((db / KEY_FILE).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise NodeCertError(f"Can't load the key of the certificate request ({exc}); "
                            f"use {prog} -r first") from exc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, pub)
            != key.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise NodeCertError("Certificate doesn't match the key of the certificate request")
    ca = _load_cert((db / CA_FILE).read_bytes())
    _write(db / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o660)
    p12 = pkcs12.serialize_key_and_certificates(P12_NICKNAME, key, cert, [ca],
                                                serialization.NoEncryption())
    out = db / P12_FILE
    _write(out, p12, 0o660)
    log(f"Certificate stored in {out}")
    return out


def import_p12(db: Path, p12_file: Path, prog: str, log=print) -> None:
    """``-m -c P12``: cluster certificate and key from a p12 (ours or the stock export)."""
    import warnings

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    _need_db(db, prog)
    log("Importing cluster certificate and key")
    data = p12_file.read_bytes()
    key = cert = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NSS writes BER; cryptography warns but reads it
        for password in (None, b""):
            try:
                key, cert, _extra = pkcs12.load_key_and_certificates(data, password)
                break
            except ValueError:
                continue
    if key is None or cert is None:
        raise NodeCertError(f"Can't read PKCS#12 file {p12_file} (empty password expected)")
    _write(db / KEY_FILE, key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    _write(db / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o660)
