"""Compiles adamlab's two native kernels when the package is built (setuptools is the backend).

Both are small, dependency-free shared libraries with a plain C ABI -- no Python and no torch
headers -- opened with ctypes by :mod:`adamlab._library`, the way bitsandbytes ships its
native code. They are built as setuptools extensions only because that puts them where a
wheel, ``pip install .`` and ``pip install -e .`` each expect package files; nothing imports
them as Python modules.

* ``adamlab._fused_cpu`` (``src/adamlab/optim/csrc/fused_cpu.cpp``): the fused CPU step. No
  ``-march=native`` (a wheel must run on any x86-64); the hot loops carry their own
  ``target_clones``, so the CPU picks the AVX-512/AVX2/baseline copy when the library loads.
* ``adamlab._online1d`` (``src/adamlab/lab/csrc/online1d.c``): the counterexample's scalar
  recursion, with ``-ffp-contract=off`` so its roundings equal the NumPy reference's.

Each kernel tries its flag sets in order (OpenMP first). If none compiles -- no compiler, an
unsupported platform -- the install still succeeds without it, with a warning, and adamlab
falls back at run time: ``fused=True`` warns once and runs the foreach path, the
counterexample runs on the reference. Nothing ever runs a compiler after installation.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:  # setuptools >= 69 vendors distutils as setuptools._distutils; both spell the errors alike
    from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError
except ImportError:  # pragma: no cover - older setuptools
    from distutils.errors import CCompilerError, CompileError, LinkError
    from distutils.errors import DistutilsExecError as ExecError
    from distutils.errors import DistutilsPlatformError as PlatformError

_BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)

_CXX = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math"]
_C_EXACT = ["-O2", "-ffp-contract=off", "-fno-fast-math"]
_OPENMP = (["-fopenmp"], ["-fopenmp"])  # (compile, link)
_NONE: tuple[list[str], list[str]] = ([], [])


class Kernel(Extension):
    """An extension with candidate (compile, link) flag sets, tried in order."""

    def __init__(self, name: str, source: str, *, base: list[str], flag_sets: list[tuple[list[str], list[str]]],
                 **kwargs) -> None:  # fmt: skip
        super().__init__(name, [source], **kwargs)
        self.flag_sets = [([*base, *cflags], lflags) for cflags, lflags in flag_sets]


class build_kernels(build_ext):  # noqa: N801 - setuptools command naming
    """Build each kernel with its first flag set that compiles; skip one that none compiles."""

    def build_extension(self, ext: Extension) -> None:
        failures = []
        for cflags, lflags in getattr(ext, "flag_sets", [(ext.extra_compile_args, ext.extra_link_args)]):
            ext.extra_compile_args, ext.extra_link_args = cflags, lflags
            try:
                super().build_extension(ext)
                return
            except _BUILD_ERRORS as err:
                failures.append(f"{' '.join(cflags)}: {err}")
        print(
            f"warning: adamlab's native kernel {ext.name} was not built ({'; '.join(failures)}). "
            "adamlab works without it: fused=True on CPU runs the foreach path and says so.",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Kernel(
            "adamlab._fused_cpu",
            "src/adamlab/optim/csrc/fused_cpu.cpp",
            base=_CXX,
            flag_sets=[_OPENMP, _NONE],
            language="c++",
        ),
        Kernel(
            "adamlab._online1d",
            "src/adamlab/lab/csrc/online1d.c",
            base=_C_EXACT,
            flag_sets=[_NONE],
            libraries=["m"],
        ),
    ],
    cmdclass={"build_ext": build_kernels},
)
