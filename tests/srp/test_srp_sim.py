"""Srp under the project simulator (corosync.exec.sim) with its fault schedules and
checkers (agreed order, virtual synchrony, SAFE, self delivery, membership convergence).

Each application message is sent as one srp MCAST through a tiny adapter instead of
TotemPg, so what is checked here is the Totem SRP layer alone (totempg packing and
fragmentation are tested in their own files)."""

from __future__ import annotations

import pytest

from corosync.exec.totem.events import Deliver, PgDeliver
from corosync.exec.totem.srp import Srp
from corosync.exec.totem.wire import decode_groups, encode_groups

sim = pytest.importorskip("corosync.exec.sim.cluster")


class _OnePacketPerMessage:
    """The TotemPg surface the simulator drives, one srp MCAST per message."""

    def __init__(self, srp) -> None:
        self.srp = srp

    def _up(self, actions: list) -> list:
        out = []
        for a in actions:
            if isinstance(a, Deliver):
                groups, off = decode_groups(a.payload)
                out.append(PgDeliver(a.sender, tuple(groups), a.payload[off:], a.ring_id,
                                     a.guarantee, a.swapped))
            else:
                out.append(a)
        return out

    def start(self, now):
        return self._up(self.srp.start(now))

    def receive(self, data, now):
        return self._up(self.srp.receive(data, now))

    def timer_expired(self, kind, now):
        return self._up(self.srp.timer_expired(kind, now))

    def trans_ack(self, now):
        return self._up(self.srp.trans_ack(now))

    def leave(self, now):
        return self._up(self.srp.leave(now))

    def mcast(self, groups, message, guarantee, now):
        return self._up(self.srp.send(encode_groups(list(groups)) + message, guarantee, now))

    def send_ok(self, nbytes):
        return self.srp.queue_space() > 0


def _stack(nodeid, config, ring_seq, probe):
    srp = Srp(nodeid, config, ring_seq=ring_seq)
    if probe is not None:
        srp = probe(srp)
    return _OnePacketPerMessage(srp)


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", range(8))
def test_simulated_faults_no_violations(seed, nodes):
    cfg = sim.SimConfig(nodes=nodes, seed=seed, faults=10, stack=_stack,
                        load=sim.LoadParams(small=(20, 300), medium=(300, 1300),
                                            large_max=1300, medium_ratio=0.2,
                                            large_ratio=0.0))
    result = sim.Simulation(cfg).run()
    assert not result.violations, [str(v) for v in result.violations[:3]]
