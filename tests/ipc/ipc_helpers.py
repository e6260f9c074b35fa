"""Shared helpers for tests/ipc: unique service names, a scriptable test service, polling."""

from __future__ import annotations

import itertools
import os
import time
from typing import Callable

import trio

from corosync.exec.ipc import IpcConnection, IpcServer

_counter = itertools.count()


def unique_name(tag: str = "t") -> str:
    """Abstract names are per network namespace: keep concurrent test runs apart."""
    return f"ipctest-{tag}-{os.getpid()}-{next(_counter)}"


class Service:
    """Test service.  Request ids:
    1 echo (response id 101, same payload), 2 echo + an event with the payload (id 7),
    3 flood: payload = b"<count>:<size>" events of <size> bytes (id 8, seq in first 4 bytes),
    4 never answered, 5 raise (service bug), 6 deferred: answered by the test via `pending`,
    9 broadcast: the payload as an event (id 7) to every open connection,
    10 a response whose header lies about its size.
    """

    def __init__(self, accept: bool = True, fc_on_connect: int = 0) -> None:
        self.accept = accept
        self.fc_on_connect = fc_on_connect
        self.connected: list[IpcConnection] = []
        self.disconnected: list[IpcConnection] = []
        self.requests: list[tuple[int, int]] = []
        self.pending: list[IpcConnection] = []
        self.changed = trio.Event()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def on_connect(self, conn: IpcConnection) -> bool:
        self.connected.append(conn)
        if self.fc_on_connect:
            conn.set_flow_control(self.fc_on_connect)
        self._poke()
        return self.accept

    def on_request(self, conn: IpcConnection, msg_id: int, payload: bytes) -> None:
        self.requests.append((conn.id, msg_id))
        self._poke()
        if msg_id == 1:
            conn.send_response(101, payload)
        elif msg_id == 2:
            conn.send_event(7, payload)
            conn.send_response(102, payload)
        elif msg_id == 3:
            count, size = (int(x) for x in payload.split(b":"))
            sent = 0
            for i in range(count):
                if not conn.send_event(8, i.to_bytes(4, "little") + b"e" * (size - 4)):
                    break
                sent += 1
            conn.send_response(103, str(sent).encode())
        elif msg_id == 4:
            pass
        elif msg_id == 5:
            raise RuntimeError("service bug")
        elif msg_id == 6:
            self.pending.append(conn)
        elif msg_id == 10:                     # a broken response (size field lies)
            conn._send_response_raw(b"\x01" * 30)
        elif msg_id == 9:                      # broadcast an event to every connection
            delivered = sum(other.send_event(7, payload) for other in list(self.connected)
                            if not other.closed)
            conn.send_response(109, str(delivered).encode())
        else:
            conn.send_response(0, b"", 7)

    def on_disconnect(self, conn: IpcConnection) -> None:
        self.disconnected.append(conn)
        self._poke()


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a condition with a deadline (no fixed sleeps in tests)."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.005)


def wait_until_sync(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def start_server(nursery: trio.Nursery, handler: object, **kwargs: object) -> IpcServer:
    name = kwargs.pop("name", None) or unique_name()
    server = IpcServer(str(name), handler, **kwargs)  # type: ignore[arg-type]
    await nursery.start(server.serve)
    return server
