"""Parsed tree → typed cmap keys, the way corosync's reader stores a config file.

corosync does not keep the file's structure: it flattens it into cmap keys while reading
(``exec/coroparse.c``), and everything else reads those keys.  We do the same so that
``cmap_entries()`` matches the real daemon's ``corosync-cmapctl`` dump key for key.  The
facts reproduced here:

* items become ``section.subsection.key`` strings, except a fixed set of numeric keys
  stored as UINT8/UINT16/UINT32/INT32/UINT64 after a range check whose failure message is
  corosync's (``Value of key "totem.token" is expected to be integer in range
  (0..4294967295), but "banana" was given``);
* ``totem { interface { linknumber: N ... } }`` becomes ``totem.interface.N.*``;
* the K-th ``nodelist { node { ... } }`` becomes ``nodelist.node.K.*``;
* ``logging { logger_subsys { subsys: X ... } }`` becomes ``logging.logger_subsys.X.*``;
* ``uidgid { uid: U }`` becomes ``uidgid.config.uid.<numeric uid> = 1`` (UINT8);
* a key given twice keeps the last value.

Every key remembers the line it came from, so later checks can point at it.
"""

from __future__ import annotations

import grp
import pwd
import re
from typing import Any

from attrs import define

from ..cmap import CmapError, CmapType, check_key_name, int_range
from .errors import ConfigError
from .parser import Item, Section


@define
class ConfKey:
    """One cmap key read from (or derived for) the configuration."""

    key: str
    value: Any
    type: CmapType
    #: line in the file, None for keys the loader derives (generated nodeid, …)
    line: int | None = None


_U32 = CmapType.UINT32
_U8 = CmapType.UINT8
_U16 = CmapType.UINT16
_I32 = CmapType.INT32
_U64 = CmapType.UINT64

#: totem.* keys coroparse stores as numbers; everything else in totem is a string
TOTEM_TYPED: dict[str, CmapType] = {
    **{
        k: _U32
        for k in (
            "version nodeid threads token token_coefficient token_retransmit token_warning hold "
            "token_retransmits_before_loss_const join send_join consensus merge downcheck "
            "fail_recv_const seqno_unchanged_const rrp_token_expired_timeout "
            "rrp_problem_count_timeout rrp_problem_count_threshold "
            "rrp_problem_count_mcast_threshold rrp_autorecovery_check_timeout "
            "heartbeat_failures_allowed max_network_delay window_size max_messages "
            "miss_count_const knet_pmtud_interval knet_mtu knet_compression_threshold netmtu"
        ).split()
    },
    "knet_compression_level": _I32,
    "config_version": _U64,
}
INTERFACE_TYPED: dict[str, CmapType] = {
    "linknumber": _U8,
    "mcastport": _U16,
    "ttl": _U8,
    "knet_link_priority": _U8,
    "knet_ping_interval": _U32,
    "knet_ping_timeout": _U32,
    "knet_ping_precision": _U32,
    "knet_pong_count": _U32,
}
INTERFACE_STRINGS = ("bindnetaddr", "mcastaddr", "broadcast", "knet_transport")
QUORUM_TYPED: dict[str, CmapType] = {
    **{k: _U32 for k in ("expected_votes", "votes", "last_man_standing_window", "leaving_timeout")},
    **{
        k: _U8
        for k in (
            "two_node expected_votes_tracking allow_downscale wait_for_all auto_tie_breaker "
            "last_man_standing"
        ).split()
    },
}
QDEVICE_TYPED: dict[str, CmapType] = {
    "timeout": _U32,
    "sync_timeout": _U32,
    "votes": _U32,
    "master_wins": _U8,
}
NODE_TYPED: dict[str, CmapType] = {"nodeid": _U32, "quorum_votes": _U32}

#: string options coroparse checks against a fixed list while reading (parser errors)
ENUM_CHECKS: dict[str, tuple[tuple[str, ...], str]] = {
    "totem.ip_version": (("ipv4", "ipv6", "ipv6-4", "ipv4-6"), "Invalid ip_version type"),
    "totem.crypto_cipher": (
        ("none", "aes256", "aes192", "aes128"),
        "Invalid cipher type. Should be none, aes256, aes192 or aes128",
    ),
    "totem.crypto_hash": (
        ("none", "md5", "sha1", "sha256", "sha384", "sha512"),
        "Invalid hash type. Should be none, md5, sha1, sha256, sha384 or sha512",
    ),
    "system.qb_ipc_type": (("native", "shm", "socket"), "Invalid system.qb_ipc_type"),
    "system.sched_rr": (("yes", "no"), "Invalid system.sched_rr value"),
    "system.move_to_root_cgroup": (("yes", "no", "auto"), "Invalid system.move_to_root_cgroup"),
    "system.allow_knet_handle_fallback": (("yes", "no"), "Invalid system.allow_knet_handle_fallback"),
}

