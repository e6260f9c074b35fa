"""Certificates of corosync-qnetd as PEM/DER files instead of an NSS database (spec §10).

Directory layout (the ``nss_db_dir`` setting, default ``/etc/corosync/qnetd/nssdb``):

=========================  =================================================================
``qnetd-cacert.crt``       the CA certificate (PEM); nodes import it, the server trusts it
                           for client certificates (stock name of the exported CA)
``qnet-ca.key``            the CA private key (PEM, only needed for ``certutil -s``)
``<nick>.crt``/``.key``    server certificate and key; ``<nick>`` is the ``cert_nickname``
                           lower-cased with blanks as ``-`` (default ``qnetd-cert``)
``serial.txt``             last serial number used (stock: starts at 100, CA 101, server 102)
``cluster-NAME.crt``       signed cluster certificates, DER (what stock ``-M`` imports)
=========================  =================================================================

Attributes follow the stock ``corosync-qnetd-certutil``: RSA 2048, SHA-256, 1200 months
validity, CA ``CN=QNet CA`` with a critical ``CA:TRUE, pathlen:0``, server ``CN=Qnetd
Server`` without extensions (the stock qdevice checks that name; a SAN would replace it).
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path
from typing import Optional

CA_CERT_FILE = "qnetd-cacert.crt"
CA_KEY_FILE = "qnet-ca.key"
SERIAL_FILE = "serial.txt"
CA_SUBJECT_CN = "QNet CA"
SERVER_SUBJECT_CN = "Qnetd Server"
DEFAULT_NICKNAME = "QNetd Cert"
VALIDITY_MONTHS = 1200  # as the stock script asks NSS certutil for


class CertError(Exception):
    pass


def nickname_stem(nickname: str) -> str:
    return "-".join(nickname.lower().split()) or "qnetd-cert"


def server_files(cert_dir: Path, nickname: str) -> tuple[Path, Path]:
    stem = nickname_stem(nickname)
    return cert_dir / f"{stem}.crt", cert_dir / f"{stem}.key"


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    years = VALIDITY_MONTHS // 12
    try:
        until = now.replace(year=now.year + years)
    except ValueError:  # 29 February
        until = now.replace(year=now.year + years, day=28)
    return now, until


def _file_mode(group_write: bool, directory: bool = False) -> int:
    if directory:
        return 0o770 if group_write else 0o750
    return 0o660 if group_write else 0o640


def _write(path: Path, data: bytes, group_write: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, _file_mode(group_write))


def next_serial(cert_dir: Path, group_write: bool) -> int:
    path = cert_dir / SERIAL_FILE
    try:
        current = int(path.read_text().strip())
    except FileNotFoundError:
        current = 100
    except ValueError as exc:
        raise CertError(f"Invalid serial number file {path}") from exc
    current += 1
    _write(path, f"{current}\n".encode(), group_write)
    return current


def init_ca(cert_dir: Path, group_write: bool = True, nickname: str = DEFAULT_NICKNAME,
            log=print) -> Path:
    """``-i``: create the CA and the server certificate; refuses an existing database."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    crt, _key = server_files(cert_dir, nickname)
    if (cert_dir / CA_CERT_FILE).exists() or (cert_dir / CA_KEY_FILE).exists() or crt.exists():
        raise CertError(f"Certificate database ({cert_dir}) already exists. "
                        "Delete it to initialize new db")
    if not cert_dir.is_dir():
        log(f"Creating {cert_dir}")
        cert_dir.mkdir(parents=True)
        os.chmod(cert_dir, _file_mode(group_write, directory=True))
    log("Creating new key and cert db")
    now, until = _validity()
    pem = serialization.Encoding.PEM
    no_enc = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8

    log("Creating new CA")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_SUBJECT_CN)])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(next_serial(cert_dir, group_write))
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _write(cert_dir / CA_KEY_FILE, ca_key.private_bytes(pem, pkcs8, no_enc), False)
    _write(cert_dir / CA_CERT_FILE, ca_cert.public_bytes(pem), group_write)
    os.chmod(cert_dir / CA_CERT_FILE, 0o644)

    srv_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    srv_cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_SUBJECT_CN)]))
                .issuer_name(ca_name).public_key(srv_key.public_key())
                .serial_number(next_serial(cert_dir, group_write))
                .not_valid_before(now).not_valid_after(until)
                .sign(ca_key, hashes.SHA256()))
    crt, key = server_files(cert_dir, nickname)
    _write(key, srv_key.private_bytes(pem, pkcs8, no_enc), False)
    _write(crt, srv_cert.public_bytes(pem), group_write)
    log(f"QNetd CA certificate is exported as {cert_dir / CA_CERT_FILE}")
    return cert_dir / CA_CERT_FILE


