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
                                  ["--token", "10"], ["--send-join", "-1"]])
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


def test_explicit_schedule_replays_and_bad_ones_are_refused(capsys):
    sched = ('[{"kind":"partition","at":1600,"duration":900,"groups":[[1],[2,3]]},'
             '{"kind":"crash","at":1700,"duration":400,"node":2}]')
    args = ["--nodes", "3", "--seed", "3", "--duration", "1500", "--schedule", sched,
            "--replay", "--no-shrink"]
    rc = main(args)
    out = capsys.readouterr().out
    assert rc in (0, 1)
    assert "FAULT @1600+900 partition 1 | 2,3" in out and "FAULT @1700+400 crash n2" in out
    assert "HEAL" in out and "3 nodes, 2 faults," in out
    for bad in ('[{"kind":"nope"}]', "not json", '[{"kind":"crash","at":1,"duration":5,"node":9}]',
                '[{"kind":"pause","at":"x","duration":5,"node":1}]'):
        assert main(["--nodes", "3", "--schedule", bad]) == 2
        assert "--schedule" in capsys.readouterr().err


def test_send_join_and_pauses_show_in_the_replay(capsys):
    sched = '[{"kind":"pause","at":1600,"duration":1500,"node":2}]'
    args = ["--nodes", "3", "--seed", "2", "--send-join", "30", "--duration", "1500",
            "--schedule", sched, "--replay", "--no-shrink"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r" n2 \[TOTEM\] Process pause detected for 1[45]\d\d ms, flushing "
                     r"membership messages\.", out)
    assert " timer SEND_JOIN" in out
    assert re.fullmatch(r"3 nodes, 1 faults, \d+ messages delivered, 0 violations",
                        out.splitlines()[-1])
