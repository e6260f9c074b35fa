"""Our daemon (corosync.exec.main) with the quorum, votequorum and cfg services loaded, for
the mixed-ring interop test — until exec/host.default_services() lists them itself (then
this adds nothing)."""

from __future__ import annotations

import sys

import corosync.exec.host as host
from corosync.services.cfg import CfgService
from corosync.services.quorum import QuorumService
from corosync.services.votequorum import VotequorumService

_base = host.default_services


def _with_quorum():  # type: ignore[no-untyped-def]
    services = list(_base())
    have = {s.id for s in services}
    return services + [s for s in (CfgService, QuorumService, VotequorumService)
                       if s.id not in have]


host.default_services = _with_quorum  # type: ignore[assignment]

if __name__ == "__main__":
    from corosync.exec.main import main

    sys.exit(main())
