"""Safety and liveness checkers over a simulation :class:`~.trace.Trace`.

Definitions (an *epoch* of a node incarnation is the span from one REGULAR confchg to
its next REGULAR confchg — it includes the TRANSITIONAL confchg and the old-ring
messages delivered after it; a message belongs to the ring ``PgDeliver.ring_id`` in
which it was ordered):

integrity        every delivered message is one the simulator sent (tag known, bytes
                 intact, sender/guarantee/groups as sent), delivered after it was sent.
duplicates       an incarnation delivers a message at most once.
in-config        nothing is delivered before the incarnation's first REGULAR confchg.
agreed order     for every ring R, any two incarnations that both deliver messages m1
                 and m2 ordered in R deliver them in the same relative order.
fifo             messages of one sender are delivered in the order it sent them.
config agreement incarnations that install ring R agree on its member list.
virtual sync     incarnations that move together from ring R to the same next ring R'
                 delivered exactly the same set of messages in their R epoch; those
                 still in R at the end (no later change) delivered the same set too.
safe             a SAFE totemsrp message is delivered (srp level) only when every member
                 of the node's configuration at that moment already held it.
safe no-loss     a SAFE message delivered by any node in the *regular* part of ring R is
                 delivered in R's epoch by every member of R that survives R.  (For
                 AGREED messages the literal "delivered by any ⇒ by all survivors"
                 is not a Totem guarantee: a node can deliver its own message and die
                 before the token carries it; what holds is virtual synchrony above.)
srp order        below totempg: every incarnation delivers the MCASTs of one ring in
                 strictly increasing seq order (agreed order, no duplicates).
srp virtual sync below totempg: incarnations moving together from ring R to R' delivered
                 the same set of MCASTs (ring, seq) in their R epoch.  This is the
                 guarantee Totem itself gives; the message-level check above also needs
                 totempg to keep it, which it cannot for a message whose fragments
                 straddle a configuration change (a node joining mid-message throws the
                 tail away, corosync's receiver quirk) — see docs/corosync-sim.md.
self delivery    an incarnation that stays up delivers every message it sent.
membership       after the heal, all incarnations alive at the end install the same
                 final ring, made of all nodes ...
convergence-time ... within ``trace.bound`` ms of the heal.
progress         every probe sent after convergence is delivered by every live node.
"""

from __future__ import annotations

from collections import defaultdict

from attrs import frozen

from ..totem.events import ConfChgKind, Guarantee
from .message import Tag
from .trace import ConfRec, DelivRec, Incarnation, Trace


@frozen
class Violation:
    kind: str
    time: int
    nodes: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        who = ",".join(map(str, self.nodes))
        return f"[{self.kind}] t={self.time} nodes={who}: {self.detail}"


def _name(inc: Incarnation) -> str:
    return f"n{inc.node}.{inc.number}"


