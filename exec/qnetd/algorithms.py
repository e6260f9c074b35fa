"""Server-side decision algorithms of corosync-qnetd 3.0.3: test, ffsplit, 2nodelms, lms.

Each algorithm answers the same hooks (spec §7.1).  A hook returns the vote for the
direct reply or raises :class:`AlgoError` (the server then sends SERVER_ERROR and stores
nothing).  Hooks may send VOTE_INFO to any client of the cluster and arm the client's
algorithm timer through the :class:`AlgoContext` the server passes in.

The rules are the stock ones, including their quirks (they decide what a stock qdevice
sees, and differential tests against Debian depend on them): hooks run *before* the
server stores the new list, so ``client.membership`` / ``client.ring_id`` are the previous
values while a membership list is processed; the ffsplit NACK-before-ACK ordering and its
race; the lms tie-breaker oddities.  One deliberate difference: an empty configuration
list never crashes the ffsplit tie-breaker (the stock server segfaults, spec §7.2).
"""

from __future__ import annotations

from typing import Optional, Protocol

import attrs

from .model import Client, Cluster, FfsplitClientState as FCS, FfsplitClusterState as FCL
from .protocol import Algorithm, Err, Heuristics, NodeInfo, NodeListType, RingId, TieBreakerMode, Vote


class AlgoError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class AlgoContext(Protocol):
    def send_vote_info(self, client: Client, seq: int, vote: int, ring: RingId) -> None: ...

    def start_algo_timer(self, client: Client, ms: int) -> None: ...

    def stop_algo_timer(self, client: Client) -> None: ...


def _ids(nodes: list[NodeInfo]) -> list[int]:
    return [n.node_id for n in nodes]


# ============================================================================ test (0)

class TestAlgorithm:
    """Votes ACK for everybody (it can make several partitions quorate)."""

    def init(self, ctx: AlgoContext, c: Client) -> None:
        pass

    def config_list(self, ctx, c, list_type, nodes) -> int:
        return Vote.NO_CHANGE

    def membership_list(self, ctx, c, ring, nodes, heur) -> int:
        return Vote.ACK

    def quorum_list(self, ctx, c, quorate, nodes) -> int:
        return Vote.NO_CHANGE

    def ask_for_vote(self, ctx, c) -> int:
        return Vote.ACK

    def vote_info_reply(self, ctx, c, seq) -> None:
        pass

    def heuristics_change(self, ctx, c, heur) -> int:
        return Vote.NO_CHANGE

    def disconnect(self, ctx, c, server_going_down: bool) -> None:
        pass

    def timer(self, ctx, c) -> None:
        pass


# ============================================================================ ffsplit (1)

@attrs.frozen
class _View:
    """What one client believes: for the client being processed, the new values."""

    client: Client
    config: list[int]
    membership: list[int]
    ring: RingId
    heur: int


