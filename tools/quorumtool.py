"""corosync-quorumtool: show and change quorum state (corosync 3.1.7's tool: same options,
same output bytes, same exit codes — 0 quorate, 2 not quorate, 1 error).

It talks to four services exactly as the C tool does: cmap (``quorum.provider``, the node
names of the nodelist, ``runtime.votequorum.this_node_id``), quorum (GETTYPE, GETQUORATE,
one tracked notification for the view list and ring sequence), votequorum (one tracked
node-list notification for the ring's node id, GETINFO per node) and cfg (GET_NODE_ADDRS
for every listed node).  Formatting is pure (:func:`format_quorum`, :func:`format_nodes`)
and checked against the reference outputs of the real tool.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Final, TypeVar

from attrs import define

from corosync._common import CsError, CsErrorCode, DispatchFlags, GetoptError, TrackFlags, \
    cs_strerror, gnu_getopt
from corosync.cfg import Cfg
from corosync.cmap import Cmap
from corosync.lib.proto import votequorum as vp
from corosync.quorum import QUORUM_FREE, Quorum, QuorumNotification
from corosync.votequorum import NodeInfo, NodelistNotification, Votequorum

PROG: Final = "corosync-quorumtool"
VERSION: Final = "3.1.7"
OPTSTRING: Final = "VHaslpmfe:v:hin:o:"
EXIT_NOT_QUORATE: Final = 2
INT_MAX: Final = 2**31 - 1
UINT_MAX: Final = 2**32 - 1

T = TypeVar("T")


def usage(prog: str = PROG) -> str:
    return (f"usage: \n{prog} <options>\n\n  options:\n\n"
            "  -s             show quorum status\n"
            "  -m             constantly monitor quorum status\n"
            "  -l             list nodes\n"
            "  -a             show all names or addresses for each node\n"
            "  -p             when used with -s or -l, generates machine parsable output\n"
            "  -v <votes>     change the number of votes for a node (*)\n"
            "  -n <nodeid>    optional nodeid of node for -v\n"
            "  -e <expected>  change expected votes for the cluster (*)\n"
            "  -H             show nodeids in hexadecimal rather than decimal\n"
            "  -i             show node IP addresses instead of the resolved name\n"
            "  -o <a|n|i>     order by [a] IP address (default), [n] name, [i] nodeid\n"
            "  -f             forcefully unregister a quorum device *DANGEROUS* (*)\n"
            "  -h             show this help text\n"
            "  -V             show version and exit\n\n"
            "  (*) Starred items only work if votequorum is the quorum provider for corosync\n\n")


# ------------------------------------------------------------------------------ formatting
def padded(text: str) -> str:
    """The C tool's print_string_padded: right-aligned in 10 columns, then one space."""
    return text.rjust(10) + " "


def _nodeid(nodeid: int, hex_ids: bool) -> str:
    return f"0x{nodeid:08x} " if hex_ids else padded(str(nodeid))


@define
class Row:
    """One member of the view list as the node table shows it."""

    nodeid: int
    name: str
    info: NodeInfo | None = None   # None when votequorum is not in use


