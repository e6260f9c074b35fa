"""Key files and configuration for the crypto envelope (load_key, envelope_from_config)."""
from __future__ import annotations

import pathlib
import types

import pytest

from corosync.exec.transport import crypto
from corosync.exec.transport.crypto import CryptoConfigError, KeyFileError, envelope_from_config, load_key
from corosync.tools import keygen


def settings(**kw: object) -> types.SimpleNamespace:
    base = dict(crypto_cipher=None, crypto_hash=None, secauth=None, keyfile=None, key=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def write_key(path: pathlib.Path, size: int) -> bytes:
    data = bytes((i * 37 + 11) & 0xFF for i in range(size))
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("size", [128, 256, 4096])
def test_load_key_accepts_corosync3_sizes(tmp_path: pathlib.Path, size: int) -> None:
    data = write_key(tmp_path / "authkey", size)
    assert load_key(str(tmp_path / "authkey")) == data


def test_load_key_uses_first_4096_bytes_like_corosync(tmp_path: pathlib.Path) -> None:
    data = write_key(tmp_path / "authkey", 10000)
    assert load_key(str(tmp_path / "authkey")) == data[:4096]


@pytest.mark.parametrize("size", [0, 1, 127])
def test_load_key_refuses_short_files(tmp_path: pathlib.Path, size: int) -> None:
    path = tmp_path / "authkey"
    write_key(path, size)
    with pytest.raises(KeyFileError) as info:
        load_key(str(path))
    assert info.value.reason == "size"
    assert info.value.path == str(path)
    assert str(info.value) == f"Could only read {size * 8} bits of minimum 1024 bits from {path}."


def test_load_key_missing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(KeyFileError) as info:
        load_key(str(path))
    assert info.value.reason == "missing"
    assert str(info.value) == f"Could not open {path}: No such file or directory"


def test_load_key_unreadable(tmp_path: pathlib.Path) -> None:
    with pytest.raises(KeyFileError) as info:
        load_key(str(tmp_path))  # a directory: open() or read() fails, depending on the OS
    assert info.value.reason == "unreadable"
    assert str(info.value).startswith((f"Could not read {tmp_path}: ", f"Could not open {tmp_path}: "))


def test_keygen_output_is_a_loadable_key(tmp_path: pathlib.Path) -> None:
    import io
    path = tmp_path / "authkey"
    assert keygen.run(["-k", str(path)], io.StringIO(), io.StringIO()) == 0
    key = load_key(str(path))
    env = crypto.CryptoEnvelope("aes256", "sha256", key)
    assert env.unwrap(env.wrap(b"totem")) == b"totem"


def test_crypto_off_gives_no_envelope() -> None:
    assert envelope_from_config(settings()) is None
    assert envelope_from_config(settings(crypto_cipher="none", crypto_hash="none")) is None
    assert envelope_from_config({"crypto_cipher": "none", "crypto_hash": "none"}) is None


def test_secauth_on_means_aes256_sha256_unless_overridden(tmp_path: pathlib.Path) -> None:
    write_key(tmp_path / "k", 256)
    env = envelope_from_config(settings(secauth="on", keyfile=str(tmp_path / "k")))
    assert env is not None and (env.cipher, env.hash) == ("aes256", "sha256")
    env = envelope_from_config(settings(secauth="on", crypto_hash="sha512", keyfile=str(tmp_path / "k")))
    assert env is not None and (env.cipher, env.hash) == ("aes256", "sha512")
    assert envelope_from_config(settings(secauth="on", crypto_cipher="none", crypto_hash="none")) is None


def test_keyfile_key_is_used(tmp_path: pathlib.Path) -> None:
    data = write_key(tmp_path / "k", 200)
    env = envelope_from_config(settings(crypto_cipher="aes128", crypto_hash="sha1", keyfile=str(tmp_path / "k")),
                               rng=lambda n: bytes(n))
    assert env is not None
    same = crypto.CryptoEnvelope("aes128", "sha1", data, rng=lambda n: bytes(n))
    assert env.wrap(b"abc") == same.wrap(b"abc")


def test_inline_key_used_without_keyfile() -> None:
    inline = "correct horse battery staple " * 5
    env = envelope_from_config(settings(crypto_hash="sha256", key=inline))
    assert env is not None
    same = crypto.CryptoEnvelope("none", "sha256", inline.encode())
    assert env.wrap(b"abc") == same.wrap(b"abc")
    with pytest.raises(CryptoConfigError, match="totem.key: key is too long"):
        envelope_from_config(settings(crypto_hash="sha256", key="x" * 4097))
    with pytest.raises(CryptoConfigError, match="totem.key: key is too short"):
        envelope_from_config(settings(crypto_hash="sha256", key="x" * 127))


def test_keyfile_wins_over_inline_key(tmp_path: pathlib.Path) -> None:
    data = write_key(tmp_path / "k", 128)
    env = envelope_from_config(settings(crypto_hash="sha1", key="y" * 200, keyfile=str(tmp_path / "k")))
    assert env is not None
    assert env.wrap(b"abc") == crypto.CryptoEnvelope("none", "sha1", data).wrap(b"abc")


def test_preloaded_private_key_is_used_as_is(tmp_path: pathlib.Path) -> None:
    # exec/config/model.py loads the key itself (errors with file and line) and passes it on.
    key = bytes(range(200))
    env = envelope_from_config(settings(crypto_hash="sha1", keyfile=str(tmp_path / "absent"), private_key=key))
    assert env is not None
    assert env.wrap(b"abc") == crypto.CryptoEnvelope("none", "sha1", key).wrap(b"abc")


def test_default_keyfile_from_environment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "authkey"
    monkeypatch.setenv("COROSYNC_TOTEM_AUTHKEY_FILE", str(path))
    with pytest.raises(KeyFileError) as info:
        envelope_from_config(settings(crypto_hash="sha1"))
    assert info.value.path == str(path) and info.value.reason == "missing"
    write_key(path, 128)
    assert envelope_from_config(settings(crypto_hash="sha1")) is not None


@pytest.mark.parametrize(("kw", "key"), [
    (dict(crypto_cipher="aes256", crypto_hash="none"), "totem.crypto_cipher"),
    (dict(crypto_cipher="3des", crypto_hash="sha1"), "totem.crypto_cipher"),
    (dict(crypto_cipher="aes256", crypto_hash="sha3"), "totem.crypto_hash"),
])
def test_bad_crypto_settings_name_the_key(kw: dict[str, str], key: str) -> None:
    with pytest.raises(CryptoConfigError) as info:
        envelope_from_config(settings(**kw))
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_envelope_from_parsed_corosync_conf(tmp_path: pathlib.Path) -> None:
    """End to end with the real config loader: crypto on udpu is accepted (our extension)."""
    from corosync.exec.config.model import load_config
    data = write_key(tmp_path / "authkey", 256)
    text = (
        "totem {\n version: 2\n cluster_name: c\n transport: udpu\n"
        f" crypto_cipher: aes192\n crypto_hash: sha384\n keyfile: {tmp_path / 'authkey'}\n}}\n"
        "nodelist {\n node {\n  ring0_addr: 127.0.0.1\n  nodeid: 1\n }\n}\n"
    )
    cfg = load_config(text=text, local_addrs=["127.0.0.1"])
    env = envelope_from_config(cfg.totem, rng=lambda n: bytes(n))
    assert env is not None and (env.cipher, env.hash) == ("aes192", "sha384")
    assert env.wrap(b"abc") == crypto.CryptoEnvelope("aes192", "sha384", data, rng=lambda n: bytes(n)).wrap(b"abc")
    off = load_config(text=text.replace("aes192", "none").replace("sha384", "none"), local_addrs=["127.0.0.1"])
    assert envelope_from_config(off.totem) is None
