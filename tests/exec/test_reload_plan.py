"""exec/reload.py: what a config reload changes, refuses and recomputes, with the flag
sequence corosync 3.1.7 shows (observed on Debian's daemon: config.totemconfig_reload_in_progress
1, config.reload_in_progress 1, …, config.reload_status, 0, 0)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from corosync.exec.cmap import CmapStore, CmapType, Track
from corosync.lib.ipc import CsError
from corosync.exec.config import load_config
from corosync.exec.reload import (KEY_RELOAD, KEY_STATUS,
                                  KEY_TOTEM_RELOAD, ReloadInvalid, is_fixed_key, plan_reload,
                                  read_new_config, reload_config)
from corosync.exec.totem.events import LogLevel

LOCAL = ["10.0.0.1"]


def conf(*, token: int | None = 1000, coefficient: int | None = None, nodes=(1, 2),
         cluster: str = "c1", logging: str = "", quorum: str = "", totem: str = "",
         addr=lambda i: f"10.0.0.{i}") -> str:
    lines = ["totem {", " version: 2", f" cluster_name: {cluster}", " transport: udpu"]
    if token is not None:
        lines.append(f" token: {token}")
    if coefficient is not None:
        lines.append(f" token_coefficient: {coefficient}")
    lines += [totem, "}", "logging {", " to_stderr: no", " to_syslog: no", logging, "}",
              "quorum {", " provider: corosync_votequorum", quorum, "}", "nodelist {"]
    for i in nodes:
        lines += ["node {", f" ring0_addr: {addr(i)}", f" nodeid: {i}", f" name: n{i}", "}"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def load(text: str) -> Any:
    return load_config("t.conf", text=text, local_addrs=LOCAL)


class Targets:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_totem_config(self, config) -> None:
        self.calls.append(("totem", config))

    def add_member(self, nodeid: int, ip: str) -> None:
        self.calls.append(("add", nodeid, ip))

    def remove_member(self, nodeid: int, ip: str) -> None:
        self.calls.append(("remove", nodeid, ip))

    def configure_logging(self, settings) -> None:
        self.calls.append(("logging", settings))


class Run:
    """One node's state: cmap loaded from ``old``, a flag/notification recorder, logs."""

    def __init__(self, old_text: str) -> None:
        self.old = load(old_text)
        self.cmap = CmapStore()
        self.cmap.load_config(self.old)
        self.targets = Targets()
        self.logs: list[tuple[LogLevel, str, str]] = []
        self.events: list[tuple[str, str, Any]] = []
        self.cmap.track_add("config.", Track.ADD | Track.MODIFY | Track.PREFIX,
                            lambda ev, key, new, old: self.events.append(
                                (key, new.value if new else None)))

    def log(self, level: LogLevel, subsys: str, text: str) -> None:
        self.logs.append((level, subsys, text))

    def reload(self, new_text: str):
        return reload_config(self.old, lambda: load(new_text), self.cmap, self.targets,
                             self.old.totem_config, self.log)

    def texts(self) -> list[str]:
        return [t for _, _, t in self.logs]


FLAGS_OK = [(KEY_TOTEM_RELOAD, 1), (KEY_RELOAD, 1), (KEY_STATUS, CsError.OK),
            (KEY_TOTEM_RELOAD, 0), (KEY_RELOAD, 0)]


def test_unchanged_file_touches_nothing_but_the_flags_and_derived_keys():
    r = Run(conf())
    before = r.cmap.dump()
    assert r.reload(conf()).status == CsError.OK
    assert r.events == FLAGS_OK
    after = "".join(line + "\n" for line in r.cmap.dump().splitlines()
                    if not line.startswith("config."))
    # the start-up-derived bindnetaddr goes, as on a real node (observed)
    assert after == before.replace("totem.interface.0.bindnetaddr (str) = 10.0.0.1\n", "")
    assert "totem.interface.0.bindnetaddr" in before
    plan_calls = [c[0] for c in r.targets.calls]
    assert plan_calls == ["totem"]  # same timers pushed again, nothing else


