"""Crypto envelope (spec/totem-wire.md §6): round trips, known answers, rejections, backends.

The known-answer datagrams below were computed with the reference helpers of this file
(RFC 2104 HMAC from hashlib digests, CBC chained by hand over the AES-ECB primitive),
which are themselves pinned to RFC 2202/4231 and NIST SP 800-38A vectors; nothing in the
expected bytes comes from the code under test.
"""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import pytest
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st

from corosync.exec.transport import crypto
from corosync.exec.transport.crypto import CIPHERS, HASHES, CryptoEnvelope, CryptoError

BACKENDS = ["pure", pytest.param("c", marks=pytest.mark.skipif(
    not crypto.C_AVAILABLE, reason="corosync._ccrypto not built (setup.py cffi_modules line missing?)"))]
COMBOS = [(c, h) for c in CIPHERS for h in HASHES if not (CIPHERS[c] and h == "none")]
KEY = bytes(range(256))
SALT = bytes(range(0xA0, 0xB0))
JOIN = bytes.fromhex("70c00303000100000000000000010000000100000000000000010000000000000001000000")
ORF = bytes.fromhex(
    "70c003000002000000000000020000000001000000ffffffff01000000010000000900000000000000000000"
    "00000000000000000000000000")


def fixed_salt(n: int) -> bytes:
    return SALT[:n]


# ---- independent reference computations ---------------------------------------------

