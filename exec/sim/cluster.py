"""The deterministic cluster simulator: virtual clock, event heap, node driver.

One :class:`Simulation` runs N Totem stacks (``TotemPg(Srp(...))`` by default) against a
simulated network and a fault schedule, under an application load, and records a
:class:`~.trace.Trace` for the checkers.  Nothing here reads a real clock or an unseeded
random source, and nothing iterates over a hash-ordered container where order matters,
so one seed always gives the same run bit for bit.

Time line of a run::

    0 ........ warmup ............ heal ......... heal+bound ........ end
    nodes start   faults happen     all healed     probes sent,        all probes
    (staggered)   (load all along)  crashed nodes  load stops,         delivered (or
                                    restarted      membership must     drain deadline)
                                                   have converged

Driver contract with the stack (``corosync.exec.totem.events``):

* ``Unicast``/``Multicast`` go through :class:`~.network.Network`; a Multicast reaches
  every node *including the sender*, whose own copy is never lost (loopback).
* ``StartTimer`` (re)arms the single timer of that kind; ``CancelTimer`` disarms it.  A
  timer event carries the generation it was armed with and is ignored if the node
  re-armed or cancelled it since, or restarted.
* ``PersistRingSeq`` is stored per node and survives crashes; a restart builds a new
  stack with ``ring_seq`` = the stored value.
* The Srp's ``rng`` (send_join delays) is seeded from the run seed, node and incarnation.
* A paused node's inputs wait and are handed over in order when the pause ends, before
  any timer armed meanwhile (``StartTimer(kind, 0)`` included): Srp's pause detection
  flushes exactly that backlog's membership messages.
* After every REGULAR ``ConfChg`` the driver calls ``trans_ack(now)`` once the current
  action list is carried out.  This stands in for the sync protocol (which lives above
  this layer and, in the executive, ends with ``totempg_trans_ack``): here "sync" is
  empty, so it completes immediately.
"""

from __future__ import annotations

import heapq
import random
import time as _time
import traceback
from collections import deque
from typing import Any, Callable, Protocol

from attrs import define, field

from ..totem.config import TotemConfig, derive
from ..totem.events import (CancelTimer, ConfChg, ConfChgKind, Deliver, Guarantee, Log,
                            Multicast, PersistRingSeq, PgDeliver, StartTimer, TimerKind,
                            Unicast)
from .faults import NODE_FAULTS, Crash, Fault, Leave, Pause, random_schedule
from .message import Tag, make_message, parse_message
from .network import LinkParams, Network
from .trace import ConfRec, DelivRec, Incarnation, SafeRec, SendRec, Trace


class Stack(Protocol):
    """What the simulator drives: TotemPg's method surface."""

    def start(self, now: int) -> list: ...
    def receive(self, data: bytes, now: int) -> list: ...
    def timer_expired(self, kind: TimerKind, now: int) -> list: ...
    def mcast(self, groups: list[bytes], message: bytes, guarantee: Guarantee,
              now: int) -> list: ...
    def trans_ack(self, now: int) -> list: ...
    def leave(self, now: int) -> list: ...


#: ``make(nodeid, config, ring_seq, probe)`` → stack.  ``probe`` wraps the totemsrp layer
#: so the SAFE checker can see srp-level deliveries; a fake stack may ignore it.
StackFactory = Callable[[int, TotemConfig, int, Callable[[Any], Any] | None], Stack]


def totem_stack(nodeid: int, config: TotemConfig, ring_seq: int,
                probe: Callable[[Any], Any] | None) -> Stack:
    """The real thing: ``TotemPg(Srp(...))``, with the srp optionally wrapped by ``probe``."""
    from ..totem.pg import TotemPg
    from ..totem.srp import Srp

    srp: Any = Srp(nodeid, config, ring_seq=ring_seq)
    if probe is not None:
        srp = probe(srp)
    return TotemPg(srp)


def totem_queue_full() -> tuple[type[BaseException], ...]:
    from ..totem.srp import QueueFull

    return (QueueFull,)


