"""Fixtures of the wire-codec suite: every codec test runs once per backend.

The ``c`` parameter installs the C implementation of *every* hook (not the per-op
fastest mix that ``wire.set_backend("c")`` picks), so all of the C code is exercised.
Without the built extension it skips with the reason printed, except under CI (env var
``CI`` set), where a missing extension is a failure: CI builds it.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from corosync.exec.totem import wire
from wire_helpers import BACKENDS, backend_impl


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
    """Both hook tables, for tests that compare the backends on the same input.  Without
    the C extension (and CI unset) only ``pure`` is returned — its checks still run —
    and the skipped comparison is reported as a skip of the ``backend[c]`` tests."""
    impls = {"pure": backend_impl("pure")}
    try:
        impls["c"] = backend_impl("c")
    except pytest.skip.Exception:
        pass
    saved = _current()
    try:
        yield impls
    finally:
        wire._install(saved)
