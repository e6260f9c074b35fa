"""Local text IPC of corosync-qdevice and its status text (what corosync-qdevice-tool prints).

Same line protocol as corosync-qnetd's (spec §8.1, lexer reused): one request per connection,
``status [verbose]`` or ``shutdown``, answered with ``OK\\n`` + text or ``Error\\n`` + message.
The status text reproduces the stock 3.0.3 layout byte for byte (TAB alignment included);
timestamps are local time like the stock daemon's ``localtime_r``.
"""

from __future__ import annotations

import time
from typing import Callable

from corosync.exec.qnetd.ipc import lex_words
from corosync.exec.qnetd.protocol import (ALGORITHM_TEXT, HEURISTICS_TEXT, TLS_SUPPORTED_TEXT,
                                          Algorithm, Vote)

from .core import HEURISTICS_MODE_TEXT, HEURISTICS_OFF, QdeviceNet, State

_VQ_STATE = {1: "member", 2: "dead", 3: "leaving"}


def _stamp(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(wall))


def _kap_text(q: QdeviceNet) -> str:
    algo = q.cfg.algorithm
    if algo == Algorithm.TEST:
        return "Unsupported by algorithm"
    if algo in (Algorithm.LMS, Algorithm.TWO_NODE_LMS):
        return "Algorithm hard-coded"
    if not q.cfg.keep_active_partition_tie_breaker:
        return "Disabled"
    if q.state != State.CONNECTED or q.server_supports_kap:
        return "Enabled"
    return "Unsupported by QNetd"


def _state_text(q: QdeviceNet) -> str:
    if q.state == State.CONNECTED:
        return "Connected"
    if q.state == State.WAITING_RECONNECT and q.disconnect_reason is not None \
            and q.disconnect_reason.name.startswith("CONNECT"):
        return "Connect failed"
    if q.state in (State.EXITED, State.WAITING_RECONNECT):
        return "Disconnected"
    return "Connecting"


def format_status(q: QdeviceNet, verbose: bool, wall: Callable[[float], float]) -> str:
    """``wall(monotonic) -> epoch seconds`` converts the core's clock for timestamps."""
    c = q.cfg
    out = ["Qdevice information\n", "-------------------\n", "Model:\t\t\tNet\n",
           f"Node ID:\t\t{c.node_id}\n"]
    if verbose:
        out.append(f"HB interval:\t\t{c.timeout_ms}ms\n")
        out.append(f"Sync HB interval:\t{c.sync_timeout_ms}ms\n")
    if c.config_version is not None:
        out.append(f"Configuration version:\t{c.config_version}\n")
    out.append("Configured node list:\n")
    for i, n in enumerate(c.config_nodes):
        dc = f", Data center ID = {n.data_center_id}" if n.data_center_id else ""
        out.append(f"    {i}\tNode ID = {n.node_id}{dc}\n")
    if verbose:
        out.append(f"Heuristics:\t\t{HEURISTICS_MODE_TEXT[c.heuristics_mode]}\n")
        rid = q.vq_ring_id
        out.append(f"Ring ID:\t\t{rid if rid is not None else '0.0'}\n")
    out.append("Membership node list:\t" + ", ".join(str(n) for n in q.vq_nodes) + "\n")
    if verbose:
        out.append(f"Quorate:\t\t{'Yes' if q.vq_quorate else 'No'}\n")
        out.append("Quorum node list:\n")
        for i, (nid, st) in enumerate(q.vq_quorum_nodes):
            if nid == 0:
                continue
            out.append(f"    {i}\tNode ID = {nid}, State = {_VQ_STATE.get(st, 'unknown')}\n")
        out.append(f"Expected votes:\t\t{q.expected_votes}\n")
        if q.last_poll is None:
            out.append("Last poll call:\t\tNever\n")
        else:
            t, cast = q.last_poll
            out.append(f"Last poll call:\t\t{_stamp(wall(t))}{' (cast vote)' if cast else ''}\n")
    out.append("\n")
    out += ["Qdevice-net information\n", "----------------------\n",
            f"Cluster name:\t\t{c.cluster_name.decode('utf-8', 'replace')}\n",
            f"QNetd host:\t\t{c.host}:{c.port}\n"]
    if verbose and c.force_ip_version:
        out.append(f"Force IP version:\t{c.force_ip_version}\n")
    if verbose:
        out.append(f"Connect timeout:\t{c.connect_ms}ms\n")
        out.append(f"HB interval:\t\t{c.heartbeat_ms}ms\n")
        out.append(f"VQ vote timer interval:\t{c.cast_vote_interval_ms}ms\n")
        out.append(f"TLS:\t\t\t{TLS_SUPPORTED_TEXT[c.tls]}\n")
    out.append(f"Algorithm:\t\t{ALGORITHM_TEXT[c.algorithm]}\n")
    out.append(f"Tie-breaker:\t\t{c.tie_breaker.text()}\n")
    if verbose:
        out.append(f"KAP Tie-breaker:\t{_kap_text(q)}\n")
        running = q.vote_timer_due is not None
        cast = " (cast vote)" if running and q.vote == Vote.ACK else ""
        out.append(f"Poll timer running:\t{'Yes' if running else 'No'}{cast}\n")
    out.append(f"State:\t\t\t{_state_text(q)}\n")
    if c.heuristics_mode != HEURISTICS_OFF:
        out.append(f"Heuristics result:\t{HEURISTICS_TEXT[q.latest_heuristics]}")
        if verbose:
            out.append(f" (regular: {HEURISTICS_TEXT[q.latest_regular_heuristics]}, "
                       f"membership: {HEURISTICS_TEXT[q.latest_vq_heuristics]}, "
                       f"connect: {HEURISTICS_TEXT[q.latest_connect_heuristics]})")
        out.append("\n")
    if verbose and q.state == State.CONNECTED:
        out.append(f"TLS active:\t\t{'Yes' if q.tls_active else 'No'}"
                   f"{' (client certificate sent)' if q.tls_active and q.tls_cert_sent else ''}\n")
        if q.connected_since is not None:
            out.append(f"Connected since:\t{_stamp(wall(q.connected_since))}\n")
        if q.last_echo_reply is not None:
            out.append(f"Echo reply received:\t{_stamp(wall(q.last_echo_reply))}\n")
    return "".join(out)


def handle_request(data: bytes, q: QdeviceNet, wall: Callable[[float], float]
                   ) -> tuple[bytes, bool]:
    """Reply bytes and whether the daemon must shut down after sending them."""
    words = lex_words(data)
    if not words:
        return b"Error\nNo command specified\n", False
    cmd = words[0].lower()
    if cmd == b"shutdown":
        return b"OK\n", True
    if cmd == b"status":
        verbose = len(words) > 1 and words[1].lower() == b"verbose"
        return b"OK\n" + format_status(q, verbose, wall).encode(), False
    return b"Error\nUnknown command '" + words[0] + b"'\n", False


def parse_tool_reply(data: bytes) -> tuple[bool, bytes]:
    """(ok, text) of a reply; a reply that is neither OK nor Error counts as an error."""
    if data.startswith(b"OK\n"):
        return True, data[3:]
    if data.startswith(b"Error\n"):
        return False, data[6:]
    return False, b"Unexpected reply\n"
