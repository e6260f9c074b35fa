"""Our qdevice client against the server side of Debian's captures: for the same situation
(votequorum events reconstructed from the stock client's lists, the capture's clock, the
capture's random reconnect delays) it must send the same bytes, in the same order, and close
its connection when the stock client did."""

import itertools

import pytest

from corosync.exec.qdevice import core as C
from corosync.exec.qnetd import protocol as P

from qdevice_replay import describe, replay


def _diff(res) -> str:
    out = []
    for i, (a, b) in enumerate(itertools.zip_longest(res.expected, res.got)):
        if a != b:
            out.append(f"#{i}: expected {a and describe(a)} got {b and describe(b)}")
    return "\n".join(out)


FROZEN = {"heartbeat-dpd": {"198.18.0.2": (2.383, 14.385)}}  # from the .events.txt


@pytest.mark.parametrize("name", ["ffsplit-2node", "lms-3node", "heartbeat-dpd",
                                  "tls-server-on-client-off"])
def test_client_bytes_identical(shared_dir, name):
    results = replay(shared_dir / f"spec/captures/qnetd-{name}.pcap", frozen=FROZEN.get(name))
    assert len(results) >= 2
    for node, res in results.items():
        assert len(res.expected) >= 7, node
        assert res.got == res.expected, f"{node}\n{_diff(res)}"
        # each of our closes happens when the stock client closed (the SIGKILLed ones
        # close without us: their FIN comes from the kernel)
        for t, reason in res.closes:
            assert any(abs(t - fin) < 0.05 for fin in res.client_fins), (node, t, reason)
        assert not res.exits, node


def test_ffsplit_votes_follow_the_partition_and_the_kill(shared_dir):
    res = replay(shared_dir / "spec/captures/qnetd-ffsplit-2node.pcap")
    n1, n2 = res["198.18.0.1"], res["198.18.0.2"]
    # both voted ACK while the cluster was whole
    assert any(cast for t, cast in n1.polls if t < 19)
    assert any(cast for t, cast in n2.polls if t < 19)
    # 50:50 split: the lowest node id keeps the vote, node 2 is told NACK
    assert [cast for t, cast in n2.polls if 20.7 < t < 24][-1] is False
    assert [cast for t, cast in n1.polls if 20.7 < t < 24][-1] is True
    # after node 2 is gone node 1 still casts its vote
    assert n1.core.vote == P.Vote.ACK and n1.polls[-1][1] is True
    assert n1.core.state == C.State.CONNECTED


def test_dpd_reconnects_after_missing_echo_and_connect_timeout(shared_dir):
    res = replay(shared_dir / "spec/captures/qnetd-heartbeat-dpd.pcap",
                 frozen=FROZEN["heartbeat-dpd"])
    n1 = res["198.18.0.1"]
    reasons = [r for _, r in n1.closes]
    assert reasons == [C.Reason.ECHO_REPLY_NOT_RECEIVED, C.Reason.CONNECT_TIMEOUT]
    # qnetd stopped at 18.9: the echo sent at 24.0 is unanswered, noticed at the 32.0 tick
    assert n1.closes[0][0] == pytest.approx(32.0, abs=0.05)
    # ffsplit: disconnected -> NACK (polled with cast_vote false), reconnected -> ACK again
    assert any(not cast for t, cast in n1.polls if 32 <= t < 44)
    assert n1.core.state == C.State.CONNECTED and n1.polls[-1][1] is True


def test_tls_required_by_server_client_off_gives_up(shared_dir):
    """qnetd -s req, qdevice tls: off: the stock client stops after PREINIT_REPLY."""
    from qnetd_pcap import read_events, split_messages
    events = read_events(shared_dir / "spec/captures/qnetd-tls-server-req-client-off.pcap")
    conn = events[0].conn
    c2s = split_messages(b"".join(e.data for e in events if e.conn == conn and e.kind == "c2s"))
    s2c = split_messages(b"".join(e.data for e in events if e.conn == conn and e.kind == "s2c"))
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="198.18.0.100", tls=0)
    core = C.QdeviceNet(cfg, rng=lambda n: 0)
    core.on_vq_nodelist(P.RingId(1, 9), (1, 2), 0.0)
    assert [type(a) for a in core.take_actions() if not isinstance(a, C.Log)] == [C.Connect]
    core.on_connected(0.0)
    core.on_message(s2c[0], 0.0)
    acts = [a for a in core.take_actions() if not isinstance(a, C.Log)]
    assert [a.data for a in acts if isinstance(a, C.Send)] == c2s
    assert isinstance(acts[-1], C.Exit) and core.state == C.State.EXITED
    assert any(isinstance(a, C.Close) for a in acts)


def test_tls_starttls_prefix(shared_dir):
    """tls: on against qnetd -s on: PREINIT, then STARTTLS (seq 2) and the TLS handshake."""
    from qnetd_pcap import read_events, split_messages
    events = read_events(shared_dir / "spec/captures/qnetd-tls-2node.pcap")
    conn = events[0].conn
    c2s = b"".join(e.data for e in events if e.conn == conn and e.kind == "c2s")
    s2c = b"".join(e.data for e in events if e.conn == conn and e.kind == "s2c")
    cfg = C.QdeviceConfig(cluster_name=b"lab", node_id=1, host="198.18.0.100", tls=1)
    core = C.QdeviceNet(cfg, rng=lambda n: 0)
    core.on_vq_nodelist(P.RingId(1, 9), (1, 2), 0.0)
    core.on_connected(0.0)
    core.on_message(split_messages(s2c)[0], 0.0)
    acts = [a for a in core.take_actions() if isinstance(a, (C.Send, C.StartTls))]
    sent = b"".join(a.data for a in acts if isinstance(a, C.Send))
    assert c2s.startswith(sent) and len(split_messages(sent)) == 2
    assert isinstance(acts[-1], C.StartTls) and core.state == C.State.WAITING_TLS
    assert c2s[len(sent)] == 0x16  # what follows STARTTLS on the wire is a TLS record
    core.on_tls_established(0.1)
    init = P.decode([a for a in core.take_actions() if isinstance(a, C.Send)][0].data)
    assert init.type == P.MsgType.INIT and init.seq == 3
