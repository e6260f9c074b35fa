"""The quorum service (id 3, ``vsf_quorum``): the cluster's one answer to "may I run?".

It has no exec messages; it takes part in sync only to compute and log the membership
("Sync members[3]: 1 2 3", "Sync joined…", "Sync left…") and to send V1 node-list
notifications at activation.  The quorum *decision* comes from a provider — votequorum,
when ``quorum.provider`` is ``corosync_votequorum`` — through :meth:`QuorumService.set_quorum`,
which logs "This node is within the primary component …" / "Members[n]: …" and notifies
tracking clients (V0 or V1 form per connection).  Without a provider the node is always
quorate (quorum type 0, QUORUM_FREE) and the view list stays empty, as in corosync.

Linking: the host builds services independently from factories, so the provider finds the
quorum service through :func:`quorum_link` (one :class:`QuorumLink` per host API object).
Whichever of the two is constructed first, the last decision is kept and handed over.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from attrs import define

from corosync.exec.service import CsError, LibHandler, Service, ServiceApi, ServiceId, need
from corosync.exec.totem.events import LogLevel
from corosync.exec.totem.wire import ZERO_RING, RingId
from corosync.lib.proto import quorum as qp

PROVIDER_VOTEQUORUM = "corosync_votequorum"
_LINE_MAX = 512  # corosync splits long node lists over several log lines ("\\" at the end)

TRACK_CURRENT, TRACK_CHANGES, TRACK_CHANGES_ONLY = 1, 2, 4

SetQuorum = Callable[[tuple[int, ...], bool, RingId], None]


class QuorumLink:
    """Connects a quorum provider with the quorum service of the same host."""

    def __init__(self) -> None:
        self.provider: Any = None
        self.listener: SetQuorum | None = None
        self.last: tuple[tuple[int, ...], bool, RingId] | None = None

    def set_quorum(self, view: tuple[int, ...], quorate: bool, ring_id: RingId) -> None:
        self.last = (view, quorate, ring_id)
        if self.listener is not None:
            self.listener(view, quorate, ring_id)


_LINKS: "weakref.WeakKeyDictionary[Any, QuorumLink]" = weakref.WeakKeyDictionary()


def quorum_link(api: ServiceApi) -> QuorumLink:
    link = _LINKS.get(api)
    if link is None:
        link = _LINKS[api] = QuorumLink()
    return link


def configured_provider(api: ServiceApi) -> str | None:
    value = api.cmap.get("quorum.provider", None)
    return str(value) if value else None


def view_log_lines(label: str, ids: tuple[int, ...]) -> list[str]:
    """``label[n]: id id …`` split like corosync's log_view_list (continuation ``\\``)."""
    total = len(ids)
    lines: list[str] = []
    i = 0
    while True:
        buf = ""
        while i < total and len(buf) + len(f" {ids[i]}") < _LINE_MAX:
            buf += f" {ids[i]}"
            i += 1
        more = "\\" if i < total else ""
        lines.append(f"{label}[{total}]:{buf}{more}")
        if i >= total:
            return lines


@define(eq=False)
class QuorumPd:
    conn: Any
    model: int = qp.MODEL_V0
    tracking: bool = False
    track_flags: int = 0


