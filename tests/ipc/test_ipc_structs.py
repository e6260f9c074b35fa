"""Wire structs, addresses and the SHM ring buffer in isolation (no server)."""

from __future__ import annotations

import collections
import mmap
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from corosync.lib import ipc
from corosync.lib.ipc import (CONN_RESPONSE_SIZE, MAGIC_COMMITTED, MAGIC_CONSUMED, RingError,
                              ShmRing, shm_data_size)


def test_conn_request_bytes_match_observed() -> None:
    # spec §1.3: bytes of a stock corosync library's connection request
    assert ipc.pack_conn_request() == bytes.fromhex(
        "ffffffff00000000180000000000000000001000" "00000000")


def test_conn_response_layout() -> None:
    raw = ipc.pack_conn_response(0, 1, 1048576, 0x1122334455, "/dev/shm/a", "/b", "/c")
    assert len(raw) == CONN_RESPONSE_SIZE == 12328
    assert struct.unpack_from("<i", raw, 0)[0] == -1
    assert struct.unpack_from("<i", raw, 8)[0] == 12328
    assert struct.unpack_from("<iI", raw, 24) == (1, 1048576)
    assert struct.unpack_from("<q", raw, 32)[0] == 0x1122334455
    assert raw[40:50] == b"/dev/shm/a" and raw[4136:4139] == b"/b\0" and raw[8232:8234] == b"/c"
    assert ipc.unpack_conn_response(raw) == (0, 1, 1048576, "/dev/shm/a", "/b", "/c")
    rejected = ipc.pack_conn_response(-13)
    assert len(rejected) == 12328 and ipc.unpack_conn_response(rejected)[0] == -13
    with pytest.raises(ValueError):
        ipc.unpack_conn_response(raw[:-1])
    with pytest.raises(ValueError):
        ipc.unpack_conn_response(b"\0" * 12328)   # id 0, not -1


def test_message_headers() -> None:
    assert ipc.pack_request(5, b"ab") == struct.pack("<i4xi4x", 5, 18) + b"ab"
    assert ipc.unpack_request_header(ipc.pack_request(5, b"ab")) == (5, 18)
    res = ipc.pack_response(7, b"xyz", ipc.CsError.ERR_NOT_EXIST)
    assert res[:24] == struct.pack("<i4xi4xi4x", 7, 27, 12)
    assert ipc.unpack_response(res) == (7, 12, b"xyz")
    with pytest.raises(ValueError):
        ipc.unpack_response(res[:-1])          # size field disagrees
    with pytest.raises(ValueError):
        ipc.unpack_request_header(b"\0" * 15)


