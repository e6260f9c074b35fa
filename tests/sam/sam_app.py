"""A SAM application run by the tests as its own process: ``sam_app.py SCENARIO WORKDIR``.

The process that runs this becomes the SAM watchdog (it never returns from register()); each
child instance appends JSON lines to WORKDIR/log.jsonl so the test can follow what happened
and wait on it.  Fakes for the two seams live here too:

* :class:`FifoQuorum` — quorum state read from WORKDIR/quorum.fifo ("1" quorate, "0" not,
  "x" = the provider died), written by the test.
* :class:`FileCmap` — cmap keys kept in WORKDIR/cmap.json (the watchdog writes, the test and
  the children read).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from corosync import sam
from corosync._common import CsError, CsErrorCode

WORK = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")
LOG = WORK / "log.jsonl"


def log(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), "t": time.monotonic(), **fields})
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def hang() -> None:
    """Wait to be killed by the watchdog (the test fails by its deadline if that never
    comes; the process is then killed by the test)."""
    while True:
        signal.pause()


class FifoQuorum:
    def __init__(self) -> None:
        self.fd = os.open(WORK / "quorum.fifo", os.O_RDWR)   # RDWR: never sees EOF
        self._quorate: bool | None = None
        self.dead = False
        while self._quorate is None:                          # the initial state
            self._consume(os.read(self.fd, 1))
        os.set_blocking(self.fd, False)

    def _consume(self, data: bytes) -> None:
        for ch in data:
            if ch == ord("x"):
                self.dead = True
            elif ch in b"01":
                self._quorate = ch == ord("1")

    @property
    def quorate(self) -> bool:
        return bool(self._quorate)

    def fileno(self) -> int:
        return self.fd

    def dispatch(self) -> None:
        try:
            self._consume(os.read(self.fd, 64))
        except BlockingIOError:
            pass
        if self.dead:
            raise CsError(CsErrorCode.ERR_LIBRARY, "fake quorum provider died")

    def close(self) -> None:
        os.close(self.fd)


class FileCmap:
    path = WORK / "cmap.json"

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def set_string(self, key: str, value: str) -> None:
        self._save({**self._load(), key: value})

    def set_uint64(self, key: str, value: int) -> None:
        self._save({**self._load(), key: value})

    def delete(self, key: str) -> None:
        data = self._load()
        if key not in data:
            raise CsError(CsErrorCode.ERR_NOT_EXIST, key)
        del data[key]
        self._save(data)

    def iter_prefix(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self._load() if k.startswith(prefix)))

    def get(self, key: str) -> Any:
        return self._load().get(key)

    def finalize(self) -> None:
        pass


# --------------------------------------------------------------------------------------------


def hc_timeout_restart() -> None:
    """RESTART: instance 1 sends two health checks then goes silent; instance 2 quits."""
    h = sam.initialize(300, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        h.start()
        h.hc_send()
        time.sleep(0.05)
        before = time.monotonic()       # the watchdog reads the last health check after this
        h.hc_send()
        log("last_hc", before=before)
        hang()
    sys.exit(0)


def crash_restart() -> None:
    """RESTART without a time limit: instances 1 and 2 crash while started, 3 exits with 7
    without starting (the watchdog then quits with 7)."""
    h = sam.initialize(0, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        h.start()
        os.kill(os.getpid(), signal.SIGSEGV)
        hang()
    if iid == 2:
        h.start()
        os._exit(3)
    sys.exit(7)


def quit_warn() -> None:
    """QUIT: the child survives the SIGTERM warning (logged) and is SIGKILLed."""
    h = sam.initialize(200, sam.RecoveryPolicy.QUIT)
    iid = h.register()
    log("instance", iid=iid)
    signal.signal(signal.SIGTERM, lambda *_: log("warned", sig="SIGTERM"))
    h.start()
    h.hc_send()
    hang()


def warn_signal() -> None:
    """The warning signal is SIGUSR1 (set in the child, kept by the watchdog for the next
    instance); the handler's data_store survives into instance 2."""
    h = sam.initialize(200, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid, warn=int(h.warn_signal), data=h.data_restore().decode())
    if iid == 1:
        h.warn_signal_set(signal.SIGUSR1)

        def on_warning(*_: Any) -> None:
            h.data_store(b"warned")
            log("warned", sig="SIGUSR1")
        signal.signal(signal.SIGUSR1, on_warning)
        h.start()
        h.hc_send()
        hang()
    sys.exit(0)


