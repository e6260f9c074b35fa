"""The trio driver of one Totem node: transport + TotemPg/Srp + timers + ring-id file.

The state machine (:mod:`corosync.exec.totem.srp`, wrapped by
:mod:`corosync.exec.totem.pg`) is sans-IO; this module is the only place where its
actions meet the real world (the simulator is the other driver).  Design rules:

* **One task per concern, no threads on the hot path.**  A receive task per socket hands
  each datagram synchronously to ``pg.receive``; one timer task sleeps until the earliest
  armed deadline; one writer task persists the ring seq through ``trio.to_thread`` (an
  fsync must never delay a token).
* **Actions run in order, never re-entrantly.**  Executing an action can produce input
  (udp's local copy of our own multicast).  Such input is queued in ``_calls`` and fed to
  the state machine after the current batch, so Srp never sees a call nested inside
  another call.
* **Timers**: one deadline per :class:`TimerKind`.  StartTimer replaces the deadline,
  CancelTimer removes it; the timer task only fires a kind whose *current* deadline has
  passed, so a cancelled or re-armed timer can never fire late.  The task is woken only
  when a new deadline is earlier than the one it sleeps on (re-arming the token timers on
  every token hop then costs a dict store, not a task switch).
* **Bad input never crashes the node**: transports filter and count; Srp/TotemPg count
  undecodable datagrams; an unexpected exception from the state machine is logged (rate
  limited) and counted instead of killing the process.

``now`` is ``trio.current_time()`` in integer milliseconds.
"""

from __future__ import annotations

import collections
import errno
import random
import traceback
from typing import Any, Callable, Iterable, Protocol

import attrs
import trio

from . import ringid
from .log import CorosyncLog
from .totem.events import (Action, CancelTimer, ConfChg, ConfChgKind, Deliver, Guarantee, Log,
                           LogLevel, Multicast, PersistRingSeq, PgDeliver, StartTimer, TimerKind,
                           Unicast)

#: How often the stats.srp.* cmap keys are refreshed (they are also refreshed on confchg).
STATS_INTERVAL = 1.0
#: corosync's BIND_MAX_RETRIES / BIND_RETRIES_INTERVAL (include/corosync/totem/totem.h)
BIND_MAX_RETRIES = 10
BIND_RETRIES_INTERVAL_MS = 100


#: stats.srp.* keys the real daemon stores with a type other than u64
_SRP_STAT_TYPES = {
    "avg_backlog_calc": "UINT32", "avg_token_workload": "UINT32",
    "continuous_gather": "UINT32", "continuous_sendmsg_failures": "UINT32",
    "mtt_rx_token": "UINT32", "firewall_enabled_or_nic_failure": "UINT8",
}


@attrs.define
class DriverStats:
    actions: int = 0
    timers_fired: int = 0
    internal_errors: int = 0
    confchgs: int = 0


#: TotemConfig fields the real daemon does not publish under runtime.config.totem.*
_NOT_PUBLISHED = frozenset({"transport_overhead", "netmtu", "token_coefficient"})


def member_ip_string(ip: str) -> str:
    """``runtime.members.<id>.ip`` value, byte-exact with the real daemon (note the
    trailing space)."""
    return f"r(0) ip({ip}) "


class NodeServices(Protocol):
    """What the node needs from the service layer (exec/main.py's ``ServiceLayer``)."""

    async def start(self, nursery: trio.Nursery) -> None:
        """Bring the services and their IPC servers up (tasks go into ``nursery``)."""

    async def stop(self) -> None:
        """Close the IPC servers and disconnect every client (before the LEAVE)."""


