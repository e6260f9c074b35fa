"""corosync-quorumtool (tools/quorumtool.py): formats vs every reference output, help,
version and no-daemon texts, option errors, and a live differential against Debian's
corosync-quorumtool on a real corosync 3.1.7 (skipped with a printed reason when absent)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients"))

from clients_realdaemon import real_corosync  # noqa: E402,F401  (fixture)

from corosync.lib.proto import votequorum as vp  # noqa: E402
from corosync.tools import quorumtool as qt  # noqa: E402
from corosync.votequorum import NodeInfo  # noqa: E402

OURS = [sys.executable, "-m", "corosync.tools.quorumtool"]
THEIRS = ["env", "PATH=/usr/sbin:/usr/bin:/bin", "corosync-quorumtool"]
_ROW = re.compile(r"^\s+(\d+)\s+(\d+)(?:\s+(NR|N?A,N?V,N?MW))?\s?(.*)$")
_FLAGS = {"2Node": vp.INFO_TWONODE, "Quorate": vp.INFO_QUORATE,
          "WaitForAll": vp.INFO_WAIT_FOR_ALL, "Qdevice": vp.INFO_QDEVICE_REGISTERED}


def _qflags(text: str | None) -> int:
    if not text or text == "NR":
        return 0
    a, v, mw = text.split(",")
    return (vp.INFO_QDEVICE_REGISTERED | (vp.INFO_QDEVICE_ALIVE if a == "A" else 0)
            | (vp.INFO_QDEVICE_CAST_VOTE if v == "V" else 0)
            | (vp.INFO_QDEVICE_MASTER_WINS if mw == "MW" else 0))


def parse_table(text: str) -> tuple[list[qt.Row], int, bool, tuple[int, str] | None]:
    """Rows, our node id, whether the -p/qdevice column is shown, qdevice (votes, name)."""
    lines = text.split("Membership information\n----------------------\n", 1)[1].splitlines()
    has_qcol = "Qdevice" in lines[0]
    rows, ours, qdev = [], 0, None
    for line in lines[1:]:
        if not line.strip():
            continue
        m = _ROW.match(line)
        assert m, line
        nodeid, votes, q, name = int(m[1]), int(m[2]), m[3], m[4]
        if nodeid == 0:
            qdev = (votes, name.strip())
            continue
        if name.endswith(" (local)"):
            name, ours = name[:-8], nodeid
        rows.append(qt.Row(nodeid, name, NodeInfo(nodeid, 1, votes, flags=_qflags(q))))
    if qdev is not None:
        for r in rows:
            r.info = NodeInfo(r.nodeid, 1, r.info.votes, flags=r.info.flags,
                              qdevice_votes=qdev[0], qdevice_name=qdev[1])
    return rows, ours, has_qcol, qdev


def reference_files(shared: Path, pattern: str) -> list[Path]:
    return sorted(shared.glob(f"reference/*/*/{pattern}")) + sorted(
        shared.glob(f"reference/qdevice/{pattern}"))


def test_node_tables_reproduce_every_reference(shared_dir: Path) -> None:
    files = [p for p in reference_files(shared_dir, "*quorumtool-*.txt")
             if "Membership information" in p.read_text() and "-m" not in p.name]
    assert len(files) >= 30
    for path in files:
        text = path.read_text()
        rows, ours, has_qcol, _qdev = parse_table(text)
        table = "\nMembership information" + text.split("\nMembership information", 1)[1]
        mp = has_qcol and not any(r.info.flags for r in rows)
        assert qt.format_nodes(rows, ours, votequorum=True, machine_parsable=mp) == table, path


def test_status_blocks_reproduce_every_reference(shared_dir: Path) -> None:
    files = [p for p in reference_files(shared_dir, "*quorumtool-s*.txt")]
    files += [shared_dir / "reference/qdevice/running-quorumtool-s.txt",
              shared_dir / "reference/qdevice/after-kill-quorumtool-s.txt"]
    assert len(files) >= 20
    for path in files:
        text = path.read_text()
        head = text.split("\nMembership information", 1)[0]
        f = dict(re.findall(r"^([A-Za-z ]+):\s+(.*)$", head, re.M))
        rep, seq = f["Ring ID"].split(".")
        flags = sum(_FLAGS[w] for w in f["Flags"].split())
        info = NodeInfo(expected_votes=int(f["Expected votes"]),
                        highest_expected=int(f["Highest expected"]),
                        total_votes=int(f["Total votes"]),
                        quorum=int(f["Quorum"].split()[0]), flags=flags)
        got = qt.format_quorum(date=f["Date"], provider=f["Quorum provider"],
                               nodes=int(f["Nodes"]), our_nodeid=int(f["Node ID"]),
                               ring_rep=int(rep, 16), ring_seq=int(seq, 16),
                               quorate=f["Quorate"] == "Yes", votequorum=True, info=info)
        assert got == head, path


def test_hex_ids_sorting_and_no_votequorum() -> None:
    rows = [qt.Row(3, "c"), qt.Row(1, "b"), qt.Row(2, "a")]
    text = qt.format_nodes(rows, 1, votequorum=False, hex_ids=True, sort="i")
    assert text == ("\nMembership information\n----------------------\n    Nodeid Name\n"
                    "0x00000001 b (local)\n0x00000002 a\n0x00000003 c\n")
    text = qt.format_nodes(rows, 1, votequorum=False, sort="n")
    assert [line.split()[-1] for line in text.splitlines()[4:]] == ["a", "(local)", "c"]
    head = qt.format_quorum(date="D", provider="Not configured", nodes=0, our_nodeid=0,
                            ring_rep=0, ring_seq=0x1f, quorate=True, votequorum=False,
                            info=None, hex_ids=True)
    assert "Node ID:          0x00000000\nRing ID:          1f\nQuorate:          Yes\n" in head
    assert "Votequorum" not in head


def test_qdevice_not_casting_shows_zero_votes() -> None:
    info = NodeInfo(1, 1, 1, flags=vp.INFO_QDEVICE_REGISTERED | vp.INFO_QDEVICE_ALIVE,
                    qdevice_votes=1, qdevice_name="Qdevice")
    text = qt.format_nodes([qt.Row(1, "n1", info)], 1, votequorum=True)
    assert text.endswith("         1          1   A,NV,NMW n1 (local)\n"
                         "         0          0            Qdevice (votes 1)\n")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = qt.main(argv, out, err)
    return rc, out.getvalue(), err.getvalue()


def test_help_version_and_errors(shared_dir: Path) -> None:
    ref = shared_dir / "reference" / "common"
    assert _run(["-h"]) == (0, (ref / "corosync-quorumtool-h.txt").read_text(), "")
    assert _run(["-V"]) == (0, (ref / "corosync-quorumtool-V.txt").read_text(), "")
    rc, out, err = _run(["-x"])
    assert (rc, err) == (1, "corosync-quorumtool: invalid option -- 'x'\n")
    assert out == (ref / "corosync-quorumtool-h.txt").read_text()
    assert _run(["-e", "0"])[::2] == (1, "New expected votes value was not valid, try a "
                                         "positive number\n")
    assert _run(["-v", "x"])[::2] == (1, "New votes value was not valid, try a positive "
                                         "number or zero\n")
    assert _run(["-n", "-3"])[::2] == (1, "The nodeid was not valid, try a positive number\n")
    assert _run(["-o", "z"])[::2] == (1, "Invalid ordering option. valid orders are "
                                         "a(address), i(node ID) or n(name)\n")


def test_no_daemon_matches_reference(shared_dir: Path) -> None:
    ref = shared_dir / "reference" / "common"
    p = subprocess.run(["unshare", "-n", *OURS, "-s"], capture_output=True, timeout=60)
    if p.returncode != 0 and b"unshare" in p.stderr and b"Operation not permitted" in p.stderr:
        pytest.skip("unshare -n not permitted here")
    assert p.returncode == 1
    assert p.stdout == (ref / "nodaemon-quorumtool-s.txt").read_bytes()
    assert p.stderr == (ref / "nodaemon-quorumtool-s.stderr").read_bytes()


_DATE = re.compile(rb"^Date: .*$", re.M)


@pytest.mark.parametrize("args", [["-s"], ["-s", "-p"], ["-l"], ["-l", "-i"], ["-s", "-H"],
                                  ["-l", "-o", "n"], ["-l", "-a"], ["-e", "0"],
                                  ["-f"], ["-v", "1", "-n", "77"], ["-e", "1"]])
def test_live_same_output_as_debian(real_corosync, args) -> None:  # noqa: F811
    ours = real_corosync.run(*OURS, *args)
    theirs = real_corosync.run(*THEIRS, *args)
    assert ours.returncode == theirs.returncode, (ours, theirs)
    assert _DATE.sub(b"Date:", ours.stdout) == _DATE.sub(b"Date:", theirs.stdout)
    assert ours.stderr == theirs.stderr


def test_live_library_calls(real_corosync) -> None:  # noqa: F811
    script = (
        "from corosync.quorum import Quorum, MODEL_V1\n"
        "from corosync.votequorum import Votequorum\n"
        "from corosync.cfg import Cfg\n"
        "seen = []\n"
        "with Quorum.initialize(notify=seen.append) as q:\n"
        "    assert q.quorum_type == 1 and q.getquorate()\n"
        "    q.trackstart(1)\n"
        "    q.dispatch(1)\n"
        "    assert seen[0].view_list == (1,) and seen[0].quorate\n"
        "nl = []\n"
        "with Quorum.initialize(nodelist=nl.append, notify=seen.append, model=MODEL_V1) as q:\n"
        "    q.trackstart(1)\n"
        "    q.dispatch(1); q.dispatch(1)\n"
        "    assert nl[0].members == (1,) and seen[-1].ring_nodeid == 1\n"
        "with Votequorum.initialize() as v:\n"
        "    i = v.getinfo(0)\n"
        "    assert (i.nodeid, i.votes, i.expected_votes, i.quorum) == (1, 1, 1, 1), i\n"
        "with Cfg.initialize() as c:\n"
        "    assert c.local_get() == 1\n"
        "    assert c.get_node_addrs(1) == ['127.0.0.1']\n"
        "    st = c.node_status_get(1)\n"
        "    assert st.nodeid == 1 and st.links[0].enabled and st.links[0].mtu > 0, st\n"
        "print('ok')\n")
    p = real_corosync.run(sys.executable, "-c", script)
    assert p.returncode == 0 and p.stdout == b"ok\n", p.stderr.decode()
