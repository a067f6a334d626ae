"""adamlab._library: the native kernels are installed with the package, checked, then opened.

Damaged files are made from copies of the installed kernel; loading one in this process
could kill it (a truncated library dies of SIGBUS at the first call), so anything that
would reach ``dlopen`` with a bad file runs in a child process.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from adamlab import _library

KERNELS = ("_fused_cpu", "_online1d")
HAVE_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def _installed(name: str) -> Path:
    path = _library.find(name)
    if path is None:
        if HAVE_COMPILER:
            pytest.fail(f"{name} was not built although a C++ compiler is on PATH: setup.py's build failed")
        pytest.skip("adamlab was installed without its native kernels (no compiler)")
    return path


@pytest.mark.parametrize("name", KERNELS)
def test_installed_kernels_load(name: str) -> None:
    lib = _library.load(name)
    assert isinstance(lib, ctypes.CDLL)
    assert _library.load(name) is lib  # opened once per process


def test_fused_kernel_reports_its_abi_version() -> None:
    _installed("_fused_cpu")
    from adamlab.optim import fused_cpu

    assert fused_cpu.load().adamlab_fused_abi_version() == fused_cpu._ABI_VERSION


def test_missing_kernel_says_it_was_not_installed(tmp_path: Path) -> None:
    with pytest.raises(_library.LibraryUnavailable, match=r"_fused_cpu is not installed.*reinstall adamlab"):
        _library.load("_fused_cpu", tmp_path)
    assert issubclass(_library.LibraryUnavailable, RuntimeError)


def _damaged_copy(tmp_path: Path, name: str, damage) -> Path:
    source = _installed(name)
    target = tmp_path / source.name
    target.write_bytes(damage(source.read_bytes()))
    return tmp_path


def _set_machine(data: bytes, machine: int) -> bytes:
    return data[:18] + struct.pack("<H", machine) + data[20:]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: bytes(len(b)), "zeroed"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[: len(b) - 1], "truncated"),
        (lambda b: b"", "zeroed or empty"),
        (lambda b: b"#!/bin/sh\n" + b[10:], "not an ELF file"),
        (lambda b: _set_machine(b, 183 if struct.unpack_from("<H", b, 18)[0] != 183 else 62), "another machine"),
    ],
    ids=["zeroed", "half", "one-byte-short", "empty", "not-elf", "other-machine"],
)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ELF checks apply on Linux")
def test_damaged_kernel_is_refused_before_dlopen(tmp_path: Path, damage, message: str) -> None:
    directory = _damaged_copy(tmp_path, "_fused_cpu", damage)
    with pytest.raises(_library.LibraryUnavailable, match=f"is damaged \\(.*{message}.*reinstall adamlab"):
        _library.load("_fused_cpu", directory)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ELF checks apply on Linux")
def test_truncated_kernel_falls_back_instead_of_killing_the_process(tmp_path: Path) -> None:
    """Before the checks, the first fused step with a truncated library died of SIGBUS."""
    directory = _damaged_copy(tmp_path, "_fused_cpu", lambda b: b[: len(b) * 2 // 3])
    child = f"""
import warnings, torch, adamlab
from adamlab import _library
_library._PACKAGE_DIR = __import__("pathlib").Path({str(directory)!r})
p = torch.ones(3, requires_grad=True)
p.grad = torch.ones(3)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    adamlab.Yogi([p], fused=True).step()
print("stepped", [str(w.message) for w in caught])
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stepped" in done.stdout and "truncated" in done.stdout


def _elf64_header(size: int, phoff: int, phentsize: int, phnum: int, shoff=0, shentsize=0, shnum=0) -> bytes:
    """A little-endian ELF64 shared-object header for this machine, padded to ``size`` bytes."""
    machine = (_library._interpreter_machine() or (62, 2))[0]
    data = bytearray(size)
    data[:6] = b"\x7fELF\x02\x01"
    struct.pack_into(
        "<HHIQQQIHHHHHH", data, 16, 3, machine, 1, 0, phoff, shoff, 0, 64, phentsize, phnum, shentsize, shnum, 0
    )
    return bytes(data)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        # review finding 10 (t13): 120 + 8 * 1 <= 128 passed the bound; the 56-byte read raised struct.error
        (_elf64_header(128, phoff=120, phentsize=1, phnum=8), "program header entries of 1 bytes"),
        (
            _elf64_header(256, phoff=64, phentsize=56, phnum=1, shoff=128, shentsize=8, shnum=3),
            "section header entries of 8 bytes",
        ),
    ],
    ids=["phentsize", "shentsize"],
)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ELF checks apply on Linux")
def test_a_corrupt_header_is_refused_not_raised(tmp_path: Path, header: bytes, message: str) -> None:
    (tmp_path / f"_bad{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(header)
    with pytest.raises(_library.LibraryUnavailable, match=f"is damaged \\({message}"):
        _library.load("_bad", tmp_path)


@pytest.mark.parametrize(
    "error", [OSError(13, "Permission denied"), struct.error("unpack_from requires more"), ValueError("odd")]
)
def test_any_failure_while_checking_is_library_unavailable(tmp_path: Path, monkeypatch, error: Exception) -> None:
    """Review finding 10: an unreadable file (OSError from read_bytes) or a header the checks
    trip over escaped the fallback; every failure in opening a kernel is LibraryUnavailable
    (a RuntimeError), naming the cause."""
    (tmp_path / f"_odd{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Path, "read_bytes", fail)
    with pytest.raises(
        _library.LibraryUnavailable, match=f"could not be checked or opened \\({type(error).__name__}: "
    ):
        _library.load("_odd", tmp_path)


def test_no_module_in_src_runs_a_compiler() -> None:
    """Native code is compiled by setup.py at install time, never by the package at run time."""
    src = Path(_library.__file__).resolve().parent
    offenders = []
    for path in src.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in ('"cc"', '"c++"', '"g++"', '"gcc"', "'cc'", "CXX", "-shared", "cpp_extension"):
            if needle in text:
                offenders.append(f"{path.relative_to(src)}: {needle}")
    assert offenders == []


def test_kernels_are_plain_c_abi_without_python_symbols() -> None:
    """Opened with ctypes, they must not depend on the Python C API (no PyInit, no Py* imports)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    for name in KERNELS:
        path = _installed(name)
        symbols = subprocess.run([nm, "-D", str(path)], capture_output=True, text=True, check=True).stdout
        assert not [line for line in symbols.splitlines() if " Py" in line or "PyInit" in line], name


if os.name != "posix":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="POSIX only")
