"""The service host: services + sync engine behind one sans-IO object the daemon embeds.

The driver (exec/node.py in the daemon, or a test/simulator harness) owns Totem.  It feeds
the host

* every configuration change: :meth:`ServiceHost.on_confchg` (transitional *and* regular);
* every delivered totempg message: :meth:`ServiceHost.on_deliver` (groups ``a`` and
  ``sync``; others are ignored);

and the host calls back

* ``mcast(group, message, guarantee)`` to send (it may raise — e.g. ``QueueFull`` — when
  the Totem queue cannot take the message; the host then retries or refuses politely);
* ``send_ok(nbytes)`` to ask whether a message of that size fits the queue now (flow
  control of IPC requests, as ``corosync_sending_allowed`` does);
* ``trans_ack()`` once sync completed (Totem may then release application traffic queued
  during the membership change, §3.9);
* ``log(level, subsys, text)`` and ``shutdown(reason)``.

:attr:`ServiceHost.ipc_handlers` maps the IPC service names (``cmap``, ``cpg``) to objects
with ``on_connect``/``on_request``/``on_disconnect`` — the exec/ipc server's handler
protocol.  While a sync runs (and from start-up until the first sync completed) requests
that need the ring (corosync's ``CS_LIB_FLOW_CONTROL_REQUIRED``) are answered with the
generic 24-byte CS_ERR_TRY_AGAIN response, or — CPG MCAST, which is never answered —
dropped and counted, and every connection's libqb flow-control word is set to 2.

Outside sync the word is also 2 while this node's send backlog exceeds the
:class:`Admission` bound (a couple of token visits' worth, measured by TotemPg), so a
client that sends faster than the ring carries gets CS_ERR_TRY_AGAIN from its library
instead of its messages waiting behind thousands of others.

Bad input never raises out of the host: malformed exec messages are dropped and counted in
:attr:`HostStats.dropped` (by reason), logged at most once per power-of-two occurrence.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable

from attrs import define, field

from corosync.lib.proto.common import ProtoError

from .cmap import CmapStore, CmapType
from .service import (REQ_HEADER, SERVICES_COUNT_MAX, CsError, LibHandler, Malformed,
                      SendFailed, Service, ServiceId)
from .sync import COMPLETED_LOG, SyncEngine
from .totem.events import ConfChg, ConfChgKind, Guarantee, LogLevel, PgDeliver
from .totem.wire import RingId

GROUP_A = b"a"
GROUP_SYNC = b"sync"
FC_OFF, FC_SYNC = 0, 2
#: Queue use (fraction of Totem's send queue) above which every IPC connection gets flow
#: control, and below which it is lifted again: corosync's TOTEM_Q_LEVEL_CRITICAL (75 %,
#: where one maximum-size message, 1 MiB ≈ 25 % of the queue, may no longer fit).  The
#: backlog rule (:class:`Admission`) normally acts long before; this is the backstop when
#: no backlog measurement is available.
QUEUE_FC_ON, QUEUE_FC_OFF = 0.75, 0.6
#: Admission bounds, in token visits' worth of this node's measured send rate: flow
#: control goes on when the backlog reaches ADMIT_HIGH visits and off again at ADMIT_LOW.
ADMIT_HIGH, ADMIT_LOW = 2.0, 1.0
#: ... but never below this many packets (a tiny measured rate must not throttle to zero).
ADMIT_MIN_PACKETS = 4

LogFn = Callable[[LogLevel, str, str], None]


@define
class HostStats:
    exec_rx: int = 0
    exec_tx: int = 0
    send_failed: int = 0
    ipc_requests: int = 0
    ipc_try_again: int = 0
    ipc_dropped: int = 0
    queue_fc_changes: int = 0
    dropped: dict[str, int] = field(factory=dict)


@define
class Admission:
    """When to stop admitting ring traffic from IPC clients: a bound on the send backlog.

    Why: every message accepted waits behind everything accepted before it.  corosync
    pushes back only when Totem's queue is 75 % full (~2000 small messages); a daemon
    slower than its clients then parks that many messages and each waits ~0.5 s.  The
    bound here is *time*: the backlog (packets waiting for a token, :meth:`TotemPg.backlog`)
    may reach ``high`` token visits' worth of what this node sends per visit
    (:attr:`TotemPg.drain_per_visit`, measured while the queue was the limit), then every
    IPC connection gets libqb flow control (libcpg answers CS_ERR_TRY_AGAIN, the server
    holds requests already written) until the backlog is down to ``low`` visits.  The gap
    is the hysteresis: clients are not flapped per message, and the queue still holds a
    full visit's worth when it refills, so the ring never idles for want of input.

    Nothing is ever refused *inside* the daemon for this: a message that reached a
    service is queued (all-or-nothing, ``send_ok``), so nothing is lost or reordered; a
    large message may overshoot the bound, the next ones wait.
    """

    high: float = ADMIT_HIGH
    low: float = ADMIT_LOW
    min_packets: int = ADMIT_MIN_PACKETS
    #: currently refusing (flow control on)
    refusing: bool = False

    def bounds(self, per_visit: float) -> tuple[float, float]:
        """(on, off) thresholds in packets for a measured rate of ``per_visit``."""
        per = per_visit if per_visit > 1.0 else 1.0
        on = self.high * per
        if on < self.min_packets:
            on = float(self.min_packets)
        off = self.low * per
        return on, off if off < on else on - 1

    def update(self, backlog: int, per_visit: float) -> bool:
        """Feed the current backlog (packets) and send rate (packets per token visit);
        True when :attr:`refusing` changed."""
        on, off = self.bounds(per_visit)
        if self.refusing:
            if backlog <= off:
                self.refusing = False
                return True
        elif backlog >= on:
            self.refusing = True
            return True
        return False


class _Api:
    """The :class:`~corosync.exec.service.ServiceApi` one service sees."""

    def __init__(self, host: ServiceHost) -> None:
        self._host = host
        self.nodeid = host.nodeid
        self.cmap = host.cmap
        if host._timer_add is not None and host._timer_del is not None:
            # only offered when the driver has timers (services probe with getattr)
            self.timer_add = host.timer_add
            self.timer_del = host.timer_del
        for name, fn in host.hooks.items():
            # optional executive hooks (``reload_config``, ``reopen_log_files``,
            # ``fatal_exit``, ``node_status`` …): present only when the driver gives them
            setattr(self, name, fn)

    def mcast(self, message: bytes, guarantee: Guarantee = Guarantee.AGREED) -> None:
        self._host._send(GROUP_A, message, guarantee)

    def send_ok(self, nbytes: int) -> bool:
        return self._host.send_ok(nbytes)

    def log(self, level: LogLevel, message: str, subsys: str = "MAIN") -> None:
        self._host.log(level, subsys, message)

    def log_limited(self, level: LogLevel, key: str, message: str, subsys: str = "MAIN") -> None:
        self._host.log_limited(level, subsys, key, message)

    def shutdown_request(self, reason: str) -> None:
        self._host.shutdown(reason)


class ServiceIpcHandler:
    """One service's IPC entry points (exec/ipc ``IpcHandler`` protocol)."""

    def __init__(self, host: ServiceHost, service: Service) -> None:
        self.host = host
        self.service = service
        self.conns: list[Any] = []

    def on_connect(self, conn: Any) -> bool:
        self.conns.append(conn)
        self.service.lib_init(conn)
        level, hold = self.host._fc_level(self.service)
        if level:
            _set_fc(conn, level, hold)
        return True

    def on_request(self, conn: Any, msg_id: int, payload: bytes) -> None:
        host = self.host
        host.stats.ipc_requests += 1
        if host._stats_dirty and self.service.id == ServiceId.CMAP:
            host.flush_stats()  # cmap clients read the counters: give them current values
        handler: LibHandler | None = self.service.lib_handlers.get(msg_id)
        if handler is None:
            host.count("ipc_unknown_request",
                       f"{self.service.ipc_name}: unknown request id {msg_id}")
            conn.send_response(0, b"", CsError.ERR_INVALID_PARAM)
            return
        if handler.flow_control and (host.sync_in_process
                                     or not host.send_ok(REQ_HEADER.size + len(payload))):
            if handler.answered:
                host.stats.ipc_try_again += 1
                conn.send_response(0, b"", CsError.ERR_TRY_AGAIN)
            else:
                host.stats.ipc_dropped += 1
                host.log_limited(LogLevel.WARNING, "MAIN", "ipc:async_dropped",
                                 f"{self.service.ipc_name} request {msg_id} dropped: "
                                 f"{'sync in progress' if host.sync_in_process else 'queue full'}")
            return
        try:
            handler.fn(conn, payload)
        except (Malformed, struct.error, ProtoError) as exc:
            host.count("ipc_malformed", f"{self.service.ipc_name}: malformed request "
                                        f"{msg_id} from pid {getattr(conn, 'pid', '?')}: {exc}")
            if handler.answered:
                conn.send_response(0, b"", CsError.ERR_INVALID_PARAM)
        if handler.flow_control:
            host.check_queue()

    def on_disconnect(self, conn: Any) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        self.service.lib_exit(conn)


