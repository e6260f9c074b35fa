"""cffi (API mode) build script for the C codec accelerator ``corosync._ccodec``.

Placeholder until the C codec lands: builds an empty module so the build wiring is
exercised; ``corosync.exec.totem._wire_c`` refuses to load it.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef("int ccodec_abi_version(void);")
ffibuilder.set_source(
    "corosync._ccodec",
    "static int ccodec_abi_version(void) { return 0; }",
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
