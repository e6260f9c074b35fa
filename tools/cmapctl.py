"""corosync-cmapctl: read, write, delete and track cmap keys (corosync 3.1.7's tool, same
options, same output bytes, same exit codes).

Every output line is built by :func:`format_key` from a key, its type and its value, so the
formatting can be checked against the reference outputs without a daemon.
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Final, NoReturn, TypeVar

from corosync._common import (CsError, CsErrorCode, DispatchFlags, GetoptError, cs_strerror,
                              gnu_getopt)
from corosync.cmap import (Cmap, CmapValue, IterEntry, MapId, Notification, TrackType,
                           ValueType)
from corosync.lib.proto.cmap import int_range

PROG: Final = "corosync-cmapctl"
OPTSTRING: Final = "m:hqgsdDtTbp:C:"
#: corosync-cmapctl retries CS_ERR_TRY_AGAIN this often, one second apart.
MAX_TRY_AGAIN: Final = 10
CLEAR_TARGETS: Final = ("knet", "totem", "ipc", "schedmiss", "all")

T = TypeVar("T")

HELP: Final = """
usage:  corosync-cmapctl [-b] [-DdghsqTCt] [-p filename] [-m map] [params...]

    -b show binary values

    -m select map to use
          The  default  map is 'icmap' which contains configuration information and some runtime variables used by corosync. 
          A 'stats' map is also available which displays network statistics - in great detail when knet is used as the transport.
Set key:
    corosync-cmapctl -s key_name type value

    where type is one of ([i|u][8|16|32|64] | flt | dbl | str | bin)
    for bin, value is file name (or - for stdin)

    map can be either 'icmap' (the default) which contains corosync
    configuration information, or 'stats' which contains statistics
    about the networking and IPC traffic in some detail.

Clear stats:
    corosync-cmapctl -C [knet|ipc|totem|schedmiss|all]
    The 'stats' map is implied

Load settings from a file:
    corosync-cmapctl -p filename

    the format of the file is:
    [^[^]]<key_name>[ <type> <value>]
    Keys prefixed with single caret ('^') are deleted (see -d).
    Keys (actually prefixes) prefixed with double caret ('^^') are deleted by prefix (see -D).
    <type> and <value> are optional (not checked) in above cases.
    Other keys are set (see -s) so both <type> and <value> are required.

Delete key:
    corosync-cmapctl -d key_name...

Delete multiple keys with prefix:
    corosync-cmapctl -D key_prefix...

Get key:
    corosync-cmapctl [-b] -g key_name...

Quiet mode:
    corosync-cmapctl [-b] -q -g key_name...

Display all keys:
    corosync-cmapctl [-b]

Display keys with prefix key_name:
    corosync-cmapctl [-b] key_name...

Track changes on keys with key_name:
    corosync-cmapctl [-b] -t key_name

Track changes on keys with key prefix:
    corosync-cmapctl [-b] -T key_prefix