class FfsplitAlgorithm(TestAlgorithm):
    """Fifty-fifty split: the partition with more than half of the configured nodes wins;
    an exact half is decided by heuristics, active nodes, the previous quorate partition
    (KAP) and finally the tie-breaker.  NACKs go out first, ACKs only once every NACKed
    client has acknowledged (so two partitions are never ACKed at the same time)."""

    def init(self, ctx, c):
        c.ffsplit_state = FCS.WAITING
        c.ffsplit_vote_seq = 0

    def config_list(self, ctx, c, list_type, nodes):
        if not nodes or c.node_id not in _ids(nodes):
            raise AlgoError(Err.INVALID_CONFIG_NODE_LIST)
        if list_type == NodeListType.INITIAL_CONFIG or not c.membership_received:
            return Vote.ASK_LATER
        return self._decide(ctx, c, False, c.ring_id, _ids(nodes), c.membership_ids(), c.heur_latest)

    def membership_list(self, ctx, c, ring, nodes, heur):
        if not nodes or c.node_id not in _ids(nodes):
            raise AlgoError(Err.INVALID_MEMBERSHIP_NODE_LIST)
        if not c.config_received:
            return Vote.ASK_LATER
        return self._decide(ctx, c, False, ring, c.config_ids(), _ids(nodes), heur)

    def quorum_list(self, ctx, c, quorate, nodes):
        return Vote.NO_CHANGE

    def ask_for_vote(self, ctx, c):
        raise AlgoError(Err.UNSUPPORTED_DECISION_ALGORITHM_MESSAGE)

    def heuristics_change(self, ctx, c, heur):
        if not c.config_received or not c.membership_received:
            return Vote.ASK_LATER
        return self._decide(ctx, c, False, c.ring_id, c.config_ids(), c.membership_ids(), heur)

    def disconnect(self, ctx, c, server_going_down):
        if server_going_down or c.cluster is None:
            return
        self._decide(ctx, c, True, c.ring_id, c.config_ids(), c.membership_ids(), c.heur_latest)

    def vote_info_reply(self, ctx, c, seq):
        cl = c.cluster
        if cl is None or seq != c.ffsplit_vote_seq:
            return
        c.ffsplit_state = FCS.WAITING
        if cl.ffsplit_state == FCL.SENDING_NACKS and not any(
                x.ffsplit_state == FCS.WILL_GET_NACK for x in cl.clients):
            cl.ffsplit_state = FCL.SENDING_ACKS
            if self._send(ctx, cl, Vote.ACK, None, None, None) == 0:
                cl.ffsplit_state = FCL.WAITING_FOR_CHANGE
        if cl.ffsplit_state == FCL.SENDING_ACKS and not any(
                x.ffsplit_state == FCS.WILL_GET_ACK for x in cl.clients):
            cl.ffsplit_state = FCL.WAITING_FOR_CHANGE

    # -- decision ------------------------------------------------------------------

    def _views(self, cl: Cluster, c: Client, leaving: bool, ring: RingId, config: list[int],
               membership: list[int], heur: int) -> list[_View]:
        out = []
        for x in cl.clients:
            if x is c:
                if not leaving:
                    out.append(_View(x, config, membership, ring, heur))
            else:
                out.append(_View(x, x.config_ids(), x.membership_ids(), x.ring_id, x.heur_latest))
        return out

    @staticmethod
    def _stable(cl: Cluster, views: list[_View]) -> bool:
        for i, a in enumerate(views):
            for b in views[i + 1:]:
                if set(a.config) != set(b.config):
                    return False
        by_id = {v.client.node_id: v for v in views}
        for x in views:
            xm = set(x.membership)
            for nid in x.membership:
                y = by_id.get(nid)
                if y is None:
                    continue  # not connected, or the leaving client (excluded)
                if y.ring != x.ring or not xm.issubset(y.membership):
                    return False
        return True

    @staticmethod
    def _score(cl: Cluster, v: _View) -> tuple[int, int]:
        active = passed = failed = 0
        for nid in v.membership:
            y = cl.by_node_id(nid)
            if y is None:
                continue
            active += 1
            h = v.heur if y is v.client else y.heur_latest
            if h == Heuristics.PASS:
                passed += 1
            elif h == Heuristics.FAIL:
                failed += 1
        return active + passed - failed, active

    def _better(self, cl: Cluster, a: _View, b: Optional[_View], kap: bool) -> bool:
        half = len(a.config) // 2
        if len(a.config) % 2:
            return len(a.membership) > half
        if len(a.membership) > half:
            return True
        if len(a.membership) < half:
            return False
        score_a, active_a = self._score(cl, a)
        score_b, active_b = self._score(cl, b) if b is not None else (0, 0)
        if score_a != score_b:
            return score_a > score_b
        if active_a != active_b:
            return active_a > active_b
        if kap and b is not None:
            a_in = a.client.node_id in cl.ffsplit_prev_quorate
            b_in = b.client.node_id in cl.ffsplit_prev_quorate
            if a_in and not b_in:
                return True
            if b_in and not a_in:
                return False
        tb = a.client.tie_breaker
        if tb.mode == TieBreakerMode.NODE_ID:
            preferred = tb.node_id
        elif not a.config:
            return False  # stock 3.0.3 crashes here; no preferred node instead
        elif tb.mode == TieBreakerMode.LOWEST:
            preferred = min(a.config)
        else:
            preferred = max(a.config)
        return preferred in a.membership

    def _decide(self, ctx, c: Client, leaving: bool, ring: RingId, config: list[int],
                membership: list[int], heur: int) -> int:
        cl = c.cluster
        assert cl is not None
        cl.ffsplit_state = FCL.WAITING_FOR_STABLE_MEMBERSHIP
        views = self._views(cl, c, leaving, ring, config, membership, heur)
        if not self._stable(cl, views):
            return Vote.WAIT_FOR_REPLY
        kap = all(x.kap for x in cl.clients)
        best: Optional[_View] = None
        for v in views:
            if self._better(cl, v, best, kap):
                best = v
        winner = list(best.membership) if best is not None else []
        cl.ffsplit_prev_quorate = winner
        for x in cl.clients:
            if leaving and x is c:
                x.ffsplit_state = FCS.WAITING
            else:
                x.ffsplit_state = FCS.WILL_GET_ACK if x.node_id in winner else FCS.WILL_GET_NACK
        excluded = c if leaving else None
        cl.ffsplit_state = FCL.SENDING_NACKS
        if self._send(ctx, cl, Vote.NACK, excluded, c, ring) == 0:
            cl.ffsplit_state = FCL.SENDING_ACKS
            if self._send(ctx, cl, Vote.ACK, excluded, c, ring) == 0:
                cl.ffsplit_state = FCL.WAITING_FOR_CHANGE
        return Vote.NO_CHANGE

    @staticmethod
    def _send(ctx, cl: Cluster, vote: int, excluded: Optional[Client], current: Optional[Client],
              ring: Optional[RingId]) -> int:
        wanted = FCS.WILL_GET_NACK if vote == Vote.NACK else FCS.WILL_GET_ACK
        sent = 0
        for x in list(cl.clients):
            if x is excluded or x.ffsplit_state != wanted:
                continue
            x.ffsplit_vote_seq += 1
            r = ring if (x is current and ring is not None) else x.ring_id
            ctx.send_vote_info(x, x.ffsplit_vote_seq, vote, r)
            sent += 1
        return sent


