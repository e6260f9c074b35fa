"""Real ``corosync -f`` daemons forming udpu rings on 127.0.0.x.

Timers: token 300 ms, token_coefficient 0, join 50 ms, consensus derived (360 ms).
A failure is detected within token + consensus (+ scheduling margin) ≈ 0.7 s; the
deadlines below are generous multiples of that for slow CI machines.
"""

from __future__ import annotations

import signal
import struct

import pytest

from exec_testlib import Cluster, pick_port, wait_until

FAILOVER_DEADLINE = 6.0  # s; token 0.3 + consensus 0.36 + Python start/CI slack


def test_single_node_ring_and_files(cluster_factory):
    c = cluster_factory(1)
    c.start()
    c.wait_members([1])
    d = c[1]
    log = d.log()
    assert "notice  [MAIN  ] Corosync Cluster Engine" in log and "starting up" in log
    assert "[TOTEM ] Initializing transport (UDP/IP Unicast)." in log
    assert "[TOTEM ] The network interface [127.0.0.1] is now up." in log
    assert "[TOTEM ] adding new UDPU member {127.0.0.1}" in log
    # logfile format: "<date> [pid] host corosync notice  [TOTEM ] ..."
    assert f"[{d.pid}] " in log.splitlines()[0]
    pid_text = (d.dir / "run" / "corosync.pid").read_text()
    assert int(pid_text) == d.pid
    ringfile = d.dir / "state" / "ringid_1"
    wait_until(lambda: ringfile.exists() and
               struct.unpack("=Q", ringfile.read_bytes())[0] >= 1, 5, "ringid_1 written")
    assert d.stop(signal.SIGINT) == 0
    assert "Node was shut down by a signal" in d.log()
    assert "Corosync Cluster Engine exiting normally" in d.log()
    assert not (d.dir / "run" / "corosync.pid").exists()


def test_second_instance_refused(cluster_factory):
    c = cluster_factory(1)
    c.start()
    c.wait_members([1])
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "corosync.exec.main", "-f", "-c", str(c[1].conf)],
                       env={**__import__("os").environ, "COROSYNC_LOCAL_ADDRS": "127.0.0.1"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 18
    assert "Another Corosync instance is already running." in c[1].log()
    assert c[1].alive()


def test_three_nodes_kill_restart_and_clean_leave(cluster_factory):
    c = cluster_factory(3)
    c.start()
    c.wait_members([1, 2, 3])
    # SIGKILL the lowest id (the ring representative): survivors re-form without it.
    c[1].kill()
    c.wait_members([2, 3], timeout=FAILOVER_DEADLINE)
    # Whoever's token timer fires first logs the failure; the other may be pulled into
    # GATHER by its JOIN first (as with the real daemon).
    assert any("A processor failed, forming new configuration" in c[n].log() for n in (2, 3))
    for n in (2, 3):
        assert "Failed to receive the leave message. failed: 1" in c[n].log()
    # Restart: it rejoins with a higher ring seq (ringid file persisted).
    c[1].start()
    c.wait_members([1, 2, 3], timeout=FAILOVER_DEADLINE)
    # SIGTERM: clean leave, peers see "left" without a token loss.
    before = {n: c[n].log().count("A processor failed") for n in (1, 2)}
    assert c[3].stop(signal.SIGTERM) == 0
    c.wait_members([1, 2], timeout=FAILOVER_DEADLINE)
    for n in (1, 2):
        assert c[n].log().count("A processor failed") == before[n]
        assert "Failed to receive the leave message. failed: 3" not in c[n].log()


def test_five_nodes_and_kill_middle(cluster_factory):
    c = cluster_factory(5)
    c.start()
    c.wait_members([1, 2, 3, 4, 5], timeout=15)
    c[3].kill()
    c.wait_members([1, 2, 4, 5], timeout=FAILOVER_DEADLINE)
    # every survivor agrees on the ring id of the new membership
    rings = {c[n].memberships()[-1][0] for n in (1, 2, 4, 5)}
    assert len(rings) == 1


def test_different_authkey_is_kept_out(cluster_factory, tmp_path):
    pytest.importorskip("corosync.exec.transport.crypto")
    good = tmp_path / "authkey"
    bad = tmp_path / "otherkey"
    good.write_bytes(bytes(range(256)))
    bad.write_bytes(bytes(reversed(range(256))))
    c = cluster_factory(3, keyfile=str(good), crypto=("aes256", "sha256"))
    # node 3 gets another key
    text = c[3].conf.read_text().replace(str(good), str(bad))
    c[3].conf.write_text(text)
    c.start()
    c.wait_members([1, 2], ids=[1, 2])
    wait_until(lambda: c[3].members() == (3,), 10, "n3 alone")
    wait_until(lambda: "invalid digest" in c[1].log() and "invalid digest" in c[2].log(),
               10, "digest errors logged on n1 and n2")
    assert c[1].members() == (1, 2)


def test_ipv6_single_node_on_loopback(cluster_factory):
    import socket
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("::1 is not available")
    # One node only: all udpu nodes share one port, so several nodes need several
    # addresses, and ::1 is the only IPv6 loopback address (see docs/corosync.md).
    c = cluster_factory(1, base="::", totem_extra="    ip_version: ipv6\n")
    c.start()
    c.wait_members([1])
    assert "The network interface [::1] is now up." in c[1].log()


def test_node_address_given_as_a_host_name(tmp_path):
    c = Cluster(tmp_path, [(1, "localhost")], pick_port(), totem_extra="    ip_version: ipv4\n")
    c[1].env_extra["COROSYNC_LOCAL_ADDRS"] = "127.0.0.1"
    try:
        c.start()
        c.wait_members([1])
        log = c[1].log()
        assert "adding new UDPU member {127.0.0.1}" in log
        assert "The network interface [127.0.0.1] is now up." in log
    finally:
        c.stop_all()
