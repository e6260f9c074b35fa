"""corosync-qdevice-tool -s / -s -v text, byte for byte against Debian's outputs
(shared/reference/qdevice), from a client core in the same situation."""

import time

import pytest

from corosync.exec.qdevice import core as C
from corosync.exec.qdevice.config import config_from_keys, load_file
from corosync.exec.qdevice.ipc import format_status, handle_request
from corosync.exec.qnetd import protocol as P

STAMP = "2026-11-22T03:56:30"


def _connected_core(shared_dir, nodes=(1, 2)):
    keys = load_file(str(shared_dir / "reference/qdevice/corosync.conf"))
    q = C.QdeviceNet(config_from_keys(keys, 1), rng=lambda n: 0)
    q.on_vq_nodelist(P.RingId(1, 0x4FC), (1, 2), 0.0)
    q.on_vq_quorum(True, ((2, 1), (1, 1), (0, 0)), 0.0)
    q.on_vq_expected_votes(3, 0.0)
    q.on_connected(0.0)
    q.on_message(P.build_preinit_reply(1, 0, 1), 0.0)
    q.on_message(P.build_init_reply(0, 2, True, 32768, 32768), 0.0)
    q.on_message(P.build_vote_info(1, P.Vote.ACK, P.RingId(1, 0x4FC)), 0.0)
    if nodes != (1, 2):
        q.on_vq_nodelist(P.RingId(1, 0x500), nodes, 1.0)
        q.on_message(P.build_vote_info(2, P.Vote.ACK, P.RingId(1, 0x500)), 1.0)
    q.take_actions()
    assert q.state == C.State.CONNECTED
    return q


def _wall(mono: float) -> float:
    return time.mktime(time.strptime(STAMP, "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("ref,verbose,nodes", [
    ("running-qdevice-tool-s.txt", False, (1, 2)),
    ("running-qdevice-tool-s-v.txt", True, (1, 2)),
    ("after-kill-qdevice-tool-s.txt", False, (1,)),
])
def test_status_text_identical(shared_dir, ref, verbose, nodes):
    q = _connected_core(shared_dir, nodes)
    expected = (shared_dir / "reference/qdevice" / ref).read_text()
    assert format_status(q, verbose, _wall) == expected


def test_status_while_disconnected_and_requests(shared_dir):
    q = _connected_core(shared_dir)
    q.on_closed(5.0)
    text = format_status(q, True, _wall)
    assert "State:\t\t\tDisconnected\n" in text and "TLS active" not in text
    assert "Poll timer running:\tYes\n" in text  # ffsplit polls NACK while disconnected
    reply, stop = handle_request(b"  status   verbose\r\n", q, _wall)
    assert reply.startswith(b"OK\nQdevice information\n") and not stop
    assert handle_request(b"shutdown \n", q, _wall) == (b"OK\n", True)
    assert handle_request(b"\n", q, _wall) == (b"Error\nNo command specified\n", False)
    assert handle_request(b"bogus x\n", q, _wall) == (b"Error\nUnknown command 'bogus'\n", False)
