"""Builds dlnlab's compiled block kernels (the extension ``dlnlab.dynamics._kernels``, XLA FFI handlers in
C++: ``src/dlnlab/kernels``); everything else about the package is in ``pyproject.toml``.

The extension is optional: without a C++17 compiler, or without jaxlib's FFI headers in the build
environment, the install goes on without it and the engine runs the XLA step instead (same
results, slower at small widths: ``dlnlab.dynamics.kernels``)."""

import importlib.util
import os
import platform
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _jaxlib():
    """``(include_dir, version)`` of the jaxlib in the build environment, or ``None``."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    include = os.path.join(root, "include")
    if not os.path.exists(os.path.join(include, "xla", "ffi", "api", "ffi.h")):
        return None
    from jaxlib import version  # a plain module of version strings
    return include, version._version


class BuildKernels(build_ext):
    def build_extension(self, ext):
        # An earlier in-place build (pip install -e) must not outlive a failed or skipped one.
        stale = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "dlnlab",
                             "dynamics", "_kernels" + sysconfig.get_config_var("EXT_SUFFIX"))
        if os.path.exists(stale):
            os.remove(stale)
        if platform.machine().lower() not in ("x86_64", "amd64"):
            print("dlnlab: the compiled kernels are written for x86-64; building without them "
                  "(the XLA step runs instead)", file=sys.stderr)
            return
        found = _jaxlib()
        if found is None:
            print("dlnlab: jaxlib's FFI headers not found; building without the compiled kernels "
                  "(the XLA step runs instead)", file=sys.stderr)
            return
        include, version = found
        ext.include_dirs.append(include)
        ext.define_macros.append(("DLNLAB_JAXLIB_VERSION", f'"{version}"'))
        super().build_extension(ext)


setup(
    ext_modules=[Extension(
        "dlnlab.dynamics._kernels", sources=["src/dlnlab/kernels/online_sgd.cc"], language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-fno-fast-math",
                            "-fvisibility=hidden",
                            "-Wno-psabi"],
        optional=True)],
    cmdclass={"build_ext": BuildKernels},
)
