"""Totem transports: udpu (:mod:`.udpu`), udp multicast (:mod:`.udp`), and the optional
crypto envelope (:mod:`.crypto`).  :func:`make_transport` picks one from a loaded config."""

from __future__ import annotations

from typing import Any

from .base import LogFn, Transport, TransportStats

__all__ = ["make_transport", "node_address", "Transport", "TransportStats"]


def node_address(text: str, ip_version: str = "ipv6-4") -> str:
    """A nodelist ``ringX_addr`` as an IP literal: literals as they are, names resolved
    with corosync's ``ip_version`` family preference (the config loader already checked
    that they resolve)."""
    from ..config.netaddr import parse_ip, resolve

    literal = parse_ip(text)
    if literal is not None:
        return str(literal)
    ip = resolve(text, ip_version)
    if ip is None:
        raise ValueError(f"cannot resolve node address {text!r}")
    return str(ip)


def make_transport(config: Any, *, envelope: Any = None, log: LogFn | None = None) -> Transport:
    """Build (not open) the transport for a ``CorosyncConfig``.

    Raises ValueError for combinations we cannot run (knet, mixed address families)."""
    totem = config.totem
    kind = str(getattr(totem, "transport", "udpu"))
    ip_version = str(getattr(totem, "ip_version", "ipv6-4") or "ipv6-4")
    members = [(n.nodeid, node_address(n.ring0_addr, ip_version)) for n in config.nodes]
    local_ip = node_address(config.local_node.ring0_addr, ip_version)
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
