"""The closed process group service (id 2): executive side (spec/totem-wire.md §5.4,
spec/ipc-wire.md §4.2).

The heart of CPG is the **process list**: every (nodeid, pid, group) known cluster-wide,
kept sorted by (nodeid, pid) with later entries of an equal key after earlier ones —
exactly as real nodes keep it, because confchg member lists are read from it and must
agree across a mixed ring.  It changes only through totally ordered events:

* PROCJOIN / PROCLEAVE exec messages (a local client joined/left, or its process died:
  reason PROCDOWN), each producing one CONFCHG event for the group's local clients;
* CPG sync: every node multicasts a DOWNLIST (informational in 3.1.7) and a JOINLIST of
  its own processes.  At activation each node removes the processes of nodes that left
  since the last sync (reason NODEDOWN, one event per group, groups in C-string order),
  adds unknown processes from other nodes' joinlists (reason NODEUP, joinlist entries
  in real nodes' reverse-arrival order), and drops remote processes that appeared in no
  joinlist (reason PROCDOWN) — the real nodes' "zombie" rule.

Visibility (§7.2 pitfall 4): an MCAST is delivered to local clients only if the receiver
already knows a process of the sender's node in that group.

Lib side: JOIN/LEAVE/MCAST/PARTIAL_MCAST/MEMBERSHIP/LOCAL_GET/ITERATION*/FINALIZE with
the real daemon's response ids and sizes, model-v1 initial totem confchg, and process
death → PROCLEAVE with reason PROCDOWN.

One deliberate deviation: corosync 3.1.7 never resets a connection after its own LEAVE is
delivered (a loop bound bug), so the connection keeps receiving the group's events and a
second JOIN on it answers CS_ERR_BUSY forever; here the connection returns to "unjoined".
"""

from __future__ import annotations

import enum
import itertools
import struct
from typing import Any

from attrs import define, field

from corosync.exec.service import (REQ_HEADER, RES_HEADER, CsError, ExecHandler, LibHandler,
                                   Malformed, SendFailed, Service, ServiceApi, ServiceId, need,
                                   send_event, service_id_make, swap_fields)
from corosync.exec.totem.events import LogLevel
from corosync.exec.totem.wire import ZERO_RING, RingId
from corosync.lib.proto import cpg as proto
from corosync.lib.proto.common import CPG_NAME
from corosync.lib.proto.common import RingId as ClientRingId

CPG_MAX_NAME_LENGTH = 128
PROCESSOR_COUNT_MAX = 384
NAME = CPG_NAME  # mar_cpg_name_t, 136 bytes
ADDRESS = proto.ADDRESS  # mar_cpg_address_t: nodeid, pid, reason
_U32P = struct.Struct("<I4x")

# exec function ids
PROCJOIN, PROCLEAVE, JOINLIST, MCAST, DOWNLIST_OLD, DOWNLIST, PARTIAL_MCAST = range(7)
PROCJOIN_SIZE = 168
MCAST_HEADER_SIZE = 184
PARTIAL_HEADER_SIZE = 200
JOINLIST_ENTRY_SIZE = 144
DOWNLIST_SIZE = 1568

# confchg reasons
REASON_UNDEFINED, REASON_JOIN, REASON_LEAVE, REASON_NODEDOWN, REASON_NODEUP, REASON_PROCDOWN = \
    range(6)

# lib requests
REQ_JOIN, REQ_LEAVE, REQ_MCAST, REQ_MEMBERSHIP, REQ_LOCAL_GET = 0, 1, 2, 3, 4
REQ_ITER_INIT, REQ_ITER_NEXT, REQ_ITER_FINALIZE, REQ_FINALIZE = 5, 6, 7, 8
REQ_ZC_ALLOC, REQ_ZC_FREE, REQ_ZC_EXECUTE, REQ_PARTIAL_MCAST = 9, 10, 11, 12
# responses / events
RES_JOIN, RES_LEAVE, RES_MEMBERSHIP, RES_CONFCHG, RES_DELIVER = 0, 1, 3, 4, 5
RES_LOCAL_GET, RES_ITER_INIT, RES_ITER_NEXT, RES_ITER_FINALIZE, RES_FINALIZE = 7, 9, 10, 11, 12
RES_TOTEM_CONFCHG, RES_PARTIAL_DELIVER, RES_PARTIAL_SEND = 13, 17, 18
ITER_NAME_ONLY, ITER_ONE_GROUP, ITER_ALL = 1, 2, 3
MODEL_V1_DELIVER_INITIAL_TOTEM_CONF = 1
PARTIAL_FIRST = 1
#: MCAST / PARTIAL_MCAST requests carry a 24-byte header; the IPC layer strips 16
_LIB_HEAD = 24 - REQ_HEADER.size
#: an ITERATIONNEXT body with no item (sent with an error)
_NO_ITEM = bytes(len(proto.iteration_description_body(b"", 0, 0)))


