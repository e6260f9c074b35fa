"""STARTTLS with Python's ssl against our daemon (-s on/req, -c on/off, certificate name
check) and corosync-qnetd-certutil."""

import ssl
import subprocess
import sys

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.certs import CA_CERT_FILE, init_ca
from corosync.exec.qnetd.protocol import RingId, Vote

from qnetd_client import ClientClosed, Daemon, QdeviceClient, tool


def certutil(*args):
    return subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_certutil", *args],
                          capture_output=True, timeout=60)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def certutil_inproc(capsys, *args):
    """The same CLI in-process (saves an interpreter start per call)."""
    from corosync.tools.qnetd_certutil import main
    rc = main(list(args))
    out, err = capsys.readouterr()
    return _Result(rc, out.encode(), err.encode())


def _request(cn: str, pem: bool = False):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    enc = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return key, csr.public_bytes(enc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """CA + server cert (via the certutil CLI), and a node certificate for cluster 'lab'."""
    base = tmp_path_factory.mktemp("pki")
    db = base / "nssdb"
    r = certutil("-i", "-d", str(db))
    assert r.returncode == 0, r.stderr
    assert b"QNetd CA certificate is exported as" in r.stdout
    key, req = _request("lab")
    (base / "node.crq").write_bytes(req)
    r = certutil("-s", "-c", str(base / "node.crq"), "-n", "lab", "-d", str(db))
    assert r.returncode == 0, r.stderr
    der = (db / "cluster-lab.crt").read_bytes()
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.rfc4514_string() == "CN=lab" and cert.serial_number == 103
    (base / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (base / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return base


def client_ctx(pki, with_cert=True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki / "nssdb" / CA_CERT_FILE))
    if with_cert:
        ctx.load_cert_chain(str(pki / "node.pem"), str(pki / "node.key"))
    return ctx


@pytest.fixture
def start(tmp_path, pki):
    started = []

    def make(*args):
        d = tmp_path / f"d{len(started)}"
        d.mkdir()
        dm = Daemon(d, "-S", f"nss_db_dir={pki / 'nssdb'}", *args)
        started.append(dm)
        dm.wait_ready()
        return dm

    yield make
    for dm in started:
        assert dm.stop() == 0, dm.stderr()


async def test_tls_on_with_client_certificate(start, pki):
    d = start("-s", "on", "-c", "on")
    ring = RingId(1, 0x1E)
    c1 = await QdeviceClient.connect(d.port)
    await c1.start(1, [1, 2], [1, 2], ring, tls=client_ctx(pki))
    c2 = await QdeviceClient.connect(d.port)
    await c2.start(2, [1, 2], [1, 2], ring, tls=client_ctx(pki))
    assert await c1.wait_vote() == Vote.ACK
    assert await c2.wait_vote() == Vote.ACK
    assert c1.stream.cipher() is not None
    plain = await QdeviceClient.connect(d.port)  # -s on: plain clients are accepted too
    await plain.start(1, [1], [1], RingId(1, 1), cluster=b"other")
    assert await plain.wait_vote() == Vote.ACK
    r = tool(d.sock, "-l", "-v")
    assert r.stdout.count(b"TLS active:\t\tYes (client certificate verified)\n") == 2
    assert b"TLS active:\t\tNo\n" in r.stdout
    r = tool(d.sock, "-s")
    assert b"TLS:\t\t\t\tSupported (client certificate required)\n" in r.stdout
    for c in (c1, c2, plain):
        await c.aclose()


async def test_tls_required_refuses_plain_and_wrong_name(start, pki):
    d = start("-s", "req")
    plain = await QdeviceClient.connect(d.port)
    r = await plain.preinit()
    assert (r.tls_supported, r.tls_client_cert_required) == (2, 1)
    m = await plain.init(1)
    assert (m.type, m.reply_error_code) == (P.MsgType.SERVER_ERROR, P.Err.TLS_REQUIRED)
    ok = await QdeviceClient.connect(d.port)
    await ok.preinit(b"LAB")  # certificate CN=lab: case-insensitive match
    await ok.starttls(client_ctx(pki))
    assert (await ok.init(1)).reply_error_code == 0
    wrong = await QdeviceClient.connect(d.port)
    await wrong.preinit(b"lab2")
    await wrong.starttls(client_ctx(pki))
    await wrong.send_raw(P.build_init(3, 2, 1, 8000, P.TieBreaker(), RingId(1, 1)))
    with pytest.raises(ClientClosed):
        await wrong.recv()
    nocert = await QdeviceClient.connect(d.port)
    await nocert.preinit(b"lab")
    with pytest.raises((ssl.SSLError, trio.BrokenResourceError, ClientClosed)):
        await nocert.starttls(client_ctx(pki, with_cert=False))
        await nocert.send_raw(P.build_init(3, 4, 1, 8000, P.TieBreaker(), RingId(1, 1)))
        await nocert.recv()
    r = tool(d.sock, "-s")
    assert b"TLS:\t\t\t\tRequired (client certificate required)\n" in r.stdout
    for c in (plain, ok, wrong, nocert):
        await c.aclose()


async def test_tls_without_client_certificates(start, pki):
    d = start("-s", "on", "-c", "off")
    c = await QdeviceClient.connect(d.port)
    r = await c.preinit(b"anything")
    assert r.tls_client_cert_required == 0
    await c.starttls(client_ctx(pki, with_cert=False))
    assert (await c.init(1)).reply_error_code == 0
    r = tool(d.sock, "-l", "-v")
    assert b"TLS active:\t\tYes\n" in r.stdout
    assert b"TLS:\t\t\t\tSupported\n" in tool(d.sock, "-s").stdout
    await c.aclose()


def test_missing_server_certificate(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "corosync.tools.qnetd", "-f", "-S",
                        f"nss_db_dir={tmp_path / 'empty'},lock_file={tmp_path}/l.pid,"
                        f"local_socket_file={tmp_path}/s.sock"], capture_output=True, timeout=20)
    assert r.returncode == 1
    assert b"Can't load server certificate 'QNetd Cert'" in r.stderr


def test_certutil_sign_variants_and_errors(tmp_path, pki, capsys):
    db = tmp_path / "db"
    init_ca(db, group_write=False, log=lambda s: None)
    assert oct((db / "serial.txt").stat().st_mode & 0o777) == "0o640"
    _, pem_req = _request("pylab", pem=True)
    (tmp_path / "pem.crq").write_bytes(pem_req)
    r = certutil_inproc(capsys, "-s", "-c", str(tmp_path / "pem.crq"), "-n", "pylab", "-d", str(db))
    assert r.returncode == 0 and r.stdout.endswith(f"Certificate stored in {db}/cluster-pylab.crt\n".encode())
    cert = x509.load_der_x509_certificate((db / "cluster-pylab.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((db / CA_CERT_FILE).read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    (tmp_path / "bad.crq").write_bytes(b"not a request")
    r = certutil_inproc(capsys, "-s", "-c", str(tmp_path / "bad.crq"), "-n", "x", "-d", str(db))
    assert r.returncode == 1 and b"Invalid certificate request" in r.stderr
    assert not (db / "cluster-x.crt").exists()
    r = certutil_inproc(capsys, "-s", "-c", str(tmp_path / "missing.crq"), "-n", "x", "-d", str(db))
    assert (r.returncode, r.stderr) == (2, f"Can't open certificate file {tmp_path}/missing.crq\n".encode())
    r = certutil_inproc(capsys, "-s", "-c", str(tmp_path / "pem.crq"), "-d", str(db))
    assert (r.returncode, r.stderr) == (2, b"You have to specify cluster name\n")
    r = certutil_inproc(capsys, "-s", "-c", str(tmp_path / "pem.crq"), "-n", "y", "-d", str(tmp_path / "nodb"))
    assert r.returncode == 1 and b"Certificate database doesn't exists" in r.stderr
    r = certutil_inproc(capsys, "-i", "-d", str(db))
    assert r.returncode == 1 and b"already exists" in r.stderr
    r = certutil_inproc(capsys, "-X")
    assert (r.returncode, r.stderr) == (1, b"Invalid option: -X\n")
    r = certutil_inproc(capsys)
    assert r.returncode == 0 and r.stdout.startswith(b"corosync-qnetd-certutil: [-i|-s]")


async def test_broken_handshake_costs_only_that_connection(start, pki):
    d = start("-s", "on", "-c", "on")
    bad = await QdeviceClient.connect(d.port)
    await bad.preinit()
    await bad.send_raw(P.build_starttls(2) + b"\x16\x03\x01\x00\x05hello, this is not TLS")
    await bad.expect_closed()
    good = await QdeviceClient.connect(d.port)
    await good.preinit()
    await good.starttls(client_ctx(pki))
    assert (await good.init(1)).reply_error_code == 0
    r = tool(d.sock, "-s")
    assert b"Connected clients:\t\t1\n" in r.stdout
    await good.aclose()
