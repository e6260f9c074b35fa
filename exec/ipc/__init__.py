"""libqb-compatible IPC server for the executive (spec/ipc-wire.md §1-§3).

One :class:`IpcServer` per corosync service (``cmap``, ``cpg``, ``quorum``, ``votequorum``,
``cfg``) runs inside the executive's trio loop; services implement :class:`IpcHandler` and
answer through :class:`IpcConnection`.  See docs/ipc.md.
"""

from corosync.exec.ipc.connection import IpcConnection
from corosync.exec.ipc.server import (IpcHandler, IpcServer, IpcStats, default_auth,
                                      parse_ipc_type, remove_stale_dirs, serve_services)

__all__ = ["IpcConnection", "IpcHandler", "IpcServer", "IpcStats", "default_auth",
           "parse_ipc_type", "remove_stale_dirs", "serve_services"]
