"""The host accelerator: the per-step bookkeeping of ``optimizer.step()`` in C++.

A cached step re-reads every gradient, state tensor and address it is about to use (a
tensor may have been replaced, moved with ``t.data = ...`` or freed since the last step).
In Python that is about twenty C-level calls per tensor -- 5-8 ms per step for 4000 small
tensors on a 2-core Xeon, more than the fused CUDA kernel itself (benchmarks/RESULTS.md).
``csrc/host.cpp`` does the same reads in one call per list. Every function there has a
Python twin that stays the reference and the fallback:

=======================  =================================================
``host.cpp``             Python twin
=======================  =================================================
``state_values``         ``optimizer._AdamFamily._state_unchanged``
``gather``               ``optimizer._Gathered.gather``
``signature``, ``grads`` ``triton_fused._signature``, ``_still_valid``
=======================  =================================================

It is optional and fails soft. It compiles against the installed torch's headers (about
20 s on 2 cores), so it is built only for optimizers with a ``fused=True`` group (which already
compile their kernels on first use), in a separate process, while the Python path runs;
steps switch to it once it is loaded. The library is cached like adamlab's other native
code (:mod:`adamlab._native`: keyed by source, compiler, flags, torch and Python; only a
directory and file owned by this user are trusted). Set ``ADAMLAB_HOST_EXT``:

- ``0``: never build or use it;
- ``wait``: build it in this process at the first request, and use it from that step on;
- unset or ``1`` (default): build it in the background as above.

:func:`status` says what happened (``"ready"``, ``"building"``, ``"failed: ..."``...);
:func:`python_only` switches it off for a while (benchmarks time both paths with it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ENV = "ADAMLAB_HOST_EXT"
_SOURCE = Path(__file__).with_name("csrc") / "host.cpp"
_POLL_SECONDS = 0.5  # how often a step looks whether the background build is done

_module: ModuleType | None = None
_status = "not requested"
_child: subprocess.Popen | None = None
_child_owner = 0  # the process that started _child
_next_poll = 0.0
_lock = threading.RLock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def loaded() -> ModuleType | None:
    """The accelerator if it is loaded, else None (never starts a build)."""
    return _module


def get() -> ModuleType | None:
    """The accelerator, or None while it is not (yet) available; the first call starts
    its build (see the module docstring). Cheap enough to call every step."""
    global _status
    if _module is not None:
        return _module
    if _status in ("not requested", "building"):
        try:
            return _poll()
        except Exception as error:  # never let the optional part fail a step
            _status = f"failed: {type(error).__name__}: {error}"
    return None


@contextlib.contextmanager
def python_only() -> Iterator[None]:
    """Within: steps do their bookkeeping in Python, as if the accelerator were not built."""
    global _module, _status
    saved = _module, _status
    _module, _status = None, "disabled (python_only)"
    try:
        yield
    finally:
        _module, _status = saved


def status() -> str:
    """``"ready"``, ``"building"``, ``"not requested"``, ``"disabled (ADAMLAB_HOST_EXT=0)"``
    or ``"failed: <why>"``."""
    return _status


def _options() -> dict[str, Any]:
    """The build: the source (tagged with the torch and Python it is compiled for) and the
    compiler command line for this torch's headers and libraries."""
    import torch

    root = Path(torch.__file__).parent
    include, lib = root / "include", root / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    tag = f"// torch {torch.__version__} at {root}, python {sysconfig.get_config_var('EXT_SUFFIX')}\n"
    flags = [
        "-O2", "-shared", "-fPIC", "-std=c++20", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{sysconfig.get_paths()['include']}",
    ]  # fmt: skip
    libs = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu", "-ltorch_python"]
    return dict(name="host", source=tag + _SOURCE.read_text(), lang="c++", flags=flags, libs=libs)


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("adamlab.optim._host_ext", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(*, wait: bool = True) -> ModuleType | None:
    """Build (if ``wait``; else only look in the cache) and load the accelerator now.

    Returns it, or None where it cannot be had (or ``ADAMLAB_HOST_EXT=0``); :func:`status`
    says why. Benchmarks call this to use the accelerator from the first step."""
    global _module, _status
    from adamlab import _native

    with _lock:
        if _module is not None:
            return _module
        if _switched_off():
            return None
        try:
            path = _native.build_cached_path(**_options(), build=wait)
            if path is None:
                return None
            _module = _import(path)
        except Exception as error:  # no compiler, no torch headers, a link error: fail soft
            lines = str(error).strip().splitlines() or [type(error).__name__]
            _status = f"failed: {lines[0]}" + (f" ... {lines[-1][-300:]}" if len(lines) > 1 else "")
            return None
        _status = "ready"
        return _module


def _mode() -> str:
    """``ADAMLAB_HOST_EXT``: ``"0"``, ``"wait"``, or ``""``/``"1"`` (background); an unknown
    value warns once and keeps the accelerator off."""
    global _status
    mode = os.environ.get(ENV, "")
    if mode not in ("", "1", "0", "wait"):
        warned = _status.startswith("failed")
        _status = f"failed: {ENV}={mode!r} is not 0, 1 or wait"  # first: the warning may raise
        if not warned:
            warnings.warn(
                f"{ENV}={mode!r} is not 0, 1 or wait: the host accelerator stays off", RuntimeWarning, stacklevel=2
            )
        return "0"
    return mode


def _switched_off() -> bool:
    """Whether ``ADAMLAB_HOST_EXT`` keeps the accelerator off (then the status says so)."""
    global _status
    if _mode() != "0":
        return False
    if not _status.startswith("failed"):
        _status = f"disabled ({ENV}=0)"
    return True


def _poll() -> ModuleType | None:
    """Start the background build at the first request; load its result once it is done."""
    global _status, _child, _child_owner, _next_poll
    now = time.monotonic()
    if now < _next_poll:
        return None
    with _lock:
        _next_poll = now + _POLL_SECONDS
        if _switched_off():
            return None
        if _mode() == "wait":
            return load(wait=True)
        if _status == "building" and (_child is None or _child_owner != os.getpid()):
            # a forked process: the build is the parent's; its result lands in the cache
            _child = None
            return load(wait=False)
        if _child is None:
            return _start_build()
        code = _child.poll()
        if code is None:
            return None
        _child = None
        if code != 0:
            _status = f"failed: the build exited with status {code} (run with {ENV}=wait to see the error)"
        elif load(wait=False) is None and not _status.startswith("failed"):
            _status = "failed: the build finished but left no library in the cache"
        return _module


def _start_build() -> ModuleType | None:
    """Load the accelerator if an earlier process built it, else start the build process."""
    global _status, _child, _child_owner
    from adamlab import _native

    if load(wait=False) is not None or _status.startswith("failed"):  # cached, or known to fail
        return _module
    directory = _native.cache_dir()
    if not _native.trusted_dir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        _status = f"failed: the cache directory {directory} is not private to this user and writable"
        return None
    # A process of its own: the build finishes (and is cached for the next process) even if
    # this one exits first, and a crash there cannot take this one down. It imports this
    # very adamlab (its folder first on sys.path), so it builds this very source.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from adamlab.optim import _host; "
        "raise SystemExit(0 if _host.load(wait=True) else 1)"
    )
    try:
        _child = subprocess.Popen(
            [sys.executable, "-c", code, str(Path(__file__).resolve().parents[2])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, ENV: "wait"},
        )  # fmt: skip
    except OSError as error:
        _status = f"failed: could not start the build ({error})"
        return None
    _child_owner = os.getpid()
    _status = "building"
    return None
