"""Build a small C/C++ source into a shared library on first use, cache it, load it with ctypes.

One loader for adamlab's compiled kernels (:mod:`adamlab.optim.fused_cpu`,
:mod:`adamlab.lab.exercises.online1d`). :func:`build_cached` compiles ``source`` with the
system compiler, caches the library in :func:`cache_dir` and returns the loaded
:class:`ctypes.CDLL`; a later call, in this process or another, loads the cached file.

Cache key. A library is cached under a name made of a hash of everything that decides
its contents: the source, the compiler (its path and ``--version`` output), every
candidate flag set (and, in the file name, which one was used), the extra libraries,
the caller's ABI version, this loader's layout version, the platform and, when a flag
set asks for ``-march=native`` (or ``-mcpu``/``-mtune=native``), this CPU's feature
flags. Changing any of them, flags alone included, builds a new library.

Flag sets. Candidates are tried in order and the first that compiles is used. A set the
compiler rejects is recorded next to the cache (``<name>-<key>-<i>.failed``) so that
later processes do not retry it; delete the cache directory to retry (e.g. after
installing OpenMP).

Safety. The cache directory (``$ADAMLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/adamlab`` or
``~/.cache/adamlab``) is created with mode 0700 and is used only if it is a directory
owned by this user and not writable by group or others; a cached library is loaded only
if it is a regular file owned by this user and not group/world-writable. Otherwise the
library is built in a fresh private directory (:func:`tempfile.mkdtemp`) for this process
only -- never in a shared, predictable ``/tmp`` path where another user could plant a
library. Lock files are opened with ``O_NOFOLLOW`` (a planted symlink cannot make us
create or truncate another file), and a library is compiled in a private temporary
directory next to its final path and moved there with :func:`os.replace`, so a
concurrent process sees either no file or a complete one. Builds of the same key are
serialized by an ``flock`` on ``<name>-<key>.lock``, so concurrent processes compile once.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Bump when the cache layout, the key or the build command line changes meaning.
CACHE_VERSION = 1

_COMPILERS = {"c": ("CC", "cc", "gcc", "clang"), "c++": ("CXX", "c++", "g++", "clang++")}
_EXTENSIONS = {"c": ".c", "c++": ".cpp"}
_SUFFIX = ".dll" if sys.platform == "win32" else ".so"
_NATIVE_FLAGS = ("-march=native", "-mcpu=native", "-mtune=native")

_lock = threading.Lock()  # one build at a time within this process (flock covers processes)
_private_dir: Path | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it (building) at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_dir() -> Path:
    """Where built libraries are cached: ``$ADAMLAB_CACHE_DIR``, else the user cache dir."""
    root = os.environ.get("ADAMLAB_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adamlab"


def find_compiler(lang: str) -> str | None:
    """Full path of the first compiler found for ``lang`` (``$CC``/``$CXX`` first), or None."""
    env, *names = _COMPILERS[lang]
    for name in (os.environ.get(env), *names):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


@functools.cache
def compiler_version(compiler: str) -> str:
    """The compiler's ``--version`` output ("" if it does not answer)."""
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def _cpu_features() -> str:
    """This CPU's instruction-set flags (part of the key of a ``-march=native`` build)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _normalize_flag_sets(flags: Sequence[str] | None, flag_sets: Sequence[Sequence[str]] | None) -> list[list[str]]:
    if (flags is None) == (flag_sets is None):
        raise TypeError("pass exactly one of flags= and flag_sets=")
    sets = [list(flags)] if flags is not None else [list(s) for s in flag_sets or ()]
    if not sets:
        raise ValueError("flag_sets is empty")
    return sets


def cache_key(
    name: str,
    source: str | bytes,
    *,
    lang: str,
    compiler: str,
    flags: Sequence[str] | None = None,
    flag_sets: Sequence[Sequence[str]] | None = None,
    libs: Sequence[str] = (),
    abi: int = 0,
) -> str:
    """The hash that names ``name``'s cached library (see the module docstring for what goes in)."""
    sets = _normalize_flag_sets(flags, flag_sets)
    src = source.encode() if isinstance(source, str) else source
    parts = [
        f"adamlab-native-{CACHE_VERSION}",
        f"abi={abi}",
        name,
        lang,
        compiler,
        compiler_version(compiler),
        repr(sets),
        repr(list(libs)),
        sys.platform,
        platform.machine(),
    ]
    if any(f.startswith(_NATIVE_FLAGS) for s in sets for f in s):
        parts.append(_cpu_features())
    h = hashlib.sha256(src)
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:20]


def _owned_and_private(st: os.stat_result) -> bool:
    if not hasattr(os, "getuid"):  # Windows: no owner/mode bits to check
        return True
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trusted_dir(path: Path) -> bool:
    """Create ``path`` (mode 0700) if needed; whether it is ours alone to read and write."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _owned_and_private(st)


def _trusted_file(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and _owned_and_private(st)


def private_dir() -> Path:
    """This process's own build directory (``mkdtemp``: mode 0700, fresh name), removed at exit."""
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="adamlab-native-"))
        atexit.register(shutil.rmtree, _private_dir, ignore_errors=True)
    return _private_dir


