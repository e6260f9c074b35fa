"""The trio cfg and votequorum calls against live executives: our daemon (started here on
127.0.0.1 with its own IPC directory; no root needed) and Debian's corosync 3.1.7 (in its own
network + mount namespace via tests/realcorosync.py; needs root), both configured with a
one-vote quorum device (``quorum.device { model: net; votes: 1 }``).

One scenario (:func:`scenario`, also runnable as ``python <this file>`` inside a namespace)
drives a quorum device through AsyncVotequorum — register, poll with the ring id from the
nodelist callback, master_wins, update, unregister — and the AsyncCfg calls; its
observations are checked against what corosync does and compared between the two daemons.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio

from corosync.cfg import AsyncCfg, Cfg
from corosync.votequorum import (INFO_QDEVICE_ALIVE, INFO_QDEVICE_CAST_VOTE,
                                 INFO_QDEVICE_MASTER_WINS, INFO_QDEVICE_REGISTERED,
                                 INFO_QUORATE, AsyncVotequorum, CsError, NodeInfo,
                                 NodelistNotification, QuorumNotification, TrackFlags)

NAME, RENAMED = "PytestDevice", "PytestDevice2"
DEVICE = "    device {\n        model: net\n        votes: 1\n    }\n"
#: How long our daemon may take to apply what went round the ring (it answers a qdevice
#: call before its exec message is delivered; Debian's state is already there).
SETTLE = 5.0


def with_device(conf: str) -> str:
    """realcorosync's votequorum config plus a one-vote quorum device."""
    marker = "provider: corosync_votequorum\n"
    assert marker in conf
    return conf.replace(marker, marker + DEVICE)


# --------------------------------------------------------------------------------------
# the scenario (the same code against either daemon)
# --------------------------------------------------------------------------------------

async def code(call: Awaitable[Any]) -> str:
    """"CS_OK" or the C name of the error a call raised."""
    try:
        await call
        return "CS_OK"
    except CsError as exc:
        return exc.code.c_name if hasattr(exc.code, "c_name") else str(exc.code)


def summary(info: NodeInfo) -> dict[str, Any]:
    return {"flags": info.flags, "votes": info.votes, "expected": info.expected_votes,
            "total": info.total_votes, "quorum": info.quorum,
            "qdevice_votes": info.qdevice_votes, "name": info.qdevice_name}


async def settled(vq: AsyncVotequorum, done: Callable[[NodeInfo], bool]) -> dict[str, Any]:
    """getinfo until ``done`` holds or :data:`SETTLE` seconds passed (the checks then say
    what is wrong); ``settle_ms`` records how long it took."""
    start = time.monotonic()
    while True:
        info = await vq.getinfo(0)
        if done(info) or time.monotonic() - start > SETTLE:
            return {**summary(info), "settle_ms": round((time.monotonic() - start) * 1000)}
        await trio.sleep(0.02)


