"""TotemConfig.send_queue_max: computed once (a slot, not a property and not an attrs
field), kept in step with netmtu / transport_overhead, and never part of the
configuration itself (init, evolve, equality, the fields the node publishes)."""

from __future__ import annotations

import copy
import pickle

import attrs
import pytest

from corosync.exec.totem.config import MESSAGE_QUEUE_MAX_BYTES, TotemConfig, derive


def test_default_and_derived_values():
    cfg = TotemConfig()
    assert cfg.net_mtu == 1410 and cfg.send_queue_max == MESSAGE_QUEUE_MAX_BYTES // 1410 == 2974
    assert derive(3, token=1000).send_queue_max == 2974


def test_follows_the_mtu_inputs():
    cfg = TotemConfig()
    cfg.transport_overhead = 61                   # a crypto envelope
    assert cfg.send_queue_max == MESSAGE_QUEUE_MAX_BYTES // (1500 - 90 - 61)
    cfg.netmtu = 9000
    assert cfg.send_queue_max == MESSAGE_QUEUE_MAX_BYTES // (9000 - 90 - 61)
    assert attrs.evolve(cfg, netmtu=1500).send_queue_max == MESSAGE_QUEUE_MAX_BYTES // 1349


def test_not_configuration():
    names = {f.name for f in attrs.fields(TotemConfig)}
    assert "send_queue_max" not in names          # not published, not settable by derive
    with pytest.raises(TypeError):
        derive(send_queue_max=5)
    a, b = TotemConfig(), TotemConfig()
    b.netmtu = 1500                               # same value: equal, same queue
    assert a == b and a.send_queue_max == b.send_queue_max


def test_survives_copy_and_pickle():
    cfg = TotemConfig(netmtu=3000)
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other.send_queue_max == MESSAGE_QUEUE_MAX_BYTES // (3000 - 90)
