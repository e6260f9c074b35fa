"""corosync-cpgtool (tools/cpgtool.py): formats vs every reference output, help and no-daemon
texts, option errors vs Debian's binary, and a live differential against Debian's
corosync-cpgtool on a real corosync 3.1.7 (skipped with a printed reason when unavailable)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients"))

from clients_realdaemon import (DEBIAN_CPGTOOL, LineReader, RealCorosync,  # noqa: E402
                                real_corosync)  # noqa: F401  (fixture)

from corosync.cpg import IterationDescription  # noqa: E402
from corosync.tools import cpgtool  # noqa: E402

OURS = [sys.executable, "-m", "corosync.tools.cpgtool"]
THEIRS = ["env", "PATH=/usr/sbin:/usr/bin:/bin", "corosync-cpgtool"]
SCENARIOS = Path(__file__).resolve().parent.parent / "clients" / "clients_scenarios.py"


def reference_sets(shared: Path) -> list[Path]:
    dirs = sorted(shared.glob("reference/*/running")) + sorted(
        shared.glob("reference/*/after-kill-n3"))
    return [d for d in dirs if (d / "cpgtool-d.txt").exists()]


def test_formats_reproduce_every_reference(shared_dir: Path) -> None:
    sets = reference_sets(shared_dir)
    assert len(sets) >= 12
    for d in sets:
        rows = (d / "cpgtool-d.txt").read_bytes().splitlines()[1:]
        entries = []
        for row in rows:
            group, pid, nodeid = row.rsplit(b",", 2)
            entries.append(IterationDescription(group, int(nodeid), int(pid)))
        # the address column of the table, per node id
        addrs: dict[int, list[str | None]] = {}
        for line in (d / "cpgtool.txt").read_text().splitlines():
            if line.startswith("\t\t"):
                _pid, rest = line.strip().split("\t")
                nodeid, addr = rest.strip().split(" ", 1)
                addrs[int(nodeid)] = [addr.strip("()")]
        lookup = addrs.__getitem__
        assert cpgtool.format_members(entries, b"", True, lookup) == \
            (d / "cpgtool.txt").read_bytes(), d
        assert cpgtool.format_members(entries, b",", True, lookup) == \
            (d / "cpgtool-d.txt").read_bytes(), d
        names = list(dict.fromkeys(e.group for e in entries))
        assert cpgtool.format_names(names) == (d / "cpgtool-n.txt").read_bytes(), d


def test_group_escaping_and_address_lists() -> None:
    assert cpgtool.format_group(b"a\\b\x01\x7f\x80 z") == b"a\\\\b\\x01\\x7F\\xFFFFFF80 z"
    assert cpgtool.format_group(b"a\\b\x01", escape=False) == b"a\\b\x01"
    assert cpgtool.format_addrs(["10.0.0.1", None, "10.0.0.3"]) == b"10.0.0.1 10.0.0.3"
    assert cpgtool.format_addrs([None, "10.0.0.2"]) == b" 10.0.0.2"
    assert cpgtool.format_names([b"a", b"b"], b";") == b"a;b;\n"
    # an empty first group name is not printed (the C tool compares with a zeroed name)
    e = IterationDescription(b"", 1, 2)
    assert cpgtool.format_members([e]) == (b"Group Name\t       PID\t   Node ID\n"
                                           b"\t\t         2\t         1 ()\n")


def test_help_text_is_byte_identical(shared_dir: Path) -> None:
    out = io.BytesIO()
    assert cpgtool.run(["-h"], out, io.BytesIO()) == 0
    assert out.getvalue() == (shared_dir / "reference/common/corosync-cpgtool-h.txt").read_bytes()


def test_no_daemon_output(shared_dir: Path, tmp_path: Path) -> None:
    common = shared_dir / "reference/common"
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}    # nobody listens there
    p = subprocess.run(OURS, capture_output=True, timeout=60, env=env)
    assert p.stdout == (common / "nodaemon-cpgtool.txt").read_bytes()
    assert p.stderr == (common / "nodaemon-cpgtool.stderr").read_bytes()
    assert "nodaemon-cpgtool\t1\t" in (common / "index.tsv").read_text()
    assert p.returncode == 1


@pytest.mark.parametrize("argv", [["-x"], ["-d"], ["-h", "-x"], ["-n", "-z"], ["--"],
                                  ["-e", "--long"]], ids=" ".join)
def test_option_errors_match_debian(argv: list[str], tmp_path: Path) -> None:
    if not os.path.exists(DEBIAN_CPGTOOL):
        print(f"SKIP: {DEBIAN_CPGTOOL} not installed")
        pytest.skip(f"{DEBIAN_CPGTOOL} not installed")
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}
    # `unshare -n`: no daemon reachable for Debian's binary either (abstract sockets)
    prefix = ["unshare", "-n"] if os.geteuid() == 0 else []
    theirs = subprocess.run([*prefix, *THEIRS, *argv], capture_output=True, timeout=30)
    ours = subprocess.run(OURS + argv, capture_output=True, timeout=60, env=env)
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        theirs.returncode, theirs.stdout, theirs.stderr)


# --------------------------------------------------------------------------------------------
# live differential
# --------------------------------------------------------------------------------------------

GROUPS = ["demo", "demo", "other group", "hex:" + b"we\\ird\x01\x7f\xc3\xa9".hex(),
          "hex:" + b"name with NUL\0".hex()]


@pytest.fixture(scope="module")
def populated(real_corosync: RealCorosync):
    procs = []
    try:
        readers = []
        for group in GROUPS:
            p = real_corosync.popen(sys.executable, str(SCENARIOS), "cpg_peer", group,
                                    stdin=subprocess.PIPE)
            procs.append(p)
            readers.append(LineReader(p))
            assert json.loads(readers[-1].readline())["ev"] == "joined"
        # every join is effective once each peer saw its own confchg
        for r in readers:
            while json.loads(r.readline())["ev"] != "confchg":
                pass
        yield real_corosync
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.parametrize("argv", [[], ["-n"], ["-d", ","], ["-d", ";", "-n"], ["-e"],
                                  ["-e", "-n"], ["-d", ""], ["-d", "::"], ["-e", "-d", "\t"]],
                         ids=lambda a: " ".join(a) or "(table)")
def test_output_matches_debian(populated: RealCorosync, argv: list[str]) -> None:
    theirs = populated.run(*THEIRS, *argv)
    ours = populated.run(*OURS, *argv)
    assert theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    assert ours.stderr == theirs.stderr
    assert ours.returncode == theirs.returncode
    if not argv:
        assert b"we\\\\ird\\x01\\x7F\\xFFFFFFC3\\xFFFFFFA9\n" in ours.stdout
        assert ours.stdout.count(b" (127.0.0.1)\n") == len(GROUPS)
