"""corosync-qnetd command line and ``-S`` advanced settings (spec §9.1, §9.2).

Parsing follows the stock daemon: options are handled left to right with getopt semantics
(``-dd``, ``-p5403`` and ``-p 5403`` all work), the first invalid one ends the program with
the stock error text on stderr and exit status 1, ``-h``/``-v`` also exit 1.  Numbers are
decimal only and must use the whole string.
"""

from __future__ import annotations

import re
import sys
from typing import Callable, Optional, TextIO

import attrs

from .cli_common import Getopt, GetoptError
from .protocol import ALGORITHM_TEXT, MSG_TYPE_TEXT, TlsSupported

PROG = "corosync-qnetd"
VERSION = "3.0.3"
INT_MAX = 2**31 - 1
LLONG_MAX = 2**63 - 1
U32_MAX = 2**32 - 1

USAGE = (f"usage: {PROG} [-46dfhv] [-l listen_addr] [-p listen_port] [-s tls]\n"
         "              [-c client_cert_required] [-m max_clients] "
         "[-S option=value[,option2=value2,...]]\n")


def version_text() -> str:
    algos = ", ".join(f"{ALGORITHM_TEXT[i]} ({i})" for i in sorted(ALGORITHM_TEXT))
    msgs = ", ".join(f"{t} ({i})" for i, t in enumerate(MSG_TYPE_TEXT))
    return (f"Corosync Qdevice Network Daemon, version '{VERSION}'\n\n"
            f"Supported algorithms: {algos}\n"
            f"Supported message types: {msgs}\n")


@attrs.define
class Advanced:
    listen_backlog: int = 10
    max_client_send_buffers: int = 32
    max_client_send_size: int = 32768
    max_client_receive_size: int = 32768
    nss_db_dir: str = "/etc/corosync/qnetd/nssdb"
    cert_nickname: str = "QNetd Cert"
    heartbeat_interval_min: int = 1000
    heartbeat_interval_max: int = 120000
    dpd_enabled: bool = True
    dpd_interval_coefficient: float = 1.5
    lock_file: str = "/var/run/corosync-qnetd/corosync-qnetd.pid"
    local_socket_file: str = "/var/run/corosync-qnetd/corosync-qnetd.sock"
    local_socket_backlog: int = 10
    ipc_max_clients: int = 10
    ipc_max_receive_size: int = 4096
    ipc_max_send_size: int = 10485760
    keep_active_partition_tie_breaker: bool = False


@attrs.define
class Options:
    family: int = 0  # 0 = dual stack IPv6 socket, 4, 6
    debug: int = 0
    foreground: bool = False
    listen_addr: Optional[str] = None
    port: int = 5403
    tls: int = TlsSupported.SUPPORTED
    client_cert_required: bool = True
    max_clients: int = 0
    advanced: Advanced = attrs.field(factory=Advanced)


