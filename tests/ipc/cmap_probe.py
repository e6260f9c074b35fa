"""Raw cmap traffic with our client (lib/ipc.py) for tests/ipc/test_ipc_corosync.py.

Usage: python cmap_probe.py MODE.  MODE "probe": connect to `cmap`, GET totem.cluster_name,
track + SET a key and receive the NOTIFY event, a 16000-byte BINARY round trip; prints JSON.
MODE "wait": connect, print "ready", block in recv_event until the server goes away, print
the errno.  The cmap layout is spec/ipc-wire.md §4.1 (offsets include the 16-byte header).
"""

from __future__ import annotations

import json
import struct
import sys

from corosync.lib.ipc import IpcClient, IpcError

GET, SET, TRACK_ADD, NOTIFY = 2, 0, 7, 9


def name(key: bytes) -> bytes:
    return struct.pack("<H6x", len(key)) + key.ljust(256, b"\0")


def main() -> None:
    mode = sys.argv[1]
    try:
        c = IpcClient.connect("cmap", timeout=5)
    except IpcError as exc:
        print(json.dumps({"connect_errno": exc.errno}))
        return
    if mode == "wait":
        print("ready", flush=True)
        try:
            c.recv_event(None)
            print("event?", flush=True)
        except IpcError as exc:
            print(exc.errno, flush=True)
        return
    out: dict[str, object] = {"type": int(c.conn_type), "max": c.max_msg_size}
    rid, err, body = c.request(GET, name(b"totem.cluster_name") + struct.pack("<Q", 64), 5)
    value_len, vtype = struct.unpack_from("<QB", body, 0)
    out["get"] = [rid, err, value_len, vtype, body[16:16 + value_len].decode()]
    rid, err, body = c.request(TRACK_ADD, name(b"ipctest.") + struct.pack("<i4xQ", 8 | 4 | 2,
                                                                          0xC0FFEE), 5)
    out["track"] = [rid, err, len(body)]
    rid, err, body = c.request(SET, name(b"ipctest.s") + struct.pack("<QB7x", 5, 11) + b"hello",
                               5)
    out["set"] = [rid, err]
    ev = c.recv_event(5)
    assert ev is not None
    eid, eerr, ebody = ev
    cookie = struct.unpack_from("<Q", ebody, 0)[0]
    klen = struct.unpack_from("<H", ebody, 8)[0]
    key = ebody[16:16 + klen].decode()
    event, new_type, old_type, new_len, old_len = struct.unpack_from("<i4xB7xB7xQQ", ebody, 272)
    out["notify"] = [eid, eerr, cookie, key, event, new_type, new_len,
                     ebody[312:312 + new_len].decode(errors="replace")]
    blob = bytes(range(256)) * 62 + b"end!"          # 15876 bytes, BINARY (type 12)
    rid, err, _ = c.request(SET, name(b"ipctest.b") + struct.pack("<QB7x", len(blob), 12) + blob,
                            5)
    rid2, err2, body = c.request(GET, name(b"ipctest.b") + struct.pack("<Q", 16384), 5)
    out["blob"] = [err, rid2, err2, len(body), body[16:16 + len(blob)] == blob]
    c.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
