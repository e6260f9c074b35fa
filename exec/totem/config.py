"""Totem configuration values with corosync 3.1.7's defaults and derivations
(``shared/spec/totem-wire.md`` §3.10).

This holds *values* only; reading corosync.conf lives in ``corosync.exec.config``.
"""

from __future__ import annotations

from typing import Any

from attrs import Attribute, define, evolve, field

HZ = 100
MINIMUM_TIMEOUT = 3 * 1000 // HZ  # 30 ms
MINIMUM_TIMEOUT_HOLD = 14
QUEUE_RTR_ITEMS_SIZE_MAX = 16384
UDP_NETMTU = 1500
MESSAGE_QUEUE_MAX_BYTES = 4 * 1024 * 1024


def _queue_max(netmtu: int, transport_overhead: int) -> int:
    """MESSAGE_QUEUE_MAX for this MTU: 4 MiB worth of packets of ``net_mtu`` bytes."""
    return MESSAGE_QUEUE_MAX_BYTES // (netmtu - 2 * 45 - transport_overhead)


def _mtu_changed(cfg: "TotemConfig", attribute: "Attribute[int]", value: int) -> int:
    """on_setattr of ``netmtu``/``transport_overhead``: keep ``send_queue_max`` in step."""
    netmtu = value if attribute.name == "netmtu" else cfg.netmtu
    overhead = value if attribute.name == "transport_overhead" else cfg.transport_overhead
    object.__setattr__(cfg, "send_queue_max", _queue_max(netmtu, overhead))
    return value


class _Derived:
    """Slots for values derived from the attrs fields.  Plain slots, not attrs fields: they
    are not configuration (not in ``__init__``, ``evolve``, ``==`` or the cmap keys the
    node publishes for every field) and reading one is a slot load, not a call."""

    __slots__ = ("send_queue_max",)
    send_queue_max: int

    def __getattr__(self, name: str) -> Any:
        # only reached when a slot was never filled (an instance restored by pickle/copy,
        # which bypass __init__): compute it now
        if name == "send_queue_max":
            assert isinstance(self, TotemConfig)
            value = _queue_max(self.netmtu, self.transport_overhead)
            object.__setattr__(self, name, value)
            return value
        raise AttributeError(name)


@define(slots=True)
class TotemConfig(_Derived):
    """Effective Totem timers and constants, all in milliseconds / counts.

    Build one with :func:`derive`, which applies corosync's defaults and derivations to
    the values that were configured explicitly.
    """

    token: int = 3000
    token_coefficient: int = 650
    token_retransmits_before_loss_const: int = 4
    token_retransmit: int = 714
    hold: int = 561
    join: int = 50
    send_join: int = 0
    consensus: int = 3600
    merge: int = 200
    downcheck: int = 1000
    fail_recv_const: int = 2500
    seqno_unchanged_const: int = 30
    window_size: int = 50
    max_messages: int = 17
    miss_count_const: int = 5
    max_network_delay: int = 50
    heartbeat_failures_allowed: int = 0
    token_warning: int = 75
    netmtu: int = field(default=UDP_NETMTU, on_setattr=_mtu_changed)
    cancel_token_hold_on_retransmit: bool = False
    block_unlisted_ips: bool = True
    #: Bytes the transport (crypto envelope) adds to each datagram; lowers net_mtu.
    transport_overhead: int = field(default=0, on_setattr=_mtu_changed)
    # ``send_queue_max`` (a slot of _Derived): MESSAGE_QUEUE_MAX, the packets the
    # new-message queue holds (2974 by default).  Computed once, not a property: TotemPg
    # and Srp read it on their send paths, and it only changes with ``netmtu`` /
    # ``transport_overhead``, whose on_setattr keeps it in step.

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "send_queue_max",
                           _queue_max(self.netmtu, self.transport_overhead))

    @property
    def net_mtu(self) -> int:
        """Effective totemsrp MTU: netmtu less two MCAST headers (1410 by default)."""
        return self.netmtu - 2 * 45 - self.transport_overhead

    @property
    def pg_max_packet(self) -> int:
        """Bytes of totempg (lengths + data) per MCAST: net_mtu − 8 (1402 by default)."""
        return self.net_mtu - 8


def derive(nodelist_size: int = 0, **explicit: int | bool) -> TotemConfig:
    """Apply corosync's derivation rules to explicitly configured values.

    ``nodelist_size`` is the number of nodelist entries; when > 2 the token timeout grows
    by ``(N − 2) × token_coefficient``.  token_retransmit, hold and consensus are then
    derived from the adjusted token unless they were given explicitly.
    """
    unknown = set(explicit) - {a.name for a in TotemConfig.__attrs_attrs__}
    if unknown:
        raise TypeError(f"unknown totem settings: {sorted(unknown)}")
    cfg = evolve(TotemConfig(), **explicit)
    if nodelist_size > 2 and cfg.token_coefficient > 0:
        cfg.token = cfg.token + (nodelist_size - 2) * cfg.token_coefficient
    if "token_retransmit" not in explicit:
        cfg.token_retransmit = int(cfg.token / (cfg.token_retransmits_before_loss_const + 0.2))
    if "hold" not in explicit:
        cfg.hold = int(cfg.token_retransmit * 0.8 - 1000 / HZ)
    if "consensus" not in explicit:
        cfg.consensus = int(1.2 * cfg.token)
    return cfg
