"""A real libqb client (Debian's libqb.so.100 through ctypes) for tests/ipc.

Usage: python libqb_client.py SERVICE SCENARIO; prints one JSON object.  Run as a separate
process so that libqb's blocking calls and global state stay out of the test process.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

qb = ctypes.CDLL("libqb.so.100", use_errno=True)
qb.qb_ipcc_connect.restype = ctypes.c_void_p
qb.qb_ipcc_connect.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
for name in ("qb_ipcc_recv", "qb_ipcc_event_recv"):
    getattr(qb, name).restype = ctypes.c_ssize_t
    getattr(qb, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                  ctypes.c_int32]
qb.qb_ipcc_send.restype = ctypes.c_ssize_t
qb.qb_ipcc_send.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
qb.qb_ipcc_fd_get.restype = ctypes.c_int32
qb.qb_ipcc_fd_get.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)]
qb.qb_ipcc_get_buffer_size.restype = ctypes.c_int32
qb.qb_ipcc_get_buffer_size.argtypes = [ctypes.c_void_p]
qb.qb_ipcc_disconnect.argtypes = [ctypes.c_void_p]

MAX = 1048576
HDR = struct.Struct("<i4xi4xi4x")


def main() -> None:
    service, scenario = sys.argv[1], sys.argv[2]
    out: dict[str, object] = {}
    conn = qb.qb_ipcc_connect(service.encode(), MAX)
    if not conn:
        out["connect_errno"] = ctypes.get_errno()
        print(json.dumps(out))
        return
    fd = ctypes.c_int32(-1)
    out["fd_rc"] = qb.qb_ipcc_fd_get(conn, ctypes.byref(fd))
    out["buffer_size"] = qb.qb_ipcc_get_buffer_size(conn)
    # what Pacemaker checks (spec §1.8): SO_PEERCRED of the fd qb_ipcc_fd_get returns
    import socket
    probe = socket.socket(fileno=os.dup(fd.value))
    try:
        raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        out["peercred"] = list(struct.unpack("<iII", raw))
    finally:
        probe.close()
    buf = ctypes.create_string_buffer(MAX)

    def roundtrip(msg_id: int, payload: bytes) -> tuple[int, int, int, bytes]:
        msg = struct.pack("<i4xi4x", msg_id, 16 + len(payload)) + payload
        sent = qb.qb_ipcc_send(conn, msg, len(msg))
        assert sent == len(msg), sent
        n = qb.qb_ipcc_recv(conn, buf, MAX, 5000)
        assert n >= 24, n
        rid, size, err = HDR.unpack_from(buf.raw)
        return n, rid, err, buf.raw[24:n]

    if scenario == "echo":
        ok = []
        for size in (0, 1, 3, 4096, 70001, 300000, MAX - 24):
            payload = bytes([size % 251]) * size
            n, rid, err, body = roundtrip(1, payload)
            ok.append([size, n == size + 24 and rid == 101 and err == 1 and body == payload])
        out["echo"] = ok
        n, rid, err, body = roundtrip(2, b"event please")
        got = qb.qb_ipcc_event_recv(conn, buf, MAX, 5000)
        out["event"] = [got, *HDR.unpack_from(buf.raw), buf.raw[24:got].decode()]
        # a flood bigger than the event ring: the server parks and drains it
        n, rid, err, body = roundtrip(3, b"300:10000")
        seqs = []
        for _ in range(int(body)):
            got = qb.qb_ipcc_event_recv(conn, buf, MAX, 5000)
            if got != 10024:
                break
            seqs.append(int.from_bytes(buf.raw[24:28], "little"))
        out["flood_in_order"] = seqs == list(range(300))
        out["no_more"] = qb.qb_ipcc_event_recv(conn, buf, MAX, 0)
    elif scenario == "fc":
        msg = struct.pack("<i4xi4x", 1, 16)
        out["send"] = qb.qb_ipcc_send(conn, msg, len(msg))
    qb.qb_ipcc_disconnect(conn)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