# ============================================================================ 2nodelms (2)

_HEUR_RANK = {Heuristics.FAIL: 0, Heuristics.UNDEFINED: 1, Heuristics.PASS: 2}


def _newcomer_must_not_steal(c: Client, ring: RingId) -> bool:
    """A client that never voted must not take the vote from an ACKed partition."""
    if c.lms_last_result != Vote.UNDEFINED or c.cluster is None:
        return False
    return any(o.ring_id != ring and o.lms_last_result == Vote.ACK for o in c.cluster.clients)


class TwoNodeLmsAlgorithm(TestAlgorithm):
    def init(self, ctx, c):
        c.lms_last_result = Vote.UNDEFINED

    def config_list(self, ctx, c, list_type, nodes):
        if len(nodes) != 2:
            raise AlgoError(Err.UNSUPPORTED_DECISION_ALGORITHM)
        return Vote.NO_CHANGE

    def membership_list(self, ctx, c, ring, nodes, heur):
        if _newcomer_must_not_steal(c, ring):
            return Vote.NACK
        c.lms_last_result = self._result(c, nodes, heur)
        return c.lms_last_result

    @staticmethod
    def _result(c: Client, nodes: list[NodeInfo], heur: int) -> int:
        if len(nodes) == 2:
            return Vote.ACK
        cl = c.cluster
        assert cl is not None
        if len(cl.clients) == 1:
            return Vote.ACK
        ids = [x.node_id for x in cl.clients]
        others = [x for x in cl.clients if x is not c]
        other_heur = others[-1].heur_latest if others else Heuristics.UNDEFINED
        mine, theirs = _HEUR_RANK[heur], _HEUR_RANK[other_heur]
        if mine != theirs:
            return Vote.ACK if mine > theirs else Vote.NACK
        tb = c.tie_breaker
        if tb.mode == TieBreakerMode.LOWEST:
            chosen = min(ids)
        elif tb.mode == TieBreakerMode.HIGHEST:
            chosen = max(ids)
        else:
            chosen = tb.node_id
        return Vote.ACK if c.node_id == chosen else Vote.NACK

    def quorum_list(self, ctx, c, quorate, nodes):
        return Vote.NO_CHANGE

    def ask_for_vote(self, ctx, c):
        return c.lms_last_result or Vote.ASK_LATER

    def heuristics_change(self, ctx, c, heur):
        return Vote.NO_CHANGE


