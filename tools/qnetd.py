"""corosync-qnetd: the QNet daemon (arbitrator for corosync-qdevice model net)."""

from __future__ import annotations

import sys

from corosync.exec.qnetd.settings import CliExit, parse_args


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except CliExit as exc:
        return exc.status
    from corosync.exec.qnetd.daemon import run_daemon

    return run_daemon(opts)


if __name__ == "__main__":
    sys.exit(main())
