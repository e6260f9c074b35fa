"""corosync-qdevice-net-certutil flow with our corosync-qnetd-certutil (and the stock node
tool where installed), then our qdevice over STARTTLS + TLS with a client certificate
against our qnetd ``-s req -c on``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from corosync.exec.qdevice import core as C
from corosync.exec.qdevice.daemon import QdeviceDriver
from corosync.exec.qdevice.tlsfiles import (CA_FILE, CERT_FILE, CRQ_FILE, KEY_FILE, P12_FILE,
                                            client_context)
from corosync.exec.qnetd import protocol as P

from test_qdevice_driver import FakeVotequorum, _tool, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qnetd"))
from qnetd_client import Daemon  # noqa: E402

STOCK = "/usr/sbin/corosync-qdevice-net-certutil"


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"corosync.tools.{module}", *args],
                          capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """qnetd CA (our qnetd certutil), node 1: -i, -r, (qnetd -s), -M; node 2: -i, -m."""
    base = tmp_path_factory.mktemp("pki")
    qdb, n1, n2 = base / "qnetd", base / "n1", base / "n2"
    r = run("qnetd_certutil", "-i", "-d", str(qdb))
    assert r.returncode == 0, r.stderr
    r = run("qdevice_net_certutil", "-i", "-c", str(qdb / "qnetd-cacert.crt"), "-d", str(n1))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"Creating {n1}\nCreating new key and cert db\nImporting CA\n"
    r = run("qdevice_net_certutil", "-r", "-n", "lab", "-d", str(n1))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().endswith(f"Certificate request stored in {n1 / CRQ_FILE}\n")
    r = run("qnetd_certutil", "-s", "-c", str(n1 / CRQ_FILE), "-n", "lab", "-d", str(qdb))
    assert r.returncode == 0, r.stderr
    r = run("qdevice_net_certutil", "-M", "-c", str(qdb / "cluster-lab.crt"), "-d", str(n1))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().endswith(f"Certificate stored in {n1 / P12_FILE}\n")
    r = run("qdevice_net_certutil", "-i", "-c", str(qdb / "qnetd-cacert.crt"), "-d", str(n2))
    assert r.returncode == 0, r.stderr
    r = run("qdevice_net_certutil", "-m", "-c", str(n1 / P12_FILE), "-d", str(n2))
    assert r.returncode == 0, r.stderr
    return base


def test_certutil_files_and_errors(pki, tmp_path):
    from cryptography import x509

    n1, n2 = pki / "n1", pki / "n2"
    req = x509.load_der_x509_csr((n1 / CRQ_FILE).read_bytes())  # DER, as the stock qnetd needs
    assert req.subject.rfc4514_string() == "CN=lab"
    assert (n1 / CERT_FILE).read_bytes() == (n2 / CERT_FILE).read_bytes()
    assert oct((n1 / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    # stock messages and exit codes
    r = run("qdevice_net_certutil", "-i", "-c", str(pki / "qnetd" / "qnetd-cacert.crt"),
            "-d", str(n1))
    assert (r.returncode, r.stderr) == (1, b"Certificate database already exists. "
                                           b"Delete it to continue\n")
    r = run("qdevice_net_certutil", "-r", "-d", str(tmp_path))
    assert (r.returncode, r.stderr) == (2, b"You have to specify cluster name\n")
    r = run("qdevice_net_certutil", "-M", "-c", str(tmp_path / "nope"), "-d", str(n1))
    assert (r.returncode, r.stderr) == (2, f"Can't open certificate file {tmp_path / 'nope'}\n".encode())
    r = run("qdevice_net_certutil", "-r", "-n", "x", "-d", str(tmp_path / "empty"))
    assert r.returncode == 1 and b"Use corosync-qdevice-net-certutil -i" in r.stderr
    # a certificate that is not ours is refused by -M
    (tmp_path / "junk.crt").write_bytes((pki / "qnetd" / "qnetd-cacert.crt").read_bytes())
    r = run("qdevice_net_certutil", "-M", "-c", str(tmp_path / "junk.crt"), "-d", str(n2))
    assert r.returncode == 1 and b"doesn't match" in r.stderr


def test_stock_ca_export_accepted(shared_dir, tmp_path):
    """-i takes the stock qnetd-cacert.crt (NSS text dump followed by the PEM block)."""
    example = shared_dir / "reference/qdevice/qnetd/certs/qnetd-cacert.crt.example"
    r = run("qdevice_net_certutil", "-i", "-c", str(example), "-d", str(tmp_path / "db"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "db" / CA_FILE).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.skipif(not (os.path.exists(STOCK) and os.geteuid() == 0 and shutil.which("unshare")),
                    reason="needs the stock certutil, root and unshare (private /etc/corosync)")
def test_stock_node_tool_imports_our_p12(pki, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(pki / "qnetd" / "qnetd-cacert.crt", etc / "ca.crt")
    shutil.copy(pki / "n1" / P12_FILE, etc / "node.p12")
    script = (f"mount --bind {etc} /etc/corosync && {STOCK} -i -c /etc/corosync/ca.crt && "
              f"{STOCK} -m -c /etc/corosync/node.p12 && "
              "certutil -L -d /etc/corosync/qdevice/net/nssdb")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"Cluster Cert" in r.stdout and b"QNet CA" in r.stdout


async def test_our_qdevice_over_tls_with_client_certificate(pki, tmp_path):
    qdb = pki / "qnetd"
    qn = Daemon(tmp_path, "-s", "req", "-c", "on", "-S", f"nss_db_dir={qdb}")
    try:
        await trio.to_thread.run_sync(qn.wait_ready)
        drivers = []
        async with trio.open_nursery() as nursery:
            for node_id, db in ((1, pki / "n1"), (2, pki / "n2")):
                cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=node_id, host="127.0.0.1",
                                      port=qn.port, tls=2, timeout_ms=2000,
                                      config_nodes=(P.NodeInfo(1), P.NodeInfo(2)))
                vq = FakeVotequorum()
                d = QdeviceDriver(C.QdeviceNet(cfg), vq,
                                  tls_context=lambda db=db: client_context(str(db)),
                                  socket_path=str(tmp_path / f"qd{node_id}.sock"))
                await nursery.start(d.run)
                vq.membership(P.RingId(1, 5), (1, 2))
                drivers.append((vq, d))
            await wait_until(lambda: all(vq.last_vote() for vq, _ in drivers), 15, "TLS ACKs")
            r = await trio.to_thread.run_sync(_tool, tmp_path / "qd1.sock", "-s", "-v")
            assert "TLS active:\t\tYes (client certificate sent)\n" in r.stdout.decode()
            assert "TLS:\t\t\tRequired\n" in r.stdout.decode()
            listing = subprocess.run([sys.executable, "-m", "corosync.tools.qnetd_tool", "-p",
                                      str(qn.sock), "-l", "-v"], capture_output=True).stdout
            assert listing.count(b"TLS active:\t\tYes (client certificate verified)\n") == 2
            for _, d in drivers:
                d.stop()
    finally:
        assert qn.stop() == 0, qn.stderr()


async def test_tls_refused_without_ca_gives_up_cleanly(tmp_path):
    """tls: required but no certificate directory: the handshake cannot start, the client
    disconnects and retries (as the stock client does on TLS errors), nothing crashes."""
    qn = Daemon(tmp_path, "-s", "off")
    try:
        await trio.to_thread.run_sync(qn.wait_ready)
        cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="127.0.0.1", port=qn.port,
                              tls=2, timeout_ms=2000, config_nodes=(P.NodeInfo(1),))
        vq = FakeVotequorum()
        d = QdeviceDriver(C.QdeviceNet(cfg), vq)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.run)
            vq.membership(P.RingId(1, 5), (1,))
            # -s off + tls required: incompatible, the client gives up (daemon would exit 1)
            await wait_until(lambda: d.core.state == C.State.EXITED, 10, "give up")
        assert d.exit_code == 1 and "TLS" in (d.exit_reason or "")
    finally:
        assert qn.stop() == 0


STOCK_QNETD = "/usr/bin/corosync-qnetd"
STOCK_QNETD_CERTUTIL = "/usr/bin/corosync-qnetd-certutil"


@pytest.mark.skipif(not (os.path.exists(STOCK_QNETD) and os.path.exists(STOCK_QNETD_CERTUTIL)
                         and os.geteuid() == 0 and shutil.which("unshare")),
                    reason="needs Debian's corosync-qnetd + certutil, root and unshare")
async def test_our_qdevice_tls_against_debian_qnetd(tmp_path):
    """Stock CA and server certificate (NSS), our node flow (-i on the stock CA export, DER
    request signed by the stock qnetd certutil, -M), our qdevice over TLS 1.3 with the
    client certificate against Debian's qnetd -s req -c on (private /etc/corosync)."""
    from qnetd_client import free_port

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "qnetd").mkdir()
    bind = f"mount --bind {etc} /etc/corosync"
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"{bind} && {STOCK_QNETD_CERTUTIL} -i"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    nssdb = etc / "qnetd" / "nssdb"
    node = tmp_path / "node"
    r = run("qdevice_net_certutil", "-i", "-c", str(nssdb / "qnetd-cacert.crt"), "-d", str(node))
    assert r.returncode == 0, r.stderr
    r = run("qdevice_net_certutil", "-r", "-n", "lab", "-d", str(node))
    assert r.returncode == 0, r.stderr
    shutil.copy(node / CRQ_FILE, etc / "node.crq")
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"{bind} && {STOCK_QNETD_CERTUTIL} -s -c /etc/corosync/node.crq -n lab"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("qdevice_net_certutil", "-M", "-c", str(nssdb / "cluster-lab.crt"), "-d", str(node))
    assert r.returncode == 0, r.stderr
    port = free_port()
    sock = tmp_path / "q.sock"
    log = open(tmp_path / "qnetd.log", "wb")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c",
                             f"{bind} && exec {STOCK_QNETD} -f -d -s req -c on -4 -p {port} "
                             f"-S lock_file={tmp_path}/q.pid,local_socket_file={sock}"],
                            stdout=log, stderr=log)
    try:
        await wait_until(lambda: sock.exists() or proc.poll() is not None, 20, "stock qnetd")
        assert proc.poll() is None, (tmp_path / "qnetd.log").read_text()
        cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="127.0.0.1", port=port,
                              tls=1, timeout_ms=2000, config_nodes=(P.NodeInfo(1),))
        vq = FakeVotequorum()
        d = QdeviceDriver(C.QdeviceNet(cfg), vq, tls_context=lambda: client_context(str(node)))
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run)
            vq.membership(P.RingId(1, 3), (1,))
            await wait_until(lambda: vq.last_vote() is True, 15,
                             "ACK over TLS from Debian's qnetd")
            assert d.core.tls_active and d.core.tls_cert_sent
            listing = subprocess.run(["/usr/bin/corosync-qnetd-tool", "-l", "-v", "-p", str(sock)],
                                     capture_output=True, timeout=20).stdout
            assert b"TLS active:\t\tYes (client certificate verified)\n" in listing, listing
            d.stop()
    finally:
        proc.terminate()  # the pid is the qnetd itself (sh exec)
        proc.wait(15)
        log.close()


async def test_unreadable_certificate_directory_is_retried_not_fatal(pki, tmp_path):
    """tls: on against -s on, but the CA file is missing: the handshake cannot start; the
    driver logs, disconnects and retries (the stock client retries TLS failures), no crash."""
    qn = Daemon(tmp_path, "-s", "on", "-c", "off", "-S", f"nss_db_dir={pki / 'qnetd'}")
    try:
        await trio.to_thread.run_sync(qn.wait_ready)
        cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="127.0.0.1", port=qn.port,
                              tls=1, timeout_ms=1250, config_nodes=(P.NodeInfo(1),))
        vq = FakeVotequorum()
        d = QdeviceDriver(C.QdeviceNet(cfg, rng=lambda n: 0), vq,
                          tls_context=lambda: client_context(str(tmp_path / "nothing")))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.run)
            vq.membership(P.RingId(1, 5), (1,))
            await wait_until(lambda: d.core.msg_seq >= 4, 10, "several STARTTLS attempts")
            assert d.core.state != C.State.EXITED and not vq.last_vote()
            d.stop()
    finally:
        assert qn.stop() == 0, qn.stderr()
