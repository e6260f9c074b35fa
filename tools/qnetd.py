"""corosync-qnetd: the QNet daemon (arbitrator for corosync-qdevice model net)."""

from __future__ import annotations

import sys

from corosync.exec.qnetd.cli_common import invocation_name
from corosync.exec.qnetd.settings import PROG, CliExit, parse_args


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name; None = the command line (getopt errors then name
    ``sys.argv[0]``, like glibc)."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv,
                          argv0=invocation_name(PROG, argv is None))
    except CliExit as exc:
        return exc.status
    from corosync.exec.qnetd.daemon import run_daemon

    return run_daemon(opts)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
