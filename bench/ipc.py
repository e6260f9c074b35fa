"""IPC benchmark: request/response round trips per second and event throughput, SHM vs
SOCKET, our trio server (this process) against a client in another process — our Python
client (lib/ipc.py) and, when Debian's libqb.so.100 is installed, libqb's own C client
(through ctypes), which isolates the server's cost.

Run: ``python bench/ipc.py [--seconds 1.0]``.  Not a test: numbers depend on the machine.
Each line: transport, client, what, rate, and MB/s where payloads are large.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import struct
import sys
import time

import trio

from corosync.exec.ipc import IpcServer

SIZES = (64, 4096, 65536)
EVENT_SIZES = (64, 4096)


class BenchService:
    """1: echo; 3: b"<count>:<size>" -> that many events, then a response."""

    def on_connect(self, conn) -> bool:
        return True

    def on_request(self, conn, msg_id: int, payload: bytes) -> None:
        if msg_id == 1:
            conn.send_response(101, payload)
        elif msg_id == 3:
            count, size = (int(x) for x in payload.split(b":"))
            body = b"e" * (size - 24)
            for _ in range(count):
                conn.send_event(8, body)
            conn.send_response(103, b"")

    def on_disconnect(self, conn) -> None:
        pass


# -- client side (child process) ----------------------------------------------------------


def _py_client(service: str, seconds: float) -> dict:
    from corosync.lib.ipc import IpcClient
    c = IpcClient.connect(service)
    out: dict[str, float] = {}
    for size in SIZES:
        payload = b"x" * (size - 16)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(50):
                c.request(1, payload)
            n += 50
        out[f"rtt {size}"] = n / (time.perf_counter() - t0)
    for size in EVENT_SIZES:
        count = 200 if size > 1000 else 1000
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            c.request(3, f"{count}:{size}".encode())
            for _ in range(count):
                assert c.recv_event(5) is not None
            n += count
        out[f"events {size}"] = n / (time.perf_counter() - t0)
    c.close()
    return out


def _libqb_client(service: str, seconds: float) -> dict:
    qb = ctypes.CDLL("libqb.so.100")
    qb.qb_ipcc_connect.restype = ctypes.c_void_p
    qb.qb_ipcc_connect.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    qb.qb_ipcc_sendv_recv.restype = ctypes.c_ssize_t
    qb.qb_ipcc_send.restype = ctypes.c_ssize_t
    qb.qb_ipcc_send.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    for name in ("qb_ipcc_recv", "qb_ipcc_event_recv"):
        getattr(qb, name).restype = ctypes.c_ssize_t
        getattr(qb, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_int32]
    conn = qb.qb_ipcc_connect(service.encode(), 1048576)
    buf = ctypes.create_string_buffer(1048576)
    out: dict[str, float] = {}

    def rt(msg: bytes) -> None:
        assert qb.qb_ipcc_send(conn, msg, len(msg)) == len(msg)
        assert qb.qb_ipcc_recv(conn, buf, 1048576, 5000) > 0

    for size in SIZES:
        msg = struct.pack("<i4xi4x", 1, size) + b"x" * (size - 16)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(50):
                rt(msg)
            n += 50
        out[f"rtt {size}"] = n / (time.perf_counter() - t0)
    for size in EVENT_SIZES:
        count = 200 if size > 1000 else 1000
        body = f"{count}:{size}".encode()
        msg = struct.pack("<i4xi4x", 3, 16 + len(body)) + body
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rt(msg)
            for _ in range(count):
                assert qb.qb_ipcc_event_recv(conn, buf, 1048576, 5000) > 0
            n += count
        out[f"events {size}"] = n / (time.perf_counter() - t0)
    return out


# -- server side ----------------------------------------------------------------------------


async def _bench(seconds: float) -> None:
    clients = ["python"]
    try:
        ctypes.CDLL("libqb.so.100")
        clients.append("libqb")
    except OSError:
        print("(libqb.so.100 not installed: C client skipped)")
    print(f"{'transport':9} {'client':7} {'what':13} {'per second':>12} {'MB/s':>8}")
    for ipc_type in ("shm", "socket"):
        service = f"ipcbench-{os.getpid()}-{ipc_type}"
        server = IpcServer(service, BenchService(), ipc_type=ipc_type)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            for client in clients:
                proc = await trio.run_process(
                    [sys.executable, __file__, "--client", client, "--service", service,
                     "--seconds", str(seconds)], capture_stdout=True, check=True)
                for what, rate in json.loads(proc.stdout).items():
                    size = int(what.split()[1])
                    mbs = rate * size * (2 if what.startswith("rtt") else 1) / 1e6
                    print(f"{ipc_type:9} {client:7} {what:13} {rate:12,.0f} {mbs:8.1f}")
            nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--client", choices=["python", "libqb"])
    ap.add_argument("--service")
    args = ap.parse_args()
    if args.client:
        fn = _py_client if args.client == "python" else _libqb_client
        print(json.dumps(fn(args.service, args.seconds)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    trio.run(_bench, args.seconds)


if __name__ == "__main__":
    main()
