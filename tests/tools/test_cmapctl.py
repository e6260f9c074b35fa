"""corosync-cmapctl (tools/cmapctl.py): output formats vs shared/reference, help and no-daemon
texts, option errors vs Debian's binary, and a live differential against Debian's
corosync-cmapctl on a real corosync 3.1.7 (skipped with a printed reason when unavailable)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients"))

from clients_realdaemon import (DEBIAN_CMAPCTL, LineReader, RealCorosync,  # noqa: E402
                                daemon_fixture, real_corosync)  # noqa: F401  (fixture)

from corosync.cmap import CmapValue, ValueType  # noqa: E402
from corosync._common import CsError, CsErrorCode  # noqa: E402
from corosync.tools import cmapctl  # noqa: E402

LINE = re.compile(r"^(?P<key>\S+) \((?P<tag>[a-z0-9]+)\)(?: = (?P<value>.*))?$", re.S)
OURS = [sys.executable, "-m", "corosync.tools.cmapctl"]
# Debian's binary found through PATH, so that its argv[0] (in getopt errors) is the bare name
THEIRS = ["env", "PATH=/usr/sbin:/usr/bin:/bin", "corosync-cmapctl"]


def parse_value(tag: str, text: str) -> CmapValue:
    vtype = ValueType.from_tag(tag)
    if vtype in (ValueType.FLOAT, ValueType.DOUBLE):
        return CmapValue(vtype, float(text))
    if vtype is ValueType.STRING:
        return CmapValue(vtype, text)
    return CmapValue(vtype, int(text))


def reference_dumps(shared: Path) -> list[Path]:
    ref = shared / "reference"
    files = sorted(ref.glob("*/running/cmapctl*.txt")) + sorted(
        ref.glob("*/after-kill-n3/cmapctl*.txt")) + sorted(ref.glob("defaults/*.txt"))
    return files + sorted(ref.glob("qdevice/running-cmapctl-*.txt"))


def test_format_reproduces_every_reference_dump(shared_dir: Path) -> None:
    files = reference_dumps(shared_dir)
    assert len(files) > 40
    lines = 0
    for path in files:
        for line in path.read_text().splitlines(keepends=True):
            m = LINE.match(line.rstrip("\n"))
            assert m, f"{path}: unparsable {line!r}"
            vtype = ValueType.from_tag(m["tag"])
            value = None if vtype is ValueType.BINARY else parse_value(m["tag"], m["value"])
            assert cmapctl.format_key(m["key"], vtype, value) == line, path
            lines += 1
    assert lines > 3000


@pytest.mark.parametrize("vtype, value, line", [
    (ValueType.FLOAT, 1.5, "k (flt) = 1.500000\n"),
    (ValueType.DOUBLE, -1e-7, "k (dbl) = -0.000000\n"),
    (ValueType.DOUBLE, 1e20, "k (dbl) = 100000000000000000000.000000\n"),
    (ValueType.INT8, -128, "k (i8) = -128\n"),
    (ValueType.UINT64, 2**64 - 1, "k (u64) = 18446744073709551615\n"),
    (ValueType.STRING, "r(0) ip(198.18.0.1) ", "k (str) = r(0) ip(198.18.0.1) \n"),
])
def test_value_formats(vtype: ValueType, value, line: str) -> None:
    assert cmapctl.format_key("k", vtype, CmapValue(vtype, value)) == line


def test_nan_and_infinity_like_glibc() -> None:
    nan = float("nan")
    assert cmapctl.format_value(CmapValue(ValueType.DOUBLE, nan)) == "nan"
    assert cmapctl.format_value(CmapValue(ValueType.DOUBLE, -nan)) == "-nan"
    assert cmapctl.format_value(CmapValue(ValueType.FLOAT, float("-inf"))) == "-inf"


def test_settings_file_lines_are_read_like_fgets() -> None:
    data = io.BytesIO(b"short\n" + b"k" * 1030 + b" u8 1\nlast")
    chunks = list(cmapctl._fgets_chunks(data))
    assert chunks == [b"short\n", b"k" * 1023, b"k" * 7 + b" u8 1\n", b"last"]


def test_binary_and_quiet_formats() -> None:
    blob = CmapValue(ValueType.BINARY, b"A\\\x00\x7f\x80\xff ")
    assert cmapctl.format_key("k", ValueType.BINARY, blob) == "k (bin)\n"
    assert (cmapctl.format_key("k", ValueType.BINARY, blob, show_binary=True)
            == "k (bin) = A\\\\\\x00\\x7F\\xFFFFFF80\\xFFFFFFFF \n")
    # quiet mode drops "key (" but the C tool still prints "bin)"
    assert cmapctl.format_key("k", ValueType.BINARY, blob, quiet=True) == "bin)\n"
    assert cmapctl.format_key("k", ValueType.UINT32, CmapValue(ValueType.UINT32, 5),
                              quiet=True) == "5\n"


@pytest.mark.parametrize("text, signed, unsigned", [
    ("12", 12, 12), ("  -1", -1, 2**64 - 1), ("12abc", 12, 12), ("+7", 7, 7),
    ("abc", None, None), ("", None, None), ("99999999999999999999", 2**63 - 1, 2**64 - 1),
    ("-99999999999999999999", -2**63, 2**64 - 1),
])
def test_sscanf_integer_rules(text: str, signed, unsigned) -> None:
    assert cmapctl.scan_signed(text) == signed
    assert cmapctl.scan_unsigned(text) == unsigned


def test_sscanf_float_rules() -> None:
    assert cmapctl.scan_float("1.5xyz") == 1.5
    assert cmapctl.scan_float(" -.5e1") == -5.0
    assert cmapctl.scan_float("inf") == float("inf")
    assert cmapctl.scan_float("x1") is None
    assert cmapctl.to_float32(1e50) == float("inf")


def run_tool(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run(OURS + argv, capture_output=True, timeout=60, env=env, cwd=cwd)


def test_help_text_is_byte_identical(shared_dir: Path) -> None:
    out = io.BytesIO()
    tool = cmapctl.CmapCtl(out, io.BytesIO(), io.BytesIO(), connect=None,  # type: ignore
                           sleep=lambda s: None)
    assert tool.main(["-h"]) == 0
    assert out.getvalue() == (shared_dir / "reference/common/corosync-cmapctl-h.txt").read_bytes()


def test_no_daemon_output(shared_dir: Path, tmp_path: Path) -> None:
    common = shared_dir / "reference/common"
    rc = {row.split("\t")[0]: int(row.split("\t")[1])
          for row in (common / "index.tsv").read_text().splitlines()}
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}    # nobody listens there
    p = run_tool([], env=env)
    assert p.stdout == (common / "nodaemon-cmapctl.txt").read_bytes()
    assert p.stderr == (common / "nodaemon-cmapctl.stderr").read_bytes()
    assert p.returncode == rc["nodaemon-cmapctl"] == 1


DEBIAN_PRESENT = os.path.exists(DEBIAN_CMAPCTL)

# Errors detected before connecting: Debian's tool needs no daemon for them either.
OPTION_ERRORS = [["-x"], ["-m"], ["-m", "bogus"], ["-C", "foo"], ["-g"], ["-d"], ["-D"],
                 ["-t"], ["-T"], ["-s"], ["-h", "-x"], ["-x", "-h"], ["-bq", "-z"],
                 ["--long"], ["-mstats", "-Cnope"]]


@pytest.mark.parametrize("argv", OPTION_ERRORS, ids=" ".join)
def test_option_errors_match_debian(argv: list[str], tmp_path: Path) -> None:
    if not DEBIAN_PRESENT:
        print(f"SKIP: {DEBIAN_CMAPCTL} not installed")
        pytest.skip(f"{DEBIAN_CMAPCTL} not installed")
    env = {**os.environ, "COROSYNC_IPC_DIR": str(tmp_path)}
    theirs = subprocess.run(["corosync-cmapctl", *argv], executable=DEBIAN_CMAPCTL,
                            capture_output=True, timeout=30, cwd=tmp_path)
    ours = run_tool(argv, env=env)
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        theirs.returncode, theirs.stdout, theirs.stderr)


# --------------------------------------------------------------------------------------------
# live differential
# --------------------------------------------------------------------------------------------


SCENARIOS = Path(__file__).resolve().parent.parent / "clients" / "clients_scenarios.py"


def ours_batch(daemon: RealCorosync, commands: list[tuple[list[str], bytes]]
               ) -> list[subprocess.CompletedProcess]:
    """Our tool for every command, in one Python process inside the namespaces (one start-up
    instead of one per command; each command still gets a fresh tool and connection)."""
    payload = json.dumps([[argv, stdin.hex()] for argv, stdin in commands]).encode()
    p = daemon.run(sys.executable, str(SCENARIOS), "cmapctl_batch", input=payload, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    return [subprocess.CompletedProcess(argv, rc, bytes.fromhex(out), bytes.fromhex(err))
            for (argv, _), (rc, out, err) in zip(commands, json.loads(p.stdout))]


def both(daemon: RealCorosync, *argv: str, input: bytes | None = None
         ) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    theirs = daemon.run(*THEIRS, *argv, input=input)
    [ours] = ours_batch(daemon, [(list(argv), input or b"")])
    return theirs, ours


def same(theirs: subprocess.CompletedProcess, ours: subprocess.CompletedProcess) -> None:
    assert ours.stderr == theirs.stderr
    assert ours.stdout == theirs.stdout
    assert ours.returncode == theirs.returncode


READS = [
    [], ["-g", "totem.token"], ["-g", "runtime.config.totem.token", "totem.cluster_name"],
    ["-g", "no.such.key"], ["-g", "totem.token", "no.such", "totem.version"],
    ["runtime.config.totem"], ["runtime.members", "nodelist."], ["no.such.prefix"],
    ["totem.", "no.such.prefix"], ["-q", "-g", "totem.cluster_name"], ["-b", "-q", "totem."],
    ["-m", "icmap", "quorum"], ["-s", "a.b"], ["-s", "a.b", "u8"], ["-s", "k.x", "u7", "1"],
    ["-s", "k.x", "u8", "256"], ["-s", "k.x", "i8", "-129"], ["-s", "k.x", "dbl", "abc"],
    ["-s", "totem.cluster_name", "str", "x"], ["-d", "no.such.key"],
    ["-d", "runtime.config.totem.token"], ["-p", "/nonexistent/file"],
    ["-m", "stats", "-g", "stats.srp.orf_token_tx", "-q"], ["-C", "all"],
]


debian_or_ours = daemon_fixture("debian", "ours")


@pytest.fixture(scope="module")
def read_results(debian_or_ours: RealCorosync) -> dict[tuple[str, ...], tuple]:
    """Both tools against Debian's daemon, then both against our executive."""
    ours = ours_batch(debian_or_ours, [(argv, b"") for argv in READS])
    return {tuple(argv): (debian_or_ours.run(*THEIRS, *argv), mine)
            for argv, mine in zip(READS, ours)}