class SrpProbe:
    """Transparent wrapper around an Srp that reports what TotemPg hides from the driver:
    srp-level ConfChg and Deliver actions (TotemPg turns Deliver into PgDeliver).

    Attribute reads and writes (``token_received_hook``!) go to the wrapped object."""

    _OWN = ("_srp", "_seen")

    def __init__(self, srp: Any, seen: Callable[[list], None]) -> None:
        object.__setattr__(self, "_srp", srp)
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._srp, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._srp, name, value)

    def _pass(self, actions: list) -> list:
        self._seen(actions)
        return actions

    def start(self, now: int) -> list:
        return self._pass(self._srp.start(now))

    def receive(self, data: bytes, now: int) -> list:
        return self._pass(self._srp.receive(data, now))

    def timer_expired(self, kind: TimerKind, now: int) -> list:
        return self._pass(self._srp.timer_expired(kind, now))

    def send(self, payload: bytes, guarantee: Guarantee, now: int) -> list:
        return self._pass(self._srp.send(payload, guarantee, now))

    def trans_ack(self, now: int) -> list:
        return self._pass(self._srp.trans_ack(now))

    def leave(self, now: int) -> list:
        return self._pass(self._srp.leave(now))


_MCAST_KEY_OFFSET = 17  # seq u32 @17, this_seqno @21, ring rep u32 @25, ring seq u64 @29


def safe_keys(data: bytes) -> tuple[tuple[int, int, int], ...]:
    """Packet keys of the SAFE MCASTs in one datagram (the outer one and, for a recovery
    encapsulation, the inner one).  Only SAFE packets are tracked: the SAFE checker needs
    nothing else, and it keeps the per-node "held" sets small."""
    keys = []
    while len(data) >= 45 and data[0] == 0x70 and data[1] == 0xC0 and data[3] == 1:
        if int.from_bytes(data[41:45], "little") == 1:
            keys.append((int.from_bytes(data[25:29], "little"),
                         int.from_bytes(data[29:37], "little"),
                         int.from_bytes(data[17:21], "little")))
        if data[4] != 1:  # not a recovery encapsulation
            break
        data = data[45:]
    return tuple(keys)


@define
class LoadParams:
    """Application load per node: a message every ``interval`` ms on average."""

    interval: int = 40
    safe_ratio: float = 0.3
    #: Size mix: mostly small (packed), some over one MTU (fragmented), a few large.
    small: tuple[int, int] = (20, 300)
    medium: tuple[int, int] = (300, 4000)
    large_max: int = 65536
    medium_ratio: float = 0.15
    large_ratio: float = 0.02
    groups: tuple[bytes, ...] = (b"sim", b"a", b"bb")
    #: Retry delay after QueueFull (the back-off).
    retry: int = 20


@define
class SimConfig:
    nodes: int = 3
    seed: int = 0
    #: Number of random faults (ignored when ``schedule`` is given).
    faults: int = 0
    #: Explicit fault schedule (times absolute, virtual ms).
    schedule: list[Fault] | None = None
    #: Length of the fault window; default scales with the number of faults.
    duration: int | None = None
    warmup: int = 1500
    totem: dict[str, Any] = field(factory=lambda: {"token": 400, "token_coefficient": 25})
    link: LinkParams = field(factory=LinkParams)
    load: LoadParams = field(factory=LoadParams)
    #: Max ms after the probes for everything to be delivered.
    drain: int | None = None
    #: Convergence bound after the heal; default derived from the timers (see bound()).
    bound: int | None = None
    record_log: bool = False
    stack: StackFactory = totem_stack
    queue_full: Callable[[], tuple[type[BaseException], ...]] = totem_queue_full
    #: Stop (as a violation) after this many events, a guard against runaway runs.
    max_events: int = 20_000_000
    #: Events allowed at one virtual millisecond before the run is declared livelocked
    #: (e.g. a token circling with zero delay forever).
    max_events_per_ms: int = 200_000