"""


# --------------------------------------------------------------------------------------------
# Formatting (pure)
# --------------------------------------------------------------------------------------------


def escape_binary(raw: bytes) -> str:
    """Printable ASCII as is, ``\\`` doubled, anything else ``\\xNN``.  The C tool formats a
    *signed* char, so bytes >= 0x80 come out sign-extended (``\\xFFFFFF80``)."""
    out = []
    for b in raw:
        if 0x20 <= b < 0x7F and b != 0x5C:
            out.append(chr(b))
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(f"\\x{(b if b < 0x80 else b - 0x100) & 0xFFFFFFFF:02X}")
    return "".join(out)


def format_value(value: CmapValue) -> str:
    """The value part of a line: ``%d``/``%u`` for integers, ``%f`` for FLOAT and DOUBLE,
    the text for STRING (C's ``%s`` stops at a NUL)."""
    if value.type in (ValueType.FLOAT, ValueType.DOUBLE):
        number = float(value.value)  # type: ignore[arg-type]
        if math.isnan(number):       # glibc prints the sign of a NaN, Python does not
            return "-nan" if math.copysign(1.0, number) < 0 else "nan"
        return "%f" % number
    if value.type is ValueType.STRING:
        return str(value.value).split("\0", 1)[0]
    if value.type is ValueType.BINARY:
        return escape_binary(bytes(value.value))  # type: ignore[arg-type]
    return str(value.value)


def format_key(key: str, vtype: ValueType, value: CmapValue | None, *, quiet: bool = False,
               show_binary: bool = False) -> str:
    """One output line (with its newline) exactly as corosync-cmapctl prints it.

    ``value`` may be None only for BINARY without ``-b`` (the value is not fetched).  Note
    the C tool's quiet mode still prints ``bin)`` for binary keys.
    """
    head = "" if quiet else f"{key} ("
    if vtype is ValueType.BINARY:
        line = head + "bin)"
        if show_binary:
            line += " = " + (escape_binary(bytes(value.value)) if value is not None  # type: ignore
                             else "*empty*")
        return line + "\n"
    assert value is not None
    body = format_value(value)
    return (body if quiet else f"{head}{vtype.tag}) = {body}") + "\n"


# --------------------------------------------------------------------------------------------
# Parsing values as the C tool's sscanf does
# --------------------------------------------------------------------------------------------

_INT_RE: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?)(\d+)")
_FLOAT_RE: Final = re.compile(
    r"[ \t\n\v\f\r]*([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))",
    re.IGNORECASE)
_I64_MIN, _I64_MAX, _U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


def scan_signed(text: str) -> int | None:
    """``sscanf("%" PRId64)``: leading space, sign, digits, trailing garbage ignored,
    saturating like strtoll.  None when no number starts the text."""
    m = _INT_RE.match(text)
    if m is None:
        return None
    n = int(m.group(2)) * (-1 if m.group(1) == "-" else 1)
    return max(_I64_MIN, min(_I64_MAX, n))


def scan_unsigned(text: str) -> int | None:
    """``sscanf("%" PRIu64)``: like strtoull a minus sign negates modulo 2**64 ("-1" is
    18446744073709551615); out of range saturates."""
    m = _INT_RE.match(text)
    if m is None:
        return None
    n = int(m.group(2))
    if n > _U64_MAX:
        return _U64_MAX
    return (-n) % (1 << 64) if m.group(1) == "-" else n


def scan_float(text: str) -> float | None:
    m = _FLOAT_RE.match(text)
    return None if m is None else float(m.group(1))


def to_float32(x: float) -> float:
    """What strtof stores: overflow becomes infinity instead of an error."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]  # type: ignore[no-any-return]
    except OverflowError:
        return float("inf") if x > 0 else float("-inf")


def _fgets_chunks(f: IO[bytes], size: int = 1024) -> Iterator[bytes]:
    """What ``fgets(buf, 1024, f)`` returns: lines, with lines of 1024 bytes or more cut into
    1023-byte pieces that the C tool then handles as lines of their own."""
    for line in f:
        while len(line) > size - 1:
            yield line[:size - 1]
            line = line[size - 1:]
        if line:
            yield line


class ToolExit(Exception):
    """Leave the tool with ``code`` (messages were already written)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------


