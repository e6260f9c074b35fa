"""corosync-cfgtool: link and node status, reload, reopen logs, kill a node, clean shutdown
(corosync 3.1.7's tool: same options, same output bytes, same exit codes).

``-s``/``-n`` read ``totem.transport`` and the nodelist's node ids from cmap, then ask the cfg
service for LOCAL_GET and NODESTATUSGET of every node (v1 layout); everything else is one cfg
call.  Formatting is pure (:func:`format_links`, :func:`format_nodes`) and checked against
the reference outputs of the real tool.  Like the C tool in 3.1.7, ``-i`` is accepted and
ignored.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Final

from corosync._common import CsError, CsErrorCode, GetoptError, cs_strerror, gnu_getopt
from corosync.cfg import (SHUTDOWN_FLAG_REGARDLESS, SHUTDOWN_FLAG_REQUEST, Cfg, LinkStatus,
                          NodeStatus)
from corosync.cmap import Cmap

PROG: Final = "corosync-cfgtool"
OPTSTRING: Final = "i:snbrRLk:a:hH"
LONG_OPTIONS: Final = {"if": ("i", True), "status": ("s", False), "nodes": ("n", False),
                       "brief": ("b", False), "reload": ("R", False), "reopen": ("L", False),
                       "kill": ("k", True), "address": ("a", True), "shutdown": ("H", False),
                       "force": ("", False)}
MAX_LINKS: Final = 8
UINT_MAX: Final = 2**32 - 1
_NODEID_KEY = re.compile(r"^nodelist\.node\.\d+\.nodeid$")
_IFACE_KEY = re.compile(r"^totem\.interface\.(\d+)\.knet_transport$")


def usage() -> str:
    return ("corosync-cfgtool [[-i <interface ip>] [-b] -s] [-R] [-L] [-k nodeid] [-a nodeid] "
            "[-h] [-H]\n\n"
            "A tool for displaying and configuring active parameters within corosync.\n"
            "options:\n"
            "\t-i\tFinds only information about the specified interface IP address or link id "
            "when used with -s..\n"
            "\t-s\tDisplays the status of the current links on this node.\n"
            "\t-n\tDisplays the status of the connected nodes and their links.\n"
            "\t-b\tDisplays the brief status of the current links on this node when used with -s.\n"
            "\t-R\tTell all instances of corosync in this cluster to reload corosync.conf.\n"
            "\t-L\tTell corosync to reopen all logging files.\n"
            "\t-k\tKill a node identified by node id.\n"
            "\t-a\tDisplay the IP address(es) of a node\n"
            "\t-h\tPrint basic usage.\n"
            "\t-H\tShutdown corosync cleanly on this node.\n"
            "\t\t--force will shut down corosync regardless of daemon vetos\n")


# ------------------------------------------------------------------------------ formatting
def link_transports(transport: str, overrides: dict[int, str] | None = None) -> list[str]:
    """Per-link transport words: "udp" for knet links (or the configured knet_transport),
    empty for udp/udpu ("no point in displaying udp again")."""
    base = "udp" if transport not in ("udp", "udpu") else ""
    out = [base] * MAX_LINKS
    for link, word in (overrides or {}).items():
        if 0 <= link < MAX_LINKS:
            out[link] = word
    return out


def _empty(nodeid: int = 0) -> NodeStatus:
    return NodeStatus(nodeid, links=(LinkStatus(),) * MAX_LINKS)


def format_header(local_nodeid: int, transport: str) -> str:
    return f"Local node ID {local_nodeid}, transport {transport}\n"


def format_links(nodeids: Sequence[int], statuses: Sequence[NodeStatus | None],
                 local_nodeid: int, transport: str, *, brief: bool = False,
                 transports: Sequence[str] | None = None) -> str:
    """``-s`` (and ``-b``): per enabled link of "another" node, its address and every node's
    connection state.  ``statuses[i]`` belongs to ``nodeids[i]`` (sorted); None = failed."""
    words = list(transports or link_transports(transport))
    infos = [s or _empty() for s in statuses]
    local_idx = other_idx = 0
    for i, nodeid in enumerate(nodeids):
        if nodeid == local_nodeid:
            local_idx = i
        else:
            other_idx = i
    out: list[str] = []
    other = infos[other_idx]
    for link in range(MAX_LINKS):
        ls = other.links[link] if link < len(other.links) else LinkStatus()
        if not ls.enabled:
            continue
        out.append(f"LINK ID {link} {words[link]}\n\taddr\t= {ls.src_ipaddr}\n")
        if brief:
            chars = []
            for j, info in enumerate(infos):
                lj = info.links[link] if link < len(info.links) else LinkStatus()
                chars.append("n" if j == local_idx
                             else chr(ord("0") + (int(lj.enabled) | (int(lj.connected) << 1))))
            out.append("\tstatus\t= " + "".join(chars) + "\n")
        else:
            out.append("\tstatus:\n")
            for j, info in enumerate(infos):
                lj = info.links[link] if link < len(info.links) else LinkStatus()
                state = ("localhost" if j == local_idx
                         else "connected" if lj.connected else "disconnected")
                out.append(f"\t\tnodeid: {info.nodeid:10d}:\t{state}\n")
    return "".join(out)


def format_nodes(statuses: Sequence[NodeStatus | None], local_nodeid: int, transport: str,
                 transports: Sequence[str] | None = None) -> str:
    """``-n``: every reachable node other than this one, with its enabled links."""
    words = list(transports or link_transports(transport))
    out: list[str] = []
    for ns in statuses:
        if ns is None or not ns.reachable or ns.nodeid == local_nodeid:
            continue
        line = f"nodeid: {ns.nodeid} reachable"
        if ns.remote:
            line += " remote"
        if ns.external:
            line += " external"
        out.append(line + "\n")
        for j, ls in enumerate(ns.links[:MAX_LINKS]):
            if not ls.enabled:
                continue
            arrow = "->" if transport not in ("udp", "udpu") else ""
            text = f"   LINK: {j} {words[j]} ({ls.src_ipaddr}{arrow}{ls.dst_ipaddr}) enabled"
            if ls.connected:
                text += " connected"
            if ls.dynconnected:
                text += " dynconnected"
            out.append(f"{text} mtu: {ls.mtu}\n")
        out.append("\n")
    return "".join(out)


# ------------------------------------------------------------------------------ actions
def _cfg(err: IO[str], fmt: str = "%d") -> Cfg | None:
    try:
        return Cfg.initialize()
    except CsError as exc:
        code = int(exc.code)
        text = cs_strerror(code) if fmt == "%s" else str(code)
        err.write(f"Could not initialize corosync configuration API error {text}\n")
        return None


def status(out: IO[str], err: IO[str], nodes_view: bool, brief: bool) -> int:
    cfg = _cfg(err)
    if cfg is None:
        return 1
    try:
        try:
            cmap = Cmap.initialize()
        except CsError as exc:
            err.write(f"Could not initialize corosync cmap API error {int(exc.code)}\n")
            return 1
        with cmap:
            try:
                transport = cmap.get_string("totem.transport")
            except CsError:
                transport = "knet"
            try:
                local = cfg.local_get()
            except CsError as exc:
                err.write(f"Could not get the local node id, the error is: {int(exc.code)}\n")
                return 1
            nodeids: list[int] = []
            try:
                it = cmap.iter_init("nodelist.node.")
            except CsError as exc:
                err.write(f"Could not get nodelist from cmap. error {int(exc.code)}\n")
                return 1
            while (entry := cmap.iter_next(it)) is not None:
                if _NODEID_KEY.match(entry.key):
                    try:
                        nodeids.append(cmap.get_uint32(entry.key))
                    except CsError:
                        pass
            if not nodeids:
                err.write("No nodes found in nodelist\n")
                return 1
            nodeids.sort()
            overrides: dict[int, str] = {}
            try:
                it = cmap.iter_init("totem.interface.")
                while (entry := cmap.iter_next(it)) is not None:
                    m = _IFACE_KEY.match(entry.key)
                    if m:
                        try:
                            overrides[int(m.group(1))] = cmap.get_string(entry.key)
                        except CsError:
                            pass
                cmap.iter_finalize(it)
            except CsError:
                pass
        words = link_transports(transport, overrides)
        out.write(format_header(local, transport))
        statuses: list[NodeStatus | None] = []
        for nodeid in nodeids:
            try:
                statuses.append(cfg.node_status_get(nodeid))
            except CsError as exc:
                statuses.append(None)
                if not nodes_view:
                    err.write(f"Could not get the node status for nodeid {nodeid}, the error "
                              f"is: {int(exc.code)}\n")
        if nodes_view:
            out.write(format_nodes(statuses, local, transport, words))
        else:
            out.write(format_links(nodeids, statuses, local, transport, brief=brief,
                                   transports=words))
        return 0
    finally:
        cfg.finalize()


def reload_config(out: IO[str], err: IO[str]) -> int:
    out.write("Reloading corosync.conf...\n")
    out.flush()
    cfg = _cfg(err, "%s")
    if cfg is None:
        return 1
    with cfg:
        try:
            cfg.reload_config()
        except CsError as exc:
            err.write(f"Could not reload configuration. Error {cs_strerror(int(exc.code))}\n")
            return int(exc.code)
        out.write("Done\n")
        return 0


def reopen_log_files(out: IO[str], err: IO[str]) -> int:
    cfg = _cfg(err, "%s")
    if cfg is None:
        return 1
    with cfg:
        try:
            cfg.reopen_log_files()
        except CsError as exc:
            err.write(f"Could not reopen corosync logging files. Error "
                      f"{cs_strerror(int(exc.code))}\n")
            return int(exc.code)
        return 0


def shutdown(out: IO[str], err: IO[str], force: bool, retry_delay: float = 1.0) -> int:
    cfg = _cfg(err)
    if cfg is None:
        return 1
    with cfg:
        out.write("Shutting down corosync\n")
        out.flush()
        flag = SHUTDOWN_FLAG_REGARDLESS if force else SHUTDOWN_FLAG_REQUEST
        code = CsErrorCode.OK
        for _ in range(30):
            try:
                cfg.try_shutdown(flag)
                code = CsErrorCode.OK
                break
            except CsError as exc:
                code = exc.code  # type: ignore[assignment]
                if exc.code != CsErrorCode.ERR_TRY_AGAIN:
                    break
                time.sleep(retry_delay)
        if code != CsErrorCode.OK:
            err.write(f"Could not shutdown (error = {int(code)})\n")
    return 0  # the C tool's shutdown path never changes the exit code


def show_addrs(out: IO[str], err: IO[str], nodeid: int) -> int:
    cfg = _cfg(err)
    if cfg is None:
        return 1
    with cfg:
        try:
            addrs = cfg.get_node_addrs(nodeid)
        except CsError:
            err.write(f"Could not get node address for nodeid {nodeid}\n")
            return 1
        out.write(" ".join(addrs) + "\n")
        return 0


def kill_node(out: IO[str], err: IO[str], nodeid: int) -> int:
    out.write(f"Killing node {nodeid}\n")
    out.flush()
    cfg = _cfg(err)
    if cfg is None:
        return 1
    with cfg:
        try:
            cfg.kill_node(nodeid, "Killed by corosync-cfgtool")
        except CsError as exc:
            err.write(f"Could not kill node (error = {cs_strerror(int(exc.code))})\n")
            return 1
        return 0


def program_name(argv0: str | None) -> str:
    """The name glibc's getopt puts in front of its messages: ``argv[0]`` exactly as the
    tool was invoked (``/usr/sbin/corosync-cfgtool``, ``./corosync-cfgtool`` …).  Under
    ``python -m`` argv[0] is the module file, which names nothing a user typed: then the
    tool's own name."""
    if not argv0 or argv0.endswith(".py") or argv0 == "-c":
        return PROG
    return argv0


