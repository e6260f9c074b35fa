"""Fixtures of the wire-codec suite: every codec test runs once per backend.

The ``c`` parameter installs the C implementation of *every* hook (not the per-op
fastest mix that ``wire.set_backend("c")`` picks), so all of the C code is exercised.
Without the built extension it skips with the reason printed, except under CI (env var
``CI`` set), where a missing extension is a failure: CI builds it.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from corosync.exec.totem import wire

BACKENDS = ["pure", "c"]


def backend_impl(name: str) -> dict:
    """The hook table of backend ``name``; skip/fail as described above if it is absent."""
    if name == "pure":
        return dict(wire._PURE_IMPL)
    try:
        from corosync.exec.totem import _wire_c
    except ImportError as exc:
        reason = f"C codec extension unavailable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the extension must be built)")
        print(reason)
        pytest.skip(reason)
    return _wire_c.make_c_impl(vars(wire))


def _current() -> dict:
    return {op: getattr(wire, "_impl_" + op) for op in wire._PURE_IMPL}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Install backend ``pure`` or ``c`` for the duration of one test."""
    impl = backend_impl(request.param)
    saved = _current()
    wire._install(impl)
    try:
        yield request.param
    finally:
        wire._install(saved)


@pytest.fixture
def both_impls() -> Iterator[dict[str, dict]]:
    """Both hook tables, for tests that compare the backends on the same input."""
    impls = {name: backend_impl(name) for name in BACKENDS}
    saved = _current()
    try:
        yield impls
    finally:
        wire._install(saved)
