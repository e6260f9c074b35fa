"""Votequorum's quorum arithmetic and node database, pure (no I/O, no clock, no cmap).

The votequorum service (``services/votequorum.py``) owns one :class:`VoteQuorum` and feeds
it the totally ordered events every node sees identically: NODEINFO and RECONFIGURE exec
messages, sync start/activation, the last-man-standing timer.  Because every node applies
the same events in the same order, every node of a partition reaches the same decision —
that is what makes the arithmetic safe to keep local.

Rules carried over from corosync 3.1.7 (``exec/votequorum.c``, ``votequorum.5``):

* ``quorum = max((highest_expected + 2) // 2, (total_votes + 2) // 2)`` over MEMBER nodes
  (+ the quorum device's votes when this node's device casts a vote); quorum never
  decreases unless the event allows it (LEAVING nodes, setexpected, setvotes, LMS);
  ``two_node`` with at most two voting entities forces quorum to 1.
* ``wait_for_all``: after start-up a node is never quorate until it has seen all expected
  votes at once (or a quorate node without WFA status, or an explicit cancel).
* ``auto_tie_breaker``: an exact half split (total == expected // 2) is quorate on the side
  holding the lowest / highest node id, or the first listed node present (unless an
  earlier listed node was in the previous partition).
* ``last_man_standing``: when nodes left, a window timer starts; when it fires and we are
  still quorate, expected votes are recomputed from the current members (downscale).
* ``allow_downscale``/expected-votes tracking: expected votes never drop below the
  highest value seen (the *ev barrier*); LEAVING nodes lower quorum immediately.

Node state is corosync's (MEMBER 1, DEAD 2, LEAVING 3); NODEINFO flags are its
``NODE_FLAGS_*``; :meth:`VoteQuorum.info_flags` gives the ``VOTEQUORUM_INFO_*`` bits.
"""

from __future__ import annotations

import enum
from typing import Callable, Iterable, Mapping

from attrs import define, field, frozen
from attrs import evolve as attrs_evolve

QDEVICE_NODEID = 0


class NodeState(enum.IntEnum):
    #: never assigned: corosync's quorum-device node entry is zeroed at start and its state
    #: never set, so QUORUM notifications list the device (node 0) with state 0
    NONE = 0
    MEMBER = 1
    DEAD = 2
    LEAVING = 3


class NodeFlag(enum.IntFlag):
    """NODEINFO ``flags`` (spec/totem-wire.md §5.5)."""

    QUORATE = 1
    LEAVING = 2
    WFASTATUS = 4
    FIRST = 8
    QDEVICE_REGISTERED = 16
    QDEVICE_ALIVE = 32
    QDEVICE_CAST_VOTE = 64
    QDEVICE_MASTER_WINS = 128


class InfoFlag(enum.IntFlag):
    """GETINFO ``flags`` (spec/ipc-wire.md §4.4)."""

    TWONODE = 1
    QUORATE = 2
    WAIT_FOR_ALL = 4
    LAST_MAN_STANDING = 8
    AUTO_TIE_BREAKER = 16
    ALLOW_DOWNSCALE = 32
    QDEVICE_REGISTERED = 64
    QDEVICE_ALIVE = 128
    QDEVICE_CAST_VOTE = 256
    QDEVICE_MASTER_WINS = 512


class Atb(enum.IntEnum):
    """``runtime.votequorum.atb_type`` values."""

    NONE = 0
    LOWEST = 1
    HIGHEST = 2
    LIST = 3


class Reconfig(enum.IntEnum):
    """RECONFIGURE ``param``."""

    EXPECTED_VOTES = 1
    NODE_VOTES = 2
    CANCEL_WFA = 3


class ConfigError(Exception):
    """A configuration votequorum refuses to start with (corosync's wording)."""


@frozen
class VqConfig:
    """The votequorum-relevant configuration, already validated (see :func:`read_config`)."""

    votes: int = 1
    expected_votes: int = 1
    two_node: bool = False
    wait_for_all: bool = False
    last_man_standing: bool = False
    lms_window_ms: int = 10_000
    atb: Atb = Atb.NONE
    atb_nodes: tuple[int, ...] = ()
    allow_downscale: bool = False
    ev_tracking: bool = False
    qdevice_votes: int = 0
    #: corosync allows device registration unless a (runtime) config error disabled it,
    #: even without ``quorum.device``; ``have_qdevice`` says whether one is configured
    qdevice_can_operate: bool = True
    have_qdevice: bool = False
    #: True when wait_for_all was not set explicitly (then it follows two_node).
    wfa_autoset: bool = True
    warnings: tuple[str, ...] = ()


