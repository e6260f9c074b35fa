"""corosync.conf (as flat cmap-style keys) -> :class:`QdeviceConfig` (spec §12.1).

The stock qdevice reads its configuration from cmap; we accept any mapping of dotted keys
to values, so the same code serves a live cmap dump and a parsed corosync.conf (``load_file``).
Errors name the key (and the file line when known) and are fatal at start-up, as upstream.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.protocol import Algorithm, NodeInfo, TieBreaker, TieBreakerMode

from .core import QdeviceConfig

ALGORITHMS = {"ffsplit": Algorithm.FFSPLIT, "lms": Algorithm.LMS,
              "2nodelms": Algorithm.TWO_NODE_LMS, "test": Algorithm.TEST}
_TRUE = ("on", "yes", "1")
_FALSE = ("off", "no", "0")


class QdeviceConfigError(Exception):
    def __init__(self, key: str, message: str, where: str = "") -> None:
        super().__init__(f"{where}{key}: {message}" if where else f"{key}: {message}")
        self.key = key


def _text(keys: Mapping[str, Any], key: str) -> Optional[str]:
    v = keys.get(key)
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(keys: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    text = _text(keys, key)
    if text is None:
        return default
    try:
        v = int(text.strip(), 0)
    except ValueError:
        raise QdeviceConfigError(key, f"{text!r} is not a number") from None
    if not lo <= v <= hi:
        raise QdeviceConfigError(key, f"{v} is out of range ({lo}-{hi})")
    return v


def _bool(keys: Mapping[str, Any], key: str, default: bool) -> bool:
    text = _text(keys, key)
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise QdeviceConfigError(key, f"{text!r} is not a boolean (on/off)")


def config_nodes(keys: Mapping[str, Any]) -> tuple[NodeInfo, ...]:
    """nodelist.node.<pos>.nodeid in cmap (string-sorted key) order, as the stock client."""
    positions = sorted({m.group(1) for k in keys
                        if (m := re.fullmatch(r"nodelist\.node\.(\d+)\.\w+", k))})
    clear_high = (_text(keys, "totem.clear_node_high_bit") or "no").lower() in _TRUE
    nodes = []
    for pos in positions:
        nid = _int(keys, f"nodelist.node.{pos}.nodeid", 0, 1, 0xFFFFFFFF)
        if nid == 0:
            # as corosync: an IPv4 ring0_addr (or a name resolving to one) gives the id
            from corosync.exec.config.netaddr import nodeid_from_ipv4

            addr = _text(keys, f"nodelist.node.{pos}.ring0_addr")
            nid = nodeid_from_ipv4(addr, clear_high) or 0 if addr else 0
            if nid == 0:
                raise QdeviceConfigError(
                    f"nodelist.node.{pos}.nodeid",
                    "Cant find nodeid or ring0_addr for a node. One of them needs to be "
                    "defined for every node.")
        dc = _int(keys, f"nodelist.node.{pos}.datacenterid", 0, 0, 0xFFFFFFFF)
        nodes.append(NodeInfo(nid, data_center_id=dc))
    return tuple(nodes)


def config_from_keys(keys: Mapping[str, Any], node_id: int) -> QdeviceConfig:
    model = _text(keys, "quorum.device.model")
    if model is None:
        raise QdeviceConfigError("quorum.device.model", "missing")
    if model != "net":
        raise QdeviceConfigError("quorum.device.model", f"unknown model {model!r}")
    cluster = _text(keys, "totem.cluster_name")
    if not cluster:
        raise QdeviceConfigError("totem.cluster_name", "missing (required by model net)")
    host = _text(keys, "quorum.device.net.host")
    if not host:
        raise QdeviceConfigError("quorum.device.net.host", "missing")
    tls_text = (_text(keys, "quorum.device.net.tls") or "on").lower()
    tls = {"on": 1, "yes": 1, "1": 1, "off": 0, "no": 0, "0": 0, "required": 2}.get(tls_text)
    if tls is None:
        raise QdeviceConfigError("quorum.device.net.tls", f"{tls_text!r} is not on/off/required")
    algo_text = (_text(keys, "quorum.device.net.algorithm") or "ffsplit").lower()
    if algo_text not in ALGORITHMS:
        raise QdeviceConfigError("quorum.device.net.algorithm", f"unknown algorithm {algo_text!r}")
    algorithm = ALGORITHMS[algo_text]
    tb_text = (_text(keys, "quorum.device.net.tie_breaker") or "lowest").lower()
    if tb_text == "lowest":
        tb = TieBreaker(TieBreakerMode.LOWEST)
    elif tb_text == "highest":
        tb = TieBreaker(TieBreakerMode.HIGHEST)
    else:
        tb = TieBreaker(TieBreakerMode.NODE_ID,
                        _int(keys, "quorum.device.net.tie_breaker", 0, 1, 0xFFFFFFFF))
    timeout = _int(keys, "quorum.device.timeout", 10000, 500, 2**31 - 1)
    sync_timeout = _int(keys, "quorum.device.sync_timeout", 30000, 500, 2**31 - 1)
    connect = _text(keys, "quorum.device.net.connect_timeout")
    nodes = config_nodes(keys)
    if algorithm == Algorithm.FFSPLIT:
        if _int(keys, "quorum.device.votes", 1, 0, 0xFFFFFFFF) != 1:
            raise QdeviceConfigError("quorum.device.votes", "ffsplit requires exactly 1 vote")
        for k, v in keys.items():
            if re.fullmatch(r"nodelist\.node\.\d+\.quorum_votes", k) and str(v).strip() != "1":
                raise QdeviceConfigError(k, "ffsplit requires 1 vote on every node")
    ip_version = _int(keys, "quorum.device.net.force_ip_version", 0, 0, 6)
    if ip_version not in (0, 4, 6):
        raise QdeviceConfigError("quorum.device.net.force_ip_version", "must be 0, 4 or 6")
    version = _text(keys, "totem.config_version")
    h = "quorum.device.heuristics."
    mode_text = (_text(keys, h + "mode") or "off").lower()
    modes = {"off": 0, "on": 1, "sync": 2}
    if mode_text not in modes:
        raise QdeviceConfigError(h + "mode", f"{mode_text!r} is not off/on/sync")
    execs = tuple(sorted((k[len(h) + 5:], str(v)) for k, v in keys.items()
                         if k.startswith(h + "exec_") and str(v).strip()))

    def _opt_ms(name: str) -> Optional[int]:
        return _int(keys, h + name, 0, 1, 2**31 - 1) if _text(keys, h + name) else None

    return QdeviceConfig(
        cluster_name=cluster.encode(), node_id=node_id, host=host,
        port=_int(keys, "quorum.device.net.port", 5403, 1, 65535), tls=tls,
        algorithm=algorithm, tie_breaker=tb, timeout_ms=timeout, sync_timeout_ms=sync_timeout,
        connect_timeout_ms=(_int(keys, "quorum.device.net.connect_timeout", 0, 1000, 2**31 - 1)
                            if connect is not None else None),
        keep_active_partition_tie_breaker=_bool(
            keys, "quorum.device.net.keep_active_partition_tie_breaker", True),
        wait_for_all=_bool(keys, "quorum.wait_for_all", False),
        force_ip_version=ip_version,
        heuristics_mode=modes[mode_text], heuristics_execs=execs,
        heuristics_timeout_ms=_opt_ms("timeout"),
        heuristics_sync_timeout_ms=_opt_ms("sync_timeout"),
        heuristics_interval_ms=_opt_ms("interval"),
        config_nodes=nodes, config_version=int(version) if version else None)


def load_file(path: str) -> dict[str, Any]:
    """Flat keys of a corosync.conf (the project's parser; its errors carry file:line)."""
    from corosync.exec.config.keys import read_keys
    from corosync.exec.config.parser import parse

    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    km = read_keys(parse(text, path), path)
    return {k: v.value for k, v in km.keys.items()}


TLS_TEXT = P.TLS_SUPPORTED_TEXT
