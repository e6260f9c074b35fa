"""Build glue: package-dir mapping under the ``corosync`` namespace and the
optional cffi (API mode) codec extension.

The C extension is an accelerator only: when no compiler is available the
build goes on without it and the pure-Python codec is used at run time.
"""
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

# Top-level source directories and the package each becomes.
ROOTS = {
    "corosync": "corosync",
    "corosync.exec": "exec",
    "corosync.lib": "lib",
    "corosync.tools": "tools",
    "corosync.services": "services",
}


def find_packages_mapped():
    packages = []
    package_dir = {}
    for pkg, root in ROOTS.items():
        package_dir[pkg] = root
        for dirpath, dirnames, filenames in os.walk(os.path.join(HERE, root)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_")) or d == "_c"]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, os.path.join(HERE, root))
            name = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            packages.append(name)
    return packages, package_dir


class OptionalBuildExt(build_ext):
    """Build C accelerators when possible; never fail the install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            self.warn(f"C accelerators not built ({exc}); the pure-Python codec will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn(f"C accelerator {ext.name} not built ({exc}); pure-Python fallback")


packages, package_dir = find_packages_mapped()

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"corosync": ["py.typed"], "corosync.lib": ["_c/*.c", "_c/*.h"]},
    cffi_modules=(["lib/_c/build_codec.py:ffibuilder", "lib/_c/build_crypto.py:ffibuilder"]
                  if os.environ.get("COROSYNC_NO_CEXT") != "1" else []),
    cmdclass={"build_ext": OptionalBuildExt},
)
