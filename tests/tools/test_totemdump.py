"""corosync-totemdump on the shared captures and on crafted ones (errors, recovery
encapsulation, byte-swapped senders, fragments), text and JSON, exit codes."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest

from corosync.exec.totem import wire
from corosync.tools import totemdump


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = totemdump.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def capture(shared_dir, name: str) -> str:
    return str(shared_dir / "spec" / "captures" / name)


def test_udpu_text(shared_dir, capsys):
    rc, out, err = run(capsys, capture(shared_dir, "udpu_2node.pcap"))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    packets = [ln for ln in lines if " -> " in ln]
    assert len(packets) == 1065
    assert lines[len(packets)] == "summary: 1065 totem packets, 0 decode errors"
    text = "\n".join(packets)
    # appendix A.7: the commit token's first hop and the node-2 LEAVE of §2.7
    assert ("COMMIT_TOKEN nodeid=1 ring=1.9 token_seq=1 memb_index=1 addrs=[1, 2] "
            "memb=[1.5/aru=8/hd=8/rf=1, 0.0/aru=0/hd=0/rf=0]") in text
    assert "LEAVE nodeid=0 system_from=2 ring_seq=9 proc=[1] failed=[2] leaving=2" in text
    assert ("ORF_TOKEN nodeid=2 ring=1.9 seq=0 aru=4294967295 token_seq=1 aru_addr=1 rtr=0"
            in text)
    assert "[sync] sync.service_build(552 services=[0, 2, 3, 5])" in text
    assert "pg(frag=0 cont=1 msgs=1) [a] cpg.downlist(1568 reassembled)" in text
    assert "[a] cpg.procjoin(168 group=grp1)" in text
    assert "[a] cpg.mcast(194 group=grp1)" in text  # appendix A.6
    assert ("[a] votequorum.nodeinfo(32 about=1 votes=1 expected=2 flags=12) "
            "[a] votequorum.nodeinfo(32 about=0 votes=0 expected=0 flags=0) "
            "[sync] sync.barrier(32)") in text
    summary = "\n".join(lines[len(packets):])
    for needle in ("ORF_TOKEN          871", "LEAVE              1", "JOIN               9",
                   "cpg.joinlist                   2", "sync.barrier                   28"):
        assert needle in summary


def test_udp_json(shared_dir, capsys):
    rc, out, _ = run(capsys, capture(shared_dir, "udp_2node.pcap"), "--json")
    assert rc == 0
    objs = [json.loads(ln) for ln in out.splitlines()]
    packets, summary = objs[:-1], objs[-1]["summary"]
    assert len(packets) == summary["packets"] == 259
    assert summary["types"] == {"COMMIT_TOKEN": 4, "JOIN": 6, "LEAVE": 2, "MCAST": 37,
                                "MERGE_DETECT": 46, "ORF_TOKEN": 164}
    assert summary["decode_errors"] == 0
    assert all(p["dst"].endswith(":5405") and p["src"].endswith(":5404") for p in packets)
    mcast = [p for p in packets if p["type"] == "MCAST"]
    assert all(p["messages"] for p in mcast)
    downlists = [m for p in mcast for m in p["messages"] if m.get("name") == "cpg.downlist"]
    assert downlists and all(m["reassembled"] and m["id"] == 0x00020005 for m in downlists)
    commit = next(p for p in packets if p["type"] == "COMMIT_TOKEN")
    assert set(commit) >= {"ring", "token_seq", "memb_index", "addrs", "memb"}
    leave = [p for p in packets if p["type"] == "LEAVE"]
    assert all(p["nodeid"] == 0 and p["leaving"] == p["failed"][-1] for p in leave)


# ------------------------------------------------------------------ crafted captures
def _pcap(datagrams: list[tuple[int, int, bytes]]) -> bytes:
    """Ethernet/IPv4 pcap of (sport, dport, payload) datagrams, 10.0.0.1 -> 10.0.0.2."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, (sport, dport, payload) in enumerate(datagrams):
        udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        out += struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame
    return out


def _exec(service: int, fn: int, size: int, group: bytes = b"a") -> bytes:
    body = struct.pack("<i4xi4x", (service << 16) | fn, size) + bytes(size - 16)
    return wire.encode_groups([group]) + body


R = wire.RingId(1, 0x21)


def _mcast(seq: int, pg: bytes, nodeid: int = 1, encap: int = wire.ENCAP_NORMAL) -> bytes:
    return wire.Mcast(nodeid, nodeid, seq, R, pg, encapsulated=encap).encode()