def _set_fc(conn: Any, level: int, hold: bool = True) -> None:
    """Set a connection's libqb flow-control word.  ``hold``: the server also stops
    reading its requests (libqb's behaviour under RATE_OFF/OFF_2); without it requests
    the client wrote before it saw the word are still taken in."""
    fn = getattr(conn, "set_flow_control", None)
    if fn is None:
        return
    if hold:
        fn(level)
        return
    try:
        fn(level, hold=False)
    except TypeError:  # a connection without the hold switch (test doubles)
        fn(level)


def _usage_from(send_ok: Callable[[int], bool] | None) -> Callable[[], float] | None:
    """Queue use read through ``send_ok``'s owner when that is a TotemPg (its Srp knows
    ``queue_space()`` and ``config.send_queue_max``) — the common wiring; else None."""
    srp = getattr(getattr(send_ok, "__self__", None), "srp", None)
    space = getattr(srp, "queue_space", None)
    total = getattr(getattr(srp, "config", None), "send_queue_max", None)
    if not callable(space) or not isinstance(total, int) or total <= 0:
        return None
    return lambda: 1.0 - space() / total


def _load_from(send_ok: Callable[[int], bool] | None
               ) -> Callable[[], tuple[int, float]] | None:
    """(backlog packets, packets sent per token visit) read through ``send_ok``'s owner
    when that is a TotemPg (``backlog()`` and ``drain_per_visit``) — the common wiring."""
    pg = getattr(send_ok, "__self__", None)
    backlog = getattr(pg, "backlog", None)
    if not callable(backlog) or not isinstance(getattr(pg, "drain_per_visit", None), float):
        return None
    return lambda: (backlog(), pg.drain_per_visit)