class Node:
    """One running Totem node.

    ``pg`` is a :class:`~corosync.exec.totem.pg.TotemPg` (built from the config when not
    given); ``transport`` is any :class:`~corosync.exec.transport.base.Transport`.
    Services hook in through :attr:`deliver_handlers` (``PgDeliver`` actions),
    :attr:`confchg_handlers` (``ConfChg`` actions) and :attr:`sync_hook`: when set, it is
    called with each REGULAR confchg and must call :meth:`sync_completed` once the
    service synchronisation is over; without it sync completes at once (no services).
    """

    def __init__(self, config: Any, *, log: CorosyncLog, transport: Any, pg: Any = None,
                 cmap: Any = None, stats_cmap: Any = None,
                 state_dir: str | None = None) -> None:
        self.config = config
        self.log = log
        self.transport = transport
        self.cmap = cmap
        # corosync keeps stats.* in a map of its own (cmap map 1, ``corosync-cmapctl -m
        # stats``); without a separate store they go to the main one.
        self.stats_cmap = stats_cmap if stats_cmap is not None else cmap
        #: The service layer (see :class:`NodeServices`): started once the transport is up,
        #: stopped (clients disconnected) before the LEAVE is sent.
        self.services: NodeServices | None = None
        self.nodeid: int = config.local_node.nodeid
        self.state_dir = state_dir or config.system.state_dir
        self.ring_seq_loaded = ringid.load_ring_seq(self.state_dir, self.nodeid)
        if pg is None:
            pg = self._build_pg(config, self.ring_seq_loaded)
        self.pg = pg
        self.srp = getattr(pg, "srp", pg)
        self.stats = DriverStats()
        self.bind_max_retries = BIND_MAX_RETRIES
        self.bind_retry_interval_ms = BIND_RETRIES_INTERVAL_MS
        self.deliver_handlers: list[Callable[[PgDeliver], None]] = []
        self.confchg_handlers: list[Callable[[ConfChg], None]] = []
        self.sync_hook: Callable[[ConfChg], None] | None = None
        self.members: tuple[int, ...] = ()
        self.ring_id: Any = None
        self._deadlines: dict[TimerKind, float] = {}
        self._timer_target = float("inf")
        self._timer_wake = trio.Event()
        self._calls: collections.deque[Callable[[int], list[Action]]] = collections.deque()
        self._busy = False
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._join_counts: dict[int, int] = {}
        self._addresses = self._resolve_addresses(config)
        self._writer = ringid.RingIdWriter(
            ringid.ringid_path(self.state_dir, self.nodeid), on_error=self._ringid_error)
        self._handlers: dict[type, Callable[[Any], None]] = {
            Unicast: self._do_unicast, Multicast: self._do_multicast,
            StartTimer: self._do_start_timer, CancelTimer: self._do_cancel_timer,
            PgDeliver: self._do_pg_deliver, ConfChg: self._confchg, Log: self._do_log,
            PersistRingSeq: self._do_persist, Deliver: self._do_nothing,
        }

    @staticmethod
    def _resolve_addresses(config: Any) -> dict[int, str]:
        from .transport import node_address

        ip_version = str(getattr(config.totem, "ip_version", "ipv6-4") or "ipv6-4")
        out = {}
        for n in config.nodes:
            try:
                out[n.nodeid] = node_address(n.ring0_addr, ip_version)
            except ValueError:
                out[n.nodeid] = str(n.ring0_addr)
        return out

    @staticmethod
    def _build_pg(config: Any, ring_seq: int) -> Any:
        from .totem.pg import TotemPg
        from .totem.srp import Srp

        # send_join's random delay: an OS-seeded stream, so nodes started together differ
        return TotemPg(Srp(config.local_node.nodeid, config.totem_config, ring_seq=ring_seq,
                           rng=random.Random()))

    # -- lifecycle -----------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return int(trio.current_time() * 1000)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Open the transport, start Totem, run until :meth:`stop`, then leave cleanly.

        Raises OSError when the transport cannot bind (the caller reports it)."""
        t = self.transport
        self.log.notice("TOTEM", f"Initializing transport ({t.name}).")
        await self._open_transport()
        try:
            self.log.notice("TOTEM", f"The network interface [{t.local_ip}] is now up.")
            self._publish_config()
            async with trio.open_nursery() as nursery:
                if self.services is not None:
                    # Like corosync: service engines and their IPC servers come up after the
                    # interface and before the links are configured (same log order).
                    await self.services.start(nursery)
                self.log.info("TOTEM", "Configuring link 0")
                if t.name == "UDP/IP Unicast":
                    for node in self.config.nodes:
                        ip = self._addresses.get(node.nodeid, node.ring0_addr)
                        self.log.notice("TOTEM", f"adding new UDPU member {{{ip}}}")
                nursery.start_soon(t.run, self._on_datagram)
                nursery.start_soon(self._timer_task)
                nursery.start_soon(self._writer.run)
                nursery.start_soon(self._stats_task)
                self._drive(lambda now: self.pg.start(now))
                task_status.started(self)
                await self._stop.wait()
                if self.services is not None:
                    # Clients first: their processes leave their groups while we are still
                    # a member, then the LEAVE tells the peers we are gone.
                    with trio.move_on_after(5):
                        await self.services.stop()
                self._drive(lambda now: self.pg.leave(now))
                with trio.move_on_after(2):
                    await self._writer.flush()
                nursery.cancel_scope.cancel()
        finally:
            t.close()
            self._stopped.set()

    async def _open_transport(self) -> None:
        """Bind the ring socket, retrying while the address is in use.

        corosync 3.1.7 retries ``bind`` up to BIND_MAX_RETRIES (10) more times, waiting
        BIND_RETRIES_INTERVAL (100 ms) × attempt in between (5.5 s in all), logging
        ``bind token socket failed: <strerror> (<errno>)`` each time; a restarted daemon
        thus survives a predecessor that still holds the port.  Only EADDRINUSE is retried
        here: the real daemon never binds an address that is not on an interface (it waits
        for the interface instead), so any other error — e.g. EADDRNOTAVAIL for an
        address given through COROSYNC_LOCAL_ADDRS — is reported at once.  The last
        OSError propagates (main.py turns it into the exit status)."""
        retries = 0
        while True:
            try:
                self.transport.open()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                self.log.warning("TOTEM", f"bind token socket failed: {exc.strerror} "
                                          f"({exc.errno})")
                retries += 1
                if retries > self.bind_max_retries:
                    raise
                await trio.sleep(self.bind_retry_interval_ms * retries / 1000.0)

    def stop(self) -> None:
        """Request a clean leave (SIGTERM/SIGINT path)."""
        self._stop.set()

    # -- run-time reconfiguration (exec/reload.py's ReloadTargets) -----------------------

    def apply_totem_config(self, config: Any) -> None:
        """Run with new Totem timers/constants from now on.

        Srp reads its ``config`` attribute whenever it arms a timer or sizes a token
        round, so replacing it is enough: a timer already armed keeps its deadline, the
        next one uses the new value (as corosync's totempg_put_config does).  netmtu (and
        the envelope overhead) must not change: TotemPg and the send queue are sized by it
        at start-up, and a reload never changes them."""
        current = getattr(self.srp, "config", None)
        if current is not None and (config.netmtu, config.transport_overhead) != (
                current.netmtu, current.transport_overhead):
            raise ValueError("netmtu cannot change on a running node")
        self.srp.config = config
        if hasattr(self.config, "totem_config"):
            self.config.totem_config = config
        if hasattr(self.transport, "block_unlisted_ips"):  # udpu: a volatile totem key too
            self.transport.block_unlisted_ips = bool(config.block_unlisted_ips)

    def add_member(self, nodeid: int, ip: str) -> None:
        """A node added to the nodelist: the transport sends to it and accepts it."""
        add = getattr(self.transport, "add_member", None)
        if add is None:
            return
        add(nodeid, ip)
        self._addresses[nodeid] = ip
        if self.transport.name == "UDP/IP Unicast":
            self.log.notice("TOTEM", f"adding new UDPU member {{{ip}}}")

    def remove_member(self, nodeid: int, ip: str) -> None:
        """A node removed from the nodelist: no more datagrams to or from it."""
        remove = getattr(self.transport, "remove_member", None)
        if remove is None:
            return
        remove(nodeid)
        self._addresses.pop(nodeid, None)
        if self.transport.name == "UDP/IP Unicast":
            self.log.notice("TOTEM", f"removing UDPU member {{{ip}}}")

    def configure_logging(self, settings: Any) -> None:
        """Apply a new ``logging`` section (exec/log.py keeps the old destinations when
        the new logfile cannot be opened, and raises OSError)."""
        self.log.reconfigure(settings)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- driving the state machine -------------------------------------------------------

    def _on_datagram(self, data: bytes) -> None:
        self._drive(lambda now: self.pg.receive(data, now))

    def _drive(self, call: Callable[[int], list[Action]]) -> None:
        """Run one state machine call and its actions, then any calls they queued.

        Re-entrant calls (input produced while executing actions, e.g. udp's local copy
        of our own multicast, or a sync engine completing from inside a handler) are
        queued and run after the current batch, never nested."""
        self._calls.append(call)
        if self._busy:
            return
        self._busy = True
        try:
            while self._calls:
                self._guarded(self._calls.popleft())
        finally:
            self._busy = False

    def _guarded(self, call: Callable[[int], list[Action]]) -> None:
        now = self.now_ms()
        try:
            actions = call(now)
        except Exception as exc:  # a state machine bug must not take the node down
            self.stats.internal_errors += 1
            self.log.limited(LogLevel.ERROR, "TOTEM", f"internal:{type(exc).__name__}",
                             f"Internal error while processing Totem input: {exc!r} "
                             f"{traceback.format_exc(limit=3)!r}")
            return
        self._execute(actions, now)

    def _execute(self, actions: Iterable[Action], now: int) -> None:
        """Carry out actions in order; one dict lookup per action (hot path)."""
        handlers = self._handlers
        count = 0
        for action in actions:
            count += 1
            handler = handlers.get(type(action))
            if handler is None:
                self.log.limited(LogLevel.WARNING, "MAIN", f"action:{type(action).__name__}",
                                 f"Unknown Totem action {action!r} ignored")
            else:
                handler(action)
        self.stats.actions += count

    def _do_unicast(self, action: Unicast) -> None:
        self.transport.unicast(action.nodeid, action.data)

    def _do_multicast(self, action: Multicast) -> None:
        ok = self.transport.multicast(action.data)
        if ok is None:
            return  # udpu: per-member unicasts, not counted (as corosync)
        note = getattr(self.srp, "note_mcast_send", None)
        if note is not None and (not ok or self.srp.stats.continuous_sendmsg_failures):
            note(ok)

    def _do_start_timer(self, action: StartTimer) -> None:
        deadline = trio.current_time() + action.ms / 1000.0
        self._deadlines[action.kind] = deadline
        if deadline < self._timer_target:
            self._timer_wake.set()

    def _do_cancel_timer(self, action: CancelTimer) -> None:
        self._deadlines.pop(action.kind, None)

    def _do_pg_deliver(self, action: PgDeliver) -> None:
        for handler in self.deliver_handlers:
            self._call_handler(handler, action)

    def _do_log(self, action: Log) -> None:
        self.log.log(action.level, action.subsys, action.message)

    def _do_persist(self, action: PersistRingSeq) -> None:
        self._writer.store(action.seq)

    @staticmethod
    def _do_nothing(action: Deliver) -> None:
        """Raw packets only reach the driver without TotemPg; nothing consumes them."""

    def _call_handler(self, handler: Callable[[Any], None], arg: Any) -> None:
        try:
            handler(arg)
        except Exception as exc:
            self.stats.internal_errors += 1
            self.log.limited(LogLevel.ERROR, "MAIN", f"handler:{type(exc).__name__}",
                             f"Handler {handler!r} failed: {exc!r}")

    def _confchg(self, chg: ConfChg) -> None:
        self.stats.confchgs += 1
        self._update_members_cmap(chg)
        for handler in self.confchg_handlers:
            self._call_handler(handler, chg)
        if chg.kind != ConfChgKind.REGULAR:
            return
        self.members = chg.members
        self.ring_id = chg.ring_id
        self._publish_stats()
        if self.sync_hook is not None:
            self._call_handler(self.sync_hook, chg)
        else:
            # No services to synchronise: complete right after this batch (so the
            # membership line srp logs with this confchg comes first, as in corosync).
            self._calls.append(self._complete_sync)

    def _complete_sync(self, now: int) -> list[Action]:
        self.log.notice("MAIN", "Completed service synchronization, ready to provide service.")
        return list(self.pg.trans_ack(now))

    def sync_completed(self) -> None:
        """Called by the sync engine when service synchronisation finished."""
        self._drive(self._complete_sync)

    def mcast(self, groups: list[bytes], message: bytes,
              guarantee: Guarantee = Guarantee.AGREED) -> None:
        """Multicast an application message.

        Raises QueueFull (flow control: retry after the token moved) and ValueError (too
        big) to the caller; those are answers, not internal errors."""
        actions = self.pg.mcast(groups, message, guarantee, self.now_ms())
        self._drive(lambda _now: actions)

    # -- timers --------------------------------------------------------------------------

    async def _timer_task(self) -> None:
        while True:
            wake = self._timer_wake = trio.Event()
            if not self._deadlines:
                self._timer_target = float("inf")
                await wake.wait()
                continue
            target = min(self._deadlines.values())
            self._timer_target = target
            with trio.move_on_at(target):
                await wake.wait()
                continue
            self._fire_due()

    def _fire_due(self) -> None:
        now_s = trio.current_time()
        due = sorted((d, k.value, k) for k, d in self._deadlines.items() if d <= now_s)
        for _deadline, _name, kind in due:
            # An earlier timer's actions may have cancelled or re-armed this one.
            current = self._deadlines.get(kind)
            if current is None or current > now_s:
                continue
            del self._deadlines[kind]
            self.stats.timers_fired += 1
            self._drive(lambda now, k=kind: self.pg.timer_expired(k, now))

    # -- ring id file --------------------------------------------------------------------

    def _ringid_error(self, exc: OSError) -> None:
        self.log.limited(LogLevel.ERROR, "TOTEM", "ringid:write",
                         f"Failed to store ring sequence in {self._writer.path}: {exc}")

    # -- cmap ----------------------------------------------------------------------------

    def _cmap_set(self, key: str, value: Any, type_name: str) -> None:
        if self.cmap is None:
            return
        try:
            from .cmap import CmapType

            self.cmap.set(key, value, CmapType[type_name])
        except Exception as exc:
            self.log.limited(LogLevel.DEBUG, "MAIN", f"cmap:{key}", f"cmap set {key}: {exc!r}")

    def _update_members_cmap(self, chg: ConfChg) -> None:
        for nodeid in chg.joined:
            count = self._join_counts.get(nodeid, 0) + 1
            self._join_counts[nodeid] = count
            base = f"runtime.members.{nodeid}"
            ip = self._addresses.get(nodeid)
            if ip is not None:
                self._cmap_set(f"{base}.ip", member_ip_string(ip), "STRING")
            self._cmap_set(f"{base}.join_count", count, "UINT32")
            self._cmap_set(f"{base}.status", "joined", "STRING")
            self._cmap_set(f"{base}.config_version", 0, "UINT64")
        for nodeid in chg.left:
            self._cmap_set(f"runtime.members.{nodeid}.status", "left", "STRING")

    def _publish_config(self) -> None:
        """runtime.config.totem.* (effective timers) unless the config loader already
        stored them with their exact types."""
        cfg = self.config.totem_config
        if self.cmap is None or not attrs.has(type(cfg)):
            return
        for field in attrs.fields(type(cfg)):
            if field.name in _NOT_PUBLISHED:
                continue
            key = f"runtime.config.totem.{field.name}"
            if key not in self.cmap:
                self._cmap_set(key, int(getattr(cfg, field.name)), "UINT32")

    def _stats_set(self, key: str, value: Any, type_name: str) -> None:
        store = self.stats_cmap
        if store is None:
            return
        try:
            from .cmap import CmapType

            store.set(key, value, CmapType[type_name])
        except Exception as exc:
            self.log.limited(LogLevel.DEBUG, "MAIN", f"cmap:{key}", f"stats set {key}: {exc!r}")

    def _publish_stats(self) -> None:
        if self.stats_cmap is None:
            return
        refresh = getattr(self.srp, "refresh_stats", None)
        if refresh is not None:
            # time_since_token_last_received & co. up to now; may log corosync's
            # "unable to form a cluster" warning while the condition holds
            self._drive(refresh)
        space = getattr(self.srp, "queue_space", None)
        if callable(space):
            self._stats_set("stats.pg.msg_queue_avail", int(space()), "UINT32")
            # totempg message reservations: corosync's IPC layer reserves queue room per
            # request; ours asks send_ok() instead, so nothing is ever reserved
            self._stats_set("stats.pg.msg_reserved", 0, "UINT32")
        stats = getattr(self.srp, "stats", None)
        if stats is None or not attrs.has(type(stats)):
            return
        for field in attrs.fields(type(stats)):
            value = getattr(stats, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            self._stats_set(f"stats.srp.{field.name}", value,
                           _SRP_STAT_TYPES.get(field.name, "UINT64"))

    async def _stats_task(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            self._publish_stats()