@pytest.mark.parametrize("key,old_text,new_text,want", [
    ("totem.token", conf(token=1000), conf(token=2000), (2000, CmapType.UINT32)),
    ("logging.debug", conf(), conf(logging=" debug: on"), ("on", CmapType.STRING)),
    ("quorum.expected_votes", conf(), conf(quorum=" expected_votes: 3"), (3, CmapType.UINT32)),
    ("totem.config_version", conf(), conf(totem=" config_version: 4"), (4, CmapType.UINT64)),
])
def test_reloadable_keys_are_added_or_changed(key, old_text, new_text, want):
    r = Run(old_text)
    assert r.reload(new_text).status == CsError.OK
    entry = r.cmap.get_entry(key)
    assert (entry.value, entry.type) == want
    assert not any("cannot be changed" in t for t in r.texts())


def test_key_removed_from_the_file_is_deleted():
    r = Run(conf(logging=" debug: on", quorum=" expected_votes: 3"))
    assert r.reload(conf()).status == CsError.OK
    assert "logging.debug" not in r.cmap and "quorum.expected_votes" not in r.cmap
    assert r.cmap.get("quorum.provider") == "corosync_votequorum"


@pytest.mark.parametrize("key,new_text", [
    ("totem.cluster_name", conf(cluster="other")),
    ("totem.crypto_cipher", conf(totem=" crypto_cipher: none")),  # absent before
    ("totem.netmtu", conf(totem=" netmtu: 1200")),
    ("totem.interface.0.mcastport", conf(totem=" interface {\n linknumber: 0\n mcastport: 6000\n }")),
])
def test_run_time_fixed_keys_are_refused_and_logged(key, new_text):
    r = Run(conf())
    before = r.cmap.get(key, None)
    assert r.reload(new_text).status == CsError.OK
    assert r.cmap.get(key, None) == before
    assert (LogLevel.NOTICE, "CFG",
            f"Modified entry '{key}' in corosync.conf cannot be changed at run-time") in r.logs


def test_removing_a_fixed_key_is_refused_too():
    r = Run(conf(cluster="keep"))
    text = conf().replace(" cluster_name: c1\n", "")
    assert r.reload(text).status == CsError.OK
    assert r.cmap.get("totem.cluster_name") == "keep"
    assert "Modified entry 'totem.cluster_name' in corosync.conf cannot be changed at " \
           "run-time" in r.texts()


def test_fixed_key_table():
    for key in ("totem.transport", "totem.ip_version", "totem.keyfile", "totem.version",
                "system.state_dir", "quorum.provider", "totem.interface.1.bindnetaddr"):
        assert is_fixed_key(key), key
    for key in ("totem.token", "totem.consensus", "logging.debug", "nodelist.node.0.name",
                "quorum.expected_votes", "totem.interface.0.knet_ping_interval"):
        assert not is_fixed_key(key), key


def test_derived_timers_follow_token_and_nodelist_size():
    r = Run(conf(token=1000, coefficient=650, nodes=(1, 2)))
    assert r.cmap.get("runtime.config.totem.token") == 1000
    result = r.reload(conf(token=2000, coefficient=650, nodes=(1, 2, 3, 4)))
    assert result.status == CsError.OK
    token = 2000 + 2 * 650  # (N − 2) × token_coefficient
    cfg = result.plan.totem_config
    assert (cfg.token, cfg.consensus) == (token, int(1.2 * token))
    assert cfg.token_retransmit == int(token / 4.2)
    assert cfg.hold == int(cfg.token_retransmit * 0.8 - 10)
    assert r.targets.calls[0] == ("totem", cfg)
    for name in ("token", "consensus", "token_retransmit", "hold"):
        assert r.cmap.get(f"runtime.config.totem.{name}") == getattr(cfg, name), name
    # link 0's knet ping timers follow the token in effect *before* the reload (3.1.7)
    assert r.cmap.get("runtime.config.totem.interface.0.knet_ping_timeout") == 500
    assert r.cmap.get("runtime.config.totem.interface.0.knet_ping_interval") == 250
    r.old.totem_config = cfg
    r.reload(conf(token=2000, coefficient=650, nodes=(1, 2, 3, 4)))
    assert r.cmap.get("runtime.config.totem.interface.0.knet_ping_timeout") == token // 2
    assert r.cmap.get("runtime.config.totem.interface.0.knet_ping_interval") == token // 4


