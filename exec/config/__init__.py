"""corosync.conf reading: syntax (parser), typed keys (keys), validated model (model)."""

from .errors import EXIT_CONFIG, ConfigError
from .model import (
    CorosyncConfig,
    InterfaceSettings,
    LoggingSettings,
    NodeEntry,
    SystemSettings,
    TotemSettings,
    cluster_mcast_addr,
    default_config_text,
    load_config,
)

__all__ = [
    "EXIT_CONFIG",
    "ConfigError",
    "CorosyncConfig",
    "InterfaceSettings",
    "LoggingSettings",
    "NodeEntry",
    "SystemSettings",
    "TotemSettings",
    "cluster_mcast_addr",
    "default_config_text",
    "load_config",
]
