"""cffi (API mode) build script for the crypto-envelope accelerator ``corosync._ccrypto``.

Shipped path: setup.py lists ``"lib/_c/build_crypto.py:ffibuilder"`` in ``cffi_modules``,
and its optional ``build_ext`` leaves the extension out when it cannot be built (no
compiler, no ``libcrypto.so.3``); ``exec/transport/crypto.py`` then uses the pure path.

The extension links against the versioned ``libcrypto.so.3`` by soname
(``-l:libcrypto.so.3``) so that only the runtime package ``libssl3`` (a dependency of
every Debian Python) is needed, not ``libssl-dev``; crypto.c declares the few prototypes
it uses itself.

After editing crypto.c, rebuild with ``pip install -e .`` (or ``python setup.py build_ext
--inplace``), which puts ``corosync/_ccrypto.abi3.so`` next to the package sources.
"""
from __future__ import annotations

import os
from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "crypto.c")

CDEF = """
typedef struct { ...; } cc_state;
enum cc_hash { CC_HASH_NONE, CC_HASH_MD5, CC_HASH_SHA1, CC_HASH_SHA256, CC_HASH_SHA384,
               CC_HASH_SHA512 };
enum cc_err { CC_ERR_SHORT = -1, CC_ERR_BAD_MARKER = -2, CC_ERR_BAD_LENGTH = -3,
              CC_ERR_INVALID_DIGEST = -4, CC_ERR_BAD_RESERVED = -5, CC_ERR_NO_SPACE = -6,
              CC_ERR_BAD_ARG = -7 };
size_t cc_state_size(void);
int cc_init(cc_state *st, int hash, const char *key, size_t keylen,
            size_t min_body, size_t align, size_t salt);
long cc_seal(const cc_state *st, const char *body, size_t n, char *out, size_t cap);
long cc_open(const cc_state *st, const char *dgram, size_t n);
"""

with open(SOURCE, encoding="utf-8") as _f:
    _C_SOURCE = _f.read()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "corosync._ccrypto",
    _C_SOURCE,
    extra_compile_args=["-O2", "-std=gnu11"],
    extra_link_args=["-l:libcrypto.so.3"],
)


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