def check_integrity(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        for e in inc.events:
            if not isinstance(e, DelivRec):
                continue
            bad = None
            sent = trace.sent.get(e.tag) if e.tag is not None else None
            if e.tag is None:
                bad = "delivered bytes that no simulated node sent"
            elif not e.intact:
                bad = f"message {e.tag} delivered with corrupted content"
            elif sent is None:
                bad = f"message {e.tag} delivered but never sent"
            elif sent.idx > e.idx:
                bad = f"message {e.tag} delivered before it was sent"
            elif sent.node != e.sender:
                bad = f"message {e.tag} delivered with sender {e.sender}"
            elif sent.guarantee != e.guarantee:
                bad = f"message {e.tag} delivered with guarantee {e.guarantee}"
            elif sent.groups != e.groups:
                bad = f"message {e.tag} delivered to groups {e.groups!r}"
            if bad:
                out.append(Violation("integrity", e.time, (inc.node,), f"{_name(inc)}: {bad}"))
    return out


def check_duplicates(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        seen: set[Tag] = set()
        for e in inc.events:
            if isinstance(e, DelivRec) and e.tag is not None:
                if e.tag in seen:
                    out.append(Violation("duplicate", e.time, (inc.node,),
                                         f"{_name(inc)} delivered {e.tag} twice"))
                seen.add(e.tag)
    return out


def check_in_config(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        for e in inc.events:
            if isinstance(e, ConfRec) and e.kind == ConfChgKind.REGULAR:
                break
            if isinstance(e, DelivRec):
                out.append(Violation("in-config", e.time, (inc.node,),
                                     f"{_name(inc)} delivered {e.tag} before any "
                                     "regular configuration"))
                break
    return out


def _first_disagreement(a: list[Tag], b: list[Tag]) -> tuple[Tag, Tag] | None:
    common = set(a) & set(b)
    ra = [x for x in a if x in common]
    rb = [x for x in b if x in common]
    for x, y in zip(ra, rb):
        if x != y:
            return x, y
    return None


def check_agreed_order(trace: Trace) -> list[Violation]:
    per_ring: dict = defaultdict(dict)  # ring -> inc name -> list of tags
    nodes_of: dict[str, int] = {}
    for inc in trace.incarnations:
        nodes_of[_name(inc)] = inc.node
        for e in inc.events:
            if isinstance(e, DelivRec) and e.tag is not None:
                per_ring[e.ring_id].setdefault(_name(inc), []).append(e.tag)
    out = []
    for ring, seqs in per_ring.items():
        # Identical sequences agree trivially: compare one representative of each.
        distinct: dict[tuple[Tag, ...], str] = {}
        for name, s in seqs.items():
            distinct.setdefault(tuple(s), name)
        reps = list(distinct.items())
        for i in range(len(reps)):
            for j in range(i + 1, len(reps)):
                d = _first_disagreement(list(reps[i][0]), list(reps[j][0]))
                if d:
                    n1, n2 = reps[i][1], reps[j][1]
                    out.append(Violation(
                        "agreed-order", 0, (nodes_of[n1], nodes_of[n2]),
                        f"ring {ring}: {n1} delivers {d[0]} where {n2} delivers {d[1]}"))
    return out


def check_fifo(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        last: dict[int, int] = {}
        for e in inc.events:
            if isinstance(e, DelivRec) and e.tag is not None:
                prev = last.get(e.tag.sender)
                if prev is not None and e.tag.counter < prev:
                    out.append(Violation("fifo", e.time, (inc.node, e.tag.sender),
                                         f"{_name(inc)} delivered {e.tag} after "
                                         f"{e.tag.sender}#{prev}"))
                last[e.tag.sender] = e.tag.counter
    return out


def check_config_agreement(trace: Trace) -> list[Violation]:
    seen: dict = {}
    out = []
    for inc in trace.incarnations:
        for c in inc.regular_confchgs():
            first = seen.setdefault(c.ring_id, (c.members, inc))
            if first[0] != c.members:
                out.append(Violation("config-agreement", c.time, (first[1].node, inc.node),
                                     f"ring {c.ring_id}: {_name(first[1])} has members "
                                     f"{first[0]}, {_name(inc)} has {c.members}"))
    return out


def _epochs(inc: Incarnation):
    """Yield (ring, next_ring or None, regular-part tags, all tags, ConfRec)."""
    current: ConfRec | None = None
    regular_part: set[Tag] = set()
    every: set[Tag] = set()
    in_regular = False
    for e in inc.events:
        if isinstance(e, ConfRec):
            if e.kind == ConfChgKind.REGULAR:
                if current is not None:
                    yield current.ring_id, e.ring_id, regular_part, every, current
                current, regular_part, every, in_regular = e, set(), set(), True
            else:
                in_regular = False
        elif current is not None and e.tag is not None:
            every.add(e.tag)
            if in_regular and e.guarantee == Guarantee.SAFE:
                regular_part.add(e.tag)
    if current is not None:
        yield current.ring_id, None, regular_part, every, current


def check_virtual_synchrony(trace: Trace) -> list[Violation]:
    groups: dict = defaultdict(list)
    for inc in trace.incarnations:
        for ring, nxt, _safe, tags, conf in _epochs(inc):
            if nxt is None and not inc.alive_at_end:
                continue  # died in this epoch: no promise about what it delivered
            groups[(ring, nxt)].append((inc, frozenset(tags), conf))
    out = []
    for (ring, nxt), members in groups.items():
        ref_inc, ref, _ = members[0]
        for inc, tags, conf in members[1:]:
            if tags != ref:
                missing = sorted(ref - tags)[:5]
                extra = sorted(tags - ref)[:5]
                out.append(Violation(
                    "virtual-synchrony", conf.time, (ref_inc.node, inc.node),
                    f"{_name(ref_inc)} and {_name(inc)} moved together from ring {ring} to "
                    f"{nxt or 'the end of the run'} but delivered different sets: "
                    f"{_name(inc)} lacks {[str(t) for t in missing]} has extra "
                    f"{[str(t) for t in extra]}"))
    return out


def check_safe_no_loss(trace: Trace) -> list[Violation]:
    delivered: dict = defaultdict(dict)  # ring -> inc -> all tags of the epoch
    safe_regular: dict = defaultdict(set)  # ring -> SAFE tags delivered in regular part
    for inc in trace.incarnations:
        for ring, nxt, safe, tags, conf in _epochs(inc):
            safe_regular[ring] |= safe
            if nxt is not None or inc.alive_at_end:
                delivered[ring][_name(inc)] = (inc, tags)
    out = []
    for ring, safe in safe_regular.items():
        for name, (inc, tags) in delivered[ring].items():
            missing = safe - tags
            if missing:
                out.append(Violation("safe-no-loss", 0, (inc.node,),
                                     f"{name} survived ring {ring} without the SAFE "
                                     f"messages {[str(t) for t in sorted(missing)[:5]]}"
                                     " that another member delivered in it"))
    return out


def check_safe(trace: Trace) -> list[Violation]:
    # When did each node (any incarnation) first hold each SAFE packet?
    held: dict[int, dict] = defaultdict(dict)
    for inc in trace.incarnations:
        mine = held[inc.node]
        for key, idx in inc.has.items():
            if key not in mine or idx < mine[key]:
                mine[key] = idx
    out = []
    for inc in trace.incarnations:
        for rec in inc.safe:
            key = (rec.ring_id.rep, rec.ring_id.seq, rec.seq)
            lacking = [m for m in rec.members if held[m].get(key, rec.idx + 1) > rec.idx]
            if lacking:
                out.append(Violation("safe", rec.time, (inc.node, *lacking),
                                     f"{_name(inc)} delivered SAFE seq {rec.seq} of ring "
                                     f"{rec.ring_id} before members {lacking} held it"))
    return out


def check_self_delivery(trace: Trace) -> list[Violation]:
    delivered: dict[str, set[Tag]] = {}
    incs = {(i.node, i.number): i for i in trace.incarnations}
    for inc in trace.incarnations:
        delivered[_name(inc)] = {e.tag for e in inc.events if isinstance(e, DelivRec)}
    out = []
    for tag, s in trace.sent.items():
        inc = incs.get((s.node, s.incarnation))
        if inc is not None and inc.alive_at_end and tag not in delivered[_name(inc)]:
            out.append(Violation("self-delivery", s.time, (s.node,),
                                 f"{_name(inc)} never delivered its own message {tag}"))
    return out


def check_membership(trace: Trace) -> list[Violation]:
    if trace.heal_time is None or trace.bound is None:
        return []
    live = [i for i in trace.incarnations if i.alive_at_end]
    out = []
    finals = []
    for inc in live:
        regs = inc.regular_confchgs()
        if not regs:
            out.append(Violation("membership", trace.end_time, (inc.node,),
                                 f"{_name(inc)} never installed a configuration"))
            continue
        finals.append((inc, regs[-1]))
    deadline = trace.heal_time + trace.bound
    for inc, c in finals:
        if c.members != tuple(trace.nodes):
            out.append(Violation("membership", c.time, (inc.node,),
                                 f"{_name(inc)} ends in ring {c.ring_id} with members "
                                 f"{c.members}, expected all of {trace.nodes}"))
        elif c.time > deadline:
            out.append(Violation("convergence-time", c.time, (inc.node,),
                                 f"{_name(inc)} installed its final ring {c.ring_id} at "
                                 f"{c.time}, {c.time - trace.heal_time} ms after the heal "
                                 f"(bound {trace.bound} ms)"))
    rings = {c.ring_id for _, c in finals}
    if len(rings) > 1:
        out.append(Violation("membership", trace.end_time, tuple(i.node for i, _ in finals),
                             f"live nodes end in different rings: "
                             f"{sorted(str(r) for r in rings)}"))
    return out


def check_progress(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        if not inc.alive_at_end:
            continue
        got = {e.tag for e in inc.events if isinstance(e, DelivRec)}
        missing = [t for t in trace.probes if t not in got]
        if missing:
            out.append(Violation("progress", trace.end_time, (inc.node,),
                                 f"{_name(inc)} never delivered the post-heal probes "
                                 f"{[str(t) for t in missing[:6]]}"))
    return out


def check_srp_order(trace: Trace) -> list[Violation]:
    out = []
    for inc in trace.incarnations:
        last: dict[tuple[int, int], int] = {}
        for ev in inc.srp_events:
            if ev[0] != "d":
                continue
            ring = (ev[1], ev[2])
            prev = last.get(ring)
            if prev is not None and ev[3] <= prev:
                out.append(Violation("srp-order", 0, (inc.node,),
                                     f"{_name(inc)} delivered seq {ev[3]} of ring "
                                     f"{ev[1]:x}.{ev[2]:x} after seq {prev}"))
                break
            last[ring] = ev[3]
    return out


def check_srp_virtual_synchrony(trace: Trace) -> list[Violation]:
    groups: dict = defaultdict(list)
    for inc in trace.incarnations:
        current = None
        keys: set = set()
        for ev in inc.srp_events:
            if ev[0] == "c":
                if ev[1] == ConfChgKind.REGULAR:
                    if current is not None:
                        groups[(current, ev[2])].append((inc, frozenset(keys)))
                    current, keys = ev[2], set()
            elif current is not None:
                keys.add((ev[1], ev[2], ev[3]))
        if current is not None and inc.alive_at_end:
            groups[(current, None)].append((inc, frozenset(keys)))
    out = []
    for (ring, nxt), members in groups.items():
        ref_inc, ref = members[0]
        for inc, keys in members[1:]:
            if keys != ref:
                missing = sorted(ref - keys)[:4]
                extra = sorted(keys - ref)[:4]
                out.append(Violation(
                    "srp-virtual-synchrony", 0, (ref_inc.node, inc.node),
                    f"{_name(ref_inc)} and {_name(inc)} moved together from ring {ring} to "
                    f"{nxt or 'the end of the run'} but delivered different MCASTs: "
                    f"{_name(inc)} lacks {missing} has extra {extra} (ring rep, seq, msg seq)"))
    return out


CHECKERS = (check_integrity, check_duplicates, check_in_config, check_agreed_order,
            check_fifo, check_config_agreement, check_virtual_synchrony, check_safe,
            check_safe_no_loss, check_srp_order, check_srp_virtual_synchrony,
            check_self_delivery, check_membership, check_progress)


def check_all(trace: Trace) -> list[Violation]:
    """Run every checker; runtime errors recorded during the run come first."""
    out = [Violation("runtime", trace.end_time, (), e) for e in trace.runtime_errors]
    for checker in CHECKERS:
        out.extend(checker(trace))
    return out
