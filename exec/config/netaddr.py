"""Address helpers for the config loader: local interface addresses, name resolution
with corosync's ``ip_version`` preference, and IPv4-derived node ids.

Kept apart from the model because it is the only part that touches the operating system
(``getifaddrs`` through ctypes, ``getaddrinfo``); tests pass addresses explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import socket

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IpAddress | None:
    """An IP literal (IPv6 scope suffix ``%eth0`` ignored), or None for anything else."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


#: corosync ip_version → address families to try, in order
FAMILY_ORDER = {
    "ipv4": (socket.AF_INET,),
    "ipv6": (socket.AF_INET6,),
    "ipv6-4": (socket.AF_INET6, socket.AF_INET),
    "ipv4-6": (socket.AF_INET, socket.AF_INET6),
}


def resolve(text: str, ip_version: str) -> IpAddress | None:
    """``text`` as an address usable with ``ip_version`` (literal or resolved), else None.

    Like corosync's ``totemip_parse``: a literal of a family the ip_version does not allow
    is refused; names are resolved trying the families in preference order.
    """
    families = FAMILY_ORDER[ip_version]
    literal = parse_ip(text)
    if literal is not None:
        family = socket.AF_INET if literal.version == 4 else socket.AF_INET6
        return literal if family in families else None
    for family in families:
        try:
            infos = socket.getaddrinfo(text, None, family, socket.SOCK_DGRAM)
        except (OSError, UnicodeError):
            continue
        for info in infos:
            addr = parse_ip(str(info[4][0]))
            if addr is not None:
                return addr
    return None


def nodeid_from_ipv4(text: str, clear_high_bit: bool) -> int | None:
    """corosync's generated node id: the IPv4 address as a big-endian u32 (or None).

    Only IPv4 qualifies (names resolved as IPv4); ``clear_node_high_bit`` masks bit 31 so
    the id stays positive for software that stores it in a signed int.
    """
    addr = resolve(text, "ipv4")
    if addr is None:
        return None
    nodeid = int(addr)
    return nodeid & 0x7FFFFFFF if clear_high_bit else nodeid


class _SockAddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 26)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)),
    ("ifa_ifu", ctypes.POINTER(_SockAddr)),
    ("ifa_data", ctypes.c_void_p),
]


def local_addresses() -> list[str]:
    """Every IPv4/IPv6 address configured on this machine's interfaces (getifaddrs)."""
    addrs: list[str] = []
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        head = ctypes.POINTER(_IfAddrs)()
        if libc.getifaddrs(ctypes.byref(head)) != 0:
            raise OSError(ctypes.get_errno(), "getifaddrs failed")
    except (OSError, AttributeError):
        return ["127.0.0.1", "::1"]
    try:
        node = head
        while node:
            entry = node.contents
            if entry.ifa_addr:
                sa = entry.ifa_addr.contents
                data = bytes(sa.sa_data)
                if sa.sa_family == socket.AF_INET:
                    addrs.append(str(ipaddress.IPv4Address(data[2:6])))
                elif sa.sa_family == socket.AF_INET6:
                    addrs.append(str(ipaddress.IPv6Address(data[6:22])))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return addrs