def format_nodes(rows: Sequence[Row], our_nodeid: int, *, votequorum: bool,
                 machine_parsable: bool = False, hex_ids: bool = False,
                 sort: str = "a") -> str:
    """The "Membership information" table (display_nodes_data), leading blank line included."""
    show_qdevice = votequorum and any(r.info is not None and r.info.flags & vp.INFO_QDEVICE_REGISTERED
                                      for r in rows)
    out = ["\nMembership information\n----------------------\n", padded("Nodeid")]
    if votequorum:
        out.append(padded("Votes"))
        if show_qdevice or machine_parsable:
            out.append(padded("Qdevice"))
    out.append("Name\n")
    ordered = list(rows)
    if sort == "i":
        ordered.sort(key=lambda r: r.nodeid)
    elif sort == "n":
        ordered.sort(key=lambda r: r.name.encode())
    our_flags = 0
    for r in ordered:
        out.append(_nodeid(r.nodeid, hex_ids))
        info = r.info or NodeInfo()
        if votequorum:
            out.append(padded(str(info.votes)))
            if show_qdevice or machine_parsable:
                if info.flags & vp.INFO_QDEVICE_REGISTERED:
                    out.append(padded(",".join((
                        "A" if info.flags & vp.INFO_QDEVICE_ALIVE else "NA",
                        "V" if info.flags & vp.INFO_QDEVICE_CAST_VOTE else "NV",
                        "MW" if info.flags & vp.INFO_QDEVICE_MASTER_WINS else "NMW"))))
                else:
                    out.append(padded("NR"))
        out.append(r.name)
        if r.nodeid == our_nodeid:
            out.append(" (local)")
            if votequorum:
                our_flags = info.flags
        out.append("\n")
    if show_qdevice:
        first = rows[0].info or NodeInfo()  # the C tool reads the device from the first entry
        out.append(_nodeid(vp.QDEVICE_NODEID, hex_ids))
        casting = our_flags & vp.INFO_QDEVICE_CAST_VOTE
        out.append(padded(str(first.qdevice_votes if casting else 0)))
        out.append(f"           {first.qdevice_name}")
        out.append("\n" if casting else f" (votes {first.qdevice_votes})\n")
    return "".join(out)


_FLAG_WORDS: Final = ((vp.INFO_TWONODE, "2Node"), (vp.INFO_QUORATE, "Quorate"),
                      (vp.INFO_WAIT_FOR_ALL, "WaitForAll"),
                      (vp.INFO_LAST_MAN_STANDING, "LastManStanding"),
                      (vp.INFO_AUTO_TIE_BREAKER, "AutoTieBreaker"),
                      (vp.INFO_ALLOW_DOWNSCALE, "AllowDownscale"),
                      (vp.INFO_QDEVICE_REGISTERED, "Qdevice"))


def format_quorum(*, date: str, provider: str, nodes: int, our_nodeid: int, ring_rep: int,
                  ring_seq: int, quorate: bool, votequorum: bool, info: NodeInfo | None,
                  hex_ids: bool = False) -> str:
    """The "Quorum information" block and, with votequorum, "Votequorum information"
    (``info`` None means GETINFO failed: the block is left out, as in the C tool)."""
    node_id = f"0x{our_nodeid:08x}" if hex_ids else str(our_nodeid)
    ring = f"{ring_rep:x}.{ring_seq:x}" if votequorum else f"{ring_seq:x}"
    out = [f"Quorum information\n------------------\nDate:             {date}\n"
           f"Quorum provider:  {provider}\nNodes:            {nodes}\n"
           f"Node ID:          {node_id}\nRing ID:          {ring}\n"
           f"Quorate:          {'Yes' if quorate else 'No'}\n"]
    if votequorum and info is not None:
        out.append("\nVotequorum information\n----------------------\n"
                   f"Expected votes:   {info.expected_votes}\n"
                   f"Highest expected: {info.highest_expected}\n"
                   f"Total votes:      {info.total_votes}\n"
                   f"Quorum:           {info.quorum} "
                   f"{' ' if info.flags & vp.INFO_QUORATE else 'Activity blocked'}\n"
                   "Flags:            "
                   + "".join(f"{word} " for bit, word in _FLAG_WORDS if info.flags & bit) + "\n")
    return "".join(out)


# ------------------------------------------------------------------------------ the tool
Resolver = Callable[[str, bool], str]


def resolve(addr: str, numeric: bool) -> str:
    """getnameinfo of one address: numeric with -i, else the reverse name when there is one."""
    if numeric:
        return addr
    try:
        return socket.getnameinfo((addr, 0), 0)[0]
    except OSError:
        return addr


