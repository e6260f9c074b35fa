"""The in-memory cmap store: typing, ranges, inc/dec, order, tracking, read-only rules."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync.exec.cmap import (
    CmapError,
    CmapStore,
    CmapType,
    CmapValue,
    CsError,
    Track,
    int_range,
)
from corosync.exec.config import load_config


def test_type_numbering_is_corosyncs():
    assert [(t.name, int(t)) for t in CmapType] == [
        ("INT8", 1), ("UINT8", 2), ("INT16", 3), ("UINT16", 4), ("INT32", 5), ("UINT32", 6),
        ("INT64", 7), ("UINT64", 8), ("FLOAT", 9), ("DOUBLE", 10), ("STRING", 11), ("BINARY", 12),
    ]
    assert (int(Track.DELETE), int(Track.MODIFY), int(Track.ADD), int(Track.PREFIX)) == (1, 2, 4, 8)
    assert CmapType.UINT32.short_name == "u32" and CmapType.DOUBLE.short_name == "dbl"


@pytest.mark.parametrize("t", [t for t in CmapType if t.is_integer])
def test_integer_ranges(t):
    lo, hi = int_range(t)
    store = CmapStore()
    store.set("a.lo", lo, t)
    store.set("a.hi", hi, t)
    assert (store.get("a.lo"), store.get("a.hi")) == (lo, hi)
    for bad in (lo - 1, hi + 1, "1", 1.0, True):
        with pytest.raises(CmapError) as info:
            store.set("a.bad", bad, t)
        assert info.value.error is CsError.ERR_INVALID_PARAM
    assert "a.bad" not in store


def test_other_types():
    store = CmapStore()
    store.set("v.str", "hello", CmapType.STRING)
    store.set("v.bin", bytearray(b"\x00\x01"), CmapType.BINARY)
    store.set("v.dbl", 0.1, CmapType.DOUBLE)
    store.set("v.flt", 0.1, CmapType.FLOAT)
    assert store.get("v.bin") == b"\x00\x01" and isinstance(store.get("v.bin"), bytes)
    assert store.get("v.dbl") == 0.1
    assert store.get("v.flt") == pytest.approx(0.1) and store.get("v.flt") != 0.1  # C float precision
    for t, bad in ((CmapType.STRING, b"x"), (CmapType.STRING, "a\0b"), (CmapType.BINARY, "x"),
                   (CmapType.DOUBLE, "1"), (CmapType.FLOAT, 1e300)):
        with pytest.raises(CmapError):
            store.set("v.bad", bad, t)


@pytest.mark.parametrize("key", ["ab", "x" * 256, "has space", "bad*char", "ünï"])
def test_key_names_refused(key):
    with pytest.raises(CmapError) as info:
        CmapStore().set(key, 1, CmapType.UINT8)
    assert info.value.error is CsError.ERR_NAME_TOO_LONG


def test_get_delete_and_missing():
    store = CmapStore()
    store.set("k.a", 1, CmapType.UINT32)
    assert store.get_entry("k.a") == CmapValue(CmapType.UINT32, 1)
    assert store.get_type("k.a") is CmapType.UINT32
    assert store.get("k.missing", None) is None
    store.delete("k.a")
    for op in (lambda: store.get("k.a"), lambda: store.delete("k.a"), lambda: store.inc("k.a")):
        with pytest.raises(CmapError) as info:
            op()
        assert info.value.error is CsError.ERR_NOT_EXIST
    assert len(store) == 0 and store.keys() == []


def test_inc_dec_wrap_and_refuse_non_integers():
    store = CmapStore()
    store.set("c.u8", 255, CmapType.UINT8)
    store.set("c.i8", -128, CmapType.INT8)
    store.set("c.u64", 0, CmapType.UINT64)
    assert store.inc("c.u8") == 0
    assert store.dec("c.i8") == 127
    assert store.dec("c.u64") == 2**64 - 1
    assert store.adjust("c.u8", 10) == 10
    store.set("c.s", "x", CmapType.STRING)
    store.set("c.d", 1.0, CmapType.DOUBLE)
    for key in ("c.s", "c.d"):
        with pytest.raises(CmapError) as info:
            store.inc(key)
        assert info.value.error is CsError.ERR_INVALID_PARAM


def test_iteration_order_is_byte_order_like_the_real_dump():
    store = CmapStore()
    for key in ("nodelist.node.2.x", "nodelist.node.10.x", "nodelist.local_node_pos", "totem.token",
                "totem.interface.0.bindnetaddr", "totemx.y", "runtime.members.1.ip"):
        store.set(key, "v", CmapType.STRING)
    assert store.keys("nodelist.") == ["nodelist.local_node_pos", "nodelist.node.10.x", "nodelist.node.2.x"]
    assert store.keys("totem.") == ["totem.interface.0.bindnetaddr", "totem.token"]
    assert store.keys("totem") == ["totem.interface.0.bindnetaddr", "totem.token", "totemx.y"]
    assert store.keys("zzz") == [] and store.keys("") == sorted(store.keys(""))
    assert [k for k, _ in store.iter_prefix("runtime.")] == ["runtime.members.1.ip"]


def test_iteration_tolerates_deletion_during_iteration():
    store = CmapStore()
    for i in range(5):
        store.set(f"p.k{i}", i, CmapType.UINT32)
    seen = []
    for key, value in store.iter_prefix("p."):
        seen.append(value.value)
        if key == "p.k1":
            store.delete("p.k2")
    assert seen == [0, 1, 3, 4]


def test_tracking_exact_prefix_flags_and_delete():
    store = CmapStore()
    events: list[tuple] = []

    def record(tag):
        return lambda ev, key, new, old: events.append((tag, ev, key, new, old))

    h_exact = store.track_add("totem.token", Track.ADD | Track.MODIFY | Track.DELETE, record("exact"))
    h_prefix = store.track_add("totem.", Track.PREFIX | Track.MODIFY, record("prefix"))
    store.set("totem.token", 1000, CmapType.UINT32)  # ADD: exact only (prefix tracks MODIFY)
    store.set("totem.token", 1000, CmapType.UINT32)  # unchanged: nobody hears anything
    store.set("totem.token", 2000, CmapType.UINT32)  # MODIFY: both
    store.set("totem.tokenx", 1, CmapType.UINT32)  # ADD of another key: nobody
    store.set("totem.tokenx", "1", CmapType.STRING)  # type change is a MODIFY: prefix
    store.delete("totem.token")  # DELETE: exact
    u32 = CmapType.UINT32
    assert events == [
        ("exact", Track.ADD, "totem.token", CmapValue(u32, 1000), None),
        ("exact", Track.MODIFY, "totem.token", CmapValue(u32, 2000), CmapValue(u32, 1000)),
        ("prefix", Track.MODIFY, "totem.token", CmapValue(u32, 2000), CmapValue(u32, 1000)),
        ("prefix", Track.MODIFY, "totem.tokenx", CmapValue(CmapType.STRING, "1"), CmapValue(u32, 1)),
        ("exact", Track.DELETE, "totem.token", None, CmapValue(u32, 2000)),
    ]
    events.clear()
    store.track_delete(h_exact)
    store.track_delete(h_prefix)
    store.set("totem.token", 1, CmapType.UINT32)
    store.inc("totem.token")
    assert events == []
    with pytest.raises(CmapError):
        store.track_delete(h_exact)
    with pytest.raises(CmapError):
        store.track_add("x.y", Track.PREFIX, record("none"))


def test_callbacks_may_change_trackers_and_store():
    store = CmapStore()
    seen = []

    def once(ev, key, new, old):
        seen.append(key)
        store.track_delete(handle)
        store.set("b.echo", key, CmapType.STRING)

    handle = store.track_add("a.", Track.PREFIX | Track.ADD, once)
    store.set("a.one", 1, CmapType.UINT8)
    store.set("a.two", 2, CmapType.UINT8)
    assert seen == ["a.one"] and store.get("b.echo") == "a.one"


def test_read_only_rules_apply_to_clients_only():
    store = CmapStore()
    store.set("runtime.config.totem.token", 1000, CmapType.UINT32)  # the executive may
    store.set("totem.token", 1000, CmapType.UINT32)
    store.set("totem.transport", "udpu", CmapType.STRING)
    for key in ("runtime.config.totem.token", "nodelist.node.0.nodeid", "system.x", "totem.transport",
                "totem.crypto_cipher", "internal_configuration.service.0.name", "uidgid.config.uid.0"):
        assert store.is_key_ro(key)
        with pytest.raises(CmapError) as info:
            store.set(key, 1, CmapType.UINT32, client=True)
        assert info.value.error is CsError.ERR_ACCESS
    with pytest.raises(CmapError) as info:
        store.delete("totem.transport", client=True)
    assert info.value.error is CsError.ERR_ACCESS
    with pytest.raises(CmapError):
        store.inc("runtime.config.totem.token", client=True)
    # totem.token is writable at runtime (corosync re-reads timers), runtime.members too
    store.set("totem.token", 2000, CmapType.UINT32, client=True)
    assert not store.is_key_ro("runtime.members.1.status") and not store.is_key_ro("totem.token")
    store.set_ro_access("quorum.", prefix=True)
    assert store.is_key_ro("quorum.provider")
    store.set_ro_access("quorum.", prefix=True, ro=False)
    assert not store.is_key_ro("quorum.provider")


def test_dump_format_matches_cmapctl(shared_dir):
    real = (shared_dir / "reference" / "udpu" / "running" / "cmapctl.txt").read_text().splitlines()
    wanted = [line for line in real if line.startswith(("resources.system.load_15min", "runtime.services.cmap"))]
    store = CmapStore()
    store.set("resources.system.load_15min.current", 0.0, CmapType.DOUBLE)
    store.set("resources.system.load_15min.last_updated", 0, CmapType.UINT64)
    store.set("resources.system.load_15min.poll_period", 3000, CmapType.UINT64)
    store.set("resources.system.load_15min.state", "stopped", CmapType.STRING)
    store.set("runtime.services.cmap.0.rx", 3, CmapType.UINT64)
    store.set("runtime.services.cmap.0.tx", 1, CmapType.UINT64)
    store.set("runtime.services.cmap.service_id", 0, CmapType.UINT16)
    assert store.dump().splitlines() == wanted


def test_loaded_from_a_config():
    repo = pathlib.Path(__file__).resolve().parents[2]
    cfg = load_config(str(repo / "conf" / "corosync.conf.example.udpu"), local_addrs=["127.0.0.3"])
    store = CmapStore()
    store.load_config(cfg)
    assert store.get("nodelist.local_node_pos") == 2
    assert store.get("runtime.config.totem.token") == 1000
    assert store.get_type("totem.interface.0.bindnetaddr") is CmapType.STRING
    assert store.get("totem.interface.0.bindnetaddr") == "127.0.0.3"
    assert len(store) == len(cfg.cmap_entries())


_keys = st.sampled_from([f"{a}.{b}" for a in ("aa", "ab", "b", "totem") for b in ("x", "y", "x1", "z.q")])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "delete", "inc"]), _keys, st.integers(0, 255))))
def test_sorted_index_stays_consistent(ops):
    store = CmapStore()
    model: dict[str, int] = {}
    for op, key, value in ops:
        if op == "set":
            store.set(key, value, CmapType.UINT8)
            model[key] = value
        elif key in model:
            if op == "delete":
                store.delete(key)
                del model[key]
            else:
                model[key] = (model[key] + 1) % 256
                assert store.inc(key) == model[key]
    assert store.keys() == sorted(model)
    for prefix in ("a", "aa.", "b", "totem.z", ""):
        assert [k for k, _ in store.iter_prefix(prefix)] == sorted(k for k in model if k.startswith(prefix))
    assert {k: v.value for k, v in store.iter_prefix()} == model


def test_binary_dump_like_cmapctl():
    store = CmapStore()
    store.set("a.bin", b"ok\\\x00\xff", CmapType.BINARY)
    assert store.dump() == "a.bin (bin)\n"  # cmapctl hides binary values without -x
    assert store.dump(show_binary=True) == "a.bin (bin) = ok\\\\\\x00\\xFF\n"
