"""Time-driven behaviour of Srp: process-pause detection, the send_join random delay,
the separate token-warning timer and the time-dependent stats counters.

Srp never reads a clock: all of this works from the ``now`` the driver passes with each
call and from timers the driver fires.  Unit tests drive a single Srp by hand; the
cluster tests use the virtual-clock harness of test_srp_harness.py.
"""

from __future__ import annotations

import random

from corosync.exec.totem.events import (CancelTimer, Log, LogLevel, Multicast, StartTimer,
                                        TimerKind)
from corosync.exec.totem.srp import MembState, Srp
from corosync.exec.totem.wire import Join, decode

from test_srp_harness import Cluster, fast_config, formed_cluster

PAUSE_LINE = "Process pause detected for"


def _timers(actions, kind):
    return [a.ms for a in actions if isinstance(a, StartTimer) and a.kind is kind]


def _joins(actions):
    return [decode(a.data) for a in actions
            if isinstance(a, Multicast) and isinstance(decode(a.data), Join)]


def _logs(actions, prefix):
    return [a.message for a in actions if isinstance(a, Log) and a.message.startswith(prefix)]


def _foreign_join(sender: int, seq: int = 1) -> bytes:
    return Join(sender, sender, (sender,), (), seq).encode()


# ---------------------------------------------------------------- pause detection
def test_pause_heartbeat_is_armed_at_start_and_rearmed_on_expiry():
    cfg = fast_config(1)
    node = Srp(1, cfg)
    out = node.start(0)
    assert _timers(out, TimerKind.PAUSE) == [cfg.token // 5]
    out = node.timer_expired(TimerKind.PAUSE, cfg.token // 5)
    assert _timers(out, TimerKind.PAUSE) == [cfg.token // 5]
    assert node.pauses_detected == 0


def test_a_gap_over_half_the_token_flushes_membership_messages_until_the_heartbeat():
    cfg = fast_config(2)  # token 1000: a pause is a gap of more than 500 ms
    node = Srp(1, cfg)
    node.start(0)
    node.timer_expired(TimerKind.PAUSE, 200)
    # 500 ms without input is not yet a pause
    out = node.receive(_foreign_join(2), 700)
    assert not _logs(out, PAUSE_LINE)
    assert 2 in node._proc
    # 501 ms is: the JOIN that comes with the backlog is not acted on
    out = node.receive(_foreign_join(3), 1201)
    assert _logs(out, PAUSE_LINE) == [
        "Process pause detected for 501 ms, flushing membership messages."]
    assert [a.level for a in out if isinstance(a, Log)] == [LogLevel.NOTICE]
    assert _timers(out, TimerKind.PAUSE) == [0]  # "once the backlog is handed over"
    assert 3 not in node._proc
    assert not _joins(out)
    assert node.stats.dropped["pause_flush"] == 1
    assert node.stats.memb_join_rx == 2
    out = node.receive(_foreign_join(4), 1201)  # still backlog: dropped, logged once
    assert not _logs(out, PAUSE_LINE) and 4 not in node._proc
    assert node.stats.dropped["pause_flush"] == 2
    assert node.pauses_detected == 1
    # the heartbeat fires: caught up; the next JOIN counts again
    out = node.timer_expired(TimerKind.PAUSE, 1201)
    assert _timers(out, TimerKind.PAUSE) == [cfg.token // 5]
    out = node.receive(_foreign_join(3), 1202)
    assert 3 in node._proc and _joins(out)
    assert node.stats.dropped["pause_flush"] == 2


def test_a_long_gap_detected_by_a_timer_input_flushes_too():
    cfg = fast_config(2)
    node = Srp(1, cfg)
    node.start(0)
    out = node.timer_expired(TimerKind.JOIN, 2000)  # the first late input is a timer
    assert _logs(out, "Process pause detected for 2000 ms")
    node.receive(_foreign_join(2), 2000)
    assert 2 not in node._proc


def test_no_false_pause_on_quiet_or_broken_rings():
    # token_retransmit > token/2 (one retransmit before loss) and a node that loses its
    # peer: the PAUSE heartbeat alone keeps the inputs closer than token/2
    cfg = fast_config(3, token_retransmits_before_loss_const=1)
    assert cfg.token_retransmit > cfg.token // 2
    c = formed_cluster(3, config=cfg)
    c.run_for(20_000)
    c.crash(3)
    assert c.run_until(lambda: c.ring_formed([1, 2]), 30_000)
    c.run_for(20_000)
    for i in (1, 2):
        assert c.nodes[i].pauses_detected == 0, c.log_lines(i)
        assert "pause_flush" not in c.nodes[i].stats.dropped


def test_paused_node_ignores_stale_joins_and_rejoins():
    c = formed_cluster(3)
    token = c.config.token
    c.pause(3, 3 * token + c.config.consensus)  # the others re-form without it meanwhile
    assert c.run_until(lambda: c.ring_formed([1, 2]) and 3 not in c.nodes[1].members,
                       20_000)
    assert c.run_until(c.ring_formed, 30_000)
    node = c.nodes[3]
    lines = [x for x in c.log_lines(3) if x.startswith(PAUSE_LINE)]
    assert len(lines) == 1 and node.pauses_detected == 1
    gap = int(lines[0].split()[4])
    assert gap > 3 * token
    assert node.stats.dropped["pause_flush"] >= 1  # the queued JOINs of 1 and 2
    assert c.nodes[1].pauses_detected == c.nodes[2].pauses_detected == 0


def test_short_pause_keeps_the_ring():
    c = formed_cluster(3)
    ring = c.nodes[1].ring_id
    c.pause(2, c.config.token * 6 // 10)  # a pause, but shorter than a token loss
    c.run_for(5 * c.config.token)
    assert c.nodes[2].pauses_detected == 1
    assert c.ring_formed() and c.nodes[1].ring_id == ring


# ---------------------------------------------------------------- send_join
def test_send_join_delays_each_join_by_a_driver_drawn_random_amount():
    cfg = fast_config(2, send_join=80)
    seed = 5
    expect = random.Random(seed)
    node = Srp(1, cfg, rng=random.Random(seed))
    out = node.start(0)
    d = expect.randrange(80)
    assert d > 0 and not _joins(out)
    assert _timers(out, TimerKind.SEND_JOIN) == [d]
    # a JOIN asked for meanwhile (join timer) is covered by the pending one
    out = node.timer_expired(TimerKind.JOIN, min(d - 1, cfg.join))
    assert not _joins(out) and not _timers(out, TimerKind.SEND_JOIN)
    out = node.timer_expired(TimerKind.SEND_JOIN, d)
    (join,) = _joins(out)
    assert join.system_from == 1 and join.proc_list == (1,)
    assert node.stats.memb_join_tx == 1
    out = node.timer_expired(TimerKind.JOIN, d + cfg.join)
    assert _timers(out, TimerKind.SEND_JOIN) == [expect.randrange(80)]


def test_send_join_zero_sends_at_once_and_draws_nothing():
    class NoRandom(random.Random):
        def randrange(self, *a, **k):  # noqa: ARG002
            raise AssertionError("send_join=0 must not draw")

    node = Srp(1, fast_config(1), rng=NoRandom())
    out = node.start(0)
    assert len(_joins(out)) == 1 and not _timers(out, TimerKind.SEND_JOIN)


def test_pending_delayed_join_is_cancelled_on_commit():
    cfg = fast_config(1, send_join=50)
    node = Srp(1, cfg, rng=random.Random(1))
    out = node.start(0)
    (d,) = _timers(out, TimerKind.SEND_JOIN)
    node.timer_expired(TimerKind.SEND_JOIN, d)
    # re-gathering arms another delay; our own JOIN (heard now) completes consensus
    node._send_join()  # noqa: SLF001 - a join timer would do the same
    pending = TimerKind.SEND_JOIN in node._armed
    out = node.receive(Join(1, 1, (1,), (), node.ring_id.seq).encode(), d)
    assert node.state is MembState.COMMIT
    if pending:
        assert CancelTimer(TimerKind.SEND_JOIN) in out
    assert TimerKind.SEND_JOIN not in node._armed


def test_rings_form_with_send_join_and_runs_are_reproducible():
    def once():
        cfg = fast_config(5, send_join=100)
        c = Cluster(range(1, 6), config=cfg)
        for i in c.nodes:
            c.nodes[i].rng = random.Random(i * 7)
        c.start()
        assert c.run_until(c.ring_formed, 60_000)
        c.crash(4)
        assert c.run_until(lambda: c.ring_formed([1, 2, 3, 5]), 60_000)
        return c.now, c.nodes[1].ring_id, [c.nodes[i].stats.memb_join_tx for i in c.nodes]

    a, b = once(), once()
    assert a == b


# ---------------------------------------------------------------- token warning
def test_token_warning_has_its_own_timer_kind():
    c = formed_cluster(2)
    acts = []
    c.observers.append(lambda nid, a: acts.append(a) if nid == 1 else None)
    c.run_for(c.config.token)
    token = c.config.token
    loss = [a.ms for a in acts if isinstance(a, StartTimer) and a.kind is TimerKind.TOKEN_LOSS]
    warn = [a.ms for a in acts
            if isinstance(a, StartTimer) and a.kind is TimerKind.TOKEN_WARNING]
    assert loss and set(loss) == {token}
    assert warn and set(warn) == {token * 75 // 100}


def test_token_warning_zero_arms_no_warning_and_loss_cancels_it():
    c = formed_cluster(2, config=fast_config(2, token_warning=0))
    acts = []
    c.observers.append(lambda nid, a: acts.append(a))
    c.run_for(c.config.token)
    assert not [a for a in acts if isinstance(a, StartTimer)
                and a.kind is TimerKind.TOKEN_WARNING]
    # with warnings on, losing the token cancels the pending warning with the loss timer
    c = formed_cluster(2)
    acts = []
    c.observers.append(lambda nid, a: acts.append(a) if nid == 1 else None)
    c.crash(2)
    assert c.run_until(lambda: c.nodes[1].state is not MembState.OPERATIONAL, 5_000)
    # (the loss timer itself fired, so only the warning needed cancelling)
    assert CancelTimer(TimerKind.TOKEN_WARNING) in acts


# ---------------------------------------------------------------- counters
def test_continuous_sendmsg_failures_counts_failures_in_a_row():
    node = Srp(1, fast_config(1))
    for _ in range(3):
        node.note_mcast_send(False)
    assert node.stats.continuous_sendmsg_failures == 3
    node.note_mcast_send(True)
    assert node.stats.continuous_sendmsg_failures == 0


def test_refresh_stats_time_since_token_and_firewall_warning():
    c = formed_cluster(2)
    node = c.nodes[1]
    c.run_for(100)
    assert node.refresh_stats(c.now) == []
    assert 0 <= node.stats.time_since_token_last_received < c.config.token
    last = node._last_token_rx
    c.crash(2)
    c.run_for(c.config.token // 2)
    node.refresh_stats(c.now)
    assert node.stats.time_since_token_last_received == c.now - last
    # heartbeat updates it too (bounded staleness without the driver's help)
    assert node.stats.firewall_enabled_or_nic_failure == 0
    for _ in range(31):
        node.note_mcast_send(False)
    out = node.refresh_stats(c.now)
    assert node.stats.firewall_enabled_or_nic_failure == 1
    assert [(a.level, a.message) for a in out] == [(
        LogLevel.WARNING,
        "Totem is unable to form a cluster because of an operating system or network fault "
        "(reason: number of multicast sendmsg failures is above threshold). The most common "
        "cause of this message is that the local firewall is configured improperly.")]
    node.note_mcast_send(True)
    node.stats.continuous_gather = 4
    out = node.refresh_stats(c.now)
    assert "(reason: totem is continuously in gather state)" in out[0].message
    node.stats.continuous_gather = 0
    assert node.refresh_stats(c.now) == []
    assert node.stats.firewall_enabled_or_nic_failure == 0


def test_pause_heartbeat_keeps_time_since_token_fresh():
    c = formed_cluster(2)
    c.crash(2)
    c.run_for(c.config.token // 2)
    node = c.nodes[1]
    stale = c.now - node._last_token_rx - node.stats.time_since_token_last_received
    assert 0 <= stale <= c.config.token // 5


def test_replacing_the_config_at_run_time_rederives_timers():
    """exec/node.py applies a config reload by assigning ``srp.config``: the derived
    values (token re-arm actions, pause threshold and heartbeat) must follow."""
    c = formed_cluster(2)
    node = c.nodes[1]
    acts = []
    c.observers.append(lambda nid, a: acts.append(a) if nid == 1 else None)
    node.config = fast_config(2, token=2000, token_warning=50)
    c.run_for(1000)
    loss = {a.ms for a in acts if isinstance(a, StartTimer) and a.kind is TimerKind.TOKEN_LOSS}
    warn = {a.ms for a in acts
            if isinstance(a, StartTimer) and a.kind is TimerKind.TOKEN_WARNING}
    assert loss == {2000} and warn == {1000}
    assert {a.ms for a in acts
            if isinstance(a, StartTimer) and a.kind is TimerKind.PAUSE} == {400}
    assert node._pause_limit == 1000
    assert c.ring_formed()