def expand_long(args: list[str], err: IO[str], prog: str = PROG
                ) -> tuple[list[str], bool] | None:
    """Rewrite glibc long options into their short forms; ``--force`` becomes a flag.
    Unique prefixes are accepted like getopt_long does.  None after an error message."""
    out: list[str] = []
    force = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            out.extend(args[i - 1:])
            break
        if not arg.startswith("--"):
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        matches = [n for n in LONG_OPTIONS if n.startswith(name)]
        if name in LONG_OPTIONS:
            matches = [name]
        if len(matches) != 1:
            kind = "ambiguous" if matches else "unrecognized"
            err.write(f"{prog}: {kind} option '{arg}'\n")
            return None
        short, needs = LONG_OPTIONS[matches[0]]
        if needs:
            if not eq:
                if i >= len(args):
                    err.write(f"{prog}: option '--{matches[0]}' requires an argument\n")
                    return None
                value = args[i]
                i += 1
            out += [f"-{short}", value]
        else:
            if eq:
                err.write(f"{prog}: option '--{matches[0]}' doesn't allow an argument\n")
                return None
            if short:
                out.append(f"-{short}")
            else:
                force = True
    return out, force


def _nodeid_arg(text: str | None) -> int | None:
    t = (text or "").strip()
    if not t.lstrip("+-").isdigit():
        return None
    n = int(t)
    return n if 1 <= n <= UINT_MAX else None