def encode_name(group: bytes) -> bytes:
    return NAME.pack(len(group), group)


def decode_name(buf: bytes, off: int) -> bytes:
    """A mar_cpg_name_t as the group identity (its first ``length`` bytes)."""
    length, value = NAME.unpack_from(buf, off)
    if length > CPG_MAX_NAME_LENGTH:
        raise Malformed("cpg_bad_name", f"group name length {length}")
    return value[:length]


def _cstr_key(group: bytes) -> tuple[bytes, bytes]:
    """Sort key of real nodes' per-group maps: a skiplist keyed by the C string."""
    return group.split(b"\0", 1)[0], group


# ------------------------------------------------------------------------- exec messages
def encode_procjoin(fn: int, group: bytes, pid: int, reason: int) -> bytes:
    """PROCJOIN (fn 0) / PROCLEAVE (fn 1), 168 bytes."""
    return (REQ_HEADER.pack(service_id_make(ServiceId.CPG, fn), PROCJOIN_SIZE)
            + encode_name(group) + _U32P.pack(pid) + _U32P.pack(reason))


def encode_mcast(group: bytes, pid: int, nodeid: int, payload: bytes) -> bytes:
    """MCAST (fn 3): header, group, msglen, pid, source (nodeid, conn 0), payload."""
    return (REQ_HEADER.pack(service_id_make(ServiceId.CPG, MCAST), MCAST_HEADER_SIZE + len(payload))
            + encode_name(group) + _U32P.pack(len(payload)) + _U32P.pack(pid)
            + _U32P.pack(nodeid) + bytes(8) + payload)


def encode_partial_mcast(group: bytes, pid: int, nodeid: int, msglen: int, ptype: int,
                         fragment: bytes) -> bytes:
    return (REQ_HEADER.pack(service_id_make(ServiceId.CPG, PARTIAL_MCAST),
                            PARTIAL_HEADER_SIZE + len(fragment))
            + encode_name(group) + _U32P.pack(msglen) + _U32P.pack(len(fragment))
            + _U32P.pack(pid) + _U32P.pack(ptype) + _U32P.pack(nodeid) + bytes(8) + fragment)


def encode_joinlist(entries: list[tuple[int, bytes]]) -> bytes:
    """JOINLIST (fn 2): 24-byte *response* header, then (pid, group) entries."""
    size = RES_HEADER.size + JOINLIST_ENTRY_SIZE * len(entries)
    return (RES_HEADER.pack(service_id_make(ServiceId.CPG, JOINLIST), size, 0)
            + b"".join(_U32P.pack(pid) + encode_name(group) for pid, group in entries))


def encode_downlist(old_members: int, left: list[int]) -> bytes:
    """DOWNLIST (fn 5): always 1568 bytes."""
    left = left[:PROCESSOR_COUNT_MAX]
    ids = left + [0] * (PROCESSOR_COUNT_MAX - len(left))
    return (REQ_HEADER.pack(service_id_make(ServiceId.CPG, DOWNLIST), DOWNLIST_SIZE)
            + _U32P.pack(old_members) + _U32P.pack(len(left))
            + struct.pack(f"<{PROCESSOR_COUNT_MAX}I", *ids))


def decode_joinlist(msg: bytes) -> list[tuple[int, bytes]]:
    need(msg, RES_HEADER.size, "cpg joinlist")
    _id, size, _err = RES_HEADER.unpack_from(msg)
    if size < RES_HEADER.size or size > len(msg) or (size - RES_HEADER.size) % JOINLIST_ENTRY_SIZE:
        raise Malformed("cpg_bad_size", f"joinlist size {size} in {len(msg)} bytes")
    return [(struct.unpack_from("<I", msg, off)[0], decode_name(msg, off + 8))
            for off in range(RES_HEADER.size, size, JOINLIST_ENTRY_SIZE)]