class _LockFile:
    """An exclusive ``flock`` on ``path``, opened without following symlinks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _LockFile:
        try:
            import fcntl  # POSIX only
        except ImportError:  # Windows: no lock; os.replace keeps concurrent builds harmless
            return self
        flags = os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.path, flags, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock


def _compile(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _build_in(
    directory: Path,
    stem: str,
    src: bytes,
    *,
    lang: str,
    compiler: str,
    sets: list[list[str]],
    libs: Sequence[str],
    timeout: float,
    write_markers: bool,
) -> Path:
    """Return the library for the first flag set that works, building it in ``directory`` if needed.

    Call with the key's lock held (or in a private directory).
    """
    errors = []
    for i, flags in enumerate(sets):
        target = directory / f"{stem}-{i}{_SUFFIX}"
        marker = directory / f"{stem}-{i}.failed"
        if _trusted_file(target):
            return target
        if _trusted_file(marker):
            errors.append(marker.read_text(errors="replace"))
            continue
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".{stem}-") as tmp:
            src_path = Path(tmp) / f"source{_EXTENSIONS[lang]}"
            src_path.write_bytes(src)
            out = Path(tmp) / target.name
            cmd = [compiler, *flags, str(src_path), "-o", str(out), *libs]
            done = _compile(cmd, timeout)  # TimeoutExpired propagates: not a verdict on the flags
            if done.returncode == 0:
                os.chmod(out, 0o755)
                os.replace(out, target)  # atomic: others see no file or a complete one
                return target
            error = f"$ {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}"
            errors.append(error)
            if write_markers and done.returncode > 0:  # the compiler said no (not a signal)
                tmp_marker = Path(tmp) / marker.name
                tmp_marker.write_text(error)
                os.chmod(tmp_marker, 0o644)
                os.replace(tmp_marker, marker)
    raise RuntimeError(f"could not compile {stem.rsplit('-', 1)[0]}:\n" + "\n".join(errors))


def _cached(directory: Path, stem: str, n_sets: int) -> Path | None:
    """The cached library if it is already there (no lock, no build)."""
    for i in range(n_sets):
        target = directory / f"{stem}-{i}{_SUFFIX}"
        if _trusted_file(target):
            return target
        if not _trusted_file(directory / f"{stem}-{i}.failed"):
            return None  # set i has not been tried: a build must decide
    return None


def build_cached(name: str, source: str | bytes, **options: Any) -> ctypes.CDLL:
    """Compile ``source`` (once per cache key; see the module docstring) and load it.

    Takes :func:`build_cached_path`'s arguments. The library is loaded with
    :class:`ctypes.CDLL`'s defaults, so shared libraries it needs that the process already
    has (e.g. the ``libgomp`` torch loaded) are reused, not loaded twice.

    Raises ``RuntimeError`` (no compiler, every flag set fails) or ``OSError`` (loading).
    """
    path = build_cached_path(name, source, **options)
    assert path is not None
    return ctypes.CDLL(str(path))


def build_cached_path(
    name: str,
    source: str | bytes,
    *,
    lang: str,
    flags: Sequence[str] | None = None,
    flag_sets: Sequence[Sequence[str]] | None = None,
    libs: Sequence[str] = (),
    abi: int = 0,
    compiler: str | None = None,
    timeout: float = 300.0,
    build: bool = True,
) -> Path | None:
    """Compile ``source`` (once per cache key; see the module docstring); the library's path.

    ``lang`` is ``"c"`` or ``"c++"``; ``flags`` one command line, or ``flag_sets`` candidates
    tried in order; ``libs`` go after the source (e.g. ``["-lm"]``); ``abi`` is the caller's
    ABI version; ``compiler`` defaults to :func:`find_compiler`. With ``build=False``
    nothing is compiled: the path of the cached library, or None if there is none yet.

    Raises ``RuntimeError`` (no compiler, every flag set fails, or with ``build=False``
    every flag set is recorded as failed).
    """
    if lang not in _COMPILERS:
        raise ValueError(f"Invalid lang: {lang!r} (expected one of {tuple(_COMPILERS)})")
    sets = _normalize_flag_sets(flags, flag_sets)
    compiler = compiler or find_compiler(lang)
    if compiler is None:
        env, *names = _COMPILERS[lang]
        raise RuntimeError(f"no {lang.upper()} compiler found (looked for ${env}, {', '.join(names)})")
    src = source.encode() if isinstance(source, str) else source
    key = cache_key(name, src, lang=lang, compiler=compiler, flag_sets=sets, libs=libs, abi=abi)
    stem = f"{name}-{key}"
    make = functools.partial(_build_in, stem=stem, src=src, lang=lang, compiler=compiler, sets=sets, libs=libs)
    with _lock:
        directory = cache_dir()
        path = None
        if trusted_dir(directory):
            path = _cached(directory, stem, len(sets))
            if path is None and not build:
                failed = [directory / f"{stem}-{i}.failed" for i in range(len(sets))]
                if all(map(_trusted_file, failed)):  # every flag set is known not to compile
                    raise RuntimeError(
                        f"could not compile {name} (an earlier build failed; delete {directory} to retry):\n"
                        + failed[-1].read_text(errors="replace")[-2000:]
                    )
                return None
            if path is None and os.access(directory, os.W_OK | os.X_OK):
                try:
                    with _LockFile(directory / f"{stem}.lock"):
                        path = make(directory, timeout=timeout, write_markers=True)
                except OSError:  # e.g. a full disk or a symlinked lock file: build privately
                    path = None
        if path is None:
            if not build:
                return None
            path = make(private_dir(), timeout=timeout, write_markers=False)
        return path