def main(argv: list[str] | None = None, out: IO[str] | None = None,
         err: IO[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # glibc names the program by argv[0]; a caller passing argv gets the plain tool name
    prog = program_name(sys.argv[0] if argv is None else None)
    out = out or sys.stdout
    err = err or sys.stderr
    expanded = expand_long(list(args), err, prog)
    if expanded is None:
        return 1
    args, force = expanded
    action, nodeid, brief = "noop", 0, False
    try:
        for item in gnu_getopt(args, OPTSTRING, prog):
            if isinstance(item, list):
                continue
            opt, val = item
            if opt == "s":
                action = "links"
            elif opt == "n":
                action = "nodes"
            elif opt == "b":
                brief = True
            elif opt == "R":
                action = "reload"
            elif opt == "L":
                action = "reopen"
            elif opt == "H":
                action = "shutdown"
            elif opt in ("k", "a"):
                n = _nodeid_arg(val)
                if n is None:
                    err.write("The nodeid was not valid, try a positive number\n")
                    return 1
                nodeid, action = n, ("kill" if opt == "k" else "addrs")
            # -i is accepted and ignored (as in 3.1.7); -r and -h fall through
    except GetoptError as exc:
        err.write(exc.message + "\n")
        return 1
    try:
        if action in ("links", "nodes"):
            return status(out, err, action == "nodes", brief)
        if action == "reload":
            return reload_config(out, err)
        if action == "reopen":
            return reopen_log_files(out, err)
        if action == "kill":
            return kill_node(out, err, nodeid)
        if action == "shutdown":
            return shutdown(out, err, force)
        if action == "addrs":
            return show_addrs(out, err, nodeid)
        out.write(usage())
        return 0
    finally:
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
