"""Configuration reload (``corosync-cfgtool -R``): new file → cmap + live Totem/transport/log.

The cfg service's RELOAD_CONFIG exec message makes every node call the executive's
``reload_config`` hook; this module is that hook's logic, kept apart from the daemon so it
can be tested with plain objects.  It works in three steps:

1. **read**: :func:`read_new_config` re-reads the file the daemon was started with (the
   embedded default text reloads as itself).  An unreadable file or a syntax error is a
   *parse error*: logged as ``Unable to reload config file: …`` and answered
   CS_ERR_INVALID_PARAM, with nothing changed.  Any other problem (timers out of range,
   a node whose address changed…) is a *validation error*: ``Configuration is not valid:
   …``, also CS_ERR_INVALID_PARAM, and — as in corosync — ``config.reload_status`` says so.
2. **plan**: :func:`plan_reload` compares the new file's keys with the cmap store (not with
   the old file: an operator may have changed keys at run time, corosync compares with the
   live map too) and with the live Totem values, and returns a :class:`ReloadPlan`.
3. **apply**: :func:`apply_plan` writes cmap between the two in-progress flags and pushes
   the new values into the running node through :class:`ReloadTargets`.

Facts from corosync 3.1.7 (exec/cfg.c, exec/totemconfig.c), observed on Debian's daemon:

* flag order: ``config.totemconfig_reload_in_progress``=1, parse, then
  ``config.reload_in_progress``=1, changes, then ``config.reload_status`` (i32, the
  cs_error_t: 1 = CS_OK, 7 = CS_ERR_INVALID_PARAM), totemconfig flag 0, reload flag 0.
  None of the three keys exists before the first reload;
* keys removed from the file are deleted from cmap under ``logging. totem. nodelist.
  quorum. uidgid.config. nozzle.``; every key of the new file is then set (same value: no
  notification);
* keys that cannot change at run time keep their value and each logs
  ``Modified entry '<key>' in corosync.conf cannot be changed at run-time`` (notice);
* Totem timers are re-derived (token + (N−2)·token_coefficient, token_retransmit, hold,
  consensus unless given) and published under ``runtime.config.totem.*``; the knet ping
  timers of the links (published even on udpu) are recomputed from the token in effect
  *before* the reload (token/2, token/4), an off-by-one-reload quirk of 3.1.7 kept so the
  keys match a real node's;
* interface keys derived at start-up (``totem.interface.0.bindnetaddr``, udp's
  ``mcastaddr``/``mcastport``) are not in a reloaded map, so they vanish from cmap;
* a nodelist entry whose node id stays but whose address changed fails the reload
  (``To reconfigure an interface it must be deleted and recreated…``);
* added/removed nodes become transport members (``adding new UDPU member {ip}`` /
  ``removing UDPU member {ip}``).

Deliberate differences (docs/corosync.conf.md, "Reloading"):

* on a parse error 3.1.7 leaves ``config.totemconfig_reload_in_progress`` at 1 for good
  (votequorum and qdevice then ignore run-time nodelist/quorum edits); we touch nothing;
* a validation error in 3.1.7 happens after keys removed from the file were already
  deleted from cmap; we validate first, so a failed reload changes no key (the flags and
  ``config.reload_status`` still go through the same values);
* corosync's run-time-fixed list names 2.x keys (``totem.interface.mcastaddr``) that never
  match in 3.x, so a changed ``totem.interface.0.mcastport`` lands in cmap while the
  socket keeps the old one; we refuse the per-link address/port keys with the same log line,
  so cmap never claims what the sockets do not do.  Removing a fixed key that *was in the
  file* is refused too (corosync deletes it from cmap silently);
* crypto keys are refused as by a corosync built without knet crypto reconfiguration: our
  udp/udpu crypto envelope cannot be swapped on a running ring.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Protocol

import attrs
from attrs import define, field

from ..lib.ipc import CsError
from .cmap import CmapType
from .config.errors import ConfigError
from .totem.config import TotemConfig
from .totem.events import LogLevel


KEY_RELOAD = "config.reload_in_progress"
KEY_TOTEM_RELOAD = "config.totemconfig_reload_in_progress"
KEY_STATUS = "config.reload_status"

#: cmap prefixes whose keys disappear when they disappear from the file (cfg.c)
DELETE_PREFIXES = ("logging.", "totem.", "nodelist.", "quorum.", "uidgid.config.", "nozzle.")

#: keys corosync 3.1.7 keeps at their start-up value (cfg.c remove_ro_entries, with the
#: crypto keys of a build without knet crypto reconfiguration) plus our own run_dir
FIXED_KEYS = frozenset((
    "totem.secauth", "totem.crypto_hash", "totem.crypto_cipher", "totem.crypto_model",
    "totem.keyfile", "totem.key", "totem.version", "totem.threads", "totem.ip_version",
    "totem.rrp_mode", "totem.netmtu", "totem.transport", "totem.cluster_name",
    "quorum.provider", "system.move_to_root_cgroup", "system.allow_knet_handle_fallback",
    "system.sched_rr", "system.priority", "system.qb_ipc_type", "system.state_dir",
    "system.run_dir",
))
#: per-link socket settings: our sockets are bound once (see the module docstring)
FIXED_KEY_RE = re.compile(
    r"^totem\.interface\.\d+\.(bindnetaddr|mcastaddr|mcastport|ttl|broadcast)$")

LogFn = Callable[[LogLevel, str, str], None]  # (level, subsys, message)


def is_fixed_key(key: str) -> bool:
    """Whether ``key`` keeps its start-up value across a reload."""
    return key in FIXED_KEYS or FIXED_KEY_RE.match(key) is not None


class ReloadInvalid(Exception):
    """The new file parses but cannot be applied; ``lines`` are logged (error) first,
    then ``"<prefix>: <str(self)>"``."""

    def __init__(self, prefix: str, message: str, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.prefix = prefix
        self.lines = lines


@define
class ReloadPlan:
    """What a reload changes; computed without side effects by :func:`plan_reload`."""

    #: cmap keys to (re)write, in cmap order: (key, value, type)
    sets: list[tuple[str, Any, CmapType]] = field(factory=list)
    #: cmap keys to delete (gone from the file)
    deletes: list[str] = field(factory=list)
    #: run-time-fixed keys whose change is refused (each logged)
    refused: list[str] = field(factory=list)
    #: the Totem values to run with from now on
    totem_config: TotemConfig | None = None
    #: transport members to add / remove: (nodeid, ip)
    added: list[tuple[int, str]] = field(factory=list)
    removed: list[tuple[int, str]] = field(factory=list)
    #: the new ``logging`` section when it differs from the running one, else None
    logging: Any = None


class ReloadTargets(Protocol):
    """The running objects a reload reconfigures (exec/node.py ``Node`` implements it)."""

    def apply_totem_config(self, config: TotemConfig) -> None:
        """Use these timers/constants from now on (netmtu stays)."""

    def add_member(self, nodeid: int, ip: str) -> None:
        """A node joined the nodelist: send to it, accept its datagrams."""

    def remove_member(self, nodeid: int, ip: str) -> None:
        """A node left the nodelist."""

    def configure_logging(self, settings: Any) -> None:
        """Apply a new ``logging`` section (raises OSError if a logfile cannot be opened)."""


# ---------------------------------------------------------------------------------------
# step 1: read
# ---------------------------------------------------------------------------------------
def read_new_config(path: str | None, text: str | None = None,
                    loader: Callable[..., Any] | None = None) -> Any:
    """Parse the configuration again: ``path`` (re-read from disk) or, for a daemon started
    on the embedded default, ``text``.  Raises ConfigError; an unreadable file becomes a
    ``parser_style`` error like a syntax error (both are parse errors for corosync)."""
    if loader is None:
        from .config.model import load_config

        loader = load_config
    if text is None:
        assert path is not None
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="surrogateescape")
        except OSError as exc:
            err = ConfigError(f"Can't read file {path}: {exc.strerror}", path=path)
            err.parser_style = False
            err.unreadable = True  # type: ignore[attr-defined]
            raise err from None
    return loader(path, text=text)


def is_parse_error(exc: ConfigError) -> bool:
    """Syntax, integer-range and read errors (corosync's coroparse stage)."""
    return bool(exc.parser_style or getattr(exc, "unreadable", False))


# ---------------------------------------------------------------------------------------
# step 2: plan
# ---------------------------------------------------------------------------------------
def _addresses(config: Any) -> dict[int, str]:
    from .transport import node_address

    ip_version = str(getattr(config.totem, "ip_version", "ipv6-4") or "ipv6-4")
    out: dict[int, str] = {}
    for node in config.nodes:
        if node.ring0_addr is None:
            continue
        try:
            out[node.nodeid] = node_address(node.ring0_addr, ip_version)
        except ValueError:
            out[node.nodeid] = str(node.ring0_addr)
    return out


def _derived(config: Any, key: str) -> bool:
    """A key the loader made up (no line in the file), e.g. ``totem.interface.0.bindnetaddr``."""
    entry = config.keymap.get(key)
    return entry is not None and entry.line is None


def _values_equal(cmap: Any, key: str, value: Any, t: CmapType) -> bool:
    if key not in cmap:
        return False
    entry = cmap.get_entry(key)
    return bool(entry.type == t and entry.value == value)


def plan_reload(old: Any, new: Any, cmap: Any, live_totem: TotemConfig) -> ReloadPlan:
    """Compare the new configuration with the cmap store and the live values.

    ``old`` is the configuration the node runs with (its node id, addresses and logging),
    ``new`` the freshly parsed one.  Raises :class:`ReloadInvalid` when the new nodelist
    cannot be applied (this node's id changed, a node's address changed)."""
    if new.local_node.nodeid != old.local_node.nodeid:
        raise ReloadInvalid(
            "Configuration is not valid",
            f"parse error in config: this node's nodeid cannot change at run-time "
            f"({old.local_node.nodeid} -> {new.local_node.nodeid})")
    old_addrs = _addresses(old)
    new_addrs = _addresses(new)
    moved = [f"new config has different address for link 0 (addr changed from "
             f"{old_addrs[nid]} to {ip}). Internal value was NOT changed."
             for nid, ip in sorted(new_addrs.items())
             if nid in old_addrs and old_addrs[nid] != ip]
    if moved:
        raise ReloadInvalid(
            "Cannot configure new interface definitions",
            "To reconfigure an interface it must be deleted and recreated. A working "
            "interface needs to be available to corosync at all times", tuple(moved))

    plan = ReloadPlan()
    # Interface keys the loader derives at start-up (bindnetaddr from the local node, udp's
    # mcastaddr/mcastport) are not part of a reload: 3.1.7 deletes them from cmap then
    # (observed), while the sockets keep using them.
    wanted: dict[str, tuple[Any, CmapType]] = {
        k.key: (k.value, k.type) for k in new.keymap.keys.values()
        if not (k.line is None and FIXED_KEY_RE.match(k.key))}
    # runtime.config.totem.*: the re-derived timers …
    for key, value, t in new.runtime_entries:
        if not key.startswith("runtime.config.totem.interface."):
            wanted[key] = (value, t)
    # … and the links' knet ping timers, which 3.1.7 recomputes from the token in effect
    # *before* the reload (observed: token 300 → 700 → 800 leaves 350/175) unless set
    for link, iface in sorted(getattr(new.totem, "interfaces", {}).items()):
        pong = int(getattr(iface, "knet_pong_count", 0) or 2)
        base = f"totem.interface.{link}."
        for name, value in (("knet_ping_timeout", live_totem.token // pong),
                            ("knet_ping_interval", live_totem.token // (pong * 2))):
            explicit = new.keymap.get(base + name)
            if explicit is not None and explicit.value:
                value = int(explicit.value)
            wanted[f"runtime.config.{base}{name}"] = (value, CmapType.UINT32)

    for prefix in DELETE_PREFIXES:
        for key in cmap.keys(prefix):
            if key in wanted:
                continue
            if is_fixed_key(key) and not _derived(old, key):
                plan.refused.append(key)  # removed from the file: kept, and said so
            else:
                plan.deletes.append(key)
    for key in sorted(wanted):
        value, t = wanted[key]
        if _values_equal(cmap, key, value, t):
            continue
        if is_fixed_key(key):
            plan.refused.append(key)
            continue
        plan.sets.append((key, value, t))
    plan.refused.sort()

    plan.totem_config = attrs.evolve(new.totem_config, netmtu=live_totem.netmtu,
                                     transport_overhead=live_totem.transport_overhead)
    plan.removed = sorted((nid, ip) for nid, ip in old_addrs.items() if nid not in new_addrs)
    plan.added = sorted((nid, ip) for nid, ip in new_addrs.items() if nid not in old_addrs)
    if attrs.has(type(new.logging)) and attrs.has(type(old.logging)):
        if attrs.asdict(new.logging) != attrs.asdict(old.logging):
            plan.logging = new.logging
    elif new.logging != old.logging:
        plan.logging = new.logging
    return plan


# ---------------------------------------------------------------------------------------
# step 3: apply
# ---------------------------------------------------------------------------------------
def _set_flag(cmap: Any, key: str, value: int) -> None:
    cmap.set(key, value, CmapType.UINT8)


def _finish(cmap: Any, status: int) -> None:
    cmap.set(KEY_STATUS, int(status), CmapType.INT32)
    _set_flag(cmap, KEY_TOTEM_RELOAD, 0)
    _set_flag(cmap, KEY_RELOAD, 0)


def apply_plan(plan: ReloadPlan, cmap: Any, targets: ReloadTargets, log: LogFn) -> None:
    """Write cmap and reconfigure the live objects (between the two flags)."""
    for key in plan.refused:
        log(LogLevel.NOTICE, "CFG",
            f"Modified entry '{key}' in corosync.conf cannot be changed at run-time")
    for key in plan.deletes:
        if key in cmap:
            cmap.delete(key)
    for key, value, t in plan.sets:
        cmap.set(key, value, t)
    if plan.totem_config is not None:
        targets.apply_totem_config(plan.totem_config)
    for nodeid, ip in plan.removed:
        log(LogLevel.DEBUG, "TOTEM", f"removing dynamic member {ip} for ring 0")
        targets.remove_member(nodeid, ip)
    for nodeid, ip in plan.added:
        log(LogLevel.DEBUG, "TOTEM", f"adding dynamic member {ip} for ring 0")
        targets.add_member(nodeid, ip)
    if plan.logging is not None:
        try:
            targets.configure_logging(plan.logging)
        except OSError as exc:
            log(LogLevel.ERROR, "MAIN", f"Can't open logfile '{exc.filename}' for reason: "
                                        f"{exc.strerror} ({exc.errno}); logging unchanged")


@define
class ReloadResult:
    status: int
    #: the configuration to compare the next reload with (None: keep the old one)
    config: Any = None
    plan: ReloadPlan | None = None


def reload_config(old: Any, read: Callable[[], Any], cmap: Any, targets: ReloadTargets,
                  live_totem: TotemConfig, log: LogFn) -> ReloadResult:
    """The whole reload on this node; returns the cs_error_t for the client (and the new
    configuration to keep).  Never raises for bad input: every failure is logged and
    answered CS_ERR_INVALID_PARAM."""
    try:
        new = read()
    except ConfigError as exc:
        if is_parse_error(exc):
            log(LogLevel.ERROR, "CFG", f"Unable to reload config file: {exc}")
            return ReloadResult(CsError.ERR_INVALID_PARAM)
        return _invalid(cmap, log, ReloadInvalid("Configuration is not valid",
                                                 f"parse error in config: {exc}"))
    except Exception as exc:  # a loader bug: refuse the reload, never crash the node
        log(LogLevel.ERROR, "CFG", f"Unable to reload config file: {exc!r}")
        return ReloadResult(CsError.ERR_INVALID_PARAM)
    try:
        plan = plan_reload(old, new, cmap, live_totem)
    except ReloadInvalid as exc:
        return _invalid(cmap, log, exc)
    except Exception as exc:  # same: a bug in planning changes nothing
        return _invalid(cmap, log, ReloadInvalid("Configuration is not valid", repr(exc)))
    _set_flag(cmap, KEY_TOTEM_RELOAD, 1)
    _set_flag(cmap, KEY_RELOAD, 1)
    try:
        apply_plan(plan, cmap, targets, log)
    except Exception as exc:  # a bug must not leave the flags up
        log(LogLevel.ERROR, "CFG", f"Error making new config live. cmap database may be "
                                   f"inconsistent: {exc!r}")
        _finish(cmap, CsError.ERR_INVALID_PARAM)
        return ReloadResult(CsError.ERR_INVALID_PARAM)
    _finish(cmap, CsError.OK)
    return ReloadResult(CsError.OK, new, plan)


def _invalid(cmap: Any, log: LogFn, exc: ReloadInvalid) -> ReloadResult:
    """A validation failure: logged, flags raised and dropped with the error status (what
    votequorum and qdevice see of a failed corosync reload), no key changed."""
    _set_flag(cmap, KEY_TOTEM_RELOAD, 1)
    for line in exc.lines:
        log(LogLevel.ERROR, "TOTEM", line)
    log(LogLevel.ERROR, "CFG", f"{exc.prefix}: {exc}")
    _set_flag(cmap, KEY_RELOAD, 1)
    _finish(cmap, CsError.ERR_INVALID_PARAM)
    return ReloadResult(CsError.ERR_INVALID_PARAM)


# ---------------------------------------------------------------------------------------
# run-time totem.* edits (corosync-cmapctl -s totem.token u32 5000)
# ---------------------------------------------------------------------------------------
#: totem.* keys corosync re-reads when they change at run time (totemconfig.c's volatile
#: parameters, plus token_coefficient which only feeds the token computation)
VOLATILE_TOTEM_KEYS = frozenset(f"totem.{name}" for name in (
    "token token_warning token_retransmit hold token_retransmits_before_loss_const join "
    "send_join consensus merge downcheck fail_recv_const seqno_unchanged_const "
    "heartbeat_failures_allowed max_network_delay window_size max_messages miss_count_const "
    "knet_pmtud_interval knet_mtu knet_compression_threshold knet_compression_level "
    "knet_compression_model block_unlisted_ips cancel_token_hold_on_retransmit "
    "token_coefficient").split())
_RING0_KEY = re.compile(r"^nodelist\.node\.\d+\.ring0_addr$")


class TotemKeyWatcher:
    """Apply run-time changes of the volatile ``totem.*`` keys, as corosync's
    totem_change_notify does: outside a full reload (``config.reload_in_progress`` 1: the
    reload applies everything at its end), any ADD/MODIFY/DELETE of such a key re-derives
    the timers from the live cmap (a deleted key falls back to its default), publishes
    ``runtime.config.totem.*`` and hands them to Totem.

    Difference: corosync applies values that fail its limits and only logs the error; we
    log the same error and keep running with the previous values."""

    def __init__(self, cmap: Any, targets: ReloadTargets,
                 live_totem: Callable[[], TotemConfig], log: LogFn) -> None:
        self.cmap = cmap
        self.targets = targets
        self.live_totem = live_totem
        self.log = log
        self.applied = 0
        from .cmap import Track

        self.handle = cmap.track_add("totem.", Track.ADD | Track.DELETE | Track.MODIFY
                                     | Track.PREFIX, self._changed)

    def close(self) -> None:
        self.cmap.track_delete(self.handle)

    def _changed(self, event: Any, key: str, new: Any, old: Any) -> None:
        if key not in VOLATILE_TOTEM_KEYS or self.cmap.get(KEY_RELOAD, 0):
            return
        try:
            self.apply()
        except Exception as exc:  # never let a cmap client's write crash the node
            self.log(LogLevel.ERROR, "TOTEM", f"Applying {key} failed: {exc!r}")

    def apply(self) -> None:
        from .config.model import timers_from_keys

        members = sum(1 for key in self.cmap.keys("nodelist.node.") if _RING0_KEY.match(key))
        keys = [(k, e.value, e.type) for k, e in self.cmap.iter_prefix("totem.")]
        try:
            config, runtime = timers_from_keys(keys, members)
        except ConfigError as exc:
            self.log(LogLevel.ERROR, "TOTEM", f"parse error in config: {exc.message} "
                                              f"(totem values unchanged)")
            return
        live = self.live_totem()
        config = attrs.evolve(config, netmtu=live.netmtu,
                              transport_overhead=live.transport_overhead)
        self.log(LogLevel.DEBUG, "TOTEM",
                 "Totem related config key changed. Dumping actual totem config.")
        for key, value, t in runtime:
            self.cmap.set(key, value, t)
        self.targets.apply_totem_config(config)
        self.applied += 1
