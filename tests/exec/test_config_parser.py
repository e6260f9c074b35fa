"""corosync.conf syntax corner cases (behaviour of corosync 3.1.7's coroparse)."""

from __future__ import annotations

import pytest

from corosync.exec.cmap import CmapType
from corosync.exec.config import ConfigError
from corosync.exec.config.keys import read_keys
from corosync.exec.config.parser import Item, Section, parse


def keys_of(text: str) -> dict[str, tuple[object, CmapType, int | None]]:
    km = read_keys(parse(text, "f.conf"), "f.conf")
    return {k: (v.value, v.type, v.line) for k, v in km.keys.items()}


def parse_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        read_keys(parse(text, "f.conf"), "f.conf")
    return str(info.value)


def test_sections_items_and_line_numbers():
    root = parse("# head\n\ntotem {\n\tversion: 2\n  interface {\n    mcastport: 5405\n  }\n}\n", "x")
    (totem,) = root.sections
    assert (totem.name, totem.path, totem.line, totem.end_line) == ("totem", "totem", 3, 8)
    assert totem.items == [Item("version", "2", 4)]
    (iface,) = totem.sections
    assert isinstance(iface, Section) and iface.path == "totem.interface" and iface.line == 5
    assert iface.items == [Item("mcastport", "5405", 6)]


def test_whitespace_comments_crlf_and_colons():
    text = (
        "totem: {\r\n"  # trailing ':' before '{' is accepted
        "   cluster_name:lab   \r\n"  # no blank after ':', trailing blanks dropped
        "\t# indented comment\r\n"
        "    transport: udpu # not a comment\r\n"  # no trailing comments
        '    crypto_model: "nss"\r\n'  # quotes are not special
        "    link_mode:\r\n"  # empty value
        "}\r\n"
        "nodelist {\n node {\n  ring0_addr: fd00::1\n  nodeid: 007\n }\n}"  # no final newline
    )
    k = keys_of(text)
    assert k["totem.cluster_name"] == ("lab", CmapType.STRING, 2)
    assert k["totem.transport"][0] == "udpu # not a comment"
    assert k["totem.crypto_model"][0] == '"nss"'
    assert k["totem.link_mode"][0] == ""
    # the first ':' splits, so IPv6 addresses survive
    assert k["nodelist.node.0.ring0_addr"] == ("fd00::1", CmapType.STRING, 10)
    assert k["nodelist.node.0.nodeid"] == (7, CmapType.UINT32, 11)


def test_repeated_keys_and_sections_last_wins():
    k = keys_of("totem {\n token: 1\n}\ntotem {\n token: 2\n token: 3\n}\n")
    assert k["totem.token"] == (3, CmapType.UINT32, 6)


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("totem {\n", 1, "Missing closing brace"),
        ("totem {\n}\n}\n", 3, "Unexpected closing brace"),
        ("totem {\n} x\n", 2, "Extra characters before or after closing bracket '}'"),
        ("totem { version: 2\n}\n", 1, "Extra characters after opening bracket '{'"),
        ("  {\n}\n", 1, "Missing section name before opening bracket '{'"),
        ("totem {\n  version 2\n}\n", 2, "Line is not opening or closing section or key value"),
        ("totem {\n  key: a{b\n}\n", 2, "Extra characters after opening bracket '{'"),  # '{' wins over ':'
        ("a: " + "x" * 600 + "\n", 1, "Line too long"),
        ("s" * 300 + " {\n}\n", 1, "Start of section makes total cmap path too long"),
        ("totem {\n" + "k" * 250 + ": 1\n}\n", 2, "New key makes total cmap path too long"),
        ("totem {\n : 1\n}\n", 2, "Missing key name before ':'"),
    ],
)
def test_syntax_errors(text, line, message):
    assert parse_error(text) == f"parser error: f.conf:{line}: {message}"


@pytest.mark.parametrize(
    "value,ok",
    [("0", 0), ("+5", 5), ("4294967295", 4294967295), ("4294967296", None), ("-1", None), ("0x10", None),
     ("1.5", None), ("", None), ("12abc", None)],
)
def test_u32_values(value, ok):
    text = f"totem {{\n    token: {value}\n}}\n"
    if ok is None:
        assert parse_error(text) == (
            'parser error: f.conf:2: Value of key "totem.token" is expected to be integer in range '
            f'(0..4294967295), but "{value}" was given'
        )
    else:
        assert keys_of(text)["totem.token"][:2] == (ok, CmapType.UINT32)


