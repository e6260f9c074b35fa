"""The embedded default configuration (identical to ``conf/corosync.conf.example``).

Used by the executive when neither ``-c`` nor ``COROSYNC_MAIN_CONFIG_FILE`` names a file and
``/etc/corosync/corosync.conf`` does not exist, so that ``corosync -f`` works right after
``pip install``.  A test keeps it byte-identical to the file in ``conf/``.
"""

DEFAULT_CONFIG_TEXT = """\
# corosync-py example configuration: one node on the loopback address.
#
# This is also the configuration the daemon uses when it is started without -c,
# without COROSYNC_MAIN_CONFIG_FILE and without /etc/corosync/corosync.conf.
# See docs/corosync.conf.md for every option.

totem {
    # Must be 2.
    version: 2

    # Feeds the derived multicast address (transport udp); not sent on the wire.
    cluster_name: corosync-py

    # udpu: UDP unicast to every nodelist address; udp: IP multicast.
    # (knet, corosync 3's default, is not implemented by corosync-py.)
    transport: udpu

    # Real corosync 3 allows crypto only with knet.  corosync-py offers the
    # corosync 2.4 envelope on udp/udpu (Python nodes only); off here.
    crypto_cipher: none
    crypto_hash: none
}

logging {
    to_stderr: yes
    to_logfile: no
    to_syslog: no
    timestamp: hires
    debug: off
}

quorum {
    provider: corosync_votequorum
}

nodelist {
    node {
        ring0_addr: 127.0.0.1
        nodeid: 1
        name: node1
    }
}
"""