def parse_atb_nodes(text: str) -> tuple[Atb, tuple[int, ...]]:
    """``quorum.auto_tie_breaker_node``: ``lowest``, ``highest`` or node ids (whitespace)."""
    text = text.strip()
    if text == "lowest":
        return Atb.LOWEST, ()
    if text == "highest":
        return Atb.HIGHEST, ()
    ids: list[int] = []
    for word in text.split():
        if not word.isdigit() or int(word) == 0:
            break  # corosync stops at the first non-number / zero
        ids.append(int(word))
    return (Atb.LIST, tuple(ids)) if ids else (Atb.NONE, ())


def read_config(get: Callable[[str], object | None], nodelist: Iterable[Mapping[str, object]],
                local_pos: int | None) -> VqConfig:
    """Derive the votequorum configuration from config keys, as corosync does at start-up.

    ``get(key)`` returns a ``quorum.*`` value or None; ``nodelist`` gives each node's keys
    (``quorum_votes`` optional); ``local_pos`` is our index in it (None: not in a
    nodelist).  Raises :class:`ConfigError` with corosync's message for refused
    combinations; softer problems end up in ``warnings``."""
    def u(key: str, default: int = 0) -> int:
        v = get(key)
        return default if v is None else int(v)  # type: ignore[call-overload]

    warnings: list[str] = []
    expected = u("quorum.expected_votes")
    nodes = list(nodelist)
    have_nodelist = local_pos is not None and nodes != []
    node_votes = 1
    node_expected = 0
    if have_nodelist:
        for i, node in enumerate(nodes):
            v = node.get("quorum_votes")
            v = 1 if v is None else int(v)  # type: ignore[call-overload]
            node_expected += v
            if i == local_pos:
                node_votes = v
    model = get("quorum.device.model")
    have_qdevice = bool(model)
    qdevice_votes = -1
    if have_qdevice and get("quorum.device.votes") is not None:
        qdevice_votes = u("quorum.device.votes")
    two_node = bool(u("quorum.two_node"))
    if not have_nodelist and not expected:
        raise ConfigError("configuration error: nodelist or quorum.expected_votes must be configured!")
    if two_node and have_qdevice:
        raise ConfigError("configuration error: two_node and quorum device cannot be configured at the same time!")
    allow_downscale = bool(u("quorum.allow_downscale"))
    wfa_set = get("quorum.wait_for_all") is not None
    wait_for_all = bool(u("quorum.wait_for_all"))
    lms = bool(u("quorum.last_man_standing"))
    lms_window = u("quorum.last_man_standing_window", 10_000)
    ev_tracking = bool(u("quorum.expected_votes_tracking")) or allow_downscale
    atb, atb_nodes = Atb.NONE, ()
    atb_text = get("quorum.auto_tie_breaker_node")
    if u("quorum.auto_tie_breaker"):
        atb = Atb.LOWEST
        if atb_text is not None:
            atb, atb_nodes = parse_atb_nodes(str(atb_text))
            if atb == Atb.NONE:
                warnings.append("auto_tie_breaker_nodes is not valid. It must be 'lowest', "
                                "'highest' or a space-separated list of node IDs. "
                                "auto_tie_breaker is disabled")
    elif atb_text is not None:
        warnings.append("auto_tie_breaker_node: is meaningless if auto_tie_breaker is set to 0")
    if not wfa_set:
        wait_for_all = two_node
    if two_node and atb != Atb.NONE:
        warnings.append("two_node and auto_tie_breaker are both specified but are not compatible.")
        two_node = False
    if atb != Atb.NONE and node_expected % 2 and not wait_for_all:
        if lms:
            raise ConfigError("configuration error: auto_tie_breaker & last_man_standing not "
                              "available in odd sized cluster")
        warnings.append("auto_tie_breaker is set and the cluster has an odd number of nodes. "
                        "wait_for_all needs to be set; auto_tie_breaker has been disabled")
        atb, atb_nodes = Atb.NONE, ()
    if have_qdevice and lms:
        raise ConfigError("configuration error: quorum.device is not compatible with last_man_standing")
    if have_qdevice and atb != Atb.NONE:
        raise ConfigError("configuration error: quorum.device is not compatible with auto_tie_breaker")
    if have_qdevice and allow_downscale:
        raise ConfigError("configuration error: quorum.device is not compatible with allow_downscale")
    if expected and have_qdevice and qdevice_votes == -1:
        raise ConfigError("configuration error: quorum.device.votes must be specified when "
                          "quorum.expected_votes is set")
    node_count = len(nodes) if have_nodelist else 0
    if have_qdevice and qdevice_votes == -1 and have_nodelist and node_count != node_expected:
        raise ConfigError("configuration error: quorum.device.votes must be specified when "
                          "not all nodes votes 1")
    if qdevice_votes > 0 and expected and expected - qdevice_votes < 2:
        raise ConfigError("configuration error: quorum.device.votes is too high or "
                          "expected_votes is too low")
    if have_qdevice and qdevice_votes == -1 and not expected and have_nodelist:
        qdevice_votes = node_expected - 1
        node_expected += qdevice_votes
    if have_nodelist:
        votes, exp = node_votes, node_expected
    else:
        votes, exp = u("quorum.votes", 1), 0
    if expected:
        exp = expected
    return VqConfig(votes=votes, expected_votes=exp, two_node=two_node,
                    wait_for_all=wait_for_all, last_man_standing=lms, lms_window_ms=lms_window,
                    atb=atb, atb_nodes=atb_nodes, allow_downscale=allow_downscale,
                    ev_tracking=ev_tracking, qdevice_votes=max(qdevice_votes, 0),
                    have_qdevice=have_qdevice, wfa_autoset=not wfa_set,
                    warnings=tuple(warnings))


