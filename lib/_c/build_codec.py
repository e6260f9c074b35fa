"""cffi (API mode) build script for the C codec accelerator ``corosync._ccodec``.

setup.py lists ``lib/_c/build_codec.py:ffibuilder`` in ``cffi_modules``; the build is
optional (no compiler → pure-Python codec).  For a manual in-place rebuild run
``python setup.py build_ext --inplace`` from the repository root.

The C/Python boundary is described in ``codec.h``: decoders fill an ``int64_t`` array that
Python reads with one ``ffi.unpack``; encoders write into a caller buffer.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
#define CC_ABI_VERSION ...
#define CC_ORF_FIELDS ...
#define CC_MCAST_FIELDS ...
#define CC_ORF_MAX_SIZE ...
#define CC_MCAST_SIZE ...
#define CC_E_RANGE ...

int ccodec_abi_version(void);
int64_t cc_peek_header(const char *buf, size_t len);
int cc_decode_orf(const char *buf, size_t len, int swapped, int64_t *out);
int cc_decode_mcast(const char *buf, size_t len, int swapped, int64_t *out);
int64_t cc_decode_pg(const char *buf, size_t len, int swapped, int64_t *lens, size_t lens_cap);
int cc_encode_orf(char *out, uint32_t nodeid, uint32_t target, uint32_t seq,
                  uint32_t token_seq, uint32_t aru, uint32_t aru_addr, uint32_t rep,
                  uint64_t ring_seq, uint32_t backlog, uint32_t fcc, int32_t retrans_flg,
                  const uint64_t *rtr, int n_rtr);
int cc_encode_mcast_header(char *out, uint8_t encapsulated, uint32_t nodeid, uint32_t target,
                           uint32_t system_from, uint32_t seq, int32_t this_seqno,
                           uint32_t rep, uint64_t ring_seq, uint32_t node_id,
                           int32_t guarantee);
int cc_encode_pg_header(char *out, uint8_t fragmented, uint8_t continuation,
                        const uint32_t *lens, size_t count);
"""

# The codec functions run for tens of nanoseconds; releasing and re-taking the GIL around
# each call (cffi's default) costs more than the work itself.  The generated wrappers use
# the Py_BEGIN/END_ALLOW_THREADS macros, so redefining them here keeps the GIL held for
# the calls of this module only.  Holding the GIL also makes per-thread scratch buffers
# unnecessary on the Python side... but we keep them (see _wire_c.py) so nothing breaks
# if a future cffi stops honouring this.
PREAMBLE = '''
#include "codec.h"
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
'''

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "corosync._ccodec",
    PREAMBLE,
    # setuptools refuses absolute source paths when building wheels: relative to the cwd
    # (the project root under pip/setup.py, wherever a manual run starts).
    sources=[os.path.relpath(os.path.join(HERE, "codec.c"))],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