class Failed(Exception):
    """A library call failed and its message is printed: the command ends with exit code 1."""


class Tool:
    """The connections and the state the C tool keeps in globals."""

    def __init__(self, out: IO[str], err: IO[str], resolver: Resolver = resolve) -> None:
        self.out, self.err = out, err
        self.resolver = resolver
        self.cmap: Cmap | None = None
        self.quorum: Quorum | None = None
        self.cfg: Cfg | None = None
        self.vq: Votequorum | None = None
        self.our_nodeid = 0
        self.show_all_addrs = False
        self.machine_parsable = False
        self.last: QuorumNotification | None = None
        self.ring_rep = 0
        self.vq_called = False

    # -- connections -----------------------------------------------------------------------
    def init_all(self) -> bool:
        """Connect like the C tool: cmap, quorum, cfg, and votequorum when it is the
        provider; False after printing which step failed."""
        def step(complaint: str, call: Callable[[], T]) -> T | None:
            try:
                return call()
            except CsError:
                self.err.write(complaint + "\n")
                return None

        self.cmap = step("Cannot initialize CMAP service", Cmap.initialize)
        if self.cmap is None:
            return False
        self.quorum = step("Cannot initialize QUORUM service",
                           lambda: Quorum.initialize(notify=self._on_quorum))
        if self.quorum is None:
            return False
        self.cfg = step("Cannot initialise CFG service", Cfg.initialize)
        if self.cfg is None:
            return False
        if self.using_votequorum() <= 0:
            return True
        self.vq = step("Cannot initialise VOTEQUORUM service",
                       lambda: Votequorum.initialize(nodelist=self._on_vq_nodelist))
        if self.vq is None:
            return False
        cmap = self.cmap
        nodeid = step("Unable to retrieve this_node_id",
                      lambda: cmap.get_uint32("runtime.votequorum.this_node_id"))
        if nodeid is None:
            return False
        self.our_nodeid = nodeid
        return True

    def close_all(self) -> None:
        for h in (self.cmap, self.quorum, self.cfg, self.vq):
            if h is not None:
                h.finalize()

    def _on_quorum(self, n: QuorumNotification) -> None:
        self.last = n

    def _on_vq_nodelist(self, n: NodelistNotification) -> None:
        self.ring_rep = n.ring_nodeid
        self.vq_called = True

    def quorum_type(self) -> str | None:
        assert self.quorum is not None and self.cmap is not None
        if self.quorum.quorum_type == QUORUM_FREE:
            return None
        try:
            return self.cmap.get_string("quorum.provider")
        except CsError:
            return None

    def using_votequorum(self) -> int:
        provider = self.quorum_type()
        if provider is None:
            return -1
        return 1 if provider == "corosync_votequorum" else 0

    # -- node names ------------------------------------------------------------------------
    def name_by_nodelist(self, nodeid: int) -> str:
        assert self.cmap is not None
        try:
            it = self.cmap.iter_init("nodelist.node.")
        except CsError:
            return ""
        try:
            while True:
                entry = self.cmap.iter_next(it)
                if entry is None:
                    return ""
                parts = entry.key.split(".")
                if len(parts) != 4 or parts[3] != "nodeid" or not parts[2].isdigit():
                    continue
                try:
                    if self.cmap.get_uint32(entry.key) != nodeid:
                        continue
                    name = self.cmap.get_string(f"nodelist.node.{parts[2]}.name")
                except CsError:
                    continue
                return name
        finally:
            try:
                self.cmap.iter_finalize(it)
            except CsError:
                pass

    def node_name(self, nodeid: int, numeric: bool) -> str:
        assert self.cfg is not None
        name = "" if numeric else self.name_by_nodelist(nodeid)
        start = 1 if name else 0
        try:
            addrs = self.cfg.get_node_addrs(nodeid)
        except CsError as exc:
            self.err.write(f"Unable to get node address for nodeid {nodeid}: "
                           f"{cs_strerror(int(exc.code))}\n")
            return ""
        count = len(addrs) if self.show_all_addrs else 1
        parts = [name] if name else []
        for addr in addrs[start:count]:
            parts.append(self.resolver(addr, numeric))
        return ", ".join(parts)

    # -- commands --------------------------------------------------------------------------
    def _getinfo(self, nodeid: int) -> NodeInfo | None:
        assert self.vq is not None
        try:
            return self.vq.getinfo(nodeid)
        except CsError as exc:
            if exc.code == CsErrorCode.ERR_NOT_EXIST:
                return NodeInfo()
            return None

    def rows(self, numeric: bool) -> list[Row]:
        assert self.last is not None
        rows: list[Row] = []
        for nodeid in self.last.view_list:
            info = None
            if self.vq is not None:
                info = self._getinfo(nodeid)
                if info is None:
                    self.out.write(f"Unable to get node {nodeid} info\n")
                    info = NodeInfo()
            rows.append(Row(nodeid, "", info))
        for row in rows:
            row.name = self.node_name(row.nodeid, numeric)
        return rows

    def display_nodes(self, numeric: bool, hex_ids: bool, sort: str) -> None:
        self.out.write(format_nodes(self.rows(numeric), self.our_nodeid,
                                    votequorum=self.vq is not None,
                                    machine_parsable=self.machine_parsable, hex_ids=hex_ids,
                                    sort=sort))

    def display_quorum(self, quorate: bool, numeric: bool, hex_ids: bool, sort: str) -> int:
        assert self.last is not None
        info = None
        err = CsErrorCode.OK
        if self.vq is not None:
            try:
                info = self.vq.getinfo(self.our_nodeid)
            except CsError as exc:
                err = exc.code  # type: ignore[assignment]
                if exc.code == CsErrorCode.ERR_NOT_EXIST:
                    info = NodeInfo()
        self.out.write(format_quorum(
            date=time.ctime(), provider=self.quorum_type() or "Not configured",
            nodes=len(self.last.view_list), our_nodeid=self.our_nodeid, ring_rep=self.ring_rep,
            ring_seq=self.last.ring_seq, quorate=quorate, votequorum=self.vq is not None,
            info=info, hex_ids=hex_ids))
        if self.vq is None:
            return CsErrorCode.OK
        if info is None:
            self.err.write(f"Unable to get node info: {cs_strerror(int(err))}\n")
        self.display_nodes(numeric, hex_ids, sort)
        return int(err)

    def _check(self, what: str, call: Callable[[], T]) -> T:
        """``call()``; a CsError prints ``<what>: <cs_strerror>`` like the C tool and raises
        :class:`Failed`."""
        try:
            return call()
        except CsError as exc:
            self.err.write(f"{what}: {cs_strerror(int(exc.code))}\n")
            raise Failed from None

    def _track_quorum(self, flags: TrackFlags) -> None:
        quorum = self.quorum
        assert quorum is not None
        self._check("Unable to start quorum status tracking", lambda: quorum.trackstart(flags))

    def _track_votequorum(self, flags: TrackFlags) -> None:
        vq = self.vq
        assert vq is not None
        self._check("Unable to start votequorum status tracking",
                    lambda: vq.trackstart(0, flags))

    def _wait_quorum(self) -> None:
        """Dispatch until the next quorum notification (it lands in ``self.last``)."""
        quorum = self.quorum
        assert quorum is not None
        self.last = None

        def wait() -> None:
            while self.last is None:
                quorum.dispatch(DispatchFlags.ONE)
        self._check("Unable to dispatch quorum status", wait)

    def _wait_votequorum(self) -> None:
        """Dispatch until the next votequorum node-list notification (its ring node id)."""
        vq = self.vq
        assert vq is not None
        self.vq_called = False

        def wait() -> None:
            while not self.vq_called:
                vq.dispatch(DispatchFlags.ONE)
        self._check("Unable to dispatch votequorum status", wait)

    def show_status(self, numeric: bool, hex_ids: bool, sort: str) -> int:
        quorum = self.quorum
        assert quorum is not None
        quorate = self._check("Unable to get cluster quorate status", quorum.getquorate)
        self._track_quorum(TrackFlags.CURRENT)
        self._wait_quorum()
        try:
            quorum.trackstop()
        except CsError:
            self.err.write("Unable to stop quorum status tracking: success\n")
        if self.using_votequorum():  # -1 ("no provider") is true here, as in the C tool
            if self.vq is None:
                self.err.write("Unable to start votequorum status tracking: "
                               "CS_ERR_BAD_HANDLE\n")
                return 1
            self._track_votequorum(TrackFlags.CURRENT)
            self._wait_votequorum()
        if self.display_quorum(quorate, numeric, hex_ids, sort) != CsErrorCode.OK:
            return 1
        return 0 if quorate else EXIT_NOT_QUORATE

    def show_nodes(self, numeric: bool, hex_ids: bool, sort: str) -> int:
        self._track_quorum(TrackFlags.CURRENT)
        self._wait_quorum()
        self.display_nodes(numeric, hex_ids, sort)
        return 0

    def monitor(self, numeric: bool, hex_ids: bool, sort: str,
                rounds: int | None = None) -> int:
        """``-m``: print the status after every change (``rounds`` limits it for tests)."""
        assert self.quorum is not None
        if self.quorum.quorum_type == QUORUM_FREE:
            self.out.write("\nQuorum is not configured - cannot monitor\n")
            return self.show_status(numeric, hex_ids, sort)
        self._track_quorum(TrackFlags.CHANGES)
        if self.using_votequorum():
            self._track_votequorum(TrackFlags.CHANGES)
        done = 0
        while rounds is None or done < rounds:
            self._wait_quorum()
            if self.using_votequorum():
                self._wait_votequorum()
            assert self.last is not None
            err = self.display_quorum(self.last.quorate, numeric, hex_ids, sort)
            self.out.write("\n")
            self.out.flush()
            if err != CsErrorCode.OK:
                self.err.write(f"Unable to display quorum data: {cs_strerror(err)}\n")
                return 1
            done += 1
        return 0

    def set_votes(self, nodeid: int, votes: int) -> int:
        vq = self.vq
        assert vq is not None
        self._check(f"Unable to set votes {votes} for nodeid: {nodeid}",
                    lambda: vq.setvotes(nodeid, votes))
        return 0

    def set_expected(self, expected: int) -> int:
        vq = self.vq
        assert vq is not None
        self._check("Unable to set expected votes", lambda: vq.setexpected(expected))
        return 0

    def unregister_qdevice(self) -> int:
        vq = self.vq
        assert vq is not None
        info = self._check("Unable to get quorum device info",
                           lambda: vq.getinfo(self.our_nodeid))
        if info.flags & vp.INFO_QDEVICE_REGISTERED:
            self._check("Unable to unregister quorum device",
                        lambda: vq.qdevice_unregister(info.qdevice_name))
        return 0


