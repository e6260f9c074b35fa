"""corosync-keygen: write a random private key for the crypto envelope (and knet).

Command line, messages and exit codes are those of Debian's corosync 3.1.7 tool
(shared/reference/common): ``-k FILE`` (default /etc/corosync/authkey), ``-s SIZE`` in
bytes (128..4096, default 256), ``-r FILE`` random source, ``-l`` accepted and ignored,
``-h`` usage.  Options are processed in order like getopt_long (so ``-h`` after a bad
``-s`` never gets a chance), long options may be abbreviated.

Two deliberate differences, both safer:

* The default random source is read with :func:`os.urandom` (getrandom), which never
  blocks once the kernel pool is initialised; an explicit ``-r`` file is read as given,
  and a source that runs dry is an error instead of an endless "press keys" loop.
* The key is written to a temporary file created with O_CREAT|O_EXCL and mode 0400 in the
  target's directory, synced, then renamed over the target: a crash never leaves a
  truncated key, and the key is never readable by others, even briefly.  If the target
  is a symlink, its final destination is replaced and the link kept.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Optional, TextIO

PROG = "corosync-keygen"
DEFAULT_KEYFILE = "/etc/corosync/authkey"
DEFAULT_RANDOM = "/dev/urandom"
DEFAULT_SIZE = 256
SIZE_MIN = 128  # TOTEM_PRIVATE_KEY_LEN_MIN
SIZE_MAX = 4096  # TOTEM_PRIVATE_KEY_LEN_MAX

USAGE = (
    "Usage: corosync-keygen [-k <keyfile>] [-s size] [-m <randomfile>] [-l] [-h]\n"
    "     -k / --key-file=<filename> -  Write to the specified keyfile\n"
    "            instead of the default " + DEFAULT_KEYFILE + ".\n"
    "     -r / --random-file -  Random number source file. Default is \n"
    "            /dev/urandom. As an example /dev/random may be requested\n"
    "            (that may require user input for entropy).\n"
    "     -l / --less-secure - Not used, option is kept only\n"
    "            for compatibility.\n"
    "     -s / --size -  Length of key.\n"
    "     -h / --help -  Print basic usage.\n"
)

SHORT_WITH_ARG = {"k": "key-file", "r": "random-file", "s": "size"}
SHORT_FLAGS = {"l": "less-secure", "h": "help"}
LONG_WITH_ARG = {"key-file", "random-file", "size"}
LONG_FLAGS = {"less-secure", "help"}


class _Exit(Exception):
    """Terminate with ``code``; ``message`` (if any) goes to stderr as err()/errx() would."""

    def __init__(self, code: int, message: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _parse_options(argv: list[str], err: TextIO, prog: str = PROG
                   ) -> Iterator[tuple[str, Optional[str]]]:
    """(long option name, argument) pairs, one at a time in order, getopt_long style.

    Errors print glibc's getopt diagnostics (starting with ``prog``, argv[0]) and yield
    ("?", None), the way getopt returns '?' and lets the caller continue to its default
    case.  Lazily, like getopt: the tool stops at -h or at an error, and whatever follows
    is never looked at (nor complained about).  Non-option arguments are ignored, as the
    real tool ignores them.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            known = LONG_WITH_ARG | LONG_FLAGS
            matches = sorted(n for n in known if n.startswith(name)) if name not in known else [name]
            if not matches:
                err.write(f"{prog}: unrecognized option '--{name}'\n")
                yield "?", None
                continue
            if len(matches) > 1:
                err.write(f"{prog}: option '--{name}' is ambiguous; possibilities:"
                          + "".join(f" '--{m}'" for m in matches) + "\n")
                yield "?", None
                continue
            full = matches[0]
            if full in LONG_FLAGS:
                if eq:
                    err.write(f"{prog}: option '--{full}' doesn't allow an argument\n")
                    yield "?", None
                else:
                    yield full, None
                continue
            if not eq:
                if i >= len(argv):
                    err.write(f"{prog}: option '--{full}' requires an argument\n")
                    yield "?", None
                    continue
                value = argv[i]
                i += 1
            yield full, value
            continue
        if arg.startswith("-") and len(arg) > 1:
            pos = 1
            while pos < len(arg):
                ch = arg[pos]
                pos += 1
                if ch in SHORT_FLAGS:
                    yield SHORT_FLAGS[ch], None
                elif ch in SHORT_WITH_ARG:
                    if pos < len(arg):
                        yield SHORT_WITH_ARG[ch], arg[pos:]
                    elif i < len(argv):
                        yield SHORT_WITH_ARG[ch], argv[i]
                        i += 1
                    else:
                        err.write(f"{prog}: option requires an argument -- '{ch}'\n")
                        yield "?", None
                    break
                else:
                    err.write(f"{prog}: invalid option -- '{ch}'\n")
                    yield "?", None
            continue
        # a non-option argument: skipped (getopt permutes it to the end; nobody reads it)


