"""Round trips per second, blocking vs trio, against a real daemon: ours and Debian's.

Why: libqb signals an SHM response only through a semaphore (no fd), so the trio client
needs a helper thread to wait for it (lib/ipc.py ``_ShmResponseWaiter``); this bench shows
what that costs next to the blocking client, which sleeps in the semaphore directly, and
next to the former sleep-polling wait (re-created here as ``trio-poll`` for comparison).

Run as root: ``python bench/ipc_trio.py [--seconds 1.0] [--kinds debian,ours]``.  Each
daemon runs alone in fresh network + mount namespaces (tests/realcorosync.py, as the tests
start them); the client side (``--client``) runs inside them via nsenter.  All modes of one
daemon are measured in the same client process, interleaved over several rounds; the best
round of each is reported, with trio/blocking ratios.  Not a test: numbers depend on the
machine (and its load: run it on a quiet one).

Reading the numbers: the old poll wait is fast only when the response is already committed
at its first look (one sem_trywait right after the send); otherwise it sleeps, and trio/epoll
timers have millisecond granularity.  Against Debian's corosync (SCHED_RR, a C daemon) that
first look hits on a busy machine and often misses on an idle one (wake-up latency), so its
``ipc-trio-poll`` rate swings between ~1.5k/s and blocking speed from run to run; against
ours it always misses.  The helper-thread wait does not depend on that.

Modes (each one votequorum GETINFO request + response per round trip):

* ``ipc-blocking`` / ``ipc-trio``: lib/ipc.py ``IpcClient`` / ``AsyncIpcClient``;
* ``ipc-trio-poll``: trio waiting the old way (sleep-poll ``sem_trywait`` with back-off
  20 µs → 5 ms), for comparison;
* ``lib-blocking`` / ``lib-trio``: the client library (``corosync.votequorum`` handles).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROUNDS = 5
GETINFO = 0            # votequorum REQ_GETINFO
GETINFO_BODY = b"\0" * 8   # nodeid 0 = this node


# -- client side (inside the daemon's namespaces) ------------------------------------------


def _rate(fn: Callable[[], object], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(20):
            fn()
        n += 20
    return n / elapsed


async def _arate(fn: Callable[[], Awaitable[object]], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(20):
            await fn()
        n += 20
    return n / elapsed


async def _poll_request(c: Any, message: bytes) -> tuple[int, int, bytes]:
    """The trio wait as it was before the helper thread: sleep-poll the semaphore (on a
    connection of its own, never used by AsyncIpcClient, so no helper thread takes the
    counts)."""
    import trio

    from corosync.lib.ipc import unpack_response

    c.send(message)
    delay = 20e-6
    while True:
        raw = c.recv_response(0)
        if raw is not None:
            return unpack_response(raw)
        await trio.sleep(delay)
        delay = min(delay * 2, 0.005)


def client_main(seconds: float) -> None:
    import trio

    from corosync.lib.ipc import AsyncIpcClient, IpcClient, pack_request
    from corosync.votequorum import AsyncVotequorum, Votequorum

    message = pack_request(GETINFO, GETINFO_BODY)
    best: dict[str, float] = {}

    def keep(mode: str, rate: float) -> None:
        best[mode] = max(best.get(mode, 0.0), rate)

    async def run() -> None:
        blocking = IpcClient.connect("votequorum")
        ac = await AsyncIpcClient.connect("votequorum")
        polled = IpcClient.connect("votequorum")
        vq = Votequorum.initialize()
        avq = await AsyncVotequorum.initialize()
        info = {"conn_type": blocking.conn_type.name}
        try:
            for _ in range(ROUNDS):
                keep("ipc-blocking", _rate(lambda: blocking.request_raw(message), seconds))
                keep("ipc-trio", await _arate(lambda: ac.request_raw(message), seconds))
                keep("ipc-trio-poll", await _arate(lambda: _poll_request(polled, message),
                                                   seconds))
                keep("lib-blocking", _rate(vq.getinfo, seconds))
                keep("lib-trio", await _arate(avq.getinfo, seconds))
        finally:
            blocking.close()
            ac.close()
            polled.close()
            vq.finalize()
            await avq.aclose()
        print(json.dumps({**info, **best}), flush=True)

    trio.run(run)


# -- driver (starts the daemons) ------------------------------------------------------------


def driver_main(seconds: float, kinds: list[str]) -> int:
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent / "tests"))
    import realcorosync

    reason = realcorosync.skip_reason(real="debian" in kinds)
    if reason:
        print(f"cannot start the daemons: {reason}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ipc-trio-bench-") as tmp:
        for kind in kinds:
            daemon = realcorosync.Daemon(Path(tmp) / kind, kind)
            try:
                daemon.wait_ready(time.monotonic() + 60)
                out = daemon.run(sys.executable, str(Path(__file__).resolve()), "--client",
                                 "--seconds", str(seconds), timeout=60 + 30 * seconds * ROUNDS)
                if out.returncode != 0:
                    print(f"{kind}: client failed:\n{out.stderr.decode(errors='replace')}",
                          file=sys.stderr)
                    return 1
                results[kind] = json.loads(out.stdout.decode().strip().splitlines()[-1])
            finally:
                daemon.stop()
    print(f"votequorum getinfo round trips/s, best of {ROUNDS} rounds of {seconds:g} s "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    for kind, r in results.items():
        print(f"\n{kind} daemon ({r['conn_type']} transport)")
        for mode in ("ipc-blocking", "ipc-trio", "ipc-trio-poll", "lib-blocking", "lib-trio"):
            print(f"  {mode:14s} {r[mode]:9.0f}/s")
        print(f"  ratio ipc blocking/trio     {r['ipc-blocking'] / r['ipc-trio']:.2f}x"
              f"   (old poll wait: {r['ipc-blocking'] / r['ipc-trio-poll']:.2f}x)")
        print(f"  ratio lib blocking/trio     {r['lib-blocking'] / r['lib-trio']:.2f}x")
    print(json.dumps(results))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    ap.add_argument("--kinds", default="debian,ours",
                    help="daemons to measure: debian, debian-socket, ours (comma-separated)")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.seconds)
        return 0
    return driver_main(args.seconds, [k for k in args.kinds.split(",") if k])


if __name__ == "__main__":
    sys.exit(main())
