"""Open adamlab's native kernels: shared libraries built with the package, loaded with ctypes.

``setup.py`` compiles them when adamlab is installed (``adamlab._fused_cpu`` and
``adamlab._online1d``, plain C ABI, no Python or torch headers); this module finds the file
next to the package, checks it, and opens it. It never compiles anything.

A file is checked before ``dlopen`` sees it, because a damaged shared library does not fail
politely: a truncated one is mapped past its end and the process dies of SIGBUS at the first
call. The checks: the installed wheel's RECORD hash, where the install recorded one (a
regular install); always, the ELF header and every segment and section table lying inside the
file. Whatever fails raises :class:`LibraryUnavailable` (a ``RuntimeError``) with the reason and
what to do; callers fall back (``fused=True`` warns once and runs the foreach path).
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import importlib.machinery
import struct
import sys
import threading
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REINSTALL = (
    "reinstall adamlab where a C/C++ compiler is available (pip install --force-reinstall --no-deps adamlab, "
    "or pip install -e . in a checkout)"
)

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | LibraryUnavailable] = {}


class LibraryUnavailable(RuntimeError):
    """A native kernel is not installed, is damaged, or does not load here; the message says why."""


def find(name: str, directory: Path | None = None) -> Path | None:
    """The installed file of kernel ``name`` (e.g. ``"_fused_cpu"``), or None if it was not built."""
    directory = _PACKAGE_DIR if directory is None else directory
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def load(name: str, directory: Path | None = None) -> ctypes.CDLL:
    """Kernel ``name``, checked and opened once per process; ``LibraryUnavailable`` says why not."""
    directory = _PACKAGE_DIR if directory is None else directory
    key = f"{directory}/{name}"
    with _lock:
        if key not in _loaded:
            try:
                _loaded[key] = _open(name, directory)
            except LibraryUnavailable as err:
                _loaded[key] = err
        found = _loaded[key]
    if isinstance(found, LibraryUnavailable):
        raise found
    return found


def _open(name: str, directory: Path) -> ctypes.CDLL:
    """:func:`_opened`, with every failure a :class:`LibraryUnavailable` (an unreadable file,
    a header that does not parse...): whatever goes wrong here, the caller falls back."""
    try:
        return _opened(name, directory)
    except LibraryUnavailable:
        raise
    except Exception as err:
        raise LibraryUnavailable(
            f"adamlab's native kernel {name} in {directory} could not be checked or opened "
            f"({type(err).__name__}: {err}); {_REINSTALL}"
        ) from err


def _opened(name: str, directory: Path) -> ctypes.CDLL:
    path = find(name, directory)
    if path is None:
        raise LibraryUnavailable(
            f"adamlab's native kernel {name} is not installed (adamlab was installed without a working "
            f"C/C++ compiler, or on a platform it does not build for); {_REINSTALL}"
        )
    data = path.read_bytes()
    problem = _recorded_hash_mismatch(path, data) or _elf_problem(data)
    if problem:
        raise LibraryUnavailable(f"{path} is damaged ({problem}); {_REINSTALL}")
    try:
        return ctypes.CDLL(str(path))
    except OSError as err:
        raise LibraryUnavailable(f"{path} does not load: {err}; {_REINSTALL}") from err


def _recorded_hash_mismatch(path: Path, data: bytes) -> str | None:
    """If the installed distribution's RECORD lists this very file with a hash, compare it."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        files = distribution("adamlab").files or ()
    except (PackageNotFoundError, OSError, ValueError):
        return None
    for entry in files:
        if entry.hash is None or entry.name != path.name:
            continue
        try:
            same = Path(entry.locate()).resolve() == path.resolve()
        except OSError:
            continue
        if not same or entry.hash.mode != "sha256":
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return None if digest == entry.hash.value else "its sha256 differs from the one recorded at install"
    return None


def _elf_problem(data: bytes) -> str | None:
    """What is wrong with ``data`` as an ELF shared library for this process, or None.

    Checks the identification bytes, the type (a shared object), the machine (the running
    interpreter's), and that the program headers, every segment's file bytes and the
    section header table all lie inside the file -- which a truncated file fails.
    """
    if not sys.platform.startswith("linux"):
        return None if data else "the file is empty"
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return "not an ELF file" if any(data[:64]) else "the file is zeroed or empty"
    elf_class, order = data[4], {1: "<", 2: ">"}.get(data[5])
    if elf_class not in (1, 2) or order is None:
        return "an unknown ELF class or byte order"
    wide = elf_class == 2
    header = struct.unpack_from(order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"), data, 16)
    e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, e_shnum, _ = header
    if e_type != 3:
        return f"ELF type {e_type}, not a shared object"
    ours = _interpreter_machine()
    if ours is not None and (e_machine, elf_class) != ours:
        return f"built for another machine (ELF machine {e_machine}, class {elf_class}; this one {ours})"
    size = len(data)
    # each table entry is read as a whole record: entries smaller than it would be read
    # past their table (and past the file)
    if e_phnum and e_phentsize < (56 if wide else 32):
        return f"program header entries of {e_phentsize} bytes (an ELF{32 + 32 * wide} one has {56 if wide else 32})"
    if e_shnum and e_shentsize < (64 if wide else 40):
        return f"section header entries of {e_shentsize} bytes (an ELF{32 + 32 * wide} one has {64 if wide else 40})"
    if e_phoff + e_phnum * e_phentsize > size:
        return f"truncated: program headers end past the file's {size} bytes"
    if e_shnum and e_shoff + e_shnum * e_shentsize > size:
        return f"truncated: section headers end past the file's {size} bytes"
    layout = order + ("IIQQQQQQ" if wide else "IIIIIIII")
    for i in range(e_phnum):
        fields = struct.unpack_from(layout, data, e_phoff + i * e_phentsize)
        p_offset, p_filesz = (fields[2], fields[5]) if wide else (fields[1], fields[4])
        if p_offset + p_filesz > size:
            return f"truncated: segment {i} ends at byte {p_offset + p_filesz}, the file has {size}"
    return None


def _interpreter_machine() -> tuple[int, int] | None:
    """(e_machine, ELF class) of the running interpreter's executable, or None if unreadable."""
    try:
        with open("/proc/self/exe", "rb") as exe:
            head = exe.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    (machine,) = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)
    return machine, head[4]