def default_services() -> list[type[Service]]:
    """The services a node runs, in corosync 3.1.7's load order (its start-up log:
    cmap [0], cfg [1], cpg [2], ..., votequorum [5], quorum [3])."""
    from corosync.services.cfg import CfgService
    from corosync.services.cmap import CmapService
    from corosync.services.cpg import CpgService
    from corosync.services.quorum import QuorumService
    from corosync.services.votequorum import VotequorumService

    return [CmapService, CfgService, CpgService, VotequorumService, QuorumService]


class ServiceHost:
    """Services, sync and IPC entry points of one node (module docstring)."""

    def __init__(self, nodeid: int, cmap: CmapStore,
                 mcast: Callable[[bytes, bytes, Guarantee], None], *,
                 send_ok: Callable[[int], bool] | None = None,
                 trans_ack: Callable[[], None] | None = None,
                 log: LogFn | None = None,
                 shutdown: Callable[[str], None] | None = None,
                 services: Iterable[Callable[[Any], Service]] | None = None,
                 stats_cmap: CmapStore | None = None,
                 on_ready: Callable[[], None] | None = None,
                 timer_add: Callable[[int, Callable[[], None]], Any] | None = None,
                 timer_del: Callable[[Any], None] | None = None,
                 queue_usage: Callable[[], float] | None = None,
                 send_load: Callable[[], tuple[int, float]] | None = None,
                 admission: Admission | None = None,
                 log_sync_completed: bool = True,
                 hooks: dict[str, Callable[..., Any]] | None = None) -> None:
        self.nodeid = nodeid
        #: executive hooks offered to every service's API as attributes (services probe
        #: them with getattr); a name clashing with the API's own methods is refused
        self.hooks: dict[str, Callable[..., Any]] = dict(hooks or {})
        clash = set(self.hooks) & {"mcast", "send_ok", "log", "log_limited",
                                   "shutdown_request", "nodeid", "cmap", "timer_add",
                                   "timer_del"}
        if clash:
            raise ValueError(f"hooks may not replace the service API: {sorted(clash)}")
        self.cmap = cmap
        self._mcast = mcast
        self._send_ok = send_ok
        self._trans_ack = trans_ack
        self._log = log
        self._shutdown = shutdown
        self._on_ready = on_ready
        self._timer_add = timer_add
        self._timer_del = timer_del
        self._queue_usage = queue_usage if queue_usage is not None else _usage_from(send_ok)
        #: () -> (backlog packets, packets per token visit), for :attr:`admission`
        self._send_load = send_load if send_load is not None else _load_from(send_ok)
        #: the backlog bound (see :class:`Admission`); idle without ``send_load``
        self.admission = admission if admission is not None else Admission()
        #: Totem's send path is saturated (backlog over the admission bound, or the queue
        #: at corosync's critical level): every connection is flow-controlled
        self.queue_critical = False
        #: ... because the queue itself is at the critical level (requests are held)
        self._queue_full = False
        #: a deferred lift of that flow control is scheduled (driver timer handle)
        self._lift_timer: Any = None
        self._lifting = False
        #: corosync refuses IPC connections (EAGAIN) until its first sync completed;
        #: ``on_ready`` fires once then (e.g. set every IpcServer's ``ready``)
        self.ready = False
        self.log_sync_completed = log_sync_completed
        self.stats = HostStats()
        self.sync_in_process = True  # corosync starts "in sync" until the first one ends
        self.members: tuple[int, ...] = ()
        self.ring_id: RingId | None = None
        self.shutdown_requested: str | None = None
        self.services: dict[int, Service] = {}
        api = _Api(self)
        for factory in (services if services is not None else default_services()):
            if stats_cmap is not None and getattr(factory, "id", None) == ServiceId.CMAP:
                svc = factory(api, stats_cmap)  # type: ignore[call-arg]
            else:
                svc = factory(api)
            if not 0 <= svc.id < SERVICES_COUNT_MAX or svc.id in self.services:
                raise ValueError(f"bad or duplicate service id {svc.id}")
            self.services[svc.id] = svc
        self.sync = SyncEngine({sid: _SyncAdapter(s) for sid, s in self.services.items()
                                if s.sync},
                               send=lambda m: self._send(GROUP_SYNC, m, Guarantee.AGREED),
                               completed=self._sync_completed,
                               log=lambda level, text: self.log(level, "SYNC", text))
        self.ipc_handlers: dict[str, ServiceIpcHandler] = {
            s.ipc_name: ServiceIpcHandler(self, s) for s in self.services.values() if s.ipc_name}
        self._log_counts: dict[str, int] = {}
        #: exec id (service << 16 | fn) → [rx key, rx count, tx key, tx count]
        #: (runtime.services.*); keyed by the raw id the messages carry: no tuple per message
        self._fn_stats: dict[int, list[Any]] = {}
        self._stats_dirty = False
        self._dirty_entries: set[int] = set()
        for svc in self.services.values():
            self._register(svc)
        #: the services' ``pump`` methods, looked up once (pump runs after every delivery)
        self._pumps: list[Callable[[], None]] = [
            p for p in (getattr(svc, "pump", None) for svc in self.services.values())
            if callable(p)]

    def _register(self, svc: Service) -> None:
        """What corosync's service loader publishes (service.c): the engine's cmap keys
        and the "Service engine loaded" line."""
        short = svc.ipc_name or type(svc).__name__.lower()
        base = f"runtime.services.{short}"
        try:
            self.cmap.set(f"internal_configuration.service.{svc.id}.name", f"corosync_{short}",
                          CmapType.STRING)
            self.cmap.set(f"internal_configuration.service.{svc.id}.ver", 0, CmapType.UINT32)
            self.cmap.set(f"{base}.service_id", int(svc.id), CmapType.UINT16)
            for fn in range(len(svc.exec_handlers)):
                rx, tx = f"{base}.{fn}.rx", f"{base}.{fn}.tx"
                self.cmap.set(rx, 0, CmapType.UINT64)
                self.cmap.set(tx, 0, CmapType.UINT64)
                self._fn_stats[(int(svc.id) << 16) | fn] = [rx, 0, tx, 0]
        except Exception as exc:  # a store refusing our keys must not stop the services
            self.log(LogLevel.WARNING, "MAIN", f"cmap keys of {svc.name}: {exc!r}")
        self.log(LogLevel.NOTICE, "SERV", f"Service engine loaded: {svc.name} [{int(svc.id)}]")

    def _count_fn(self, raw_id: int, tx: bool) -> None:
        """Count in memory; :meth:`flush_stats` publishes (a cmap write per message would
        cost more than the rest of the message's trip through the service layer)."""
        entry = self._fn_stats.get(raw_id)
        if entry is not None:
            entry[3 if tx else 1] += 1
            self._stats_dirty = True
            self._dirty_entries.add(raw_id)

    def flush_stats(self) -> None:
        """Write the runtime.services.*.rx/tx counters to cmap.  Done before every cmap IPC
        request (so cmap clients always read current values), at the end of every sync,
        and whenever the driver calls it (e.g. with its periodic stats refresh); only cmap
        requests trigger it, so other requests never pay for it."""
        if not self._stats_dirty:
            return
        self._stats_dirty = False
        dirty, self._dirty_entries = self._dirty_entries, set()
        for key in sorted(dirty):
            rx_key, rx, tx_key, tx = self._fn_stats[key]
            self.cmap.set(rx_key, rx, CmapType.UINT64)  # equal values notify nobody
            self.cmap.set(tx_key, tx, CmapType.UINT64)

    # ------------------------------------------------------------------ callbacks out
    def _send(self, group: bytes, message: bytes, guarantee: Guarantee) -> None:
        try:
            self._mcast(group, message, guarantee)
        except Exception as exc:
            self.stats.send_failed += 1
            raise SendFailed(repr(exc)) from exc
        self.stats.exec_tx += 1
        if group == GROUP_A and len(message) >= 4:
            self._count_fn(struct.unpack_from("<I", message)[0], tx=True)

    def send_ok(self, nbytes: int) -> bool:
        return True if self._send_ok is None else bool(self._send_ok(nbytes))

    def log(self, level: LogLevel, subsys: str, text: str) -> None:
        if self._log is not None:
            self._log(level, subsys, text)

    def log_limited(self, level: LogLevel, subsys: str, key: str, text: str) -> None:
        """Log the 1st, 2nd, 4th, 8th … occurrence of ``key`` (deterministic, no clock)."""
        n = self._log_counts.get(key, 0) + 1
        self._log_counts[key] = n
        if n & (n - 1) == 0:
            self.log(level, subsys, text if n == 1 else f"{text} ({n} times)")

    def count(self, reason: str, text: str) -> None:
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        self.log_limited(LogLevel.WARNING, "MAIN", reason, text)

    def timer_add(self, ms: int, callback: Callable[[], None]) -> Any:
        """One-shot service timer through the driver's ``timer_add(ms, fn) -> handle``;
        the callback runs guarded (a failure is logged) and is followed by :meth:`pump`."""
        assert self._timer_add is not None

        def fire() -> None:
            try:
                callback()
            except Exception as exc:
                self.log(LogLevel.ERROR, "MAIN", f"service timer {callback!r} failed: {exc!r}")
            self.pump()

        return self._timer_add(int(ms), fire)

    def timer_del(self, handle: Any) -> None:
        assert self._timer_del is not None
        self._timer_del(handle)

    def shutdown(self, reason: str) -> None:
        self.shutdown_requested = reason
        if self._shutdown is not None:
            self._shutdown(reason)

    # ------------------------------------------------------------------ inputs
    def on_confchg(self, chg: ConfChg) -> None:
        """A transitional or regular configuration (main.c ``confchg_fn``)."""
        abort = self.sync_in_process
        self._set_sync_in_process(True)
        for svc in self.services.values():
            svc.confchg(chg.kind, chg.members, chg.left, chg.joined, chg.ring_id)
        if abort:
            self.sync.abort()
        if chg.kind == ConfChgKind.TRANSITIONAL:
            self.sync.save_transitional(chg.members)
        else:
            self.members = tuple(chg.members)
            self.ring_id = chg.ring_id
            self.sync.start(chg.members, chg.ring_id)

    def on_deliver(self, d: PgDeliver) -> None:
        """One totempg message in agreed order."""
        groups = d.groups
        if GROUP_SYNC in groups:
            self.sync.deliver(d.sender, d.message)
        if GROUP_A in groups:
            self._dispatch(d.sender, d.message, d.swapped)
        self.pump()

    def pump(self) -> None:
        """Retry work refused earlier by a full queue (sync messages, dead clients' leaves).
        Called after every delivery; a driver may also call it when the token moved."""
        self.sync.pump()
        for pump in self._pumps:
            pump()
        self.check_queue()

    def check_queue(self) -> None:
        """Flow-control every IPC connection while Totem's send path is saturated, lift it
        when it drained (corosync: TOTEM_Q_LEVEL_CRITICAL → QB_IPCS_RATE_OFF_2).  Saturated
        means the backlog is over the :class:`Admission` bound, or — the backstop — the
        queue is over :data:`QUEUE_FC_ON` (then requests are also held).  Runs after
        flow-controlled requests and every :meth:`pump` (so after every delivery), i.e.
        at least once per token visit."""
        load = self._send_load
        if load is not None:
            try:
                backlog, per_visit = load()
            except Exception:
                pass
            else:
                self.admission.update(backlog, per_visit)
        full = self._queue_full
        usage_fn = self._queue_usage
        # The critical level (75 % of ~3000 packets) lies far above the admission bound
        # (a few dozen packets): with a backlog measurement it only needs reading while
        # admission refuses or the level was reached (this runs after every delivery).
        if usage_fn is not None and (full or load is None or self.admission.refusing):
            try:
                usage = float(usage_fn())
            except Exception:
                usage = 0.0
            full = usage > QUEUE_FC_ON or (full and usage >= QUEUE_FC_OFF)
        refusing = full or (load is not None and self.admission.refusing)
        if refusing != self.queue_critical or full != self._queue_full:
            if (self.queue_critical and not refusing and self._timer_add is not None
                    and not self._lifting):
                # Lift when the work at hand is done, not in the middle of a token's
                # deliveries: the client would fill its request ring while we still
                # deliver, and those requests wait uncounted (see :class:`Admission`).
                if self._lift_timer is None:
                    self._lift_timer = self._timer_add(0, self._deferred_lift)
                return
            if refusing != self.queue_critical:
                self.stats.queue_fc_changes += 1
            self.queue_critical = refusing
            self._queue_full = full
            self._apply_fc()

    def _deferred_lift(self) -> None:
        """The driver's 0 ms timer: the task that wanted to lift flow control yielded."""
        self._lift_timer = None
        self._lifting = True
        try:
            self.check_queue()
        except Exception as exc:  # never let a driver timer die on us
            self.log(LogLevel.ERROR, "MAIN", f"flow control check failed: {exc!r}")
        finally:
            self._lifting = False

    def exec_exit(self) -> None:
        for svc in self.services.values():
            svc.exec_exit()

    # ------------------------------------------------------------------ internals
    def _dispatch(self, sender: int, msg: bytes, swapped: bool) -> None:
        if len(msg) < REQ_HEADER.size:
            self.count("exec_short", f"exec message of {len(msg)} bytes from node {sender}")
            return
        (raw_id,) = struct.unpack_from(">I" if swapped else "<I", msg, 0)
        service, fn = raw_id >> 16, raw_id & 0xFFFF
        svc = self.services.get(service)
        if svc is None:
            key = "exec_bad_service" if service >= SERVICES_COUNT_MAX else "exec_other_service"
            self.stats.dropped[key] = self.stats.dropped.get(key, 0) + 1
            return
        if fn >= len(svc.exec_handlers):
            self.count("exec_unknown_fn", f"discarded unknown message {fn} for service "
                                          f"{service} (max id {len(svc.exec_handlers)})")
            return
        handler = svc.exec_handlers[fn]
        self.stats.exec_rx += 1
        self._count_fn(raw_id, tx=False)
        try:
            if swapped:
                if handler.swap is None:
                    self.count("exec_unswappable", f"byte-swapped message {fn} for service "
                                                   f"{service} from node {sender} dropped")
                    return
                msg = handler.swap(msg)
            handler.fn(msg, sender)
        except (Malformed, struct.error, ValueError) as exc:
            reason = exc.reason if isinstance(exc, Malformed) else "exec_malformed"
            self.count(reason, f"dropped malformed exec message {service}:{fn} "
                               f"from node {sender}: {exc}")

    def _set_sync_in_process(self, value: bool) -> None:
        if self.sync_in_process == value:
            return
        self.sync_in_process = value
        self._apply_fc()

    def _fc_level(self, svc: Service) -> tuple[int, bool]:
        """libqb flow-control word for ``svc``'s connections (cs_ipcs_check_for_flow_control)
        and whether the server holds their requests: 2 while sync runs (unless the service
        stays open) or the queue is critical — held, as libqb does; 2 while only the
        admission bound is exceeded — not held: requests already written are taken in, so
        the backlog the bound measures includes them (held, they would wait uncounted in
        the request ring while the lifted word let the client write more)."""
        if self.sync_in_process and not svc.ipc_during_sync:
            return FC_SYNC, True
        if self.queue_critical:
            return FC_SYNC, self._queue_full
        return FC_OFF, True

    def _apply_fc(self) -> None:
        for handler in self.ipc_handlers.values():
            level, hold = self._fc_level(handler.service)
            for conn in handler.conns:
                _set_fc(conn, level, hold)

    def _sync_completed(self) -> None:
        self.flush_stats()
        if self.log_sync_completed:
            self.log(LogLevel.NOTICE, "MAIN", COMPLETED_LOG)
        self._set_sync_in_process(False)
        if not self.ready:
            self.ready = True
            if self._on_ready is not None:
                self._on_ready()
        if self._trans_ack is not None:
            self._trans_ack()


class _SyncAdapter:
    """A service as the sync engine sees it."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.name = svc.name

    def sync_init(self, trans_list: tuple[int, ...], member_list: tuple[int, ...],
                  ring_id: RingId) -> None:
        self.svc.sync_init(trans_list, member_list, ring_id)

    def sync_process(self) -> bool:
        return self.svc.sync_process()

    def sync_activate(self) -> None:
        self.svc.sync_activate()

    def sync_abort(self) -> None:
        self.svc.sync_abort()
