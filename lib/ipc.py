"""libqb IPC, client side, plus the wire structures the executive's server shares.

corosync's client libraries talk to the executive through libqb IPC (spec/ipc-wire.md §1-§3):
a per-service *setup* stream socket carries a 24-byte connection request and a 12328-byte
response; then messages flow either over datagram sockets (``SOCKET``, type 0) or over three
shared-memory ring buffers guarded by process-shared POSIX semaphores (``SHM``, type 1, the
default of corosync and the only one Pacemaker accepts).  The *server* decides the type.

This module holds everything both ends need (header structs, address encoding, the SHM ring
and its semaphore, the SOCKET control file) and :class:`IpcClient`, a blocking client usable
without trio (like libqb's), with :class:`AsyncIpcClient` as a trio wrapper.  It speaks to our
executive and to a stock corosync 3.1.7 alike.

Only Linux LP64 (amd64/arm64) layouts are supported; the semaphore is glibc's ``sem_t`` driven
through ctypes on the mapped address, so no compiled extension is needed.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import mmap
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable, Final

# --------------------------------------------------------------------------------------------
# Constants (libqb qbipc_common.h / ipc_int.h, corosync corotypes.h)
# --------------------------------------------------------------------------------------------

QB_IPC_MSG_USER_START: Final = 0
QB_IPC_MSG_AUTHENTICATE: Final = -1
QB_IPC_MSG_NEW_EVENT_SOCK: Final = -2
QB_IPC_MSG_DISCONNECT: Final = -3

#: What every corosync client library asks for (IPC_REQUEST_SIZE = 8192 * 128).
DEFAULT_MAX_MSG_SIZE: Final = 1048576
PATH_MAX: Final = 4096
#: sizeof(struct qb_ipc_connection_response): the server always sends all of it.
CONN_RESPONSE_SIZE: Final = 12328
CONN_REQUEST_SIZE: Final = 24
#: sizeof(struct sockaddr_un.sun_path): libqb binds/connects abstract names padded to this.
SUN_PATH_LEN: Final = 108
#: Debian's libqb100 switches to filesystem setup sockets in /tmp when this file exists.
FORCE_FILESYSTEM_SOCKETS: Final = "/etc/libqb/force-filesystem-sockets"
FORCE_FILESYSTEM_DIR: Final = "/tmp"
#: Per-node IPC rendezvous directory (our extension): filesystem setup sockets live there.
IPC_DIR_ENV: Final = "COROSYNC_IPC_DIR"
SHM_DIR: Final = "/dev/shm"


class IpcType(enum.IntEnum):
    """enum qb_ipc_type as sent in the connection response."""

    SOCKET = 0
    SHM = 1


class CsError(enum.IntEnum):
    """corosync's ``cs_error_t`` (corotypes.h) — the one definition in this project.

    The executive's services, the cmap store, the IPC layers and the client libraries all
    use this enum (the client package re-exports it as ``corosync.CsErrorCode``).  Members
    are the C names without the ``CS_`` prefix; note CS_OK is 1, not 0."""

    OK = 1
    ERR_LIBRARY = 2
    ERR_VERSION = 3
    ERR_INIT = 4
    ERR_TIMEOUT = 5
    ERR_TRY_AGAIN = 6
    ERR_INVALID_PARAM = 7
    ERR_NO_MEMORY = 8
    ERR_BAD_HANDLE = 9
    ERR_BUSY = 10
    ERR_ACCESS = 11
    ERR_NOT_EXIST = 12
    ERR_NAME_TOO_LONG = 13
    ERR_EXIST = 14
    ERR_NO_SPACE = 15
    ERR_INTERRUPT = 16
    ERR_NAME_NOT_FOUND = 17
    ERR_NO_RESOURCES = 18
    ERR_NOT_SUPPORTED = 19
    ERR_BAD_OPERATION = 20
    ERR_FAILED_OPERATION = 21
    ERR_MESSAGE_ERROR = 22
    ERR_QUEUE_FULL = 23
    ERR_QUEUE_NOT_AVAILABLE = 24
    ERR_BAD_FLAGS = 25
    ERR_TOO_BIG = 26
    ERR_NO_SECTIONS = 27
    ERR_CONTEXT_NOT_FOUND = 28
    ERR_TOO_MANY_GROUPS = 30
    ERR_SECURITY = 100

    @property
    def c_name(self) -> str:
        """The C enumerator's name (``CS_OK``, ``CS_ERR_TRY_AGAIN`` …): what
        ``cs_strerror`` prints and what the tools show."""
        return f"CS_{self.name}"


_ERRNO_TO_CS: Final = {
    errno.EBADF: CsError.ERR_BAD_HANDLE, errno.ENOMEM: CsError.ERR_NO_MEMORY,
    errno.ENOMSG: CsError.ERR_TRY_AGAIN, errno.ENOBUFS: CsError.ERR_TRY_AGAIN,
    errno.ETIMEDOUT: CsError.ERR_TRY_AGAIN, errno.EAGAIN: CsError.ERR_TRY_AGAIN,
    errno.EINVAL: CsError.ERR_INVALID_PARAM, errno.EBUSY: CsError.ERR_BUSY,
    errno.EACCES: CsError.ERR_ACCESS, errno.EOVERFLOW: CsError.ERR_NAME_TOO_LONG,
    errno.EEXIST: CsError.ERR_EXIST, errno.ENOSPC: CsError.ERR_NO_SPACE,
    errno.EINTR: CsError.ERR_INTERRUPT, errno.ENOENT: CsError.ERR_NOT_EXIST,
    errno.ENODEV: CsError.ERR_NOT_EXIST, errno.ENOSYS: CsError.ERR_NOT_SUPPORTED,
    errno.ENOTSUP: CsError.ERR_NOT_SUPPORTED, errno.EBADMSG: CsError.ERR_MESSAGE_ERROR,
    errno.EMSGSIZE: CsError.ERR_TOO_BIG, errno.E2BIG: CsError.ERR_TOO_BIG,
}


def errno_to_cs_error(err: int) -> CsError:
    """corosync's qb_to_cs_error: what a client library reports for a transport errno."""
    return _ERRNO_TO_CS.get(abs(err), CsError.ERR_LIBRARY)