def test_typed_keys_like_coroparse():
    text = """
totem {
    version: 2
    config_version: 18446744073709551615
    knet_compression_level: -3
    interface {
        linknumber: 1
        mcastport: 6000
        ttl: 5
        bindnetaddr: 10.0.0.1
        member {
            memberaddr: 10.0.0.2
        }
        strange: x
    }
}
quorum {
    expected_votes: 3
    two_node: 1
    device {
        votes: 1
        master_wins: 1
        model: net
    }
}
resources {
    watchdog_timeout: 9
    system {
        memory_used {
            poll_period: 1000
        }
    }
}
logging {
    logger_subsys {
        subsys: QUORUM
        debug: on
    }
}
pload {
    count: 4
}
"""
    k = keys_of(text)
    assert k["totem.config_version"][:2] == (2**64 - 1, CmapType.UINT64)
    assert k["totem.knet_compression_level"][:2] == (-3, CmapType.INT32)
    assert k["totem.interface.1.mcastport"][:2] == (6000, CmapType.UINT16)
    assert k["totem.interface.1.ttl"][:2] == (5, CmapType.UINT8)
    assert k["totem.interface.1.bindnetaddr"][:2] == ("10.0.0.1", CmapType.STRING)
    assert k["totem.interface.1.member.0"][:2] == ("10.0.0.2", CmapType.STRING)
    assert k["totem.interface.strange"][:2] == ("x", CmapType.STRING)  # corosync quirk: unnumbered
    assert "totem.interface.1.linknumber" not in k
    assert k["quorum.expected_votes"][:2] == (3, CmapType.UINT32)
    assert k["quorum.two_node"][:2] == (1, CmapType.UINT8)
    assert k["quorum.device.votes"][:2] == (1, CmapType.UINT32)
    assert k["quorum.device.master_wins"][:2] == (1, CmapType.UINT8)
    assert k["quorum.device.model"][:2] == ("net", CmapType.STRING)
    assert k["resources.watchdog_timeout"][:2] == (9, CmapType.UINT32)
    assert k["resources.system.memory_used.poll_period"][:2] == (1000, CmapType.UINT64)
    assert k["logging.logger_subsys.QUORUM.debug"][:2] == ("on", CmapType.STRING)
    assert k["logging.logger_subsys.QUORUM.subsys"][:2] == ("QUORUM", CmapType.STRING)
    assert k["pload.count"][:2] == (4, CmapType.UINT32)


def test_interface_errors_name_the_unnumbered_key():
    assert parse_error("totem {\n interface {\n  mcastport: 70000\n }\n}\n") == (
        'parser error: f.conf:3: Value of key "totem.interface.mcastport" is expected to be integer '
        'in range (0..65535), but "70000" was given'
    )
    assert parse_error("totem {\n interface {\n  member {\n   foo: 1\n  }\n }\n}\n") == (
        "parser error: f.conf:4: Only memberaddr is allowed in member section"
    )


def test_nodelist_numbering_and_node_errors():
    k = keys_of("nodelist {\n node {\n  ring0_addr: a\n }\n node {\n  ring0_addr: b\n  quorum_votes: 2\n }\n}\n")
    assert k["nodelist.node.0.ring0_addr"][0] == "a"
    assert k["nodelist.node.1.ring0_addr"][0] == "b"
    assert k["nodelist.node.1.quorum_votes"][:2] == (2, CmapType.UINT32)
    assert parse_error("nodelist {\n node {\n  nodeid: x\n }\n}\n") == (
        'parser error: f.conf:3: Value of key "nodelist.node.0.nodeid" is expected to be integer in '
        'range (0..4294967295), but "x" was given'
    )


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("totem {\n ip_version: ipv5\n}\n", 2, "Invalid ip_version type"),
        ("totem {\n crypto_cipher: 3des\n}\n", 2, "Invalid cipher type. Should be none, aes256, aes192 or aes128"),
        ("totem {\n crypto_hash: crc\n}\n", 2,
         "Invalid hash type. Should be none, md5, sha1, sha256, sha384 or sha512"),
        ("system {\n sched_rr: maybe\n}\n", 2, "Invalid system.sched_rr value"),
        ("logging {\n logger_subsys {\n  debug: on\n }\n}\n", 4, "No subsys key in logger_subsys directive"),
        ("uidgid {\n user: root\n}\n", 2, "uidgid: Only uid and gid are allowed items"),
        ("uidgid {\n uid: no-such-user-xyz\n}\n", 2,
         "The 'no-such-user-xyz' user is not found in /etc/passwd, please read the documentation."),
    ],
)
def test_value_checks_while_reading(text, line, message):
    assert parse_error(text) == f"parser error: f.conf:{line}: {message}"


def test_uidgid_and_logging_daemon():
    k = keys_of("uidgid {\n uid: root\n gid: 0\n}\nlogging {\n logging_daemon {\n  name: corosync\n"
                "  subsys: CPG\n  debug: on\n }\n}\n")
    assert k["uidgid.config.uid.0"][:2] == (1, CmapType.UINT8)
    assert k["uidgid.config.gid.0"][:2] == (1, CmapType.UINT8)
    assert k["logging.logger_subsys.CPG.debug"][0] == "on"
    assert k["logging.logger_subsys.CPG.subsys"][0] == "CPG"


def test_names_cmap_would_refuse():
    assert parse_error("a: 1\n") == (
        'parser error: f.conf:1: Can\'t store key "a" into icmap, returned error is CS_ERR_NAME_TOO_LONG'
    )
    assert parse_error("totem {\n my key: 1\n}\n") == (
        'parser error: f.conf:2: Can\'t store key "totem.my key" into icmap, returned error is CS_ERR_NAME_TOO_LONG'
    )
    assert parse_error("totem {\n a: x\0y\n}\n") == "parser error: f.conf:2: Line contains a NUL character"
