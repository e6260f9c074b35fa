"""A CPG client speaking the raw IPC protocol through lib/ipc.py (works against our
executive and against Debian's corosync).

``python svc_cpg_client.py GROUP TEXT PEERS [stay]``: join GROUP, wait until PEERS processes
are members, mcast TEXT, wait for PEERS deliveries; with "stay" also wait for a process to
leave.  Prints one JSON object.

``python svc_cpg_client.py watch GROUP``: join GROUP and print every CONFCHG/DELIVER event
as a JSON line (``{"pid": …}`` first) until stdin is closed.

``python svc_cpg_client.py iterate``: print the ITERATION_ALL list as JSON
([group, nodeid, pid] in the executive's order) — what corosync-cpgtool shows."""

from __future__ import annotations

import json
import os
import select
import struct
import sys
import time

from corosync.lib.ipc import IpcClient

JOIN, MCAST, MEMBERSHIP = 0, 2, 3
CONFCHG, DELIVER, TOTEM = 4, 5, 13


def parse(ev: tuple[int, int, bytes]) -> dict | None:
    eid, _err, body = ev
    if eid == CONFCHG:
        m, j, lft = struct.unpack_from("<I4xI4xI", body, 136)
        ents = [list(struct.unpack_from("<I4xI4xI", body, 160 + 24 * i))
                for i in range(m + j + lft)]
        return {"confchg": [ents[:m], ents[m + lft:], ents[m:m + lft]]}
    if eid == DELIVER:
        msglen, nodeid, pid = struct.unpack_from("<I4xI4xI", body, 136)
        return {"deliver": [nodeid, pid, body[160:160 + msglen].decode()]}
    return None


def join(c: IpcClient, group: bytes) -> list:
    while True:
        rid, err, _ = c.request(JOIN, struct.pack("<I4x128sI4xI4x", len(group), group,
                                                  os.getpid(), 0), 10)
        if err != 6:  # TRY_AGAIN while sync runs
            return [rid, err]
        time.sleep(0.1)


def watch(group: bytes) -> None:
    c = IpcClient.connect("cpg", timeout=10)
    print(json.dumps({"pid": os.getpid(), "join": join(c, group)}), flush=True)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.05)
        if ready and not sys.stdin.read(1):
            break
        try:
            ev = c.recv_event(0.05)
        except Exception as exc:  # the executive went away
            print(json.dumps({"gone": str(exc)}), flush=True)
            break
        while ev is not None:
            line = parse(ev)
            if line is not None:
                print(json.dumps(line), flush=True)
            ev = c.recv_event(0)
    c.close()


def iterate() -> None:
    with IpcClient.connect("cpg", timeout=10) as c:
        _rid, err, body = c.request(5, bytes(136) + struct.pack("<I", 3), 10)
        assert err == 1, err
        out = []
        while True:
            _rid, err, item = c.request(6, body, 10)
            if err != 1:
                break
            length = struct.unpack_from("<I", item, 0)[0]
            out.append([item[8:8 + length].decode(), *struct.unpack_from("<II", item, 136)])
        c.request(7, body, 10)
        print(json.dumps(out), flush=True)


def main() -> None:
    if sys.argv[1] == "iterate":
        iterate()
        return
    if sys.argv[1] == "watch":
        watch(sys.argv[2].encode())
        return
    group, text, peers = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
    stay = len(sys.argv) > 4
    out: dict = {"confchg": [], "deliver": [], "pid": os.getpid()}
    deadline = time.monotonic() + 30
    c = IpcClient.connect("cpg", timeout=10)
    while True:
        rid, err, _ = c.request(JOIN, struct.pack("<I4x128sI4xI4x", len(group), group,
                                                  os.getpid(), 0), 10)
        if err != 6:  # TRY_AGAIN while sync runs
            break
        time.sleep(0.1)
    out["join"] = [rid, err]

    def pump(timeout: float) -> None:
        ev = c.recv_event(timeout)
        while ev is not None:
            eid, _err, body = ev
            if eid == CONFCHG:
                m, j, lft = struct.unpack_from("<I4xI4xI", body, 136)
                ents = [list(struct.unpack_from("<I4xI4xI", body, 160 + 24 * i))
                        for i in range(m + j + lft)]
                out["confchg"].append([ents[:m], ents[m + lft:], ents[m:m + lft]])
            elif eid == DELIVER:
                msglen, nodeid, pid = struct.unpack_from("<I4xI4xI", body, 136)
                out["deliver"].append([nodeid, pid, body[160:160 + msglen].decode()])
            ev = c.recv_event(0)

    while not (out["confchg"] and len(out["confchg"][-1][0]) >= peers):
        pump(0.2)
        assert time.monotonic() < deadline, out
    c.send(struct.pack("<i4xi4xi4xI4xI4x", MCAST, 40 + len(text), 0, 2, len(text)) + text,
           fc_enable_max=2)
    while len(out["deliver"]) < peers:
        pump(0.2)
        assert time.monotonic() < deadline, out
    if stay:
        while not out["confchg"][-1][2]:
            pump(0.2)
            assert time.monotonic() < deadline, out
    c.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
