"""Client scenarios run *inside* the real daemon's namespaces (python clients_scenarios.py NAME).

Each prints one JSON object with what it observed; ``cpg_peer`` instead streams one JSON line
per event and takes commands on stdin (see :func:`cpg_peer`).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

from corosync.cmap import (AsyncCmap, Cmap, CmapValue, CsError, DispatchFlags, MapId,
                           TrackType, ValueType)
from corosync.cpg import AsyncCpg, Cpg, Guarantee, IterationType, ModelFlags


def code(fn: Any, *args: Any) -> int | None:
    try:
        fn(*args)
    except CsError as exc:
        return int(exc.code)
    return None


def cmap_sync() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Cmap.initialize(MapId.DEFAULT) as h:
        out["cluster_name"] = h.get("totem.cluster_name").value
        out["token"] = h.get_uint32("totem.token")
        out["nodeid_typed_mismatch"] = code(h.get_string, "totem.token")
        values = {"i8": -5, "u8": 200, "i16": -300, "u16": 60000, "i32": -70000,
                  "u32": 4000000000, "i64": -(1 << 40), "u64": (1 << 63) + 5, "flt": 1.5,
                  "dbl": -2.25, "str": "hello world", "bin": "00ff5c41"}
        for tag, value in values.items():
            vtype = ValueType.from_tag(tag)
            h.set(f"clienttest.v.{tag}", bytes.fromhex(value) if tag == "bin" else value, vtype)
        got = {}
        for key, val in h.items("clienttest.v."):
            v = val.value.hex() if isinstance(val.value, bytes) else val.value
            got[key.rsplit(".", 1)[1]] = [val.type.tag, v]
        out["roundtrip"] = got
        out["expected"] = {k: [k, v] for k, v in values.items()}
        out["iter_keys"] = [e.key for e in h.iter_prefix("clienttest.v.")]
        out["iter_lens"] = {e.key: e.value_len for e in h.iter_prefix("clienttest.v.")}
        h.inc("clienttest.v.u8")
        h.inc("clienttest.v.u8")
        h.dec("clienttest.v.i8")
        out["after_adjust"] = [h.get_uint8("clienttest.v.u8"), h.get_int8("clienttest.v.i8")]
        out["info"] = list(h.get_info("clienttest.v.str"))
        h.delete("clienttest.v.str")
        out["deleted"] = code(h.get, "clienttest.v.str")
        out["delete_missing"] = code(h.delete, "clienttest.v.str")
        out["readonly"] = code(h.set_uint32, "runtime.config.totem.token", 5)

        notes: list[Any] = []
        th = h.track_add("clienttest.t.", TrackType.ADD | TrackType.MODIFY | TrackType.DELETE
                         | TrackType.PREFIX, notes.append, user_data="ud")
        single: list[Any] = []
        h.track_add("clienttest.t.only", TrackType.MODIFY, single.append)
        h.set_string("clienttest.t.a", "one")
        h.set_string("clienttest.t.a", "two")
        h.set_string("clienttest.t.a", "two")        # equal value: no event
        h.set_uint32("clienttest.t.only", 1)
        h.set_uint32("clienttest.t.only", 2)
        h.delete("clienttest.t.a")
        deadline = time.monotonic() + 10
        while (len(notes) < 5 or len(single) < 1) and time.monotonic() < deadline:
            select.select([h.fileno()], [], [], 1.0)
            h.dispatch(DispatchFlags.ALL)

        def show(v: CmapValue | None) -> Any:
            return None if v is None else [v.type.tag, v.value]

        out["notes"] = [[n.event.name, n.key, show(n.new_value), show(n.old_value)]
                        for n in notes]
        out["notes_meta"] = [notes[0].track_handle == th, notes[0].user_data]
        out["single"] = [[n.event.name, n.key, show(n.new_value)] for n in single]
        h.track_delete(th)
        h.set_string("clienttest.t.b", "after delete")
        h.dispatch(DispatchFlags.ALL)
        out["after_track_delete"] = len(notes)
        for key in [e.key for e in h.iter_prefix("clienttest.")]:
            h.delete(key)
    with Cmap.initialize(MapId.STATS) as s:
        out["stats_keys"] = sum(1 for _ in s.iter_prefix("stats.srp."))
        out["stats_readonly"] = code(s.set_uint32, "stats.srp.orf_token_tx", 1)
    return out


async def cmap_async() -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with await AsyncCmap.initialize() as h:
        await h.set("asynctest.x", 7, ValueType.UINT16)
        out["get"] = (await h.get("asynctest.x")).value
        out["keys"] = [e.key async for e in h.iter_prefix("asynctest.")]
        await h.track_add("asynctest.", TrackType.ADD | TrackType.MODIFY | TrackType.DELETE
                          | TrackType.PREFIX)
        await h.set("asynctest.y", "v", ValueType.STRING)
        await h.inc("asynctest.x")
        await h.delete("asynctest.y")
        seen = []
        async for note in h.notifications():
            seen.append([note.event.name, note.key])
            if len(seen) == 3:
                break
        out["notes"] = seen
        await h.delete("asynctest.x")
    return out


async def cpg_async() -> dict[str, Any]:
    out: dict[str, Any] = {"events": []}
    async with await AsyncCpg.model_initialize(
            flags=ModelFlags.DELIVER_INITIAL_TOTEM_CONF) as h:
        out["local"] = await h.local_get()
        await h.join(b"async group")
        await h.mcast_joined(Guarantee.AGREED, b"x" * 100, b"y")
        async for ev in h.events():
            out["events"].append(type(ev).__name__)
            if type(ev).__name__ == "DeliverEvent":
                out["message"] = [len(ev.message), ev.pid == os.getpid()]
                break
        out["membership"] = [[a.nodeid, a.pid == os.getpid()]
                             for a in await h.membership_get(b"async group")]
        out["groups"] = [d.group.decode() async for d in h.iteration(IterationType.NAME_ONLY)]
        await h.leave(b"async group")
    return out


def mcast_retrying(h: Cpg, payload: bytes) -> None:
    """What applications do with CS_ERR_TRY_AGAIN (executive flow control): handle pending
    events, then send again."""
    while True:
        try:
            h.mcast_joined(Guarantee.AGREED, payload)
            return
        except CsError as exc:
            if int(exc.code) != 6:
                raise
            h.dispatch(DispatchFlags.ALL)
            time.sleep(0.001)


def cpg_peer(group_arg: str) -> None:
    """Join the group (``hex:...`` for arbitrary bytes) and stream events as JSON lines;
    stdin commands: ``send N TAG``, ``sendbig N``, ``leave``, ``membership``; EOF exits
    without leaving."""
    group = (bytes.fromhex(group_arg[4:]) if group_arg.startswith("hex:")
             else group_arg.encode())

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def confchg(h: Any, grp: bytes, members: Any, left: Any, joined: Any) -> None:
        emit({"ev": "confchg", "members": [[a.nodeid, a.pid] for a in members],
              "left": [[a.nodeid, a.pid, a.reason] for a in left],
              "joined": [[a.nodeid, a.pid, a.reason] for a in joined]})

    def deliver(h: Any, grp: bytes, nodeid: int, pid: int, msg: bytes) -> None:
        emit({"ev": "deliver", "nodeid": nodeid, "pid": pid,
              "msg": msg.decode() if len(msg) < 100 else f"big:{len(msg)}:{msg[:8].hex()}"})

    def totem(h: Any, ring: Any, members: list[int]) -> None:
        emit({"ev": "totem", "ring": str(ring), "members": members})

    h = Cpg.model_initialize(deliver=deliver, confchg=confchg, totem_confchg=totem,
                             flags=ModelFlags.DELIVER_INITIAL_TOTEM_CONF)
    h.join(group)
    emit({"ev": "joined", "pid": os.getpid()})
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    pending = b""
    while True:
        ready, _, _ = select.select([h.fileno(), stdin], [], [])
        if h.fileno() in ready:
            h.dispatch(DispatchFlags.ALL)
        if stdin in ready:
            data = os.read(stdin.fileno(), 4096)
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode().split()
                if cmd[0] == "send":
                    for i in range(int(cmd[1])):
                        mcast_retrying(h, f"{cmd[2]}-{i}".encode())
                    emit({"ev": "sent", "n": int(cmd[1])})
                elif cmd[0] == "sendbig":
                    mcast_retrying(h, bytes(range(256)) * int(cmd[1]))
                    emit({"ev": "sent", "n": 1})
                elif cmd[0] == "leave":
                    h.leave(group)
                    emit({"ev": "leave_sent"})
                elif cmd[0] == "membership":
                    emit({"ev": "membership", "members": [[a.nodeid, a.pid] for a in
                                                         h.membership_get(group)]})


def cmapctl_batch() -> list[list[Any]]:
    """Run our corosync-cmapctl once per command of a JSON list on stdin ([argv, stdin hex])
    in this one process (saves a Python start-up per command); returns [rc, out, err] hex."""
    import io

    from corosync.cmap import Cmap
    from corosync.tools.cmapctl import CmapCtl

    results = []
    for argv, stdin_hex in json.loads(sys.stdin.read()):
        out, err = io.BytesIO(), io.BytesIO()
        tool = CmapCtl(out, err, io.BytesIO(bytes.fromhex(stdin_hex)),
                       connect=lambda m: Cmap.initialize(m), sleep=time.sleep)
        rc = tool.main(argv)
        results.append([rc, out.getvalue().hex(), err.getvalue().hex()])
    return results


def main() -> None:
    name = sys.argv[1]
    if name == "cmapctl_batch":
        print(json.dumps(cmapctl_batch()))
        return
    if name == "cpg_peer":
        cpg_peer(sys.argv[2])
        return
    if name == "cmap_sync":
        result = cmap_sync()
    else:
        import trio
        result = trio.run(cmap_async if name == "cmap_async" else cpg_async)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