@pytest.fixture
def crafted(tmp_path):
    inner = wire.Mcast(2, 2, 7, wire.RingId(1, 0x1D), wire.encode_pg(
        0, 0, [_exec(1, 2, 16)])).encode()
    big_msg = _exec(2, 6, 1500)
    swapped_pg = (struct.pack(">hhBBH", 0, 0, 0, 0, 1) + struct.pack(">H", 5 + 32)
                  + struct.pack(">HH", 1, 1) + b"a"
                  + struct.pack(">i4xi4x", 0x00050000, 32) + bytes(16))
    swapped = (struct.pack(">HBBBII", 0xC070, 3, 1, 2, 3, 0)
               + struct.pack(">IIiIQIi", 3, 9, 0, 1, 0x21, 0, 0) + swapped_pg)
    datagrams = [
        (5405, 5405, wire.OrfToken(1, 4, 9, 4, 0, R).encode()),
        (5404, 5405, _mcast(1, wire.encode_pg(0, 0, [_exec(2, 3, 200), _exec(9, 4, 16),
                                                     _exec(0, 0, 48, b"sync")]))),
        (5404, 5405, _mcast(2, wire.encode_pg(1, 0, [big_msg[:1000]]))),
        (5404, 5405, _mcast(2, wire.encode_pg(1, 0, [big_msg[:1000]]))),  # duplicate copy
        (5404, 5405, _mcast(3, wire.encode_pg(0, 1, [big_msg[1000:]]))),
        (5404, 5405, _mcast(4, wire.encode_pg(0, 3, [b"tail-of-unseen"]))),
        (5404, 5405, _mcast(5, inner, nodeid=1, encap=wire.ENCAP_RECOVERY)),
        (5404, 5405, swapped),
        (5404, 5405, _mcast(6, b"\x00\x00\x00\x00\x00\x00\x05\x00")),  # pg_truncated
        (5405, 5405, b"\xfe\xfe" + bytes(40)),                             # bad_magic
        (5405, 5405, wire.OrfToken(1, 4, 9, 4, 0, R).encode()[:40]),       # truncated
        (40000, 40001, b"not totem at all"),                               # skipped
    ]
    path = tmp_path / "crafted.pcap"
    path.write_bytes(_pcap(datagrams))
    return str(path)


def test_crafted_text(crafted, capsys):
    rc, out, _ = run(capsys, crafted)
    assert rc == 1
    lines = out.splitlines()
    assert "[a] cpg.mcast(200) [a] svc9.fn4(16) [sync] sync.barrier(48)" in lines[1]
    assert lines[2].endswith("pg(frag=1 cont=0 msgs=1) (fragment)(1000)")
    assert "duplicate" in lines[3]
    assert lines[4].endswith("[a] cpg.partial_mcast(1500 reassembled)")
    assert "(continuation of an unseen fragment)(14)" in lines[5]
    assert ("encap=recovery inner=(nodeid=2 ring=1.1d seq=7) pg(frag=0 cont=0 msgs=1) "
            "[a] cfg.shutdown(16)") in lines[6]
    assert "MCAST nodeid=3 ring=1.21 seq=9" in lines[7]
    assert "[a] votequorum.nodeinfo(32 about=0 votes=0 expected=0 flags=0)" in lines[7]
    assert "ERROR pg_truncated" in lines[8]
    assert " ERROR bad_magic: 0xfefe (42 bytes)" in lines[9]
    assert " ERROR truncated: orf token of 40 bytes" in lines[10]
    assert lines[11] == "summary: 11 totem packets, 3 decode errors"


def test_crafted_json_and_ports(crafted, capsys):
    rc, out, _ = run(capsys, crafted, "--json")
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 1
    assert objs[-1]["summary"]["errors"] == {"bad_magic": 1, "pg_truncated": 1, "truncated": 1}
    assert objs[-1]["summary"]["packets"] == 11
    rc, out, _ = run(capsys, crafted, "--json", "--port", "40001")
    objs = [json.loads(ln) for ln in out.splitlines()]
    assert rc == 1 and objs[0]["type"] == "ERROR" and objs[-1]["summary"]["packets"] == 1


def test_file_and_usage_errors(tmp_path, capsys, shared_dir):
    rc, _, err = run(capsys, str(tmp_path / "missing.pcap"))
    assert rc == 2 and "missing.pcap" in err
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"hello, not a capture")
    rc, _, err = run(capsys, str(junk))
    assert rc == 2 and "not a pcap" in err
    data = open(capture(shared_dir, "udp_2node.pcap"), "rb").read()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2])
    rc, out, err = run(capsys, str(cut))
    assert rc == 2 and "truncated record" in err
    assert "summary:" in out and out.count(" -> ") > 50  # what came before is shown
    with pytest.raises(SystemExit) as exc:
        totemdump.main([])
    assert exc.value.code == 2


def test_console_script(shared_dir):
    exe = shutil.which("corosync-totemdump")
    cmd = [exe] if exe else [sys.executable, "-m", "corosync.tools.totemdump"]
    proc = subprocess.run(cmd + [capture(shared_dir, "udp_2node.pcap"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["summary"]["packets"] == 259
