"""The fused CPU implementation: one C++ call per step for all tensors of a group.

Same signature and math as :mod:`adamlab.optim.single_tensor`. The kernel
(``csrc/fused_cpu.cpp``) takes a table of data pointers and sizes, advances every
tensor's step count, and streams each element once -- θ, g, v, s in; θ, v, s out --
with fp32 math (fp64 for fp64 tensors), split into chunks across tensors and run on
torch's OpenMP threads. Many small tensors cost one call, not one dispatch each.

Why a plain C ABI loaded with ctypes (and not a torch C++ extension, numba or
``torch.compile``): it builds from source in about 2.4 s on 2 cores (measured: first fused step, empty cache) with the
system C++ compiler (torch headers alone take tens of seconds), the build is cached per
machine, loading it takes milliseconds, and it needs nothing to be installed.
Measurements are in ``benchmarks/RESULTS.md``.

The library is built on first use by :func:`adamlab._native.build_cached` into
``$ADAMLAB_CACHE_DIR`` (default ``$XDG_CACHE_HOME/adamlab`` or ``~/.cache/adamlab``; a
private temporary directory where that is not ours alone) under a file lock, keyed by
the source, the compiler and its version, the flag sets, the ABI version and this CPU's
features (it is compiled with ``-march=native`` where the compiler accepts it). It is
loaded after torch, so its OpenMP calls go to the ``libgomp`` torch already loaded.
Where no compiler works, :func:`load` raises ``RuntimeError`` -- only when someone asks
for ``fused=True`` on CPU tensors; everything else runs as before.

AMP: ``grad_scale`` divides the gradient inside the kernel (``p.grad`` is never
written); a nonzero ``found_inf`` skips the whole step, step counts included, as
torch's fused Adam does.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import threading
from array import array
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adamlab import _native
from adamlab.optim.functional import local_shards

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_BIAS_CORRECTION_CODES = {False: 0, True: 1, "recursive": 2}
_ABI_VERSION = 1

# Flag sets tried in order: the first that compiles is used (e.g. a compiler without
# -march=native or without OpenMP still gives a working, if slower, kernel).
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
_FLAG_SETS = [
    [*_BASE_FLAGS, "-march=native", "-fopenmp"],
    [*_BASE_FLAGS, "-fopenmp"],
    [*_BASE_FLAGS, "-march=native"],
    _BASE_FLAGS,
]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None


def cache_dir() -> Path:
    """Where built kernels are cached: ``$ADAMLAB_CACHE_DIR``, else the user cache dir."""
    return _native.cache_dir()


def _source() -> bytes:
    return resources.files("adamlab.optim").joinpath("csrc/fused_cpu.cpp").read_bytes()


def _compiler() -> str | None:
    return _native.find_compiler("c++")


def load() -> ctypes.CDLL:
    """Build (once per machine) and load the kernel; ``RuntimeError`` says why if it cannot."""
    global _lib, _error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None and _error is None:
            try:
                _lib = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _error = str(e)
        if _lib is None:
            raise RuntimeError(
                f"fused=True on CPU needs adamlab's C++ kernel, which is not available here: {_error}\n"
                "Install a C++ compiler with OpenMP (e.g. g++), or use foreach=True."
            )
        return _lib


def _load() -> ctypes.CDLL:
    if platform.system() == "Windows":
        raise RuntimeError("the fused CPU kernel is built with a POSIX C++ compiler; Windows is not supported")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    lib = _native.build_cached(
        "fused_cpu", _source(), lang="c++", flag_sets=_FLAG_SETS, abi=_ABI_VERSION, compiler=compiler
    )
    path = lib._name
    if lib.adamlab_fused_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path} has a different ABI version; delete it to rebuild")
    p = ctypes.c_void_p
    lib.adamlab_fused_step.restype = ctypes.c_int
    lib.adamlab_fused_step.argtypes = [
        ctypes.c_int64, p, p, p, p, p, p, p,  # n, numel, params, grads, exp_avgs, exp_avg_sqs, max, steps
        ctypes.c_int, ctypes.c_int, ctypes.c_int,  # param dtype, state dtype, yogi
        *[ctypes.c_double] * 5,  # lr, beta1, beta2, eps, weight_decay
        *[ctypes.c_int] * 4,  # decoupled, amsgrad, maximize, bias_correction
        ctypes.c_double,  # inv_grad_scale
    ]  # fmt: skip
    return lib


def library_path() -> Path:
    """The path of the loaded shared library (builds and loads it if needed)."""
    return Path(load()._name)


def is_available() -> bool:
    """Whether the kernel builds and loads on this machine (builds it if needed)."""
    try:
        load()
    except RuntimeError:
        return False
    return True


def _fused_cpu_update(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: Any,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    bias_correction: Any,
    capturable: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    if not params:
        return
    lib = load()
    if not set(map(type, params)) <= _PLAIN_TYPES:  # e.g. FSDP2's DTensor parameters, called directly
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = local_shards(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        )
    # On the CPU reading these scalars costs nothing (no device to synchronize with).
    if found_inf is not None and float(found_inf) != 0.0:
        return  # skip the whole step, step counts included, as torch's fused Adam does
    inv_grad_scale = 1.0 if grad_scale is None else 1.0 / float(grad_scale)
    hyper = (
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        int(bool(decoupled_weight_decay)),
        int(bool(amsgrad)),
        int(bool(maximize)),
        _BIAS_CORRECTION_CODES[bias_correction],
        inv_grad_scale,
    )
    yogi = {"adam": 0, "yogi": 1}[rule]
    maxes: list[Tensor | None] = list(max_exp_avg_sqs) if amsgrad else [None] * len(params)
    _check_sizes(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None)

    # The common case -- one dtype pair, everything contiguous -- is checked list by list
    # (a few C-level calls per tensor); anything else goes tensor by tensor.
    p_dtypes, s_dtypes = set(map(_dtype, params)), set(map(_dtype, exp_avgs))
    if (
        len(p_dtypes) == 1
        and len(s_dtypes) == 1
        and set(map(_dtype, grads)) == p_dtypes
        and all(map(_is_cpu, params))
        and _all_plain(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [], state_steps)
    ):
        groups = {(p_dtypes.pop(), s_dtypes.pop()): (list(range(len(params))), [])}
    else:
        groups = {}
        for i, (p, v) in enumerate(zip(params, exp_avgs)):
            if not p.is_cpu:
                raise RuntimeError(f"the fused CPU implementation got a tensor on {p.device}")
            plain, odd = groups.setdefault((p.dtype, v.dtype), ([], []))
            args = (p, grads[i], v, exp_avg_sqs[i], maxes[i], state_steps[i])
            (plain if _all_plain(*[[x] if x is not None else [] for x in args]) else odd).append(i)

    for (p_dtype, s_dtype), (plain, odd) in groups.items():
        if p_dtype.is_complex:  # as torch: real and imaginary parts are independent
            p_dtype, s_dtype = p_dtype.to_real(), s_dtype.to_real()
        if p_dtype not in _DTYPE_CODES or s_dtype not in _DTYPE_CODES:
            raise RuntimeError(
                f"the fused CPU implementation does not support {p_dtype} parameters with {s_dtype} state"
            )
        if odd:
            _update_odd(
                lib, odd, params, grads, exp_avgs, exp_avg_sqs, maxes, state_steps, p_dtype, s_dtype, yogi, hyper
            )
        if plain:
            tables = [
                [lst[i] for i in plain] if len(plain) < len(params) else list(lst)
                for lst in (params, grads, exp_avgs, exp_avg_sqs, maxes, state_steps)
            ]
            if params[plain[0]].is_complex():
                tables[:5] = [[x if x is None else torch.view_as_real(x) for x in t] for t in tables[:5]]
            _call(lib, *tables, p_dtype, s_dtype, yogi, hyper)


# Under torch.compile the step runs eagerly: dynamo cannot trace into the ctypes call, and
# tracing up to it would guard on every Python scalar (one recompile per new lr value).
fused_cpu_update = torch.compiler.disable(_fused_cpu_update)

_PLAIN_TYPES = {Tensor, torch.nn.Parameter}


_dtype = attrgetter("dtype")
_is_cpu = attrgetter("is_cpu")


def _check_sizes(params, grads, exp_avgs, exp_avg_sqs, maxes) -> None:
    """The kernel walks numel(p) elements of every tensor: a smaller gradient or state
    tensor would be read or written past its end. Refuse it, naming it (torch raises too)."""
    numels = list(map(Tensor.numel, params))
    for name, lst in (
        ("gradient", grads),
        ("exp_avg", exp_avgs),
        ("exp_avg_sq", exp_avg_sqs),
        ("max_exp_avg_sq", maxes),
    ):
        if lst is None or list(map(Tensor.numel, lst)) == numels:
            continue
        if len(lst) != len(numels):
            raise RuntimeError(f"fused CPU update: {len(lst)} {name} tensors for {len(numels)} parameters")
        i = next(i for i, (t, n) in enumerate(zip(lst, numels)) if t.numel() != n)
        raise RuntimeError(
            f"fused CPU update: the {name} of parameter {i} has {lst[i].numel()} elements, the parameter {numels[i]}"
        )


def _all_plain(params, grads, exp_avgs, exp_avg_sqs, maxes, steps) -> bool:
    """Whether the kernel can walk these tensors' memory directly, element i for element i."""
    return (
        all(map(Tensor.is_contiguous, params))
        and all(map(Tensor.is_contiguous, grads))
        and all(map(Tensor.is_contiguous, exp_avgs))
        and all(map(Tensor.is_contiguous, exp_avg_sqs))
        and all(map(Tensor.is_contiguous, maxes))
        and set(map(_dtype, steps)) <= {torch.float32}
        and all(map(_is_cpu, steps))
    )


