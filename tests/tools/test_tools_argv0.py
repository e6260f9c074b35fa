"""getopt's messages name the program as argv[0] (glibc prints argv[0] as typed:
"/usr/sbin/corosync-quorumtool: invalid option -- 'x'").  Our console scripts see the path
they were started by as argv[0]; run with that same argv[0], Debian's binaries must print
byte for byte what ours print."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from corosync.tools import quorumtool

CASES = [
    ("corosync-quorumtool", ["-Z"]),            # error, then the usage naming argv[0]
    ("corosync-quorumtool", ["-o"]),
    ("corosync-quorumtool", ["-h"]),
    ("corosync-cmapctl", ["-Z"]),
    ("corosync-cmapctl", ["-p"]),
    ("corosync-cpgtool", ["-Z"]),
    ("corosync-cpgtool", ["-d"]),
    ("corosync-keygen", ["-Z"]),
    ("corosync-keygen", ["-k"]),
    ("corosync-keygen", ["-x", "-y"]),          # getopt stops at the first error
    ("corosync-keygen", ["-h", "-x"]),          # -h acts before -x is looked at
    ("corosync-keygen", ["-s", "1"]),           # errx(): the base name only
]


def _script(name: str) -> Path:
    return Path(sysconfig.get_path("scripts")) / name


@pytest.mark.parametrize("name, argv", CASES,
                         ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_option_errors_name_argv0_like_debian(name: str, argv: list[str],
                                              tmp_path: Path) -> None:
    ours, theirs = _script(name), Path("/usr/sbin") / name
    for path in (ours, theirs):
        if not path.exists():
            print(f"SKIP: {path} not installed")
            pytest.skip(f"{path} not installed")
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}   # nobody listens there
    # both see the same argv[0]: the path of our console script
    mine = subprocess.run([str(ours), *argv], capture_output=True, timeout=60, env=env,
                          cwd=tmp_path)
    debian = subprocess.run([str(ours), *argv], executable=str(theirs), capture_output=True,
                            timeout=30, env=env, cwd=tmp_path)
    assert (mine.returncode, mine.stdout, mine.stderr) == (
        debian.returncode, debian.stdout, debian.stderr)
    assert mine.stdout + mine.stderr
    assert not list(tmp_path.iterdir())  # no key file was written


def test_quorumtool_names_argv0_in_its_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/sbin/corosync-quorumtool", "-x"])
    out, err = io.StringIO(), io.StringIO()
    assert quorumtool.main(None, out, err) == 1
    assert err.getvalue() == "/usr/sbin/corosync-quorumtool: invalid option -- 'x'\n"
    assert out.getvalue().startswith("usage: \n/usr/sbin/corosync-quorumtool <options>\n")
    # called with an explicit argv (python -m, tests) there is no argv[0]: the command name
    out, err = io.StringIO(), io.StringIO()
    assert quorumtool.main(["-x"], out, err) == 1
    assert err.getvalue() == "corosync-quorumtool: invalid option -- 'x'\n"
