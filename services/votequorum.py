"""The votequorum service (id 5): vote-based quorum for the cluster (spec/totem-wire.md §5.5,
spec/ipc-wire.md §4.4).

The arithmetic lives in :mod:`corosync.services.vq_math`; this module is the plumbing
around it:

* **exec messages** NODEINFO, RECONFIGURE, QDEVICE_REG, QDEVICE_RECONFIGURE, byte-compatible
  with corosync 3.1.7, each fed to the node database in total order;
* **sync**: in its phase this node multicasts NODEINFO about itself, *then* NODEINFO about
  the quorum device (node id 0), then QDEVICE_REG when a device name is known.  The order is
  not cosmetic: a real node that receives a qdevice NODEINFO from a sender it has no
  NODEINFO of yet hits an ``assert`` and aborts.  At activation the quorum is recomputed and
  handed to the quorum service, which logs and notifies;
* **lib handlers** GETINFO, SETEXPECTED, SETVOTES, TRACKSTART/STOP and the qdevice calls,
  with corosync's response ids (STATUS 0, GETINFO 1) and error codes;
* **cmap keys** ``runtime.votequorum.*`` that corosync-quorumtool and corosync-cmapctl read.

Only active when ``quorum.provider`` is ``corosync_votequorum`` (like corosync, which does
not load the engine otherwise): a disabled instance has no IPC name, no sync participation
and ignores service-5 messages.

With expected-votes tracking (``quorum.expected_votes_tracking`` or ``allow_downscale``)
the highest expected votes seen is kept in ``<state dir>/ev_tracking`` (4 bytes, native
order) like corosync, so a restarted node does not come back with a lower value.

Timers (last-man-standing window, qdevice poll timeout) need a host timer: if the host API
offers ``timer_add(ms, callback) -> handle`` and ``timer_del(handle)`` they are used;
otherwise the window never expires (LMS never downscales) and a qdevice stays "alive" until
it unregisters or its connection closes — stated in docs/service-votequorum.md.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Any

from attrs import define

from corosync.exec.cmap import CmapType, Track
from corosync.exec.service import (REQ_HEADER, CsError, ExecHandler, LibHandler, Malformed,
                                   SendFailed, Service, ServiceApi, ServiceId, need,
                                   service_id_make, swap_fields)
from corosync.exec.totem.events import LogLevel
from corosync.exec.totem.wire import ZERO_RING, RingId
from corosync.lib.proto import votequorum as vp
from corosync.services.quorum import PROVIDER_VOTEQUORUM, configured_provider, quorum_link
from corosync.services.vq_math import (QDEVICE_NODEID, Atb, ConfigError, NodeFlag, NodeState,
                                       Reconfig, VoteQuorum, read_config)

NODEINFO, RECONFIGURE, QDEVICE_REG, QDEVICE_RECONFIGURE = range(4)
NODEINFO_SIZE = 32
RECONFIGURE_SIZE = 32
QDEVICE_REG_SIZE = 280
QDEVICE_RECONFIGURE_SIZE = 528
QDEVICE_OP_UNREGISTER, QDEVICE_OP_REGISTER = 0, 1
_NODEINFO = struct.Struct("<IIII")
_RECONF = struct.Struct("<IIB3x4x")
_NODE_KEY = re.compile(r"^nodelist\.node\.(\d+)\.(.+)$")
TRACK_CURRENT, TRACK_CHANGES, TRACK_CHANGES_ONLY = 1, 2, 4


# ------------------------------------------------------------------------- exec messages
def encode_nodeinfo(nodeid: int, votes: int, expected: int, flags: int) -> bytes:
    return (REQ_HEADER.pack(service_id_make(ServiceId.VOTEQUORUM, NODEINFO), NODEINFO_SIZE)
            + _NODEINFO.pack(nodeid, votes, expected, int(flags)))


def encode_reconfigure(param: int, nodeid: int, value: int) -> bytes:
    return (REQ_HEADER.pack(service_id_make(ServiceId.VOTEQUORUM, RECONFIGURE), RECONFIGURE_SIZE)
            + _RECONF.pack(nodeid, value, param))


def encode_qdevice_reg(operation: int, name: str) -> bytes:
    return (REQ_HEADER.pack(service_id_make(ServiceId.VOTEQUORUM, QDEVICE_REG), QDEVICE_REG_SIZE)
            + struct.pack("<I", operation) + vp.encode_qname(name) + bytes(5))


def encode_qdevice_reconfigure(old: str, new: str) -> bytes:
    return (REQ_HEADER.pack(service_id_make(ServiceId.VOTEQUORUM, QDEVICE_RECONFIGURE),
                            QDEVICE_RECONFIGURE_SIZE)
            + vp.encode_qname(old) + vp.encode_qname(new) + bytes(2))


def _cstr(msg: bytes, off: int) -> str:
    return vp.decode_qname(msg, off)


@define(eq=False)
class VqPd:
    conn: Any
    tracking: bool = False
    context: int = 0


@define
class VqStats:
    nodeinfo_rx: int = 0
    nodeinfo_tx: int = 0
    qdevice_unknown_sender: int = 0


class VotequorumService(Service):
    id = ServiceId.VOTEQUORUM
    name = "corosync vote quorum service v1.0"
    ipc_name = "votequorum"
    sync = True
    subsys = "VOTEQ"
    #: corosync lifts the sync flow control for votequorum only (ipc_glue.c): a quorum
    #: device must be able to poll with the new ring id *during* the sync that waits for
    #: that very poll — flow-controlled, the poll would stall until sync_timeout.
    ipc_during_sync = True

    def __init__(self, api: ServiceApi) -> None:
        super().__init__(api)
        self.stats = VqStats()
        self.enabled = configured_provider(api) == PROVIDER_VOTEQUORUM
        self.pds: dict[int, VqPd] = {}
        self._pending: list[bytes] = []
        self._sync_stage = 0
        self.ring_id: RingId = ZERO_RING
        self.qdevice_name = ""
        self.qdevice_reg_conn: Any = None
        self._lms_timer: Any = None
        self._qdevice_timer: Any = None
        #: a registered, alive device must poll with the new ring id before our sync ends
        self._sync_wait_poll = False
        if not self.enabled:
            # corosync does not load the engine: nothing to serve, nothing to sync
            self.ipc_name = None  # type: ignore[misc]
            self.sync = False  # type: ignore[misc]
            self.exec_handlers = [ExecHandler(lambda m, s: None) for _ in range(4)]
            self.vq: VoteQuorum | None = None
            return
        self.exec_handlers = [
            ExecHandler(self._exec_nodeinfo, _swap_nodeinfo),
            ExecHandler(self._exec_reconfigure, _swap_reconfigure),
            ExecHandler(self._exec_qdevice_reg, _swap_qdevice_reg),
            ExecHandler(self._exec_qdevice_reconfigure, lambda m: swap_fields(m, [])),
        ]
        self.lib_handlers = {
            vp.REQ_GETINFO: LibHandler(self._lib_getinfo),
            vp.REQ_SETEXPECTED: LibHandler(self._lib_setexpected),
            vp.REQ_SETVOTES: LibHandler(self._lib_setvotes),
            vp.REQ_TRACKSTART: LibHandler(self._lib_trackstart),
            vp.REQ_TRACKSTOP: LibHandler(self._lib_trackstop),
            vp.REQ_QDEVICE_REGISTER: LibHandler(self._lib_qdevice_register),
            vp.REQ_QDEVICE_UNREGISTER: LibHandler(self._lib_qdevice_unregister),
            vp.REQ_QDEVICE_UPDATE: LibHandler(self._lib_qdevice_update),
            vp.REQ_QDEVICE_POLL: LibHandler(self._lib_qdevice_poll),
            vp.REQ_QDEVICE_MASTER_WINS: LibHandler(self._lib_qdevice_master_wins),
        }
        api.log(LogLevel.NOTICE, f"Using quorum provider {PROVIDER_VOTEQUORUM}", "QUORUM")
        try:
            config = read_config(self._cfg_get, self._nodelist(), self._local_pos())
        except ConfigError as exc:
            api.log(LogLevel.CRIT, str(exc), self.subsys)
            api.log(LogLevel.CRIT, f"Quorum provider: {PROVIDER_VOTEQUORUM} failed to "
                                   "initialize.", "QUORUM")
            raise
        for warning in config.warnings:
            self._log(LogLevel.WARNING, warning)
        self._ev_written: int | None = None
        barrier = self._load_ev_barrier() if config.ev_tracking else 0
        self.vq = VoteQuorum(api.nodeid, config, ev_tracking_barrier=barrier)
        self.link = quorum_link(api)
        self.link.provider = self
        cm = api.cmap
        cm.set("runtime.votequorum.this_node_id", api.nodeid, CmapType.UINT32)
        if config.atb != Atb.NONE:
            cm.set("runtime.votequorum.atb_type", int(config.atb), CmapType.UINT32)
        if config.have_qdevice:
            cm.set("runtime.votequorum.qdevice_can_operate", 1, CmapType.UINT8)
        self._synced = False
        every = Track.ADD | Track.DELETE | Track.MODIFY | Track.PREFIX
        cm.track_add("nodelist.", every, self._config_changed)
        cm.track_add("quorum.", every, self._config_changed)
        cm.track_add("config.totemconfig_reload_in_progress", Track.ADD | Track.MODIFY,
                     self._config_changed)
        self._drain()

    # ------------------------------------------------------------------ config access
    def _cfg_get(self, key: str) -> object | None:
        return self.api.cmap.get(key, None)

    def _nodelist(self) -> list[dict[str, object]]:
        nodes: dict[int, dict[str, object]] = {}
        for key, entry in self.api.cmap.iter_prefix("nodelist.node."):
            m = _NODE_KEY.match(key)
            if m:
                nodes.setdefault(int(m.group(1)), {})[m.group(2)] = entry.value
        return [nodes[k] for k in sorted(nodes)]

    def _local_pos(self) -> int | None:
        pos = self.api.cmap.get("nodelist.local_node_pos", None)
        if pos is None:
            return None
        positions = sorted({int(m.group(1)) for key, _ in self.api.cmap.iter_prefix("nodelist.node.")
                            if (m := _NODE_KEY.match(key))})
        return positions.index(int(pos)) if int(pos) in positions else None

    # ------------------------------------------------------------------ ev tracking file
    def _ev_path(self) -> str:
        """``<state dir>/ev_tracking``: the host's ``state_dir`` if it offers one, else
        cmap ``system.state_dir``, else corosync's default /var/lib/corosync."""
        base = getattr(self.api, "state_dir", None) or self.api.cmap.get(
            "system.state_dir", None) or "/var/lib/corosync"
        return os.path.join(str(base), "ev_tracking")

    def _load_ev_barrier(self) -> int:
        """The highest expected votes ever seen (expected-votes tracking survives restarts).
        A missing or short file counts as 0 and is (re)created, as corosync does."""
        path = self._ev_path()
        try:
            with open(path, "rb") as f:
                raw = f.read(4)
            if len(raw) == 4:
                self._ev_written = struct.unpack("<I", raw)[0]
                return self._ev_written
        except OSError:
            pass
        self._store_ev_barrier(0)
        return 0

    def _store_ev_barrier(self, value: int) -> None:
        path = self._ev_path()
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o700)
            try:
                os.write(fd, struct.pack("<I", value))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self._ev_written = value
        except OSError as exc:
            self._log(LogLevel.WARNING, f"Unable to update ev_tracking_barrier on disk data!!! "
                                        f"({path}: {exc.strerror})")

    # ------------------------------------------------------------------ runtime config
    def _config_changed(self, event: Any, key: str, new: Any, old: Any) -> None:
        """cmap ``quorum.*`` / ``nodelist.*`` changed (e.g. a config reload, or an operator
        setting ``quorum.cancel_wait_for_all``): re-read what corosync re-reads at runtime
        and tell the cluster.  Waits while a full reload is in progress (it ends with
        ``config.totemconfig_reload_in_progress`` back at 0)."""
        cm = self.api.cmap
        if cm.get("config.totemconfig_reload_in_progress", 0):
            return
        if (key == "config.totemconfig_reload_in_progress"
                and cm.get("config.reload_status", CsError.OK) != CsError.OK):
            return
        vq = self.vq
        assert vq is not None
        if key == "quorum.cancel_wait_for_all":
            if new is not None and int(new.value) >= 1:
                cm.set("quorum.cancel_wait_for_all", 0, CmapType.UINT8)
                if self._synced:
                    self._send(encode_reconfigure(Reconfig.CANCEL_WFA, self.api.nodeid, 0))
            return
        try:
            config = read_config(self._cfg_get, self._nodelist(), self._local_pos())
        except ConfigError as exc:
            self._log(LogLevel.CRIT, str(exc))
            self._log(LogLevel.CRIT, "will continue with current runtime data")
            return
        old_votes, old_expected = vq.us.votes, vq.us.expected_votes
        vq.apply_runtime_config(config)
        self._update_cmap()
        if not self._synced:
            return  # our first sync sends everything (a qdevice NODEINFO must not go first)
        self._send_nodeinfo(self.api.nodeid)
        self._send_nodeinfo(QDEVICE_NODEID)
        if vq.us.votes != old_votes:
            self._send(encode_reconfigure(Reconfig.NODE_VOTES, self.api.nodeid, vq.us.votes))
        if vq.us.expected_votes != old_expected:
            self._send(encode_reconfigure(Reconfig.EXPECTED_VOTES, self.api.nodeid,
                                          vq.us.expected_votes))

    # ------------------------------------------------------------------ helpers
    def _log(self, level: LogLevel, text: str) -> None:
        self.api.log(level, text, self.subsys)

    def _send(self, message: bytes) -> None:
        """Send now, or queue behind earlier messages that could not go out (order kept)."""
        if self._pending:
            self._pending.append(message)
            return
        try:
            self.api.mcast(message)
        except SendFailed:
            self._pending.append(message)

    def pump(self) -> None:
        while self._pending:
            try:
                self.api.mcast(self._pending[0])
            except SendFailed:
                return
            self._pending.pop(0)

    def _send_nodeinfo(self, nodeid: int) -> None:
        assert self.vq is not None
        node = self.vq.node(nodeid)
        if node is None:
            return
        expected = node.expected_votes
        flags = int(node.flags) if nodeid != QDEVICE_NODEID else 0
        self.stats.nodeinfo_tx += 1
        self._send(encode_nodeinfo(nodeid, node.votes, expected, flags))

    def _update_cmap(self) -> None:
        vq = self.vq
        assert vq is not None
        cm = self.api.cmap
        cm.set("runtime.votequorum.ev_barrier", vq.ev_barrier, CmapType.UINT32)
        cm.set("runtime.votequorum.two_node", int(vq.two_node), CmapType.UINT8)
        if vq.quorate:
            cm.set("runtime.votequorum.lowest_node_id", vq.lowest_node_id, CmapType.UINT32)
            cm.set("runtime.votequorum.highest_node_id", vq.highest_node_id, CmapType.UINT32)
        if vq.wait_for_all:
            cm.set("runtime.votequorum.wait_for_all_status", int(vq.wfa_status), CmapType.UINT8)
        if vq.config.ev_tracking:
            cm.set("runtime.votequorum.ev_tracking_barrier", vq.ev_tracking_barrier,
                   CmapType.UINT32)
            if vq.ev_tracking_barrier != self._ev_written:
                self._store_ev_barrier(vq.ev_tracking_barrier)

    def _drain(self) -> None:
        """Act on what the last event changed: logs, notifications, cmap."""
        vq = self.vq
        assert vq is not None
        eff = vq.effects
        for line in eff.logs:
            self._log(LogLevel.NOTICE, line)
        if eff.expected_changed:
            self._notify_expected()
        if eff.quorum_changed:
            self.link.set_quorum(vq.quorum_members, vq.quorate, self.ring_id)
            self._notify_quorum()
        eff.clear()
        self._update_cmap()

    # ------------------------------------------------------------------ notifications
    def _trackers(self) -> list[VqPd]:
        return [pd for pd in self.pds.values() if pd.tracking]

    def _quorum_ev(self, context: int) -> vp.QuorumNotification:
        vq = self.vq
        assert vq is not None
        nodes = [(n.nodeid, int(n.state)) for n in vq.listed_nodes()]
        if vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            nodes.append((QDEVICE_NODEID, int(vq.qdevice.state)))
        return vp.QuorumNotification(vq.quorate, context, tuple(nodes))

    def _nodelist_ev(self, context: int) -> vp.NodelistNotification:
        assert self.vq is not None
        return vp.NodelistNotification(context, self.ring_id.rep, self.ring_id.seq,
                                       self.vq.quorum_members)

    def _notify_quorum(self, pd: VqPd | None = None, context: int = 0) -> None:
        targets = [pd] if pd is not None else self._trackers()
        for t in targets:
            ev = self._quorum_ev(context if pd is not None else t.context)
            t.conn.send_event(ev.ID, ev.encode())

    def _notify_nodelist(self, pd: VqPd | None = None, context: int = 0) -> None:
        targets = [pd] if pd is not None else self._trackers()
        for t in targets:
            ev = self._nodelist_ev(context if pd is not None else t.context)
            t.conn.send_event(ev.ID, ev.encode())

    def _notify_expected(self) -> None:
        assert self.vq is not None
        for t in self._trackers():
            ev = vp.ExpectedVotesNotification(t.context, self.vq.us.expected_votes)
            t.conn.send_event(ev.ID, ev.encode())

    # ------------------------------------------------------------------ timers
    def _timer_add(self, ms: int, callback: Any) -> Any:
        add = getattr(self.api, "timer_add", None)
        return add(ms, callback) if add is not None else None

    def _timer_del(self, handle: Any) -> None:
        delete = getattr(self.api, "timer_del", None)
        if handle is not None and delete is not None:
            delete(handle)

    def _lms_fired(self) -> None:
        self._lms_timer = None
        assert self.vq is not None
        self.vq.lms_expired()
        self._drain()

    def _qdevice_timeout(self) -> None:
        self._qdevice_timer = None
        vq = self.vq
        assert vq is not None
        self._sync_wait_poll = False
        if vq.us.flags & NodeFlag.QDEVICE_ALIVE:
            vq.us.flags &= ~(NodeFlag.QDEVICE_ALIVE | NodeFlag.QDEVICE_CAST_VOTE)
            self._log(LogLevel.INFO, f"lost contact with quorum device {self.qdevice_name}")
            self._send_nodeinfo(self.api.nodeid)

    # ------------------------------------------------------------------ sync
    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        assert self.vq is not None
        self._sync_stage = 0
        self.ring_id = ring_id
        if self.vq.sync_init(member_list):
            self._timer_del(self._lms_timer)
            self._lms_timer = self._timer_add(self.vq.config.lms_window_ms, self._lms_fired)
        flags = self.vq.us.flags
        self._sync_wait_poll = False
        if (flags & NodeFlag.QDEVICE_REGISTERED and flags & NodeFlag.QDEVICE_ALIVE
                and getattr(self.api, "timer_add", None) is not None):
            # the device must vote for the new membership (or time out) before sync ends;
            # without a host timer we could wait forever, so then we do not wait
            timeout = int(self.api.cmap.get("quorum.device.sync_timeout", 30_000))
            self._timer_del(self._qdevice_timer)
            self._qdevice_timer = self._timer_add(timeout, self._qdevice_timeout)
            self._sync_wait_poll = True
            self._log(LogLevel.INFO, f"waiting for quorum device {self.qdevice_name} poll "
                                     f"(but maximum for {timeout} ms)")

    def sync_process(self) -> bool:
        # own NODEINFO strictly before the qdevice one (a real node asserts otherwise);
        # _send keeps the order even when the queue is full
        if self._sync_stage == 0:
            self._send_nodeinfo(self.api.nodeid)
            self._send_nodeinfo(QDEVICE_NODEID)
            if self.qdevice_name:
                self._send(encode_qdevice_reg(QDEVICE_OP_REGISTER, self.qdevice_name))
            self._notify_nodelist()
            self._sync_stage = 1
        if self._sync_wait_poll and self.vq is not None and \
                self.vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            return False
        # the sync barrier must not overtake our NODEINFOs still waiting for queue room
        return not self._pending

    def sync_activate(self) -> None:
        vq = self.vq
        assert vq is not None
        vq.sync_activate()
        self._synced = True
        vq.effects.quorum_changed = False
        self._drain()
        self.link.set_quorum(vq.quorum_members, vq.quorate, self.ring_id)
        self._notify_quorum()

    def sync_abort(self) -> None:
        self._sync_stage = 0

    def exec_exit(self) -> None:
        if self.vq is not None and self.vq.config.allow_downscale:
            self.vq.leaving()
            self._send_nodeinfo(self.api.nodeid)

    # ------------------------------------------------------------------ exec handlers
    def _exec_nodeinfo(self, msg: bytes, sender: int) -> None:
        need(msg, NODEINFO_SIZE, "votequorum nodeinfo")
        nodeid, votes, expected, flags = _NODEINFO.unpack_from(msg, 16)
        assert self.vq is not None
        self.stats.nodeinfo_rx += 1
        if not self.vq.on_nodeinfo(sender, nodeid, votes, expected, flags):
            self.stats.qdevice_unknown_sender += 1
            raise Malformed("vq_qdevice_unknown_sender",
                            f"qdevice NODEINFO from node {sender} before its own NODEINFO")
        self._drain()

    def _exec_reconfigure(self, msg: bytes, sender: int) -> None:
        need(msg, 25, "votequorum reconfigure")
        nodeid, value, param = struct.unpack_from("<IIB", msg, 16)
        if param not in (1, 2, 3):
            raise Malformed("vq_bad_param", f"reconfigure param {param}")
        assert self.vq is not None
        self.vq.on_reconfigure(Reconfig(param), nodeid, value)
        self._drain()

    def _exec_qdevice_reg(self, msg: bytes, sender: int) -> None:
        need(msg, 20 + vp.QDEVICE_NAME_LEN, "votequorum qdevice_reg")
        (operation,) = struct.unpack_from("<I", msg, 16)
        name = _cstr(msg, 20)
        vq = self.vq
        assert vq is not None
        if operation == QDEVICE_OP_REGISTER:
            if sender != self.api.nodeid:
                if not self.qdevice_name:
                    self.qdevice_name = name
                return
            if vq.us.flags & NodeFlag.QDEVICE_REGISTERED or self.qdevice_reg_conn is None:
                return
            if not self.qdevice_name:
                self.qdevice_name = name
            error = CsError.OK
            if name == self.qdevice_name:
                vq.us.flags |= NodeFlag.QDEVICE_REGISTERED
                self._send_nodeinfo(QDEVICE_NODEID)
                self._send_nodeinfo(self.api.nodeid)
            else:
                self._log(LogLevel.WARNING, f"A new qdevice with different name (new: {name} "
                                            f"old: {self.qdevice_name}) is trying to register!")
                error = CsError.ERR_EXIST
            self.qdevice_reg_conn.send_response(vp.RES_STATUS, b"", error)
            self.qdevice_reg_conn = None
        elif operation == QDEVICE_OP_UNREGISTER:
            if not any(n.state == NodeState.MEMBER and n.flags & NodeFlag.QDEVICE_REGISTERED
                       for n in vq.nodes.values()):
                self.qdevice_name = ""

    def _exec_qdevice_reconfigure(self, msg: bytes, sender: int) -> None:
        need(msg, 16 + 2 * vp.QDEVICE_NAME_LEN, "votequorum qdevice_reconfigure")
        old, new = _cstr(msg, 16), _cstr(msg, 16 + vp.QDEVICE_NAME_LEN)
        if old == self.qdevice_name:
            self.qdevice_name = new

    # ------------------------------------------------------------------ IPC
    def lib_init(self, conn: Any) -> None:
        self.pds[id(conn)] = VqPd(conn)

    def lib_exit(self, conn: Any) -> None:
        self.pds.pop(id(conn), None)
        if conn is self.qdevice_reg_conn:
            self.qdevice_reg_conn = None

    def _pd(self, conn: Any) -> VqPd:
        pd = self.pds.get(id(conn))
        if pd is None:
            pd = self.pds[id(conn)] = VqPd(conn)
        return pd

    @staticmethod
    def _status(conn: Any, error: int = CsError.OK) -> None:
        conn.send_response(vp.RES_STATUS, b"", error)

    def _lib_getinfo(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "votequorum getinfo")
        (nodeid,) = struct.unpack_from("<i", payload)
        vq = self.vq
        assert vq is not None
        if nodeid == QDEVICE_NODEID:
            nodeid = self.api.nodeid
        node = vq.nodes.get(nodeid)
        if node is None:
            conn.send_response(vp.RES_GETINFO, vp.NodeInfo().encode(), CsError.ERR_NOT_EXIST)
            return
        members = vq.members()
        highest = max((n.expected_votes for n in members), default=0)
        total = sum(n.votes for n in members)
        if node.flags & NodeFlag.QDEVICE_CAST_VOTE:  # the device counts for the node asked about
            total += vq.qdevice.votes
        info = vp.NodeInfo(node.nodeid, int(node.state), node.votes, node.expected_votes,
                           highest, total, vq.quorum, int(vq.info_flags(node)),
                           vq.qdevice.votes, self.qdevice_name)
        conn.send_response(vp.RES_GETINFO, info.encode())

    def _lib_setexpected(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "votequorum setexpected")
        (expected,) = struct.unpack_from("<I", payload)
        vq = self.vq
        assert vq is not None
        if not vq.check_setexpected(expected):
            self._status(conn, CsError.ERR_INVALID_PARAM)
            return
        for n in vq.members():
            n.expected_votes = expected
        self._reconfigure(conn, Reconfig.EXPECTED_VOTES, self.api.nodeid, expected)

    def _reconfigure(self, conn: Any, kind: Reconfig, nodeid: int, value: int) -> None:
        """Send a RECONFIGURE and answer the client: NO_RESOURCES when the queue is full
        (corosync's answer when the exec message cannot be queued), OK otherwise."""
        try:
            self.api.mcast(encode_reconfigure(kind, nodeid, value))
        except SendFailed:
            self._status(conn, CsError.ERR_NO_RESOURCES)
            return
        self._status(conn)

    def _lib_setvotes(self, conn: Any, payload: bytes) -> None:
        need(payload, 8, "votequorum setvotes")
        votes, nodeid = struct.unpack_from("<Ii", payload)
        assert self.vq is not None
        ok = self.vq.check_setvotes(nodeid, votes)
        if ok is None:
            self._status(conn, CsError.ERR_NAME_NOT_FOUND)
            return
        if not ok:
            self._status(conn, CsError.ERR_INVALID_PARAM)
            return
        self._reconfigure(conn, Reconfig.NODE_VOTES, nodeid, votes)

    def _lib_trackstart(self, conn: Any, payload: bytes) -> None:
        need(payload, 12, "votequorum trackstart")
        context, flags = struct.unpack_from("<QI", payload)
        pd = self._pd(conn)
        if flags & (TRACK_CURRENT | TRACK_CHANGES):
            self._notify_nodelist(pd, context)
            self._notify_quorum(pd, context)
        if pd.tracking:
            self._status(conn, CsError.ERR_EXIST)
            return
        if flags & (TRACK_CHANGES | TRACK_CHANGES_ONLY):
            pd.tracking, pd.context = True, context
        self._status(conn)

    def _lib_trackstop(self, conn: Any, payload: bytes) -> None:
        pd = self._pd(conn)
        if pd.tracking:
            pd.tracking = False
            self._status(conn)
        else:
            self._status(conn, CsError.ERR_NOT_EXIST)

    def _qdevice_allowed(self) -> bool:
        return bool(self.vq is not None and self.vq.config.qdevice_can_operate)

    def _lib_qdevice_register(self, conn: Any, payload: bytes) -> None:
        need(payload, vp.QDEVICE_NAME_LEN, "votequorum qdevice_register")
        name = _cstr(payload, 0)
        vq = self.vq
        assert vq is not None
        if not self._qdevice_allowed():
            self._log(LogLevel.INFO, "Registration of quorum device is disabled by incorrect "
                                     "corosync.conf. See logs for more information")
            self._status(conn, CsError.ERR_ACCESS)
            return
        if vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            self._status(conn, CsError.OK if name == self.qdevice_name else CsError.ERR_EXIST)
            return
        if self.qdevice_reg_conn is not None:
            self._status(conn, CsError.ERR_TRY_AGAIN)
            return
        try:
            self.api.mcast(encode_qdevice_reg(QDEVICE_OP_REGISTER, name))
        except SendFailed:
            self._status(conn, CsError.ERR_TRY_AGAIN)
            return
        self.qdevice_reg_conn = conn  # answered when our QDEVICE_REG comes back in order

    def _lib_qdevice_unregister(self, conn: Any, payload: bytes) -> None:
        need(payload, vp.QDEVICE_NAME_LEN, "votequorum qdevice_unregister")
        name = _cstr(payload, 0)
        vq = self.vq
        assert vq is not None
        if not vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            self._status(conn, CsError.ERR_NOT_EXIST)
            return
        if name != self.qdevice_name:
            self._status(conn, CsError.ERR_INVALID_PARAM)
            return
        self._timer_del(self._qdevice_timer)
        self._qdevice_timer = None
        self._sync_wait_poll = False
        vq.us.flags &= ~(NodeFlag.QDEVICE_REGISTERED | NodeFlag.QDEVICE_ALIVE
                         | NodeFlag.QDEVICE_CAST_VOTE | NodeFlag.QDEVICE_MASTER_WINS)
        self._send_nodeinfo(self.api.nodeid)
        self._send(encode_qdevice_reg(QDEVICE_OP_UNREGISTER, name))
        self._status(conn)

    def _lib_qdevice_update(self, conn: Any, payload: bytes) -> None:
        need(payload, 2 * vp.QDEVICE_NAME_LEN, "votequorum qdevice_update")
        old, new = _cstr(payload, 0), _cstr(payload, vp.QDEVICE_NAME_LEN)
        vq = self.vq
        assert vq is not None
        if not vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            self._status(conn, CsError.ERR_NOT_EXIST)
        elif old != self.qdevice_name:
            self._status(conn, CsError.ERR_INVALID_PARAM)
        else:
            self._send(encode_qdevice_reconfigure(old, new))
            self._status(conn)

    def _lib_qdevice_poll(self, conn: Any, payload: bytes) -> None:
        need(payload, 280, "votequorum qdevice_poll")
        name = _cstr(payload, 0)
        cast_vote, ring_nodeid, ring_seq = struct.unpack_from("<i4xI4xQ", payload, 256)
        vq = self.vq
        assert vq is not None
        if not self._qdevice_allowed():
            self._status(conn, CsError.ERR_ACCESS)
            return
        if not vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            self._status(conn, CsError.ERR_NOT_EXIST)
            return
        if (ring_nodeid, ring_seq) != (self.ring_id.rep, self.ring_id.seq):
            self._status(conn, CsError.ERR_MESSAGE_ERROR)
            return
        if name != self.qdevice_name:
            self._status(conn, CsError.ERR_INVALID_PARAM)
            return
        self._timer_del(self._qdevice_timer)
        old = vq.us.flags
        vq.us.flags |= NodeFlag.QDEVICE_ALIVE
        if cast_vote:
            vq.us.flags |= NodeFlag.QDEVICE_CAST_VOTE
        else:
            vq.us.flags &= ~NodeFlag.QDEVICE_CAST_VOTE
        if vq.us.flags != old:
            self._send_nodeinfo(self.api.nodeid)
        timeout = int(self.api.cmap.get("quorum.device.timeout", 10_000))
        self._qdevice_timer = self._timer_add(timeout, self._qdevice_timeout)
        if self._sync_wait_poll:
            self._sync_wait_poll = False
            self._timer_add(0, lambda: None)  # the host pumps sync after a timer callback
        self._status(conn)

    def _lib_qdevice_master_wins(self, conn: Any, payload: bytes) -> None:
        need(payload, 260, "votequorum qdevice_master_wins")
        name = _cstr(payload, 0)
        (allow,) = struct.unpack_from("<I", payload, 256)
        vq = self.vq
        assert vq is not None
        if not self._qdevice_allowed():
            self._status(conn, CsError.ERR_ACCESS)
            return
        if not vq.us.flags & NodeFlag.QDEVICE_REGISTERED:
            self._status(conn, CsError.ERR_NOT_EXIST)
            return
        if name != self.qdevice_name:
            self._status(conn, CsError.ERR_INVALID_PARAM)
            return
        old = vq.us.flags
        if allow:
            vq.us.flags |= NodeFlag.QDEVICE_MASTER_WINS
        else:
            vq.us.flags &= ~NodeFlag.QDEVICE_MASTER_WINS
        self.api.cmap.set("runtime.votequorum.qdevice_master_wins", int(bool(allow)),
                          CmapType.UINT8)
        if vq.us.flags != old:
            self._send_nodeinfo(self.api.nodeid)
        self._status(conn)


# ------------------------------------------------------------------------- byte swapping
def _swap_nodeinfo(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I"), (20, "I"), (24, "I"), (28, "I")])


def _swap_reconfigure(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I"), (20, "I")])


def _swap_qdevice_reg(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I")])


__all__ = ["VotequorumService", "ConfigError", "encode_nodeinfo", "encode_reconfigure",
           "encode_qdevice_reg", "encode_qdevice_reconfigure"]
