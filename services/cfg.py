"""The configuration service (id 1): what corosync-cfgtool and Pacemaker ask the executive
about itself (spec/totem-wire.md §5.7, spec/ipc-wire.md §4.5).

Lib side: local node id, node addresses (GET_NODE_ADDRS), per-node link status
(NODESTATUSGET v1), ring status, KILLNODE, shutdown with tracking and vetoes
(TRYSHUTDOWN / REPLYTOSHUTDOWN / TRACKSTART / TRACKSTOP / TESTSHUTDOWN events), cluster-wide
RELOAD_CONFIG and REOPEN_LOG_FILES — with corosync's response ids, sizes and error codes.

Exec side (5 functions, SAFE): RINGREENABLE (no-op), KILLNODE (the named node logs
"Killed by node N : reason" and exits), SHUTDOWN (logged everywhere; the sender shuts down),
RELOAD_CONFIG (every node reloads; the originator answers its client), CRYPTO_RECONFIG
(knet only: ignored).  Only KILLNODE has a byte-swap function, as in corosync.

Where the information lives outside the service, the host may offer hooks (probed with
``getattr`` on the API, like the timers):

* ``node_status(nodeid) -> NodeStatus | None`` and ``node_addrs(nodeid) -> list[str] | None``
  — otherwise derived from the cmap nodelist (``ringN_addr`` literals), the current
  membership (reachable/connected) and ``totem.netmtu`` (default 1410), which is what a
  udp/udpu node reports;
* ``reload_config() -> int`` (a cs_error_t) — otherwise RELOAD answers CS_ERR_NOT_SUPPORTED;
* ``reopen_log_files() -> int`` — otherwise CS_OK (nothing to reopen);
* ``fatal_exit(reason)`` for KILLNODE — otherwise ``shutdown_request``.

The shutdown timeout needs ``timer_add``; without it listeners that never answer keep the
request pending until they disconnect (counted as YES).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from typing import Any

from attrs import define

from corosync.exec.service import (REQ_HEADER, CsError, ExecHandler, LibHandler, Malformed,
                                   SendFailed, Service, ServiceApi, ServiceId, need,
                                   service_id_make, swap_fields)
from corosync.exec.totem.events import ConfChgKind, Guarantee, LogLevel
from corosync.exec.totem.wire import RingId
from corosync.lib.proto import cfg as cp

RINGREENABLE, KILLNODE, SHUTDOWN, RELOAD_CONFIG, CRYPTO_RECONFIG = range(5)
KILLNODE_SIZE = 288
SHUTDOWN_SIZE = 16
RELOAD_SIZE = 32
DEFAULT_SHUTDOWN_TIMEOUT_MS = 5000
DEFAULT_NET_MTU = 1410
_ADDR_KEY = re.compile(r"^nodelist\.node\.(\d+)\.ring(\d)_addr$")
_NODEID_KEY = re.compile(r"^nodelist\.node\.(\d+)\.nodeid$")
UNKNOWN, YES, NO = 0, 1, 2


def encode_killnode(nodeid: int, reason: str) -> bytes:
    raw = reason.encode("utf-8", "surrogateescape")[:255]
    return (REQ_HEADER.pack(service_id_make(ServiceId.CFG, KILLNODE), KILLNODE_SIZE)
            + struct.pack("<I4xH6x", nodeid, len(raw) + 1) + raw.ljust(256, b"\0"))


def decode_killnode(msg: bytes) -> tuple[int, str]:
    """nodeid @16, mar_name_t @24: length u16 @24, value @32 (a C string)."""
    need(msg, 32, "cfg killnode")
    nodeid, length = struct.unpack_from("<I4xH", msg, 16)
    value = msg[32:32 + min(length, 256)].split(b"\0", 1)[0]
    return nodeid, value.decode("utf-8", "surrogateescape")


def encode_shutdown() -> bytes:
    return REQ_HEADER.pack(service_id_make(ServiceId.CFG, SHUTDOWN), SHUTDOWN_SIZE)


def encode_reload(nodeid: int, token: int) -> bytes:
    """``source`` = (our nodeid, an opaque u64 naming the waiting client on this node)."""
    return (REQ_HEADER.pack(service_id_make(ServiceId.CFG, RELOAD_CONFIG), RELOAD_SIZE)
            + struct.pack("<I4xQ", nodeid, token))


def _swap_killnode(msg: bytes) -> bytes:
    # corosync swaps only the name's length (not the nodeid: a 3.1.7 bug kept for parity)
    return swap_fields(msg, [(24, "H")])


@define(eq=False)
class CfgPd:
    conn: Any
    tracking: bool = False
    reply: int = UNKNOWN


class CfgService(Service):
    id = ServiceId.CFG
    name = "corosync configuration service"
    ipc_name = "cfg"
    subsys = "CFG"

    def __init__(self, api: ServiceApi) -> None:
        super().__init__(api)
        self.exec_handlers = [
            ExecHandler(lambda m, s: None),
            ExecHandler(self._exec_killnode, _swap_killnode),
            ExecHandler(self._exec_shutdown),
            ExecHandler(self._exec_reload),
            ExecHandler(lambda m, s: None),
        ]
        fc = True
        self.lib_handlers = {
            cp.REQ_RINGSTATUSGET: LibHandler(self._lib_ringstatus, fc),
            cp.REQ_RINGREENABLE: LibHandler(
                lambda c, p: c.send_response(cp.RES_RINGREENABLE, b"", CsError.ERR_NOT_SUPPORTED), fc),
            cp.REQ_KILLNODE: LibHandler(self._lib_killnode, fc),
            cp.REQ_TRYSHUTDOWN: LibHandler(self._lib_tryshutdown, fc),
            cp.REQ_REPLYTOSHUTDOWN: LibHandler(self._lib_replytoshutdown, fc),
            cp.REQ_GET_NODE_ADDRS: LibHandler(self._lib_get_node_addrs),
            cp.REQ_LOCAL_GET: LibHandler(self._lib_local_get),
            cp.REQ_RELOAD_CONFIG: LibHandler(self._lib_reload, fc),
            cp.REQ_REOPEN_LOG_FILES: LibHandler(self._lib_reopen),
            cp.REQ_NODESTATUSGET: LibHandler(self._lib_nodestatus),
            cp.REQ_TRACKSTART: LibHandler(self._lib_trackstart, fc),
            cp.REQ_TRACKSTOP: LibHandler(self._lib_trackstop, fc),
        }
        self.pds: dict[int, CfgPd] = {}
        self.members: tuple[int, ...] = (api.nodeid,)
        self.shutdown_con: CfgPd | None = None
        self.shutdown_flags = 0
        self.shutdown_expected = 0
        self._shutdown_timer: Any = None
        self._reload_waiters: dict[int, Any] = {}
        self._reload_tokens = 0
        #: listeners that disconnected or stopped tracking during a pending shutdown (YES)
        self._left_yes = 0

    # ------------------------------------------------------------------ helpers
    def _log(self, level: LogLevel, text: str) -> None:
        self.api.log(level, text, self.subsys)

    def _hook(self, name: str) -> Any:
        return getattr(self.api, name, None)

    def confchg(self, kind: ConfChgKind, members: tuple[int, ...], left: tuple[int, ...],
                joined: tuple[int, ...], ring_id: RingId) -> None:
        if kind == ConfChgKind.REGULAR:
            self.members = tuple(members)

    def _pd(self, conn: Any) -> CfgPd:
        pd = self.pds.get(id(conn))
        if pd is None:
            pd = self.pds[id(conn)] = CfgPd(conn)
        return pd

    def lib_init(self, conn: Any) -> None:
        self.pds[id(conn)] = CfgPd(conn)

    def lib_exit(self, conn: Any) -> None:
        pd = self.pds.pop(id(conn), None)
        if pd is not None:
            self._remove_from_shutdown(pd)
        for token, waiting in list(self._reload_waiters.items()):
            if waiting is conn:
                del self._reload_waiters[token]

    # ------------------------------------------------------------------ node data
    def _nodelist_addrs(self, nodeid: int) -> list[str] | None:
        cmap = self.api.cmap
        pos = None
        for key, entry in cmap.iter_prefix("nodelist.node."):
            m = _NODEID_KEY.match(key)
            if m and entry.value == nodeid:
                pos = m.group(1)
                break
        if pos is None:
            return None
        addrs: dict[int, str] = {}
        for key, entry in cmap.iter_prefix(f"nodelist.node.{pos}."):
            m = _ADDR_KEY.match(key)
            if m and m.group(1) == pos:
                addrs[int(m.group(2))] = str(entry.value)
        return [addrs[k] for k in sorted(addrs)]

    def node_addrs(self, nodeid: int) -> list[str] | None:
        hook = self._hook("node_addrs")
        if hook is not None:
            return hook(nodeid)  # type: ignore[no-any-return]
        return self._nodelist_addrs(nodeid)

    def node_status(self, nodeid: int) -> cp.NodeStatus | None:
        hook = self._hook("node_status")
        if hook is not None:
            return hook(nodeid)  # type: ignore[no-any-return]
        addrs = self._nodelist_addrs(nodeid)
        reachable = nodeid in self.members or nodeid == self.api.nodeid
        if addrs is None:
            # a udp/udpu node answers OK for any node id: no link data, reachable from Totem
            return cp.NodeStatus(nodeid, reachable)
        mtu = int(self.api.cmap.get("totem.netmtu", DEFAULT_NET_MTU))
        link0 = cp.LinkStatus(True, reachable, False, mtu, addrs[0] if addrs else "", "")
        return cp.NodeStatus(nodeid, reachable, links=(link0,))

    # ------------------------------------------------------------------ lib handlers
    def _lib_local_get(self, conn: Any, payload: bytes) -> None:
        conn.send_response(cp.RES_LOCAL_GET, cp.enc_u32(self.api.nodeid))

    def _lib_get_node_addrs(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "cfg get_node_addrs")
        (nodeid,) = struct.unpack_from("<I", payload)
        addrs = self.node_addrs(nodeid or self.api.nodeid) or []
        raw: list[bytes] = []
        family = 0
        for text in addrs:
            try:
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue  # a host name: only literal addresses are reported here
            family = family or (socket.AF_INET if ip.version == 4 else socket.AF_INET6)
            raw.append(ip.packed)
        if not raw:
            conn.send_response(cp.RES_GET_NODE_ADDRS, cp.GetNodeAddrsResponse(0, ()).encode(),
                               CsError.ERR_NOT_EXIST)
            return
        conn.send_response(cp.RES_GET_NODE_ADDRS,
                           cp.GetNodeAddrsResponse(family, tuple(raw)).encode())

    def _lib_nodestatus(self, conn: Any, payload: bytes) -> None:
        need(payload, 12, "cfg nodestatusget")
        nodeid, version = struct.unpack_from("<I4xI", payload)
        status = self.node_status(nodeid)
        if status is None:
            conn.send_response(cp.RES_NODESTATUSGET, cp.enc_u32(version),
                               CsError.ERR_FAILED_OPERATION)
        elif version != cp.NODE_STATUS_V1:
            conn.send_response(cp.RES_NODESTATUSGET, cp.enc_u32(version),
                               CsError.ERR_NOT_SUPPORTED)
        else:
            conn.send_response(cp.RES_NODESTATUSGET, status.encode())

    def _lib_ringstatus(self, conn: Any, payload: bytes) -> None:
        addrs = self.node_addrs(self.api.nodeid) or []
        conn.send_response(cp.RES_RINGSTATUSGET, cp.RingStatus(tuple(
            (f"{i} {a}", "OK") for i, a in enumerate(addrs[:1]))).encode())

    def _lib_killnode(self, conn: Any, payload: bytes) -> None:
        nodeid, reason = cp.dec_killnode(payload) if len(payload) >= 10 else (None, "")
        if nodeid is None:
            raise Malformed("truncated", "cfg killnode")
        status = self.api.cmap.get(f"runtime.members.{nodeid}.status", None)
        error = CsError.OK
        if status != "joined":
            error = CsError.ERR_NOT_EXIST
        else:
            try:
                self.api.mcast(encode_killnode(nodeid, reason), Guarantee.SAFE)
            except SendFailed:
                error = CsError.ERR_TRY_AGAIN
        conn.send_response(cp.RES_KILLNODE, b"", error)

    def _lib_reload(self, conn: Any, payload: bytes) -> None:
        self._reload_tokens += 1
        token = self._reload_tokens
        try:
            self.api.mcast(encode_reload(self.api.nodeid, token), Guarantee.SAFE)
        except SendFailed:
            conn.send_response(cp.RES_RELOAD_CONFIG, b"", CsError.ERR_TRY_AGAIN)
            return
        self._reload_waiters[token] = conn  # answered when the message went round

    def _lib_reopen(self, conn: Any, payload: bytes) -> None:
        hook = self._hook("reopen_log_files")
        result = CsError.OK if hook is None else int(hook())
        conn.send_response(cp.RES_REOPEN_LOG_FILES, b"", result)

    # -- shutdown ----------------------------------------------------------------------
    def _trackers(self) -> list[CfgPd]:
        return [pd for pd in self.pds.values() if pd.tracking]

    def _test_shutdown(self, only: CfgPd | None = None, exclude: CfgPd | None = None,
                       status: int = CsError.OK) -> None:
        body = cp.enc_u32(self.shutdown_flags)
        for pd in ([only] if only is not None else self._trackers()):
            if pd is not exclude:
                pd.conn.send_event(cp.EV_TESTSHUTDOWN, body, status)

    def _go_down(self) -> None:
        try:
            self.api.mcast(encode_shutdown(), Guarantee.SAFE)
        except SendFailed:
            self.api.shutdown_request("cfg shutdown")

    def _check_shutdown(self) -> None:
        con = self.shutdown_con
        if con is None:
            return
        yes = sum(1 for pd in self._trackers() if pd is not con and pd.reply == YES)
        no = sum(1 for pd in self._trackers() if pd is not con and pd.reply == NO)
        yes += self._left_yes
        if yes + no < self.shutdown_expected:
            return
        self._timer_del()
        self.shutdown_con = None
        if yes >= self.shutdown_expected or self.shutdown_flags == cp.SHUTDOWN_FLAG_REGARDLESS:
            con.conn.send_response(cp.RES_TRYSHUTDOWN)
            self._go_down()
        else:
            con.conn.send_response(cp.RES_TRYSHUTDOWN, b"", CsError.ERR_BUSY)

    def _timer_del(self) -> None:
        delete = self._hook("timer_del")
        if self._shutdown_timer is not None and delete is not None:
            delete(self._shutdown_timer)
        self._shutdown_timer = None

    def _shutdown_timeout(self) -> None:
        self._shutdown_timer = None
        for pd in self._trackers():
            if pd.reply == UNKNOWN and pd is not self.shutdown_con:
                pd.reply = NO
        self._check_shutdown()
        self._test_shutdown(status=CsError.ERR_TIMEOUT)

    def _remove_from_shutdown(self, pd: CfgPd) -> None:
        if pd is self.shutdown_con:
            self.shutdown_con = None
            self._timer_del()
        if pd.tracking:
            pd.tracking = False
            if self.shutdown_con is not None:
                self._left_yes += 1  # a listener that leaves counts as YES
                self._check_shutdown()

    def _lib_tryshutdown(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "cfg tryshutdown")
        (flags,) = struct.unpack_from("<I", payload)
        if flags == cp.SHUTDOWN_FLAG_IMMEDIATE:
            self._go_down()
            conn.send_response(cp.RES_TRYSHUTDOWN)
            return
        if self.shutdown_con is not None:
            conn.send_response(cp.RES_TRYSHUTDOWN, b"", CsError.ERR_EXIST)
            return
        me = self._pd(conn)
        self.shutdown_con, self.shutdown_flags, self._left_yes = me, flags, 0
        others = [pd for pd in self._trackers() if pd is not me]
        for pd in others:
            pd.reply = UNKNOWN
        self.shutdown_expected = len(others)
        if not others:
            self.shutdown_con = None
            conn.send_response(cp.RES_TRYSHUTDOWN)
            self._go_down()
            return
        add = self._hook("timer_add")
        if add is not None:
            timeout = int(self.api.cmap.get("cfg.shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT_MS))
            self._shutdown_timer = add(timeout, self._shutdown_timeout)
        self._test_shutdown(exclude=me)  # the answer waits for the listeners' replies

    def _lib_replytoshutdown(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "cfg replytoshutdown")
        (response,) = struct.unpack_from("<I", payload)
        if self.shutdown_con is None:
            conn.send_response(cp.RES_REPLYTOSHUTDOWN, b"", CsError.ERR_ACCESS)
            return
        self._pd(conn).reply = YES if response else NO
        self._check_shutdown()
        conn.send_response(cp.RES_REPLYTOSHUTDOWN)

    def _lib_trackstart(self, conn: Any, payload: bytes) -> None:
        pd = self._pd(conn)
        if not pd.tracking:
            pd.tracking = True
            if self.shutdown_con is not None:
                pd.reply = UNKNOWN
                self.shutdown_expected += 1
                self._test_shutdown(only=pd)
        conn.send_response(cp.RES_TRACKSTART)

    def _lib_trackstop(self, conn: Any, payload: bytes) -> None:
        self._remove_from_shutdown(self._pd(conn))
        conn.send_response(cp.RES_TRACKSTOP)

    # ------------------------------------------------------------------ exec handlers
    def _exec_killnode(self, msg: bytes, sender: int) -> None:
        nodeid, reason = decode_killnode(msg)
        if nodeid != self.api.nodeid:
            return
        self._log(LogLevel.NOTICE, f"Killed by node {sender} : {reason}")
        fatal = self._hook("fatal_exit")
        if fatal is not None:
            fatal(f"killed by node {sender}")
        else:
            self.api.shutdown_request(f"killed by node {sender}")

    def _exec_shutdown(self, msg: bytes, sender: int) -> None:
        self._log(LogLevel.NOTICE, f"Node {sender} was shut down by sysadmin")
        if sender == self.api.nodeid:
            self.api.shutdown_request("cfg shutdown")

    def _exec_reload(self, msg: bytes, sender: int) -> None:
        need(msg, RELOAD_SIZE, "cfg reload_config")
        src_node, token = struct.unpack_from("<I4xQ", msg, 16)
        self._log(LogLevel.NOTICE, f"Config reload requested by node {sender}")
        hook = self._hook("reload_config")
        result = CsError.ERR_NOT_SUPPORTED if hook is None else int(hook())
        if sender == self.api.nodeid and src_node == self.api.nodeid:
            conn = self._reload_waiters.pop(token, None)
            if conn is not None:
                conn.send_response(cp.RES_RELOAD_CONFIG, b"", result)