def _parse_size(text: str) -> Optional[int]:
    """strtoll(text, &end, 10) with the tool's checks: whole string, in range."""
    s = text.lstrip(" \t\n\r\f\v")
    digits = s[1:] if s[:1] in ("+", "-") else s
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(s)
    if not SIZE_MIN <= value <= SIZE_MAX:
        return None
    return value


def _read_random(path: str, size: int) -> bytes:
    if path == DEFAULT_RANDOM:
        return os.urandom(size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Exit(1, f"Failed to open random source: {exc.strerror}") from None
    try:
        chunks: list[bytes] = []
        got = 0
        while got < size:
            try:
                chunk = os.read(fd, size - got)
            except OSError as exc:
                raise _Exit(1, f"Could not read {path}: {exc.strerror}") from None
            if not chunk:
                raise _Exit(1, f"Could not read {path}: only {got * 8} of {size * 8} bits available")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_key(keyfile: str, key: bytes, out: TextIO) -> None:
    """Create a 0400 temp file next to the key, fill and sync it, rename it into place."""
    target = os.path.realpath(keyfile)
    directory = os.path.dirname(target) or "."
    tmp = os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
    except OSError as exc:
        raise _Exit(2, f"Could not create {keyfile}: {exc.strerror}") from None
    done = False
    try:
        try:
            os.fchmod(fd, 0o400)  # the umask may have narrowed it further; be exact
        except OSError as exc:
            raise _Exit(3, f"Failed to set key file permissions to 0400: {exc.strerror}") from None
        out.write(f"Writing corosync key to {keyfile}.\n")
        out.flush()
        try:
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise _Exit(4, f"Could not write {keyfile}: {exc.strerror}") from None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _Exit(5, f"Could not close {keyfile}: {exc.strerror}") from None
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _Exit(2, f"Could not create {keyfile}: {exc.strerror}") from None
        done = True
    finally:
        os.close(fd)
        if not done:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def run(argv: list[str], out: TextIO, err: TextIO, prog: str = PROG) -> int:
    """The tool on ``argv`` (without the program name); ``prog`` is its argv[0]: getopt's
    messages start with it, err()/errx()'s with its base name."""
    keyfile: Optional[str] = None
    random_path = DEFAULT_RANDOM
    size = DEFAULT_SIZE
    try:
        for name, value in _parse_options(argv, err, prog):
            if name == "key-file":
                keyfile = value
            elif name == "random-file":
                assert value is not None
                random_path = value
            elif name == "size":
                assert value is not None
                parsed = _parse_size(value)
                if parsed is None:
                    raise _Exit(1, f"Unsupported key size (supported <{SIZE_MIN},{SIZE_MAX}>)\n")
                size = parsed
            elif name == "help":
                out.write(USAGE + "\n")
                return 0
            elif name == "less-secure":
                pass  # kept for compatibility, as in the real tool
            else:
                out.write("Error parsing command line options.\n")
                return 1
        out.write("Corosync Cluster Engine Authentication key generator.\n")
        if keyfile is None:
            keyfile = DEFAULT_KEYFILE
        out.write(f"Gathering {size * 8} bits for key from {random_path}.\n")
        out.flush()
        if random_path == "/dev/random":
            out.write("Press keys on your keyboard to generate entropy.\n")
        key = _read_random(random_path, size)
        _write_key(keyfile, key, out)
        out.flush()
        return 0
    except _Exit as exc:
        out.flush()
        if exc.message is not None:
            err.write(f"{os.path.basename(prog)}: {exc.message}\n")
            err.flush()
        return exc.code


def main(argv: Optional[list[str]] = None) -> int:
    """``argv`` without the program name.  From the command line (argv None) the program is
    named as ``sys.argv[0]``, like glibc names argv[0] (a console script's path as it was
    started); otherwise as :data:`PROG`."""
    prog = sys.argv[0] if argv is None and sys.argv[0] else PROG
    return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr, prog)


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
