"""corosync-qnetd-tool texts: lexer, and status/list output byte-identical to Debian's for
the same state (state rebuilt by replaying the capture the reference outputs came from)."""

import pytest

from corosync.exec.qnetd import protocol as P
from corosync.exec.qnetd.ipc import StatusInfo, format_list, format_status, handle_request, lex_words
from corosync.exec.qnetd.protocol import Algorithm, Heuristics, NodeInfo, RingId, TieBreaker
from corosync.exec.qnetd.server import QnetdServer, ServerConfig

from qnetd_harness import Harness
from qnetd_replay import replay_with_server

INFO = StatusInfo(None, 5403, 0, True, 0, 32768, 32768)


def _server_at(shared_dir, t: float) -> QnetdServer:
    """The server state after replaying the ffsplit capture up to capture time t."""
    _, server = replay_with_server(shared_dir / "spec/captures/qnetd-ffsplit-2node.pcap",
                                   ServerConfig(tls=0), until=t)
    return server


@pytest.mark.parametrize("t,name,verbose,cluster", [
    (5.0, "running-qnetd-tool-l-v", True, None),
    (5.0, "running-qnetd-tool-l", False, None),
    (5.0, "running-qnetd-tool-l-c-lab", False, b"lab"),
    (5.0, "running-qnetd-tool-l-v-c-lab", True, b"lab"),
    (5.0, "running-qnetd-tool-l-c-other", False, b"other"),
    (22.0, "partition-qnetd-tool-l-v", True, None),
    (30.0, "after-kill-qnetd-tool-l-v", True, None),
])
def test_list_matches_reference(shared_dir, t, name, verbose, cluster):
    server = _server_at(shared_dir, t)
    ref = (shared_dir / f"reference/qdevice/qnetd/ffsplit-2node/{name}.txt").read_bytes()
    assert format_list(server, verbose, cluster) == ref


def test_status_matches_reference(shared_dir):
    server = _server_at(shared_dir, 5.0)
    d = shared_dir / "reference/qdevice/qnetd"
    assert format_status(server, INFO, True) == (d / "ffsplit-2node/running-qnetd-tool-s-v.txt").read_bytes()
    assert format_status(server, INFO, False) == (d / "ffsplit-2node/running-qnetd-tool-s.txt").read_bytes()
    empty = QnetdServer(ServerConfig(tls=0))
    assert format_status(empty, INFO, False) == (d / "cli/tool-empty-s.txt").read_bytes()
    assert format_status(empty, INFO, True) == (d / "cli/tool-empty-s-v.txt").read_bytes()
    info = StatusInfo("198.18.0.100", 5403, 0, True, 5, 32768, 32768)
    assert format_status(empty, info, True).replace(b"\t\t0\n", b"\t\t5\n") == \
        (d / "formats/qnetd-tool-s-v.txt").read_bytes()
    tls = (d / "tls/qnetd-tool-s-v.txt").read_bytes()
    got = format_status(_server_at(shared_dir, 5.0), StatusInfo(None, 5403, 1, True, 0, 32768, 32768), True)
    assert got == tls


def test_formats_every_variant(shared_dir):
    """Rebuild the states of reference/qdevice/qnetd/formats with hand-made clients."""
    h = Harness()
    s = h.server
    t = h.client(7, algorithm=Algorithm.TEST, cluster=b"fmt-test", tb=TieBreaker(3, 7),
                 ring=RingId(7, 0xABCDEF0123), hb=3000)
    h.send(t, P.build_node_list(3, 0, [NodeInfo(7, 42), NodeInfo(8, 43)], config_version=12345))
    h.send(t, P.build_node_list(4, 2, [NodeInfo(7, 42)], ring=RingId(7, 0xABCDEF0123),
                                heuristics=Heuristics.PASS))
    h.send(t, P.build_heuristics_change(5, Heuristics.FAIL))
    h.client(1, algorithm=Algorithm.TWO_NODE_LMS, cluster=b"fmt-2nodelms", tb=TieBreaker(2))
    h.client(1, algorithm=Algorithm.LMS, cluster=b"fmt-lms")
    h.client(2, cluster=b"fmt-ffsplit-nokap", hb=5000)
    h.client(1, cluster=b'fmt "quoted" name')
    addrs = iter(["198.18.0.3:53970", "198.18.0.3:53980", "198.18.0.3:53982", "198.18.0.3:53988",
                  "198.18.0.3:53996"])
    for c in s.clients.values():
        c.addr = next(addrs)
    d = shared_dir / "reference/qdevice/qnetd/formats"
    assert format_list(s, True, None) == (d / "qnetd-tool-l-v.txt").read_bytes()
    assert format_list(s, False, None) == (d / "qnetd-tool-l.txt").read_bytes()
    assert format_list(s, False, b'fmt "quoted" name') == (d / "qnetd-tool-l-c-quoted.txt").read_bytes()
    assert format_list(s, False, b"") == format_list(s, False, None)


def test_lexer():
    assert lex_words(b"  status   \n") == [b"status"]
    assert lex_words(b"status\r\n") == [b"status"]
    assert lex_words(b"status\nlist\n") == [b"status"]
    assert lex_words(b'list cluster "we\\"ird\\\\name" \n') == [b"list", b"cluster", b'we"ird\\name']
    assert lex_words(b'"quoted cmd"\n') == [b"quoted cmd"]
    assert lex_words(b'a\\ b "x\\y"\n') == [b"a b", b"x\\y"]
    assert lex_words(b"\t\f\v\n") == []


def test_ipc_raw_transcript(shared_dir):
    """Every request of reference/qdevice/qnetd/cli/ipc-raw-transcript.txt gets the same reply."""
    import ast
    server = QnetdServer(ServerConfig(tls=0))
    info = StatusInfo(None, 5403, 0, True, 0, 32768, 32768)
    text = (shared_dir / "reference/qdevice/qnetd/cli/ipc-raw-transcript.txt").read_text()
    pairs = 0
    send = None
    for line in text.splitlines():
        if line.startswith("SEND "):
            send = ast.literal_eval(line[5:])
        elif line.startswith("RECV "):
            if b"\n" not in send:
                continue  # unterminated: the connection layer never answers (daemon tests)
            assert handle_request(send, server, info).data == ast.literal_eval(line[5:]), send
            pairs += 1
    assert pairs >= 10
    assert handle_request(b"list foo verbose\n", server, info).data == b"OK\n"
    r = handle_request(b"SHUTDOWN\n", server, info)
    assert (r.data, r.shutdown) == (b"OK\n", True)
    assert handle_request(b"status\n", server, info, max_send_size=20).data == \
        b"Error\nCan't get QNetd status\n"
