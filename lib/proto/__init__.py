"""Byte layouts of corosync's client IPC messages (spec/ipc-wire.md §4), shared by the client
libraries (``corosync.cmap``, ``corosync.cpg``, the tools) and the executive's services.

Pure: attrs classes with ``encode()`` (the message body after the libqb header) and
``decode(body)`` (raising :class:`ProtoError` on anything malformed), no I/O.  Each class
carries its message id as ``ID``; the 16-byte request / 24-byte response headers are added by
:func:`corosync.lib.ipc.pack_request` / ``pack_response`` (CPG MCAST and PARTIAL_MCAST are the
exception: see :mod:`corosync.lib.proto.cpg`).  Only LP64 Linux layouts.
"""

from corosync.lib.proto.common import ProtoError

__all__ = ["ProtoError"]
