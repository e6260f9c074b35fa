"""A minimal read-only cmap service on our IPC server, for Debian's corosync-cmapctl.

Usage: python mini_cmap_server.py IPC_TYPE KEYS_FILE.  KEYS_FILE holds lines in
corosync-cmapctl's own output format ("key (u32) = 1000"); the service answers
SET_CURRENT_MAP, GET, ITER_INIT/NEXT/FINALIZE exactly as spec/ipc-wire.md §4.1 describes
(fixed-size error bodies, response ids, GET sizing rules) and refuses writes.  Prints "ready"
once listening on the `cmap` setup socket; runs until SIGTERM.  Not the real cmap service
(that is services/cmap.py's job): a probe that the IPC layer carries a stock tool.
"""

from __future__ import annotations

import signal
import struct
import sys

import trio

from corosync.exec.ipc import IpcConnection, IpcServer
from corosync.lib.ipc import CsError

TYPES = {"i8": (1, "<b"), "u8": (2, "<B"), "i16": (3, "<h"), "u16": (4, "<H"),
         "i32": (5, "<i"), "u32": (6, "<I"), "i64": (7, "<q"), "u64": (8, "<Q"),
         "str": (11, None)}
NAME = struct.Struct("<H6x256s")          # mar_name_t, 264 bytes


def load(path: str) -> dict[str, tuple[int, bytes]]:
    keys: dict[str, tuple[int, bytes]] = {}
    for line in open(path, encoding="utf-8"):
        key, rest = line.rstrip("\n").split(" (", 1)
        tname, value = rest.split(") = ", 1)
        code, fmt = TYPES[tname]
        keys[key] = (code, value.encode() + b"\0" if fmt is None else
                     struct.pack(fmt, int(value)))
    return keys


def key_of(payload: bytes) -> str:
    length, raw = NAME.unpack_from(payload, 0)
    return raw[:min(length, 255)].split(b"\0", 1)[0].decode("utf-8", "replace")


class MiniCmap:
    def __init__(self, keys: dict[str, tuple[int, bytes]]) -> None:
        self.keys = dict(sorted(keys.items()))
        self.iters: dict[int, list[str]] = {}
        self.next_iter = 1

    def on_connect(self, conn: IpcConnection) -> bool:
        return True

    def on_disconnect(self, conn: IpcConnection) -> None:
        pass

    def on_request(self, conn: IpcConnection, msg_id: int, payload: bytes) -> None:
        if msg_id == 9:                                      # SET_CURRENT_MAP -> id 10
            (map_no,) = struct.unpack_from("<i", payload, 0)
            conn.send_response(10, b"", CsError.OK if map_no == 0 else CsError.ERR_NOT_EXIST)
        elif msg_id == 2:                                    # GET -> 40 + requested
            key = key_of(payload)
            (wanted,) = struct.unpack_from("<Q", payload, 264)
            wanted = min(wanted, 16384)
            found = self.keys.get(key)
            if found is None:
                conn.send_response(2, bytes(16), CsError.ERR_NOT_EXIST)
                return
            code, value = found
            if wanted and wanted < len(value):
                conn.send_response(2, bytes(16), CsError.ERR_INVALID_PARAM)
                return
            body = struct.pack("<QB7x", len(value), code)
            conn.send_response(2, body + (value.ljust(wanted, b"\0") if wanted else b""))
        elif msg_id == 4:                                    # ITER_INIT -> 32
            prefix = key_of(payload)
            handle = self.next_iter
            self.next_iter += 1
            self.iters[handle] = [k for k in self.keys if k.startswith(prefix)]
            conn.send_response(4, struct.pack("<Q", handle))
        elif msg_id == 5:                                    # ITER_NEXT -> 304
            (handle,) = struct.unpack_from("<Q", payload, 0)
            pending = self.iters.get(handle)
            if not pending:
                err = CsError.ERR_NO_SECTIONS if pending is not None else CsError.ERR_BAD_HANDLE
                conn.send_response(5, bytes(280), err)
                return
            key = pending.pop(0)
            code, value = self.keys[key]
            conn.send_response(5, NAME.pack(len(key), key.encode()) +
                               struct.pack("<QB7x", len(value), code))
        elif msg_id == 6:                                    # ITER_FINALIZE -> 24
            (handle,) = struct.unpack_from("<Q", payload, 0)
            conn.send_response(6, b"", CsError.OK if self.iters.pop(handle, None) is not None
                               else CsError.ERR_BAD_HANDLE)
        else:                                                # writes, tracks: refused
            conn.send_response(0, b"", CsError.ERR_INVALID_PARAM)


async def main() -> None:
    server = IpcServer("cmap", MiniCmap(load(sys.argv[2])), ipc_type=sys.argv[1])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    trio.run(main)
