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


def _cmap_get_client(seconds: float) -> dict:
    """Round trips of a 288-byte cmap GET (totem.cluster_name) against whatever serves `cmap`."""
    from corosync.lib.ipc import IpcClient
    key = b"totem.cluster_name"
    payload = struct.pack("<H6x", len(key)) + key.ljust(256, b"\0") + struct.pack("<Q", 64)
    c = IpcClient.connect("cmap")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            assert c.request(2, payload)[1] == 1
        n += 50
    rate = n / (time.perf_counter() - t0)
    kind = c.conn_type.name.lower()
    c.close()
    return {"type": kind, "rate": rate}


def _bench_real_corosync(seconds: float) -> None:
    """Same client, Debian's corosync 3.1.7 as the server (own net+mount namespace)."""
    import shutil
    import signal
    import subprocess
    import tempfile
    if not (os.path.exists("/usr/sbin/corosync") and os.geteuid() == 0
            and shutil.which("unshare") and shutil.which("nsenter")):
        print("(real corosync comparison skipped: needs root, unshare, nsenter, corosync)")
        return
    for ipc_type in ("shm", "socket"):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "corosync.conf")
            system = "system {\n qb_ipc_type: socket\n}\n" if ipc_type == "socket" else ""
            with open(conf, "w") as f:
                f.write("totem {\n version: 2\n cluster_name: bench\n transport: udpu\n"
                        " crypto_cipher: none\n crypto_hash: none\n}\n"
                        "logging {\n to_stderr: no\n to_syslog: no\n}\n"
                        "nodelist {\n node {\n ring0_addr: 127.0.0.1\n nodeid: 1\n }\n}\n"
                        + system)
            inner = ("ip link set lo up && mount -t tmpfs none /run && mount -t tmpfs none "
                     "/var/lib/corosync && mount -t tmpfs none /dev/shm && "
                     f"exec /usr/sbin/corosync -f -c {conf}")
            daemon = subprocess.Popen(["unshare", "-m", "-n", "sh", "-c", inner],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 20
                while True:
                    proc = subprocess.run(
                        ["nsenter", "-t", str(daemon.pid), "-m", "-n", sys.executable,
                         __file__, "--client", "cmapget", "--seconds", str(seconds)],
                        capture_output=True, env={**os.environ,
                                                  "PYTHONPATH": os.pathsep.join(sys.path)})
                    if proc.returncode == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                if proc.returncode == 0:
                    out = json.loads(proc.stdout)
                    print(f"{out['type']:9} python  cmap GET vs real corosync {out['rate']:10,.0f}")
            finally:
                os.kill(daemon.pid, signal.SIGTERM)
                daemon.wait(15)


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
    ap.add_argument("--client", choices=["python", "libqb", "cmapget"])
    ap.add_argument("--service")
    args = ap.parse_args()
    if args.client == "cmapget":
        print(json.dumps(_cmap_get_client(args.seconds)))
        return
    if args.client:
        fn = _py_client if args.client == "python" else _libqb_client
        print(json.dumps(fn(args.service, args.seconds)))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    trio.run(_bench, args.seconds)
    _bench_real_corosync(args.seconds)


if __name__ == "__main__":
    main()