def strtonum(text: str, low: int, high: int) -> int | None:
    """util_strtonum: a whole base-10 number within [low, high], else None."""
    t = text.strip()
    if not t or not (t.lstrip("+-").isdigit()) or t.lstrip("+-") != t.lstrip("+-").strip():
        return None
    value = int(t)
    return value if low <= value <= high else None


@define
class Options:
    """What the command line asks for (the C tool's globals after its getopt loop)."""

    command: str = "status"
    votes: int = 0
    nodeid: int | None = None      # -n; None: this node
    numeric: bool = False          # -i
    hex_ids: bool = False          # -H
    show_all_addrs: bool = False   # -a
    machine_parsable: bool = False  # -p
    sort: str = "a"                # -o


#: Options that only pick the command.
_COMMANDS: Final = {"f": "unregister", "s": "status", "m": "monitor", "l": "nodes"}
#: Options that only switch a flag on.
_FLAGS: Final = {"a": "show_all_addrs", "i": "numeric", "H": "hex_ids", "p": "machine_parsable"}
#: -e/-v/-n: the range of the number and the complaint when it is not in it.
_NUMBERS: Final = {
    "e": (1, INT_MAX, "New expected votes value was not valid, try a positive number"),
    "v": (0, INT_MAX, "New votes value was not valid, try a positive number or zero"),
    "n": (1, UINT_MAX, "The nodeid was not valid, try a positive number"),
}


