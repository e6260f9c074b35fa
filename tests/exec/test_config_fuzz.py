"""Bad input never crashes the loader: any text either loads or raises ConfigError, and a
loaded configuration always fits in the cmap store."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corosync.exec.cmap import CmapStore
from corosync.exec.config import ConfigError, load_config

VALID = """totem {
    version: 2
    transport: udpu
    token: 1000
    interface {
        mcastport: 5405
    }
}
logging {
    to_stderr: yes
    logger_subsys {
        subsys: TOTEM
        debug: on
    }
}
quorum {
    provider: corosync_votequorum
    two_node: 1
}
nodelist {
    node {
        ring0_addr: 10.0.0.1
        nodeid: 1
    }
    node {
        ring0_addr: 10.0.0.2
    }
}
"""

_tokens = st.sampled_from(
    ["{", "}", ":", " ", "\t", "\n", "\r", "#", "totem", "nodelist", "node", "ring0_addr", "nodeid",
     "interface", "logging", "logger_subsys", "subsys", "quorum", "uidgid", "uid", "version", "2", "0",
     "-1", "99999999999", "10.0.0.1", "fd00::1", "udpu", "udp", "knet", "transport", "token", "consensus",
     "join", "crypto_cipher", "aes256", "ttl", "mcastaddr", "cluster_name", "x", "é", "\0", "\x00\xff",
     ".", "node.1.", "ring1_addr", "name", "broadcast", "yes", "linknumber", "logging_daemon", "secauth", "on"]
)


def _check(text: str) -> None:
    try:
        cfg = load_config("fuzz.conf", text=text, local_addrs=["10.0.0.1"])
    except ConfigError as err:
        assert str(err)  # always printable
        return
    CmapStore.from_entries(cfg.cmap_entries())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tokens, max_size=80).map("".join))
def test_token_soup(text):
    _check(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_config(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(_tokens, st.text(max_size=4)))
        text = text[:pos] + insert + text[pos + cut :]
    _check(text)


def test_valid_base_loads():
    cfg = load_config("fuzz.conf", text=VALID, local_addrs=["10.0.0.1"])
    assert [n.nodeid for n in cfg.nodes] == [1, 167772162]