class CliExit(Exception):
    """Terminate with ``status`` after printing (already done)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_DECIMAL = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


def parse_int(text: str, lo: int, hi: int) -> Optional[int]:
    """strtoll(base 10) semantics: leading blanks and a sign allowed, whole string used."""
    if not _DECIMAL.fullmatch(text):
        return None
    v = int(text.strip(), 10)
    return v if lo <= v <= hi else None


def parse_bool(text: str) -> Optional[bool]:
    t = text.lower()
    if t in ("on", "yes", "1"):
        return True
    if t in ("off", "no", "0"):
        return False
    return None


def parse_real(text: str, lo: float, hi: float) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    if text.strip() != text or v != v or not (lo <= v <= hi):
        return None
    return v


_INT_SETTINGS: dict[str, tuple[int, int]] = {
    "listen_backlog": (1, INT_MAX),
    "max_client_send_buffers": (2, LLONG_MAX),
    "max_client_send_size": (16, LLONG_MAX),
    "max_client_receive_size": (16, LLONG_MAX),
    "heartbeat_interval_min": (1, U32_MAX),
    "heartbeat_interval_max": (1, U32_MAX),
    "local_socket_backlog": (1, INT_MAX),
    "ipc_max_clients": (0, LLONG_MAX),
    "ipc_max_receive_size": (1024, LLONG_MAX),
    "ipc_max_send_size": (1024, LLONG_MAX),
}
_STR_SETTINGS = ("nss_db_dir", "cert_nickname", "lock_file", "local_socket_file")
_BOOL_SETTINGS = ("dpd_enabled", "keep_active_partition_tie_breaker")


def apply_advanced(adv: Advanced, spec: str, err: Callable[[str], None]) -> None:
    """Apply one ``-S`` argument; ``err`` prints a message (warnings return normally)."""
    for item in spec.split(","):
        key, _, value = item.partition("=")
        name = key.lower()
        if name in _INT_SETTINGS:
            lo, hi = _INT_SETTINGS[name]
            v = parse_int(value, lo, hi)
            if v is None:
                raise _invalid(value, key)
            setattr(adv, name, v)
        elif name in _STR_SETTINGS:
            setattr(adv, name, value)
        elif name in _BOOL_SETTINGS:
            b = parse_bool(value)
            if b is None:
                raise _invalid(value, key)
            setattr(adv, name, b)
        elif name == "dpd_interval_coefficient":
            r = parse_real(value, 1.0, 1000.0)
            if r is None:
                raise _invalid(value, key)
            adv.dpd_interval_coefficient = r
        elif name == "dpd_interval":
            err("Option 'dpd_interval' is deprecated and has no effect anymore")
        else:
            raise _SettingError(f"Unknown option '{key}'")


class _SettingError(Exception):
    pass


def _invalid(value: str, key: str) -> _SettingError:
    return _SettingError(f"Invalid value '{value}' for option '{key}'")


def parse_args(argv: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr,
               argv0: str = PROG) -> Options:
    """Parse like getopt("46dfhvl:p:s:c:m:S:"); raises :class:`CliExit` to stop.  getopt's
    own errors name ``argv0`` (glibc prints argv[0]); the daemon's errors name ``PROG``."""
    opts = Options()

    def fail(text: str) -> None:
        err.write(f"{PROG}: {text}\n")
        raise CliExit(1)

    def warn(text: str) -> None:
        err.write(f"{PROG}: {text}\n")

    try:
        # glibc getopt permutes operands to the end; the daemon ignores them
        for ch, value in Getopt(argv, "46dfhvl:p:s:c:m:S:"):
            if value is None:
                _flag(opts, ch, out)
            else:
                _with_arg(opts, ch, value, fail, warn)
    except GetoptError as exc:
        err.write(exc.glibc(argv0))
        out.write(USAGE)
        raise CliExit(1) from None
    return opts


def _flag(opts: Options, ch: str, out: TextIO) -> None:
    if ch == "4":
        opts.family = 4
    elif ch == "6":
        opts.family = 6
    elif ch == "d":
        opts.debug += 1
    elif ch == "f":
        opts.foreground = True
    elif ch == "h":
        out.write(USAGE)
        raise CliExit(1)
    elif ch == "v":
        out.write(version_text())
        raise CliExit(1)


def _with_arg(opts: Options, ch: str, value: str, fail, warn) -> None:
    if ch == "l":
        opts.listen_addr = value
    elif ch == "p":
        port = parse_int(value, 1, 65535)
        if port is None:
            fail("host port must be in range 1-65535")
        opts.port = port
    elif ch == "s":
        v = value.lower()
        mapping = {"on": TlsSupported.SUPPORTED, "off": TlsSupported.UNSUPPORTED,
                   "req": TlsSupported.REQUIRED}
        if v not in mapping:
            fail("tls must be one of on, off, req")
        opts.tls = mapping[v]
    elif ch == "c":
        b = parse_bool(value)
        if b is None:
            fail("client_cert_required should be on/yes/1, off/no/0")
        opts.client_cert_required = b
    elif ch == "m":
        m = parse_int(value, 0, LLONG_MAX)
        if m is None:
            fail(f"max clients value {value} is invalid")
        opts.max_clients = m
    elif ch == "S":
        try:
            apply_advanced(opts.advanced, value, warn)
        except _SettingError as exc:
            fail(str(exc))