def test_explicit_consensus_survives_and_netmtu_stays_live():
    r = Run(conf(token=1000))
    result = r.reload(conf(token=3000, totem=" consensus: 5000\n netmtu: 1200"))
    cfg = result.plan.totem_config
    assert cfg.consensus == 5000 and cfg.token == 3000
    assert cfg.netmtu == r.old.totem_config.netmtu  # refused: sockets/queues sized by it


def test_nodelist_add_and_remove():
    r = Run(conf(nodes=(1, 2, 3)))
    assert r.reload(conf(nodes=(1, 2, 4, 5))).status == CsError.OK
    assert [c for c in r.targets.calls if c[0] != "totem"] == [
        ("remove", 3, "10.0.0.3"), ("add", 4, "10.0.0.4"), ("add", 5, "10.0.0.5")]
    names = {k: e.value for k, e in r.cmap.iter_prefix("nodelist.node.")
             if k.endswith(".nodeid")}
    assert sorted(names.values()) == [1, 2, 4, 5]
    assert r.cmap.get("nodelist.local_node_pos") == 0


def test_changed_address_of_a_known_node_fails_without_changes():
    r = Run(conf(nodes=(1, 2)))
    before = r.cmap.dump()
    result = r.reload(conf(nodes=(1, 2), token=5000,
                           addr=lambda i: "10.0.0.9" if i == 2 else f"10.0.0.{i}"))
    assert result.status == CsError.ERR_INVALID_PARAM
    assert "new config has different address for link 0 (addr changed from 10.0.0.2 to " \
           "10.0.0.9). Internal value was NOT changed." in r.texts()
    assert any(t.startswith("Cannot configure new interface definitions: To reconfigure")
               for t in r.texts())
    assert r.targets.calls == []
    assert r.events == [(KEY_TOTEM_RELOAD, 1), (KEY_RELOAD, 1),
                        (KEY_STATUS, CsError.ERR_INVALID_PARAM), (KEY_TOTEM_RELOAD, 0),
                        (KEY_RELOAD, 0)]
    assert "".join(line + "\n" for line in r.cmap.dump().splitlines()
                   if not line.startswith("config.")) == before


def test_invalid_timers_are_a_validation_error():
    r = Run(conf())
    result = r.reload(conf(token=10))
    assert result.status == CsError.ERR_INVALID_PARAM
    assert any(t.startswith("Configuration is not valid: parse error in config: ")
               and "The token timeout parameter (10 ms) may not be less than (30 ms)." in t
               for t in r.texts())
    assert r.cmap.get(KEY_STATUS) == CsError.ERR_INVALID_PARAM
    assert r.cmap.get("totem.token") == 1000 and r.targets.calls == []


def test_parse_error_changes_nothing_at_all(tmp_path: Path):
    path = tmp_path / "corosync.conf"
    path.write_text(conf() + "garbage {\n")
    r = Run(conf())
    loader = functools.partial(load_config, local_addrs=LOCAL)
    result = reload_config(r.old, lambda: read_new_config(str(path), loader=loader), r.cmap,
                           r.targets, r.old.totem_config, r.log)
    assert result.status == CsError.ERR_INVALID_PARAM
    assert r.logs == [(LogLevel.ERROR, "CFG", f"Unable to reload config file: parser error: "
                                              f"{path}:{conf().count(chr(10)) + 1}: Missing "
                                              f"closing brace")]
    assert r.events == [] and r.targets.calls == []


def test_unreadable_file_is_a_parse_error(tmp_path: Path):
    r = Run(conf())
    missing = tmp_path / "gone.conf"
    result = reload_config(r.old, lambda: read_new_config(str(missing)), r.cmap, r.targets,
                           r.old.totem_config, r.log)
    assert result.status == CsError.ERR_INVALID_PARAM
    assert r.logs == [(LogLevel.ERROR, "CFG", f"Unable to reload config file: {missing}: "
                                              f"Can't read file {missing}: No such file or "
                                              f"directory")]
    assert r.events == []


def test_logging_change_is_handed_to_the_logger():
    r = Run(conf())
    result = r.reload(conf(logging=" debug: on\n timestamp: on"))
    assert result.status == CsError.OK
    (settings,) = [c[1] for c in r.targets.calls if c[0] == "logging"]
    assert settings.debug == "on" and settings.timestamp == "on"