async def scenario(ipc_dir: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    nodelists: list[NodelistNotification] = []
    async with await AsyncVotequorum.initialize(nodelist=nodelists.append,
                                                ipc_dir=ipc_dir) as vq:
        await vq.trackstart(7, TrackFlags.CURRENT)
        kinds = []
        with trio.fail_after(10):
            async with aclosing(vq.notifications()) as events:
                async for event in events:
                    kinds.append(type(event).__name__)
                    if isinstance(event, QuorumNotification):
                        break
        out["track"] = kinds
        out["nodelist_callback"] = [[n.context, list(n.nodes)] for n in nodelists]
        ring = (nodelists[0].ring_nodeid, nodelists[0].ring_seq)
        out["before"] = summary(await vq.getinfo(0))
        await vq.qdevice_register(NAME)
        out["registered"] = summary(await vq.getinfo(0))
        out["register_other"] = await code(vq.qdevice_register("Other"))
        out["poll_stale_ring"] = await code(vq.qdevice_poll(NAME, True, ring[0], ring[1] - 1))
        out["poll_wrong_name"] = await code(vq.qdevice_poll("Other", True, *ring))
        await vq.qdevice_poll(NAME, True, *ring)
        out["polled"] = await settled(vq, lambda i: bool(i.flags & INFO_QUORATE))
        await vq.qdevice_master_wins(NAME, True)
        out["master_wins"] = summary(await vq.getinfo(0))
        await vq.qdevice_update(NAME, RENAMED)
        out["updated"] = await settled(vq, lambda i: i.qdevice_name == RENAMED)
        out["unregister_old_name"] = await code(vq.qdevice_unregister(NAME))
        await vq.qdevice_unregister(RENAMED)
        out["unregistered"] = await settled(
            vq, lambda i: not i.flags & (INFO_QDEVICE_REGISTERED | INFO_QUORATE))
    async with await AsyncCfg.initialize(ipc_dir=ipc_dir) as cfg:
        out["local"] = await cfg.local_get()
        out["ring_status"] = [list(i) for i in (await cfg.ring_status_get()).interfaces]
        out["reopen_log_files"] = await code(cfg.reopen_log_files())
        out["reload_config"] = await code(cfg.reload_config())
        out["kill_unknown_node"] = await code(cfg.kill_node(99, "pytest"))
    return out


def check(r: dict[str, Any], reload_answers: set[str]) -> None:
    """What corosync 3.1.7 does (seen live with Debian's daemon)."""
    assert r["track"] == ["NodelistNotification", "QuorumNotification"]
    assert r["nodelist_callback"] == [[7, [1]]]
    # one node vote + one device vote expected: inquorate until the device votes
    assert (r["before"]["expected"], r["before"]["total"], r["before"]["quorum"]) == (2, 1, 2)
    assert r["before"]["flags"] & (INFO_QUORATE | INFO_QDEVICE_REGISTERED) == 0
    reg = r["registered"]
    assert reg["flags"] & INFO_QDEVICE_REGISTERED and reg["name"] == NAME
    assert reg["flags"] & INFO_QDEVICE_CAST_VOTE == 0 and reg["total"] == 1
    assert r["register_other"] == "CS_ERR_EXIST"
    assert r["poll_stale_ring"] == "CS_ERR_MESSAGE_ERROR"
    assert r["poll_wrong_name"] == "CS_ERR_INVALID_PARAM"
    polled = r["polled"]          # the device's vote counts: quorate
    want = INFO_QDEVICE_REGISTERED | INFO_QDEVICE_ALIVE | INFO_QDEVICE_CAST_VOTE | INFO_QUORATE
    assert polled["flags"] & want == want
    assert (polled["total"], polled["qdevice_votes"]) == (2, 1)
    assert r["master_wins"]["flags"] & INFO_QDEVICE_MASTER_WINS
    assert r["updated"]["name"] == RENAMED and r["updated"]["flags"] & INFO_QDEVICE_REGISTERED
    assert r["unregister_old_name"] == "CS_ERR_INVALID_PARAM"
    gone = r["unregistered"]      # device gone, its vote with it
    assert gone["flags"] & (INFO_QDEVICE_REGISTERED | INFO_QDEVICE_CAST_VOTE | INFO_QUORATE) == 0
    assert gone["total"] == 1
    assert r["local"] == 1
    assert r["ring_status"] == [["0 127.0.0.1", "OK"]]
    assert r["reopen_log_files"] == "CS_OK"
    assert r["reload_config"] in reload_answers
    assert r["kill_unknown_node"] == "CS_ERR_NOT_EXIST"


# --------------------------------------------------------------------------------------
# the daemons
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Our executive on 127.0.0.1, clients rendezvous in its own IPC directory."""
    import realcorosync as rc

    work = tmp_path_factory.mktemp("ours-qdevice")
    ipc_dir = work / "ipc"
    conf = work / "corosync.conf"
    conf.write_text(with_device(rc.conf_text(
        cluster_name="trioqd", nodes=[(1, "127.0.0.1")], log=work / "corosync.log",
        token=300, mcastport=rc.free_udp_port(), dirs=work)))
    env = {**os.environ, "COROSYNC_IPC_DIR": str(ipc_dir), "COROSYNC_LOCAL_ADDRS": "127.0.0.1"}
    with open(work / "stderr", "wb") as err:
        proc = subprocess.Popen([*rc.OURS, "-f", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, env=env)
    try:
        def ready() -> bool:
            assert proc.poll() is None, (work / "stderr").read_text(errors="replace")
            try:
                with Cfg.initialize(ipc_dir=ipc_dir) as c:
                    return c.local_get() == 1
            except CsError:
                return False
        rc.wait_for(ready, 30, "our daemon answering cfg")
        yield ipc_dir
    finally:
        rc.stop_process(proc)


@pytest.fixture(scope="module")
def ours_result(ours: Path) -> dict[str, Any]:
    # through JSON like Debian's result, so both compare as the same plain data
    return json.loads(json.dumps(trio.run(scenario, str(ours))))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def debian_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import realcorosync as rc

    rc.require("trio clients against Debian's corosync")
    work = tmp_path_factory.mktemp("debian-qdevice")
    conf = with_device(rc.conf_text(cluster_name="trioqd", nodes=[(1, "127.0.0.1")],
                                    log=work / "corosync.log"))
    with rc.Daemon(work, "debian", conf=conf).running() as daemon:
        p = daemon.python(__file__, timeout=60)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return json.loads(p.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------

def test_trio_qdevice_and_cfg_calls_on_our_daemon(ours_result: dict[str, Any]) -> None:
    # reload_config answers CS_ERR_NOT_SUPPORTED until the executive offers a reload hook
    check(ours_result, {"CS_OK", "CS_ERR_NOT_SUPPORTED"})


def test_trio_qdevice_and_cfg_calls_on_debian_corosync(debian_result: dict[str, Any]) -> None:
    check(debian_result, {"CS_OK"})
    # Debian applies a qdevice call before answering it: nothing to wait for
    assert all(debian_result[k]["settle_ms"] < 1000 for k in ("polled", "updated",
                                                             "unregistered"))


#: Where our executive is known to differ from corosync 3.1.7 (services/votequorum.py):
#: it keeps the device's name in GETINFO after UNREGISTER (corosync clears it).
KNOWN_DIFFERENCES = {("unregistered", "name")}


def test_our_daemon_answers_like_debian(ours_result: dict[str, Any],
                                        debian_result: dict[str, Any]) -> None:
    def comparable(r: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in r.items():
            if isinstance(value, dict):
                value = {k: v for k, v in value.items()
                         if k != "settle_ms" and (key, k) not in KNOWN_DIFFERENCES}
            out[key] = value
        out.pop("reload_config")       # see test_trio_qdevice_and_cfg_calls_on_our_daemon
        return out

    assert comparable(ours_result) == comparable(debian_result)


if __name__ == "__main__":
    # inside a daemon's namespaces: libqb's abstract names, no IPC directory
    print(json.dumps(trio.run(scenario, None)))