def _call(lib, params, grads, exp_avgs, exp_avg_sqs, maxes, steps, p_dtype, s_dtype, yogi: int, hyper: tuple) -> None:
    """One kernel call over the given (contiguous, CPU) tensors: tables of sizes and pointers."""
    numel = array("q", map(Tensor.numel, params))
    lists = (params, grads, exp_avgs, exp_avg_sqs, maxes if maxes[0] is not None else [], steps)
    tables = [array("Q", map(Tensor.data_ptr, lst)) for lst in lists]
    if any(0 in t for t in tables):  # empty tensors, or a tensor without storage (a wrapper subclass)
        bad = next((type(x).__name__ for lst in lists for x in lst if x.data_ptr() == 0 and x.numel()), None)
        if bad is not None:
            raise RuntimeError(f"the fused CPU implementation needs tensors with storage, got a {bad}")
    addresses = [t.buffer_info()[0] if len(t) else None for t in (numel, *tables)]
    rc = lib.adamlab_fused_step(len(params), *addresses, _DTYPE_CODES[p_dtype], _DTYPE_CODES[s_dtype], yogi, *hyper)
    if rc != 0:
        raise RuntimeError(f"adamlab fused CPU kernel failed with code {rc}")


def _update_odd(lib, idx, params, grads, exp_avgs, exp_avg_sqs, maxes, steps, p_dtype, s_dtype, yogi, hyper) -> None:
    """Non-contiguous tensors, a gradient of another dtype, a non-float32 step: update
    contiguous copies, then write them back (rare; correctness over speed)."""
    for i in idx:
        real = torch.view_as_real if params[i].is_complex() else (lambda x: x)
        owned = [params[i], exp_avgs[i], exp_avg_sqs[i], maxes[i], steps[i]]
        p, v, s, m = (None if x is None else real(x).contiguous() for x in owned[:4])
        g = real(grads[i]).to(p.dtype).contiguous()
        t = steps[i].to(device="cpu", dtype=torch.float32).clone()
        _call(lib, [p], [g], [v], [s], [m], [t], p_dtype, s_dtype, yogi, hyper)
        for dst, src in zip(owned, (p, v, s, m, t)):
            if dst is not None:
                target = real(dst) if dst is not steps[i] else dst
                if target.data_ptr() != src.data_ptr():
                    target.copy_(src)
