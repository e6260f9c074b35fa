"""Backend selection and switching, encoder limits, the C-extension guard rails."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import pytest

from corosync.exec.totem import wire
from wire_helpers import backend_impl

RING = wire.RingId(1, 9)


def test_rtr_list_over_30_refused_on_encode(backend):
    items = [wire.RtrItem(RING, i) for i in range(31)]
    tok = wire.OrfToken(1, 40, 2, 9, 1, RING, rtr_list=items)
    with pytest.raises(ValueError, match="31 rtr entries"):
        tok.encode()
    tok.rtr_list = items[:30]
    data = tok.encode()
    assert len(data) == wire.ORF_TOKEN_SIZE + 16 * 30
    assert wire.decode(data) == tok


def test_encode_range_errors_match_pure(backend):
    """Out-of-range field values raise what the pure codec raises (struct.error)."""
    import struct
    with pytest.raises(struct.error):
        wire.OrfToken(-1, 0, 0, 0, 0, RING).encode()
    with pytest.raises(struct.error):
        wire.Mcast(1, 1, 1, wire.RingId(1, 2**64), b"").encode()
    with pytest.raises(struct.error):
        wire.encode_pg(256, 0, [b"x"])
    with pytest.raises(ValueError, match="65535"):
        wire.encode_pg(0, 0, [bytes(0x10000)])


def test_memoryview_and_bytearray_inputs(backend):
    tok = wire.OrfToken(2, 5, 6, 5, 0, RING, rtr_list=[wire.RtrItem(RING, 4)])
    data = tok.encode()
    for buf in (bytearray(data), memoryview(data)):
        assert wire.peek_header(buf) == (0, 2, False)
        assert wire.decode(buf) == tok
    pg = wire.encode_pg(0, 0, [b"ab", b"cde"])
    assert wire.decode_pg(bytearray(pg)).pieces == [b"ab", b"cde"]
    assert wire.decode_pg(memoryview(pg)[0:]).pieces == [b"ab", b"cde"]


def test_set_backend_switches_and_restores():
    available = wire.available_backends()
    assert available[0] == "pure"
    before = wire.BACKEND
    try:
        assert wire.set_backend("pure") == before
        assert wire.BACKEND == "pure" and wire._impl_decode_pg is wire._pure_decode_pg
        if "c" in available:
            from corosync.exec.totem import _wire_c
            assert wire.set_backend("c") == "pure"
            for op, choice in _wire_c.FASTEST.items():
                hook = getattr(wire, "_impl_" + op)
                assert (hook is getattr(wire, "_pure_" + op)) == (choice == "pure"), op
        with pytest.raises(ValueError):
            wire.set_backend("fortran")
    finally:
        wire.set_backend(before)
    assert wire.BACKEND == before


@pytest.mark.parametrize("want", ["pure", "c", "bogus"])
def test_codec_environment_variable(want):
    if want == "c" and "c" not in wire.available_backends():
        backend_impl("c")  # skips, or fails under CI
    env = dict(os.environ, COROSYNC_CODEC=want)
    proc = subprocess.run(
        [sys.executable, "-c", "from corosync.exec.totem import wire; print(wire.BACKEND)"],
        env=env, capture_output=True, text=True, timeout=60)
    if want == "bogus":
        assert proc.returncode != 0 and "COROSYNC_CODEC" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == want


def _load_wire_c_with(monkeypatch, fake_lib) -> None:
    fake = types.ModuleType("corosync._ccodec")
    fake.ffi, fake.lib = object(), fake_lib
    monkeypatch.setitem(sys.modules, "corosync._ccodec", fake)
    spec = importlib.util.spec_from_file_location(
        "_wire_c_probe", pathlib_join(wire.__file__, "_wire_c.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def pathlib_join(sibling: str, name: str) -> str:
    return os.path.join(os.path.dirname(sibling), name)


def test_placeholder_extension_refused(monkeypatch):
    placeholder = types.SimpleNamespace(ccodec_abi_version=lambda: 0)
    with pytest.raises(ImportError, match="placeholder"):
        _load_wire_c_with(monkeypatch, placeholder)
    stale = types.SimpleNamespace(ccodec_abi_version=lambda: 99, cc_peek_header=None)
    with pytest.raises(ImportError, match="placeholder"):
        _load_wire_c_with(monkeypatch, stale)


def test_missing_extension_skips_or_fails_under_ci(monkeypatch):
    import corosync.exec.totem as totem_pkg
    monkeypatch.setitem(sys.modules, "corosync.exec.totem._wire_c", None)  # ImportError
    monkeypatch.delattr(totem_pkg, "_wire_c", raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        backend_impl("c")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception):
        backend_impl("c")