def parse_options(args: list[str], prog: str, out: IO[str], err: IO[str]) -> Options | int:
    """The options in command-line order, as the C tool's getopt loop handles them; an exit
    code instead when an option ends the tool (-h, -V, an error)."""
    opts = Options()
    try:
        for item in gnu_getopt(args, OPTSTRING, prog):
            if isinstance(item, list):
                continue
            opt, val = item
            if opt in _COMMANDS:
                opts.command = _COMMANDS[opt]
            elif opt in _FLAGS:
                setattr(opts, _FLAGS[opt], True)
            elif opt in _NUMBERS:
                low, high, complaint = _NUMBERS[opt]
                number = strtonum(val or "", low, high)
                if number is None:
                    err.write(complaint + "\n")
                    return 1
                if opt == "n":
                    opts.nodeid = number
                else:
                    opts.votes, opts.command = number, "expected" if opt == "e" else "votes"
            elif opt == "o":
                if val not in ("a", "i", "n"):
                    err.write("Invalid ordering option. valid orders are a(address), "
                              "i(node ID) or n(name)\n")
                    return 1
                opts.sort = val
            elif opt == "V":
                out.write(f"corosync-quorumtool version: {VERSION}\n")
                return 0
            elif opt == "h":
                out.write(usage(prog))
                return 0
    except GetoptError as exc:
        err.write(exc.message + "\n")
        out.write(usage(prog))
        return 1
    return opts