def data() -> None:
    """libsam test4: data stored before register and by each instance survives restarts."""
    h = sam.initialize(0, sam.RecoveryPolicy.RESTART)
    first = bytes((i + 5) % 256 for i in range(128))
    h.data_store(first)
    iid = h.register()
    stored = h.data_restore()
    log("instance", iid=iid, size=h.data_getsize(), data=stored.hex())
    if iid == 1:
        h.start()
        h.data_store(bytes((i - 5) % 256 for i in range(121)))
        sys.exit(1)           # dies while started: recovery
    if iid == 2:
        h.start()
        h.data_store(None)
        sys.exit(1)
    sys.exit(0)


def stop_disarms() -> None:
    """Stopped for three intervals without health checks: no kill; then a clean exit."""
    h = sam.initialize(400, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    h.start()
    h.hc_send()
    h.stop()
    log("stopped")
    time.sleep(1.2)
    h.start()
    h.hc_send()
    h.finalize()
    log("finalized")
    sys.exit(0)


def hc_callback() -> None:
    """libsam test5: the library sends the health checks; the callback fails at call 6
    (interval 250 ms: a scheduling stall under 190 ms cannot miss a deadline)."""
    h = sam.initialize(250, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        calls = 0

        def healthy() -> bool:
            nonlocal calls
            calls += 1
            h.data_store(str(calls).encode())
            log("callback", n=calls)
            return calls <= 5
        h.hc_callback_register(healthy)
        h.start()
        hang()
    log("restored", calls=int(h.data_restore() or b"0"))
    sys.exit(0)


def hc_callback_raises() -> None:
    """A callback that raises counts as a failed health check."""
    h = sam.initialize(250, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        def broken() -> bool:
            log("callback")
            raise RuntimeError("cannot tell")
        h.hc_callback_register(broken)
        h.start()
        hang()
    sys.exit(0)


def mark_failed() -> None:
    """RESTART|CMAP: mark_failed kills at once and the watchdog quits (state "failed")."""
    cmap = FileCmap()
    h = sam.initialize(1000, sam.RecoveryPolicy.RESTART | sam.RecoveryPolicy.CMAP,
                       cmap_factory=lambda: cmap)
    iid = h.register()
    prefix = f"resources.process.{os.getppid()}."
    log("instance", iid=iid, state=cmap.get(prefix + "state"))
    signal.signal(signal.SIGTERM, lambda *_: log("warned", sig="SIGTERM"))
    h.start()
    log("running", state=cmap.get(prefix + "state"))
    h.mark_failed()
    hang()


def cmap_quit() -> None:
    """QUIT|CMAP: the state key follows start/stop; keys vanish after a clean exit."""
    cmap = FileCmap()
    h = sam.initialize(1000, sam.RecoveryPolicy.QUIT | sam.RecoveryPolicy.CMAP,
                       cmap_factory=lambda: cmap)
    iid = h.register()
    prefix = f"resources.process.{os.getppid()}."
    seen = [cmap.get(prefix + "state")]
    h.start()
    seen.append(cmap.get(prefix + "state"))
    h.hc_send()
    h.stop()
    seen.append(cmap.get(prefix + "state"))
    log("instance", iid=iid, states=seen, recovery=cmap.get(prefix + "recovery"),
        poll_period=cmap.get(prefix + "poll_period"),
        last_updated=cmap.get(prefix + "last_updated"))
    h.finalize()
    sys.exit(0)


def quorum() -> None:
    """QUORUM_RESTART|CMAP with the FIFO provider: start() waits for quorum (the cmap state
    says so); losing quorum kills the instance."""
    cmap = FileCmap()
    h = sam.initialize(0, sam.RecoveryPolicy.QUORUM_RESTART | sam.RecoveryPolicy.CMAP,
                       quorum_source=FifoQuorum, cmap_factory=lambda: cmap)
    iid = h.register()
    log("starting", iid=iid)
    h.start()
    log("started", iid=iid)
    if iid == 1:
        hang()
    h.stop()
    h.finalize()
    sys.exit(0)


def quorum_dies() -> None:
    """QUORUM_QUIT: the provider dies while started -> the child is killed, watchdog quits."""
    h = sam.initialize(0, sam.RecoveryPolicy.QUORUM_QUIT, quorum_source=FifoQuorum)
    iid = h.register()
    h.start()
    log("started", iid=iid)
    hang()


def grandchild() -> None:
    """Instance 1 forks a grandchild that inherits the watchdog pipe, then dies while
    started: the watchdog must see the death (pidfd) although the pipe never reaches EOF."""
    h = sam.initialize(0, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        h.start()
        pid = os.fork()
        if pid == 0:
            log("grandchild")
            time.sleep(60)
            os._exit(0)
        os._exit(5)
    sys.exit(0)


def garbage() -> None:
    """A child that writes a forged frame into the watchdog's pipe gets killed (counted)."""
    h = sam.initialize(0, sam.RecoveryPolicy.RESTART)
    iid = h.register()
    log("instance", iid=iid)
    if iid == 1:
        h.start()
        os.write(h._child_out, b"\xee" * 16)
        hang()
    sys.exit(0)


def real_cmap() -> None:
    """Against a real executive: the keys as a separate cmap client sees them."""
    from corosync.cmap import Cmap

    h = sam.initialize(3000, sam.RecoveryPolicy.QUIT | sam.RecoveryPolicy.CMAP)
    iid = h.register()
    prefix = f"resources.process.{os.getppid()}."
    with Cmap.initialize() as c:
        seen = {"recovery": c.get_string(prefix + "recovery"),
                "poll_period": c.get_uint64(prefix + "poll_period"),
                "state0": c.get_string(prefix + "state")}
        h.start()
        seen["state1"] = c.get_string(prefix + "state")
        h.hc_send()
        h.data_store(b"sync")           # a round trip: the watchdog handled the hc before
        first = c.get_uint64(prefix + "last_updated")
        h.hc_send()
        h.data_store(b"sync")
        seen["advanced"] = c.get_uint64(prefix + "last_updated") > first
        h.stop()
        seen["state2"] = c.get_string(prefix + "state")
    log("instance", iid=iid, **seen)
    h.finalize()
    sys.exit(0)


def real_mark_failed() -> None:
    h = sam.initialize(1000, sam.RecoveryPolicy.RESTART | sam.RecoveryPolicy.CMAP)
    iid = h.register()
    log("instance", iid=iid)
    h.start()
    h.mark_failed()
    hang()


def real_quorum() -> None:
    """QUORUM_QUIT|CMAP with the executive's quorum service (IpcQuorumSource)."""
    source = {"lib": sam.LibQuorumSource.connect, "ipc": sam.IpcQuorumSource.connect,
              "default": None}[sys.argv[3]]
    h = sam.initialize(0, sam.RecoveryPolicy.QUORUM_QUIT | sam.RecoveryPolicy.CMAP,
                       quorum_source=source)
    iid = h.register()
    log("starting", iid=iid)
    h.start()
    log("started", iid=iid)
    hang()


def api() -> None:
    """libsam test1 instance 3 and test4's state checks: what is refused when."""
    results: dict[str, str] = {}

    def attempt(name: str, fn: Any) -> Any:
        try:
            value = fn()
        except CsError as exc:
            results[name] = CsErrorCode(exc.code).c_name
            return None
        results[name] = "ok"
        return value

    attempt("bad_policy", lambda: sam.initialize(10, 3))
    attempt("bad_policy_bits", lambda: sam.initialize(10, 0x41))
    attempt("negative_interval", lambda: sam.initialize(-1, sam.RecoveryPolicy.QUIT))
    h = sam.initialize(0, sam.RecoveryPolicy.RESTART)
    attempt("start_before_register", h.start)
    attempt("hc_before_register", h.hc_send)
    attempt("cb_before_register", lambda: h.hc_callback_register(lambda: True))
    attempt("warn_bad_signal", lambda: h.warn_signal_set(12345))
    iid = h.register()
    attempt("register_twice", h.register)
    attempt("register_other_handle",
            lambda: sam.initialize(0, sam.RecoveryPolicy.QUIT).register())
    attempt("cb_zero_interval", lambda: h.hc_callback_register(lambda: True))
    attempt("mark_failed_no_cmap", h.mark_failed)
    attempt("stop_not_started", h.stop)
    attempt("start", h.start)
    attempt("start_again", h.start)
    attempt("stop", h.stop)
    attempt("finalize", h.finalize)
    attempt("finalize_again", h.finalize)
    attempt("start_finalized", h.start)
    attempt("data_store_finalized", lambda: h.data_store(b"x"))
    attempt("data_getsize_finalized", h.data_getsize)
    log("results", iid=iid, results=results)
    sys.exit(0)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
