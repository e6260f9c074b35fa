"""The optional per-datagram crypto envelope (corosync 2.4 ``totemcrypto`` framing).

Corosync 3 has no crypto on udp/udpu (spec/totem-wire.md §1.1); we offer the 2.4 envelope
(§6) so clusters made only of our nodes can authenticate and encrypt their traffic::

    FE FE 00 00 | [salt(16) | AES-CBC(plaintext + PKCS#7)] or plaintext | HMAC(all before)

Design points, each for a reason:

* **Authenticate before trusting anything.**  :meth:`CryptoEnvelope.unwrap` only looks at
  the datagram length and the two fixed marker bytes (a cheap filter that also tells a
  plaintext corosync 3 packet apart) before the HMAC has been verified with a
  constant-time comparison.  Reserved bytes, salt, ciphertext and padding are examined
  only after that, so forged input costs one HMAC and never reaches the decryptor.
* **One error type.**  Every rejection raises :class:`CryptoError` whose ``reason`` is a
  short stable key (``short``, ``bad_marker``, ``bad_length``, ``invalid_digest``,
  ``bad_reserved``, ``bad_padding``) that the transport uses as a counter name; the
  envelope never logs (the transport rate-limits its log lines).
* **No key derivation**, as in 2.4: the AES key is the first 16/24/32 bytes of the
  private key (zero-padded if shorter), the HMAC key is the whole private key.
* **Two backends, identical bytes.**  The HMAC + framing work runs either in pure Python
  (:mod:`hmac`, itself OpenSSL-backed) or in one call into the cffi module
  ``corosync._ccrypto`` (lib/_c/crypto.c), which keeps the HMAC key schedule precomputed.
  ``COROSYNC_CRYPTO_BACKEND=pure|c|auto`` (default ``auto``) selects at import time;
  ``BACKEND`` says which one is active.  AES is pycryptodome in both, on long-lived
  cipher objects re-aimed per datagram (:class:`_CbcChain`).
* **Injectable randomness.**  The per-packet salt (the CBC IV) comes from ``rng``
  (default :func:`os.urandom`) so tests can pin it and compare bytes exactly.

Envelope objects are not thread-safe (the C path reuses one output buffer, the CBC
objects carry chaining state); the executive uses one per trio event loop.
"""

from __future__ import annotations

import collections
import hmac
import os
from typing import Any, Callable, Optional, Union

from Crypto.Cipher import AES

__all__ = [
    "CryptoError", "CryptoConfigError", "KeyFileError", "CryptoEnvelope", "load_key",
    "envelope_from_config", "resolve_crypto_names", "overhead_for", "BACKEND", "C_AVAILABLE",
    "CIPHERS", "HASHES", "HEADER", "SALT_SIZE", "KEY_LEN_MIN", "KEY_LEN_MAX", "DEFAULT_KEYFILE",
]

HEADER = b"\xfe\xfe\x00\x00"  # CRYPTO_CIPHER_TYPE_2_3, CRYPTO_HASH_TYPE_2_3, two reserved zeros
HEADER_SIZE = 4
MARKER = 0xFE
SALT_SIZE = 16
AES_BLOCK = 16
_PADS = [bytes((n,)) * n for n in range(AES_BLOCK + 1)]  # PKCS#7 tails, by pad length

#: cipher name -> AES key length in bytes (0 = no encryption).  3des is deliberately not
#: offered: how 2.4/NSS used a 16-byte IV with an 8-byte block was never verified (§6.3).
CIPHERS: dict[str, int] = {"none": 0, "aes256": 32, "aes192": 24, "aes128": 16}
#: hash name -> (id shared with lib/_c/crypto.c, digest length)
HASHES: dict[str, tuple[int, int]] = {
    "none": (0, 0), "md5": (1, 16), "sha1": (2, 20), "sha256": (3, 32), "sha384": (4, 48),
    "sha512": (5, 64),
}

#: Key sizes: corosync 3's TOTEM_PRIVATE_KEY_LEN_MIN/MAX (what its keygen -s accepts; the
#: default key is 256 bytes).  Key files are read as corosync 3 reads them (first 4096
#: bytes, at least 128); 2.4 read exactly 128 bytes, but the envelope only talks to our
#: own nodes, which all use the same rule.
KEY_LEN_MIN = 128
KEY_LEN_MAX = 4096
DEFAULT_KEYFILE = "/etc/corosync/authkey"
AUTHKEY_ENV = "COROSYNC_TOTEM_AUTHKEY_FILE"
BACKEND_ENV = "COROSYNC_CRYPTO_BACKEND"


