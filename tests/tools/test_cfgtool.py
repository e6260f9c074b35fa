"""corosync-cfgtool (tools/cfgtool.py): formats vs every reference output, help and no-daemon
texts, option errors, and a live differential against Debian's corosync-cfgtool on a real
corosync 3.1.7 (skipped with a printed reason when absent)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients"))

from clients_realdaemon import real_corosync  # noqa: E402,F401  (fixture)

from corosync.cfg import LinkStatus, NodeStatus  # noqa: E402
from corosync.tools import cfgtool as ct  # noqa: E402

OURS = [sys.executable, "-m", "corosync.tools.cfgtool"]
THEIRS = ["env", "PATH=/usr/sbin:/usr/bin:/bin", "corosync-cfgtool"]


def _status_from_reference(d: Path) -> tuple[int, str, list[int], list[NodeStatus]]:
    """Rebuild what NODESTATUSGET returned from the -s and -n outputs of one set."""
    s = (d / "cfgtool-s.txt").read_text()
    n = (d / "cfgtool-n.txt").read_text()
    local, transport = re.match(r"Local node ID (\d+), transport (\S+)", s).groups()
    local = int(local)
    links: dict[int, dict[int, LinkStatus]] = {}
    for block in re.finditer(r"nodeid: (\d+) reachable\n((?:   LINK.*\n)+)", n):
        nid = int(block[1])
        for m in re.finditer(r"   LINK: (\d+) \S* ?\(([^)-]*)(?:->([^)]*))?\) enabled"
                             r"( connected)?( dynconnected)? mtu: (\d+)", block[2]):
            links.setdefault(nid, {})[int(m[1])] = LinkStatus(
                True, bool(m[4]), bool(m[5]), int(m[6]), m[2], m[3] or "")
    nodeids = [int(x) for x in re.findall(r"nodeid:\s+(\d+):", s)]
    statuses = []
    addr = dict(re.findall(r"LINK ID (\d+) .*\n\taddr\t= (\S+)", s))
    for nid in nodeids:
        per = links.get(nid, {})
        reachable = nid in links or nid == local
        ls = []
        for i in range(8):
            if i in per:
                ls.append(per[i])
            elif str(i) in addr and nid in (local,) + tuple(x for x in nodeids if x not in links):
                # local node / unreachable node: enabled, address from -s when it is "other"
                ls.append(LinkStatus(True, nid == local, False, 1410,
                                     addr[str(i)] if nid == nodeids[-1] else ""))
            else:
                ls.append(LinkStatus())
        statuses.append(NodeStatus(nid, reachable, links=tuple(ls)))
    return local, transport, nodeids, statuses


def reference_sets(shared: Path) -> list[Path]:
    return [d for d in sorted(shared.glob("reference/*/running")) + sorted(
        shared.glob("reference/*/after-kill-n3")) if (d / "cfgtool-s.txt").exists()]


def test_formats_reproduce_every_reference(shared_dir: Path) -> None:
    sets = reference_sets(shared_dir)
    assert len(sets) >= 12
    for d in sets:
        local, transport, nodeids, statuses = _status_from_reference(d)
        header = ct.format_header(local, transport)
        assert header + ct.format_links(nodeids, statuses, local, transport) == \
            (d / "cfgtool-s.txt").read_text(), d
        assert header + ct.format_nodes(statuses, local, transport) == \
            (d / "cfgtool-n.txt").read_text(), d


def test_brief_form_and_knet_words() -> None:
    up = LinkStatus(True, True, False, 1410, "10.0.0.2", "10.0.0.1")
    down = LinkStatus(True, False, False, 1410, "10.0.0.3", "")
    st = [NodeStatus(1, True, links=(LinkStatus(True, True),) + (LinkStatus(),) * 7),
          NodeStatus(2, True, links=(up,) + (LinkStatus(),) * 7),
          NodeStatus(3, False, links=(down,) + (LinkStatus(),) * 7)]
    assert ct.format_links([1, 2, 3], st, 1, "knet", brief=True) == \
        "LINK ID 0 udp\n\taddr\t= 10.0.0.3\n\tstatus\t= n31\n"
    assert ct.format_nodes(st, 1, "knet") == \
        "nodeid: 2 reachable\n   LINK: 0 udp (10.0.0.2->10.0.0.1) enabled connected mtu: 1410\n\n"
    assert ct.link_transports("knet", {1: "sctp"})[:2] == ["udp", "sctp"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = ct.main(argv, out, err)
    return rc, out.getvalue(), err.getvalue()


def test_help_and_option_errors(shared_dir: Path) -> None:
    ref = (shared_dir / "reference" / "common" / "corosync-cfgtool-h.txt").read_text()
    assert _run(["-h"]) == (0, ref, "")
    assert _run([]) == (0, ref, "")
    assert _run(["-x"]) == (1, "", "corosync-cfgtool: invalid option -- 'x'\n")
    assert _run(["--bogus"]) == (1, "", "corosync-cfgtool: unrecognized option '--bogus'\n")
    assert _run(["-k", "0"]) == (1, "", "The nodeid was not valid, try a positive number\n")
    assert _run(["--address", "x"])[0] == 1
    assert ct.expand_long(["--stat", "--force", "--if=1.2.3.4"], io.StringIO()) == \
        (["-s", "-i", "1.2.3.4"], True)


@pytest.mark.parametrize("args", [["-x"], ["--bogus"], ["--kill"], ["-k"], ["--stat=1"]])
def test_option_errors_name_argv0_like_glibc(tmp_path: Path, monkeypatch, args) -> None:
    """glibc's getopt prefixes its messages with argv[0] as invoked (a path, a symlink
    name): the same invocation name must give the same bytes as Debian's tool."""
    debian = Path("/usr/sbin/corosync-cfgtool")
    link = tmp_path / "my-cfgtool"
    want_rc, want_err = 1, None
    if debian.exists():
        link.symlink_to(debian)
        theirs = subprocess.run([str(link), *args], capture_output=True, text=True, timeout=30)
        want_rc, want_err = theirs.returncode, theirs.stderr
    monkeypatch.setattr(sys, "argv", [str(link), *args])
    out, err = io.StringIO(), io.StringIO()
    assert ct.main(None, out, err) == want_rc
    assert err.getvalue().startswith(f"{link}: ")
    if want_err is not None:
        assert err.getvalue() == want_err
    # under ``python -m`` argv[0] is the module file: the tool's own name instead
    assert ct.program_name(ct.__file__) == "corosync-cfgtool"


def test_no_daemon_matches_reference(shared_dir: Path) -> None:
    ref = shared_dir / "reference" / "common"
    p = subprocess.run(["unshare", "-n", *OURS, "-s"], capture_output=True, timeout=60)
    if p.returncode != 0 and b"Operation not permitted" in p.stderr:
        pytest.skip("unshare -n not permitted here")
    assert p.returncode == 1
    assert p.stdout == (ref / "nodaemon-cfgtool-s.txt").read_bytes()
    assert p.stderr == (ref / "nodaemon-cfgtool-s.stderr").read_bytes()


@pytest.mark.parametrize("args", [["-s"], ["-n"], ["-s", "-b"], ["-a", "1"], ["-a", "9"],
                                  ["-L"], ["-R"], ["-k", "9"], ["-i", "127.0.0.1", "-s"],
                                  ["--status", "--brief"]])
def test_live_same_output_as_debian(real_corosync, args) -> None:  # noqa: F811
    ours = real_corosync.run(*OURS, *args)
    theirs = real_corosync.run(*THEIRS, *args)
    assert (ours.returncode, ours.stdout, ours.stderr) == \
        (theirs.returncode, theirs.stdout, theirs.stderr)