def convergence_bound(cfg: TotemConfig) -> int:
    """Virtual ms after the heal within which all nodes must share one ring.

    Worst case after the heal, derived from the membership protocol (spec §3.2-§3.8):
    a node may still be in GATHER with healed nodes in its failed list (cleared only on
    entering OPERATIONAL), so it first finishes a ring without them: at most one
    consensus timeout, plus a token timeout if that ring's commit/ORF token was lost
    on the way (then GATHER again: a second consensus).  The resulting rings discover
    each other by foreign messages or MERGE_DETECT (merge timer, started once the ring
    is idle, which the hold timer paces), and the merged GATHER needs a few join rounds
    and a consensus in the worst case, then commit + recovery (~4 token rotations,
    bounded by one token timeout if a token is lost once more).  Hence
    ``3 × consensus + 3 × token + merge + hold + 10 × join``.
    """
    return 3 * cfg.consensus + 3 * cfg.token + cfg.merge + cfg.hold + 10 * cfg.join


# Event kinds on the heap.  Heap entries are (time, seq, kind, a, b, c, d).
_NET, _TIMER, _LOAD, _RETRY, _FAULT_ON, _FAULT_OFF, _RESUME, _CONTROL = range(8)


@define(slots=True, eq=False)
class SimNode:
    nodeid: int
    stack: Any = None
    up: bool = False
    incarnation: int = 0
    inc: Incarnation | None = None
    ring_seq: int = 0
    timers: dict = field(factory=dict)
    paused_until: int = -1
    backlog: list = field(factory=list)
    outbox: deque = field(factory=deque)
    retry_pending: bool = False
    counter: int = 0
    srp_members: tuple[int, ...] = ()
    rng: random.Random | None = None
    #: (ring_id, members) of the latest REGULAR confchg of the current incarnation.
    regular: tuple | None = None


@define
class Result:
    trace: Trace
    violations: list
    events: int
    virtual_ms: int
    wall_s: float
    net: Any
    convergence_ms: int | None
    schedule: list[Fault]
    log: list[str]

    @property
    def messages_delivered(self) -> int:
        tags = set()
        for inc in self.trace.incarnations:
            tags.update(e.tag for e in inc.events if isinstance(e, DelivRec))
        return len(tags)

    @property
    def deliveries(self) -> int:
        return sum(1 for inc in self.trace.incarnations for e in inc.events
                   if isinstance(e, DelivRec))