@pytest.mark.parametrize("argv", READS, ids=lambda a: " ".join(a) or "(dump)")
def test_read_and_error_paths_match_debian(read_results, argv: list[str]) -> None:
    theirs, ours = read_results[tuple(argv)]
    if argv[:2] == ["-m", "stats"]:
        # a counter: only the form is comparable
        assert re.fullmatch(rb"\d+\n", ours.stdout) and ours.returncode == theirs.returncode
        return
    same(theirs, ours)


def test_stats_map_has_the_same_keys(real_corosync: RealCorosync) -> None:
    theirs, ours = both(real_corosync, "-m", "stats")
    assert ours.returncode == theirs.returncode == 0

    def shape(out: bytes) -> list[str]:
        # ipcs entries name the connection (pid, pointer) of the tool itself: skip them
        return [line.split(" = ")[0] for line in out.decode().splitlines()
                if not line.startswith("stats.ipcs.service")]

    assert shape(ours.stdout) == shape(theirs.stdout)


SETS = [("u8", "200"), ("i8", "-5"), ("u16", "65535"), ("i16", "-32768"), ("u32", "7abc"),
        ("i32", " -70000"), ("u64", "-1"), ("i64", "-9223372036854775808"), ("flt", "1.25"),
        ("flt", "1e50"), ("dbl", "3.5e-3"), ("dbl", "-0"), ("str", "hello world"),
        ("str", "tab\there"), ("dbl", "-nan"), ("flt", "nan"), ("dbl", "-inf")]


