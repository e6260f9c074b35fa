"""Per-client and per-cluster state of the qnetd server (spec §11).

Plain data: the server core (:mod:`.server`) mutates it, the algorithms (:mod:`.algorithms`)
read it and keep their own fields in it, the IPC formatter (:mod:`.ipc`) prints it.
"""

from __future__ import annotations

import enum
from typing import Optional

import attrs

from .protocol import Heuristics, NodeInfo, RingId, TieBreaker, Vote

#: Heartbeat interval assumed before INIT (compiled into the stock server, not a setting).
PRE_INIT_HEARTBEAT_MS = 120000


class FfsplitClientState(enum.Enum):
    WAITING = 0
    WILL_GET_NACK = 1
    WILL_GET_ACK = 2


class FfsplitClusterState(enum.Enum):
    WAITING_FOR_CHANGE = 0
    WAITING_FOR_STABLE_MEMBERSHIP = 1
    SENDING_NACKS = 2
    SENDING_ACKS = 3


@attrs.define(eq=False)
class Client:
    conn_id: int
    addr: str
    cluster_name: Optional[bytes] = None
    preinit_received: bool = False
    initialised: bool = False
    tls_started: bool = False
    tls_peer_verified: bool = False  # a client certificate was checked (tool: "verified")
    cert_name_checked: bool = False
    peer_cert_names: Optional[list[str]] = None
    node_id: int = 0
    algorithm: int = 0
    tie_breaker: TieBreaker = attrs.field(factory=TieBreaker)
    heartbeat_ms: int = PRE_INIT_HEARTBEAT_MS
    kap: bool = False
    config_received: bool = False
    config_list: list[NodeInfo] = attrs.field(factory=list)
    config_version: Optional[int] = None
    membership_received: bool = False
    membership: list[NodeInfo] = attrs.field(factory=list)
    ring_id: RingId = attrs.field(factory=RingId)
    quorum_list: list[NodeInfo] = attrs.field(factory=list)
    quorate: int = 0
    heur_membership: int = Heuristics.UNDEFINED
    heur_regular: int = Heuristics.UNDEFINED
    heur_latest: int = Heuristics.UNDEFINED
    last_sent_vote: int = Vote.UNDEFINED
    last_sent_ack_nack: int = Vote.UNDEFINED
    cluster: Optional["Cluster"] = None
    # algorithm data
    ffsplit_state: FfsplitClientState = FfsplitClientState.WAITING
    ffsplit_vote_seq: int = 0
    lms_last_result: int = Vote.UNDEFINED
    algo_timer_vote_seq: int = 0
    # timers (absolute deadlines in seconds of the driver's clock)
    dpd_deadline: Optional[float] = None
    algo_deadline: Optional[float] = None

    def config_ids(self) -> list[int]:
        return [n.node_id for n in self.config_list]

    def membership_ids(self) -> list[int]:
        return [n.node_id for n in self.membership]


@attrs.define(eq=False)
class Cluster:
    name: bytes
    clients: list[Client] = attrs.field(factory=list)  # ascending node id
    ffsplit_state: FfsplitClusterState = FfsplitClusterState.WAITING_FOR_CHANGE
    ffsplit_prev_quorate: list[int] = attrs.field(factory=list)

    def add(self, client: Client) -> None:
        """Insert keeping ascending node-id order (equal ids: after the existing ones)."""
        pos = len(self.clients)
        for i, other in enumerate(self.clients):
            if other.node_id > client.node_id:
                pos = i
                break
        self.clients.insert(pos, client)

    def by_node_id(self, node_id: int) -> Optional[Client]:
        for c in self.clients:
            if c.node_id == node_id:
                return c
        return None

    def connected_ids(self) -> set[int]:
        return {c.node_id for c in self.clients}
