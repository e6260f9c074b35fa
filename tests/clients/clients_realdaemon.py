"""A real Debian corosync 3.1.7 (or our own executive) in its own network + mount namespace,
for live client tests — the names tests/clients, tests/tools and tests/quorum import from
here, now provided by the shared harness tests/realcorosync.py (see its docstring).

Imported by tests/clients and tests/tools (which add this directory to sys.path).
"""

from __future__ import annotations

import realcorosync
from realcorosync import (DAEMONS, REAL, SOCKET_SECTION, LineReader, any_corosync,  # noqa: F401
                          daemon_fixture, real_corosync)
from realcorosync import CMAPCTL as DEBIAN_CMAPCTL  # noqa: F401
from realcorosync import CPGTOOL as DEBIAN_CPGTOOL  # noqa: F401
from realcorosync import Daemon as RealCorosync  # noqa: F401


def skip_reason(kind: str = "debian") -> str | None:
    """Why a daemon of ``kind`` cannot run here (None: it can)."""
    return realcorosync.skip_reason(real=kind.startswith("debian"))
