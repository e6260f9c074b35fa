"""corosync-keygen against the real tool's outputs (shared/reference/common) and edge cases."""
from __future__ import annotations

import io
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from corosync.tools import keygen


def reference(shared_dir: pathlib.Path, name: str) -> tuple[int, str, str, str]:
    common = shared_dir / "reference" / "common"
    codes = {}
    for line in (common / "index.tsv").read_text().splitlines():
        fields = line.split("\t")
        codes[fields[0]] = int(fields[1])
    stderr_file = common / f"{name}.stderr"
    return (codes[name], (common / f"{name}.txt").read_text(),
            stderr_file.read_text() if stderr_file.exists() else "", str(common))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("corosync-keygen")
    cmd = [exe] if exe else [sys.executable, "-m", "corosync.tools.keygen"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)


def run_inproc(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = keygen.run(list(args), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_help_matches_reference(shared_dir: pathlib.Path) -> None:
    rc, stdout, stderr, _ = reference(shared_dir, "corosync-keygen-h")
    got = run_cli("-h")
    assert (got.returncode, got.stdout, got.stderr) == (rc, stdout, stderr)


def test_key_file_matches_reference(shared_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    rc, stdout, stderr, common = reference(shared_dir, "corosync-keygen-k")
    keyfile = tmp_path / "authkey"
    got = run_cli("-k", str(keyfile))
    assert got.returncode == rc
    assert got.stdout == stdout.replace("$TMPDIR", str(tmp_path))
    assert got.stderr == stderr
    st = keyfile.stat()
    stat_line = f"{st.st_size} bytes, mode {stat.S_IMODE(st.st_mode):o}\n"
    assert stat_line == pathlib.Path(common, "corosync-keygen-k.keyfile-stat.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["authkey"]  # no temp file left behind


def test_small_size_matches_reference(shared_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    rc, stdout, stderr, _ = reference(shared_dir, "corosync-keygen-small")
    got = run_cli("-k", str(tmp_path / "authkey2"), "-s", "100")
    assert (got.returncode, got.stdout, got.stderr) == (rc, stdout, stderr)
    assert not (tmp_path / "authkey2").exists()


@pytest.mark.parametrize("size", ["127", "4097", "abc", "", "200x", "-256", "0x100", "99999999999999999999"])
def test_invalid_sizes_refused(size: str, tmp_path: pathlib.Path) -> None:
    rc, out, err = run_inproc("-k", str(tmp_path / "k"), "-s", size)
    assert rc == 1
    assert out == ""
    assert err == "corosync-keygen: Unsupported key size (supported <128,4096>)\n\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("size", "expected"), [("128", 128), ("4096", 4096), (" +300", 300), ("256", 256)])
def test_valid_sizes(size: str, expected: int, tmp_path: pathlib.Path) -> None:
    keyfile = tmp_path / "k"
    rc, out, err = run_inproc("-l", "-k", str(keyfile), "--size", size)
    assert (rc, err) == (0, "")
    assert f"Gathering {expected * 8} bits for key from /dev/urandom.\n" in out
    assert keyfile.stat().st_size == expected
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o400


def test_keys_are_random_and_overwrite_existing(tmp_path: pathlib.Path) -> None:
    keyfile = tmp_path / "authkey"
    assert run_inproc("-k", str(keyfile))[0] == 0
    first = keyfile.read_bytes()
    assert run_inproc("--key-file", str(keyfile))[0] == 0
    second = keyfile.read_bytes()
    assert len(first) == len(second) == 256 and first != second


def test_random_file_source_is_used_verbatim(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "rnd"
    source.write_bytes(bytes(range(256)) * 2)
    keyfile = tmp_path / "key"
    rc, out, err = run_inproc("-r", str(source), "-s", "300", f"-k{keyfile}")
    assert (rc, err) == (0, "")
    assert out == ("Corosync Cluster Engine Authentication key generator.\n"
                   f"Gathering 2400 bits for key from {source}.\n"
                   f"Writing corosync key to {keyfile}.\n")
    assert keyfile.read_bytes() == (bytes(range(256)) * 2)[:300]


def test_exhausted_random_file_is_an_error_not_a_hang(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "rnd"
    source.write_bytes(b"x" * 10)
    rc, out, err = run_inproc("-r", str(source), "-k", str(tmp_path / "key"))
    assert rc == 1
    assert err == f"corosync-keygen: Could not read {source}: only 80 of 2048 bits available\n"
    assert not (tmp_path / "key").exists()


def test_missing_random_file(tmp_path: pathlib.Path) -> None:
    rc, _, err = run_inproc("-r", str(tmp_path / "nope"), "-k", str(tmp_path / "key"))
    assert rc == 1
    assert err == "corosync-keygen: Failed to open random source: No such file or directory\n"


def test_uncreatable_key_file(tmp_path: pathlib.Path) -> None:
    keyfile = tmp_path / "no" / "such" / "authkey"
    rc, out, err = run_inproc("-k", str(keyfile))
    assert rc == 2
    assert out == ("Corosync Cluster Engine Authentication key generator.\n"
                   "Gathering 2048 bits for key from /dev/urandom.\n")
    assert err == f"corosync-keygen: Could not create {keyfile}: No such file or directory\n"


def test_key_file_that_is_a_directory(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    rc, _, err = run_inproc("-k", str(target))
    assert rc == 2
    assert err.startswith(f"corosync-keygen: Could not create {target}: ")
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def test_symlinked_key_file_keeps_the_link(tmp_path: pathlib.Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"old")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert run_inproc("-k", str(link))[0] == 0
    assert link.is_symlink()
    assert len(real.read_bytes()) == 256


def test_written_key_is_never_group_or_world_readable(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        assert run_inproc("-k", str(tmp_path / "k"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o400


@pytest.mark.parametrize(("args", "stderr"), [
    (["-x"], "corosync-keygen: invalid option -- 'x'\n"),
    (["-k"], "corosync-keygen: option requires an argument -- 'k'\n"),
    (["--bogus"], "corosync-keygen: unrecognized option '--bogus'\n"),
    (["--help=1"], "corosync-keygen: option '--help' doesn't allow an argument\n"),
    (["--size"], "corosync-keygen: option '--size' requires an argument\n"),
])
def test_bad_options(args: list[str], stderr: str) -> None:
    assert run_inproc(*args) == (1, "Error parsing command line options.\n", stderr)


def test_options_are_processed_in_order(tmp_path: pathlib.Path) -> None:
    rc, out, _ = run_inproc("-h", "-s", "1")
    assert rc == 0 and out == keygen.USAGE + "\n"
    rc, out, err = run_inproc("-s", "1", "-h")
    assert rc == 1 and out == "" and "Unsupported key size" in err
    rc, out, _ = run_inproc("--he")  # unambiguous abbreviation, as getopt_long allows
    assert rc == 0 and out.startswith("Usage: corosync-keygen")
