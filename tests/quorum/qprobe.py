"""Sends a fixed list of raw quorum/votequorum/cfg requests and prints, per request, the
response id, error, size and decoded fields (ring ids left out), then the same for the events
it caused — as JSON.
Run against Debian's corosync and against our services, the two outputs must be equal."""

from __future__ import annotations

import json
import sys

import attrs

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


#: decoders of response/event bodies, by (service, message id); ring ids are left out
#: (they differ between daemons), everything else is compared field by field
DECODERS = {
    ("quorum", qp.RES_GETQUORATE): lambda b: qp.decode_u32(b, "q"),
    ("quorum", qp.RES_GETTYPE): lambda b: qp.decode_u32(b, "q"),
    ("quorum", qp.RES_MODEL_GETTYPE): lambda b: qp.decode_u32(b, "q"),
    ("quorum", qp.EV_NOTIFICATION): qp.Notification.decode,
    ("quorum", qp.EV_V1_QUORUM_NOTIFICATION): qp.V1QuorumNotification.decode,
    ("quorum", qp.EV_V1_NODELIST_NOTIFICATION): qp.V1NodelistNotification.decode,
    ("votequorum", vp.RES_GETINFO): vp.NodeInfo.decode,
    ("votequorum", vp.EV_QUORUM_NOTIFICATION): vp.QuorumNotification.decode,
    ("votequorum", vp.EV_NODELIST_NOTIFICATION): vp.NodelistNotification.decode,
    ("cfg", cp.RES_LOCAL_GET): lambda b: cp.dec_u32(b, "c"),
    ("cfg", cp.RES_GET_NODE_ADDRS): cp.GetNodeAddrsResponse.decode,
    ("cfg", cp.RES_RINGSTATUSGET): cp.RingStatus.decode,
    ("cfg", cp.RES_NODESTATUSGET): cp.NodeStatus.decode,
}


def summary(service: str, msg_id: int, error: int, body: bytes) -> object:
    fn = DECODERS.get((service, msg_id))
    if fn is None or error != 1:
        return None
    value = fn(body)
    if attrs.has(type(value)):
        fields = attrs.asdict(value)
        for key in ("ring_seq", "ring_nodeid"):
            fields.pop(key, None)
        return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}
    return value


def main() -> None:
    clients = {name: IpcClient.connect(name) for name in ("quorum", "votequorum", "cfg")}
    out = []
    try:
        for service, req, body in PROBES:
            c = clients[service]
            rid, err, payload = c.request(req, body, 10)
            events = []
            while (ev := c.recv_event(0.02)) is not None:  # events precede the response
                events.append([ev[0], ev[1], len(ev[2]), summary(service, ev[0], ev[1], ev[2])])
            out.append([service, req, rid, err, len(payload), summary(service, rid, err, payload),
                        events])
    finally:
        for c in clients.values():
            c.close()
    json.dump(out, sys.stdout, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))


if __name__ == "__main__":
    main()