def run(tool: Tool, opts: Options) -> int:
    """Connect, then carry out ``opts.command``; the tool's exit code."""
    if not tool.init_all():
        return 1
    view = (opts.numeric, opts.hex_ids, opts.sort)
    if opts.command == "nodes":
        return tool.show_nodes(*view)
    if opts.command == "status":
        return tool.show_status(*view)
    if opts.command == "monitor":
        return tool.monitor(*view)
    if tool.using_votequorum() <= 0:
        what = {"votes": "change node votes", "expected": "change expected votes",
                "unregister": "unregister quorum device"}[opts.command]
        tool.err.write(f"You cannot {what}, corosync is not using votequorum\n")
        return 1
    if opts.command == "votes":
        return tool.set_votes(tool.our_nodeid if opts.nodeid is None else opts.nodeid,
                              opts.votes)
    if opts.command == "expected":
        return tool.set_expected(opts.votes)
    return tool.unregister_qdevice()


def main(argv: list[str] | None = None, out: IO[str] | None = None,
         err: IO[str] | None = None) -> int:
    """``argv`` without the program name.  From the command line (argv None) getopt errors
    and the usage name the program as ``sys.argv[0]``, like glibc names argv[0] (a console
    script's path as it was started); otherwise as :data:`PROG`."""
    prog = sys.argv[0] if argv is None and sys.argv[0] else PROG
    args = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    err = err or sys.stderr
    opts = parse_options(args, prog, out, err)
    if isinstance(opts, int):
        return opts
    tool = Tool(out, err)
    tool.show_all_addrs = opts.show_all_addrs
    tool.machine_parsable = opts.machine_parsable
    try:
        return run(tool, opts)
    except Failed:
        return 1
    except KeyboardInterrupt:
        return 1
    finally:
        tool.close_all()
        out.flush()


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