def _swap_joinlist(msg: bytes) -> bytes:
    need(msg, RES_HEADER.size, "cpg joinlist")
    size = struct.unpack_from(">i", msg, 8)[0]
    fields = [(16, "i")]
    if RES_HEADER.size <= size <= len(msg):
        for off in range(RES_HEADER.size, size - JOINLIST_ENTRY_SIZE + 1, JOINLIST_ENTRY_SIZE):
            fields += [(off, "I"), (off + 8, "I")]
    return swap_fields(msg, fields)


def _swap_downlist(msg: bytes) -> bytes:
    need(msg, 32, "cpg downlist")
    return swap_fields(msg, [(16, "I"), (24, "I")]
                       + [(32 + 4 * i, "I") for i in range(PROCESSOR_COUNT_MAX)
                          if 36 + 4 * i <= len(msg)])


# ------------------------------------------------------------------------- state
class CpdState(enum.IntEnum):
    UNJOINED = 0
    LEAVE_STARTED = 1
    JOIN_STARTED = 2
    JOIN_COMPLETED = 3


@define(eq=False)
class Cpd:
    """Per-connection state (corosync's ``struct cpg_pd``)."""

    conn: Any
    group: bytes | None = None
    pid: int = 0
    state: CpdState = CpdState.UNJOINED
    flags: int = 0
    initial_totem_conf_sent: bool = False
    transition_counter: int = 0
    initial_transition_counter: int = 0
    finalized: bool = False
    iterations: set[int] = field(factory=set)


@define(frozen=True)
class ProcInfo:
    nodeid: int
    pid: int
    group: bytes


Address = tuple[int, int, int]  # nodeid, pid, reason


@define
class CpgStats:
    mcast_rx: int = 0
    mcast_delivered: int = 0
    mcast_unknown_node: int = 0
    mcast_tx: int = 0
    mcast_refused: int = 0
    confchg_events: int = 0
    events_lost: int = 0  # events a client could not take (closed, or over its max size)


