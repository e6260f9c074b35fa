"""corosync-py: the corosync cluster engine in Python.

This package holds the public client libraries (``corosync.cpg``, ``corosync.cmap``, ...).
The executive lives in ``corosync.exec``, the services in ``corosync.services``,
client-side IPC in ``corosync.lib`` and the command-line tools in ``corosync.tools``.
"""

__version__ = "0.1.0"
#: Version of corosync whose wire formats and tool outputs we follow.
COMPAT_VERSION = "3.1.7"