def test_addresses(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(ipc.IPC_DIR_ENV, raising=False)
    addr = ipc.abstract_address("cmap")
    assert len(addr) == 108 and addr.startswith(b"\0cmap\0") and addr.strip(b"\0") == b"cmap"
    assert len(ipc.abstract_address("x" * 200)) == 108      # truncated like libqb
    if not os.path.exists(ipc.FORCE_FILESYSTEM_SOCKETS):
        assert ipc.setup_address("cpg") == ipc.abstract_address("cpg")
    assert ipc.setup_address("cpg", tmp_path) == str(tmp_path / "cpg")
    monkeypatch.setenv(ipc.IPC_DIR_ENV, str(tmp_path))
    assert ipc.setup_address("cpg") == str(tmp_path / "cpg")


def test_errno_mapping() -> None:
    import errno
    assert ipc.errno_to_cs_error(-errno.EACCES) == ipc.CsError.ERR_ACCESS
    assert ipc.errno_to_cs_error(errno.EAGAIN) == ipc.CsError.ERR_TRY_AGAIN
    assert ipc.errno_to_cs_error(errno.ECONNREFUSED) == ipc.CsError.ERR_LIBRARY
    assert ipc.CsError.OK == 1


@pytest.fixture
def ring_pair(tmp_path):
    server = ShmRing.create(str(tmp_path / "qb-request-test"), 4096)
    client = ShmRing.open(str(tmp_path / "qb-request-test"), 4096)
    yield server, client
    client.close()
    server.close()


def test_ring_files_follow_libqb(tmp_path, ring_pair) -> None:
    server, client = ring_pair
    assert shm_data_size(1048576) == 1052672        # spec §3.1, observed
    assert shm_data_size(4096) == 8192
    assert os.path.getsize(server.header_path) == 8252
    assert os.path.getsize(server.data_path) == 8192
    assert oct(os.stat(server.data_path).st_mode & 0o777) == "0o600"
    with open(server.header_path, "rb") as f:
        hdr = f.read()
    assert struct.unpack_from("<III", hdr) == (0, 0, 2048)
    assert hdr[12:12 + len(server.header_path)] == server.header_path.encode()
    assert hdr[4108:4108 + len(server.data_path)] == server.data_path.encode()
    assert server.ref_count == 2                     # creator 1 + the client's open
    assert server.sem.value() == 0
    client.close()
    assert server.ref_count == 1


def test_ring_wrap_and_full(ring_pair) -> None:
    server, client = ring_pair
    assert client.free_bytes() == 8192
    big = b"A" * 3000
    assert client.write(big) and client.write(b"B" * 3000)
    assert not client.write(b"C" * 3000)             # 8192 - 2*3008 < 3012
    assert server.read(4096) == big
    assert client.write(b"C" * 3001)                 # wraps around the end of the area
    assert server.read(4096) == b"B" * 3000
    assert server.read(4096) == b"C" * 3001
    assert server.read(4096) is None
    # the reader reclaims: length 0, magic consumed
    _w, r, _ = struct.unpack_from("<III", server._hdr)
    assert client.free_bytes() == 8192 - 4 * ((_w - r) % 2048)


def test_ring_refuses_forged_chunks(ring_pair) -> None:
    server, client = ring_pair
    assert client.write(b"hello")
    client._set_word(1, 0xA110CED0)                  # "being written"
    with pytest.raises(RingError):
        server.read(4096)
    assert server.sem.value() == 1                   # re-posted like libqb
    client._set_word(1, MAGIC_COMMITTED)
    client._set_word(0, 10**9)                       # absurd length
    with pytest.raises(RingError):
        server.read(4096)
    client._set_word(0, 5)
    assert server.read(4096) == b"hello"
    assert server._word(1) == MAGIC_CONSUMED
    struct.pack_into("<I", client._hdr, 4, 999999)   # read_pt out of range
    with pytest.raises(RingError):
        client.write(b"x")                           # the writer validates pointers too
    server.sem.post()                                # a forged wake-up on top
    with pytest.raises(RingError):
        server.read(4096, 0.01)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.integers(0, 3000).map(lambda n: ("w", n)), st.just(("r", 0))),
                max_size=60))
def test_ring_matches_fifo_model(tmp_path_factory, ops) -> None:
    base = str(tmp_path_factory.mktemp("ring") / "qb-event-x")
    server = ShmRing.create(base, 4096)
    client = ShmRing.open(base, 4096)
    model: collections.deque[bytes] = collections.deque()
    try:
        for i, (op, n) in enumerate(ops):
            if op == "w":
                msg = bytes([i % 256]) * n
                used = sum(2 + (len(m) + 3) // 4 for m in model)
                free_words = 2048 if not model else max(0, 2048 - used - 1)
                ok = server.write(msg)
                assert ok == (free_words * 4 >= n + 12)
                if ok:
                    model.append(msg)
            else:
                got = client.read(4096)
                assert got == (model.popleft() if model else None)
        while model:
            assert client.read(4096) == model.popleft()
        assert client.read(4096) is None
    finally:
        client.close()
        server.close()
    assert not os.path.exists(base + "-header") and not os.path.exists(base + "-data")


def test_semaphore_wait_timeout(ring_pair) -> None:
    server, _client = ring_pair
    import time
    t0 = time.monotonic()
    assert server.sem.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.04
    server.sem.post()
    assert server.sem.wait(1.0) is True
