"""Follow nodelist changes in cmap (corosync-cfgtool -R, cmapctl) like the stock qdevice:
ignore changes while ``config.totemconfig_reload_in_progress`` is 1, re-read the node list
when it drops back to 0 or when a ``nodelist.`` key changes outside a reload, and report it
only when it differs (nodes, data centers or ``totem.config_version``)."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Optional

from corosync.exec.qnetd.protocol import NodeInfo

from .config import QdeviceConfigError, config_nodes

log = logging.getLogger("corosync-qdevice")

RELOAD_KEY = "config.totemconfig_reload_in_progress"

Changed = Callable[[tuple[NodeInfo, ...], Optional[int]], None]


async def read_nodelist(cmap: Any) -> tuple[tuple[NodeInfo, ...], Optional[int]]:
    keys: dict[str, Any] = {}
    async for entry in cmap.iter_prefix("nodelist.node."):
        try:
            keys[entry.key] = (await cmap.get(entry.key)).value
        except Exception:
            continue  # deleted meanwhile
    try:
        version: Optional[int] = int((await cmap.get("totem.config_version")).value)
    except Exception:
        version = None
    return config_nodes(keys), version


async def track_nodelist(cmap: Any, current: tuple[tuple[NodeInfo, ...], Optional[int]],
                         changed: Changed,
                         reading: Optional[Callable[[], Awaitable[Any]]] = None) -> None:
    """Run until the cmap connection ends; ``changed`` gets each new (nodes, version)."""
    from corosync.cmap import TrackType

    await cmap.track_add("nodelist.", TrackType.ADD | TrackType.DELETE | TrackType.MODIFY
                         | TrackType.PREFIX)
    await cmap.track_add(RELOAD_KEY, TrackType.ADD | TrackType.MODIFY)
    reload_in_progress = False
    async for note in cmap.notifications():
        if note.key == RELOAD_KEY:
            if note.new_value is not None and note.new_value.value == 1:
                reload_in_progress = True
                continue
            reload_in_progress = False
        elif reload_in_progress or not note.key.startswith("nodelist."):
            continue
        try:
            new = await read_nodelist(cmap)
        except QdeviceConfigError as exc:
            log.error("Ignoring the new node list: %s", exc)
            continue
        if new != current:
            current = new
            log.debug("Configuration node list changed: %s (version %s)",
                      [n.node_id for n in new[0]], new[1])
            changed(*new)