@define
class Node:
    """One entry of the node database (``struct cluster_node``)."""

    nodeid: int
    state: NodeState = NodeState.DEAD
    votes: int = 0
    expected_votes: int = 0
    flags: NodeFlag = NodeFlag(0)


@define
class Effects:
    """What an event changed that the service must act on (drained by the service)."""

    quorum_changed: bool = False
    expected_changed: bool = False
    send_nodeinfo: bool = False
    logs: list[str] = field(factory=list)

    def clear(self) -> None:
        self.quorum_changed = self.expected_changed = self.send_nodeinfo = False
        self.logs.clear()


class VoteQuorum:
    """The node database and quorum decision of one node (module docstring)."""

    def __init__(self, nodeid: int, config: VqConfig, *, ev_tracking_barrier: int = 0) -> None:
        self.nodeid = nodeid
        self.config = config
        self.two_node = config.two_node
        self.wait_for_all = config.wait_for_all
        self.last_man_standing = config.last_man_standing
        self.atb = config.atb
        self.qdevice = Node(QDEVICE_NODEID, NodeState.NONE, config.qdevice_votes)
        self.us = Node(nodeid, NodeState.MEMBER, config.votes, 0, NodeFlag.FIRST)
        self.nodes: dict[int, Node] = {nodeid: self.us}
        #: node ids in corosync's list order (see :meth:`listed_nodes`)
        self.order: list[int] = [nodeid]
        self.quorum = 0
        self.quorate = False
        self.wfa_status = False
        self.sync_in_progress = False
        self.quorum_members: tuple[int, ...] = ()
        self.previous_members: tuple[int, ...] = ()
        self.lowest_node_id = nodeid
        self.highest_node_id = nodeid
        self.ev_tracking_barrier = ev_tracking_barrier
        expected = ev_tracking_barrier if config.ev_tracking and ev_tracking_barrier else 0
        self.us.expected_votes = expected or config.expected_votes
        self.ev_barrier = self.us.expected_votes
        if self.wait_for_all:
            self._set_wfa(True)
        self.effects = Effects()
        self.recalculate(allow_decrease=False, by_current_nodes=False)

    # ------------------------------------------------------------------ helpers
    def _set_wfa(self, on: bool) -> None:
        self.wfa_status = on
        if on:
            self.us.flags |= NodeFlag.WFASTATUS
        else:
            self.us.flags &= ~NodeFlag.WFASTATUS

    def node(self, nodeid: int) -> Node | None:
        if nodeid == QDEVICE_NODEID:
            return self.qdevice
        return self.nodes.get(nodeid)

    def members(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.state == NodeState.MEMBER]

    def sorted_nodes(self) -> list[Node]:
        """All known nodes ascending by id."""
        return [self.nodes[k] for k in sorted(self.nodes)]

    def listed_nodes(self) -> list[Node]:
        """All known nodes in the order corosync's QUORUM notification lists them.

        corosync 3.1.7 means to keep its node list sorted, but a node whose id is above
        every listed one goes in *before the last entry* instead of after it (its ordered
        insert falls off the end of the scan holding the last node).  So the order depends
        on which NODEINFO arrived first: node 1 that learnt of 2 then 3 lists 2, 3, 1
        (Debian's lms capture).  A quorum device forwards this list to qnetd, so we keep
        the same order to be indistinguishable."""
        return [self.nodes[k] for k in self.order]

    def _list_insert(self, nodeid: int) -> None:
        """Insert a newly known node id into :attr:`order` with corosync's rule."""
        order = self.order
        for i, other in enumerate(order):
            if nodeid < other:
                order.insert(i, nodeid)
                return
        order.insert(max(len(order) - 1, 0), nodeid)

    def qdevice_counts(self) -> bool:
        return bool(self.us.flags & NodeFlag.QDEVICE_CAST_VOTE)

    def totals(self) -> tuple[int, int]:
        """(highest_expected, total_votes) over MEMBER nodes, as GETINFO reports them."""
        highest = max((n.expected_votes for n in self.members()), default=0)
        total = sum(n.votes for n in self.members())
        if self.qdevice_counts():
            total += self.qdevice.votes
        return highest, total

    def calculate_quorum(self, allow_decrease: bool, max_expected: int = 0) -> tuple[int, int]:
        """(new quorum, total votes) without changing anything."""
        if self.config.allow_downscale and allow_decrease and max_expected:
            max_expected = max(self.ev_barrier, max_expected)
        members = self.members()
        highest = max((n.expected_votes for n in members), default=0)
        total = sum(n.votes for n in members)
        voters = len(members)
        if self.qdevice_counts():
            total += self.qdevice.votes
            voters += 1
        if max_expected > 0:
            highest = max_expected
        new = max((highest + 2) // 2, (total + 2) // 2)
        if not allow_decrease:
            new = max(self.quorum, new)
        if self.two_node and voters <= 2:
            new = 1
        return new, total

    def _set_all_expected(self, expected: int) -> None:
        if expected:
            for n in self.members():
                n.expected_votes = expected

    def recalculate(self, allow_decrease: bool, by_current_nodes: bool) -> None:
        members = self.members()
        total = sum(n.votes for n in members)
        count = len(members)
        if self.qdevice.votes:
            total += self.qdevice.votes
            count += 1
        if not by_current_nodes:
            count = 0
        if total > self.us.expected_votes:
            self.us.expected_votes = total
            self.effects.expected_changed = True
        if self.config.ev_tracking and self.us.expected_votes > self.ev_tracking_barrier:
            self.ev_tracking_barrier = self.us.expected_votes
        self.quorum, total = self.calculate_quorum(allow_decrease, count)
        self._set_all_expected(count)
        self._decide(total)

    def _check_atb(self) -> bool:
        member_ids = {n.nodeid for n in self.members()}
        if self.atb == Atb.LOWEST:
            return self.lowest_node_id in member_ids
        if self.atb == Atb.HIGHEST:
            return self.highest_node_id in member_ids
        for i, candidate in enumerate(self.config.atb_nodes):
            if candidate in self.quorum_members:
                return not any(earlier in self.previous_members
                               for earlier in self.config.atb_nodes[:i])
        return False

    def _decide(self, total: int) -> None:
        if self.wait_for_all and self.wfa_status:
            if total != self.us.expected_votes:
                self.effects.logs.append(
                    f"Waiting for all cluster members. Current votes: {total} "
                    f"expected_votes: {self.us.expected_votes}")
                return
            self._set_wfa(False)
        quorate = self.quorum <= total
        if quorate:
            ids = [n.nodeid for n in self.members()] + [self.nodeid]
            self.lowest_node_id, self.highest_node_id = min(ids), max(ids)
        if (self.atb != Atb.NONE and total == self.us.expected_votes // 2
                and len(self.previous_members) - len(self.quorum_members) < self.quorum
                and self._check_atb()):
            quorate = True
        if not quorate and self._master_wins():
            quorate = True
        changed = quorate != self.quorate
        self.quorate = quorate
        if quorate:
            self.us.flags |= NodeFlag.QUORATE
        else:
            self.us.flags &= ~NodeFlag.QUORATE
        if self.wait_for_all:
            self._set_wfa(not quorate)
        if changed and not self.sync_in_progress:
            self.effects.quorum_changed = True

    def _master_wins(self) -> bool:
        return any(n.flags & NodeFlag.QDEVICE_MASTER_WINS and n.flags & NodeFlag.QDEVICE_CAST_VOTE
                   for n in self.members())

    # ------------------------------------------------------------------ events
    def on_nodeinfo(self, sender: int, nodeid: int, votes: int, expected: int,
                    flags: int) -> bool:
        """A NODEINFO exec message.  False (and nothing changed) when it must be dropped:
        a qdevice NODEINFO from a sender we know nothing about (a real node would abort)."""
        if nodeid == QDEVICE_NODEID:
            sender_node = self.nodes.get(sender)
            if sender_node is None:
                return False
            old_votes = self.qdevice.votes
            if not self.quorate and sender_node.flags & NodeFlag.QUORATE:
                self.qdevice.votes = votes
            else:
                self.qdevice.votes = max(self.qdevice.votes, votes)
            if old_votes != self.qdevice.votes:
                self.recalculate(False, False)
            return True
        node = self.nodes.get(nodeid)
        new = node is None
        if node is None:
            node = self.nodes[nodeid] = Node(nodeid)
            self._list_insert(nodeid)
        old = (node.votes, node.expected_votes, node.flags, node.state)
        node.flags = NodeFlag(flags)
        node.votes = votes
        node.state = NodeState.MEMBER
        allow_decrease = by_node = False
        if node.flags & NodeFlag.LEAVING:
            node.state = NodeState.LEAVING
            allow_decrease = by_node = True
        if not self.quorate and node.flags & NodeFlag.QUORATE:
            allow_decrease = True
            self.us.expected_votes = expected
        if node.flags & NodeFlag.QUORATE or self.config.ev_tracking:
            node.expected_votes = expected
        else:
            node.expected_votes = self.us.expected_votes
        if self.last_man_standing and node.votes > 1:
            self.effects.logs.append("Last Man Standing feature is supported only when all "
                                     "cluster nodes votes are set to 1. Disabling LMS.")
            self.last_man_standing = False
        if (new or nodeid == self.nodeid or node.flags & NodeFlag.FIRST
                or old != (node.votes, node.expected_votes, node.flags, node.state)):
            self.recalculate(allow_decrease, by_node)
        if (self.wait_for_all and not node.flags & NodeFlag.WFASTATUS
                and node.flags & NodeFlag.QUORATE):
            self._set_wfa(False)
        return True

    def on_reconfigure(self, param: int, nodeid: int, value: int) -> None:
        if param == Reconfig.EXPECTED_VOTES:
            self._set_all_expected(value)
            self.effects.expected_changed = True
            self.ev_barrier = value
            if self.config.ev_tracking:
                self.us.expected_votes = max(self.us.expected_votes, self.ev_tracking_barrier)
            self.recalculate(True, False)
        elif param == Reconfig.NODE_VOTES:
            node = self.nodes.get(nodeid)
            if node is None:
                return
            node.votes = value
            self.recalculate(True, False)
        elif param == Reconfig.CANCEL_WFA:
            self._set_wfa(False)
            self.effects.logs.append(f"wait_for_all_status reset by user on node {nodeid}.")
            self.recalculate(False, False)

    def sync_init(self, member_list: Iterable[int]) -> bool:
        """A new ring's sync starts.  Returns True when the last-man-standing window
        timer must be (re)started."""
        members = tuple(member_list)
        self.sync_in_progress = True
        if len(members) > 1:
            self.us.flags &= ~NodeFlag.FIRST
        left = False
        for nodeid in self.quorum_members:
            if nodeid not in members:
                left = True
                node = self.nodes.get(nodeid)
                if node is not None:
                    node.state = NodeState.DEAD
        start_lms = False
        if self.last_man_standing:
            low_here = any(n.nodeid == self.lowest_node_id for n in self.members())
            start_lms = ((len(members) >= self.quorum and left)
                         or (len(members) <= self.quorum and self.atb != Atb.NONE and low_here))
        self.previous_members = self.quorum_members
        self.quorum_members = members
        return start_lms

    def sync_activate(self) -> None:
        self.recalculate(False, False)
        self.sync_in_progress = False

    def lms_expired(self) -> None:
        """The last-man-standing window elapsed: downscale to the current members."""
        if self.quorate:
            self.recalculate(True, True)

    def apply_runtime_config(self, config: VqConfig) -> None:
        """A configuration re-read at runtime (cmap ``quorum.*``/``nodelist.*`` changed):
        corosync re-applies only two_node, this node's votes and expected votes and the
        device votes; wait_for_all follows two_node when it was not set explicitly."""
        self.config = attrs_evolve(self.config, two_node=config.two_node, votes=config.votes,
                                   expected_votes=config.expected_votes,
                                   qdevice_votes=config.qdevice_votes)
        self.two_node = config.two_node
        self.us.votes = config.votes
        expected = config.expected_votes
        if self.config.ev_tracking and self.ev_tracking_barrier:
            expected = max(expected, self.ev_tracking_barrier)
        self.us.expected_votes = expected
        self.qdevice.votes = config.qdevice_votes
        self.ev_barrier = self.us.expected_votes
        if self.config.wfa_autoset:
            self.wait_for_all = config.two_node
            if not self.wait_for_all and self.wfa_status:
                self._set_wfa(False)

    def leaving(self) -> None:
        """This node shuts down with allow_downscale: its NODEINFO will carry LEAVING."""
        self.us.flags |= NodeFlag.LEAVING

    # ------------------------------------------------------------------ admin checks
    def check_setexpected(self, expected: int) -> bool:
        """Whether ``corosync-quorumtool -e`` may set this value (corosync's rule)."""
        saved = self.config
        if saved.allow_downscale:
            # corosync validates as if downscale were off
            self.config = _replace_downscale(saved)
        try:
            newquorum, total = self.calculate_quorum(True, expected)
        finally:
            self.config = saved
        return not (expected < total or (self.quorate and newquorum > total))

    def check_setvotes(self, nodeid: int, votes: int) -> bool | None:
        """None: unknown node; else whether the new votes keep quorum in [total/2, total]."""
        node = self.node(nodeid)
        if node is None:
            return None
        saved = node.votes
        node.votes = votes
        try:
            newquorum, total = self.calculate_quorum(True, 0)
        finally:
            node.votes = saved
        return total // 2 <= newquorum <= total

    def info_flags(self, node: Node) -> InfoFlag:
        f = InfoFlag(0)
        if self.two_node:
            f |= InfoFlag.TWONODE
        if self.quorate:
            f |= InfoFlag.QUORATE
        if self.wait_for_all:
            f |= InfoFlag.WAIT_FOR_ALL
        if self.last_man_standing:
            f |= InfoFlag.LAST_MAN_STANDING
        if self.atb != Atb.NONE:
            f |= InfoFlag.AUTO_TIE_BREAKER
        if self.config.allow_downscale:
            f |= InfoFlag.ALLOW_DOWNSCALE
        for nf, inf in ((NodeFlag.QDEVICE_REGISTERED, InfoFlag.QDEVICE_REGISTERED),
                        (NodeFlag.QDEVICE_ALIVE, InfoFlag.QDEVICE_ALIVE),
                        (NodeFlag.QDEVICE_CAST_VOTE, InfoFlag.QDEVICE_CAST_VOTE),
                        (NodeFlag.QDEVICE_MASTER_WINS, InfoFlag.QDEVICE_MASTER_WINS)):
            if node.flags & nf:
                f |= inf
        return f


def _replace_downscale(cfg: VqConfig) -> VqConfig:
    return attrs_evolve(cfg, allow_downscale=False)
