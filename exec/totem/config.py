"""Totem configuration values with corosync 3.1.7's defaults and derivations
(``shared/spec/totem-wire.md`` §3.10).

This holds *values* only; reading corosync.conf lives in ``corosync.exec.config``.
"""

from __future__ import annotations

from attrs import define, evolve

HZ = 100
MINIMUM_TIMEOUT = 3 * 1000 // HZ  # 30 ms
MINIMUM_TIMEOUT_HOLD = 14
QUEUE_RTR_ITEMS_SIZE_MAX = 16384
UDP_NETMTU = 1500
MESSAGE_QUEUE_MAX_BYTES = 4 * 1024 * 1024


@define(slots=True)
class TotemConfig:
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
    netmtu: int = UDP_NETMTU
    cancel_token_hold_on_retransmit: bool = False
    block_unlisted_ips: bool = True
    #: Bytes the transport (crypto envelope) adds to each datagram; lowers net_mtu.
    transport_overhead: int = 0

    @property
    def net_mtu(self) -> int:
        """Effective totemsrp MTU: netmtu less two MCAST headers (1410 by default)."""
        return self.netmtu - 2 * 45 - self.transport_overhead

    @property
    def pg_max_packet(self) -> int:
        """Bytes of totempg (lengths + data) per MCAST: net_mtu − 8 (1402 by default)."""
        return self.net_mtu - 8

    @property
    def send_queue_max(self) -> int:
        """MESSAGE_QUEUE_MAX: packets the new-message queue holds (2974 by default)."""
        return MESSAGE_QUEUE_MAX_BYTES // self.net_mtu


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
