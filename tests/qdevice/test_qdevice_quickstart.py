"""corosync-qdevice-net-certutil -Q (the stock ssh/scp quick start) against fake ``ssh`` and
``scp`` on PATH that emulate several hosts on this machine.

Each fake host has its own ``/etc/corosync`` and ``/tmp`` (directories under the test's
tmp_path): the fake ssh rewrites those two prefixes in the remote command and runs it with
``sh -c``; the fake scp copies files with the same mapping.  The remote commands find
``corosync-qdevice-net-certutil`` / ``corosync-qnetd-certutil`` on PATH as small wrappers
around our tools that add ``-d <the host's certificate directory>``.  Every ssh/scp call is
logged, so the test checks the exact command sequence of the stock script, the certificate
files that result on every host (usable for TLS), and the error paths.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest

from corosync.exec.qdevice.tlsfiles import CA_FILE, CERT_FILE, KEY_FILE, client_context
from corosync.tools import qdevice_net_certutil as tool

PROG = "corosync-qdevice-net-certutil"
NODE_DB = "/etc/corosync/qdevice/net/nssdb"

FAKE_SSH = r'''#!{python}
"""fake ssh: [user@]host command...  (runs the command locally for that host)"""
import os, re, subprocess, sys
root, log = os.environ["FAKE_ROOT"], os.environ["FAKE_LOG"]
target, cmd = sys.argv[1], " ".join(sys.argv[2:])
host = target.split("@")[-1]
with open(log, "a") as f:
    f.write(f"ssh {{target}} {{cmd}}\n")
hdir = os.path.join(root, host)
if not os.path.isdir(hdir):
    sys.stderr.write(f"ssh: Could not resolve hostname {{host}}: Name or service not known\n")
    sys.exit(255)
mapped = re.sub(r"(?<![\w/.-])(/etc/corosync/|/tmp/)",
                lambda m: hdir + ("/etc/" if m.group(1) == "/etc/corosync/" else "/tmp/"), cmd)
env = dict(os.environ, FAKE_HOST=host)
if os.path.exists(os.path.join(hdir, "no-tools")):
    env["PATH"] = "/usr/bin:/bin"
sys.exit(subprocess.run(["sh", "-c", mapped], env=env, cwd=hdir).returncode)
'''

FAKE_SCP = r'''#!{python}
"""fake scp: SRC DST, each [user@]host:path or a local path"""
import os, shutil, sys
root, log = os.environ["FAKE_ROOT"], os.environ["FAKE_LOG"]
with open(log, "a") as f:
    f.write("scp " + " ".join(sys.argv[1:]) + "\n")
def where(spec):
    if ":" not in spec:
        return spec
    host, path = spec.split(":", 1)
    hdir = os.path.join(root, host.split("@")[-1])
    for prefix, repl in (("/etc/corosync/", hdir + "/etc/"), ("/tmp/", hdir + "/tmp/")):
        if path.startswith(prefix):
            return repl + path[len(prefix):]
    return hdir + path
src, dst = where(sys.argv[1]), where(sys.argv[2])
try:
    shutil.copyfile(src, dst)
except OSError as exc:
    sys.stderr.write(f"scp: {{sys.argv[1]}}: {{exc.strerror}}\n")
    sys.exit(1)
'''

WRAPPER = '''#!/bin/sh
exec {python} -m corosync.tools.{module} -d "$FAKE_ROOT/$FAKE_HOST/etc/{db}" "$@"
'''


@pytest.fixture
def hosts(tmp_path, monkeypatch):
    root, bindir = tmp_path / "hosts", tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        (bindir / name).write_text(text.format(python=sys.executable))
    for name, module, db in ((PROG, "qdevice_net_certutil", "qdevice/net/nssdb"),
                             ("corosync-qnetd-certutil", "qnetd_certutil", "qnetd/nssdb")):
        (bindir / name).write_text(WRAPPER.format(python=sys.executable, module=module, db=db))
    for f in bindir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    for h in ("qnetd", "n1", "n2", "n3", "bare"):
        (root / h / "etc").mkdir(parents=True)
        (root / h / "tmp").mkdir()
    (root / "bare" / "no-tools").touch()
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ROOT", str(root))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    return root


def calls(root: Path) -> list[str]:
    text = (root.parent / "calls.log").read_text()
    return re.sub(r"/tmp/tmp\w+", "TMP", text).splitlines()


def test_quick_start_runs_the_stock_sequence_and_leaves_working_certificates(hosts, capsys):
    assert tool.main(["-Q", "-n", "lab", "qnetd", "n1", "n2"]) == 0
    ca = "/etc/corosync/qnetd/nssdb/qnetd-cacert.crt"
    want = []
    for n in ("n1", "n2"):
        want += [f'ssh root@{n} [ -d "{NODE_DB}" ]', f"ssh root@{n} {PROG}"]
    want.append("ssh root@qnetd corosync-qnetd-certutil -i")
    for n in ("n1", "n2"):
        want += [f"scp root@qnetd:{ca} TMP", f"scp TMP root@{n}:/tmp/qnetd-cacert.crt",
                 f'ssh root@{n} {PROG} -i -c "/tmp/qnetd-cacert.crt" && rm /tmp/qnetd-cacert.crt']
    want += [f'ssh root@n1 {PROG} -r -n "lab"',
             f"scp root@n1:{NODE_DB}/qdevice-net-node.crq TMP",
             "scp TMP root@qnetd:/tmp/qdevice-net-node.crq",
             'ssh root@qnetd corosync-qnetd-certutil -s -c "/tmp/qdevice-net-node.crq" -n "lab"',
             "scp root@qnetd:/etc/corosync/qnetd/nssdb/cluster-lab.crt TMP",
             f"scp TMP root@n1:{NODE_DB}/cluster-lab.crt",
             f'ssh root@n1 {PROG} -M -c "{NODE_DB}/cluster-lab.crt"']
    for n in ("n2",):
        want += [f"scp root@n1:{NODE_DB}/qdevice-net-node.p12 TMP",
                 f"scp TMP root@{n}:{NODE_DB}/qdevice-net-node.p12",
                 f'ssh root@{n} {PROG} -m -c "{NODE_DB}/qdevice-net-node.p12"']
    assert calls(hosts) == want
    # every node has the CA, the same cluster certificate and key, and a usable TLS context
    dbs = [hosts / n / "etc/qdevice/net/nssdb" for n in ("n1", "n2")]
    qnetd_ca = (hosts / "qnetd/etc/qnetd/nssdb/qnetd-cacert.crt").read_bytes()
    for db in dbs:
        assert (db / CA_FILE).read_bytes() in qnetd_ca
        assert (db / CERT_FILE).read_bytes() == (dbs[0] / CERT_FILE).read_bytes()
        assert (db / KEY_FILE).exists()
        client_context(str(db))
    assert not list((hosts / "n2" / "tmp").iterdir())  # the CA copy was removed again
    # the temporary local files of the scp relay are gone
    assert not [p for p in Path("/tmp").glob("tmp*") if str(p) in (hosts.parent / "calls.log").read_text()]


def test_quick_start_refuses_initialised_nodes_and_nodes_without_the_tool(hosts, capsys):
    (hosts / "n2" / "etc/qdevice/net/nssdb").mkdir(parents=True)
    assert tool.main(["-Q", "-n", "lab", "qnetd", "n1", "n2"]) == 1
    assert capsys.readouterr().err == \
        f"Node n2 seems to be already initialized. Please delete {NODE_DB}\n"
    assert not (hosts / "qnetd" / "etc" / "qnetd").exists()  # nothing done yet
    assert tool.main(["-Q", "-n", "lab", "qnetd", "n1", "bare"]) == 1
    assert capsys.readouterr().err.endswith(f"Node bare doesn't have {PROG} installed\n")


@pytest.mark.parametrize("args,message", [
    (["-Q", "qnetd", "n1"], "You have to specify cluster name\n"),
    (["-Q", "-n", "lab"], "No QNetd server address provided.\n"),
    (["-Q", "-n", "lab", "qnetd"], "No nodes provided.\n"),
])
def test_quick_start_argument_errors(hosts, capsys, args, message):
    assert tool.main(args) == 2
    assert capsys.readouterr().err == message
    assert not (hosts.parent / "calls.log").exists()


def test_quick_start_with_master_only_reports_the_import_status(hosts):
    """qnetd unreachable: like the stock script every later step still runs (and fails);
    with only the master node the exit status is that of its -M import."""
    assert tool.main(["-Q", "-n", "lab", "nowhere", "n3"]) == 2  # Can't open certificate file
    assert "ssh root@nowhere corosync-qnetd-certutil -i" in calls(hosts)
    assert not (hosts / "n3/etc/qdevice/net/nssdb" / CERT_FILE).exists()
