"""corosync.conf → a validated, typed configuration (:class:`CorosyncConfig`).

Pipeline: text → :func:`parser.parse` (syntax) → :func:`keys.read_keys` (typed cmap keys,
like corosync's reader) → :class:`_Builder` (corosync's totem-config rules: transport,
crypto and key file, interfaces, nodelist and node ids, local node, timers, checks).

The checks run in the order the real daemon runs them, so a file with several problems
reports the same first one.  Their messages keep corosync's wording (people search for
it) but add what corosync leaves out: the file, the line and the key.

Deliberate differences from corosync 3.1.7 (documented in docs/corosync.conf.md):

* crypto on udp/udpu is *accepted* (corosync 2.4 envelope, Python nodes only), the key
  is still read and checked exactly like corosync (≥ 1024 bits, ≤ 4096 bytes);
* transport knet (corosync 3's default when ``transport`` is absent) is refused after
  the key checks, with a clear message;
* ``system.run_dir`` (pid file, IPC rendezvous) is ours; ``COROSYNC_RUN_DIR`` overrides it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any

from attrs import define, field

from ..cmap import CmapType
from ..totem.config import MINIMUM_TIMEOUT, MINIMUM_TIMEOUT_HOLD, TotemConfig, derive
from .default import DEFAULT_CONFIG_TEXT
from .errors import ConfigError
from .keys import ConfKey, KeyMap, read_keys
from .netaddr import local_addresses, nodeid_from_ipv4, parse_ip, resolve
from .parser import parse

DEFAULT_CONFIG_PATH = "/etc/corosync/corosync.conf"
DEFAULT_AUTHKEY = "/etc/corosync/authkey"
DEFAULT_STATE_DIR = "/var/lib/corosync"
DEFAULT_RUN_DIR = "/run"
DEFAULT_PORT = 5405
INTERFACE_MAX = 8
#: corosync 3 key length limits (KNET_MIN_KEY_LEN / KNET_MAX_KEY_LEN), bytes
KEY_LEN_MIN = 128
KEY_LEN_MAX = 4096
#: knet defaults that still show up in runtime.config.totem.* on udp/udpu
KNET_PONG_COUNT = 2
KNET_PMTUD_INTERVAL = 30

TRANSPORTS = ("udpu", "udp", "knet")
CIPHERS = ("none", "aes256", "aes192", "aes128")
HASHES = ("none", "md5", "sha1", "sha256", "sha384", "sha512")
SYSLOG_FACILITIES = (
    "daemon local0 local1 local2 local3 local4 local5 local6 local7 "
    "auth authpriv cron kern lpr mail news syslog user uucp ftp"
).split()
PRIORITIES = "alert crit debug emerg err error info notice warning".split()

#: timer keys where 0 means "use the default" (corosync's allow_zero = 0)
_ZERO_MEANS_DEFAULT = (
    "token token_retransmits_before_loss_const max_network_delay window_size max_messages "
    "miss_count_const token_retransmit hold join consensus merge downcheck fail_recv_const "
    "seqno_unchanged_const"
).split()
_ZERO_ALLOWED = ("token_warning", "send_join", "heartbeat_failures_allowed")
#: the order corosync writes runtime.config.totem.* does not matter (cmap sorts); names do
_RUNTIME_U32 = (
    "token token_retransmit hold token_retransmits_before_loss_const join send_join consensus "
    "merge downcheck fail_recv_const seqno_unchanged_const heartbeat_failures_allowed "
    "max_network_delay window_size max_messages miss_count_const token_warning"
).split()


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------
@define
class NodeEntry:
    """One ``nodelist { node { } }`` entry (index = position in the file, from 0)."""

    index: int
    nodeid: int
    name: str | None = None
    ring0_addr: str | None = None
    ring1_addr: str | None = None
    quorum_votes: int = 1
    #: every ringX_addr by link number (ring0_addr is addrs[0])
    addrs: dict[int, str] = field(factory=dict)
    #: True when nodeid was derived from the IPv4 ring0_addr
    nodeid_generated: bool = False
    line: int | None = None


@define
class InterfaceSettings:
    """Effective settings of one link (only link 0 exists on udp/udpu)."""

    linknumber: int
    bindnetaddr: str | None = None
    mcastaddr: str | None = None
    mcastport: int = DEFAULT_PORT
    ttl: int = 1
    knet_ping_interval: int = 0
    knet_ping_timeout: int = 0
    knet_pong_count: int = KNET_PONG_COUNT


@define
class TotemSettings:
    """The ``totem`` section, effective values (timers live in ``CorosyncConfig.totem_config``)."""

    version: int = 0
    cluster_name: str | None = None
    transport: str = "knet"
    ip_version: str = "ipv6-4"
    #: link 0 (udp: derived from cluster_name when not configured, see spec §1.4)
    mcastaddr: str | None = None
    mcastport: int = DEFAULT_PORT
    ttl: int = 1
    bindnetaddr: str | None = None
    broadcast: bool = False
    crypto_cipher: str = "none"
    crypto_hash: str = "none"
    crypto_model: str = "nss"
    secauth: str | None = None
    #: effective key file: ``totem.keyfile``, else (no inline key) $COROSYNC_TOTEM_AUTHKEY_FILE
    #: or /etc/corosync/authkey; None when only an inline key is given
    keyfile: str | None = None
    #: inline ``totem.key`` when it is the key in use (None when totem.keyfile is set: it wins)
    key: str | None = None
    #: the private key bytes (file content up to 4096 bytes, or the inline key); None without crypto
    private_key: bytes | None = None
    netmtu: int = 1500
    config_version: int | None = None
    clear_node_high_bit: bool = False
    block_unlisted_ips: bool = True
    cancel_token_hold_on_retransmit: bool = False
    link_mode: str = "passive"
    interfaces: dict[int, InterfaceSettings] = field(factory=dict)

    @property
    def crypto_enabled(self) -> bool:
        return self.crypto_cipher != "none" or self.crypto_hash != "none"


@define
class LoggingSettings:
    """The ``logging`` section (defaults as corosync: stderr and syslog on, hires stamps)."""

    to_stderr: bool = True
    to_logfile: bool = False
    logfile: str | None = None
    to_syslog: bool = True
    syslog_facility: str = "daemon"
    syslog_priority: str = "info"
    logfile_priority: str = "info"
    debug: str = "off"
    timestamp: str = "hires"
    fileline: bool = False
    function_name: bool = False
    blackbox: bool = True
    #: subsystem name (``TOTEM``, ``QUORUM`` …) → its overriding options, as written
    logger_subsys: dict[str, dict[str, str]] = field(factory=dict)


@define
class SystemSettings:
    """The ``system`` section plus our run_dir."""

    state_dir: str = DEFAULT_STATE_DIR
    run_dir: str = DEFAULT_RUN_DIR
    qb_ipc_type: str = "native"
    sched_rr: bool = True
    priority: str | None = None
    move_to_root_cgroup: str = "auto"
    allow_knet_handle_fallback: bool = False


@define
class CorosyncConfig:
    """A loaded, validated configuration."""

    path: str
    totem: TotemSettings
    totem_config: TotemConfig
    nodes: list[NodeEntry]
    local_node: NodeEntry
    logging: LoggingSettings
    quorum: dict[str, str]
    system: SystemSettings
    resources: dict[str, str]
    uidgid: dict[str, str]
    warnings: list[str]
    #: every key as corosync stores it (file keys + derived keys)
    keymap: KeyMap
    #: runtime.config.totem.* entries (key, value, type)
    runtime_entries: list[tuple[str, Any, CmapType]]

    def cmap_entries(self) -> list[tuple[str, Any, CmapType]]:
        """Every key the real daemon stores from its config, sorted like cmap."""
        out = [(k.key, k.value, k.type) for k in self.keymap.keys.values()]
        out.extend(self.runtime_entries)
        out.sort(key=lambda e: e[0])
        return out

    def node_by_id(self, nodeid: int) -> NodeEntry | None:
        return next((n for n in self.nodes if n.nodeid == nodeid), None)


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------
def default_config_text() -> str:
    """The embedded single-node loopback configuration (``conf/corosync.conf.example``)."""
    return DEFAULT_CONFIG_TEXT


def config_path_from_env() -> str:
    """``COROSYNC_MAIN_CONFIG_FILE`` or ``/etc/corosync/corosync.conf``."""
    return os.environ.get("COROSYNC_MAIN_CONFIG_FILE") or DEFAULT_CONFIG_PATH


def load_config(
    path: str | None = None,
    *,
    text: str | None = None,
    local_addrs: Iterable[str] | None = None,
) -> CorosyncConfig:
    """Read, parse and validate a corosync.conf; raise :class:`ConfigError` on any problem.

    ``path`` None → ``COROSYNC_MAIN_CONFIG_FILE``, else ``/etc/corosync/corosync.conf``.
    ``text`` parses a string instead of reading (``path`` then only names it in messages).
    ``local_addrs`` are this machine's addresses used to find the local node; default:
    ``COROSYNC_LOCAL_ADDRS`` (comma separated, our extension for clusters on one host),
    else every interface address (getifaddrs) plus a match of the host name.
    """
    if text is None:
        path = path or config_path_from_env()
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ConfigError(f"Can't read file {path}: {e.strerror}", path=path) from None
        text = raw.decode("utf-8", errors="surrogateescape")
    else:
        path = path or "<text>"
    root = parse(text, path)
    keymap = read_keys(root, path)
    use_hostname = False
    if local_addrs is None:
        env = os.environ.get("COROSYNC_LOCAL_ADDRS")
        if env:
            local_addrs = [a.strip() for a in env.split(",") if a.strip()]
        else:
            local_addrs = local_addresses()
            use_hostname = True
    return _Builder(keymap, list(local_addrs), use_hostname).build()


def timers_from_keys(
    keys: Iterable[tuple[str, Any, CmapType]], member_count: int, path: str = "cmap"
) -> tuple[TotemConfig, list[tuple[str, Any, CmapType]]]:
    """Totem timers from ``totem.*`` keys as they are *now* (e.g. the live cmap after an
    operator's ``corosync-cmapctl -s totem.token u32 5000``), with the same defaults,
    derivations and limits as at start-up (corosync re-reads its volatile totem values
    from cmap the same way).  Returns the config and its ``runtime.config.totem.*``
    entries (link ping timers left out: they are fixed at start).  Raises ConfigError."""
    km = KeyMap(path=path, keys={}, section_lines={}, warnings=[])
    for key, value, t in keys:
        km.set(key, value, t)
    builder = _Builder(km, [], False)
    totem = TotemSettings()
    totem.netmtu = builder.n("totem.netmtu") or 1500
    totem.block_unlisted_ips = builder.yes_no("totem.block_unlisted_ips", True)
    totem.cancel_token_hold_on_retransmit = builder.yes_no(
        "totem.cancel_token_hold_on_retransmit", False)
    nodes = [NodeEntry(index=i, nodeid=i + 1, addrs={0: ""}) for i in range(member_count)]
    return builder.read_timers(totem, nodes)


class _Builder:
    """Applies corosync's totem-config rules to the flat keys of one file."""

    def __init__(self, km: KeyMap, local_addrs: list[str], use_hostname: bool) -> None:
        self.km = km
        self.path = km.path
        self.local_addrs = {a for a in (parse_ip(x) for x in local_addrs) if a is not None}
        self.use_hostname = use_hostname
        self.warnings = km.warnings

    # -- small helpers ---------------------------------------------------------------
    def fail(self, message: str, key: str | None = None, line: int | None = None) -> ConfigError:
        if line is None and key is not None:
            line = self.km.line(key)
            if line is None:
                line = self.km.section_lines.get(key)
        return ConfigError(message, path=self.path, line=line, key=key)

    def warn(self, message: str, key: str | None = None) -> None:
        line = self.km.line(key) if key else None
        where = f"{self.path}:{line}" if line else self.path
        self.warnings.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    def s(self, key: str, default: str | None = None) -> str | None:
        entry = self.km.get(key)
        if entry is None or entry.type is not CmapType.STRING:
            return default
        return str(entry.value)

    def n(self, key: str) -> int | None:
        entry = self.km.get(key)
        if entry is None or not entry.type.is_integer:
            return None
        return int(entry.value)

    def yes_no(self, key: str, default: bool) -> bool:
        """corosync's yes/no options: anything but "yes"/"no" keeps the default (warned)."""
        value = self.s(key)
        if value is None:
            return default
        if value in ("yes", "no"):
            return value == "yes"
        self.warn(f'"{value}" is neither yes nor no; using the default ({"yes" if default else "no"})', key)
        return default

    # -- the whole thing -----------------------------------------------------------------
    def build(self) -> CorosyncConfig:
        totem = self.read_totem_basics()
        self.read_crypto(totem)
        if totem.transport == "knet":
            raise self.fail(
                "transport knet is not supported by this implementation; use udpu or udp"
                + ("" if self.km.get("totem.transport") else " (knet is corosync 3's default: add 'transport: udpu')"),
                "totem.transport" if self.km.get("totem.transport") else "totem",
            )
        nodes = self.read_nodes(totem)
        local = self.find_local_node(nodes)
        if local is not None:
            self.km.set("nodelist.local_node_pos", local.index, CmapType.UINT32)
            self.bind_from_nodelist(local)
        self.read_interfaces(totem, nodes)
        self.validate_links(totem, nodes, local)
        if totem.version != 2:
            raise self.fail(
                "This totem parser can only parse version 2 configurations."
                + ("" if self.km.get("totem.version") else " (totem.version is missing)"),
                "totem.version" if self.km.get("totem.version") else "totem",
            )
        assert local is not None  # validate_links refused a missing local node
        totem_config, runtime = self.read_timers(totem, nodes)
        self.check_duplicate_nodeids(nodes)
        self.check_unknown_keys()
        return CorosyncConfig(
            path=self.path,
            totem=totem,
            totem_config=totem_config,
            nodes=nodes,
            local_node=local,
            logging=self.read_logging(),
            quorum=self.section_dict("quorum."),
            system=self.read_system(),
            resources=self.section_dict("resources."),
            uidgid=self.section_dict("uidgid."),
            warnings=self.warnings,
            keymap=self.km,
            runtime_entries=runtime,
        )

    # -- totem ---------------------------------------------------------------------------
    def read_totem_basics(self) -> TotemSettings:
        t = TotemSettings()
        transport = self.s("totem.transport")
        if transport is not None:
            if transport not in TRANSPORTS:
                raise self.fail(
                    f'Invalid transport type. Should be udpu, udp or knet (got "{transport}")',
                    "totem.transport",
                )
            t.transport = transport
        t.version = self.n("totem.version") or 0
        t.cluster_name = self.s("totem.cluster_name")
        link_mode = self.s("totem.link_mode")
        if link_mode is not None:
            t.link_mode = link_mode
        if self.n("totem.nodeid") is not None:
            self.warn("totem.nodeid is ignored, set nodeid in the nodelist", "totem.nodeid")
        t.clear_node_high_bit = self.s("totem.clear_node_high_bit") == "yes"
        t.netmtu = self.n("totem.netmtu") or 1500
        t.config_version = self.n("totem.config_version")
        t.ip_version = self.s("totem.ip_version") or ("ipv4" if t.transport == "udp" else "ipv6-4")
        t.block_unlisted_ips = self.yes_no("totem.block_unlisted_ips", True)
        t.cancel_token_hold_on_retransmit = self.yes_no("totem.cancel_token_hold_on_retransmit", False)
        return t

    def read_crypto(self, t: TotemSettings) -> None:
        """crypto_cipher/crypto_hash/secauth, then the key (file or inline), as corosync."""
        cipher, hashed = "none", "none"
        t.crypto_model = self.s("totem.crypto_model") or "nss"
        t.secauth = self.s("totem.secauth")
        if t.secauth == "on":
            cipher, hashed = "aes256", "sha256"
        cipher = self.s("totem.crypto_cipher", cipher) or cipher
        hashed = self.s("totem.crypto_hash", hashed) or hashed
        if cipher != "none" and hashed == "none":
            raise self.fail(
                "crypto_cipher requires crypto_hash with value other than none",
                "totem.crypto_hash" if self.km.get("totem.crypto_hash") else "totem.crypto_cipher",
            )
        t.crypto_cipher, t.crypto_hash = cipher, hashed
        t.key = self.s("totem.key")
        keyfile = self.s("totem.keyfile")
        if keyfile is not None and t.key is not None:
            # corosync reads the file and never looks at the inline key
            self.warn("ignored because totem.keyfile is set", "totem.key")
            t.key = None
        # the effective key file path, also without crypto (tools may want to show it)
        t.keyfile = keyfile
        if keyfile is None and t.key is None:
            t.keyfile = os.environ.get("COROSYNC_TOTEM_AUTHKEY_FILE") or DEFAULT_AUTHKEY
        if not t.crypto_enabled:
            return
        if keyfile is None and t.key is not None:
            raw = t.key.encode("utf-8", errors="surrogateescape")
            if len(raw) > KEY_LEN_MAX:
                raise self.fail(f"key is too long ({len(raw)} bytes, at most {KEY_LEN_MAX})", "totem.key")
            if len(raw) < KEY_LEN_MIN:
                raise self.fail(f"key is too short ({len(raw)} bytes, at least {KEY_LEN_MIN})", "totem.key")
            t.private_key = raw
            return
        which = "totem.keyfile"
        if keyfile is None:
            keyfile = os.environ.get("COROSYNC_TOTEM_AUTHKEY_FILE") or DEFAULT_AUTHKEY
            which = "totem.crypto_cipher" if self.km.get("totem.crypto_cipher") else "totem.crypto_hash"
            if self.km.get(which) is None:
                which = "totem.secauth"
        try:
            with open(keyfile, "rb") as f:
                data = f.read(KEY_LEN_MAX)
        except OSError as e:
            raise self.fail(f"Could not open {keyfile}: {e.strerror}", which) from None
        if len(data) < KEY_LEN_MIN:
            raise self.fail(
                f"Could only read {len(data) * 8} bits of minimum {KEY_LEN_MIN * 8} bits from {keyfile}.",
                which,
            )
        t.keyfile = keyfile
        t.private_key = data

    # -- nodelist ------------------------------------------------------------------------
    def read_nodes(self, t: TotemSettings) -> list[NodeEntry]:
        indexes = sorted(
            {int(k.split(".")[2]) for k in self.km.keys if k.startswith("nodelist.node.") and k.split(".")[2].isdigit()}
        )
        nodes: list[NodeEntry] = []
        families: dict[int, tuple[int, str]] = {}
        for i in indexes:
            base = f"nodelist.node.{i}"
            node = NodeEntry(index=i, nodeid=self.n(f"{base}.nodeid") or 0, line=self.km.section_lines.get(base))
            node.name = self.s(f"{base}.name")
            votes = self.n(f"{base}.quorum_votes")
            if votes is not None:
                node.quorum_votes = votes
            for entry in self.km.prefixed(f"{base}.ring"):
                rest = entry.key[len(base) + len(".ring") :]
                if not rest.endswith("_addr") or not rest[: -len("_addr")].isdigit():
                    continue
                link = int(rest[: -len("_addr")])
                if link >= INTERFACE_MAX:
                    raise self.fail(
                        f"interface ring number {link} is bigger than allowed maximum {INTERFACE_MAX - 1}",
                        entry.key,
                    )
                node.addrs[link] = str(entry.value)
            node.ring0_addr = node.addrs.get(0)
            node.ring1_addr = node.addrs.get(1)
            if not node.addrs:
                raise self.fail("node has no ring0_addr (every node needs one)", base, node.line)
            if node.ring0_addr is None:
                raise self.fail("node has ringX_addr but no ring0_addr", base, node.line)
            if node.nodeid == 0:
                generated = nodeid_from_ipv4(node.ring0_addr, t.clear_node_high_bit)
                if generated is None:
                    raise self.fail(
                        "An IPV6 network requires that a node ID be specified "
                        f"for address '{node.ring0_addr}'.",
                        f"{base}.nodeid" if self.km.get(f"{base}.nodeid") else f"{base}.ring0_addr",
                    )
                node.nodeid = generated
                node.nodeid_generated = True
                self.km.set(f"{base}.nodeid", generated, CmapType.UINT32)
            for link, addr in sorted(node.addrs.items()):
                key = f"{base}.ring{link}_addr"
                ip = resolve(addr, t.ip_version)
                if ip is None:
                    raise self.fail(f"failed to parse node address '{addr}' (ip_version {t.ip_version})", key)
                first = families.get(link)
                if first is None:
                    families[link] = (ip.version, addr)
                elif first[0] != ip.version:
                    raise self.fail(
                        f"Nodes for link {link} have different IP families (compared {addr} with {first[1]})",
                        key,
                    )
            nodes.append(node)
        return nodes

    def find_local_node(self, nodes: list[NodeEntry]) -> NodeEntry | None:
        """The node whose name/ring0_addr is this host (corosync's find_local_node order)."""
        if self.use_hostname:
            host = socket.gethostname()
            candidates = [host]
            while "." in candidates[-1]:
                candidates.append(candidates[-1].rsplit(".", 1)[0])
            for cand in candidates:
                for node in nodes:
                    if cand in (node.name, node.ring0_addr):
                        return node
            short = candidates[-1]
            for node in nodes:
                for value in (node.name, node.ring0_addr):
                    if value and parse_ip(value) is None and value.split(".", 1)[0] == short:
                        return node
        for node in nodes:
            for value in (node.name, node.ring0_addr):
                if value is None:
                    continue
                ip = parse_ip(value)
                if ip is not None and ip in self.local_addrs:
                    return node
        for node in nodes:  # names: resolve and compare (slow path, only for names)
            for value in (node.name, node.ring0_addr):
                if value is None or parse_ip(value) is not None:
                    continue
                for version in ("ipv4", "ipv6"):
                    ip = resolve(value, version)
                    if ip is not None and ip in self.local_addrs:
                        return node
        return None

    def bind_from_nodelist(self, local: NodeEntry) -> None:
        """bindnetaddr of every link := the local node's ringX_addr (as corosync stores it)."""
        if self.km.get("totem.interface.0.bindnetaddr") is not None:
            self.warn(
                "both bindnetaddr and a nodelist are set; the nodelist wins", "totem.interface.0.bindnetaddr"
            )
        for link, addr in local.addrs.items():
            self.km.set(f"totem.interface.{link}.bindnetaddr", addr, CmapType.STRING)

    # -- interfaces ----------------------------------------------------------------------
    def read_interfaces(self, t: TotemSettings, nodes: list[NodeEntry]) -> None:
        links: set[int] = set()
        for key in self.km.keys:
            parts = key.split(".")
            if len(parts) >= 4 and parts[:2] == ["totem", "interface"] and parts[2].isdigit():
                if t.transport == "udp" and parts[3] != "bindnetaddr":
                    continue
                link = int(parts[2])
                if link >= INTERFACE_MAX:
                    raise self.fail(
                        f"interface ring number {link} is bigger than allowed maximum {INTERFACE_MAX - 1}",
                        key,
                    )
                links.add(link)
        for node in nodes:
            links.update(node.addrs)
        t.broadcast = any(
            self.s(f"totem.interface.{link}.broadcast") == "yes" for link in links
        )
        for link in sorted(links):
            base = f"totem.interface.{link}"
            iface = InterfaceSettings(linknumber=link)
            iface.bindnetaddr = self.s(f"{base}.bindnetaddr")
            if iface.bindnetaddr is not None and resolve(iface.bindnetaddr, t.ip_version) is None:
                raise self.fail(f"failed to parse bindnet address '{iface.bindnetaddr}'", f"{base}.bindnetaddr")
            iface.mcastaddr = self.s(f"{base}.mcastaddr")
            if iface.mcastaddr is not None and resolve(iface.mcastaddr, t.ip_version) is None:
                raise self.fail(f"failed to parse mcast address '{iface.mcastaddr}'", f"{base}.mcastaddr")
            port = self.n(f"{base}.mcastport")
            iface.mcastport = port if port is not None else DEFAULT_PORT + (2 * link if t.broadcast else link)
            ttl = self.n(f"{base}.ttl")
            iface.ttl = 1 if ttl is None else ttl
            iface.knet_ping_interval = self.n(f"{base}.knet_ping_interval") or 0
            iface.knet_ping_timeout = self.n(f"{base}.knet_ping_timeout") or 0
            iface.knet_pong_count = self.n(f"{base}.knet_pong_count") or KNET_PONG_COUNT
            if t.transport == "udp":
                if t.broadcast and link == 0:
                    iface.mcastaddr = "255.255.255.255"
                elif iface.mcastaddr is None and t.cluster_name is not None:
                    bind = parse_ip(iface.bindnetaddr) if iface.bindnetaddr else None
                    iface.mcastaddr = cluster_mcast_addr(
                        t.cluster_name, link, ipv6=bind is not None and bind.version == 6
                    )
                if iface.mcastaddr is not None and self.km.get(f"{base}.mcastaddr") is None:
                    self.km.set(f"{base}.mcastaddr", iface.mcastaddr, CmapType.STRING)
                if self.km.get(f"{base}.mcastport") is None:
                    self.km.set(f"{base}.mcastport", iface.mcastport, CmapType.UINT16)
            t.interfaces[link] = iface
        if 0 in t.interfaces:
            i0 = t.interfaces[0]
            t.bindnetaddr, t.mcastaddr, t.mcastport, t.ttl = i0.bindnetaddr, i0.mcastaddr, i0.mcastport, i0.ttl

    def validate_links(self, t: TotemSettings, nodes: list[NodeEntry], local: NodeEntry | None) -> None:
        if not t.interfaces:
            raise self.fail(
                "No interfaces defined (udpu and udp need a nodelist with a ring0_addr per node)",
                "nodelist",
            )
        if local is None:
            if not nodes:
                raise self.fail(
                    "No valid name found for local host (there is no nodelist; totem.interface "
                    "member lists are not supported, list every node in nodelist)",
                    "totem.interface",
                )
            shown = ", ".join(sorted(str(a) for a in self.local_addrs)) or "none"
            raise self.fail(
                "No valid name found for local host (no node's name or ring0_addr matches "
                f"this host's name or addresses: {shown})",
                "nodelist",
            )
        for link, iface in sorted(t.interfaces.items()):
            base = f"totem.interface.{link}"
            if t.transport == "udp" and iface.mcastaddr is None:
                raise self.fail(
                    f"No multicast address specified for interface {link} (set mcastaddr or cluster_name)",
                    f"{base}.mcastaddr" if self.km.get(f"{base}.mcastaddr") else "totem.cluster_name",
                )
            if iface.mcastport == 0:
                raise self.fail(f"No multicast port specified for interface {link}", f"{base}.mcastport")
            if t.transport != "udp" and iface.ttl != 1:
                raise self.fail(
                    f"Can only set ttl on multicast transport types for interface {link}", f"{base}.ttl"
                )
            prio = self.n(f"{base}.knet_link_priority")
            if prio is not None and prio != 1:
                raise self.fail(
                    f"Can only set link priority on knet transport type for interface {link}",
                    f"{base}.knet_link_priority",
                )
            if t.transport == "udp" and not t.broadcast and iface.mcastaddr is not None:
                mcast = resolve(iface.mcastaddr, "ipv4-6")
                bind = parse_ip(iface.bindnetaddr) if iface.bindnetaddr else None
                if mcast is not None and bind is not None and mcast.version != bind.version:
                    raise self.fail(
                        f"Multicast address family does not match bind address family for interface {link}",
                        f"{base}.mcastaddr",
                    )
                if mcast is not None and not mcast.is_multicast:
                    raise self.fail(
                        f"mcastaddr is not a correct multicast address for interface {link}", f"{base}.mcastaddr"
                    )
        if len(t.interfaces) > 1:
            extra = sorted(t.interfaces)[1]
            key = next(
                (f"nodelist.node.{n.index}.ring{extra}_addr" for n in nodes if extra in n.addrs),
                f"totem.interface.{extra}",
            )
            raise self.fail(
                f"{len(t.interfaces)} is too many configured interfaces for non-Knet transport.", key
            )

    # -- timers --------------------------------------------------------------------------
    def read_timers(
        self, t: TotemSettings, nodes: list[NodeEntry]
    ) -> tuple[TotemConfig, list[tuple[str, Any, CmapType]]]:
        explicit: dict[str, Any] = {}
        for name in _ZERO_MEANS_DEFAULT:
            value = self.n(f"totem.{name}")
            if value:
                explicit[name] = value
        for name in _ZERO_ALLOWED:
            value = self.n(f"totem.{name}")
            if value is not None:
                explicit[name] = value
        coefficient = self.n("totem.token_coefficient")
        if coefficient is not None:
            explicit["token_coefficient"] = coefficient
        explicit["netmtu"] = t.netmtu
        explicit["block_unlisted_ips"] = t.block_unlisted_ips
        explicit["cancel_token_hold_on_retransmit"] = t.cancel_token_hold_on_retransmit
        member_count = sum(1 for n in nodes if 0 in n.addrs)
        cfg = derive(member_count, **explicit)
        self.check_timers(cfg)

        u32 = CmapType.UINT32
        rt = "runtime.config.totem."
        runtime: list[tuple[str, Any, CmapType]] = [(rt + name, getattr(cfg, name), u32) for name in _RUNTIME_U32]
        runtime += [
            (rt + "block_unlisted_ips", int(cfg.block_unlisted_ips), u32),
            (rt + "cancel_token_hold_on_retransmit", int(cfg.cancel_token_hold_on_retransmit), u32),
            (rt + "knet_pmtud_interval", self.n("totem.knet_pmtud_interval") or KNET_PMTUD_INTERVAL, u32),
            (rt + "knet_mtu", self.n("totem.knet_mtu") or 0, u32),
            (rt + "knet_compression_threshold", self.n("totem.knet_compression_threshold") or 0, u32),
            (rt + "knet_compression_level", self.n("totem.knet_compression_level") or 0, CmapType.INT32),
            (rt + "knet_compression_model", self.s("totem.knet_compression_model") or "none", CmapType.STRING),
        ]
        for link, iface in sorted(t.interfaces.items()):
            if not iface.knet_ping_timeout:
                iface.knet_ping_timeout = cfg.token // iface.knet_pong_count
            if not iface.knet_ping_interval:
                iface.knet_ping_interval = cfg.token // (iface.knet_pong_count * 2)
            runtime.append((f"{rt}interface.{link}.knet_ping_timeout", iface.knet_ping_timeout, u32))
            runtime.append((f"{rt}interface.{link}.knet_ping_interval", iface.knet_ping_interval, u32))
        return cfg, runtime

    def check_timers(self, cfg: TotemConfig) -> None:
        """corosync's limits on the effective timers (MINIMUM_TIMEOUT = 30 ms)."""
        def key_for(name: str) -> str:
            return f"totem.{name}" if self.km.get(f"totem.{name}") else "totem.token"

        checks = (
            ("max_network_delay", cfg.max_network_delay, "max_network_delay parameter"),
            ("token", cfg.token, "token timeout parameter"),
        )
        for name, value, what in checks:
            if value < MINIMUM_TIMEOUT:
                raise self.fail(f"The {what} ({value} ms) may not be less than ({MINIMUM_TIMEOUT} ms).", key_for(name))
        if cfg.token_warning > 100:
            raise self.fail(
                f"The token warning parameter ({cfg.token_warning}%) must be between 0 (disabled) and 100.",
                "totem.token_warning",
            )
        if cfg.token_retransmit < MINIMUM_TIMEOUT:
            if self.km.get("totem.token_retransmit"):
                raise self.fail(
                    f"The token retransmit timeout parameter ({cfg.token_retransmit} ms) may not be less "
                    f"than ({MINIMUM_TIMEOUT} ms).",
                    "totem.token_retransmit",
                )
            raise self.fail(
                f"Not appropriate token or token_retransmits_before_loss_const value set "
                f"(derived token_retransmit {cfg.token_retransmit} ms < {MINIMUM_TIMEOUT} ms)",
                key_for("token_retransmits_before_loss_const"),
            )
        if cfg.hold < MINIMUM_TIMEOUT_HOLD:
            raise self.fail(
                f"The token hold timeout parameter ({cfg.hold} ms) may not be less than ({MINIMUM_TIMEOUT_HOLD} ms).",
                key_for("hold"),
            )
        for name, what in (("join", "join timeout"), ("consensus", "consensus timeout")):
            value = getattr(cfg, name)
            if value < MINIMUM_TIMEOUT:
                raise self.fail(f"The {what} parameter ({value} ms) may not be less than ({MINIMUM_TIMEOUT} ms).", key_for(name))
        if cfg.consensus < cfg.join:
            raise self.fail(
                f"The consensus timeout parameter ({cfg.consensus} ms) may not be less than join timeout "
                f"({cfg.join} ms).",
                key_for("consensus"),
            )
        for name, what in (("merge", "merge timeout"), ("downcheck", "downcheck timeout")):
            value = getattr(cfg, name)
            if value < MINIMUM_TIMEOUT:
                raise self.fail(f"The {what} parameter ({value} ms) may not be less than ({MINIMUM_TIMEOUT} ms).", key_for(name))

    def check_duplicate_nodeids(self, nodes: list[NodeEntry]) -> None:
        seen: dict[int, NodeEntry] = {}
        for node in nodes:
            first = seen.get(node.nodeid)
            if first is not None:
                how = f"(autogenerated from {node.ring0_addr})" if node.nodeid_generated else ""
                base = f"nodelist.node.{node.index}"
                key = f"{base}.ring0_addr" if node.nodeid_generated else f"{base}.nodeid"
                first_line = self.km.line(f"nodelist.node.{first.index}.nodeid") or first.line
                raise self.fail(
                    f"Nodeid {node.nodeid}{how} appears twice in corosync.conf "
                    f"(node {first.index} at line {first_line} has it too)",
                    key,
                )
            seen[node.nodeid] = node

    # -- other sections ------------------------------------------------------------------
    def read_logging(self) -> LoggingSettings:
        log = LoggingSettings()

        def on_off(key: str, default: bool, words: tuple[str, str] = ("on", "off"), more: tuple[str, ...] = ()) -> bool:
            value = self.s(key)
            if value is None:
                return default
            if value in (words[0], *more):
                return True
            if value == words[1] or (more and value in ("no", "off")):
                return False
            raise self.fail(f"unknown value for {key.rsplit('.', 1)[1]}: \"{value}\"", key)

        def dest(key: str, default: bool) -> bool:
            return on_off(key, default, ("yes", "no"), ("yes", "on"))

        log.to_stderr = dest("logging.to_stderr", True)
        log.to_syslog = dest("logging.to_syslog", True)
        log.to_logfile = dest("logging.to_logfile", False)
        log.logfile = self.s("logging.logfile")
        log.fileline = on_off("logging.fileline", False)
        log.function_name = on_off("logging.function_name", False)
        log.blackbox = on_off("logging.blackbox", True)
        timestamp = self.s("logging.timestamp")
        if timestamp is not None:
            if timestamp not in ("on", "off", "hires"):
                raise self.fail(f'unknown value for timestamp: "{timestamp}"', "logging.timestamp")
            log.timestamp = timestamp
        log.debug = self.check_debug("logging.debug") or "off"
        log.syslog_facility = self.check_choice("logging.syslog_facility", SYSLOG_FACILITIES, "syslog facility") or "daemon"
        log.syslog_priority = self.check_choice("logging.syslog_priority", PRIORITIES, "syslog priority") or "info"
        log.logfile_priority = self.check_choice("logging.logfile_priority", PRIORITIES, "logfile priority") or "info"
        if log.to_logfile and not log.logfile:
            raise self.fail("to_logfile is yes but no logfile is given", "logging.to_logfile")
        prefix = "logging.logger_subsys."
        for entry in self.km.prefixed(prefix):
            subsys, _, option = entry.key[len(prefix) :].rpartition(".")
            if not subsys or option == "subsys":
                continue
            if option in ("to_stderr", "to_syslog", "to_logfile") and entry.value not in ("yes", "no", "on", "off"):
                raise self.fail(f'unknown value for {option}: "{entry.value}"', entry.key)
            if option == "debug":
                self.check_debug(entry.key)
            log.logger_subsys.setdefault(subsys, {})[option] = str(entry.value)
        for entry in self.km.prefixed(prefix):
            if entry.key.endswith(".subsys"):
                log.logger_subsys.setdefault(str(entry.value), {})
        return log

    def check_debug(self, key: str) -> str | None:
        value = self.s(key)
        if value is not None and value not in ("off", "on", "trace"):
            raise self.fail(f'unknown value for debug: "{value}" (off, on or trace)', key)
        return value

    def check_choice(self, key: str, choices: list[str], what: str) -> str | None:
        value = self.s(key)
        if value is not None and value not in choices:
            raise self.fail(f'unknown {what} specified: "{value}"', key)
        return value

    def read_system(self) -> SystemSettings:
        sys_ = SystemSettings()
        sys_.state_dir = self.s("system.state_dir") or DEFAULT_STATE_DIR
        sys_.run_dir = os.environ.get("COROSYNC_RUN_DIR") or self.s("system.run_dir") or DEFAULT_RUN_DIR
        sys_.qb_ipc_type = self.s("system.qb_ipc_type") or "native"
        sys_.sched_rr = self.s("system.sched_rr") != "no"
        sys_.priority = self.s("system.priority")
        sys_.move_to_root_cgroup = self.s("system.move_to_root_cgroup") or "auto"
        sys_.allow_knet_handle_fallback = self.s("system.allow_knet_handle_fallback") == "yes"
        return sys_

    def section_dict(self, prefix: str) -> dict[str, str]:
        return {e.key[len(prefix) :]: str(e.value) for e in self.km.prefixed(prefix)}

    def check_unknown_keys(self) -> None:
        """Warn (do not fail) about keys corosync-py does not know; they stay in cmap."""
        for key, entry in sorted(self.km.keys.items(), key=lambda kv: (kv[1].line or 0, kv[0])):
            if entry.line is not None and not is_known_key(key):
                self.warn("unknown option, kept in cmap but not used", key)


def cluster_mcast_addr(cluster_name: str, link: int, *, ipv6: bool) -> str:
    """Multicast address derived from the cluster name (spec §1.4, ``spectest`` → 239.192.110.77).

    The id is a 16-bit rolling value ``v = 2v + c`` over the name's bytes taken as *signed*
    chars (x86 C), plus the link number; IPv4 uses ``id % 255`` (not 256) for the last octet.
    """
    value = 0
    for byte in cluster_name.encode("utf-8", errors="surrogateescape"):
        value = value * 2 + (byte - 256 if byte >= 0x80 else byte)
    clusterid = (value + link) & 0xFFFF
    if ipv6:
        return f"ff15::{clusterid:x}"
    return f"239.192.{clusterid >> 8}.{clusterid % 0xFF}"


_KNOWN_TOTEM = set(
    (
        "version cluster_name transport ip_version crypto_cipher crypto_hash crypto_model secauth keyfile "
        "key netmtu config_version clear_node_high_bit block_unlisted_ips cancel_token_hold_on_retransmit "
        "link_mode nodeid threads token token_coefficient token_retransmit token_warning hold "
        "token_retransmits_before_loss_const join send_join consensus merge downcheck fail_recv_const "
        "seqno_unchanged_const heartbeat_failures_allowed max_network_delay window_size max_messages "
        "miss_count_const knet_pmtud_interval knet_mtu knet_compression_threshold knet_compression_level "
        "knet_compression_model rrp_mode"
    ).split()
)
_KNOWN_INTERFACE = set(
    "bindnetaddr mcastaddr mcastport ttl broadcast knet_link_priority knet_ping_interval knet_ping_timeout "
    "knet_ping_precision knet_pong_count knet_transport".split()
)
_KNOWN_LOGGING = set(
    "to_stderr to_logfile to_syslog logfile logfile_priority syslog_facility syslog_priority debug timestamp "
    "fileline function_name blackbox subsys name".split()
)
_KNOWN_NODE = {"nodeid", "name", "quorum_votes"}
_KNOWN_SYSTEM = set(
    "state_dir run_dir qb_ipc_type sched_rr priority move_to_root_cgroup allow_knet_handle_fallback".split()
)


def is_known_key(key: str) -> bool:
    """Whether corosync (or corosync-py) gives ``key`` a meaning (for unknown-key warnings)."""
    parts = key.split(".")
    top = parts[0]
    if top in ("quorum", "resources", "uidgid", "pload"):
        return True  # free-form for their services (votequorum, qdevice, mon, …)
    if top == "totem":
        if len(parts) == 2:
            return parts[1] in _KNOWN_TOTEM
        if parts[1] == "interface" and len(parts) >= 4 and parts[2].isdigit():
            return parts[3] in _KNOWN_INTERFACE or parts[3] == "member"
        return False
    if top == "logging":
        return parts[-1] in _KNOWN_LOGGING
    if top == "nodelist":
        if len(parts) == 4 and parts[1] == "node" and parts[2].isdigit():
            name = parts[3]
            return name in _KNOWN_NODE or (
                name.startswith("ring") and name.endswith("_addr") and name[4:-5].isdigit()
            )
        return False
    if top == "system":
        return len(parts) == 2 and parts[1] in _KNOWN_SYSTEM
    return False


__all__ = [
    "ConfigError",
    "ConfKey",
    "CorosyncConfig",
    "InterfaceSettings",
    "LoggingSettings",
    "NodeEntry",
    "SystemSettings",
    "TotemSettings",
    "cluster_mcast_addr",
    "config_path_from_env",
    "default_config_text",
    "load_config",
    "timers_from_keys",
]