# ============================================================================ lms (3)

@attrs.define
class _Group:
    ring: RingId
    nodes: int = 0
    score: int = 0


class LmsAlgorithm(TestAlgorithm):
    """Last man standing: the partition with the best score (clients + heuristics), then
    the most clients, then the tie-breaker gets ACK.  While a peer of our partition still
    reports another ring, answer WAIT_FOR_REPLY and re-run from a timer (heartbeat / 4)."""

    def init(self, ctx, c):
        c.lms_last_result = Vote.UNDEFINED
        c.algo_timer_vote_seq = 0

    def config_list(self, ctx, c, list_type, nodes):
        return Vote.NO_CHANGE

    def membership_list(self, ctx, c, ring, nodes, heur):
        return self._run(ctx, c, ring)

    def quorum_list(self, ctx, c, quorate, nodes):
        return self._run(ctx, c, c.ring_id)

    def ask_for_vote(self, ctx, c):
        return self._run(ctx, c, c.ring_id)

    def heuristics_change(self, ctx, c, heur):
        return Vote.NO_CHANGE

    def timer(self, ctx, c):
        vote = self._run(ctx, c, c.ring_id)
        if vote in (Vote.ACK, Vote.NACK):
            c.algo_timer_vote_seq += 1
            ctx.send_vote_info(c, c.algo_timer_vote_seq, vote, c.ring_id)

    def _wait(self, ctx, c: Client) -> int:
        ctx.start_algo_timer(c, c.heartbeat_ms // 4)
        c.lms_last_result = Vote.WAIT_FOR_REPLY
        return Vote.WAIT_FOR_REPLY

    def _store(self, c: Client, vote: int) -> int:
        c.lms_last_result = vote
        return vote

    def _run(self, ctx, c: Client, ring: RingId) -> int:
        ctx.stop_algo_timer(c)
        cl = c.cluster
        assert cl is not None
        mine = set(c.membership_ids())
        for o in cl.clients:
            if o is c:
                continue
            in_partition = o.node_id in mine or c.node_id in o.membership_ids()
            if in_partition and o.ring_id != ring:
                return self._wait(ctx, c)
        groups: list[_Group] = []
        for o in cl.clients:
            if o.ring_id.seq == 0:
                continue
            g = next((g for g in groups if g.ring == o.ring_id), None)
            if g is None:
                g = _Group(o.ring_id)
                groups.append(g)
            g.nodes += 1
            g.score += 1 + (1 if o.heur_latest == Heuristics.PASS else 0) \
                - (1 if o.heur_latest == Heuristics.FAIL else 0)
        if not groups:
            return self._wait(ctx, c)
        if len(groups) == 1:
            return self._store(c, Vote.ACK)
        if _newcomer_must_not_steal(c, ring):
            return Vote.NACK
        for key in (lambda g: g.score, lambda g: g.nodes):
            best_val = max(key(g) for g in groups)
            best = [g for g in groups if key(g) == best_val]
            if len(best) == 1:
                return self._store(c, Vote.ACK if best[0].ring == ring else Vote.NACK)
        tb = c.tie_breaker
        chosen_id = 0
        chosen_ring = RingId(0, 0)
        if tb.mode == TieBreakerMode.LOWEST:
            chosen_id = 0x7FFFFFFF
            for o in cl.clients:
                if o.node_id < chosen_id:
                    chosen_id, chosen_ring = o.node_id, o.ring_id
        elif tb.mode == TieBreakerMode.HIGHEST:
            for o in cl.clients:
                if o.node_id > chosen_id:
                    chosen_id, chosen_ring = o.node_id, o.ring_id
        else:
            chosen_id = tb.node_id
            if chosen_id == c.node_id:
                chosen_ring = cl.clients[-1].ring_id
        vote = Vote.ACK if (c.node_id == chosen_id or chosen_ring == ring) else Vote.NACK
        return self._store(c, vote)


ALGORITHMS: dict[int, TestAlgorithm] = {
    Algorithm.TEST: TestAlgorithm(),
    Algorithm.FFSPLIT: FfsplitAlgorithm(),
    Algorithm.TWO_NODE_LMS: TwoNodeLmsAlgorithm(),
    Algorithm.LMS: LmsAlgorithm(),
}
