"""Running SAM applications (tests/sam/sam_app.py) as separate process groups.

The process a test starts becomes the SAM watchdog and forks the instances; it is started in
a new session so that the test can stop it *and* any instance it forked by that one pid
(``killpg`` on the watchdog's pid) if a test fails before they end by themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

APP = Path(__file__).with_name("sam_app.py")


class SamApp:
    def __init__(self, scenario: str, workdir: Path, prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.log = workdir / "log.jsonl"
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, str(APP), scenario,
                                      str(workdir), *args],
                                     start_new_session=True, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
                 ) -> list[dict[str, Any]]:
        """Poll the log until ``pred`` holds (fails with the log and output otherwise)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if pred(events):
                return events
            if self.proc.poll() is not None:
                events = self.events()
                if pred(events):
                    return events
                break
            time.sleep(0.01)
        pytest.fail(f"condition not met; rc={self.proc.poll()} log={self.events()} "
                    f"output={self.output()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"watchdog still running after {timeout}s; log={self.events()}")

    def output(self) -> str:
        if self.proc.poll() is None or self.proc.stdout is None:
            return "(running)"
        return self.proc.stdout.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        else:
            # the watchdog is gone; an instance it left behind (a failed test) goes too
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def sam_app(tmp_path: Path):
    apps: list[SamApp] = []

    def start(scenario: str, **kw: Any) -> SamApp:
        app = SamApp(scenario, tmp_path, **kw)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()

