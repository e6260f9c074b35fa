"""corosync.sam pieces that need no fork: the pipe protocol codec, the quorum event decoding
of IpcQuorumSource, and what a handle allows before register()."""

from __future__ import annotations

import signal
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync import sam
from corosync._common import CsError, CsErrorCode
from corosync.sam import (MAX_DATA_SIZE, Command, Frame, FrameDecoder, IpcQuorumSource,
                          ProtocolError, RecoveryPolicy, decode_reply, encode_frame,
                          encode_reply)

frames = st.one_of(
    st.builds(Frame, st.sampled_from([Command.START, Command.STOP, Command.HEALTHCHECK,
                                      Command.MARK_FAILED])),
    st.builds(Frame, st.just(Command.DATA_STORE), st.binary(max_size=300)),
    st.builds(Frame, st.just(Command.WARN_SIGNAL_SET),
              st.integers(-2**31, 2**31 - 1).map(lambda i: struct.pack("=i", i))),
)


@given(st.lists(frames, max_size=20), st.lists(st.integers(1, 50), min_size=1))
def test_frames_survive_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f.command, f.body) for f in sent)
    dec = FrameDecoder()
    got: list[Frame] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += dec.feed(stream[pos:pos + step])
        pos += step
        i += 1
    assert got == sent
    assert dec.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_only_raises_protocol_error(data: bytes) -> None:
    dec = FrameDecoder()
    try:
        for frame in dec.feed(data):
            assert isinstance(frame.command, Command)
    except ProtocolError:
        pass


def test_oversized_and_malformed_bodies_are_refused_from_the_header() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        # refused from the 5-byte header: nothing of the 64 MiB body is awaited or buffered
        FrameDecoder().feed(struct.pack("=BI", Command.DATA_STORE, MAX_DATA_SIZE + 1))
    with pytest.raises(ProtocolError, match="expected 4"):
        FrameDecoder().feed(struct.pack("=BI", Command.WARN_SIGNAL_SET, 3) + b"abc")
    with pytest.raises(ProtocolError, match="unexpected"):
        FrameDecoder().feed(struct.pack("=BI", Command.HEALTHCHECK, 1) + b"x")
    with pytest.raises(ProtocolError, match="unknown command"):
        FrameDecoder().feed(b"\x00\x00\x00\x00\x00")
    dec = FrameDecoder()
    assert dec.feed(struct.pack("=BI", Command.DATA_STORE, 10) + b"12345") == []
    assert dec.pending == 10


def test_replies() -> None:
    assert decode_reply(encode_reply(CsErrorCode.OK)) == CsErrorCode.OK
    assert decode_reply(encode_reply(CsErrorCode.ERR_NO_MEMORY)) == \
        CsErrorCode.ERR_NO_MEMORY
    for bad in (b"", b"\x00" * 4, struct.pack("=BI", 7, 1), struct.pack("=BI", 1, 1)):
        with pytest.raises(ProtocolError):
            decode_reply(bad)


class FakeIpc:
    """Stands in for lib.ipc.IpcClient: canned responses and a queue of events."""

    def __init__(self, responses: list[tuple[int, int, bytes]],
                 events: list[tuple[int, int, bytes]]) -> None:
        self.responses = responses
        self.events = events
        self.requests: list[tuple[int, bytes]] = []
        self.closed = False

    def request(self, msg_id: int, payload: bytes, timeout: float | None
                ) -> tuple[int, int, bytes]:
        self.requests.append((msg_id, payload))
        return self.responses.pop(0)

    def recv_event(self, timeout: float | None) -> tuple[int, int, bytes] | None:
        return self.events.pop(0) if self.events else None

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


def notification(quorate: int, nodes: list[int]) -> tuple[int, int, bytes]:
    body = struct.pack("<i4xQI", quorate, 7, len(nodes))
    body += b"".join(struct.pack("<I", n) for n in nodes) + b"\0" * 4
    return 3, CsErrorCode.OK, body


def test_ipc_quorum_source_follows_v0_notifications() -> None:
    ipc = FakeIpc([(4, CsErrorCode.OK, struct.pack("<I4x", 1)), (1, CsErrorCode.OK, b"")],
                  [(9, CsErrorCode.OK, b"junk"), notification(0, [1])])
    src = IpcQuorumSource(ipc)
    src._start(5.0)
    # GETTYPE (V0), then TRACKSTART with CS_TRACK_CHANGES, as libsam does
    assert ipc.requests == [(3, b""), (1, struct.pack("<I4x", 2))]
    assert src.quorum_type == 1 and src.quorate is False
    assert src.dropped_events == 1
    ipc.events += [notification(1, [1, 2]),
                   (3, CsErrorCode.OK, struct.pack("<i4xQI", 0, 8, 1000)),  # truncated
                   (3, CsErrorCode.OK, b"\x01")]                            # too short
    src.dispatch()
    assert src.quorate is True            # the forged "inquorate" events were not believed
    assert src.dropped_events == 3


def test_ipc_quorum_source_refused_tracking() -> None:
    ipc = FakeIpc([(4, CsErrorCode.OK, struct.pack("<I4x", 1)),
                   (1, CsErrorCode.ERR_EXIST, b"")], [])
    with pytest.raises(CsError) as err:
        IpcQuorumSource(ipc)._start(5.0)
    assert err.value.code == CsErrorCode.ERR_EXIST


def test_no_executive_means_cs_err_library(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COROSYNC_IPC_DIR", str(tmp_path))
    with pytest.raises(CsError) as err:
        sam.initialize(100, RecoveryPolicy.QUORUM_QUIT)
    assert err.value.code == CsErrorCode.ERR_LIBRARY


class FakeQuorum:
    quorate = True
    closed = False

    def fileno(self) -> int:
        return 0

    def dispatch(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_handle_before_register() -> None:
    q = FakeQuorum()
    h = sam.initialize(100, RecoveryPolicy.QUORUM_RESTART | RecoveryPolicy.CMAP,
                       quorum_source=lambda: q)
    assert h.state is sam.State.INITIALIZED
    assert h.data_getsize() == 0 and h.data_restore() == b""
    h.data_store(bytearray(b"abc"))
    assert h.data_restore() == b"abc" and h.data_getsize() == 3
    h.data_store(None)
    assert h.data_getsize() == 0
    h.warn_signal_set(signal.SIGUSR2)
    assert h.warn_signal == signal.SIGUSR2
    for call in (h.start, h.stop, h.hc_send, h.mark_failed):
        with pytest.raises(CsError) as err:
            call()
        assert err.value.code == CsErrorCode.ERR_BAD_HANDLE
    h.finalize()
    assert q.closed and h.state is sam.State.FINALIZED
    with pytest.raises(CsError):
        h.data_getsize()


def test_policy_values_match_sam_h() -> None:
    assert (RecoveryPolicy.QUIT, RecoveryPolicy.RESTART, RecoveryPolicy.QUORUM,
            RecoveryPolicy.QUORUM_QUIT, RecoveryPolicy.QUORUM_RESTART, RecoveryPolicy.CMAP,
            RecoveryPolicy.CONFDB) == (1, 2, 8, 9, 10, 0x10, 0x10)