class CpgService(Service):
    id = ServiceId.CPG
    name = "corosync cluster closed process group service v1.01"
    ipc_name = "cpg"
    sync = True
    subsys = "CPG"

    def __init__(self, api: ServiceApi) -> None:
        super().__init__(api)
        self.exec_handlers = [
            ExecHandler(self._exec_procjoin, _swap_procjoin),
            ExecHandler(self._exec_procleave, _swap_procjoin),
            ExecHandler(self._exec_joinlist, _swap_joinlist),
            ExecHandler(self._exec_mcast, _swap_mcast),
            ExecHandler(self._exec_downlist_old, lambda m: swap_fields(m, [(16, "I")])),
            ExecHandler(self._exec_downlist, _swap_downlist),
            ExecHandler(self._exec_partial_mcast, _swap_partial),
        ]
        fc = True
        self.lib_handlers = {
            REQ_JOIN: LibHandler(self._lib_join, fc),
            REQ_LEAVE: LibHandler(self._lib_leave, fc),
            REQ_MCAST: LibHandler(self._lib_mcast, fc, answered=False),
            REQ_MEMBERSHIP: LibHandler(self._lib_membership),
            REQ_LOCAL_GET: LibHandler(self._lib_local_get),
            REQ_ITER_INIT: LibHandler(self._lib_iter_init),
            REQ_ITER_NEXT: LibHandler(self._lib_iter_next),
            REQ_ITER_FINALIZE: LibHandler(self._lib_iter_finalize),
            REQ_FINALIZE: LibHandler(self._lib_finalize, fc),
            REQ_ZC_ALLOC: LibHandler(lambda c, p: c.send_response(0, b"", CsError.ERR_NOT_SUPPORTED), fc),
            REQ_ZC_FREE: LibHandler(lambda c, p: c.send_response(0, b"", CsError.ERR_NOT_SUPPORTED), fc),
            REQ_ZC_EXECUTE: LibHandler(lambda c, p: c.send_response(2, b"", CsError.ERR_NOT_EXIST), fc),
            REQ_PARTIAL_MCAST: LibHandler(self._lib_partial_mcast, fc),
        }
        self.stats = CpgStats()
        self.procs: list[ProcInfo] = []
        #: (nodeid, group) pairs with a process, for the per-delivery visibility check;
        #: rebuilt when ``procs`` changed (version bumped, or the list replaced)
        self._procs_version = 0
        self._known: tuple[int, list[ProcInfo] | None, frozenset[tuple[int, bytes]]] = (
            -1, None, frozenset())
        self.cpds: list[Cpd] = []
        self.member_list: tuple[int, ...] = ()
        self.old_member_list: tuple[int, ...] = ()
        self.downlist: list[int] = []
        self.last_sync_ring_id: RingId = ZERO_RING
        self._sync_joinlist_sent = False
        self._sync_downlist_sent = False
        #: joinlist entries of the current sync round: (sender, pid, group), arrival order
        self.joinlist_entries: list[tuple[int, int, bytes]] = []
        self._iterations: dict[int, tuple[Cpd, list[ProcInfo], int]] = {}
        self._iter_handles = itertools.count(1)
        #: PROCLEAVEs of dead clients that could not be queued yet (retried by pump)
        self._pending: list[bytes] = []

    # ------------------------------------------------------------------ helpers
    def _log(self, level: LogLevel, text: str) -> None:
        self.api.log(level, text, self.subsys)

    def _send(self, message: bytes) -> None:
        self.api.mcast(message)

    def pump(self) -> None:
        while self._pending:
            try:
                self._send(self._pending[0])
            except SendFailed:
                return
            self._pending.pop(0)

    def members_of(self, group: bytes) -> list[ProcInfo]:
        return [p for p in self.procs if p.group == group]

    def _find(self, group: bytes, pid: int, nodeid: int) -> ProcInfo | None:
        for p in self.procs:
            if p.pid == pid and p.nodeid == nodeid and p.group == group:
                return p
        return None

    def _insert(self, pi: ProcInfo) -> None:
        """After the last entry whose (nodeid, pid) is ≤ the new one (real nodes' order)."""
        idx = len(self.procs)
        for i, p in enumerate(self.procs):
            if (p.nodeid, p.pid) > (pi.nodeid, pi.pid):
                idx = i
                break
        self.procs.insert(idx, pi)
        self._procs_version += 1

    def _event_targets(self, group: bytes) -> list[Cpd]:
        return [c for c in self.cpds if not c.finalized and c.group == group
                and c.state in (CpdState.JOIN_COMPLETED, CpdState.LEAVE_STARTED)]

    # ------------------------------------------------------------------ confchg events
    def _notify_joinlist(self, group: bytes, joined: list[Address], left: list[Address]) -> None:
        left_keys = {(n, p) for n, p, _r in left}
        members = [(p.nodeid, p.pid, REASON_UNDEFINED) for p in self.procs
                   if p.group == group and (p.nodeid, p.pid) not in left_keys]
        payload = proto.confchg_body(group, members, left, joined)
        me = self.api.nodeid
        for nodeid, pid, _reason in joined:
            if nodeid == me:
                for cpd in self.cpds:
                    if cpd.pid == pid and cpd.group == group:
                        cpd.state = CpdState.JOIN_COMPLETED
        for cpd in self._event_targets(group):
            send_event(cpd.conn, RES_CONFCHG, payload)
            cpd.transition_counter += 1
            self.stats.confchg_events += 1
        for nodeid, pid, _reason in left:
            if nodeid == me:  # see the module docstring: the one deliberate deviation
                for cpd in self.cpds:
                    if (cpd.pid == pid and cpd.group == group
                            and cpd.state is CpdState.LEAVE_STARTED):
                        cpd.group, cpd.pid, cpd.state = None, 0, CpdState.UNJOINED
        for cpd in self.cpds:
            if (cpd.flags & MODEL_V1_DELIVER_INITIAL_TOTEM_CONF and not cpd.initial_totem_conf_sent
                    and not cpd.finalized):
                cpd.initial_totem_conf_sent = True
                self._notify_totem(cpd, self.old_member_list)

    def _notify_totem(self, cpd: Cpd | None, members: tuple[int, ...]) -> None:
        ring = self.last_sync_ring_id
        payload = proto.totem_confchg_body(ClientRingId(ring.rep, ring.seq), members)
        for target in ([cpd] if cpd is not None else [c for c in self.cpds if not c.finalized]):
            send_event(target.conn, RES_TOTEM_CONFCHG, payload)

    def _proc_join(self, group: bytes, pid: int, nodeid: int, reason: int,
                   collect: dict[bytes, list[Address]] | None = None) -> None:
        if self._find(group, pid, nodeid) is not None:
            return
        self._insert(ProcInfo(nodeid, pid, group))
        if collect is None:
            self._notify_joinlist(group, [(nodeid, pid, reason)], [])
        else:
            collect.setdefault(group, []).append((nodeid, pid, reason))

    def _proc_leave(self, group: bytes, pid: int, nodeid: int, reason: int) -> None:
        self._notify_joinlist(group, [], [(nodeid, pid, reason)])
        self.procs = [p for p in self.procs
                      if not (p.pid == pid and p.nodeid == nodeid and p.group == group)]
        self._procs_version += 1

    # ------------------------------------------------------------------ exec handlers
    def _exec_procjoin(self, msg: bytes, nodeid: int) -> None:
        need(msg, PROCJOIN_SIZE, "cpg procjoin")
        group = decode_name(msg, 16)
        (pid,) = struct.unpack_from("<I", msg, 152)
        self._log(LogLevel.DEBUG, f"got procjoin message from cluster node {nodeid} for pid {pid}")
        self._proc_join(group, pid, nodeid, REASON_JOIN)

    def _exec_procleave(self, msg: bytes, nodeid: int) -> None:
        need(msg, PROCJOIN_SIZE, "cpg procleave")
        group = decode_name(msg, 16)
        pid, reason = struct.unpack_from("<I4xI", msg, 152)
        self._log(LogLevel.DEBUG, f"got procleave message from cluster node {nodeid} for pid {pid}")
        self._proc_leave(group, pid, nodeid, reason)

    def _exec_joinlist(self, msg: bytes, nodeid: int) -> None:
        entries = decode_joinlist(msg)
        self._log(LogLevel.DEBUG, f"got joinlist message from node {nodeid}")
        self.joinlist_entries.extend((nodeid, pid, group) for pid, group in entries)

    def _delivery_targets(self, group: bytes, nodeid: int) -> list[Cpd]:
        """The local connections a message of ``nodeid`` to ``group`` is delivered to:
        none unless we know a process of that node in the group (§7.2 pitfall 4)."""
        targets = self._event_targets(group)
        if not targets:
            return targets
        version, source, known = self._known
        if version != self._procs_version or source is not self.procs:
            known = frozenset((p.nodeid, p.group) for p in self.procs)
            self._known = (self._procs_version, self.procs, known)
        if (nodeid, group) not in known:
            self.stats.mcast_unknown_node += 1
            self.api.log_limited(LogLevel.WARNING, "cpg:unknown_node",
                                 "Unknown node -> we will not deliver message", self.subsys)
            return []
        return targets

    def _deliver_to(self, targets: list[Cpd], event_id: int, payload: bytes) -> None:
        for cpd in targets:
            if not send_event(cpd.conn, event_id, payload):
                self.stats.events_lost += 1
        self.stats.mcast_delivered += 1

    def _exec_mcast(self, msg: bytes, nodeid: int) -> None:
        need(msg, MCAST_HEADER_SIZE, "cpg mcast")
        group = decode_name(msg, 16)
        msglen, pid = struct.unpack_from("<I4xI", msg, 152)
        if msglen > len(msg) - MCAST_HEADER_SIZE:
            raise Malformed("cpg_bad_size", f"mcast msglen {msglen} in {len(msg)} bytes")
        self.stats.mcast_rx += 1
        targets = self._delivery_targets(group, nodeid)
        if targets:  # the event is built only for a node with clients in the group
            body = msg[MCAST_HEADER_SIZE:MCAST_HEADER_SIZE + msglen]
            self._deliver_to(targets, RES_DELIVER, proto.deliver_body(group, nodeid, pid, body))

    def _exec_partial_mcast(self, msg: bytes, nodeid: int) -> None:
        need(msg, PARTIAL_HEADER_SIZE, "cpg partial mcast")
        group = decode_name(msg, 16)
        msglen, fraglen, pid, ptype = struct.unpack_from("<I4xI4xI4xI", msg, 152)
        if fraglen > len(msg) - PARTIAL_HEADER_SIZE:
            raise Malformed("cpg_bad_size", f"partial fraglen {fraglen} in {len(msg)} bytes")
        self.stats.mcast_rx += 1
        targets = self._delivery_targets(group, nodeid)
        if targets:
            body = msg[PARTIAL_HEADER_SIZE:PARTIAL_HEADER_SIZE + fraglen]
            self._deliver_to(targets, RES_PARTIAL_DELIVER, proto.partial_deliver_body(
                group, msglen, nodeid, pid, ptype, body))

    def _exec_downlist_old(self, msg: bytes, nodeid: int) -> None:
        self._log(LogLevel.DEBUG, f"downlist OLD from node {nodeid}")

    def _exec_downlist(self, msg: bytes, nodeid: int) -> None:
        need(msg, 32, "cpg downlist")
        (left,) = struct.unpack_from("<I", msg, 24)
        self._log(LogLevel.DEBUG, f"downlist left_list: {left} received")

    # ------------------------------------------------------------------ sync
    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        self.member_list = tuple(member_list)
        self.last_sync_ring_id = ring_id
        self.downlist = [n for n in self.old_member_list if n not in trans_list]
        self._sync_downlist_sent = False
        self._sync_joinlist_sent = False

    def sync_process(self) -> bool:
        try:
            if not self._sync_downlist_sent:
                self._send(encode_downlist(len(self.old_member_list), self.downlist))
                self._sync_downlist_sent = True
            if not self._sync_joinlist_sent:
                me = self.api.nodeid
                local = [(p.pid, p.group) for p in self.procs if p.nodeid == me]
                if local:
                    self._send(encode_joinlist(local))
                self._sync_joinlist_sent = True
        except SendFailed:
            return False
        return True

    def sync_activate(self) -> None:
        self.old_member_list = self.member_list
        self._downlist_inform()
        self._joinlist_inform()
        self.joinlist_entries = []
        self._notify_totem(None, self.member_list)

    def sync_abort(self) -> None:
        self.joinlist_entries = []

    def _downlist_inform(self) -> None:
        self._log(LogLevel.DEBUG, f"my downlist: members(old:{len(self.old_member_list)} "
                                  f"left:{len(self.downlist)})")
        down = set(self.downlist)
        by_group: dict[bytes, list[Address]] = {}
        kept = []
        for p in self.procs:
            if p.nodeid in down:
                by_group.setdefault(p.group, []).append((p.nodeid, p.pid, REASON_NODEDOWN))
            else:
                kept.append(p)
        self.procs = kept
        self._procs_version += 1
        for group in sorted(by_group, key=_cstr_key):
            self._notify_joinlist(group, [], by_group[group])

    def _joinlist_inform(self) -> None:
        me = self.api.nodeid
        collect: dict[bytes, list[Address]] = {}
        # real nodes push each stored entry at the head of a list: newest first
        for sender, pid, group in reversed(self.joinlist_entries):
            if sender != me:
                self._proc_join(group, pid, sender, REASON_NODEUP, collect)
        for group in sorted(collect, key=_cstr_key):
            self._notify_joinlist(group, collect[group], [])
        listed = {(s, pid, g) for s, pid, g in self.joinlist_entries if s != me}
        for p in list(self.procs):
            if p.nodeid != me and (p.nodeid, p.pid, p.group) not in listed:
                self._proc_leave(p.group, p.pid, p.nodeid, REASON_PROCDOWN)

    # ------------------------------------------------------------------ lib side
    def lib_init(self, conn: Any) -> None:
        cpd = Cpd(conn)
        conn.context = cpd
        self.cpds.insert(0, cpd)  # real nodes add at the list head

    def _cpd(self, conn: Any) -> Cpd:
        cpd = conn.context
        if not isinstance(cpd, Cpd):
            self.lib_init(conn)
            cpd = conn.context
        return cpd

    def lib_exit(self, conn: Any) -> None:
        cpd = conn.context
        if not isinstance(cpd, Cpd):
            return
        if cpd.group and cpd.state is not CpdState.LEAVE_STARTED:
            msg = encode_procjoin(PROCLEAVE, cpd.group, cpd.pid, REASON_PROCDOWN)
            if self._pending:
                self._pending.append(msg)
            else:
                try:
                    self._send(msg)
                except SendFailed:
                    self._pending.append(msg)
        for handle in cpd.iterations:
            self._iterations.pop(handle, None)
        if cpd in self.cpds:
            self.cpds.remove(cpd)

    def _lib_join(self, conn: Any, p: bytes) -> None:
        need(p, 152, "cpg join")
        cpd = self._cpd(conn)
        (length,) = struct.unpack_from("<I", p, 0)
        pid, flags = struct.unpack_from("<I4xI", p, 136)
        group = p[8:8 + min(length, CPG_MAX_NAME_LENGTH)]
        error = CsError.OK
        me = self.api.nodeid
        if any(c.pid == pid and c.group == group for c in self.cpds):
            error = CsError.ERR_EXIST
        elif self._find(group, pid, me) is not None:
            error = CsError.ERR_TRY_AGAIN
        elif length > CPG_MAX_NAME_LENGTH:
            error = CsError.ERR_NAME_TOO_LONG
        elif cpd.state is CpdState.LEAVE_STARTED:
            error = CsError.ERR_BUSY
        elif cpd.state is not CpdState.UNJOINED:
            error = CsError.ERR_EXIST
        else:
            try:
                self._send(encode_procjoin(PROCJOIN, group, pid, REASON_JOIN))
            except SendFailed:
                error = CsError.ERR_TRY_AGAIN
            else:
                cpd.state, cpd.pid, cpd.flags, cpd.group = CpdState.JOIN_STARTED, pid, flags, group
        conn.send_response(RES_JOIN, b"", error)

    def _lib_leave(self, conn: Any, p: bytes) -> None:
        need(p, 140, "cpg leave")
        cpd = self._cpd(conn)
        group = decode_name(p, 0)
        (pid,) = struct.unpack_from("<I", p, 136)
        if cpd.state in (CpdState.UNJOINED, CpdState.LEAVE_STARTED):
            error = CsError.ERR_NOT_EXIST
        elif cpd.state is CpdState.JOIN_STARTED:
            error = CsError.ERR_BUSY
        else:
            try:
                self._send(encode_procjoin(PROCLEAVE, group, pid, REASON_LEAVE))
                cpd.state = CpdState.LEAVE_STARTED
                error = CsError.OK
            except SendFailed:
                error = CsError.ERR_TRY_AGAIN
        conn.send_response(RES_LEAVE, b"", error)

    def _can_send(self, cpd: Cpd) -> bool:
        return cpd.state in (CpdState.JOIN_STARTED, CpdState.JOIN_COMPLETED) and cpd.group is not None

    def _lib_mcast(self, conn: Any, p: bytes) -> None:
        # ``p`` follows the 16-byte request header: 8 more header bytes, then the body
        need(p, _LIB_HEAD + proto.MCAST_BODY_HEAD, "cpg mcast")
        _guarantee, msglen = proto.mcast_request_fields(memoryview(p)[_LIB_HEAD:])
        start = _LIB_HEAD + proto.MCAST_BODY_HEAD
        if msglen > len(p) - start:
            raise Malformed("cpg_bad_size", f"mcast request msglen {msglen} in {len(p)} bytes")
        cpd = self._cpd(conn)
        if not self._can_send(cpd):
            self.stats.mcast_refused += 1
            self.api.log_limited(LogLevel.ERROR, "cpg:mcast_unjoined",
                                 f"*** can't mcast to group state:{int(cpd.state)}, "
                                 f"error:{int(CsError.ERR_NOT_EXIST)}", self.subsys)
            return
        assert cpd.group is not None
        try:
            self._send(encode_mcast(cpd.group, cpd.pid, self.api.nodeid,
                                    p[start:start + msglen]))
            self.stats.mcast_tx += 1
        except SendFailed:
            self.stats.mcast_refused += 1
            self.api.log_limited(LogLevel.WARNING, "cpg:mcast_full",
                                 "cpg mcast dropped: totem queue full", self.subsys)

    def _lib_partial_mcast(self, conn: Any, p: bytes) -> None:
        need(p, _LIB_HEAD + proto.PARTIAL_BODY_HEAD, "cpg partial mcast")
        _guarantee, msglen, fraglen, ptype = proto.partial_request_fields(
            memoryview(p)[_LIB_HEAD:])
        start = _LIB_HEAD + proto.PARTIAL_BODY_HEAD
        if fraglen > len(p) - start:
            raise Malformed("cpg_bad_size", f"partial request fraglen {fraglen} in {len(p)} bytes")
        cpd = self._cpd(conn)
        error = CsError.OK if self._can_send(cpd) else CsError.ERR_NOT_EXIST
        if ptype == PARTIAL_FIRST:
            cpd.initial_transition_counter = cpd.transition_counter
        if cpd.transition_counter != cpd.initial_transition_counter:
            error = CsError.ERR_INTERRUPT
        if error is CsError.OK:
            assert cpd.group is not None
            try:
                self._send(encode_partial_mcast(cpd.group, cpd.pid, self.api.nodeid, msglen,
                                                ptype, p[start:start + fraglen]))
            except SendFailed:
                error = CsError.ERR_TRY_AGAIN
        conn.send_response(RES_PARTIAL_SEND, b"", error)

    def _lib_membership(self, conn: Any, p: bytes) -> None:
        need(p, 136, "cpg membership")
        group = decode_name(p, 0)
        members = self.members_of(group)[:PROCESSOR_COUNT_MAX]
        conn.send_response(RES_MEMBERSHIP, proto.membership_body(
            [(m.nodeid, m.pid, REASON_UNDEFINED) for m in members]))

    def _lib_local_get(self, conn: Any, p: bytes) -> None:
        conn.send_response(RES_LOCAL_GET, proto.LocalGetResponse(self.api.nodeid).encode())

    def _lib_iter_init(self, conn: Any, p: bytes) -> None:
        need(p, 140, "cpg iteration initialize")
        (itype,) = struct.unpack_from("<I", p, 136)
        want = decode_name(p, 0) if itype == ITER_ONE_GROUP else None
        items: list[ProcInfo] = []
        for pi in self.procs:
            if itype == ITER_NAME_ONLY:
                if any(i.group == pi.group for i in items):
                    continue
                pi = ProcInfo(0, 0, pi.group)
            elif itype == ITER_ONE_GROUP and pi.group != want:
                continue
            # real nodes insert right after the first item of the same group, else first
            idx = next((i + 1 for i, it in enumerate(items) if it.group == pi.group), 0)
            items.insert(idx, pi)
        cpd = self._cpd(conn)
        handle = next(self._iter_handles)
        self._iterations[handle] = (cpd, items, 0)
        cpd.iterations.add(handle)
        conn.send_response(RES_ITER_INIT, proto.IterationInitializeResponse(handle).encode())

    def _lib_iter_next(self, conn: Any, p: bytes) -> None:
        need(p, 8, "cpg iteration next")
        (handle,) = struct.unpack_from("<Q", p)
        it = self._iterations.get(handle)
        if it is None:
            conn.send_response(RES_ITER_NEXT, _NO_ITEM, CsError.ERR_LIBRARY)
            return
        cpd, items, pos = it
        if pos >= len(items):
            conn.send_response(RES_ITER_NEXT, _NO_ITEM, CsError.ERR_NO_SECTIONS)
            return
        self._iterations[handle] = (cpd, items, pos + 1)
        pi = items[pos]
        conn.send_response(RES_ITER_NEXT,
                           proto.iteration_description_body(pi.group, pi.nodeid, pi.pid))

    def _lib_iter_finalize(self, conn: Any, p: bytes) -> None:
        need(p, 8, "cpg iteration finalize")
        (handle,) = struct.unpack_from("<Q", p)
        it = self._iterations.pop(handle, None)
        if it is not None:
            it[0].iterations.discard(handle)
        conn.send_response(RES_ITER_FINALIZE, b"",
                           CsError.OK if it is not None else CsError.ERR_LIBRARY)

    def _lib_finalize(self, conn: Any, p: bytes) -> None:
        self._cpd(conn).finalized = True  # no more events; exit_fn still leaves the group
        conn.send_response(RES_FINALIZE, b"")


def _swap_procjoin(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I"), (152, "I"), (160, "I")])


def _swap_mcast(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I"), (152, "I"), (160, "I"), (168, "I"), (176, "Q")])


def _swap_partial(msg: bytes) -> bytes:
    return swap_fields(msg, [(16, "I"), (152, "I"), (160, "I"), (168, "I"), (176, "I"),
                             (184, "I"), (192, "Q")])