class QuorumService(Service):
    id = ServiceId.QUORUM
    name = "corosync cluster quorum service v0.1"
    ipc_name = "quorum"
    sync = True
    subsys = "QUORUM"

    def __init__(self, api: ServiceApi) -> None:
        super().__init__(api)
        self.exec_handlers = []  # corosync's quorum engine has no exec messages
        self.lib_handlers = {
            qp.REQ_GETQUORATE: LibHandler(self._lib_getquorate),
            qp.REQ_TRACKSTART: LibHandler(self._lib_trackstart),
            qp.REQ_TRACKSTOP: LibHandler(self._lib_trackstop),
            qp.REQ_GETTYPE: LibHandler(self._lib_gettype),
            qp.REQ_MODEL_GETTYPE: LibHandler(self._lib_model_gettype),
        }
        self.pds: dict[int, QuorumPd] = {}
        self.provider = configured_provider(api)
        self.quorum_type = qp.QUORUM_SET if self.provider else qp.QUORUM_FREE
        if self.provider and self.provider != PROVIDER_VOTEQUORUM:
            # votequorum logs "Using quorum provider …" itself (it is loaded first, as in
            # corosync's log); anything else is refused like corosync does
            self._log(LogLevel.NOTICE, f"Using quorum provider {self.provider}")
            self._log(LogLevel.CRIT, f"Quorum provider: {self.provider} failed to initialize.")
            raise ValueError("Invalid quorum provider")
        #: corosync's primary_designated; always true without a provider
        self.quorate = not self.provider
        self.view_list: tuple[int, ...] = ()
        self.ring_id: RingId = ZERO_RING
        # sync bookkeeping for the V1 node-list notification
        self.member_list: tuple[int, ...] = ()
        self.old_member_list: tuple[int, ...] = ()
        self.joined: tuple[int, ...] = ()
        self.left: tuple[int, ...] = ()
        self.sync_ring_id: RingId = ZERO_RING
        self.internal: list[Callable[[bool], None]] = []
        link = quorum_link(api)
        link.listener = self.set_quorum
        if link.last is not None:
            self.set_quorum(*link.last)

    def _log(self, level: LogLevel, text: str) -> None:
        self.api.log(level, text, self.subsys)

    # ------------------------------------------------------------------ provider input
    def set_quorum(self, view: tuple[int, ...], quorate: bool, ring_id: RingId) -> None:
        """The provider's decision (corosync's ``quorum_api_set_quorum``)."""
        old = self.quorate
        self.quorate = bool(quorate)
        if self.quorate and not old:
            self._log(LogLevel.NOTICE,
                      "This node is within the primary component and will provide service.")
        elif old and not self.quorate:
            self._log(LogLevel.NOTICE, "This node is within the non-primary component and "
                                       "will NOT provide any services.")
        self.view_list = tuple(view)
        self.ring_id = ring_id
        for line in view_log_lines("Members", self.view_list):
            self._log(LogLevel.NOTICE, line)
        for callback in list(self.internal):
            callback(self.quorate)
        for pd in self._trackers():
            self._send_quorum(pd)

    # ------------------------------------------------------------------ sync
    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        self.member_list = tuple(member_list)
        self.sync_ring_id = ring_id
        old, trans, new = self.old_member_list, set(trans_list), set(member_list)
        left = tuple(n for n in old if n not in trans or n not in new)
        self.left = left
        self.joined = tuple(n for n in self.member_list if n not in old or n in left)
        for line in view_log_lines("Sync members", self.member_list):
            self._log(LogLevel.NOTICE, line)
        if self.joined:
            for line in view_log_lines("Sync joined", self.joined):
                self._log(LogLevel.NOTICE, line)
        if self.left:
            for line in view_log_lines("Sync left", self.left):
                self._log(LogLevel.NOTICE, line)

    def sync_activate(self) -> None:
        self.old_member_list = self.member_list
        for pd in self._trackers():
            self._send_nodelist(pd, with_changes=True)

    # ------------------------------------------------------------------ IPC
    def lib_init(self, conn: Any) -> None:
        self.pds[id(conn)] = QuorumPd(conn)

    def lib_exit(self, conn: Any) -> None:
        self.pds.pop(id(conn), None)

    def _pd(self, conn: Any) -> QuorumPd:
        pd = self.pds.get(id(conn))
        if pd is None:
            pd = self.pds[id(conn)] = QuorumPd(conn)
        return pd

    def _trackers(self) -> list[QuorumPd]:
        return [pd for pd in self.pds.values() if pd.tracking]

    def _send_quorum(self, pd: QuorumPd) -> None:
        if pd.model == qp.MODEL_V1:
            ev: Any = qp.V1QuorumNotification(self.quorate, self.ring_id.rep, self.ring_id.seq,
                                              self.view_list)
        else:
            ev = qp.Notification(self.quorate, self.ring_id.seq, self.view_list)
        pd.conn.send_event(ev.ID, ev.encode())

    def _send_nodelist(self, pd: QuorumPd, with_changes: bool) -> None:
        if pd.model != qp.MODEL_V1:
            return
        ev = qp.V1NodelistNotification(self.sync_ring_id.rep, self.sync_ring_id.seq,
                                       self.member_list,
                                       self.joined if with_changes else (),
                                       self.left if with_changes else ())
        pd.conn.send_event(ev.ID, ev.encode())

    def _lib_getquorate(self, conn: Any, payload: bytes) -> None:
        conn.send_response(qp.RES_GETQUORATE, qp.encode_u32(int(self.quorate)))

    def _lib_trackstart(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "quorum trackstart")
        flags = qp.decode_u32(payload, "quorum trackstart")
        pd = self._pd(conn)
        if flags & (TRACK_CURRENT | TRACK_CHANGES):
            self._send_nodelist(pd, with_changes=False)
            self._send_quorum(pd)
        if pd.tracking:
            conn.send_response(qp.RES_TRACKSTART, b"", CsError.ERR_EXIST)
            return
        if flags & (TRACK_CHANGES | TRACK_CHANGES_ONLY):
            pd.tracking, pd.track_flags = True, flags
        conn.send_response(qp.RES_TRACKSTART)

    def _lib_trackstop(self, conn: Any, payload: bytes) -> None:
        self._pd(conn).tracking = False
        conn.send_response(qp.RES_TRACKSTOP)  # corosync answers CS_OK either way

    def _lib_gettype(self, conn: Any, payload: bytes) -> None:
        conn.send_response(qp.RES_GETTYPE, qp.encode_u32(self.quorum_type))

    def _lib_model_gettype(self, conn: Any, payload: bytes) -> None:
        need(payload, 4, "quorum model_gettype")
        model = qp.decode_u32(payload, "quorum model_gettype")
        error = CsError.OK
        if model in (qp.MODEL_V0, qp.MODEL_V1):
            self._pd(conn).model = model
        else:
            self._log(LogLevel.ERROR, f"quorum_model_type request for unsupported model {model}")
            error = CsError.ERR_INVALID_PARAM
        conn.send_response(qp.RES_MODEL_GETTYPE, qp.encode_u32(self.quorum_type), error)