class CmapCtl:
    def __init__(self, out: IO[bytes], err: IO[bytes], stdin: IO[bytes],
                 connect: Callable[[MapId], Cmap], sleep: Callable[[float], None],
                 prog: str = PROG) -> None:
        self.out, self.err, self.stdin = out, err, stdin
        self.prog = prog  # argv[0], which getopt's messages start with
        self.connect = connect
        self.sleep = sleep
        self.quiet = False
        self.show_binary = False
        self.handle: Cmap | None = None

    # -- output helpers ------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text.encode("utf-8", "surrogateescape"))

    def error(self, text: str) -> None:
        self.out.flush()
        self.err.write(text.encode("utf-8", "surrogateescape"))
        self.err.flush()

    def fail(self, text: str) -> NoReturn:
        self.error(text)
        raise ToolExit(1)

    @property
    def h(self) -> Cmap:
        assert self.handle is not None
        return self.handle

    def retrying(self, call: Callable[[], T]) -> T:
        """``call()``, retried like the C tool while it fails with CS_ERR_TRY_AGAIN: up to
        :data:`MAX_TRY_AGAIN` more times, one second apart; then its error is raised."""
        retries = 0
        while True:
            try:
                return call()
            except CsError as exc:
                if exc.code != CsErrorCode.ERR_TRY_AGAIN or retries >= MAX_TRY_AGAIN:
                    raise
                retries += 1
                self.sleep(1)

    # -- print ---------------------------------------------------------------------------------

    def fetch(self, key: str, vtype: ValueType) -> CmapValue | None:
        """The value to print, retrying CS_ERR_TRY_AGAIN like the C tool; None after printing
        the tool's error line."""
        if vtype is ValueType.BINARY and not self.show_binary:
            return CmapValue(vtype, b"")
        try:
            return CmapValue(vtype, self.retrying(lambda: self.h.get_typed(key, vtype)))
        except CsError as exc:
            self.error(f"Can't get value of {key}. Error {cs_strerror(exc.code)}\n")
            return None

    def print_key(self, key: str, vtype: ValueType, value: CmapValue | None = None) -> None:
        if value is None:
            value = self.fetch(key, vtype)
            if value is None:
                return
        self.write(format_key(key, vtype, value, quiet=self.quiet,
                              show_binary=self.show_binary))

    def iterate(self, prefix: str) -> Iterator[IterEntry]:
        """The keys under ``prefix``; a failing ITER_INIT ends the tool, a failing ITER_NEXT
        ends the iteration silently (both as in the C tool)."""
        try:
            handle = self.h.iter_init(prefix)
        except CsError as exc:
            self.fail(f"Failed to initialize iteration. Error {cs_strerror(exc.code)}\n")
        try:
            while True:
                try:
                    entry = self.h.iter_next(handle)
                except CsError:
                    return
                if entry is None:
                    return
                yield entry
        finally:
            try:
                self.h.iter_finalize(handle)
            except CsError:
                pass

    def print_iter(self, prefix: str) -> bool:
        """Print every key under ``prefix``; True when there was none."""
        empty = True
        for entry in self.iterate(prefix):
            empty = False
            self.print_key(entry.key, entry.type)
        return empty

    # -- delete --------------------------------------------------------------------------------

    def delete_with_prefix(self, prefix: str) -> None:
        for entry in self.iterate(prefix):
            try:
                self.h.delete(entry.key)
            except CsError as exc:
                self.error(f"Can't delete key {entry.key}. Error {cs_strerror(exc.code)}\n")

    # -- set -----------------------------------------------------------------------------------

    def set_key(self, key: str, type_s: str, value_s: str) -> None:
        try:
            vtype = ValueType.from_tag(type_s)
        except ValueError:
            self.fail(f"Unknown type {type_s}\n")
        value: int | float | str | bytes
        if vtype in (ValueType.INT8, ValueType.INT16, ValueType.INT32, ValueType.INT64):
            parsed: int | float | None = scan_signed(value_s)
        elif vtype in (ValueType.UINT8, ValueType.UINT16, ValueType.UINT32, ValueType.UINT64):
            parsed = scan_unsigned(value_s)
        elif vtype in (ValueType.FLOAT, ValueType.DOUBLE):
            parsed = scan_float(value_s)
        else:
            parsed = 0
        if parsed is None:
            self.fail(f"{value_s} is not valid {type_s} type value\n")
        if vtype.is_integer:  # (64-bit values saturated while scanning: always in range)
            lo, hi = int_range(vtype)
            if not lo <= parsed <= hi:  # type: ignore[operator]
                self.fail(f"{value_s} is not valid {vtype.tag} integer\n")
        if vtype is ValueType.STRING:
            value = value_s
        elif vtype is ValueType.BINARY:
            value = self.read_binary(value_s)
        elif vtype is ValueType.FLOAT:
            value = to_float32(float(parsed))  # type: ignore[arg-type]
        else:
            value = parsed  # type: ignore[assignment]
        try:
            self.h.set(key, value, vtype)
        except CsError as exc:
            self.fail(f"Failed to set key {key}. Error {cs_strerror(exc.code)}\n")

    def read_binary(self, fname: str) -> bytes:
        if fname == "-":
            return self.stdin.read()
        try:
            with open(fname, "rb") as f:
                return f.read()
        except OSError as exc:
            self.fail(f"Can't open input file: {os.strerror(exc.errno or 0)}\n")

    # -- load ----------------------------------------------------------------------------------

    def load(self, filename: str) -> None:
        try:
            f = open(filename, "rb")
        except OSError as exc:
            self.error(f"Couldn't open file.: {os.strerror(exc.errno or 0)}\n")
            return
        with f:
            for raw in _fgets_chunks(f):
                line = raw.decode("utf-8", "surrogateescape")
                body = line.lstrip(" \t")
                if body.startswith(("#", "\n")):
                    continue
                # strtok(" \n"): tokens split on spaces and newlines only (not tabs)
                tokens = [t for t in re.split(r"[ \n]+", body) if t]
                key = tokens[0] if tokens else None
                if key is not None and key.startswith("^"):
                    if key.startswith("^^"):
                        self.delete_with_prefix(key[2:])
                    else:
                        try:
                            self.h.delete(key[1:])
                        except CsError as exc:
                            self.error(f"Can't delete key {key[1:]}. Error "
                                       f"{cs_strerror(exc.code)}\n")
                    continue
                if len(tokens) < 3:
                    self.fail(f"Both type and value for key "
                              f"{key if key is not None else '(null)'} are required\n")
                self.set_key(tokens[0], tokens[1], tokens[2])

    # -- track ---------------------------------------------------------------------------------

    def on_notify(self, note: Notification) -> None:
        if note.event == TrackType.ADD:
            prefix, value = "create> ", note.new_value
        elif note.event == TrackType.DELETE:
            prefix, value = "delete> ", note.old_value
        elif note.event == TrackType.MODIFY:
            prefix, value = "modify> ", note.new_value
        else:
            self.write("unknown change> ")
            return
        self.write(prefix)
        if value is not None:
            self.print_key(note.key, value.type, value)
        self.out.flush()

    def track(self, keys: list[str], prefix: bool) -> None:
        flags = TrackType.ADD | TrackType.DELETE | TrackType.MODIFY
        if prefix:
            flags |= TrackType.PREFIX
        for key in keys:
            try:
                self.h.track_add(key, flags, self.on_notify)
            except CsError as exc:
                self.fail(f"Failed to add tracking function. Error {cs_strerror(exc.code)}\n")
        self.write('Type "q" to finish\n')
        self.out.flush()
        poller = select.poll()
        poller.register(self.h.fileno(), select.POLLIN)
        stdin_fd = self.stdin.fileno()
        poller.register(stdin_fd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if ready.get(stdin_fd, 0) & (select.POLLIN | select.POLLHUP):
                # fgets(buf, 3): up to two characters of a line; EOF or "q..." quits
                data = os.read(stdin_fd, 2)
                if not data or data.startswith(b"q"):
                    return
                if not data.endswith(b"\n"):
                    os.read(stdin_fd, 4096)   # rest of the line
            if ready.get(self.h.fileno(), 0):
                try:
                    self.h.dispatch(DispatchFlags.ALL)
                except CsError as exc:
                    self.error(f"Dispatch error {cs_strerror(exc.code)}\n")
                    return

    # -- main ----------------------------------------------------------------------------------

    def initialize(self, map_id: MapId) -> None:
        try:
            self.handle = self.retrying(lambda: self.connect(map_id))
        except CsError as exc:
            self.fail(f"Failed to initialize the cmap API. Error {cs_strerror(exc.code)}\n")

    def main(self, argv: list[str]) -> int:
        action = "print"
        track_prefix = True
        map_id = MapId.DEFAULT
        settings_file = ""
        clear_opt = ""
        operands: list[str] = []
        try:
            for item in gnu_getopt(argv, OPTSTRING, self.prog):
                if isinstance(item, list):
                    operands = item
                    break
                opt, arg = item
                if opt == "h":
                    self.write(HELP)
                    return 0
                if opt == "b":
                    self.show_binary = True
                elif opt == "q":
                    self.quiet = True
                elif opt in "gsdD":
                    action = {"g": "get", "s": "set", "d": "delete", "D": "delete_prefix"}[opt]
                elif opt == "p":
                    settings_file, action = arg or "", "load"
                elif opt == "C":
                    if arg not in CLEAR_TARGETS:
                        self.error("argument to -C should be 'knet', 'totem', 'ipc', "
                                   "'schedmiss' or 'all'\n")
                        return 1
                    action, clear_opt, map_id = "clear", arg, MapId.STATS
                elif opt == "t":
                    action, track_prefix = "track", False
                elif opt == "T":
                    action = "track"
                elif opt == "m":
                    if arg in ("icmap", "default"):
                        map_id = MapId.DEFAULT
                    elif arg == "stats":
                        map_id = MapId.STATS
                    else:
                        self.error("invalid map name, must be 'default', 'icmap' or 'stats'\n")
                        return 1
        except GetoptError as exc:
            self.error(exc.message + "\n")
            return 1

        if not operands and action not in ("load", "clear", "print"):
            self.error("Expected key after options\n")
            return 1
        try:
            self.initialize(map_id)
            return self.run_action(action, operands, track_prefix, settings_file, clear_opt)
        except ToolExit as done:
            return done.code
        finally:
            if self.handle is not None:
                self.handle.finalize()
            self.out.flush()

    def run_action(self, action: str, args: list[str], track_prefix: bool,
                   settings_file: str, clear_opt: str) -> int:
        if action == "print":
            if not args:
                return 1 if self.print_iter("") else 0
            empty = sum(self.print_iter(prefix) for prefix in args)
            return 1 if empty > 0 and empty >= len(args) else 0
        if action == "get":
            for key in args:
                try:
                    _length, vtype = self.h.get_info(key)
                except CsError as exc:
                    self.fail(f"Can't get key {key}. Error {cs_strerror(exc.code)}\n")
                self.print_key(key, vtype)
            return 0
        if action == "delete":
            for key in args:
                try:
                    self.h.delete(key)
                except CsError as exc:
                    self.fail(f"Can't delete key {key}. Error {cs_strerror(exc.code)}\n")
            return 0
        if action == "delete_prefix":
            for prefix in args:
                self.delete_with_prefix(prefix)
            return 0
        if action == "load":
            self.load(settings_file)
            return 0
        if action == "track":
            self.track(args, track_prefix)
            return 0
        if action == "set":
            if len(args) < 3:
                self.fail("At least 3 parameters are expected for set\n")
            self.set_key(args[0], args[1], args[2])
            return 0
        # clear: the C tool ignores the result
        try:
            self.h.set_uint32(f"stats.clear.{clear_opt}", 1)
        except CsError:
            pass
        return 0


def _c_signals() -> None:
    """Like the C tool: a closed pipe (``| head``) or ^C (ending ``-t``) kills the process
    silently instead of raising in Python."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    """``argv`` without the program name.  From the command line (argv None) getopt errors
    name the program as ``sys.argv[0]``, like glibc names argv[0] (a console script's path
    as it was started); otherwise as :data:`PROG`."""
    _c_signals()
    tool = CmapCtl(sys.stdout.buffer, sys.stderr.buffer, sys.stdin.buffer,
                   connect=lambda m: Cmap.initialize(m), sleep=time.sleep,
                   prog=sys.argv[0] if argv is None and sys.argv[0] else PROG)
    return tool.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