def test_nodeid_of_this_node_cannot_change():
    r = Run(conf(nodes=(1, 2)))
    text = conf(nodes=(1, 2)).replace(" nodeid: 1\n", " nodeid: 7\n")
    with pytest.raises(ReloadInvalid):
        plan_reload(r.old, load(text), r.cmap, r.old.totem_config)
    assert r.reload(text).status == CsError.ERR_INVALID_PARAM


def test_embedded_default_reloads_as_itself():
    from corosync.exec.config import default_config_text

    old = load_config(text=default_config_text(), local_addrs=["127.0.0.1"])
    new = read_new_config(None, default_config_text(),
                          loader=functools.partial(load_config, local_addrs=["127.0.0.1"]))
    cmap = CmapStore()
    cmap.load_config(old)
    plan = plan_reload(old, new, cmap, old.totem_config)
    assert plan.sets == [] and plan.refused == []
    assert plan.deletes == ["totem.interface.0.bindnetaddr"]


def test_udp_derived_interface_keys_go_like_on_a_real_node():
    """Observed on 3.1.7 (transport udp): bindnetaddr, mcastaddr and mcastport derived at
    start-up are gone from cmap after a reload of the same file; nothing is refused."""
    text = conf().replace("transport: udpu", "transport: udp")
    r = Run(text)
    assert {"totem.interface.0.bindnetaddr", "totem.interface.0.mcastaddr",
            "totem.interface.0.mcastport"} <= set(r.cmap.keys("totem.interface.0."))
    assert r.reload(text).status == CsError.OK
    assert r.cmap.keys("totem.interface.") == []
    assert not any("cannot be changed" in t for t in r.texts())


def test_a_loader_bug_is_refused_not_raised():
    r = Run(conf())

    def broken():
        raise RuntimeError("boom")

    result = reload_config(r.old, broken, r.cmap, r.targets, r.old.totem_config, r.log)
    assert result.status == CsError.ERR_INVALID_PARAM
    assert r.logs == [(LogLevel.ERROR, "CFG", "Unable to reload config file: "
                                              "RuntimeError('boom')")]
    assert r.events == [] and r.targets.calls == []


# -- run-time totem.* edits (corosync-cmapctl -s totem.token …) ----------------------------
def watched(text: str):
    from corosync.exec.reload import TotemKeyWatcher

    r = Run(text)
    live = [r.old.totem_config]

    def apply(cfg):
        live[0] = cfg
        r.targets.calls.append(("totem", cfg))

    r.targets.apply_totem_config = apply
    return r, TotemKeyWatcher(r.cmap, r.targets, lambda: live[0], r.log), live


def test_run_time_token_edit_is_applied_and_published():
    r, watcher, live = watched(conf(token=1000, coefficient=650, nodes=(1, 2, 3)))
    assert r.cmap.get("runtime.config.totem.token") == 1650
    r.cmap.set("totem.token", 2000, CmapType.UINT32, client=True)
    assert live[0].token == 2650 and live[0].consensus == int(1.2 * 2650)
    assert r.cmap.get("runtime.config.totem.token") == 2650
    assert r.cmap.get("runtime.config.totem.consensus") == int(1.2 * 2650)
    r.cmap.delete("totem.token", client=True)  # back to the default (3000)
    assert live[0].token == 3000 + 650
    r.cmap.set("totem.token_coefficient", 0, CmapType.UINT32, client=True)
    assert live[0].token == 3000
    assert live[0].netmtu == r.old.totem_config.netmtu


def test_run_time_edit_out_of_limits_keeps_the_old_values():
    r, watcher, live = watched(conf(token=1000))
    before = live[0]
    r.cmap.set("totem.token", 10, CmapType.UINT32, client=True)
    assert live[0] is before and r.cmap.get("runtime.config.totem.token") == 1000
    assert any("The token timeout parameter (10 ms) may not be less than (30 ms)." in t
               for t in r.texts())


def test_run_time_watcher_ignores_other_keys_and_full_reloads():
    r, watcher, live = watched(conf(token=1000))
    r.cmap.set("totem.cluster_name", "x", CmapType.STRING)
    assert watcher.applied == 0
    r.old.totem_config = live[0]
    r.reload(conf(token=1500, logging=" debug: on"))
    assert watcher.applied == 0  # the reload applied it once, itself
    assert live[0].token == 1500 and r.cmap.get("runtime.config.totem.token") == 1500
