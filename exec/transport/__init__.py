"""Totem transports: udpu (:mod:`.udpu`), udp multicast (:mod:`.udp`), and the optional
crypto envelope (:mod:`.crypto`).  :func:`make_transport` picks one from a loaded config."""

from __future__ import annotations

from typing import Any

from .base import LogFn, Transport, TransportStats

__all__ = ["make_transport", "Transport", "TransportStats"]


def make_transport(config: Any, *, envelope: Any = None, log: LogFn | None = None) -> Transport:
    """Build (not open) the transport for a ``CorosyncConfig``.

    Raises ValueError for combinations we cannot run (knet, mixed address families)."""
    totem = config.totem
    kind = str(getattr(totem, "transport", "udpu"))
    members = [(n.nodeid, n.ring0_addr) for n in config.nodes]
    local_ip = config.local_node.ring0_addr
    port = int(getattr(totem, "mcastport", 5405) or 5405)
    if kind == "udpu":
        from .udpu import UdpuTransport

        block = getattr(config.totem_config, "block_unlisted_ips", True)
        return UdpuTransport(local_ip, port, members, envelope=envelope,
                             block_unlisted_ips=bool(block), log=log)
    if kind == "udp":
        from .udp import UdpTransport

        mcastaddr = getattr(totem, "mcastaddr", None)
        if not mcastaddr:
            raise ValueError("transport udp needs totem.interface.mcastaddr")
        return UdpTransport(local_ip, port, str(mcastaddr), members,
                            ttl=int(getattr(totem, "ttl", 1) or 1), envelope=envelope, log=log)
    raise ValueError(f"transport {kind} is not supported by this implementation; use udpu or udp")