class Simulation:
    def __init__(self, config: SimConfig) -> None:
        if not 1 <= config.nodes <= 32:
            raise ValueError("nodes must be in 1..32")
        self.cfg = config
        self.ids = list(range(1, config.nodes + 1))
        self.totem = derive(config.nodes, **config.totem)
        seed = config.seed
        self.net = Network(self.ids, config.link, random.Random(f"{seed}:net"))
        self.bound = config.bound if config.bound is not None else convergence_bound(self.totem)
        if config.schedule is not None:
            self.schedule = sorted(config.schedule, key=lambda f: f.at)
            last = max((f.at for f in self.schedule), default=config.warmup)
            window = config.duration if config.duration is not None else last - config.warmup + 1
        else:
            window = (config.duration if config.duration is not None
                      else max(2000, config.faults * 300))
            self.schedule = random_schedule(random.Random(f"{seed}:faults"), self.ids,
                                            config.faults, config.warmup, window,
                                            self.totem.token)
        self.heal_time = config.warmup + max(window, 0) if self.schedule else config.warmup
        self.check_time = self.heal_time + self.bound
        self.drain = config.drain if config.drain is not None else 12 * self.totem.token + 2000
        self.end_deadline = self.check_time + self.drain
        self.nodes = {i: SimNode(i, rng=random.Random(f"{seed}:load:{i}")) for i in self.ids}
        self.trace = Trace(tuple(self.ids), heal_time=self.heal_time, bound=self.bound)
        self.queue_full = config.queue_full()
        self.heap: list = []
        self.seq = 0
        self.now = 0
        self.idx = 0
        self.active: list[Fault] = []
        self.log: list[str] = []
        self.stopped = False
        self.load_on = True

    # ------------------------------------------------------------------ plumbing
    def _push(self, t: int, kind: int, a: Any = None, b: Any = None, c: Any = None,
              d: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b, c, d))

    def _note(self, text: str) -> None:
        if self.cfg.record_log:
            self.log.append(f"{self.now:>9} {text}")

    def _error(self, node: SimNode, what: str) -> None:
        tb = traceback.format_exc(limit=6)
        self.trace.runtime_errors.append(f"n{node.nodeid} raised in {what} at t={self.now}:\n{tb}")
        self._note(f"n{node.nodeid} EXCEPTION in {what}")
        self._down(node, "error")

    # ------------------------------------------------------------------ node life
    def _probe_seen(self, node: SimNode) -> Callable[[list], None]:
        def seen(actions: list) -> None:
            inc = node.inc
            for a in actions:
                t = type(a)
                if t is Deliver:
                    inc.srp_events.append(("d", a.ring_id.rep, a.ring_id.seq, a.seq))
                    if a.guarantee == Guarantee.SAFE:
                        inc.safe.append(SafeRec(self.now, self.idx, a.ring_id, a.seq,
                                                node.srp_members))
                elif t is ConfChg:
                    node.srp_members = a.members
                    inc.srp_events.append(("c", a.kind, a.ring_id, tuple(a.members)))
        return seen

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.up = True
        node.timers = {}
        node.backlog = []
        node.paused_until = -1
        node.srp_members = ()
        node.regular = None
        node.inc = Incarnation(node.nodeid, node.incarnation, self.now, self.idx)
        self.trace.incarnations.append(node.inc)
        seen = self._probe_seen(node)
        node.stack = self.cfg.stack(node.nodeid, self.totem, node.ring_seq,
                                    lambda srp: SrpProbe(srp, seen))
        srp = getattr(node.stack, "srp", None)
        if srp is not None and hasattr(srp, "rng"):
            # the driver's seeded random source (send_join delays): one stream per
            # node incarnation, so a run stays a pure function of its seed
            srp.rng = random.Random(f"{self.cfg.seed}:srp:{node.nodeid}:{node.incarnation}")
        self._note(f"n{node.nodeid} start (incarnation {node.incarnation}, "
                   f"ring_seq {node.ring_seq})")
        self._call(node, "start", lambda: node.stack.start(self.now))

    def _down(self, node: SimNode, reason: str) -> None:
        if not node.up:
            return
        node.up = False
        node.stack = None
        node.timers = {}
        node.backlog = []
        node.outbox.clear()
        node.retry_pending = False
        if node.inc is not None:
            node.inc.end_time, node.inc.end_idx, node.inc.end_reason = self.now, self.idx, reason
        self._note(f"n{node.nodeid} down ({reason})")

    def _call(self, node: SimNode, what: str, fn: Callable[[], list]) -> None:
        try:
            self._apply(node, fn())
        except Exception:
            self._error(node, what)

    # ------------------------------------------------------------------ actions
    def _apply(self, node: SimNode, actions: list) -> None:
        need_ack = False
        now = self.now
        nid = node.nodeid
        inc = node.inc
        for a in actions:
            t = type(a)
            if t is Multicast:
                keys = safe_keys(a.data)
                if keys:
                    for k in keys:
                        inc.has.setdefault(k, self.idx)
                for dst in self.ids:
                    for delay in self.net.route(nid, dst):
                        self._push(now + delay, _NET, dst, nid, a.data, keys)
            elif t is Unicast:
                for delay in self.net.route(nid, a.nodeid):
                    self._push(now + delay, _NET, a.nodeid, nid, a.data, None)
            elif t is StartTimer:
                self.seq += 1
                node.timers[a.kind] = self.seq
                heapq.heappush(self.heap, (now + a.ms, self.seq, _TIMER, nid, a.kind,
                                           self.seq, node.incarnation))
            elif t is CancelTimer:
                node.timers.pop(a.kind, None)
            elif t is PgDeliver:
                tag, intact = parse_message(a.message)
                inc.events.append(DelivRec(now, self.idx, tag, a.sender, a.ring_id,
                                           int(a.guarantee), intact, tuple(a.groups)))
                if self.cfg.record_log:
                    self._note(f"n{nid} deliver {tag} from {a.sender} ring {a.ring_id} "
                               f"{Guarantee(a.guarantee).name}{'' if intact else ' CORRUPT'}")
            elif t is ConfChg:
                inc.events.append(ConfRec(now, self.idx, a.kind, tuple(a.members),
                                          tuple(a.left), tuple(a.joined), a.ring_id))
                self._note(f"n{nid} confchg {a.kind.name} ring {a.ring_id} members "
                           f"{list(a.members)} left {list(a.left)} joined {list(a.joined)}")
                if a.kind == ConfChgKind.REGULAR:
                    need_ack = True
                    node.regular = (a.ring_id, tuple(a.members))
            elif t is PersistRingSeq:
                node.ring_seq = a.seq
            elif t is Log:
                if self.cfg.record_log:
                    self._note(f"n{nid} [{a.subsys}] {a.message}")
            elif t is Deliver:
                pass  # a raw Srp stack: not an application message
        if need_ack and node.up:
            # Stand-in for the sync protocol: it has nothing to do here, so it
            # "completes" right after the REGULAR confchg has been handed up.
            self._apply(node, node.stack.trans_ack(now))

    # ------------------------------------------------------------------ events
    def _deliver_net(self, node: SimNode, src: int, data: bytes, keys: Any) -> None:
        if keys:
            has = node.inc.has
            for k in keys:
                has.setdefault(k, self.idx)
        if self.cfg.record_log:
            kind = data[3] if len(data) > 3 else -1
            self._note(f"n{node.nodeid} <- n{src} {_TYPE_NAMES.get(kind, '?')} {len(data)}B")
        try:
            self._apply(node, node.stack.receive(data, self.now))
        except Exception:
            self._error(node, "receive")

    def _fire_timer(self, node: SimNode, kind: TimerKind, gen: int) -> None:
        if node.timers.get(kind) != gen:
            return
        del node.timers[kind]
        self._note(f"n{node.nodeid} timer {kind.name}")
        try:
            self._apply(node, node.stack.timer_expired(kind, self.now))
        except Exception:
            self._error(node, f"timer_expired({kind.name})")

    def _paused(self, node: SimNode) -> bool:
        return node.paused_until > self.now

    def _resume(self, node: SimNode) -> None:
        """End of a pause: everything that arrived or came due meanwhile, late, in order."""
        if not node.up or node.paused_until > self.now:
            return  # down, or a longer overlapping pause is still on
        backlog, node.backlog = node.backlog, []
        self._note(f"n{node.nodeid} resumes with {len(backlog)} late events")
        for item in backlog:
            if not node.up:
                return
            if item[0] == _NET:
                self._deliver_net(node, item[1], item[2], item[3])
            else:
                self._fire_timer(node, item[1], item[2])

    def _gen_message(self, node: SimNode, probe: bool = False) -> None:
        p = self.cfg.load
        rng = node.rng
        node.counter += 1
        tag = Tag(node.nodeid, node.counter)
        r = rng.random()
        top = p.large_max
        if probe:
            size = 64
        elif r < p.large_ratio:
            size = rng.randint(min(p.medium[1], top), top)
        elif r < p.large_ratio + p.medium_ratio:
            size = rng.randint(min(p.medium[0], top), min(p.medium[1], top))
        else:
            size = rng.randint(min(p.small[0], top), min(p.small[1], top))
        safe = rng.random() < p.safe_ratio
        guarantee = Guarantee.SAFE if safe else Guarantee.AGREED
        ng = rng.randint(1, len(p.groups))
        groups = tuple(p.groups[:ng])
        node.outbox.append((tag, size, guarantee, groups))
        if probe:
            self.trace.probes.append(tag)

    def _pump(self, node: SimNode) -> None:
        while node.outbox and node.up and not self._paused(node):
            tag, size, guarantee, groups = node.outbox[0]
            data = make_message(tag, size)
            try:
                actions = node.stack.mcast(list(groups), data, guarantee, self.now)
            except self.queue_full:
                if not node.retry_pending:
                    node.retry_pending = True
                    self._push(self.now + self.cfg.load.retry, _RETRY, node.nodeid)
                return
            except Exception:
                self._error(node, "mcast")
                return
            node.outbox.popleft()
            self.trace.sent[tag] = SendRec(self.now, self.idx, node.nodeid, node.incarnation,
                                           tag, len(data), int(guarantee), groups)
            self._note(f"n{node.nodeid} mcast {tag} {len(data)}B {guarantee.name}")
            self._apply(node, actions)

    def _fault_on(self, f: Fault) -> None:
        self._note(f"FAULT {f}")
        if isinstance(f, NODE_FAULTS):
            node = self.nodes[f.node]
            if isinstance(f, Pause):
                if node.up:
                    node.paused_until = max(node.paused_until, f.at + f.duration)
                    self._push(node.paused_until, _RESUME, node.nodeid)
            elif isinstance(f, Crash):
                self._down(node, "crash")
                self._push(f.at + f.duration, _FAULT_OFF, f)
            elif isinstance(f, Leave) and node.up and not self._paused(node):
                try:
                    self._apply(node, node.stack.leave(self.now))
                except Exception:
                    self._error(node, "leave")
                self._down(node, "leave")
                self._push(f.at + f.duration, _FAULT_OFF, f)
            return
        self.active.append(f)
        self.net.set_faults(self.active)
        self._push(f.at + f.duration, _FAULT_OFF, f)

    def _fault_off(self, f: Fault) -> None:
        if self.now >= self.heal_time:
            return  # the heal already undid it
        if isinstance(f, (Crash, Leave)):
            node = self.nodes[f.node]
            if not node.up:
                self._boot(node)
            return
        if f in self.active:
            self.active.remove(f)
            self.net.set_faults(self.active)
            self._note(f"END {f}")

    def _heal(self) -> None:
        self._note("HEAL: all links clean, all nodes up")
        self.active = []
        self.net.set_faults([])
        for node in self.nodes.values():
            if node.up and node.paused_until > self.now:
                node.paused_until = self.now
                self._resume(node)
        for node in self.nodes.values():
            if not node.up:
                self._boot(node)

    def _done(self) -> bool:
        for node in self.nodes.values():
            if not node.up or node.outbox:
                return False
        got: dict[int, set] = {}
        for node in self.nodes.values():
            got[node.nodeid] = {e.tag for e in node.inc.events if isinstance(e, DelivRec)}
        if any(t not in g for g in got.values() for t in self.trace.probes):
            return False
        for s in self.trace.sent.values():
            node = self.nodes[s.node]
            if s.incarnation == node.incarnation and s.tag not in got[s.node]:
                return False
        return True

    def _control(self, what: str) -> None:
        if what == "heal":
            self._heal()
        elif what == "check":
            # Load stops.  Probes go out once every node sits in the same full ring
            # (sent earlier, in a partial ring, they would legitimately reach only that
            # ring); how late that happens is the convergence-time checker's business.
            self.load_on = False
            self._note("CHECK: load stops; probes once membership has converged")
            self._push(self.now, _CONTROL, "converged?")
        elif what == "converged?":
            if self._converged():
                self._note("CONVERGED: probes go out")
                for node in self.nodes.values():
                    self._gen_message(node, probe=True)
                    self._pump(node)
                self._push(self.now + 50, _CONTROL, "poll")
            else:
                self._push(self.now + 20, _CONTROL, "converged?")
        elif what == "poll":
            if self._done():
                self.stopped = True
            else:
                self._push(self.now + 50, _CONTROL, "poll")

    def _converged(self) -> bool:
        full = tuple(self.ids)
        rings = set()
        for node in self.nodes.values():
            if not node.up or node.regular is None or node.regular[1] != full:
                return False
            rings.add(node.regular[0])
        return len(rings) == 1

    # ------------------------------------------------------------------ run
    def run(self) -> Result:
        t0 = _time.perf_counter()
        boot_rng = random.Random(f"{self.cfg.seed}:boot")
        for nid in self.ids:
            self._push(boot_rng.randint(0, 50), _CONTROL, "boot", nid)
            self._push(boot_rng.randint(0, self.cfg.load.interval) + 100, _LOAD, nid)
        for f in self.schedule:
            if f.at < self.heal_time:
                self._push(f.at, _FAULT_ON, f)
        if self.schedule:
            self._push(self.heal_time, _CONTROL, "heal")
        self._push(self.check_time, _CONTROL, "check")
        heap = self.heap
        nodes = self.nodes
        pop = heapq.heappop
        max_events = self.cfg.max_events
        max_same = self.cfg.max_events_per_ms
        same = 0
        while heap and not self.stopped:
            t, _s, kind, a, b, c, d = pop(heap)
            if t > self.end_deadline:
                break
            if t == self.now:
                same += 1
                if same > max_same:
                    self.trace.runtime_errors.append(
                        f"livelock: more than {max_same} events at t={t} without the "
                        "virtual clock advancing")
                    break
            else:
                same = 0
            self.now = t
            self.idx += 1
            if self.idx > max_events:
                self.trace.runtime_errors.append(f"event budget of {max_events} exhausted")
                break
            if kind == _NET:
                node = nodes[a]
                if not node.up:
                    continue
                if node.paused_until > t:
                    node.backlog.append((_NET, b, c, d))
                    continue
                self._deliver_net(node, b, c, d)
            elif kind == _TIMER:
                node = nodes[a]
                if not node.up or node.incarnation != d or node.timers.get(b) != c:
                    continue
                if node.paused_until > t:
                    node.backlog.append((_TIMER, b, c))
                    continue
                self._fire_timer(node, b, c)
            elif kind == _LOAD:
                node = nodes[a]
                if not self.load_on:
                    continue
                if node.up:
                    self._gen_message(node)
                    self._pump(node)
                interval = self.cfg.load.interval
                self._push(t + node.rng.randint(1, 2 * interval), _LOAD, a)
            elif kind == _RETRY:
                node = nodes[a]
                node.retry_pending = False
                if node.up:
                    self._pump(node)
            elif kind == _FAULT_ON:
                self._fault_on(a)
            elif kind == _FAULT_OFF:
                self._fault_off(a)
            elif kind == _RESUME:
                self._resume(nodes[a])
                if nodes[a].up:
                    self._pump(nodes[a])
            elif kind == _CONTROL:
                if a == "boot":
                    self._boot(nodes[b])
                else:
                    self._control(a)
        self.trace.end_time = self.now
        from .checkers import check_all

        violations = check_all(self.trace)
        conv = None
        finals = [i.regular_confchgs()[-1].time for i in self.trace.incarnations
                  if i.alive_at_end and i.regular_confchgs()]
        if finals and self.schedule:
            conv = max(finals) - self.heal_time
        return Result(self.trace, violations, self.idx, self.now,
                      _time.perf_counter() - t0, self.net.stats, conv, self.schedule,
                      self.log)


_TYPE_NAMES = {0: "ORF_TOKEN", 1: "MCAST", 2: "MERGE_DETECT", 3: "JOIN", 4: "COMMIT_TOKEN",
               5: "HOLD_CANCEL"}


def run(config: SimConfig) -> Result:
    return Simulation(config).run()
