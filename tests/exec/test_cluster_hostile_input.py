"""Hostile datagrams at a running daemon: it must drop them, stay up and keep its ring.

The datagrams come from a *listed* source IP (so they pass block_unlisted_ips and reach
Totem): real totem packets of another cluster (the shared udpu capture), truncations and
bit flips of them, and random bytes.
"""

from __future__ import annotations

import random
import socket

from exec_testlib import wait_until

from corosync.exec.totem.pcap import read_udp


def test_garbage_and_mutated_packets_do_not_hurt(cluster_factory, shared_dir):
    c = cluster_factory(2)
    c.start()
    c.wait_members([1, 2])
    packets = [d.payload for d in read_udp(str(shared_dir / "spec/captures/udpu_2node.pcap"))
               if d.payload]
    assert packets
    rng = random.Random(1234)
    hostile: list[bytes] = []
    for p in packets[:200]:
        hostile.append(p[: rng.randrange(0, len(p))])  # truncated
        b = bytearray(p)
        for _ in range(3):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        hostile.append(bytes(b))  # bit flips
    hostile += [rng.randbytes(rng.randrange(1, 1500)) for _ in range(300)]
    hostile += [bytes([t, 0, 0x22, 0xFF]) + rng.randbytes(40) for t in range(8)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    try:
        for h in hostile:
            sock.sendto(h, ("127.0.0.1", c.port))
        for p in packets:  # a whole foreign cluster's conversation, replayed
            sock.sendto(p, ("127.0.0.1", c.port))
    finally:
        sock.close()
    # Barrier: kill n2; n1 can only form its singleton ring after its own JOIN came back
    # through its socket, i.e. after every hostile datagram queued before it was handled.
    c[2].kill()
    c.wait_members([1], timeout=15)
    assert "Received invalid totem message" in c[1].log()
    c[2].start()
    c.wait_members([1, 2], timeout=15)
    wait_until(lambda: c[1].alive() and c[2].alive(), 1, "both daemons alive")
    for n in (1, 2):
        assert "Internal error" not in c[n].log(), c[n].log()[-3000:]
        assert "Traceback" not in (c[n].dir / "stderr").read_text()
