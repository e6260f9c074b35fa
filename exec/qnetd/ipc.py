"""Local text IPC of corosync-qnetd (spec §8): request lexer, commands, exact output texts.

One request per connection: a line of shell-like words (``status [verbose]``,
``list [verbose] [cluster NAME]``, ``shutdown``), answered with ``OK\\n`` + text or
``Error\\n`` + message, then the server closes.  Output is built as bytes because cluster
names are arbitrary bytes and are printed as received.
"""

from __future__ import annotations

from typing import Optional

import attrs

from .model import Client
from .protocol import (ALGORITHM_TEXT, HEURISTICS_TEXT, TLS_SUPPORTED_TEXT, VOTE_TEXT,
                       Algorithm, NodeInfo, TlsSupported, Vote)
from .server import QnetdServer

_BLANKS = b" \t\f\v"


def lex_words(data: bytes) -> list[bytes]:
    """Split the first line into words: blanks separate, ``"..."`` quotes (``\\"`` and
    ``\\\\`` escape inside, other ``\\x`` stay as is), outside quotes ``\\x`` means x."""
    words: list[bytes] = []
    cur = bytearray()
    in_word = False
    quoted = False
    i = 0
    n = len(data)
    while i < n:
        ch = data[i:i + 1]
        if quoted:
            if ch == b"\\" and i + 1 < n and data[i + 1:i + 2] in (b'"', b"\\"):
                cur += data[i + 1:i + 2]
                i += 2
                continue
            if ch == b'"':
                quoted = False
            else:
                cur += ch
            i += 1
            continue
        if ch in (b"\n", b"\r"):
            break
        if ch in _BLANKS:
            if in_word:
                words.append(bytes(cur))
                cur.clear()
                in_word = False
        elif ch == b'"':
            quoted = True
            in_word = True
        elif ch == b"\\" and i + 1 < n:
            cur += data[i + 1:i + 2]
            in_word = True
            i += 1
        else:
            cur += ch
            in_word = True
        i += 1
    if in_word:
        words.append(bytes(cur))
    return words


@attrs.define
class StatusInfo:
    """Static facts the status text shows."""

    listen_addr: Optional[str]  # the -l argument as typed, None = "*"
    port: int
    tls: int
    client_cert_required: bool
    max_clients: int
    max_send_size: int
    max_receive_size: int


@attrs.define
class IpcReply:
    data: bytes
    shutdown: bool = False


def handle_request(line: bytes, server: QnetdServer, info: StatusInfo,
                   max_send_size: int = 10485760) -> IpcReply:
    words = lex_words(line)
    if not words:
        return IpcReply(b"Error\nNo command specified\n")
    cmd = words[0].lower()
    if cmd == b"shutdown":
        return IpcReply(b"OK\n", shutdown=True)
    if cmd == b"status":
        verbose = len(words) > 1 and words[1].lower() == b"verbose"
        body = format_status(server, info, verbose)
        what = b"Can't get QNetd status"
    elif cmd == b"list":
        verbose = False
        cluster: Optional[bytes] = None
        i = 1
        while i < len(words):
            w = words[i].lower()
            if w == b"verbose":
                verbose = True
            elif w == b"cluster" and i + 1 < len(words):
                i += 1
                cluster = words[i]
            else:
                break
            i += 1
        body = format_list(server, verbose, cluster)
        what = b"Can't get QNetd cluster list"
    else:
        return IpcReply(b"Error\nUnknown command '" + words[0] + b"'\n")
    if len(b"OK\n") > max_send_size:
        return IpcReply(b"Error\nInternal IPC buffer too small\n")
    if len(body) + 3 > max_send_size:
        return IpcReply(b"Error\n" + what + b"\n")
    return IpcReply(b"OK\n" + body)


def format_status(server: QnetdServer, info: StatusInfo, verbose: bool) -> bytes:
    tls = TLS_SUPPORTED_TEXT[info.tls]
    if info.tls != TlsSupported.UNSUPPORTED and info.client_cert_required:
        tls += " (client certificate required)"
    clusters = sum(1 for c in server.clusters.values() if c.clients)
    lines = [
        f"QNetd address:\t\t\t{info.listen_addr if info.listen_addr is not None else '*'}:{info.port}",
        f"TLS:\t\t\t\t{tls}",
        f"Connected clients:\t\t{len(server.clients)}",
        f"Connected clusters:\t\t{clusters}",
    ]
    if verbose:
        if info.max_clients:
            lines.append(f"Maximum allowed clients:\t{info.max_clients}")
        lines.append(f"Maximum send/receive size:\t{info.max_send_size}/{info.max_receive_size} bytes")
    return "".join(line + "\n" for line in lines).encode()


def _node_list(nodes: list[NodeInfo]) -> str:
    return ", ".join(f"{n.node_id} ({n.data_center_id})" if n.data_center_id else str(n.node_id)
                     for n in nodes)


def format_list(server: QnetdServer, verbose: bool, cluster_filter: Optional[bytes]) -> bytes:
    out = bytearray()
    for cluster in server.clusters.values():
        if cluster_filter and cluster.name != cluster_filter:
            continue
        clients = [c for c in cluster.clients if c.initialised]
        if not clients:
            continue
        first = clients[0]
        algo = ALGORITHM_TEXT.get(first.algorithm, "Unknown")
        if all(c.algorithm == Algorithm.FFSPLIT and c.kap for c in cluster.clients):
            algo += " (KAP Tie-breaker)"
        out += b'Cluster "' + cluster.name + b'":\n'
        out += f"    Algorithm:\t\t{algo}\n    Tie-breaker:\t{first.tie_breaker.text()}\n".encode()
        for c in clients:
            out += _client_text(c, verbose).encode()
    return bytes(out)


def _client_text(c: Client, verbose: bool) -> str:
    s = f"    Node ID {c.node_id}:\n        Client address:\t\t{c.addr}\n"
    if verbose:
        s += f"        HB interval:\t\t{c.heartbeat_ms}ms\n"
    if c.config_version is not None:
        s += f"        Configuration version:\t{c.config_version}\n"
    if c.config_list:
        s += f"        Configured node list:\t{_node_list(c.config_list)}\n"
    if verbose:
        s += f"        Ring ID:\t\t{c.ring_id}\n"
    if c.membership:
        s += f"        Membership node list:\t{_node_list(c.membership)}\n"
    if c.heur_latest or verbose:
        s += f"        Heuristics:\t\t{HEURISTICS_TEXT[c.heur_latest]}"
        if verbose:
            s += (f" (membership: {HEURISTICS_TEXT[c.heur_membership]}, "
                  f"regular: {HEURISTICS_TEXT[c.heur_regular]})")
        s += "\n"
    if verbose:
        tls = "Yes" if c.tls_started else "No"
        if c.tls_started and c.tls_peer_verified:
            tls += " (client certificate verified)"
        s += f"        TLS active:\t\t{tls}\n"
    if c.last_sent_vote != Vote.UNDEFINED:
        s += f"        Vote:\t\t\t{VOTE_TEXT[c.last_sent_vote]}"
        if c.last_sent_ack_nack != Vote.UNDEFINED:
            s += f" ({VOTE_TEXT[c.last_sent_ack_nack]})"
        s += "\n"
    return s
