"""Sends a fixed list of raw quorum/votequorum/cfg requests and prints, per request, the
response id, error and size, then the ids/errors/sizes of the events it caused — as JSON.
Run against Debian's corosync and against our services, the two outputs must be equal."""

from __future__ import annotations

import json
import sys

from corosync.lib.ipc import IpcClient
from corosync.lib.proto import cfg as cp
from corosync.lib.proto import quorum as qp
from corosync.lib.proto import votequorum as vp

PROBES: list[tuple[str, int, bytes]] = [
    ("quorum", qp.REQ_GETTYPE, b""),
    ("quorum", qp.REQ_GETQUORATE, b""),
    ("quorum", qp.REQ_TRACKSTOP, b""),
    ("quorum", qp.REQ_TRACKSTART, qp.encode_u32(1)),
    ("quorum", qp.REQ_TRACKSTART, qp.encode_u32(2)),
    ("quorum", qp.REQ_TRACKSTART, qp.encode_u32(2)),
    ("quorum", qp.REQ_TRACKSTOP, b""),
    ("quorum", qp.REQ_MODEL_GETTYPE, qp.encode_u32(7)),
    ("quorum", qp.REQ_MODEL_GETTYPE, qp.encode_u32(1)),
    ("quorum", qp.REQ_TRACKSTART, qp.encode_u32(1)),
    ("votequorum", vp.REQ_GETINFO, vp.enc_getinfo(0)),
    ("votequorum", vp.REQ_GETINFO, vp.enc_getinfo(1)),
    ("votequorum", vp.REQ_GETINFO, vp.enc_getinfo(42)),
    ("votequorum", vp.REQ_TRACKSTOP, b""),
    ("votequorum", vp.REQ_TRACKSTART, vp.enc_trackstart(9, 1)),
    ("votequorum", vp.REQ_TRACKSTART, vp.enc_trackstart(9, 2)),
    ("votequorum", vp.REQ_TRACKSTART, vp.enc_trackstart(9, 2)),
    ("votequorum", vp.REQ_TRACKSTOP, b""),
    ("votequorum", vp.REQ_SETEXPECTED, vp.enc_setexpected(0)),
    ("votequorum", vp.REQ_SETVOTES, vp.enc_setvotes(1, 42)),
    ("votequorum", vp.REQ_SETVOTES, vp.enc_setvotes(0, 1)),
    ("votequorum", vp.REQ_QDEVICE_REGISTER, vp.enc_qdevice_name("Qdevice")),
    ("votequorum", vp.REQ_QDEVICE_UNREGISTER, vp.enc_qdevice_name("Qdevice")),
    ("votequorum", vp.REQ_QDEVICE_UPDATE, vp.enc_qdevice_update("a", "b")),
    ("votequorum", vp.REQ_QDEVICE_POLL, vp.enc_qdevice_poll("Qdevice", True, 1, 1)),
    ("votequorum", vp.REQ_QDEVICE_MASTER_WINS, vp.enc_qdevice_master_wins("Qdevice", True)),
    ("cfg", cp.REQ_LOCAL_GET, b""),
    ("cfg", cp.REQ_GET_NODE_ADDRS, cp.GetNodeAddrsRequest(0).encode()),
    ("cfg", cp.REQ_GET_NODE_ADDRS, cp.GetNodeAddrsRequest(42).encode()),
    ("cfg", cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(1)),
    ("cfg", cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(42)),
    ("cfg", cp.REQ_NODESTATUSGET, cp.enc_nodestatusget(1, 2)),
    ("cfg", cp.REQ_RINGSTATUSGET, b""),
    ("cfg", cp.REQ_RINGREENABLE, b""),
    ("cfg", cp.REQ_REPLYTOSHUTDOWN, cp.enc_u32(1)),
    ("cfg", cp.REQ_TRACKSTART, cp.enc_u32(0)),
    ("cfg", cp.REQ_TRACKSTOP, b""),
    ("cfg", cp.REQ_KILLNODE, cp.enc_killnode(42, "probe")),
    ("cfg", cp.REQ_REOPEN_LOG_FILES, b""),
]


def main() -> None:
    clients = {name: IpcClient.connect(name) for name in ("quorum", "votequorum", "cfg")}
    out = []
    try:
        for service, req, body in PROBES:
            c = clients[service]
            rid, err, payload = c.request(req, body, 10)
            events = []
            while (ev := c.recv_event(0.02)) is not None:  # events precede the response
                events.append([ev[0], ev[1], len(ev[2])])
            out.append([service, req, rid, err, len(payload), events])
    finally:
        for c in clients.values():
            c.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
