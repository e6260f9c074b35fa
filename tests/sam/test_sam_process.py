"""corosync.sam end to end: a real fork-model watchdog and its instances (tests/sam/sam_app.py),
with the fake quorum and cmap providers of the documented seams.  Timers are 100-200 ms and
every wait is on a condition (a log line or the watchdog's exit) with a deadline."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest


def instances(events: list[dict[str, Any]]) -> list[int]:
    return [e["iid"] for e in events if e["event"] == "instance"]


def file_cmap(workdir: Path) -> dict[str, Any]:
    """The keys the fake cmap of sam_app.py holds (written by the watchdog)."""
    try:
        return json.loads((workdir / "cmap.json").read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return {}


def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_health_check_timeout_restarts(sam_app) -> None:
    app = sam_app("hc_timeout_restart")
    assert app.wait_exit() == 0
    events = app.events()
    assert instances(events) == [1, 2]
    last_hc = of(events, "last_hc")[0]["before"]
    second = [e for e in events if e["event"] == "instance" and e["iid"] == 2][0]
    # SIGTERM one interval (300 ms) after the watchdog read the last health check, the
    # restart right after it: never earlier than 300 ms after it was sent
    assert 0.3 <= second["t"] - last_hc < 5.0
    assert of(events, "instance")[0]["pid"] != second["pid"]


def test_crash_restarts_and_counts_instances(sam_app) -> None:
    app = sam_app("crash_restart")
    assert app.wait_exit() == 7            # the last instance's exit code
    assert instances(app.events()) == [1, 2, 3]


def test_quit_policy_warns_then_kills(sam_app) -> None:
    app = sam_app("quit_warn")
    rc = app.wait_exit()
    events = app.events()
    assert instances(events) == [1]          # QUIT: never restarted
    assert [e["sig"] for e in of(events, "warned")] == ["SIGTERM"]
    assert rc == 128 + signal.SIGKILL        # survived the warning, so SIGKILL followed


def test_warn_signal_set_and_data_from_handler(sam_app) -> None:
    app = sam_app("warn_signal")
    assert app.wait_exit() == 0
    events = app.events()
    assert instances(events) == [1, 2]
    assert [e["sig"] for e in of(events, "warned")] == ["SIGUSR1"]
    first, second = of(events, "instance")
    assert first["warn"] == signal.SIGTERM and first["data"] == ""
    # the watchdog kept both the signal and what the handler stored
    assert second["warn"] == signal.SIGUSR1 and second["data"] == "warned"


def test_data_survives_restarts(sam_app) -> None:
    app = sam_app("data")
    assert app.wait_exit() == 0
    by_iid = {e["iid"]: e for e in of(app.events(), "instance")}
    assert sorted(by_iid) == [1, 2, 3]
    assert by_iid[1]["data"] == bytes((i + 5) % 256 for i in range(128)).hex()
    assert by_iid[1]["size"] == 128
    assert by_iid[2]["data"] == bytes((i - 5) % 256 for i in range(121)).hex()
    assert by_iid[2]["size"] == 121
    assert by_iid[3]["size"] == 0 and by_iid[3]["data"] == ""


def test_stop_disarms_the_health_check(sam_app) -> None:
    app = sam_app("stop_disarms")
    assert app.wait_exit() == 0
    events = app.events()
    assert instances(events) == [1]
    assert of(events, "finalized")


def test_hc_callback_thread(sam_app) -> None:
    app = sam_app("hc_callback")
    assert app.wait_exit() == 0
    events = app.events()
    assert instances(events) == [1, 2]
    assert [e["n"] for e in of(events, "callback")] == [1, 2, 3, 4, 5, 6]
    assert of(events, "restored")[0]["calls"] == 6
    # 6 callbacks, one per 250 ms interval: the thread kept the child alive that long
    calls = of(events, "callback")
    assert calls[-1]["t"] - calls[0]["t"] >= 1.0


def test_hc_callback_exception_is_a_failure(sam_app) -> None:
    app = sam_app("hc_callback_raises")
    assert app.wait_exit() == 0
    events = app.events()
    assert instances(events) == [1, 2]
    assert len(of(events, "callback")) == 1      # no health checks after the first failure
    assert "health-check callback raised" in app.output()


def test_mark_failed_quits_and_marks_cmap_state(sam_app, tmp_path: Path) -> None:
    app = sam_app("mark_failed")
    rc = app.wait_exit()
    events = app.events()
    assert instances(events) == [1]            # RESTART policy, yet no restart
    assert of(events, "warned") == []          # no warning signal
    assert rc == 128 + signal.SIGKILL
    assert of(events, "instance")[0]["state"] == "stopped"
    assert of(events, "running")[0]["state"] == "running"
    keys = file_cmap(tmp_path)
    prefix = f"resources.process.{app.pid}."
    assert keys[prefix + "state"] == "failed"
    assert keys[prefix + "recovery"] == "restart"
    assert keys[prefix + "poll_period"] == 1000
    assert isinstance(keys[prefix + "last_updated"], int)


def test_cmap_states_and_cleanup(sam_app, tmp_path: Path) -> None:
    app = sam_app("cmap_quit")
    assert app.wait_exit() == 0
    (inst,) = of(app.events(), "instance")
    assert inst["states"] == ["stopped", "running", "stopped"]
    assert inst["recovery"] == "quit" and inst["poll_period"] == 1000
    assert abs(inst["last_updated"] / 1e9 - os.path.getmtime(tmp_path / "log.jsonl")) < 60
    # a clean end (not started) removes the process's keys
    assert not [k for k in file_cmap(tmp_path) if k.startswith("resources.process.")]


def test_quorum_wait_loss_and_restart(sam_app, tmp_path: Path) -> None:
    fifo = tmp_path / "quorum.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    try:
        os.write(writer, b"0")                         # inquorate at initialize
        app = sam_app("quorum")
        app.wait_for(lambda ev: [e["iid"] for e in of(ev, "starting")] == [1])
        state = f"resources.process.{app.pid}.state"
        app.wait_for(lambda ev: file_cmap(tmp_path).get(state) == "waiting for quorum")
        assert not of(app.events(), "started")          # start() blocks without quorum
        os.write(writer, b"1")
        app.wait_for(lambda ev: [e["iid"] for e in of(ev, "started")] == [1])
        assert file_cmap(tmp_path)[state] == "running"
        os.write(writer, b"0")                         # quorum lost: instance 1 killed
        app.wait_for(lambda ev: [e["iid"] for e in of(ev, "starting")] == [1, 2])
        assert [e["iid"] for e in of(app.events(), "started")] == [1]
        os.write(writer, b"1")
        assert app.wait_exit() == 0
        assert [e["iid"] for e in of(app.events(), "started")] == [1, 2]
    finally:
        os.close(writer)


def test_quorum_provider_death_kills_child(sam_app, tmp_path: Path) -> None:
    fifo = tmp_path / "quorum.fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    try:
        os.write(writer, b"1")
        app = sam_app("quorum_dies")
        app.wait_for(lambda ev: bool(of(ev, "started")))
        os.write(writer, b"x")
        assert app.wait_exit() == 128 + signal.SIGTERM    # QUIT after the warning killed it
    finally:
        os.close(writer)


def test_child_death_seen_although_a_grandchild_holds_the_pipe(sam_app) -> None:
    app = sam_app("grandchild")
    try:
        assert app.wait_exit() == 0
        assert instances(app.events()) == [1, 2]
    finally:
        for e in of(app.events(), "grandchild"):
            try:
                os.kill(e["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_forged_frame_kills_the_child(sam_app) -> None:
    app = sam_app("garbage")
    assert app.wait_exit() == 0
    assert instances(app.events()) == [1, 2]
    assert "broke the protocol" in app.output()


def test_state_checks(sam_app) -> None:
    app = sam_app("api")
    assert app.wait_exit() == 0
    (res,) = of(app.events(), "results")
    assert res["results"] == {
        "bad_policy": "CS_ERR_INVALID_PARAM",
        "bad_policy_bits": "CS_ERR_INVALID_PARAM",
        "negative_interval": "CS_ERR_INVALID_PARAM",
        "start_before_register": "CS_ERR_BAD_HANDLE",
        "hc_before_register": "CS_ERR_BAD_HANDLE",
        "cb_before_register": "CS_ERR_BAD_HANDLE",
        "warn_bad_signal": "CS_ERR_INVALID_PARAM",
        "register_twice": "CS_ERR_BAD_HANDLE",
        "register_other_handle": "CS_ERR_BAD_HANDLE",
        "cb_zero_interval": "CS_ERR_INVALID_PARAM",
        "mark_failed_no_cmap": "CS_ERR_INVALID_PARAM",
        "stop_not_started": "CS_ERR_BAD_HANDLE",
        "start": "ok",
        "start_again": "CS_ERR_BAD_HANDLE",
        "stop": "ok",
        "finalize": "ok",
        "finalize_again": "CS_ERR_BAD_HANDLE",
        "start_finalized": "CS_ERR_BAD_HANDLE",
        "data_store_finalized": "CS_ERR_BAD_HANDLE",
        "data_getsize_finalized": "CS_ERR_BAD_HANDLE",
    }
