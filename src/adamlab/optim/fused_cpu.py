"""The fused CPU implementation: one C++ call per step for all tensors of a group.

Same signature and math as :mod:`adamlab.optim.single_tensor`. The kernel
(``csrc/fused_cpu.cpp``) takes a table of data pointers and sizes, advances every
tensor's step count, and streams each element once -- θ, g, v, s in; θ, v, s out --
with fp32 math (fp64 for fp64 tensors), split into chunks across tensors and run on
torch's OpenMP threads. Many small tensors cost one call, not one dispatch each.

The kernel is compiled when adamlab is installed (``setup.py``: a plain C ABI, no torch or
Python headers, OpenMP, portable flags with per-CPU ``target_clones`` of the hot loops) and
opened with ctypes by :mod:`adamlab._library`, which checks the file first. It is loaded
after torch, so its OpenMP calls share the process with torch's threads. Where the library
is missing or damaged, :func:`load` raises ``RuntimeError`` saying why (the dispatcher then
warns once and runs the foreach path). Nothing here runs a compiler.

AMP: ``grad_scale`` divides the gradient inside the kernel (``p.grad`` is never
written); a nonzero ``found_inf`` skips the whole step, step counts included, as
torch's fused Adam does.
"""

from __future__ import annotations

import ctypes
from array import array
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor

from adamlab import _library
from adamlab.optim.functional import local_shards

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_BIAS_CORRECTION_CODES = {False: 0, True: 1, "recursive": 2}
_ABI_VERSION = 1

_lib: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """The kernel library, built with the package (see ``setup.py``), opened and declared once.

    Raises ``RuntimeError`` (:class:`adamlab._library.LibraryUnavailable`) saying why it is
    unavailable: not installed, damaged, or built for another ABI version."""
    global _lib
    if _lib is None:
        lib = _library.load("_fused_cpu")
        if lib.adamlab_fused_abi_version() != _ABI_VERSION:
            raise _library.LibraryUnavailable(
                f"{lib._name} implements ABI version {lib.adamlab_fused_abi_version()}, this adamlab needs "
                f"{_ABI_VERSION}: the installed files are from different versions; reinstall adamlab"
            )
        _declare(lib)
        _lib = lib
    return _lib


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every function the library exports."""
    p = ctypes.c_void_p
    lib.adamlab_fused_step.restype = ctypes.c_int
    lib.adamlab_fused_step.argtypes = [
        ctypes.c_int64, p, p, p, p, p, p, p,  # n, numel, params, grads, exp_avgs, exp_avg_sqs, max, steps
        ctypes.c_int, ctypes.c_int, ctypes.c_int,  # param dtype, state dtype, yogi
        *[ctypes.c_double] * 5,  # lr, beta1, beta2, eps, weight_decay
        *[ctypes.c_int] * 4,  # decoupled, amsgrad, maximize, bias_correction
        ctypes.c_double,  # inv_grad_scale
    ]  # fmt: skip


def is_available() -> bool:
    """Whether the installed kernel loads on this machine."""
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
