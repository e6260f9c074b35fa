"""exec/qdevice/vq.py on top of lib/proto/votequorum.py: the request bodies the qdevice sends
(spec/ipc-wire.md §4.4, sizes as corosync's structs) and the notification decoding, including
malformed bodies (skipped, never raised)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corosync.exec.qdevice import vq
from corosync.exec.qnetd.protocol import RingId
from corosync.lib.proto import votequorum as vp

NAME = b"Qdevice".ljust(255, b"\0")


def test_request_bodies_have_corosyncs_layout():
    # req_lib_votequorum_qdevice_poll: name[255], pad, int cast_vote, pad, ring id (u32 +
    # pad + u64): 280 bytes after the 16-byte header
    body = vp.enc_qdevice_poll("Qdevice", True, 1, 0x4FC)
    assert len(body) == 280
    assert body == NAME + b"\0" + struct.pack("<i4xI4xQ", 1, 1, 0x4FC)
    assert vp.enc_qdevice_name("Qdevice") == NAME + b"\0"  # register / unregister: 256
    assert vp.enc_qdevice_master_wins("Qdevice", True) == NAME + b"\0" + b"\1\0\0\0\0\0\0\0"
    assert vp.enc_trackstart(0, vq.TRACK_CURRENT | vq.TRACK_CHANGES) == bytes(8) + b"\3" + bytes(7)


def test_notifications_decode_to_qdevice_events():
    nl = vp.NodelistNotification(0, 1, 0x4FC, (1, 2)).encode()
    assert vq.decode_event(vp.EV_NODELIST_NOTIFICATION, nl) == \
        vq.NodelistEvent(RingId(1, 0x4FC), (1, 2))
    qn = vp.QuorumNotification(True, 0, ((1, 1), (2, 2), (0, 0))).encode()
    assert vq.decode_event(vp.EV_QUORUM_NOTIFICATION, qn) == \
        vq.QuorumEvent(True, ((1, 1), (2, 2), (0, 0)))
    ev = vp.ExpectedVotesNotification(0, 3).encode()
    assert vq.decode_event(vp.EV_EXPECTEDVOTES_NOTIFICATION, ev) == vq.ExpectedVotesEvent(3)
    assert vq.decode_event(99, ev) is None


@pytest.mark.parametrize("msg_id", [vp.EV_NODELIST_NOTIFICATION, vp.EV_QUORUM_NOTIFICATION,
                                    vp.EV_EXPECTEDVOTES_NOTIFICATION])
def test_truncated_or_lying_notifications_are_skipped(msg_id):
    assert vq.decode_event(msg_id, b"") is None
    assert vq.decode_event(msg_id, b"\0" * 7) is None
    if msg_id != vp.EV_EXPECTEDVOTES_NOTIFICATION:
        # an entry count larger than the body
        lying = struct.pack("<QI4xQI4x", 0, 1, 1, 1000) if msg_id == vp.EV_NODELIST_NOTIFICATION \
            else struct.pack("<I4xQI4x", 1, 0, 1000)
        assert vq.decode_event(msg_id, lying) is None


@given(st.sampled_from([3, 4, 5]), st.binary(max_size=200))
def test_decode_event_never_raises(msg_id, body):
    vq.decode_event(msg_id, body)


def test_too_long_qdevice_name_is_refused_before_sending():
    with pytest.raises(ValueError):
        vp.enc_qdevice_name("x" * 255)
