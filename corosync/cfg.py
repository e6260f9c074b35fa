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

from corosync._common import (AsyncServiceHandle, CsError, CsErrorCode, DispatchFlags,
                              HandleCore, Reply, ServiceHandle, decode_reply, encode_body)
from corosync.lib.proto import cfg as proto
from corosync.lib.proto.cfg import (SHUTDOWN_FLAG_IMMEDIATE, SHUTDOWN_FLAG_REGARDLESS,
                                    SHUTDOWN_FLAG_REQUEST, LinkStatus, NodeStatus, RingStatus)
from corosync.lib.proto.common import ProtoError

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


def _addrs(reply: Reply) -> list[str]:
    resp = decode_reply(proto.GetNodeAddrsResponse, reply, "cfg get_node_addrs")
    return [a for a in resp.addresses() if a is not None]


def _ring_status(reply: Reply) -> RingStatus:
    """libcfg ignores RINGSTATUSGET's error field and reads the body: so do we."""
    return decode_reply(RingStatus, reply, "cfg ring_status_get")  # type: ignore[no-any-return]


def _node_status(reply: Reply) -> NodeStatus:
    return decode_reply(NodeStatus, reply, "cfg node_status_get")  # type: ignore[no-any-return]


def _testshutdown(payload: bytes) -> int:
    return proto.dec_u32(payload, "cfg testshutdown")


class _CfgProtocol(HandleCore):
    """Events and request bodies both cfg handles share."""

    SERVICE = "cfg"
    EVENT_DECODERS = {proto.EV_TESTSHUTDOWN: _testshutdown}
    EVENT_CALLBACKS = {int: "shutdown_fn"}    # TESTSHUTDOWN is its flags

    shutdown_fn: ShutdownFn | None

    @staticmethod
    def _killnode(nodeid: int, reason: str) -> bytes:
        return encode_body(proto.enc_killnode, nodeid, reason)


class Cfg(_CfgProtocol, ServiceHandle):
    """A blocking cfg handle (``corosync_cfg_handle_t``)."""

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
        return _addrs(self._call(proto.REQ_GET_NODE_ADDRS,
                                 proto.GetNodeAddrsRequest(nodeid).encode(),
                                 "cfg get_node_addrs"))

    def node_status_get(self, nodeid: int) -> NodeStatus:
        return _node_status(self._call(proto.REQ_NODESTATUSGET,
                                       proto.enc_nodestatusget(nodeid), "cfg node_status_get"))

    def ring_status_get(self) -> RingStatus:
        return _ring_status(self._call_raw(proto.REQ_RINGSTATUSGET))

    def kill_node(self, nodeid: int, reason: str = "") -> None:
        """Ask ``nodeid`` to leave the cluster (CS_ERR_NOT_EXIST: not a member)."""
        self._call(proto.REQ_KILLNODE, self._killnode(nodeid, reason), "cfg kill_node")

    def try_shutdown(self, flags: int = SHUTDOWN_FLAG_REQUEST) -> None:
        self._call(proto.REQ_TRYSHUTDOWN, proto.enc_u32(flags), "cfg try_shutdown")

    def replyto_shutdown(self, response: int) -> None:
        self._call(proto.REQ_REPLYTOSHUTDOWN, proto.enc_u32(response), "cfg replyto_shutdown")

    def reload_config(self) -> None:
        """Every node re-reads corosync.conf; answered once the request went round."""
        self._call(proto.REQ_RELOAD_CONFIG, b"", "cfg reload_config")

    def reopen_log_files(self) -> None:
        self._call(proto.REQ_REOPEN_LOG_FILES, b"", "cfg reopen_log_files")

    def trackstart(self, flags: int = 0) -> None:
        self._call(proto.REQ_TRACKSTART, proto.enc_u32(flags), "cfg trackstart")

    def trackstop(self) -> None:
        self._call(proto.REQ_TRACKSTOP, b"", "cfg trackstop")


class AsyncCfg(_CfgProtocol, AsyncServiceHandle):
    """The trio flavour of :class:`Cfg`: the same calls awaited; TESTSHUTDOWN events from
    :meth:`shutdown_requests` (the ``shutdown`` callback runs too)."""

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
        return _u32((await self._call(proto.REQ_LOCAL_GET, b"", "cfg local_get")).payload,
                    "local_get")

    async def get_node_addrs(self, nodeid: int = 0) -> list[str]:
        return _addrs(await self._call(proto.REQ_GET_NODE_ADDRS,
                                       proto.GetNodeAddrsRequest(nodeid).encode(),
                                       "cfg get_node_addrs"))

    async def node_status_get(self, nodeid: int) -> NodeStatus:
        return _node_status(await self._call(proto.REQ_NODESTATUSGET,
                                             proto.enc_nodestatusget(nodeid),
                                             "cfg node_status_get"))

    async def ring_status_get(self) -> RingStatus:
        return _ring_status(await self._call_raw(proto.REQ_RINGSTATUSGET))

    async def kill_node(self, nodeid: int, reason: str = "") -> None:
        await self._call(proto.REQ_KILLNODE, self._killnode(nodeid, reason), "cfg kill_node")

    async def try_shutdown(self, flags: int = SHUTDOWN_FLAG_REQUEST) -> None:
        await self._call(proto.REQ_TRYSHUTDOWN, proto.enc_u32(flags), "cfg try_shutdown")

    async def replyto_shutdown(self, response: int) -> None:
        await self._call(proto.REQ_REPLYTOSHUTDOWN, proto.enc_u32(response),
                         "cfg replyto_shutdown")

    async def reload_config(self) -> None:
        await self._call(proto.REQ_RELOAD_CONFIG, b"", "cfg reload_config")

    async def reopen_log_files(self) -> None:
        await self._call(proto.REQ_REOPEN_LOG_FILES, b"", "cfg reopen_log_files")

    async def trackstart(self, flags: int = 0) -> None:
        await self._call(proto.REQ_TRACKSTART, proto.enc_u32(flags), "cfg trackstart")

    async def trackstop(self) -> None:
        await self._call(proto.REQ_TRACKSTOP, b"", "cfg trackstop")

    def shutdown_requests(self) -> AsyncIterator[Any]:
        """The flags of every TESTSHUTDOWN event."""
        return self.events()
