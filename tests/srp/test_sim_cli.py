"""corosync-sim command line: summary line, exit codes, --json, --replay, argument errors."""

import json
import re

import pytest

pytest.importorskip("corosync.exec.totem.srp")

from corosync.tools.sim import main  # noqa: E402


def test_clean_run_prints_the_one_line_summary(capsys):
    assert main(["--nodes", "3", "--seed", "4", "--faults", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    m = re.fullmatch(r"3 nodes, 0 faults, (\d+) messages delivered, 0 violations", out[0])
    assert m and int(m.group(1)) > 50


def test_json_output(capsys):
    assert main(["--nodes", "2", "--seed", "1", "--faults", "3", "--json"]) in (0, 1)
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes"] == 2 and doc["faults"] == 3 and len(doc["schedule"]) == 3
    assert doc["messages_delivered"] > 0 and doc["events"] > 0
    assert doc["bound_ms"] > 0


def test_replay_is_deterministic(capsys):
    args = ["--nodes", "3", "--seed", "9", "--faults", "4", "--replay", "--no-shrink"]
    rc1 = main(args)
    first = capsys.readouterr().out
    rc2 = main(args)
    second = capsys.readouterr().out
    assert rc1 == rc2 and first == second
    assert "FAULT" in first and "HEAL" in first and " confchg REGULAR " in first
    assert len(first.splitlines()) > 1000


@pytest.mark.parametrize("args", [["--nodes", "0"], ["--nodes", "33"], ["--faults", "-1"],
                                  ["--token", "10"]])
def test_bad_arguments_exit_2(args, capsys):
    assert main(args) == 2
    assert "corosync-sim:" in capsys.readouterr().err


def test_violation_exits_non_zero_with_seed_and_trace(capsys, monkeypatch):
    # Make the checkers see a violation in an otherwise clean run.
    from corosync.exec.sim import checkers

    def always(trace):
        return [checkers.Violation("test", 0, (1,), "injected")]

    monkeypatch.setattr(checkers, "CHECKERS", checkers.CHECKERS + (always,))
    assert main(["--nodes", "2", "--seed", "5", "--faults", "2"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATIONS with seed 5" in out and "[test]" in out
    assert "shrunk to 0 of 2 faults" in out
    assert "minimal trace for: [test]" in out