class CryptoError(Exception):
    """A received datagram was refused.  ``reason`` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CryptoConfigError(ValueError):
    """The crypto configuration cannot be used; the message names the offending key."""

    def __init__(self, message: str, *, key: str = "", path: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.path = path


class KeyFileError(CryptoConfigError):
    """A key file is missing, unreadable or of an unusable size (``reason`` says which)."""

    def __init__(self, message: str, *, path: str, reason: str) -> None:
        super().__init__(message, key="totem.keyfile", path=path)
        self.reason = reason


# ------------------------------------------------------------------------------------
# backend selection

def _load_c() -> Any:
    try:
        from corosync import _ccrypto  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _ccrypto


_C = _load_c()
C_AVAILABLE = _C is not None


def _resolve_backend(want: Optional[str]) -> str:
    choice = (want if want is not None else os.environ.get(BACKEND_ENV, "auto")).lower()
    if choice not in ("auto", "c", "pure"):
        raise RuntimeError(f"{BACKEND_ENV}={choice!r}: expected auto, c or pure")
    if choice == "c" and _C is None:
        raise RuntimeError(f"{BACKEND_ENV}=c but the C module corosync._ccrypto is not built")
    if choice == "auto":
        return "c" if _C is not None else "pure"
    return choice


BACKEND = _resolve_backend(None)

# Error codes of lib/_c/crypto.c -> reasons, with the detail the pure path gives too.
_REASONS = {
    -1: "short",
    -2: "bad_marker",
    -3: "bad_length",
    -4: "invalid_digest",
    -5: "bad_reserved",
}


def _marker_detail(datagram: Union[bytes, bytearray, memoryview]) -> str:
    """Best guess at who sent a non-envelope datagram, for the log line."""
    b0, b1 = datagram[0], datagram[1]
    if (b0, b1) in ((0xC0, 0x70), (0x70, 0xC0)):
        return "not an envelope (plaintext corosync 3 totem packet; is crypto off on the peer?)"
    if b0 == 0xFF:
        return "not an envelope (probably corosync 2.2 crypto)"
    if b0 == MARKER:
        return f"unexpected second marker byte 0x{b1:02x}"
    return f"not an envelope (first bytes {b0:02x} {b1:02x})"


def _detail(reason: str, datagram: Union[bytes, bytearray, memoryview], minimum: int) -> str:
    if reason == "short":
        return f"{len(datagram)} bytes, need at least {minimum}"
    if reason == "bad_marker":
        return _marker_detail(datagram)
    if reason == "bad_length":
        return "ciphertext is not a whole number of AES blocks"
    if reason == "invalid_digest":
        return "Invalid digest"
    if reason == "bad_reserved":
        return "reserved header bytes are not zero (unsupported feature?)"
    return ""


# ------------------------------------------------------------------------------------
# framing + HMAC backends: seal(body) -> datagram, open(datagram) -> body length

class _PureFramer:
    """Framing and HMAC with the stdlib; the HMAC key schedule is kept in a template."""

    def __init__(self, hash_name: str, key: bytes, min_body: int, align: int, salt: int) -> None:
        self.digest = HASHES[hash_name][1]
        self.min_len = HEADER_SIZE + self.digest + min_body
        self._align = align
        self._salt = salt
        self._template = hmac.new(key, digestmod=hash_name) if self.digest else None
        # Every datagram we send starts with the same 4 bytes: absorb them once.
        self._sealer = hmac.new(key, HEADER, digestmod=hash_name) if self.digest else None

    def seal(self, body: bytes) -> bytes:
        if self._sealer is None:
            return HEADER + body
        mac = self._sealer.copy()
        mac.update(body)
        return b"".join((HEADER, body, mac.digest()))

    def open(self, datagram: Union[bytes, bytearray, memoryview]) -> int:
        n = len(datagram)
        if n < self.min_len:
            raise CryptoError("short", _detail("short", datagram, self.min_len))
        if datagram[0] != MARKER or datagram[1] != MARKER:
            raise CryptoError("bad_marker", _marker_detail(datagram))
        body = n - HEADER_SIZE - self.digest
        if (body - self._salt) % self._align:
            raise CryptoError("bad_length", _detail("bad_length", datagram, 0))
        if self._template is not None:
            view = memoryview(datagram)
            mac = self._template.copy()
            mac.update(view[: n - self.digest])
            if not hmac.compare_digest(mac.digest(), view[n - self.digest:]):
                raise CryptoError("invalid_digest", "Invalid digest")
        if datagram[2] or datagram[3]:
            raise CryptoError("bad_reserved", _detail("bad_reserved", datagram, 0))
        return body


class _CFramer:
    """The same contract in one foreign call per datagram (lib/_c/crypto.c)."""

    def __init__(self, hash_name: str, key: bytes, min_body: int, align: int, salt: int) -> None:
        ffi, lib = _C.ffi, _C.lib
        self._ffi, self._lib = ffi, lib
        self.digest = HASHES[hash_name][1]
        self.min_len = HEADER_SIZE + self.digest + min_body
        self._state = ffi.new("cc_state *")
        rc = lib.cc_init(self._state, HASHES[hash_name][0], key, len(key), min_body, align, salt)
        if rc != 0:
            raise ValueError(f"C crypto backend refused its parameters ({rc})")
        # Bound once: attribute lookups are a visible share of a ~1 us call.
        self._seal, self._open, self._buffer = lib.cc_seal, lib.cc_open, ffi.buffer
        self._cap = 0
        self._out: Any = None

    def seal(self, body: bytes) -> bytes:
        need = HEADER_SIZE + len(body) + self.digest
        if need > self._cap:
            self._cap = max(need, 2048)
            self._out = self._ffi.new("char[]", self._cap)
        n = self._seal(self._state, body, len(body), self._out, self._cap)
        return self._buffer(self._out, n)[:]

    def open(self, datagram: Union[bytes, bytearray, memoryview]) -> int:
        src = datagram if type(datagram) is bytes else self._ffi.from_buffer(datagram)
        rc = self._open(self._state, src, len(datagram))
        if rc < 0:
            reason = _REASONS.get(rc, "internal")
            raise CryptoError(reason, _detail(reason, datagram, self.min_len))
        return rc


# ------------------------------------------------------------------------------------
# AES-CBC with a per-datagram IV, without a cipher object per datagram

class _CbcChain:
    """AES-CBC (PKCS#7) where every call uses its own IV, on two long-lived objects.

    Building a pycryptodome cipher object (key expansion and Python-level setup) costs
    more than encrypting a whole 1500-byte datagram.  A CBC object keeps chaining across
    calls: the last ciphertext block it produced (encrypt) or consumed (decrypt) acts as
    the "previous block" of the next call.  So we keep one encryptor and one decryptor
    and re-aim them per datagram: XOR ``prev ^ iv`` into the first plaintext block before
    encrypting, or out of the first decrypted block afterwards.  The result is exactly
    CBC with that IV (the tests compare against independent per-datagram CBC).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._reset()

    def _reset(self) -> None:
        zero = bytes(AES_BLOCK)
        self._enc = AES.new(self._key, AES.MODE_CBC, iv=zero)
        self._dec = AES.new(self._key, AES.MODE_CBC, iv=zero)
        self._enc_prev = 0
        self._dec_prev = 0

    def encrypt(self, iv: bytes, plaintext: Union[bytes, bytearray, memoryview]) -> bytes:
        buf = bytearray(plaintext)
        buf += _PADS[AES_BLOCK - len(buf) % AES_BLOCK]
        first = int.from_bytes(buf[:AES_BLOCK], "little") ^ int.from_bytes(iv, "little") ^ self._enc_prev
        buf[:AES_BLOCK] = first.to_bytes(AES_BLOCK, "little")
        try:
            out = self._enc.encrypt(buf)
        except Exception:
            self._reset()  # never leave the chain in an unknown state
            raise
        self._enc_prev = int.from_bytes(out[-AES_BLOCK:], "little")
        return out

    def decrypt(self, iv: Union[bytes, memoryview], ciphertext: Union[bytes, memoryview]) -> bytearray:
        """Decrypt whole blocks (the caller checked the length); padding stays on."""
        out = bytearray(len(ciphertext))
        try:
            self._dec.decrypt(ciphertext, output=out)
        except Exception:
            self._reset()
            raise
        first = int.from_bytes(out[:AES_BLOCK], "little") ^ int.from_bytes(iv, "little") ^ self._dec_prev
        out[:AES_BLOCK] = first.to_bytes(AES_BLOCK, "little")
        self._dec_prev = int.from_bytes(ciphertext[-AES_BLOCK:], "little")
        return out


# ------------------------------------------------------------------------------------
# the envelope

def overhead_for(cipher: str, hash: str) -> int:
    """Bytes to subtract from net_mtu for this configuration (spec §6.3).

    2.4 reserved the header, the digest and, with a cipher, the salt plus *two* cipher
    blocks (PKCS#7 adds at most one; the second is 2.4's margin, kept so that our
    datagram sizes match what a 2.4-configured MTU budget expects).
    """
    if cipher not in CIPHERS:
        raise ValueError(f"unknown crypto_cipher {cipher!r}")
    if hash not in HASHES:
        raise ValueError(f"unknown crypto_hash {hash!r}")
    extra = SALT_SIZE + 2 * AES_BLOCK if CIPHERS[cipher] else 0
    return HEADER_SIZE + HASHES[hash][1] + extra


class CryptoEnvelope:
    """Wraps outgoing and unwraps incoming datagrams for one cipher/hash/key setting."""

    def __init__(
        self,
        cipher: str,
        hash: str,
        key: bytes,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        backend: Optional[str] = None,
    ) -> None:
        if cipher not in CIPHERS:
            raise ValueError(f"unknown crypto_cipher {cipher!r} (expected one of {', '.join(CIPHERS)})")
        if hash not in HASHES:
            raise ValueError(f"unknown crypto_hash {hash!r} (expected one of {', '.join(HASHES)})")
        if CIPHERS[cipher] and hash == "none":
            raise ValueError(f"crypto_cipher {cipher} requires a crypto_hash other than none")
        key = bytes(key)
        if not key and (cipher != "none" or hash != "none"):
            raise ValueError("empty private key")
        self.cipher = cipher
        self.hash = hash
        self.overhead = overhead_for(cipher, hash)
        self.backend = _resolve_backend(backend)
        self.rejected: collections.Counter[str] = collections.Counter()
        self._rng = rng
        key_len = CIPHERS[cipher]
        self._cbc = _CbcChain(key[:key_len].ljust(key_len, b"\0")) if key_len else None
        if key_len:
            min_body, align, salt = SALT_SIZE + AES_BLOCK, AES_BLOCK, SALT_SIZE
        else:
            min_body, align, salt = 1, 1, 0
        framer = _CFramer if self.backend == "c" else _PureFramer
        self._framer: Union[_PureFramer, _CFramer] = framer(hash, key, min_body, align, salt)

    def __repr__(self) -> str:
        return f"CryptoEnvelope(cipher={self.cipher!r}, hash={self.hash!r}, backend={self.backend!r})"

    def wrap(self, plaintext: bytes) -> bytes:
        """Return the datagram carrying ``plaintext`` (a whole totem message)."""
        if not plaintext:
            raise ValueError("cannot wrap an empty message")
        if self._cbc is not None:
            salt = self._rng(SALT_SIZE)
            if len(salt) != SALT_SIZE:
                raise ValueError("rng returned a salt of the wrong size")
            body = salt + self._cbc.encrypt(salt, plaintext)
        else:
            body = plaintext if type(plaintext) is bytes else bytes(plaintext)
        return self._framer.seal(body)

    def unwrap(self, datagram: Union[bytes, bytearray, memoryview]) -> bytes:
        """Return the totem message inside ``datagram`` or raise :class:`CryptoError`."""
        try:
            length = self._framer.open(datagram)
        except CryptoError as exc:
            self.rejected[exc.reason] += 1
            raise
        if self._cbc is None:
            return bytes(datagram[HEADER_SIZE: HEADER_SIZE + length])
        view = memoryview(datagram)
        start = HEADER_SIZE + SALT_SIZE
        plain = self._cbc.decrypt(view[HEADER_SIZE:start], view[start: HEADER_SIZE + length])
        pad = plain[-1]
        if not 1 <= pad <= AES_BLOCK or plain[-pad:] != _PADS[pad]:
            self.rejected["bad_padding"] += 1
            raise CryptoError("bad_padding", "authenticated datagram with invalid PKCS#7 padding")
        del plain[-pad:]
        return bytes(plain)


# ------------------------------------------------------------------------------------
# keys and configuration

def load_key(path: str) -> bytes:
    """Read a private key file the way corosync 3 does.

    The key is the file's first 4096 bytes (``TOTEM_PRIVATE_KEY_LEN_MAX``; anything after
    is ignored, as corosync does); fewer than 128 bytes is an error.  Errors are
    :class:`KeyFileError` with ``reason`` ``missing`` (ENOENT), ``unreadable`` (any other
    open/read error) or ``size``, and corosync's message naming the file.
    """
    try:
        with open(path, "rb") as f:
            try:
                data = f.read(KEY_LEN_MAX)
            except OSError as exc:
                raise KeyFileError(f"Could not read {path}: {exc.strerror or exc}", path=path,
                                   reason="unreadable") from None
    except FileNotFoundError as exc:
        raise KeyFileError(f"Could not open {path}: {exc.strerror}", path=path, reason="missing") from None
    except OSError as exc:
        raise KeyFileError(f"Could not open {path}: {exc.strerror or exc}", path=path,
                           reason="unreadable") from None
    if len(data) < KEY_LEN_MIN:
        raise KeyFileError(
            f"Could only read {len(data) * 8} bits of minimum {KEY_LEN_MIN * 8} bits from {path}.",
            path=path,
            reason="size",
        )
    return data


def _setting(totem: Any, name: str) -> Any:
    value = totem.get(name) if isinstance(totem, dict) else getattr(totem, name, None)
    return value


def resolve_crypto_names(totem: Any) -> tuple[str, str]:
    """(cipher, hash) from totem settings, with corosync 3's precedence.

    ``secauth: on`` means aes256 + sha256 (3.x; 2.4 used sha1); explicit
    ``crypto_cipher`` / ``crypto_hash`` override it.  Unknown names are an error here
    (real corosync silently keeps the default, which hides typos).
    """
    cipher, hash_ = "none", "none"
    secauth = _setting(totem, "secauth")
    if secauth in (True, "on", "yes"):
        cipher, hash_ = "aes256", "sha256"
    explicit_cipher = _setting(totem, "crypto_cipher")
    explicit_hash = _setting(totem, "crypto_hash")
    if explicit_cipher is not None:
        cipher = str(explicit_cipher)
    if explicit_hash is not None:
        hash_ = str(explicit_hash)
    if cipher not in CIPHERS:
        raise CryptoConfigError(
            f"totem.crypto_cipher: unsupported value {cipher!r} (none, aes256, aes192, aes128)",
            key="totem.crypto_cipher",
        )
    if hash_ not in HASHES:
        raise CryptoConfigError(
            f"totem.crypto_hash: unsupported value {hash_!r} (none, md5, sha1, sha256, sha384, sha512)",
            key="totem.crypto_hash",
        )
    if CIPHERS[cipher] and hash_ == "none":
        raise CryptoConfigError(
            f"totem.crypto_cipher: {cipher} requires crypto_hash other than none",
            key="totem.crypto_cipher",
        )
    return cipher, hash_


def envelope_from_config(totem_settings: Any, **kwargs: Any) -> Optional[CryptoEnvelope]:
    """Build the envelope for a parsed ``totem`` section, or None when crypto is off.

    When the settings already carry the key bytes (``private_key``, as
    ``exec/config/model.py`` loads them with file/line errors) those are used.  Otherwise
    the key is found as corosync does: ``totem.keyfile`` if set, else the inline
    ``totem.key`` (UTF-8, 128..4096 bytes), else ``$COROSYNC_TOTEM_AUTHKEY_FILE``, else
    /etc/corosync/authkey.  ``kwargs`` go to :class:`CryptoEnvelope` (rng, backend).
    """
    cipher, hash_ = resolve_crypto_names(totem_settings)
    if cipher == "none" and hash_ == "none":
        return None
    key = _setting(totem_settings, "private_key")
    if key is None:
        key = _find_key(totem_settings)
    return CryptoEnvelope(cipher, hash_, bytes(key), **kwargs)


def _find_key(totem_settings: Any) -> bytes:
    keyfile = _setting(totem_settings, "keyfile")
    if keyfile:
        return load_key(str(keyfile))
    inline = _setting(totem_settings, "key")
    if inline:
        key = inline.encode("utf-8") if isinstance(inline, str) else bytes(inline)
        if len(key) > KEY_LEN_MAX:
            raise CryptoConfigError(f"totem.key: key is too long ({len(key)} bytes, at most {KEY_LEN_MAX})",
                                    key="totem.key")
        if len(key) < KEY_LEN_MIN:
            raise CryptoConfigError(f"totem.key: key is too short ({len(key)} bytes, at least {KEY_LEN_MIN})",
                                    key="totem.key")
        return key
    return load_key(os.environ.get(AUTHKEY_ENV) or DEFAULT_KEYFILE)
