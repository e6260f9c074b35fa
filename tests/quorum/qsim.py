"""The quorum tests' simulated cluster now lives in tests/svc_sim.py (shared with
tests/services); this name stays for the modules that still import it (tests/qdevice)."""

from svc_sim import FakeConn, Node, QCluster, make_cmap  # noqa: F401