class IpcError(OSError):
    """A transport-level failure; ``cs_error`` is what a corosync library would return."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.cs_error = errno_to_cs_error(err)


# --------------------------------------------------------------------------------------------
# Message headers (§1.10): 4-byte ints, each aligned to 8.
# --------------------------------------------------------------------------------------------

REQUEST_HEADER: Final = struct.Struct("<i4xi4x")          # id, size            -> 16 bytes
RESPONSE_HEADER: Final = struct.Struct("<i4xi4xi4x")      # id, size, error     -> 24 bytes
CONN_REQUEST: Final = struct.Struct("<i4xi4xI4x")         # id, size, max_msg   -> 24 bytes
CONN_RESPONSE_HEAD: Final = struct.Struct("<i4xi4xi4xiIq")  # id,size,error,type,max,conn -> 40


def pack_request(msg_id: int, payload: bytes = b"") -> bytes:
    """A request: 16-byte qb_ipc_request_header + payload (size counts the header)."""
    return REQUEST_HEADER.pack(msg_id, REQUEST_HEADER.size + len(payload)) + payload


def unpack_request_header(message: bytes | memoryview) -> tuple[int, int]:
    """(id, size) of a request; raises ValueError if the header is truncated."""
    if len(message) < REQUEST_HEADER.size:
        raise ValueError(f"request of {len(message)} bytes is shorter than its header")
    return REQUEST_HEADER.unpack_from(message)


def pack_response(msg_id: int, payload: bytes = b"", error: int = CsError.OK) -> bytes:
    """A response or event: 24-byte qb_ipc_response_header + payload."""
    return RESPONSE_HEADER.pack(msg_id, RESPONSE_HEADER.size + len(payload), int(error)) + payload


def unpack_response(message: bytes) -> tuple[int, int, bytes]:
    """(id, error, payload) of a response/event; ValueError if the header is inconsistent."""
    if len(message) < RESPONSE_HEADER.size:
        raise ValueError(f"response of {len(message)} bytes is shorter than its header")
    msg_id, size, error = RESPONSE_HEADER.unpack_from(message)
    if size != len(message):
        raise ValueError(f"response header says {size} bytes, got {len(message)}")
    return msg_id, error, message[RESPONSE_HEADER.size:]


def pack_conn_request(max_msg_size: int = DEFAULT_MAX_MSG_SIZE) -> bytes:
    return CONN_REQUEST.pack(QB_IPC_MSG_AUTHENTICATE, CONN_REQUEST_SIZE, max_msg_size)


def _cstr(field: str | bytes) -> bytes:
    raw = field.encode() if isinstance(field, str) else field
    if len(raw) >= PATH_MAX:
        raise ValueError("path does not fit PATH_MAX")
    return raw + b"\0" * (PATH_MAX - len(raw))


def pack_conn_response(error: int, conn_type: int = 0, max_msg_size: int = 0, cookie: int = 0,
                       request: str = "", response: str = "", event: str = "") -> bytes:
    """The full 12328-byte connection response (also for rejections: the client reads it all)."""
    return (CONN_RESPONSE_HEAD.pack(QB_IPC_MSG_AUTHENTICATE, CONN_RESPONSE_SIZE, error,
                                    conn_type, max_msg_size, cookie)
            + _cstr(request) + _cstr(response) + _cstr(event))


def _field(buf: bytes | mmap.mmap, off: int) -> str:
    raw = buf[off:off + PATH_MAX]
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def unpack_conn_response(buf: bytes) -> tuple[int, int, int, str, str, str]:
    """(error, type, max_msg_size, request, response, event) of a connection response."""
    if len(buf) != CONN_RESPONSE_SIZE:
        raise ValueError(f"connection response of {len(buf)} bytes")
    msg_id, size, error, conn_type, max_msg, _cookie = CONN_RESPONSE_HEAD.unpack_from(buf)
    if msg_id != QB_IPC_MSG_AUTHENTICATE:
        raise ValueError(f"connection response id {msg_id}")
    base = CONN_RESPONSE_HEAD.size
    return (error, conn_type, max_msg, _field(buf, base), _field(buf, base + PATH_MAX),
            _field(buf, base + 2 * PATH_MAX))


# --------------------------------------------------------------------------------------------
# Addresses (§1.1, §2.1)
# --------------------------------------------------------------------------------------------


def abstract_address(name: str | bytes) -> bytes:
    """libqb's abstract address: NUL, name, NUL padding to the full 108-byte sun_path.

    The padding is part of the name for the kernel, so ``b"\\0cmap"`` would be a different
    socket; names longer than 107 bytes are truncated exactly as libqb truncates them.
    """
    raw = name.encode() if isinstance(name, str) else name
    raw = raw[:SUN_PATH_LEN - 1]
    return b"\0" + raw + b"\0" * (SUN_PATH_LEN - 1 - len(raw))


def resolve_ipc_dir(ipc_dir: str | os.PathLike[str] | None) -> str | None:
    """The rendezvous directory: explicit argument, else $COROSYNC_IPC_DIR, else libqb's
    force-filesystem-sockets switch (/tmp on Debian), else None (= abstract)."""
    if ipc_dir is not None:
        return os.fspath(ipc_dir)
    env = os.environ.get(IPC_DIR_ENV)
    if env:
        return env
    if os.path.exists(FORCE_FILESYSTEM_SOCKETS):
        return FORCE_FILESYSTEM_DIR
    return None


def setup_address(service: str, ipc_dir: str | os.PathLike[str] | None = None) -> str | bytes:
    """Address of a service's setup socket: a filesystem path or a padded abstract name."""
    directory = resolve_ipc_dir(ipc_dir)
    if directory is not None:
        return os.path.join(directory, service)
    return abstract_address(service)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a connected AF_UNIX stream peer (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Process-shared semaphore (glibc sem_t in the ring header, §3.4)
# --------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
for _fn in ("sem_init", "sem_post", "sem_trywait", "sem_getvalue", "sem_destroy"):
    getattr(_libc, _fn).argtypes = [ctypes.c_void_p] + ([ctypes.c_int, ctypes.c_uint]
                                                       if _fn == "sem_init" else
                                                       [ctypes.POINTER(ctypes.c_int)]
                                                       if _fn == "sem_getvalue" else [])
    getattr(_libc, _fn).restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_HAVE_CLOCKWAIT = hasattr(_libc, "sem_clockwait")
if _HAVE_CLOCKWAIT:
    _libc.sem_clockwait.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Timespec)]
    _libc.sem_clockwait.restype = ctypes.c_int
_libc.sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]
_libc.sem_timedwait.restype = ctypes.c_int


class Semaphore:
    """A glibc ``sem_t`` living at ``offset`` inside a shared mapping.

    We never re-implement the futex protocol: the C client on the other side uses glibc's
    functions, so we call the very same ones through ctypes on the mapped address.  Every call
    is non-blocking except :meth:`wait`, which the caller bounds with a timeout.
    """

    SIZE: Final = 32

    def __init__(self, mapping: mmap.mmap, offset: int) -> None:
        # The ctypes view pins the mapping (mmap refuses to close while exported): drop it in
        # release() before closing the mmap.
        self._view: ctypes.Array[ctypes.c_char] | None = \
            (ctypes.c_char * self.SIZE).from_buffer(mapping, offset)
        self._addr = ctypes.addressof(self._view)

    def init(self, value: int = 0) -> None:
        if _libc.sem_init(self._addr, 1, value) != 0:
            raise OSError(ctypes.get_errno(), "sem_init")

    def post(self) -> None:
        if _libc.sem_post(self._addr) != 0:
            raise OSError(ctypes.get_errno(), "sem_post")

    def trywait(self) -> bool:
        """Take one count if available; False when the value is 0."""
        if _libc.sem_trywait(self._addr) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            return False
        raise OSError(err, "sem_trywait")

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for one count (the GIL is released meanwhile)."""
        if timeout <= 0:
            return self.trywait()
        deadline = time.monotonic() + timeout
        while True:
            if _HAVE_CLOCKWAIT:
                now = time.clock_gettime(time.CLOCK_MONOTONIC)
                clock = time.CLOCK_MONOTONIC
            else:
                now, clock = time.time(), time.CLOCK_REALTIME
            left = deadline - time.monotonic()
            if left <= 0:
                return self.trywait()
            absolute = now + left
            ts = _Timespec(int(absolute), int((absolute % 1) * 1e9))
            rc = (_libc.sem_clockwait(self._addr, clock, ctypes.byref(ts)) if _HAVE_CLOCKWAIT
                  else _libc.sem_timedwait(self._addr, ctypes.byref(ts)))
            if rc == 0:
                return True
            err = ctypes.get_errno()
            if err == errno.ETIMEDOUT:
                return False
            if err != errno.EINTR:
                raise OSError(err, "sem_wait")

    def value(self) -> int:
        out = ctypes.c_int()
        if _libc.sem_getvalue(self._addr, ctypes.byref(out)) != 0:
            raise OSError(ctypes.get_errno(), "sem_getvalue")
        return out.value

    def destroy(self) -> None:
        _libc.sem_destroy(self._addr)

    def release(self) -> None:
        self._view = None


# --------------------------------------------------------------------------------------------
# SHM ring buffer (§3.1-§3.3)
# --------------------------------------------------------------------------------------------

RING_HEADER: Final = struct.Struct("<III")     # write_pt, read_pt, word_size
RING_HEADER_SIZE: Final = 8248                 # sizeof(struct qb_ringbuffer_shared_s)
RING_HEADER_FILE_SIZE: Final = RING_HEADER_SIZE + 4   # + the int32 flow-control "user data"
OFF_HDR_PATH: Final = 12
OFF_DATA_PATH: Final = 12 + PATH_MAX
OFF_REF_COUNT: Final = 8204
OFF_SEM: Final = 8208
OFF_FLOW_CONTROL: Final = 8240
MAGIC_COMMITTED: Final = 0xA1A1A1A1
MAGIC_WRITING: Final = 0xA110CED0
MAGIC_CONSUMED: Final = 0xD0D0D0D0
CHUNK_OVERHEAD: Final = 12   # length word + magic word + up to 3 bytes rounding (libqb's +12)
_WORD = struct.Struct("<I")
_I32 = struct.Struct("<i")


def shm_data_size(max_msg_size: int) -> int:
    """real_size of a ring's data file: roundup(M + 13, page).  Both ends compute it."""
    page = mmap.PAGESIZE
    return (max_msg_size + 13 + page - 1) // page * page