def ref_hmac(name: str, key: bytes, data: bytes) -> bytes:
    block = hashlib.new(name).block_size
    if len(key) > block:
        key = hashlib.new(name, key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.new(name, bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.new(name, bytes(k ^ 0x5C for k in key) + inner).digest()


def ref_cbc_raw(key: bytes, iv: bytes, data: bytes) -> bytes:
    ecb = AES.new(key, AES.MODE_ECB)
    prev, out = iv, b""
    for i in range(0, len(data), 16):
        prev = ecb.encrypt(bytes(a ^ b for a, b in zip(data[i:i + 16], prev)))
        out += prev
    return out


def ref_wrap(cipher: str, hash_: str, key: bytes, salt: bytes, plaintext: bytes) -> bytes:
    klen = CIPHERS[cipher]
    if klen:
        pad = 16 - len(plaintext) % 16
        body = salt + ref_cbc_raw(key[:klen].ljust(klen, b"\0"), salt, plaintext + bytes([pad]) * pad)
    else:
        body = plaintext
    datagram = b"\xfe\xfe\x00\x00" + body
    if hash_ != "none":
        datagram += ref_hmac(hash_, key, datagram)
    return datagram


def test_reference_hmac_matches_rfc_vectors() -> None:
    data = b"Test Using Larger Than Block-Size Key - Hash Key First"
    assert ref_hmac("md5", b"\xaa" * 80, data).hex() == "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"  # RFC 2202 6
    assert ref_hmac("sha1", b"\xaa" * 80, data).hex() == "aa4ae5e15272d00e95705637ce8a3b55ed402112"
    key = b"\xaa" * 131  # RFC 4231 test case 6
    assert ref_hmac("sha256", key, data).hex() == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    assert ref_hmac("sha384", key, data).hex() == (
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
        "0c2ef6ab4030fe8296248df163f44952")
    assert ref_hmac("sha512", key, data).hex() == (
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598")


def test_reference_cbc_matches_sp800_38a() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    assert ref_cbc_raw(key, iv, pt).hex() == (
        "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2")


# ---- known answers -----------------------------------------------------------------

KAT = [
    ("none", "sha1", JOIN,
     "fefe000070c003030001000000000000000100000001000000000000000100000000000000010000003bb064"
     "fbeec05cea2194ef0089699267045c8718"),
    ("aes256", "sha256", ORF,
     "fefe0000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf5963f665471e87b72ec346e3984cf764eb12f71863778301"
     "c23a0f686565db03583cfff12bb50802310a914fbf5370648967759289547fc8423b78cce51366f8795dedd7"
     "1096fa6280a3301e569e20c7d4d1549ae92715bf91522968c0a396e9"),
    ("aes128", "md5", ORF,
     "fefe0000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf21330679461acad86bdaad357aba6212732e02809800b0a9"
     "2bc477ebc8fa8b1dce8957af10d9f48c3fa1694081f596eda16b99fd691f6478a87c46139b4b1523a8cee631"
     "602436374884bbf8b148195c"),
    ("aes192", "sha512", JOIN,
     "fefe0000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf529011d6af69addae1fe7011675438b43be7800414d6277a"
     "16fcfd0f3cf4b23a720342dcde9de1fe3d08246ae9f2b166f4939b7ac12ca1ffd8536da4b1759d72096f2e8f"
     "34b745600859f5da672116299e3c480bed8733a98caaf2b01090b3a74c71b01989cab35f7249ebc65a5f5385"),
    ("aes256", "sha384", JOIN,
     "fefe0000a0a1a2a3a4a5a6a7a8a9aaabacadaeaf6fda56585f9833e54de55fe9d9223fb6f879c2f3c5791d55"
     "1301dac5a681cacd607660e9dcd2b2681502ef1da9aba914202cedb9b653e48d9962ba6fbfe866f84e0d5cd2"
     "72b86ee32c7cc54eba00fb7194f63f61ac7c67c60769e3337f335fdd"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cipher", "hash_", "plaintext", "expected"), KAT)
def test_known_answer(backend: str, cipher: str, hash_: str, plaintext: bytes, expected: str) -> None:
    expected_bytes = bytes.fromhex(expected)
    assert ref_wrap(cipher, hash_, KEY, SALT, plaintext) == expected_bytes
    env = CryptoEnvelope(cipher, hash_, KEY, rng=fixed_salt, backend=backend)
    assert env.wrap(plaintext) == expected_bytes
    assert env.unwrap(expected_bytes) == plaintext


# ---- round trips, sizes, identical bytes --------------------------------------------

SIZES = [1, 15, 16, 17, 31, 32, 57, 1455, 1500, 65000]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cipher", "hash_"), COMBOS)
def test_round_trip_every_combination(backend: str, cipher: str, hash_: str) -> None:
    env = CryptoEnvelope(cipher, hash_, KEY, backend=backend)
    rnd = random.Random(f"{cipher}/{hash_}")
    for size in SIZES:
        plaintext = rnd.randbytes(size)
        datagram = env.wrap(plaintext)
        assert datagram[:4] == b"\xfe\xfe\x00\x00"
        assert len(datagram) <= size + env.overhead
        assert env.unwrap(datagram) == plaintext
        assert env.unwrap(bytearray(datagram)) == plaintext
        assert env.unwrap(memoryview(datagram)) == plaintext
        salt = datagram[4:20] if CIPHERS[cipher] else b""
        assert datagram == ref_wrap(cipher, hash_, KEY, salt, plaintext)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cipher", ["aes128", "aes256"])
def test_long_lived_cbc_chain_matches_fresh_cbc_in_any_order(backend: str, cipher: str) -> None:
    """The envelope re-aims one CBC object per direction; datagrams must still be
    independent: any order, interleaved with rejected and bad-padding datagrams."""
    rnd = random.Random(7)
    sender = CryptoEnvelope(cipher, "sha256", KEY, backend=backend)
    receiver = CryptoEnvelope(cipher, "sha256", KEY, backend=backend)
    sent = []
    for i in range(60):
        plaintext = rnd.randbytes(rnd.choice([1, 16, 17, 57, 300, 1455]))
        datagram = sender.wrap(plaintext)
        assert datagram == ref_wrap(cipher, "sha256", KEY, datagram[4:20], plaintext), i
        sent.append((datagram, plaintext))
    klen = CIPHERS[cipher]
    bad_pad_body = b"\xfe\xfe\x00\x00" + SALT + ref_cbc_raw(KEY[:klen], SALT, ORF[:48])
    bad_pad = bad_pad_body + ref_hmac("sha256", KEY, bad_pad_body)
    rnd.shuffle(sent)
    for datagram, plaintext in sent:
        forged = bytearray(datagram)
        forged[-1] ^= 0x40
        with pytest.raises(CryptoError):
            receiver.unwrap(bytes(forged))
        if rnd.random() < 0.3:
            with pytest.raises(CryptoError) as info:
                receiver.unwrap(bad_pad)
            assert info.value.reason == "bad_padding"
        assert receiver.unwrap(datagram) == plaintext
        assert sender.unwrap(datagram) == plaintext  # one envelope both ways, too


@pytest.mark.skipif(not crypto.C_AVAILABLE, reason="corosync._ccrypto not built")
@settings(max_examples=150, deadline=None, derandomize=True)
@given(combo=st.sampled_from(COMBOS), plaintext=st.binary(min_size=1, max_size=3000),
       key=st.binary(min_size=1, max_size=300), salt=st.binary(min_size=16, max_size=16))
def test_backends_produce_identical_bytes(combo: tuple[str, str], plaintext: bytes, key: bytes,
                                          salt: bytes) -> None:
    cipher, hash_ = combo
    pure = CryptoEnvelope(cipher, hash_, key, rng=lambda n: salt, backend="pure")
    c = CryptoEnvelope(cipher, hash_, key, rng=lambda n: salt, backend="c")
    datagram = pure.wrap(plaintext)
    assert c.wrap(plaintext) == datagram
    assert pure.unwrap(datagram) == c.unwrap(datagram) == plaintext


@pytest.mark.parametrize("backend", BACKENDS)
def test_salt_is_fresh_per_datagram(backend: str) -> None:
    env = CryptoEnvelope("aes256", "sha256", KEY, backend=backend)
    first, second = env.wrap(ORF), env.wrap(ORF)
    assert first[4:20] != second[4:20]
    assert first[20:] != second[20:]


def test_overhead_matches_spec() -> None:
    assert CryptoEnvelope("aes256", "sha1", KEY).overhead == 72
    assert CryptoEnvelope("aes256", "sha256", KEY).overhead == 84
    assert CryptoEnvelope("none", "sha256", KEY).overhead == 36
    assert CryptoEnvelope("none", "none", KEY).overhead == 4
    assert crypto.overhead_for("aes128", "sha512") == 4 + 64 + 16 + 32


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="requires"):
        CryptoEnvelope("aes256", "none", KEY)
    with pytest.raises(ValueError, match="crypto_cipher"):
        CryptoEnvelope("3des", "sha1", KEY)
    with pytest.raises(ValueError, match="crypto_hash"):
        CryptoEnvelope("none", "sha3", KEY)
    with pytest.raises(ValueError, match="empty"):
        CryptoEnvelope("none", "sha1", b"")
    with pytest.raises(ValueError, match="empty message"):
        CryptoEnvelope("none", "sha1", KEY).wrap(b"")


# ---- rejections ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cipher", "hash_"), [c for c in COMBOS if c[1] != "none"])
def test_every_single_bit_flip_is_rejected(backend: str, cipher: str, hash_: str) -> None:
    env = CryptoEnvelope(cipher, hash_, KEY, rng=fixed_salt, backend=backend)
    datagram = env.wrap(JOIN)
    for pos in range(len(datagram)):
        for bit in (0x01, 0x80):
            forged = bytearray(datagram)
            forged[pos] ^= bit
            with pytest.raises(CryptoError) as info:
                env.unwrap(bytes(forged))
            expected = "bad_marker" if pos < 2 else "invalid_digest"
            assert info.value.reason == expected, (pos, bit)
    assert env.rejected["invalid_digest"] == 2 * (len(datagram) - 2)
    assert env.rejected["bad_marker"] == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cipher", "hash_"), COMBOS)
def test_every_truncation_is_rejected(backend: str, cipher: str, hash_: str) -> None:
    env = CryptoEnvelope(cipher, hash_, KEY, rng=fixed_salt, backend=backend)
    datagram = env.wrap(ORF)
    for cut in range(len(datagram)):
        truncated = datagram[:cut]
        if hash_ == "none" and cut > 4:
            # Without a digest a shorter plaintext is indistinguishable from a real one.
            assert env.unwrap(truncated) == datagram[4:cut]
            continue
        with pytest.raises(CryptoError) as info:
            env.unwrap(truncated)
        assert info.value.reason in ("short", "bad_length", "invalid_digest"), cut
        if cut <= 4:
            assert info.value.reason == "short"


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_key_is_invalid_digest(backend: str) -> None:
    sender = CryptoEnvelope("aes256", "sha256", KEY, backend=backend)
    receiver = CryptoEnvelope("aes256", "sha256", KEY[:-1] + b"\x00", backend=backend)
    with pytest.raises(CryptoError) as info:
        receiver.unwrap(sender.wrap(ORF))
    assert info.value.reason == "invalid_digest"
    assert "Invalid digest" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mismatched_hash_setting_is_rejected(backend: str) -> None:
    sender = CryptoEnvelope("aes256", "sha1", KEY, backend=backend)
    receiver = CryptoEnvelope("aes256", "sha256", KEY, backend=backend)
    with pytest.raises(CryptoError) as info:
        receiver.unwrap(sender.wrap(ORF))
    assert info.value.reason in ("invalid_digest", "bad_length")


@pytest.mark.parametrize("backend", BACKENDS)
def test_plaintext_corosync3_packet_is_bad_marker(backend: str) -> None:
    env = CryptoEnvelope("aes256", "sha256", KEY, backend=backend)
    with pytest.raises(CryptoError) as info:
        env.unwrap(JOIN + bytes(100))
    assert info.value.reason == "bad_marker"
    assert "corosync 3" in info.value.detail


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hash_", ["none", "sha256"])
def test_reserved_bytes_checked_after_authentication(backend: str, hash_: str) -> None:
    body = b"\xfe\xfe\x00\x01" + JOIN
    forged = body + (ref_hmac(hash_, KEY, body) if hash_ != "none" else b"")
    env = CryptoEnvelope("none", hash_, KEY, backend=backend)
    with pytest.raises(CryptoError) as info:
        env.unwrap(forged)
    assert info.value.reason == "bad_reserved"


@pytest.mark.parametrize("backend", BACKENDS)
def test_authenticated_bad_padding_is_refused(backend: str) -> None:
    # A peer holding the key encrypts a last block whose padding byte is 0x00.
    ciphertext = ref_cbc_raw(KEY[:32], SALT, ORF[:48])
    body = b"\xfe\xfe\x00\x00" + SALT + ciphertext
    datagram = body + ref_hmac("sha256", KEY, body)
    env = CryptoEnvelope("aes256", "sha256", KEY, backend=backend)
    with pytest.raises(CryptoError) as info:
        env.unwrap(datagram)
    assert info.value.reason == "bad_padding"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ciphertext_not_whole_blocks_is_bad_length(backend: str) -> None:
    env = CryptoEnvelope("aes256", "sha256", KEY, rng=fixed_salt, backend=backend)
    datagram = env.wrap(ORF)
    body_cut = datagram[:-33] + datagram[-32:]  # one byte less of ciphertext
    with pytest.raises(CryptoError) as info:
        env.unwrap(body_cut)
    assert info.value.reason == "bad_length"


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.binary(max_size=400), combo=st.sampled_from(COMBOS))
def test_garbage_only_raises_crypto_error(backend: str, data: bytes, combo: tuple[str, str]) -> None:
    env = CryptoEnvelope(combo[0], combo[1], KEY, backend=backend)
    for candidate in (data, b"\xfe\xfe\x00\x00" + data):
        try:
            env.unwrap(candidate)
        except CryptoError as exc:
            assert exc.reason in ("short", "bad_marker", "bad_length", "invalid_digest", "bad_reserved",
                                  "bad_padding")


# ---- backend switch -----------------------------------------------------------------

SWITCH_PROBE = """
import importlib, json, os, sys
from corosync.exec.transport import crypto
out = {}
def probe(label, value):
    os.environ["COROSYNC_CRYPTO_BACKEND"] = value
    try:
        mod = importlib.reload(crypto)
    except RuntimeError as exc:
        out[label] = ["error", str(exc)]
        return
    env = mod.CryptoEnvelope("aes128", "sha1", b"k" * 128, rng=lambda n: bytes(n))
    out[label] = [mod.BACKEND, mod.C_AVAILABLE, env.wrap(b"x").hex()]
for value in ("pure", "c", "auto", "fast"):
    probe(value, value)
import corosync
sys.modules["corosync._ccrypto"] = None  # as on a machine where the module was not built
corosync.__dict__.pop("_ccrypto", None)
for value in ("auto", "c"):
    probe("unbuilt-" + value, value)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def switch_results() -> dict[str, list[object]]:
    """Import-time backend selection, probed in one fresh interpreter (module reloads)."""
    import json
    proc = subprocess.run([sys.executable, "-c", SWITCH_PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_backend_env_var_forces_pure_and_refuses_nonsense(switch_results: dict[str, list[object]]) -> None:
    expected = ref_wrap("aes128", "sha1", b"k" * 128, bytes(16), b"x").hex()
    assert switch_results["pure"] == ["pure", crypto.C_AVAILABLE, expected]
    assert switch_results["fast"][0] == "error" and "COROSYNC_CRYPTO_BACKEND" in str(switch_results["fast"][1])


@pytest.mark.skipif(not crypto.C_AVAILABLE, reason="corosync._ccrypto not built")
def test_backend_env_var_forces_c(switch_results: dict[str, list[object]]) -> None:
    expected = ref_wrap("aes128", "sha1", b"k" * 128, bytes(16), b"x").hex()
    assert switch_results["c"] == ["c", True, expected]
    assert switch_results["auto"] == ["c", True, expected]


def test_missing_c_module_falls_back_to_pure_or_refuses_when_forced(
        switch_results: dict[str, list[object]]) -> None:
    expected = ref_wrap("aes128", "sha1", b"k" * 128, bytes(16), b"x").hex()
    assert switch_results["unbuilt-auto"] == ["pure", False, expected]
    assert switch_results["unbuilt-c"][0] == "error"
    assert "corosync._ccrypto is not built" in str(switch_results["unbuilt-c"][1])


def test_backend_argument_validated() -> None:
    with pytest.raises(RuntimeError):
        CryptoEnvelope("none", "sha1", KEY, backend="quantum")

