"""totempg across membership changes: our own unsent stream is rewritten at a REGULAR
change so that no message straddles a change with joiners, and the sync phase never
inherits the old continuation chain (exec/totem/pg.py, module docstring)."""

from corosync.exec.totem.events import (ConfChg, ConfChgKind, Deliver, Guarantee, PgDeliver)
from corosync.exec.totem.pg import TotemPg
from corosync.exec.totem.wire import RingId, decode_pg

from test_pg import FakeSrp

OLD, NEW = RingId(1, 8), RingId(1, 12)
GA = (b"a",)


class HeldSrp(FakeSrp):
    """FakeSrp plus Srp's held queue: after a REGULAR change, packets queued before it
    wait in ``held`` until trans_ack; ``take_held``/``hold`` rewrite it."""

    def __init__(self, nodeid: int) -> None:
        super().__init__(nodeid)
        self.held: list[tuple[bytes, int]] = []

    def take_held(self) -> list[tuple[bytes, int]]:
        out, self.held = self.held, []
        return out

    def hold(self, packets: list[tuple[bytes, int]]) -> None:
        self.held.extend(packets)


def change(pg: TotemPg, left=(), joined=()) -> None:
    members = tuple(sorted({1, 2, 3} - set(left)))
    pg._process([ConfChg(ConfChgKind.TRANSITIONAL, members, tuple(left), (), NEW),
                 ConfChg(ConfChgKind.REGULAR, members, (), tuple(joined), NEW)], 0)


def deliver(pg: TotemPg, sender: int, packets, ring=NEW) -> list[bytes]:
    out = pg._process([Deliver(sender, p, ring, 0, g, False) for p, g in packets], 0)
    return [a.message for a in out if isinstance(a, PgDeliver)]


def new_pg(nodeid: int) -> TotemPg:
    pg = TotemPg(HeldSrp(nodeid))
    pg.trans_ack(0)  # normal operation before the change
    return pg


def test_partial_message_with_joiner_is_aborted_and_resent_whole():
    big, small = bytes(range(256)) * 20, b"after"  # 5120 bytes: 4 packets
    sender, old_member, joiner = new_pg(1), new_pg(2), new_pg(3)
    sender.mcast(GA, big, Guarantee.AGREED, 0)
    sender.mcast(GA, small, Guarantee.AGREED, 0)
    queued = list(sender.srp.queue)  # 3 full packets; the tail waits in the buffer
    assert len(queued) == 3
    # The first two packets are ordered in the old ring; the rest is held back.
    for pg in (sender, old_member):
        assert deliver(pg, 1, queued[:2], OLD) == []
    sender.srp.held, sender.srp.queue = queued[2:], []

    for pg, joined in ((sender, (3,)), (old_member, (3,)), (joiner, (1, 2, 3))):
        change(pg, joined=joined)
    held = sender.srp.held
    abort = decode_pg(held[0][0])
    assert (abort.fragmented, len(abort.pieces)) == (0, 1)
    assert abort.continuation not in (0, decode_pg(queued[1][0]).fragmented)
    assert decode_pg(held[1][0]).continuation == 0  # the message starts afresh
    assert sender.stats.straddle_aborts == 1

    for pg in (sender, old_member, joiner):
        pg.trans_ack(0)
        assert deliver(pg, 1, held) == [big, small]
    assert not sender._unacked_normal  # everything came back to us


def test_partial_message_without_joiner_is_left_alone():
    big = b"x" * 5000
    sender, old_member = new_pg(1), new_pg(2)
    sender.mcast(GA, big, Guarantee.AGREED, 0)
    queued = list(sender.srp.queue)
    for pg in (sender, old_member):
        deliver(pg, 1, queued[:2], OLD)
    sender.srp.held, sender.srp.queue = queued[2:], []
    for pg in (sender, old_member):
        change(pg, left=(3,))
    held = sender.srp.held
    assert held[:1] == queued[2:]  # untouched, then the buffered tail
    assert decode_pg(held[-1][0]).fragmented == 0 and sender.stats.straddle_aborts == 0
    for pg in (sender, old_member):
        pg.trans_ack(0)
        assert deliver(pg, 1, held) == [big]


def test_buffered_tail_moves_to_held_queue_so_sync_starts_a_fresh_chain():
    sender, receiver = new_pg(1), new_pg(2)
    sender.mcast(GA, b"y" * 3000, Guarantee.AGREED, 0)  # 2 packets now, tail buffered
    assert sender._cont != 0
    sender.srp.held, sender.srp.queue = list(sender.srp.queue), []
    for pg in (sender, receiver):
        change(pg, joined=(3,))  # nothing of ours was delivered: no abort needed
    assert sender.stats.straddle_aborts == 0
    assert len(sender.srp.held) == 3 and sender._cont == 0 and not sender._buf
    sender.mcast((b"sync",), b"barrier", Guarantee.AGREED, 0)
    sender.srp.token()  # the sync phase's first packet: continuation 0
    (sync_pkt,) = [p for p in sender.srp.log if p not in sender.srp.held][-1:]
    assert decode_pg(sync_pkt[0]).continuation == 0
    out = receiver._process([Deliver(1, sync_pkt[0], NEW, 0)], 0)
    assert [a.message for a in out if isinstance(a, PgDeliver)] == [b"barrier"]


def test_leaver_message_completes_in_the_transitional_configuration():
    # every member of the transitional configuration delivers a leaver's message whose
    # last packets come after the TRANSITIONAL change (it used to be thrown away)
    rx, part = new_pg(2), new_pg(3)
    part.mcast(GA, b"w" * 3000, Guarantee.AGREED, 0)
    part.srp.token()
    packets = list(part.srp.log)
    assert len(packets) == 3
    deliver(rx, 3, packets[:1], OLD)
    rx._process([ConfChg(ConfChgKind.TRANSITIONAL, (1, 2), (3,), (), NEW)], 0)
    assert deliver(rx, 3, packets[1:], OLD) == [b"w" * 3000]


def test_leaver_state_recreated_after_transitional_change_is_purged():
    rx = new_pg(2)
    part = TotemPg(HeldSrp(3))
    part.trans_ack(0)
    part.mcast(GA, b"z" * 3000, Guarantee.AGREED, 0)
    first = part.srp.queue[0]
    # node 3 left; one of its old-ring packets is delivered after the TRANSITIONAL change
    rx._process([ConfChg(ConfChgKind.TRANSITIONAL, (1, 2), (3,), (), NEW)], 0)
    deliver(rx, 3, [first], OLD)
    assert 3 in rx._asm_normal
    rx._process([ConfChg(ConfChgKind.REGULAR, (1, 2), (), (), NEW)], 0)
    assert 3 not in rx._asm_normal and 3 not in rx._asm_trans


def test_sixteen_node_storm_keeps_safe_and_transitional_boundaries_consistent():
    # seed 3 found two boundary bugs: members moving together put SAFE old-ring messages
    # on different sides of the TRANSITIONAL confchg (each used its own view of
    # stability), and totempg purged a leaver's partial message before the transitional
    # configuration had delivered its tail
    from corosync.exec.sim import SimConfig, run

    r = run(SimConfig(nodes=16, seed=3, faults=200))
    assert not r.violations, "\n".join(map(str, r.violations[:5]))