class RingError(Exception):
    """The peer left a ring in an impossible state (forged or corrupted shared memory)."""


class ShmRing:
    """One libqb ring buffer: ``<base>-header`` + the data file named inside the header.

    The data area is mapped once (libqb maps it twice back-to-back to make wrapping chunks
    contiguous; we split copies at the end instead).  Every index read from shared memory is
    validated, because the other process can write anything there.
    """

    def __init__(self, header_path: str, data_path: str, header: mmap.mmap, data: mmap.mmap,
                 *, owner: bool) -> None:
        self.header_path = header_path
        self.data_path = data_path
        self._hdr = header
        self._data = data
        self.owner = owner
        self.word_size = len(data) // 4
        self.sem = Semaphore(header, OFF_SEM)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, base: str, max_msg_size: int, *, uid: int | None = None,
               gid: int | None = None) -> "ShmRing":
        """Server side: create ``<base>-header`` and ``<base>-data`` (0600, chowned to the
        client), ref_count 1, an initialised process-shared semaphore at 0."""
        header_path, data_path = base + "-header", base + "-data"
        size = shm_data_size(max_msg_size)
        fds: list[int] = []
        try:
            for path, length in ((header_path, RING_HEADER_FILE_SIZE), (data_path, size)):
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
                fds.append(fd)
                os.ftruncate(fd, length)
                if uid is not None and gid is not None:
                    try:
                        os.fchown(fd, uid, gid)
                    except OSError:
                        pass  # unprivileged server: the client runs as us anyway
            header = mmap.mmap(fds[0], RING_HEADER_FILE_SIZE)
            data = mmap.mmap(fds[1], size)
        except BaseException:
            for path in (header_path, data_path)[:len(fds)]:
                _unlink(path)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        RING_HEADER.pack_into(header, 0, 0, 0, size // 4)
        header[OFF_HDR_PATH:OFF_HDR_PATH + PATH_MAX] = _cstr(header_path)
        header[OFF_DATA_PATH:OFF_DATA_PATH + PATH_MAX] = _cstr(data_path)
        _I32.pack_into(header, OFF_REF_COUNT, 1)
        _I32.pack_into(header, OFF_FLOW_CONTROL, 0)
        ring = cls(header_path, data_path, header, data, owner=True)
        ring.sem.init(0)
        return ring

    @classmethod
    def open(cls, base: str, max_msg_size: int) -> "ShmRing":
        """Client side: map an existing ring (server-created) and take a reference."""
        if not base.startswith("/"):
            base = os.path.join(SHM_DIR, "qb-" + base)
        header_path = base + "-header"
        fd = os.open(header_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < RING_HEADER_SIZE:
                raise RingError(f"{header_path}: header file too short")
            header = mmap.mmap(fd, RING_HEADER_SIZE)
        finally:
            os.close(fd)
        try:
            _w, _r, word_size = RING_HEADER.unpack_from(header)
            data_path = _field(header, OFF_DATA_PATH)
            if os.path.dirname(data_path) != os.path.dirname(header_path):
                # never let a (fake) server point us at some other file to map and write
                raise RingError(f"{header_path}: data file {data_path!r} outside the "
                                "connection directory")
            expected = shm_data_size(max_msg_size)
            if word_size * 4 != expected:
                raise RingError(f"{header_path}: word_size {word_size} does not match "
                                f"max_msg_size {max_msg_size}")
            dfd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                if os.fstat(dfd).st_size < expected:
                    raise RingError(f"{data_path}: data file too short")
                data = mmap.mmap(dfd, expected)
            finally:
                os.close(dfd)
        except BaseException:
            header.close()
            raise
        ring = cls(header_path, data_path, header, data, owner=False)
        ring._add_ref(1)
        return ring

    # -- shared words --------------------------------------------------------------------------

    def _add_ref(self, delta: int) -> None:
        (count,) = _I32.unpack_from(self._hdr, OFF_REF_COUNT)
        _I32.pack_into(self._hdr, OFF_REF_COUNT, count + delta)

    @property
    def ref_count(self) -> int:
        return _I32.unpack_from(self._hdr, OFF_REF_COUNT)[0]

    @property
    def flow_control(self) -> int:
        return _I32.unpack_from(self._hdr, OFF_FLOW_CONTROL)[0]

    @flow_control.setter
    def flow_control(self, value: int) -> None:
        _I32.pack_into(self._hdr, OFF_FLOW_CONTROL, value)

    def _pointers(self) -> tuple[int, int]:
        write_pt, read_pt, _ = RING_HEADER.unpack_from(self._hdr)
        if write_pt >= self.word_size or read_pt >= self.word_size:
            raise RingError(f"ring pointers out of range (w={write_pt} r={read_pt})")
        return write_pt, read_pt

    def _word(self, index: int) -> int:
        return _WORD.unpack_from(self._data, (index % self.word_size) * 4)[0]

    def _set_word(self, index: int, value: int) -> None:
        _WORD.pack_into(self._data, (index % self.word_size) * 4, value)

    def _step(self, index: int, length: int) -> int:
        return (index + 2 + (length + 3) // 4) % self.word_size

    # -- writer --------------------------------------------------------------------------------

    def free_bytes(self) -> int:
        write_pt, read_pt = self._pointers()
        if write_pt > read_pt:
            words = read_pt - write_pt + self.word_size - 1
        elif write_pt < read_pt:
            words = read_pt - write_pt - 1
        else:
            words = 0 if self.sem.value() > 0 else self.word_size
        return words * 4

    def write(self, message: bytes | memoryview) -> bool:
        """Append one committed chunk and post the semaphore; False if it does not fit now."""
        length = len(message)
        if self.free_bytes() < length + CHUNK_OVERHEAD:
            return False
        write_pt, _ = self._pointers()
        self._set_word(write_pt, 0)
        self._set_word(write_pt + 1, MAGIC_WRITING)
        start = ((write_pt + 2) % self.word_size) * 4
        first = min(length, len(self._data) - start)
        self._data[start:start + first] = message[:first]
        if first < length:
            self._data[0:length - first] = message[first:]
        self._set_word(write_pt, length)
        struct.pack_into("<I", self._hdr, 0, self._step(write_pt, length))
        self._set_word(write_pt + 1, MAGIC_COMMITTED)
        self.sem.post()
        return True

    # -- reader --------------------------------------------------------------------------------

    def read_taken(self, limit: int) -> bytes:
        """Read the chunk whose semaphore count the caller already took.

        Raises RingError (after re-posting the count, like libqb) when the chunk is not
        committed or longer than ``limit``: the peer broke the protocol."""
        _, read_pt = self._pointers()
        magic = self._word(read_pt + 1)
        length = self._word(read_pt)
        if magic != MAGIC_COMMITTED:
            self.sem.post()
            raise RingError(f"chunk at {read_pt} not committed (magic {magic:#x})")
        if length > limit or length > (self.word_size - 3) * 4:
            self.sem.post()
            raise RingError(f"chunk of {length} bytes exceeds the limit {limit}")
        start = ((read_pt + 2) % self.word_size) * 4
        first = min(length, len(self._data) - start)
        out = self._data[start:start + first]
        if first < length:
            out += self._data[0:length - first]
        self._set_word(read_pt, 0)
        self._set_word(read_pt + 1, MAGIC_CONSUMED)
        struct.pack_into("<I", self._hdr, 4, self._step(read_pt, length))
        return out

    def read(self, limit: int, timeout: float = 0.0) -> bytes | None:
        """Wait up to ``timeout`` for a chunk; None if none arrived."""
        if not self.sem.wait(timeout):
            return None
        return self.read_taken(limit)

    # -- teardown ------------------------------------------------------------------------------

    def close(self, *, unlink: bool | None = None) -> None:
        """Drop our reference and unmap; the owner (server) also destroys and unlinks."""
        if self._hdr.closed:
            return
        try:
            self._add_ref(-1)
            if self.owner:
                self.sem.destroy()
        finally:
            self.sem.release()
            self._hdr.close()
            self._data.close()
            if self.owner if unlink is None else unlink:
                _unlink(self.header_path)
                _unlink(self.data_path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# SOCKET transport control file (§2.4)
# --------------------------------------------------------------------------------------------

CONTROL_SIZE: Final = 24
CTRL_REQUEST_SENT: Final = 0
CTRL_REQUEST_FLOW_CONTROL: Final = 4
CTRL_RESPONSE_SENT: Final = 8
CTRL_EVENT_SENT: Final = 16


def control_add(control: mmap.mmap | None, offset: int, delta: int) -> None:
    """Bump one of the control file's queue counters.

    libqb updates them with atomic ops; a Python read-modify-write can lose an update under a
    race, which only skews libqb's read-burst bound and statistics (never correctness).
    """
    if control is None or control.closed:
        return
    (value,) = _I32.unpack_from(control, offset)
    _I32.pack_into(control, offset, value + delta)


def connection_directory_prefix(server_pid: int, client_pid: int, fd: int) -> str:
    """mkdtemp prefix of a connection's private directory (libqb's naming scheme)."""
    return f"qb-{server_pid}-{client_pid}-{fd}-"


# --------------------------------------------------------------------------------------------
# Blocking client
# --------------------------------------------------------------------------------------------

_LIVENESS_SLICE: Final = 0.2   # re-check the setup socket this often while waiting
_WAITER_LINGER: Final = 5.0    # an idle trio response-waiter thread exits after this long
_WAITER_JOIN: Final = 2.0      # close() waits this long for threads to leave the mappings
_EVENT_YIELD_EVERY: Final = 16  # trio recv_event: a schedule point at least this often


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None or timeout < 0 else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class IpcClient:
    """A libqb IPC client connection to one service (``cmap``, ``cpg``, ...).

    Blocking, thread-agnostic, no trio needed.  One request in flight at a time (corosync's
    libraries are synchronous too); events are read separately with :meth:`recv_event`, and
    :meth:`fileno` is the descriptor to poll for them (libqb's ``qb_ipcc_fd_get``).
    """

    def __init__(self, service: str, setup: socket.socket, conn_type: IpcType,
                 max_msg_size: int, server_pid: int) -> None:
        self.service = service
        self.conn_type = conn_type
        self.max_msg_size = max_msg_size
        self.server_pid = server_pid
        self._setup = setup
        self._closed = False
        self._rings: list[ShmRing] = []
        self._control: mmap.mmap | None = None
        self._control_path: str | None = None
        self._req_sock: socket.socket | None = None
        self._evt_sock: socket.socket | None = None
        self._rxbuf: bytearray | None = None
        #: SHM notification bytes of committed requests not yet sent (socket full)
        self._unsent_notifications = 0
        #: responses still to come for requests whose caller gave up (timeout, cancel):
        #: they are read and dropped before the next caller's own response
        self._owed_responses = 0
        #: run first by close(); each returns False if the SHM mappings must stay mapped
        #: (a helper thread could still be blocked in a semaphore living there)
        self._close_hooks: list[Callable[[], bool]] = []
        #: threads inside the SHM mappings right now (their idents); close() from another
        #: thread wakes them (posts the semaphores) and waits for them before unmapping
        self._users: list[int] = []
        self._users_lock = threading.Lock()
        self._users_gone = threading.Condition(self._users_lock)
        #: set by AsyncIpcClient: while its helper thread runs, SHM response counts go
        #: through it (it sits in the semaphore), so blocking reads take them there too
        self._response_waiter: _ShmResponseWaiter | None = None

    # -- connect -------------------------------------------------------------------------------

    @classmethod
    def connect(cls, service: str, *, ipc_dir: str | os.PathLike[str] | None = None,
                ipc_type: IpcType | int | None = None,
                max_msg_size: int = DEFAULT_MAX_MSG_SIZE, timeout: float = 10.0) -> "IpcClient":
        """Connect to ``service``'s setup socket and complete libqb's handshake.

        ``ipc_type`` does not choose anything (the server decides, §1.6): when given, a
        connection of another type is refused with EPROTO.  Raises :class:`IpcError` with the
        server's errno on rejection (EACCES, EAGAIN, ...) or ECONNREFUSED when nobody listens.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            negotiated, ctype, paths = cls._handshake(sock, service, ipc_dir, ipc_type,
                                                      max_msg_size, timeout)
            pid, _uid, _gid = peer_credentials(sock)
        except BaseException:
            sock.close()
            raise
        client = cls(service, sock, IpcType(ctype), negotiated, pid)
        try:
            if ctype == IpcType.SHM:
                client._open_shm(*paths)
            else:
                client._open_socket(paths[0], paths[1])
        except IpcError:
            client.close()
            raise
        except (OSError, RingError) as exc:
            client.close()
            raise IpcError(getattr(exc, "errno", None) or errno.EPROTO,
                           f"{service}: {exc}") from None
        except BaseException:
            client.close()
            raise
        sock.setblocking(False)
        return client

    @staticmethod
    def _handshake(sock: socket.socket, service: str, ipc_dir: str | os.PathLike[str] | None,
                   ipc_type: IpcType | int | None, max_msg_size: int,
                   timeout: float) -> tuple[int, int, tuple[str, str, str]]:
        sock.settimeout(timeout)
        try:
            sock.connect(setup_address(service, ipc_dir))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise IpcError(errno.ECONNREFUSED, f"{service}: no server ({exc})") from None
        except TimeoutError:
            raise IpcError(errno.ETIMEDOUT, f"{service}: connect timed out") from None
        except OSError as exc:
            raise IpcError(exc.errno or errno.ECONNREFUSED, f"{service}: {exc}") from None
        buf = bytearray()
        try:
            sock.sendall(pack_conn_request(max_msg_size))
            while len(buf) < CONN_RESPONSE_SIZE:
                try:
                    chunk = sock.recv(CONN_RESPONSE_SIZE - len(buf))
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    raise IpcError(errno.ENOTCONN, f"{service}: server closed during setup")
                buf += chunk
        except TimeoutError:
            raise IpcError(errno.ETIMEDOUT, f"{service}: no connection response") from None
        except IpcError:
            raise
        except OSError as exc:
            raise IpcError(exc.errno or errno.ENOTCONN, f"{service}: {exc}") from None
        try:
            err, ctype, negotiated, req, res, evt = unpack_conn_response(bytes(buf))
        except ValueError as exc:
            raise IpcError(errno.EPROTO, f"{service}: {exc}") from None
        if err != 0:
            raise IpcError(-err, f"{service}: connection refused by server "
                                 f"({errno.errorcode.get(-err, err)})")
        if ctype not in (IpcType.SOCKET, IpcType.SHM):
            raise IpcError(errno.ENOTSUP, f"{service}: unsupported connection type {ctype}")
        if ipc_type is not None and ctype != int(ipc_type):
            raise IpcError(errno.EPROTO, f"{service}: server chose {IpcType(ctype).name}")
        if negotiated < RESPONSE_HEADER.size or negotiated > 1 << 30:
            raise IpcError(errno.EPROTO, f"{service}: absurd max_msg_size {negotiated}")
        return negotiated, ctype, (req, res, evt)

    def _open_shm(self, req: str, res: str, evt: str) -> None:
        for base in (req, res, evt):
            self._rings.append(ShmRing.open(base, self.max_msg_size))

    def _open_socket(self, control_path: str, base: str) -> None:
        fd = os.open(control_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < CONTROL_SIZE:
                raise IpcError(errno.EPROTO, "control file too short")
            self._control = mmap.mmap(fd, CONTROL_SIZE)
        finally:
            os.close(fd)
        self._control_path = control_path
        size = self.max_msg_size
        for attr, own, peer in (("_req_sock", "-response", "-request"),
                                ("_evt_sock", "-event", "-event-tx")):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            setattr(self, attr, s)
            s.bind(abstract_address(base + own))
            s.connect(abstract_address(base + peer))
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                if s.getsockopt(socket.SOL_SOCKET, opt) < size:
                    s.setsockopt(socket.SOL_SOCKET, opt, size)
            s.setblocking(False)

    # -- introspection -------------------------------------------------------------------------

    def fileno(self) -> int:
        """The fd to poll for events: SHM -> setup socket, SOCKET -> event datagram socket."""
        if self.conn_type == IpcType.SHM:
            return self._setup.fileno()
        assert self._evt_sock is not None
        return self._evt_sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def _poll(self, sock: socket.socket, events: int, timeout_ms: int) -> list[tuple[int, int]]:
        """poll() one of our sockets; a socket closed by close() in another thread (fileno
        -1) is the lost-connection error, not a ValueError."""
        p = select.poll()
        try:
            p.register(sock, events)
        except ValueError:
            raise IpcError(errno.ENOTCONN, f"{self.service}: connection closed") from None
        return p.poll(timeout_ms)

    def _check_alive(self) -> None:
        """libqb's liveness rule: HUP/ERR on the setup socket means the server is gone."""
        if self._closed:
            raise IpcError(errno.EBADF, f"{self.service}: connection closed")
        for _fd, ev in self._poll(self._setup, select.POLLIN | select.POLLPRI, 0):
            if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                raise IpcError(errno.ENOTCONN, f"{self.service}: server disconnected")
            if ev & select.POLLIN and self.conn_type == IpcType.SOCKET:
                try:
                    data = self._setup.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    raise IpcError(errno.ENOTCONN, f"{self.service}: server disconnected")

    def _use_mappings(self) -> None:
        """Enter the SHM mappings (pair with :meth:`_leave_mappings`): a blocking client may
        be closed by another thread while this one sleeps in a semaphore living there, and
        unmapping under it would crash the process."""
        with self._users_lock:
            if self._closed:
                raise IpcError(errno.EBADF, f"{self.service}: connection closed")
            self._users.append(threading.get_ident())

    def _leave_mappings(self) -> None:
        with self._users_lock:
            self._users.remove(threading.get_ident())
            if not self._users:
                self._users_gone.notify_all()

    def _flow_control(self) -> int:
        if self.conn_type == IpcType.SHM:
            return self._rings[0].flow_control
        assert self._control is not None
        return _I32.unpack_from(self._control, CTRL_REQUEST_FLOW_CONTROL)[0]

    # -- sending -------------------------------------------------------------------------------

    def send(self, message: bytes, *, fc_enable_max: int = 1) -> None:
        """Send one complete message (header included) without waiting for an answer.

        Refuses with EAGAIN while the server sets flow control (1..fc_enable_max), with
        EMSGSIZE above the negotiated size; ENOTCONN when the server is gone.
        """
        self._commit(message, fc_enable_max)
        # SHM: the chunk is committed now, so its byte must follow even if the server is
        # slow to drain the socket (it processes one request per byte, §3.5).
        while not self._flush_notifications():
            self._check_alive()
            self._poll(self._setup, select.POLLOUT, int(_LIVENESS_SLICE * 1000))

    def _commit(self, message: bytes, fc_enable_max: int = 1) -> None:
        """Put one message on its way without ever blocking: SHM writes the chunk and posts
        the request semaphore and *owes* the notification byte (:meth:`_flush_notifications`
        sends it); SOCKET sends the datagram.  Both clients (blocking and trio) share it."""
        self._check_alive()
        if len(message) > self.max_msg_size:
            raise IpcError(errno.EMSGSIZE, f"message of {len(message)} bytes exceeds "
                                           f"{self.max_msg_size}")
        fc = self._flow_control()
        if 0 < fc <= fc_enable_max:
            raise IpcError(errno.EAGAIN, f"{self.service}: flow control on")
        if self.conn_type == IpcType.SHM:
            self._use_mappings()
            try:
                ring = self._rings[0]
                if ring.ref_count != 2:
                    raise IpcError(errno.ENOTCONN, f"{self.service}: server released the rings")
                if not ring.write(message):
                    raise IpcError(errno.EAGAIN, f"{self.service}: request ring full")
            except RingError as exc:
                raise IpcError(errno.EBADMSG, f"{self.service}: {exc}") from None
            finally:
                self._leave_mappings()
            # chunk + sem_post strictly before the byte (§3.5)
            self._unsent_notifications += 1
        else:
            assert self._req_sock is not None
            try:
                self._req_sock.send(message)
                control_add(self._control, CTRL_REQUEST_SENT, 1)
            except BlockingIOError:
                raise IpcError(errno.EAGAIN, f"{self.service}: request queue full") from None
            except OSError as exc:
                raise IpcError(exc.errno or errno.ENOTCONN, f"{self.service}: {exc}") from None

    def _flush_notifications(self) -> bool:
        """Send the notification bytes owed for committed SHM requests, without blocking;
        True once none is owed.  Bytes are interchangeable, so all owed ones go in one send
        (a stream: the server sees the same bytes as from separate sends)."""
        while self._unsent_notifications:
            try:
                sent = self._setup.send(b"\0" * self._unsent_notifications)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                raise IpcError(errno.ENOTCONN, f"{self.service}: {exc}") from None
            self._unsent_notifications -= sent
        return True

    def recv_response(self, timeout: float | None = None) -> bytes | None:
        """The next raw response (header included); None on timeout."""
        deadline = _deadline(timeout)
        while True:
            self._check_alive()
            left = _remaining(deadline)
            slice_ = _LIVENESS_SLICE if left is None else min(left, _LIVENESS_SLICE)
            if self.conn_type == IpcType.SHM:
                waiter = self._response_waiter
                self._use_mappings()
                try:
                    got = (waiter.take_blocking(slice_) if waiter is not None
                           else self._rings[1].sem.wait(slice_))
                    if got and self._closed:     # close() woke us from another thread
                        raise IpcError(errno.ENOTCONN, f"{self.service}: connection closed")
                    raw = self._rings[1].read_taken(self.max_msg_size) if got else None
                except RingError as exc:
                    raise IpcError(errno.EBADMSG, f"{self.service}: {exc}") from None
                finally:
                    self._leave_mappings()
            else:
                assert self._req_sock is not None
                raw = self._recv_dgram(self._req_sock, slice_)
                if raw is not None:
                    control_add(self._control, CTRL_RESPONSE_SENT, -1)
            if raw is not None:
                return raw
            if left is not None and left <= 0:
                return None

    def _recv_dgram(self, sock: socket.socket, timeout: float) -> bytes | None:
        if not self._poll(sock, select.POLLIN, int(timeout * 1000)):
            return None
        if self._rxbuf is None:
            # one reusable buffer: recv(max_msg_size) would allocate 1 MiB per datagram
            self._rxbuf = bytearray(self.max_msg_size + 1)
        try:
            n = sock.recv_into(self._rxbuf)
            return bytes(memoryview(self._rxbuf)[:n])
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise IpcError(exc.errno or errno.ENOTCONN, f"{self.service}: {exc}") from None

    def request(self, msg_id: int, payload: bytes = b"",
                timeout: float | None = None) -> tuple[int, int, bytes]:
        """Send a request and wait for its response: (response id, error, response payload).

        ``timeout`` None waits forever (while the server lives), like the corosync libraries.
        A timeout raises IpcError(ETIMEDOUT); the connection is then out of step and should be
        closed (libqb behaves the same).
        """
        return self.request_raw(pack_request(msg_id, payload), timeout)

    def request_raw(self, message: bytes, timeout: float | None = None) -> tuple[int, int, bytes]:
        """:meth:`request` for a pre-built message (e.g. CPG's 24-byte-header requests).

        A request that timed out still gets its response later; it is remembered and
        discarded when it arrives, so the next request reads its own response (responses
        come in request order, §1.10 rule 1)."""
        deadline = _deadline(timeout)
        self.send(message)
        while True:
            raw = self.recv_response(_remaining(deadline))
            if raw is None:
                self._owed_responses += 1
                raise IpcError(errno.ETIMEDOUT, f"{self.service}: no response")
            if self._owed_responses:
                self._owed_responses -= 1
                continue
            return _unpack_or_raise(self.service, raw)

    # -- events --------------------------------------------------------------------------------

    def recv_event(self, timeout: float | None = 0.0) -> tuple[int, int, bytes] | None:
        """Next event as (id, error, payload), or None after ``timeout`` (None = forever)."""
        deadline = _deadline(timeout)
        while True:
            self._check_alive()
            left = _remaining(deadline)
            slice_ = _LIVENESS_SLICE if left is None else min(left, _LIVENESS_SLICE)
            if self.conn_type == IpcType.SHM:
                raw = self._recv_event_shm(slice_)
            else:
                assert self._evt_sock is not None
                raw = self._recv_dgram(self._evt_sock, slice_)
                if raw is not None:
                    control_add(self._control, CTRL_EVENT_SENT, -1)
            if raw is not None:
                try:
                    return unpack_response(raw)
                except ValueError as exc:
                    raise IpcError(errno.EBADMSG, f"{self.service}: {exc}") from None
            if left is not None and left <= 0:
                return None

    def _recv_event_shm(self, timeout: float) -> bytes | None:
        if not self._poll(self._setup, select.POLLIN, int(timeout * 1000)):
            return None
        if self._closed:                         # close() from another thread woke poll()
            raise IpcError(errno.ENOTCONN, f"{self.service}: connection closed")
        self._use_mappings()
        try:
            # the byte follows the chunk and its sem_post: the count is normally there already
            got = self._rings[2].sem.wait(_LIVENESS_SLICE)
            if got and self._closed:             # close() woke us from another thread
                raise IpcError(errno.ENOTCONN, f"{self.service}: connection closed")
            raw = self._rings[2].read_taken(self.max_msg_size) if got else None
        except RingError as exc:
            raise IpcError(errno.EBADMSG, f"{self.service}: {exc}") from None
        finally:
            self._leave_mappings()
        if raw is None:
            # POLLIN without a chunk: EOF (server gone) or a stray byte
            try:
                if self._setup.recv(1) == b"":
                    raise IpcError(errno.ENOTCONN, f"{self.service}: server disconnected")
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if isinstance(exc, IpcError):
                    raise
                raise IpcError(errno.ENOTCONN, f"{self.service}: {exc}") from None
            return None
        try:
            self._setup.recv(1)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            raise IpcError(errno.ENOTCONN, f"{self.service}: {exc}") from None
        return raw

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect: closing the setup socket is what the server notices."""
        if self._closed:
            return
        self._closed = True
        unmap = True
        for hook in self._close_hooks:
            unmap = hook() and unmap
        self._close_hooks.clear()
        with self._users_lock:
            busy = len(self._users)
            own = threading.get_ident() in self._users   # e.g. a signal handler's close()
        if own:
            unmap = False        # our own interrupted frame still uses them: leave mapped
        elif busy:
            # threads asleep in the response/event semaphores: wake them (they see _closed
            # and leave without reading), wait until they are out of the mappings
            for ring in self._rings[1:]:
                for _ in range(busy):
                    try:
                        ring.sem.post()
                    except OSError:
                        break
            with self._users_lock:
                if not self._users_gone.wait_for(lambda: not self._users, _WAITER_JOIN):
                    unmap = False
        try:
            self._setup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._setup.close()
        if unmap:
            for ring in self._rings:
                ring.close(unlink=False)
        # else: leave them mapped (the straggler holds them) rather than risk a fault
        self._rings.clear()
        for s in (self._req_sock, self._evt_sock):
            if s is not None:
                s.close()
        if self._control is not None:
            self._control.close()
            self._control = None
        if (self._control_path is not None
                and os.path.basename(self._control_path).startswith("qb-control-")):
            # the libqb client removes the SOCKET control file and its directory (§2.5);
            # only names of libqb's scheme, so a fake server cannot make us delete others
            _unlink(self._control_path)
            try:
                os.rmdir(os.path.dirname(self._control_path))
            except OSError:
                pass

    def __enter__(self) -> "IpcClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# trio wrapper
# --------------------------------------------------------------------------------------------


def _unpack_or_raise(service: str, raw: bytes) -> tuple[int, int, bytes]:
    try:
        return unpack_response(raw)
    except ValueError as exc:
        raise IpcError(errno.EBADMSG, f"{service}: {exc}") from None


class _ShmResponseWaiter:
    """Waits for SHM *response* semaphore counts on behalf of trio, in one helper thread.

    Why a thread: libqb signals a response only through the response ring's process-shared
    semaphore — no byte on the setup socket (spec §3.5; libqb's own client sleeps in
    ``sem_timedwait``) — and Linux offers no descriptor for a futex, so trio has nothing to
    poll.  Sleep-polling ``sem_trywait`` costs latency and CPU; instead a waiting task parks
    and one thread per connection sits in ``sem_clockwait`` for it (GIL released), handing
    the count over with ``run_sync_soon`` → ``reschedule``.

    The thread is only involved when the response is not already there: :meth:`take` makes
    its schedule point first and then tries the semaphore itself (corosync, a C daemon, has
    usually answered by then), and the thread waits in the semaphore only while a task is
    parked — an idle thread never competes for counts, so the blocking API may still be
    used on the connection.  Idle, it lingers :data:`_WAITER_LINGER` on a condition (so back-to-back
    calls do not pay for thread starts), then exits; the next wait restarts it.

    Counting instead of handing over results keeps cancellation simple: a count is one
    committed response, responses come in request order, and the trio side reads the chunk
    itself.  A count the thread takes after its task gave up is *banked* for the next take;
    the abandoned request is *owed* (:attr:`IpcClient._owed_responses`), so the next
    request reads and drops that response before its own.  The thread never outlives
    :meth:`stop`, which posts the semaphore to get it out of the shared mapping *before*
    close() unmaps it.
    """

    def __init__(self, client: IpcClient) -> None:
        self._service = client.service
        self._sem = client._rings[1].sem
        self._setup_fd = client._setup.fileno()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)   # a task parked, or stop
        #: counts the thread took while no task was waiting (its caller was cancelled)
        self._banked = 0
        #: the trio task waiting for a count, and its run's token
        self._parked: tuple[Any, Any] | None = None
        self._failure: IpcError | None = None
        self._stopping = False
        self._in_wait = False
        self._thread: threading.Thread | None = None

    # -- requester side -----------------------------------------------------------------------

    def _take_nowait(self) -> bool:
        """A banked count, or one already posted; caller holds the lock."""
        if self._stopping:   # closed: the semaphore may be unmapped already, never touch it
            raise IpcError(errno.ENOTCONN, f"{self._service}: connection closed")
        if self._banked:
            self._banked -= 1
            return True
        if self._failure is not None:
            raise IpcError(self._failure.errno or errno.ENOTCONN, str(self._failure))
        return self._sem.trywait()

    async def take(self) -> None:
        """Wait until one response is committed in the ring; raises IpcError ENOTCONN when
        the server is gone or the client closed meanwhile."""
        import trio

        # the schedule point comes first: the server works while other tasks run, and a
        # response found afterwards needs no hand-off (nor a second schedule point)
        await trio.lowlevel.checkpoint()
        with self._lock:
            ready = self._take_nowait()
            if not ready:
                task = trio.lowlevel.current_task()
                self._parked = (task, trio.lowlevel.current_trio_token())
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name=f"ipc-{self._service}-responses")
                    self._thread.start()
                else:
                    self._work.notify()
        if ready:
            return

        def abort(_raise_cancel: object) -> Any:
            with self._lock:
                if self._parked is not None and self._parked[0] is task:
                    self._parked = None      # a count taken meanwhile gets banked
                    return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED   # the thread already handed us one

        await trio.lowlevel.wait_task_rescheduled(abort)

    def take_blocking(self, timeout: float) -> bool:
        """For the blocking API on the same connection: a banked count first (they belong
        to the oldest responses), else the semaphore itself."""
        with self._lock:
            if self._take_nowait():
                return True
        return self._sem.wait(timeout)

    def stop(self) -> bool:
        """Fail any waiting task (ENOTCONN) and end the thread; True once it is gone, i.e.
        nothing can touch the shared mapping any more."""
        with self._lock:
            self._stopping = True
            self._wake_parked(IpcError(errno.ENOTCONN, f"{self._service}: connection closed"))
            self._work.notify()
            thread = self._thread
            if thread is not None and self._in_wait:
                try:
                    self._sem.post()          # releases sem_clockwait at once
                except OSError:
                    pass                      # it leaves at the end of its slice instead
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(_WAITER_JOIN)
        return not thread.is_alive()

    # -- helper thread ------------------------------------------------------------------------

    def _wake_parked(self, error: IpcError | None) -> None:
        """Reschedule the parked task with a count (None) or an error; caller holds the
        lock.  Exactly one party (this, or the task's abort) unparks it."""
        if self._parked is None:
            return
        import outcome
        import trio

        task, token = self._parked
        self._parked = None
        result = outcome.Value(None) if error is None else outcome.Error(error)
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:
            pass

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:   # never leave a task parked on a dead thread
            with self._lock:
                self._failure = IpcError(errno.ENOTCONN, f"{self._service}: response "
                                                         f"waiter failed: {exc!r}")
                self._wake_parked(self._failure)
                self._thread = None
                self._in_wait = False

    def _loop(self) -> None:
        while True:
            with self._lock:
                idle_until = time.monotonic() + _WAITER_LINGER
                while self._parked is None and not self._stopping:
                    left = idle_until - time.monotonic()
                    if left <= 0:
                        self._thread = None  # decided under the lock: take() restarts us
                        return
                    self._work.wait(left)
                if self._stopping:
                    self._thread = None
                    return
                self._in_wait = True
            got, failure = False, None
            try:
                got = self._sem.wait(_LIVENESS_SLICE)
            except OSError as exc:
                failure = IpcError(errno.EBADMSG, f"{self._service}: response semaphore: {exc}")
            if not got and failure is None:
                failure = self._liveness()
            with self._lock:
                self._in_wait = False
                if self._stopping:
                    self._thread = None
                    return
                if got:
                    if self._parked is not None:
                        self._wake_parked(None)
                    else:
                        self._banked += 1
                elif failure is not None:
                    self._failure = failure
                    self._wake_parked(failure)
                    self._thread = None
                    return

    def _liveness(self) -> IpcError | None:
        """libqb's check between semaphore slices: HUP/ERR on the setup socket."""
        p = select.poll()
        p.register(self._setup_fd, select.POLLIN)
        for _fd, ev in p.poll(0):
            if ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return IpcError(errno.ENOTCONN, f"{self._service}: server disconnected")
        return None


class AsyncIpcClient:
    """trio-friendly use of :class:`IpcClient` without blocking the event loop.

    Connecting runs the blocking handshake in a worker thread (it may talk to a server in the
    same trio process).  Waits never poll:

    * SHM responses: a helper thread blocked in the response semaphore hands each count to
      the waiting task (:class:`_ShmResponseWaiter`; the protocol gives no fd for them);
    * SHM events: the setup socket's readability (one notification byte per event, §3.5);
    * SOCKET: the datagram sockets' readability (with libqb's liveness slices).

    One request is in flight at a time (a trio lock orders concurrent callers; responses are
    matched by order).  A call that times out or is cancelled after its request went out
    leaves the connection usable: its response is dropped when it arrives.  :meth:`send`
    (no response expected) awaits a full setup socket instead of blocking in poll() as
    ``client.send`` does.  :meth:`close` (or the wrapped client's ``close()``) wakes every
    task waiting on this client at once; they raise IpcError ENOTCONN, as for a lost
    server.
    """

    def __init__(self, client: IpcClient) -> None:
        self.client = client
        self._waiter: _ShmResponseWaiter | None = None
        self._request_lock: Any = None      # a trio.Lock, made on first use
        self._token: Any = None             # the trio run using us (for close() elsewhere)
        self._events_unyielded = 0          # events returned since recv_event last yielded
        client._close_hooks.append(self._on_close)

    @classmethod
    async def connect(cls, service: str, **kwargs: Any) -> "AsyncIpcClient":
        import trio

        client = await trio.to_thread.run_sync(lambda: IpcClient.connect(service, **kwargs))
        return cls(client)

    def fileno(self) -> int:
        return self.client.fileno()

    def _closed_error(self) -> IpcError:
        return IpcError(errno.ENOTCONN, f"{self.client.service}: connection closed")

    # -- requests ------------------------------------------------------------------------------

    async def send(self, message: bytes, *, fc_enable_max: int = 1) -> None:
        """:meth:`IpcClient.send` (a message without response, e.g. CPG MCAST) without
        blocking the event loop: when the setup socket is full, the SHM notification byte is
        awaited here (if cancelled meanwhile, it is owed and goes out with the next
        message).  Refusals (EAGAIN, EMSGSIZE, ENOTCONN) are raised as IpcClient does."""
        import trio

        await trio.lowlevel.checkpoint_if_cancelled()
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        self.client._commit(message, fc_enable_max)
        if self.client.conn_type == IpcType.SHM:
            await self._flush_notifications()

    async def request(self, msg_id: int, payload: bytes = b"",
                      timeout: float | None = None) -> tuple[int, int, bytes]:
        return await self.request_raw(pack_request(msg_id, payload), timeout)

    async def request_raw(self, message: bytes,
                          timeout: float | None = None) -> tuple[int, int, bytes]:
        """Send ``message`` and wait for its response: (id, error, payload).  ``timeout``
        None (or negative) waits as long as the server lives; a timeout raises IpcError
        ETIMEDOUT and, like a cancellation, leaves the connection usable."""
        import trio

        if self._request_lock is None:
            self._request_lock = trio.Lock()
            self._token = trio.lowlevel.current_trio_token()
        if timeout is None or timeout < 0:
            return await self._locked_exchange(message)
        with trio.move_on_after(timeout):
            return await self._locked_exchange(message)
        raise IpcError(errno.ETIMEDOUT, f"{self.client.service}: no response")

    async def _locked_exchange(self, message: bytes) -> tuple[int, int, bytes]:
        import trio

        c = self.client
        if c.closed:
            c._check_alive()                 # a call on a closed client: EBADF
        lock = self._request_lock
        try:
            lock.acquire_nowait()            # the usual case: no extra schedule point
        except trio.WouldBlock:
            await lock.acquire()             # fair: handed over in arrival order
        try:
            if c.closed:                     # while we queued behind another call
                raise self._closed_error()
            return await self._exchange(message)
        finally:
            lock.release()

    async def _exchange(self, message: bytes) -> tuple[int, int, bytes]:
        c = self.client
        waiter: _ShmResponseWaiter | None = None
        if c.conn_type == IpcType.SHM:
            if c.closed:
                c._check_alive()             # raises EBADF
            if self._waiter is None:
                self._waiter = c._response_waiter = _ShmResponseWaiter(c)
            waiter = self._waiter
        c._commit(message)
        answered = False
        try:
            if waiter is not None:
                await self._flush_notifications()
            while True:
                raw = (await self._next_shm_response(waiter) if waiter is not None
                       else await self._next_socket_response())
                if c._owed_responses:        # an abandoned call's answer: not ours
                    c._owed_responses -= 1
                    continue
                answered = True
                return _unpack_or_raise(c.service, raw)
        finally:
            if not answered and not c.closed:
                c._owed_responses += 1

    async def _flush_notifications(self) -> None:
        import trio

        c = self.client
        while not c._flush_notifications():
            try:
                await trio.lowlevel.wait_writable(c._setup)
            except trio.ClosedResourceError:
                raise self._closed_error() from None

    async def _next_shm_response(self, waiter: _ShmResponseWaiter) -> bytes:
        await waiter.take()
        c = self.client
        if c.closed:
            raise self._closed_error()
        try:
            return c._rings[1].read_taken(c.max_msg_size)
        except RingError as exc:
            raise IpcError(errno.EBADMSG, f"{c.service}: {exc}") from None

    async def _next_socket_response(self) -> bytes:
        import trio

        c = self.client
        assert c._req_sock is not None
        await trio.lowlevel.checkpoint()     # a schedule point even when answered at once
        while True:
            if c.closed:                     # by another task meanwhile
                raise self._closed_error()
            raw = c.recv_response(0)
            if raw is not None:
                return raw
            # bounded waits: the liveness check in recv_response sees a dead server
            with trio.move_on_after(_LIVENESS_SLICE):
                try:
                    await trio.lowlevel.wait_readable(c._req_sock)
                except trio.ClosedResourceError:
                    raise self._closed_error() from None

    # -- events --------------------------------------------------------------------------------

    async def recv_event(self, timeout: float | None = None) -> tuple[int, int, bytes] | None:
        """Next event as (id, error, payload), or None after ``timeout`` (None = forever)."""
        import trio

        c = self.client
        if c.closed:
            c._check_alive()                 # a call on a closed client: EBADF
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        # an enclosing cancel scope takes effect even while events keep coming, and a flood
        # yields to other tasks every _EVENT_YIELD_EVERY events (a full schedule point per
        # event would halve the rate at which queued events are read)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._events_unyielded += 1
        if self._events_unyielded >= _EVENT_YIELD_EVERY:
            self._events_unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()
        forever = timeout is None or timeout < 0
        with trio.move_on_after(math.inf if forever else timeout):
            while True:
                if c.closed:                 # by another task while this call waited
                    raise self._closed_error()
                if c.conn_type == IpcType.SHM:
                    event = self._shm_event_nowait()
                else:
                    event = c.recv_event(0)
                if event is not None:
                    return event
                self._events_unyielded = 0
                try:
                    if c.conn_type == IpcType.SHM:
                        # EOF and HUP make it readable too: no liveness slices needed
                        await trio.lowlevel.wait_readable(c._setup)
                    else:
                        with trio.move_on_after(_LIVENESS_SLICE):
                            await trio.lowlevel.wait_readable(c.fileno())
                except trio.ClosedResourceError:
                    raise self._closed_error() from None
        return None

    def _shm_event_nowait(self) -> tuple[int, int, bytes] | None:
        """One event if its notification byte is there.  The byte is read first: the server
        commits the chunk and posts the semaphore before sending it (§3.5), so after the
        byte the count is there; a byte without a count is dropped (libqb: "Nothing in q
        but got POLLIN")."""
        c = self.client
        if c.closed:
            c._check_alive()                 # raises EBADF
        try:
            byte = c._setup.recv(1)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise IpcError(errno.ENOTCONN, f"{c.service}: {exc}") from None
        if not byte:
            raise IpcError(errno.ENOTCONN, f"{c.service}: server disconnected")
        ring = c._rings[2]
        if not ring.sem.trywait():
            return None
        try:
            return unpack_response(ring.read_taken(c.max_msg_size))
        except (RingError, ValueError) as exc:
            raise IpcError(errno.EBADMSG, f"{c.service}: {exc}") from None

    # -- teardown ------------------------------------------------------------------------------

    def _on_close(self) -> bool:
        """The wrapped client is closing: wake every task waiting on it, get the helper
        thread out of the shared mapping (False if it would not leave)."""
        safe = self._waiter.stop() if self._waiter is not None else True
        self._notify_closing()
        return safe

    def _notify_closing(self) -> None:
        """trio.lowlevel.notify_closing for the sockets tasks may wait on, before they are
        closed.  From another thread (close() in a worker), it runs in trio's thread and is
        awaited briefly: trio must never be left watching a closed descriptor."""
        import trio

        c = self.client
        socks = [s for s in (c._setup, c._req_sock, c._evt_sock)
                 if s is not None and s.fileno() >= 0]

        def notify() -> None:
            for sock in socks:
                trio.lowlevel.notify_closing(sock)

        try:
            notify()
            return
        except RuntimeError:
            pass                     # not in trio's thread
        token = self._token
        if token is None:
            return                   # never used from trio: nobody can be waiting
        done = threading.Event()

        def in_trio() -> None:
            try:
                notify()
            finally:
                done.set()

        try:
            token.run_sync_soon(in_trio)
        except trio.RunFinishedError:
            return
        done.wait(_WAITER_JOIN)

    def close(self) -> None:
        """Disconnect; tasks waiting on this client raise IpcError ENOTCONN at once."""
        self.client.close()

    async def __aenter__(self) -> "AsyncIpcClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
