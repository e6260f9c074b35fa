"""tests/ipc: every test starts without a rendezvous directory in the environment, so the
abstract-name defaults are what is tested unless a test sets one itself."""

import pytest


@pytest.fixture(autouse=True)
def _no_ipc_dir_env(monkeypatch):
    monkeypatch.delenv("COROSYNC_IPC_DIR", raising=False)