def load_request(data: bytes):
    """A PKCS#10 request, DER (what stock nodes write) or PEM; errors become CertError."""
    from cryptography import x509

    try:
        if b"-----BEGIN" in data:
            req = x509.load_pem_x509_csr(data)
        else:
            req = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CertError(f"Invalid certificate request: {exc}") from exc
    if not req.is_signature_valid:
        raise CertError("Invalid certificate request: bad signature")
    return req


def sign_request(cert_dir: Path, request_file: Path, cluster_name: str,
                 group_write: bool = True, log=print,
                 prog: str = "corosync-qnetd-certutil") -> Path:
    """``-s -c REQ -n NAME``: sign with the CA, write ``cluster-NAME.crt`` (DER).  ``prog``:
    how the error text names the tool (the stock script says its ``$0``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    if not (cert_dir / CA_KEY_FILE).exists() or not (cert_dir / CA_CERT_FILE).exists():
        raise CertError(f"Certificate database doesn't exists. Use {prog} -i to create it")
    req = load_request(request_file.read_bytes())
    log("Signing cluster certificate")
    try:
        ca_key = serialization.load_pem_private_key((cert_dir / CA_KEY_FILE).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(_pem_block((cert_dir / CA_CERT_FILE).read_bytes()))
    except ValueError as exc:
        raise CertError(f"Can't load the CA: {exc}") from exc
    now, until = _validity()
    cert = (x509.CertificateBuilder().subject_name(req.subject).issuer_name(ca_cert.subject)
            .public_key(req.public_key()).serial_number(next_serial(cert_dir, group_write))
            .not_valid_before(now).not_valid_after(until)
            .sign(ca_key, hashes.SHA256()))
    out = cert_dir / f"cluster-{cluster_name}.crt"
    _write(out, cert.public_bytes(serialization.Encoding.DER), False)
    log(f"Certificate stored in {out}")
    return out


def _pem_block(data: bytes) -> bytes:
    """Accept the stock export too (a text dump followed by the PEM block)."""
    start = data.find(b"-----BEGIN CERTIFICATE-----")
    return data[start:] if start >= 0 else data


def server_context(cert_dir: Path, nickname: str, client_cert_required: bool) -> ssl.SSLContext:
    """TLS server context for STARTTLS (spec §10.2)."""
    if not cert_dir.is_dir():
        raise CertError(f"Can't open NSS DB directory (2): No such file or directory")
    crt, key = server_files(cert_dir, nickname)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(crt), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"Can't load server certificate '{nickname}' ({crt}): {exc}") from exc
    if client_cert_required:
        ca = cert_dir / CA_CERT_FILE
        try:
            ctx.load_verify_locations(cadata=_pem_block(ca.read_bytes()).decode("ascii"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CertError(f"Can't load CA certificate ({ca}): {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_names(peercert: Optional[dict]) -> Optional[list[str]]:
    """Names to match against the cluster name: SAN dNSNames if any, else subject CNs."""
    if not peercert:
        return None
    san = [v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]
    if san:
        return san
    return [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
