"""A 3-node IPv6 ring of our daemons, one network namespace per node.

Loopback cannot host a multi-node IPv6 cluster (``::1`` is the only IPv6 loopback
address), so each daemon runs in a namespace of its own with a veth whose peer sits on a
bridge in a further namespace — the layout ``corosync-localcluster up --netns`` builds —
and the nodes get fd00:198:18::1..3/64 (our own ULA test prefix, nothing else is used).

Addresses are added with ``nodad`` and the namespaces default to ``accept_dad=0`` so no
address is ever tentative (a tentative address cannot be bound).  The bridge's multicast
snooping is off, so it floods group traffic to every port: whether the udp test passes
then depends on the nodes' own IPV6_JOIN_GROUP, not on the bridge's MLD querier logic.

Each daemon discovers its own address from the interfaces of its namespace (no
``COROSYNC_LOCAL_ADDRS``), exactly as on a real host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

import exec_testlib as lib

PREFIX = "fd00:198:18::"
NODES = [(i, f"{PREFIX}{i}") for i in (1, 2, 3)]


class Ipv6Net:
    """Namespaces n1..n3 plus a bridge namespace, every one created by name and removed
    by that name in :meth:`down` (also after a partial :meth:`up`)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bridge = f"cpy6-{tag}-br"
        self.nodes = {nid: f"cpy6-{tag}-n{nid}" for nid, _ in NODES}
        self.created: list[str] = []

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def _add_ns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self.created.append(name)
        self._ip("-n", name, "link", "set", "lo", "up")
        for key in ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", key],
                           capture_output=True)

    def up(self) -> None:
        self._add_ns(self.bridge)
        self._ip("-n", self.bridge, "link", "add", "br0", "type", "bridge",
                 "mcast_snooping", "0")
        self._ip("-n", self.bridge, "link", "set", "br0", "up")
        for nid, ip in NODES:
            ns = self.nodes[nid]
            self._add_ns(ns)
            # veth created directly with one end in each namespace: nothing on the host
            self._ip("link", "add", "eth0", "netns", ns, "type", "veth",
                     "peer", "name", f"p{nid}", "netns", self.bridge)
            self._ip("-n", ns, "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", self.bridge, "link", "set", f"p{nid}", "master", "br0")
            self._ip("-n", self.bridge, "link", "set", f"p{nid}", "up")

    def down(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()

    def addr_ready(self, nid: int) -> bool:
        """The node's ULA address is configured and not tentative."""
        r = subprocess.run(["ip", "-n", self.nodes[nid], "-6", "addr", "show", "dev", "eth0"],
                           capture_output=True, text=True)
        return f"{PREFIX}{nid}/64" in r.stdout and "tentative" not in r.stdout


@pytest.fixture
def ipv6_net():
    if os.geteuid() != 0 or not shutil.which("ip"):
        reason = "needs root and iproute2 (ip) for network namespaces"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    net = Ipv6Net()
    try:
        try:
            net.up()
        except RuntimeError as e:
            print(f"SKIP: cannot build the namespaces: {e}")
            pytest.skip(f"cannot build the namespaces: {e}")
        for nid, _ in NODES:
            lib.wait_until(lambda: net.addr_ready(nid), 5, f"n{nid} address non-tentative")
        yield net
    finally:
        net.down()


@pytest.fixture
def ipv6_cluster(tmp_path, ipv6_net):
    """Factory: write configs and make (unstarted) daemons, one per node namespace.
    Every daemon started is stopped by PID at teardown, before the namespaces go."""
    daemons: list[lib.Daemon] = []

    def make(transport: str, *, mcastaddr: str | None = None) -> dict[int, lib.Daemon]:
        made = {}
        for nid, ip in NODES:
            d = lib.Daemon(tmp_path / transport, nid, ip, netns=ipv6_net.nodes[nid])
            # A namespace per node: the daemon finds its address on eth0 itself.
            d.env_extra.pop("COROSYNC_LOCAL_ADDRS")
            d.conf.write_text(lib.node_config(
                nodeid=nid, nodes=NODES, port=5405, directory=d.dir, transport=transport,
                totem_extra="    ip_version: ipv6\n", mcastaddr=mcastaddr, token=300))
            made[nid] = d
            daemons.append(d)
        return made

    yield make
    for d in daemons:
        d.stop()


def wait_members(daemons: dict[int, lib.Daemon], want: tuple[int, ...], ids, timeout: float):
    """Poll until every node in ``ids`` reports membership ``want``.  Our own loop rather
    than ``wait_until``: its message is built before waiting, so it would show the state at
    the start; this one reports each node's membership at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        for nid in ids:
            d = daemons[nid]
            assert d.alive(), f"n{nid} died:\n{d.log()}\n{(d.dir / 'stderr').read_text()}"
        if all(daemons[nid].members() == want for nid in ids):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for membership {want}; at the "
                        "deadline: " + "; ".join(f"n{n}={daemons[n].members()}" for n in ids))
        time.sleep(0.05)


def run_ring(daemons: dict[int, lib.Daemon], transport_line: str) -> None:
    for d in daemons.values():
        d.start()
    wait_members(daemons, (1, 2, 3), (1, 2, 3), timeout=12)
    for nid, ip in NODES:
        log = daemons[nid].log()
        assert transport_line in log, log
        assert f"The network interface [{ip}] is now up." in log, log
    # one ring: every node's latest "A new membership (rep.seq) was formed" has the same id
    ring3 = {daemons[nid].memberships()[-1][0] for nid, _ in NODES}
    assert len(ring3) == 1, ring3
    daemons[2].kill()  # SIGKILL by PID, waited for: no leave message reaches the ring
    wait_members(daemons, (1, 3), (1, 3), timeout=8)
    lasts = [daemons[nid].memberships()[-1] for nid in (1, 3)]
    assert lasts[0][0] == lasts[1][0] and lasts[0][0] not in ring3, lasts
    for _rid, rest in lasts:
        assert rest.strip().endswith("left: 2"), rest
    # the killed node comes back (same address, fresh process) and the ring re-forms
    daemons[2].start()
    wait_members(daemons, (1, 2, 3), (1, 2, 3), timeout=8)
    assert len({daemons[nid].memberships()[-1][0] for nid, _ in NODES}) == 1


def test_ipv6_udpu_three_node_ring_and_kill(ipv6_cluster):
    daemons = ipv6_cluster("udpu")
    run_ring(daemons, "Initializing transport (UDP/IP Unicast).")
    for nid, _ in NODES:
        log = daemons[nid].log()
        for other, ip in NODES:
            if other != nid:
                assert f"adding new UDPU member {{{ip}}}" in log, log
    ss = subprocess.run(["ip", "netns", "exec", daemons[3].netns, "ss", "-uan"],
                        capture_output=True, text=True)
    if ss.returncode == 0:  # the token socket is bound to the node's IPv6 address
        assert f"[{PREFIX}3]:5405" in ss.stdout, ss.stdout


@pytest.mark.parametrize("mcastaddr", [None, "ff15::198:18:77"], ids=["derived", "explicit"])
def test_ipv6_udp_multicast_three_node_ring_and_kill(ipv6_cluster, mcastaddr):
    from corosync.exec.config.model import cluster_mcast_addr

    group = mcastaddr or cluster_mcast_addr("pytest", 0, ipv6=True)
    assert group.startswith("ff15::")  # without mcastaddr: derived from cluster_name
    daemons = ipv6_cluster("udp", mcastaddr=mcastaddr)
    run_ring(daemons, "Initializing transport (UDP/IP Multicast).")
    for nid, _ in NODES:
        assert "adding new UDPU member" not in daemons[nid].log()
    ss = subprocess.run(["ip", "netns", "exec", daemons[1].netns, "ss", "-uan"],
                        capture_output=True, text=True)
    if ss.returncode == 0:
        assert f"[{group}]:5405" in ss.stdout, ss.stdout
        assert f"[{PREFIX}1]:5404" in ss.stdout, ss.stdout
