"""Replay the client side of Debian's captures into our server core (capture timestamps as
the clock) and require byte-identical server replies, per connection, in order."""

import itertools

import pytest

from corosync.exec.qnetd.server import ServerConfig

from qnetd_replay import describe, replay


def _diff(res) -> str:
    lines = []
    for i, (a, b) in enumerate(itertools.zip_longest(res.expected, res.got)):
        if a != b:
            lines.append(f"#{i}: expected {a and describe(a)} got {b and describe(b)}")
    return "\n".join(lines)


@pytest.mark.parametrize("name,tls", [
    ("ffsplit-2node", 0), ("lms-3node", 0), ("tls-server-on-client-off", 1),
])
def test_capture_replies_identical(shared_dir, name, tls):
    results = replay(shared_dir / f"spec/captures/qnetd-{name}.pcap", ServerConfig(tls=tls))
    assert len(results) >= 2
    for conn, res in results.items():
        assert res.expected, conn
        assert res.got == res.expected, f"{conn}\n{_diff(res)}"


def test_heartbeat_dpd_capture(shared_dir):
    """n2 SIGSTOPped: we drop it 12 s (1.5 x 8000 ms) after its last message, like Debian.
    Later qnetd itself was SIGSTOPped: replies it owed to connections the clients closed
    meanwhile never reached the wire, so there the capture is a prefix of ours."""
    results = replay(shared_dir / "spec/captures/qnetd-heartbeat-dpd.pcap", ServerConfig(tls=0))
    dpd = [r for r in results.values() if r.server_closed_expected is not None]
    assert len(dpd) == 1
    assert dpd[0].server_closed_got == pytest.approx(dpd[0].server_closed_expected, abs=0.05)
    full = 0
    for conn, res in results.items():
        assert res.got[:len(res.expected)] == res.expected, f"{conn}\n{_diff(res)}"
        full += res.got == res.expected and bool(res.expected)
    assert full >= 3  # the DPD victim and both reconnections after SIGCONT match exactly
