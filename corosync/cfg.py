"""corosync's configuration client (libcfg): local node id, node addresses and link status,
reload/reopen, kill a node, and clean shutdown with vetoes.

* :class:`Cfg` — blocking; :meth:`Cfg.dispatch` runs the shutdown callback.
* :class:`AsyncCfg` — trio.

Example::

    from corosync import cfg

    with cfg.Cfg.initialize() as c:
        me = c.local_get()
        print(me, c.get_node_addrs(me), c.node_status_get(me).links[0])

Shutdown tracking: a handle created with ``shutdown=callback`` and :meth:`Cfg.trackstart`
receives a callback (flags) when someone asks the node to shut down, and answers with
:meth:`Cfg.replyto_shutdown` (YES/NO) — how Pacemaker can veto ``corosync-cfgtool -H``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from corosync._common import CsError, CsErrorCode, DispatchFlags
from corosync.lib.proto import cfg as proto
from corosync.lib.proto.cfg import (SHUTDOWN_FLAG_IMMEDIATE, SHUTDOWN_FLAG_REGARDLESS,
                                    SHUTDOWN_FLAG_REQUEST, LinkStatus, NodeStatus, RingStatus)
from corosync.lib.proto.common import ProtoError
from corosync.quorum import AsyncServiceHandle, ServiceHandle, decode_reply

__all__ = ["Cfg", "AsyncCfg", "NodeStatus", "LinkStatus", "RingStatus", "DispatchFlags",
           "CsError", "CsErrorCode", "SHUTDOWN_FLAG_REQUEST", "SHUTDOWN_FLAG_REGARDLESS",
           "SHUTDOWN_FLAG_IMMEDIATE", "REPLY_YES", "REPLY_NO"]

REPLY_NO, REPLY_YES = proto.REPLY_NO, proto.REPLY_YES
ShutdownFn = Callable[[int], None]


def _u32(payload: bytes, what: str) -> int:
    try:
        return proto.dec_u32(payload, what)
    except ProtoError as exc:
        raise CsError(CsErrorCode.ERR_MESSAGE_ERROR, str(exc)) from None


def _addrs(reply: Any) -> list[str]:
    resp = decode_reply(proto.GetNodeAddrsResponse, reply, "cfg get_node_addrs")
    return [a for a in resp.addresses() if a is not None]


class _CfgEvents:
    shutdown_fn: ShutdownFn | None

    def _event(self, msg_id: int, payload: bytes) -> Any:
        if msg_id != proto.EV_TESTSHUTDOWN:
            raise ValueError(f"unknown cfg event id {msg_id}")
        flags = proto.dec_u32(payload, "cfg testshutdown")
        if self.shutdown_fn is not None:
            self.shutdown_fn(flags)
        return flags


class Cfg(_CfgEvents, ServiceHandle):
    """A blocking cfg handle (``corosync_cfg_handle_t``)."""

    SERVICE = "cfg"

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self.shutdown_fn = None

    @classmethod
    def initialize(cls, shutdown: ShutdownFn | None = None, *, context: Any = None,
                   ipc_dir: str | os.PathLike[str] | None = None) -> "Cfg":
        """Connect (no request, as ``corosync_cfg_initialize``)."""
        handle = cls(cls._connect(ipc_dir), context)
        handle.shutdown_fn = shutdown
        return handle

    def local_get(self) -> int:
        return _u32(self._call(proto.REQ_LOCAL_GET, b"", "cfg local_get").payload, "local_get")

    def get_node_addrs(self, nodeid: int = 0) -> list[str]:
        """The node's link addresses as text (0: this node)."""
        reply = self._call(proto.REQ_GET_NODE_ADDRS,
                           proto.GetNodeAddrsRequest(nodeid).encode(), "cfg get_node_addrs")
        return _addrs(reply)

    def node_status_get(self, nodeid: int) -> NodeStatus:
        reply = self._call(proto.REQ_NODESTATUSGET, proto.enc_nodestatusget(nodeid),
                           "cfg node_status_get")
        return decode_reply(NodeStatus, reply, "cfg node_status_get")  # type: ignore

    def ring_status_get(self) -> RingStatus:
        reply = self._call_raw(proto.REQ_RINGSTATUSGET)  # libcfg ignores the error field
        return decode_reply(RingStatus, reply, "cfg ring_status_get")  # type: ignore

    def kill_node(self, nodeid: int, reason: str = "") -> None:
        self._call(proto.REQ_KILLNODE, proto.enc_killnode(nodeid, reason), "cfg kill_node")

    def try_shutdown(self, flags: int = SHUTDOWN_FLAG_REQUEST) -> None:
        self._call(proto.REQ_TRYSHUTDOWN, proto.enc_u32(flags), "cfg try_shutdown")

    def replyto_shutdown(self, response: int) -> None:
        self._call(proto.REQ_REPLYTOSHUTDOWN, proto.enc_u32(response), "cfg replyto_shutdown")

    def reload_config(self) -> None:
        self._call(proto.REQ_RELOAD_CONFIG, b"", "cfg reload_config")

    def reopen_log_files(self) -> None:
        self._call(proto.REQ_REOPEN_LOG_FILES, b"", "cfg reopen_log_files")

    def trackstart(self, flags: int = 0) -> None:
        self._call(proto.REQ_TRACKSTART, proto.enc_u32(flags), "cfg trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "cfg trackstop")


class AsyncCfg(_CfgEvents, AsyncServiceHandle):
    """The trio flavour of :class:`Cfg`."""

    SERVICE = "cfg"

    def __init__(self, client: Any, context: Any = None) -> None:
        super().__init__(client, context)
        self.shutdown_fn = None

    @classmethod
    async def initialize(cls, shutdown: ShutdownFn | None = None, *, context: Any = None,
                         ipc_dir: str | os.PathLike[str] | None = None) -> "AsyncCfg":
        handle = cls(await cls._connect(ipc_dir), context)
        handle.shutdown_fn = shutdown
        return handle

    async def local_get(self) -> int:
        return _u32((await self._call(proto.REQ_LOCAL_GET)).payload, "local_get")

    async def get_node_addrs(self, nodeid: int = 0) -> list[str]:
        return _addrs(await self._call(proto.REQ_GET_NODE_ADDRS,
                                       proto.GetNodeAddrsRequest(nodeid).encode()))

    async def node_status_get(self, nodeid: int) -> NodeStatus:
        reply = await self._call(proto.REQ_NODESTATUSGET, proto.enc_nodestatusget(nodeid))
        return decode_reply(NodeStatus, reply, "cfg node_status_get")  # type: ignore

    async def try_shutdown(self, flags: int = SHUTDOWN_FLAG_REQUEST) -> None:
        await self._call(proto.REQ_TRYSHUTDOWN, proto.enc_u32(flags))

    async def replyto_shutdown(self, response: int) -> None:
        await self._call(proto.REQ_REPLYTOSHUTDOWN, proto.enc_u32(response))

    async def trackstart(self, flags: int = 0) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.enc_u32(flags))

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP)

    def shutdown_requests(self) -> AsyncIterator[Any]:
        """The flags of every TESTSHUTDOWN event."""
        return self.events()