def test_writes_match_debian(real_corosync: RealCorosync, tmp_path: Path) -> None:
    """The same -s/-d/-D/-p commands through both tools into two prefixes: identical dumps."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) + b"\\end")

    def commands(prefix: str) -> list[tuple[list[str], bytes]]:
        settings = tmp_path / f"{prefix}.settings"
        settings.write_text(f"# comment\n  \n{prefix}.p.a u32 5\n{prefix}.p.b str word more\n"
                            f"{prefix}.p.c u8 1\n^{prefix}.p.c\n^{prefix}.nothere\n"
                            f"{prefix}.p.del.x u8 1\n{prefix}.p.del.y u8 2\n^^{prefix}.p.del.\n")
        long_line = tmp_path / f"{prefix}.long"       # fgets cuts it at 1023 bytes
        long_line.write_text(f"{prefix}.p.long{'x' * 1100} u8 1\n")
        # "--": getopt would take a negative value for options (tested as an error case)
        cmds = [(["-s", "--", f"{prefix}.k{i:02d}", tag, value], b"")
                for i, (tag, value) in enumerate(SETS)]
        cmds.append((["-s", f"{prefix}.negative", "i8", "-5"], b""))
        return cmds + [(["-s", f"{prefix}.bin", "bin", str(blob)], b""),
                       (["-s", f"{prefix}.stdin", "bin", "-"], b"\x00from stdin"),
                       (["-p", str(settings)], b""), (["-p", str(long_line)], b""),
                       (["-d", f"{prefix}.k00"], b""),
                       (["-D", f"{prefix}.k12"], b"")]

    deb_results = [(p.returncode, p.stderr) for p in
                   (real_corosync.run(*THEIRS, *argv, input=stdin)
                    for argv, stdin in commands("deb"))]
    our_results = [(p.returncode, p.stderr) for p in ours_batch(real_corosync, commands("our"))]
    assert [(rc, err.replace(b"our.", b"deb.")) for rc, err in our_results] == deb_results
    deb = real_corosync.run(DEBIAN_CMAPCTL, "-b", "deb.")
    our = real_corosync.run(DEBIAN_CMAPCTL, "-b", "our.")
    assert deb.returncode == 0 and deb.stdout.count(b"\n") == 19
    assert our.stdout.replace(b"our.", b"deb.") == deb.stdout
    # and reading them back with both tools gives the same bytes
    theirs, ours = both(real_corosync, "-b", "our.")
    same(theirs, ours)
    theirs, ours = both(real_corosync, "-b", "-g", "our.bin", "our.k05")
    same(theirs, ours)
    theirs, ours = both(real_corosync, "-D", "our.")
    same(theirs, ours)
    theirs, ours = both(real_corosync, "-D", "deb.")
    same(theirs, ours)
    theirs, ours = both(real_corosync, "deb.")
    same(theirs, ours)
    assert ours.returncode == 1                                  # nothing left


def test_tracking_matches_debian(real_corosync: RealCorosync) -> None:
    """-T and -t of both tools watching the same changes print the same lines."""
    def start(cmd: list[str], *argv: str) -> subprocess.Popen:
        # stdbuf: Debian's tool block-buffers a pipe; line buffering lets us wait for lines
        return real_corosync.popen("stdbuf", "-oL", *cmd, *argv, stdin=subprocess.PIPE)

    watchers = [start(THEIRS, "-b", "-T", "trk."), start(OURS, "-b", "-T", "trk."),
                start(THEIRS, "-t", "trk.one"), start(OURS, "-t", "trk.one")]
    outputs: list[bytes] = []
    readers = [LineReader(w) for w in watchers]
    try:
        for r in readers:
            assert r.readline() == b'Type "q" to finish\n'
        changes = [["-s", "trk.one", "u32", "1"], ["-s", "trk.one", "u32", "2"],
                   ["-s", "trk.two", "str", "x y"], ["-s", "trk.bin", "bin", "-"],
                   ["-d", "trk.one"], ["-s", "trk.one", "dbl", "0.5"], ["-D", "trk."]]
        for change in changes:
            p = real_corosync.run(DEBIAN_CMAPCTL, *change, input=b"\xff\\x")
            assert p.returncode == 0, p.stderr
        expected = {0: 9, 1: 9, 2: 5, 3: 5}          # prefix watchers see 9 events, key 5
        for i, r in enumerate(readers):
            outputs.append(b"".join(r.readline() for _ in range(expected[i])))
        for w in watchers:
            assert w.stdin is not None
            w.stdin.write(b"q\n")
            w.stdin.close()
            assert w.wait(10) == 0
    finally:
        for w in watchers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert outputs[1] == outputs[0]
    assert outputs[3] == outputs[2]
    assert outputs[0].startswith(b"create> trk.one (u32) = 1\nmodify> trk.one (u32) = 2\n")
    assert b"create> trk.bin (bin) = \\xFFFFFFFF\\\\x\n" in outputs[0]
    assert outputs[2].splitlines()[-1] == b"delete> trk.one (dbl) = 0.500000"


# --------------------------------------------------------------------------------------------
# CS_ERR_TRY_AGAIN: retried 10 times, one second apart (no daemon: fakes)
# --------------------------------------------------------------------------------------------


class _BusyCmap:
    """A handle whose GET answers CS_ERR_TRY_AGAIN ``busy`` times before the value."""

    def __init__(self, busy: int) -> None:
        self.busy = busy

    def get_typed(self, key: str, vtype: ValueType) -> int:
        if self.busy:
            self.busy -= 1
            raise CsError(CsErrorCode.ERR_TRY_AGAIN)
        return 7

    def finalize(self) -> None:
        pass


@pytest.mark.parametrize("busy, out, err, rc", [
    (10, b"a.b (u32) = 7\n", b"", 0),
    (11, b"", b"Can't get value of a.b. Error CS_ERR_TRY_AGAIN\n", 0),
])
def test_busy_values_are_retried_ten_times(busy, out, err, rc) -> None:
    handle, naps = _BusyCmap(busy), []
    o, e = io.BytesIO(), io.BytesIO()
    tool = cmapctl.CmapCtl(o, e, io.BytesIO(), connect=lambda m: handle,  # type: ignore
                           sleep=naps.append)
    tool.handle = handle  # type: ignore[assignment]
    tool.print_key("a.b", ValueType.UINT32)
    assert (o.getvalue(), e.getvalue()) == (out, err)
    assert naps == [1] * 10


def test_a_busy_executive_is_retried_then_reported() -> None:
    attempts, naps = [], []

    def connect(map_id):
        attempts.append(map_id)
        raise CsError(CsErrorCode.ERR_TRY_AGAIN)

    e = io.BytesIO()
    tool = cmapctl.CmapCtl(io.BytesIO(), e, io.BytesIO(), connect=connect, sleep=naps.append)
    assert tool.main(["-g", "a.b"]) == 1
    assert e.getvalue() == b"Failed to initialize the cmap API. Error CS_ERR_TRY_AGAIN\n"
    assert len(attempts) == 11 and naps == [1] * 10
