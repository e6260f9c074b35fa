"""corosync-totemdump: decode the totem traffic of a pcap/pcapng capture.

Our substitute for Wireshark's corosync dissector (docs/corosync-totemdump.md): one line
(or JSON object) per totem datagram with the totemsrp fields that matter when reading a
membership or delivery problem, the totempg packing of every MCAST and the service /
function name of every executive message in it; then a summary.

Exit status: 0 every totem datagram decoded, 1 some did not, 2 usage or file error.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import Counter
from typing import Any, Iterable, TextIO

from corosync.exec.totem import wire
from corosync.exec.totem.pcap import PcapError, PcapReader, UdpDatagram

DEFAULT_PORTS = (5404, 5405)

TYPE_NAMES = {0: "ORF_TOKEN", 1: "MCAST", 2: "MERGE_DETECT", 3: "JOIN", 4: "COMMIT_TOKEN",
              5: "TOKEN_HOLD_CANCEL"}

#: service id -> (name, {fn id: fn name}); spec §5.2-5.8
SERVICES: dict[int, tuple[str, dict[int, str]]] = {
    0: ("cmap", {0: "mcast"}),
    1: ("cfg", {0: "ringreenable", 1: "killnode", 2: "shutdown", 3: "reload_config",
                4: "crypto_reconfig"}),
    2: ("cpg", {0: "procjoin", 1: "procleave", 2: "joinlist", 3: "mcast", 4: "downlist_old",
                5: "downlist", 6: "partial_mcast"}),
    3: ("quorum", {}),
    4: ("pload", {0: "start", 1: "mcast"}),
    5: ("votequorum", {0: "nodeinfo", 1: "reconfigure", 2: "qdevice_reg",
                       3: "qdevice_reconfigure"}),
    6: ("mon", {}),
    7: ("wd", {}),
}
SYNC_NAMES = {0: "barrier", 1: "service_build"}


def ring_str(r: wire.RingId) -> str:
    return str(r)


def exec_message(msg: bytes, swapped: bool) -> dict[str, Any]:
    """Name one reassembled totempg message: group(s), service.fn and a few details."""
    o = ">" if swapped else "<"
    try:
        groups, off = wire.decode_groups(msg, swapped)
    except wire.WireError as exc:
        return {"error": exc.reason, "len": len(msg)}
    names = [g.decode("ascii", "replace") for g in groups]
    out: dict[str, Any] = {"groups": names, "len": len(msg) - off}
    body = msg[off:]
    if len(body) < 4:
        out["name"] = "?"
        return out
    (ident,) = struct.unpack_from(o + "I", body, 0)
    if names == ["sync"]:
        out["name"] = "sync." + SYNC_NAMES.get(ident, f"id{ident}")
        if ident == 1 and len(body) >= 40:  # service_build: k at @32, ids from @40
            k = struct.unpack_from(o + "i", body, 32)[0]
            if 0 <= k <= 128 and len(body) >= 40 + 4 * k:
                out["services"] = list(struct.unpack_from(f"{o}{k}i", body, 40))
        if len(body) >= 28:
            rep, seq = struct.unpack_from(o + "IQ", body, 16)
            out["ring"] = ring_str(wire.RingId(rep, seq))
        return out
    service, fn = ident >> 16, ident & 0xFFFF
    sname, fns = SERVICES.get(service, (f"svc{service}", {}))
    out["id"] = ident
    out["name"] = f"{sname}.{fns.get(fn, f'fn{fn}')}"
    if service == 2 and fn in (0, 1, 3, 6) and len(body) >= 24:  # cpg group name @16
        ln = struct.unpack_from(o + "I", body, 16)[0]
        if 0 < ln <= 128 and len(body) >= 24 + ln:
            out["group"] = body[24:24 + ln].decode("utf-8", "replace")
    elif service == 5 and fn == 0 and len(body) >= 32:  # votequorum nodeinfo
        nodeid, votes, expected, flags = struct.unpack_from(o + "IIII", body, 16)
        out.update(about=nodeid, votes=votes, expected=expected, flags=flags)
    return out


class Dissector:
    """Turns UDP datagrams into JSON-able records and keeps the summary counters.

    Fragmented totempg messages are reassembled per (sender nodeid, destination) so a
    message split over packets is named once, on the packet that completes it; copies
    already seen (same sender, ring, seq, destination) are marked as duplicates and not
    fed to reassembly again.
    """

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.services: Counter[str] = Counter()
        self.packets = 0
        self._partial: dict[tuple[int, str], bytes] = {}
        self._seen: set[tuple] = set()
        self._t0: float | None = None

    def record(self, d: UdpDatagram) -> dict[str, Any]:
        if self._t0 is None:
            self._t0 = d.timestamp
        self.packets += 1
        rec: dict[str, Any] = {"time": round(d.timestamp, 6),
                               "rel": round(d.timestamp - self._t0, 6),
                               "src": f"{d.src}:{d.sport}", "dst": f"{d.dst}:{d.dport}",
                               "len": len(d.payload)}
        try:
            msg = wire.decode(d.payload)
        except wire.WireError as exc:
            self.errors[exc.reason] += 1
            rec.update(type="ERROR", error=exc.reason, detail=exc.detail)
            return rec
        name = TYPE_NAMES[msg.TYPE]
        if isinstance(msg, wire.Join) and msg.is_leave:
            name = "LEAVE"
        self.types[name] += 1
        rec["type"] = name
        rec["nodeid"] = msg.nodeid
        if isinstance(msg, wire.OrfToken):
            rec.update(ring=ring_str(msg.ring_id), seq=msg.seq, aru=msg.aru,
                       token_seq=msg.token_seq, aru_addr=msg.aru_addr,
                       rtr=len(msg.rtr_list), backlog=msg.backlog, fcc=msg.fcc,
                       retrans_flg=msg.retrans_flg)
            if msg.rtr_list:
                rec["rtr_seqs"] = [i.seq for i in msg.rtr_list]
        elif isinstance(msg, wire.Mcast):
            self._mcast(msg, d, rec)
        elif isinstance(msg, wire.MergeDetect):
            rec.update(ring=ring_str(msg.ring_id), system_from=msg.system_from)
        elif isinstance(msg, wire.Join):
            rec.update(system_from=msg.system_from, ring_seq=msg.ring_seq,
                       proc=list(msg.proc_list), failed=list(msg.failed_list))
            if msg.is_leave and msg.failed_list:
                rec["leaving"] = msg.failed_list[-1]
        elif isinstance(msg, wire.CommitToken):
            rec.update(ring=ring_str(msg.ring_id), token_seq=msg.token_seq,
                       memb_index=msg.memb_index, addrs=list(msg.addr),
                       memb=[{"ring": ring_str(e.ring_id), "aru": e.aru,
                              "high_delivered": e.high_delivered,
                              "received_flg": e.received_flg} for e in msg.memb_list])
        else:
            rec["ring"] = ring_str(msg.ring_id)
        return rec

    def _mcast(self, msg: wire.Mcast, d: UdpDatagram, rec: dict[str, Any]) -> None:
        rec.update(ring=ring_str(msg.ring_id), seq=msg.seq,
                   encap="recovery" if msg.encapsulated == wire.ENCAP_RECOVERY else "normal",
                   guarantee=msg.guarantee)
        inner = msg
        if msg.encapsulated == wire.ENCAP_RECOVERY:
            try:
                inner = wire.decode(msg.payload)
                if not isinstance(inner, wire.Mcast):
                    raise wire.WireError("bad_type", "encapsulated message is not an MCAST")
            except wire.WireError as exc:
                self.errors["inner_" + exc.reason] += 1
                rec["error"] = "inner_" + exc.reason
                return
            rec["inner"] = {"nodeid": inner.nodeid, "ring": ring_str(inner.ring_id),
                            "seq": inner.seq}
        try:
            pg = wire.decode_pg(inner.payload, inner.swapped)
        except wire.WireError as exc:
            self.errors[exc.reason] += 1
            rec["error"] = exc.reason
            return
        rec.update(frag=pg.fragmented, cont=pg.continuation, msgs=len(pg.pieces))
        key = (inner.nodeid, d.dst)
        copy = (inner.nodeid, inner.ring_id, inner.seq, d.dst, msg.encapsulated)
        if copy in self._seen:
            rec["duplicate"] = True
            return
        self._seen.add(copy)
        carry: bytes | None = b""
        if pg.continuation:
            carry = self._partial.pop(key, None)  # None: its start was not captured
        else:
            self._partial.pop(key, None)
        messages: list[dict[str, Any]] = []
        last = len(pg.pieces) - 1
        for i, piece in enumerate(pg.pieces):
            continues = i == 0 and pg.continuation
            if continues and carry is None:
                data = None
            else:
                data = carry + piece if continues else piece
            if i == last and pg.fragmented:
                if data is not None:
                    self._partial[key] = data
                messages.append({"name": "(fragment)", "len": len(piece)})
            elif data is None:
                messages.append({"name": "(continuation of an unseen fragment)",
                                 "len": len(piece)})
            elif continues:
                messages.append(dict(exec_message(data, inner.swapped), reassembled=True))
            else:
                messages.append(exec_message(data, inner.swapped))
        for m in messages:
            if "groups" in m:
                self.services[m.get("name", "?")] += 1
        rec["messages"] = messages

    def summary(self) -> dict[str, Any]:
        return {"summary": {"packets": self.packets, "types": dict(sorted(self.types.items())),
                            "messages": dict(sorted(self.services.items())),
                            "decode_errors": sum(self.errors.values()),
                            "errors": dict(sorted(self.errors.items()))}}


# ------------------------------------------------------------------ text output
def _msg_text(m: dict[str, Any]) -> str:
    name = m.get("name") or m.get("error", "?")
    grp = "[" + ",".join(m["groups"]) + "] " if "groups" in m else ""
    extra = []
    for key in ("group", "services", "about", "votes", "expected", "flags"):
        if key in m:
            extra.append(f"{key}={m[key]}")
    if m.get("reassembled"):
        extra.append("reassembled")
    return f"{grp}{name}({m.get('len', 0)}{' ' + ' '.join(extra) if extra else ''})"


def text_line(rec: dict[str, Any]) -> str:
    head = f"{rec['rel']:11.6f} {rec['src']} -> {rec['dst']} {rec['type']}"
    t = rec["type"]
    if t == "ERROR":
        return f"{head} {rec['error']}: {rec['detail']} ({rec['len']} bytes)"
    parts = [f"nodeid={rec['nodeid']}"]
    if "ring" in rec:
        parts.append(f"ring={rec['ring']}")
    if t == "ORF_TOKEN":
        parts += [f"seq={rec['seq']}", f"aru={rec['aru']}", f"token_seq={rec['token_seq']}",
                  f"aru_addr={rec['aru_addr']}", f"rtr={rec['rtr']}",
                  f"backlog={rec['backlog']}", f"fcc={rec['fcc']}"]
        if rec["retrans_flg"]:
            parts.append(f"retrans_flg={rec['retrans_flg']}")
        if rec.get("rtr_seqs"):
            parts.append("rtr_seqs=" + ",".join(map(str, rec["rtr_seqs"])))
    elif t == "MCAST":
        parts += [f"seq={rec['seq']}", f"encap={rec['encap']}"]
        if "inner" in rec:
            i = rec["inner"]
            parts.append(f"inner=(nodeid={i['nodeid']} ring={i['ring']} seq={i['seq']})")
        if "error" in rec:
            parts.append(f"ERROR {rec['error']}")
        if "msgs" in rec:
            parts.append(f"pg(frag={rec['frag']} cont={rec['cont']} msgs={rec['msgs']})")
        if rec.get("duplicate"):
            parts.append("duplicate")
        if rec.get("messages"):
            parts.append(" ".join(_msg_text(m) for m in rec["messages"]))
    elif t in ("JOIN", "LEAVE"):
        parts += [f"system_from={rec['system_from']}", f"ring_seq={rec['ring_seq']}",
                  f"proc={rec['proc']}", f"failed={rec['failed']}"]
        if "leaving" in rec:
            parts.append(f"leaving={rec['leaving']}")
    elif t == "MERGE_DETECT":
        parts.append(f"system_from={rec['system_from']}")
    elif t == "COMMIT_TOKEN":
        memb = ", ".join(f"{e['ring']}/aru={e['aru']}/hd={e['high_delivered']}"
                         f"/rf={e['received_flg']}" for e in rec["memb"])
        parts += [f"token_seq={rec['token_seq']}", f"memb_index={rec['memb_index']}",
                  f"addrs={rec['addrs']}", f"memb=[{memb}]"]
    return head + " " + " ".join(parts)


def summary_text(s: dict[str, Any]) -> list[str]:
    s = s["summary"]
    lines = [f"summary: {s['packets']} totem packets, {s['decode_errors']} decode errors"]
    lines += [f"  {name:18} {n}" for name, n in s["types"].items()]
    if s["messages"]:
        lines.append("  executive messages:")
        lines += [f"    {name:30} {n}" for name, n in s["messages"].items()]
    if s["errors"]:
        lines.append("  errors:")
        lines += [f"    {name:30} {n}" for name, n in s["errors"].items()]
    return lines


def dump(diss: Dissector, datagrams: Iterable[UdpDatagram], ports: tuple[int, ...],
         as_json: bool, out: TextIO) -> None:
    """Write one line/object per totem datagram (on ``ports``) to ``out``."""
    for d in datagrams:
        if d.dport not in ports and d.sport not in ports:
            continue
        rec = diss.record(d)
        out.write((json.dumps(rec, separators=(",", ":")) if as_json else text_line(rec))
                  + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="corosync-totemdump",
        description="Decode corosync 3.1.7 totem (udp/udpu) traffic from a pcap/pcapng file.")
    ap.add_argument("file", help="capture file (pcap or pcapng)")
    ap.add_argument("--json", action="store_true",
                    help="one JSON object per packet, then a summary object")
    ap.add_argument("--port", type=int, action="append", metavar="PORT",
                    help="UDP port carrying totem (repeatable; default 5404 and 5405)")
    args = ap.parse_args(argv)
    ports = tuple(args.port) if args.port else DEFAULT_PORTS
    out = sys.stdout
    try:
        f = open(args.file, "rb")
    except OSError as exc:
        print(f"corosync-totemdump: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    file_error = None
    diss = Dissector()
    try:
        with f:
            reader = PcapReader(f, args.file)
            try:
                dump(diss, reader, ports, args.json, out)
            except PcapError as exc:
                file_error = str(exc)
        summary = diss.summary()
        if args.json:
            out.write(json.dumps(summary, separators=(",", ":")) + "\n")
        else:
            out.write("\n".join(summary_text(summary)) + "\n")
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (e.g. `| head`): not an error of ours
        return 0
    if file_error:
        print(f"corosync-totemdump: {file_error}", file=sys.stderr)
        return 2
    return 1 if diss.errors else 0


if __name__ == "__main__":
    sys.exit(main())