# strtoll/strtoull accept leading C whitespace and a sign
_INT_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


@define
class KeyMap:
    """The flat keys of one configuration file plus where sections started."""

    path: str
    keys: dict[str, ConfKey]
    #: dotted section path (``nodelist``, ``nodelist.node.1``, ``totem.interface.0``) → line
    section_lines: dict[str, int]
    #: warnings about things we keep but do not use (unknown options …)
    warnings: list[str]

    def get(self, key: str) -> ConfKey | None:
        return self.keys.get(key)

    def value(self, key: str, default: Any = None) -> Any:
        entry = self.keys.get(key)
        return default if entry is None else entry.value

    def line(self, key: str) -> int | None:
        entry = self.keys.get(key)
        return None if entry is None else entry.line

    def set(self, key: str, value: Any, t: CmapType, line: int | None = None) -> None:
        self.keys[key] = ConfKey(key, value, t, line)

    def prefixed(self, prefix: str) -> list[ConfKey]:
        return [v for k, v in sorted(self.keys.items()) if k.startswith(prefix)]


class _Reader:
    """Walks the tree once, keeping coroparse's notion of which section we are in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.out = KeyMap(path=path, keys={}, section_lines={}, warnings=[])
        self.node_number = 0

    # -- helpers -----------------------------------------------------------------------
    def error(self, message: str, line: int, key: str | None = None) -> ConfigError:
        return ConfigError(message, path=self.path, line=line, key=key, parser_style=True)

    def to_int(self, key_name: str, item: Item, t: CmapType) -> int:
        lo, hi = int_range(t)
        m = _INT_RE.fullmatch(item.value)
        value = int(m.group(1)) if m else None
        if value is None or not lo <= value <= hi:
            raise self.error(
                f'Value of key "{key_name}" is expected to be integer in range ({lo}..{hi}), '
                f'but "{item.value}" was given',
                item.line,
                key_name,
            )
        return value

    def store(self, key: str, value: Any, t: CmapType, line: int) -> None:
        """Keep a key, refusing names cmap would refuse (as corosync's icmap_set does)."""
        try:
            check_key_name(key)
        except CmapError:
            raise self.error(
                f'Can\'t store key "{key}" into icmap, returned error is CS_ERR_NAME_TOO_LONG', line, key
            ) from None
        self.out.set(key, value, t, line)

    def put(self, key: str, item: Item, t: CmapType | None = None) -> None:
        if t is None or t is CmapType.STRING:
            self.store(key, item.value, CmapType.STRING, item.line)
        else:
            self.store(key, self.to_int(key, item, t), t, item.line)

    # -- walking -------------------------------------------------------------------------
    def read(self, root: Section) -> KeyMap:
        for child in root.children:
            if isinstance(child, Item):
                self.put(child.key, child)
            else:
                self.section(child)
        return self.out

    def section(self, sec: Section) -> None:
        self.out.section_lines.setdefault(sec.path, sec.line)
        p = sec.path
        if p == "totem.interface":
            return self.interface(sec)
        if p in ("logging.logger_subsys", "logging.logging_daemon"):
            return self.logger(sec)
        if p == "uidgid":
            return self.uidgid(sec)
        if p == "nodelist":
            self.node_number = 0
        if p == "nodelist.node":
            return self.node(sec)
        for child in sec.children:
            if isinstance(child, Section):
                self.section(child)
            else:
                self.item(sec.path, child)

    def item(self, sec_path: str, item: Item) -> None:
        key = f"{sec_path}.{item.key}"
        top = sec_path.split(".", 1)[0]
        t: CmapType | None = None
        if sec_path == "totem":
            t = TOTEM_TYPED.get(item.key)
        elif sec_path == "quorum":
            t = QUORUM_TYPED.get(item.key)
        elif sec_path == "quorum.device":
            t = QDEVICE_TYPED.get(item.key)
        elif sec_path == "pload" and item.key in ("count", "size"):
            t = _U32
        elif sec_path == "resources" and item.key == "watchdog_timeout":
            t = _U32
        elif top == "resources" and sec_path.startswith(("resources.system", "resources.process")):
            if item.key == "poll_period":
                t = _U64
        check = ENUM_CHECKS.get(key)
        if check is not None and item.value not in check[0]:
            raise self.error(check[1], item.line, key)
        self.put(key, item, t)

    def interface(self, sec: Section) -> None:
        link = 0
        values: list[tuple[str, Item]] = []
        members: list[Item] = []
        for child in sec.children:
            if isinstance(child, Section):
                if child.path != "totem.interface.member":
                    self.section(child)
                    continue
                for sub in child.children:
                    if isinstance(sub, Section):
                        self.section(sub)
                    elif sub.key != "memberaddr":
                        raise self.error("Only memberaddr is allowed in member section", sub.line)
                    else:
                        members.append(sub)
                continue
            if child.key == "linknumber":
                link = self.to_int("totem.interface.linknumber", child, _U8)
            elif child.key in INTERFACE_TYPED:
                # validated now (message names the unnumbered key, as corosync does)
                self.to_int(f"totem.interface.{child.key}", child, INTERFACE_TYPED[child.key])
                values.append((child.key, child))
            elif child.key in INTERFACE_STRINGS:
                values.append((child.key, child))
            else:
                # corosync stores unknown interface options unnumbered
                self.put(f"totem.interface.{child.key}", child)
        self.out.section_lines.setdefault(f"totem.interface.{link}", sec.line)
        for name, item in values:
            self.put(f"totem.interface.{link}.{name}", item, INTERFACE_TYPED.get(name))
        for i, item in enumerate(members):
            self.put(f"totem.interface.{link}.member.{i}", item)

    def logger(self, sec: Section) -> None:
        daemon = sec.path == "logging.logging_daemon"
        subsys: str | None = None
        name: str | None = None
        rest: list[Item] = []
        for child in sec.children:
            if isinstance(child, Section):
                self.section(child)
            elif child.key == "subsys":
                subsys = child.value
            elif daemon and child.key == "name":
                name = child.value
            else:
                rest.append(child)
        end = sec.end_line
        if not daemon:
            if subsys is None:
                raise self.error("No subsys key in logger_subsys directive", end)
            base = f"logging.logger_subsys.{subsys}"
            for item in rest:
                self.put(f"{base}.{item.key}", item)
            self.store(f"{base}.subsys", subsys, CmapType.STRING, sec.line)
            self.out.section_lines.setdefault(base, sec.line)
            return
        if name is None:
            raise self.error("No name key in logging_daemon directive", end)
        if name == "corosync":
            base = "logging" if subsys is None else f"logging.logger_subsys.{subsys}"
        else:
            base = f"logging.logging_daemon.{name}" + ("" if subsys is None else f".{subsys}")
        for item in rest:
            self.put(f"{base}.{item.key}", item)
        if subsys is None:
            if name != "corosync":
                self.store(f"{base}.name", name, CmapType.STRING, sec.line)
        else:
            self.store(f"{base}.subsys", subsys, CmapType.STRING, sec.line)
            if name != "corosync":
                self.store(f"{base}.name", name, CmapType.STRING, sec.line)

    def uidgid(self, sec: Section) -> None:
        for child in sec.children:
            if isinstance(child, Section):
                raise self.error("uidgid: Can't add subsection different than uidgid", child.line)
            if child.key == "uid":
                uid = _resolve_id(child.value, "user", pwd.getpwnam, self, child.line)
                self.store(f"uidgid.config.uid.{uid}", 1, _U8, child.line)
            elif child.key == "gid":
                gid = _resolve_id(child.value, "group", grp.getgrnam, self, child.line)
                self.store(f"uidgid.config.gid.{gid}", 1, _U8, child.line)
            else:
                raise self.error("uidgid: Only uid and gid are allowed items", child.line)

    def node(self, sec: Section) -> None:
        n = self.node_number
        base = f"nodelist.node.{n}"
        self.out.section_lines[base] = sec.line
        for child in sec.children:
            if isinstance(child, Section):
                self.section(child)
            else:
                self.put(f"{base}.{child.key}", child, NODE_TYPED.get(child.key))
        self.node_number += 1


def _resolve_id(value: str, what: str, lookup: Any, reader: _Reader, line: int) -> int:
    if value.isdigit() and int(value) <= 2**32 - 1:
        return int(value)
    try:
        entry = lookup(value)
    except KeyError:
        where = "/etc/passwd" if what == "user" else "/etc/group"
        raise reader.error(
            f"The '{value}' {what} is not found in {where}, please read the documentation.", line
        ) from None
    return int(entry.pw_uid if what == "user" else entry.gr_gid)


def read_keys(root: Section, path: str) -> KeyMap:
    """Flatten a parsed tree into typed keys (raises parser-style :class:`ConfigError`)."""
    return _Reader(path).read(root)
