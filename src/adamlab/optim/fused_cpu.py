"""The fused CPU implementation: one C++ call per step for all tensors of a group.

Same signature and math as :mod:`adamlab.optim.single_tensor`. The kernel
(``csrc/fused_cpu.cpp``) takes a table of data pointers and sizes and streams each element
once -- θ, g, v, s in; θ, v, s out -- with fp32 math (fp64 for fp64 tensors), split into
chunks across tensors and run on torch's OpenMP threads. Many small tensors cost one call,
not one dispatch each.

A step is two calls into the library: ``adamlab_advance_steps`` adds 1 to every step count
and hands the new counts back; :func:`adamlab._moments.coefficients` turns each distinct
count into a :class:`_Coefficients` record (the C struct ``adamlab_coefficients``, same
field names); ``adamlab_fused_step`` runs the update.

The kernel is compiled when adamlab is installed (``setup.py``: a plain C ABI, no torch or
Python headers, so one build serves every torch version; OpenMP; portable flags with per-CPU
``target_clones`` of the element loop) and opened with ctypes by :mod:`adamlab._library`,
which checks the file first. Where the library is missing or damaged, :func:`load` raises
``RuntimeError`` saying why (the dispatcher then warns once and runs the foreach path).
Nothing here runs a compiler.

AMP: ``grad_scale`` divides the gradient inside the kernel (``p.grad`` is never written); a
nonzero ``found_inf`` skips the whole step, step counts included, as torch's fused Adam does.
"""

from __future__ import annotations

import ctypes
from array import array
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor

from adamlab import _library
from adamlab._moments import Coefficients, coefficients

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_ABI_VERSION = 2

class _Coefficients(ctypes.Structure):
    """``adamlab_coefficients``: :class:`adamlab._moments.Coefficients` as C doubles."""

    _fields_ = [(name, ctypes.c_double) for name in Coefficients._fields]


class _Options(ctypes.Structure):
    """``adamlab_options``: what is the same for every tensor of one call."""

    _fields_ = [
        *[(name, ctypes.c_double) for name in ("lr", "beta1", "beta2", "eps", "weight_decay", "inv_grad_scale")],
        *[
            (name, ctypes.c_int32)
            for name in ("param_dtype", "state_dtype", "yogi", "amsgrad", "maximize", "decoupled")
        ],
    ]


def _declare(lib: ctypes.CDLL) -> None:
    """Set the argument and result types of every function the library exports."""
    p = ctypes.c_void_p
    lib.adamlab_fused_abi_version.argtypes = []
    lib.adamlab_fused_abi_version.restype = ctypes.c_int
    lib.adamlab_advance_steps.argtypes = [ctypes.c_int64, p, p]  # n, float* steps[n], double t[n]
    lib.adamlab_advance_steps.restype = ctypes.c_int
    lib.adamlab_fused_step.argtypes = [
        ctypes.c_int64, p, p, p, p, p, p,  # n, numel, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        ctypes.POINTER(_Coefficients), p, ctypes.POINTER(_Options),  # coefs, coef_index (or NULL), options
    ]  # fmt: skip
    lib.adamlab_fused_step.restype = ctypes.c_int


_lib: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """The kernel library, built with the package (see ``setup.py``), opened and declared once.

    Raises ``RuntimeError`` (:class:`adamlab._library.LibraryUnavailable`) saying why it is
    unavailable: not installed, damaged, or built for another ABI version."""
    global _lib
    if _lib is None:
        lib = _library.load("_fused_cpu")
        _declare(lib)
        if lib.adamlab_fused_abi_version() != _ABI_VERSION:
            raise _library.LibraryUnavailable(
                f"{lib._name} implements ABI version {lib.adamlab_fused_abi_version()}, this adamlab needs "
                f"{_ABI_VERSION}: its installed files are from different versions; reinstall adamlab"
            )
        _lib = lib
    return _lib


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
    beta1: Any,
    beta2: Any,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    bias_correction: bool | str,
    capturable: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    if not params:
        return
    lib = load()
    # On the CPU reading these scalars costs nothing (no device to synchronize with).
    if found_inf is not None and float(found_inf) != 0.0:
        return  # skip the whole step, step counts included, as torch's fused Adam does
    maxes = max_exp_avg_sqs if amsgrad else None
    _check_sizes(params, grads, exp_avgs, exp_avg_sqs, maxes)
    options = _Options(
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        1.0 if grad_scale is None else 1.0 / float(grad_scale),
        0, 0, rule == "yogi", bool(amsgrad), bool(maximize), bool(decoupled_weight_decay),
    )  # fmt: skip
    coefs, index = _step_coefficients(
        lib, state_steps, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction
    )

    # The common case -- one dtype pair, everything contiguous -- is checked list by list
    # (a few C-level calls per tensor); anything else goes tensor by tensor.
    p_dtypes, s_dtypes = set(map(_dtype, params)), set(map(_dtype, exp_avgs))
    if (
        len(p_dtypes) == 1
        and len(s_dtypes) == 1
        and set(map(_dtype, grads)) == p_dtypes
        and all(map(_is_cpu, params))
        and _all_contiguous(params, grads, exp_avgs, exp_avg_sqs, maxes or [])
    ):
        groups = {(p_dtypes.pop(), s_dtypes.pop()): (range(len(params)), [])}
    else:
        groups = {}
        for i, (p, v) in enumerate(zip(params, exp_avgs)):
            if not p.is_cpu:
                raise RuntimeError(f"the fused CPU implementation got a tensor on {p.device}")
            plain, odd = groups.setdefault((p.dtype, v.dtype), ([], []))
            tensors = [p, grads[i], v, exp_avg_sqs[i]] + ([maxes[i]] if maxes else [])
            (plain if _all_contiguous(*[[t] for t in tensors]) and grads[i].dtype == p.dtype else odd).append(i)

    for (p_dtype, s_dtype), (plain, odd) in groups.items():
        if p_dtype.is_complex:  # as torch: real and imaginary parts are independent
            p_dtype, s_dtype = p_dtype.to_real(), s_dtype.to_real()
        if p_dtype not in _DTYPE_CODES or s_dtype not in _DTYPE_CODES:
            raise RuntimeError(
                f"the fused CPU implementation does not support {p_dtype} parameters with {s_dtype} state"
            )
        options.param_dtype, options.state_dtype = _DTYPE_CODES[p_dtype], _DTYPE_CODES[s_dtype]
        lists = (params, grads, exp_avgs, exp_avg_sqs, maxes or [])
        if plain:
            whole = len(plain) == len(params)
            tables = [lst if whole or not lst else [lst[i] for i in plain] for lst in lists]
            if params[plain[0]].is_complex():
                tables = [[torch.view_as_real(t) for t in table] for table in tables]
            _call(
                lib,
                *tables,
                coefs,
                index if index is None or whole else array("q", map(index.__getitem__, plain)),
                options,
            )
        for i in odd:
            _update_odd(lib, [lst[i] if lst else None for lst in lists], grads[i], coefs, index and index[i], options)


_fused_cpu_update_eagerly = torch.compiler.disable(_fused_cpu_update)


def fused_cpu_update(*args: Any, **kwargs: Any) -> None:
    """One fused step on CPU tensors; the signature of every implementation. Under
    ``torch.compile`` it runs eagerly: dynamo cannot trace into the ctypes call, and tracing
    up to it would guard on every Python scalar (one recompile per new lr value)."""
    if torch.compiler.is_compiling():
        return _fused_cpu_update_eagerly(*args, **kwargs)
    return _fused_cpu_update(*args, **kwargs)


_dtype = attrgetter("dtype")
_is_cpu = attrgetter("is_cpu")


def _address(table: array) -> int | None:
    return table.buffer_info()[0] if len(table) else None


def _step_coefficients(lib: ctypes.CDLL, steps: list[Tensor], **hyper: Any) -> tuple[Any, array | None]:
    """Advance every step count by one; the coefficient records for the new counts, and
    which record each tensor uses (None: the first, for all; the usual case)."""
    n = len(steps)
    if set(map(_dtype, steps)) == {torch.float32} and all(map(_is_cpu, steps)):
        t = array("d", bytes(8 * n))
        addresses = array("Q", map(Tensor.data_ptr, steps))  # kept alive across the call
        same = lib.adamlab_advance_steps(n, _address(addresses), _address(t))
    else:  # a step count in another dtype or place (an unusual checkpoint): plain torch
        for step in steps:
            step += 1
        t = array("d", [step.item() for step in steps])
        same = len(set(t)) == 1
    values = [t[0]] if same else sorted(set(t))
    coefs = (_Coefficients * len(values))(*[_Coefficients(*map(float, coefficients(v, **hyper))) for v in values])
    if same:
        return coefs, None
    position = {v: i for i, v in enumerate(values)}
    return coefs, array("q", map(position.__getitem__, t))


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


def _all_contiguous(*lists: list[Tensor]) -> bool:
    """Whether the kernel can walk these tensors' memory directly, element i for element i."""
    return all(all(map(Tensor.is_contiguous, lst)) for lst in lists)


def _call(lib, params, grads, exp_avgs, exp_avg_sqs, maxes, coefs, index, options) -> None:
    """One kernel call over the given (contiguous, CPU) tensors: tables of sizes and pointers."""
    numel = array("q", map(Tensor.numel, params))
    lists = (params, grads, exp_avgs, exp_avg_sqs, maxes)
    tables = [array("Q", map(Tensor.data_ptr, lst)) for lst in lists]
    if any(0 in t for t in tables):  # empty tensors, or a tensor without storage (a wrapper subclass)
        bad = next((type(x).__name__ for lst in lists for x in lst if x.data_ptr() == 0 and x.numel()), None)
        if bad is not None:
            raise RuntimeError(f"the fused CPU implementation needs tensors with storage, got a {bad}")
    rc = lib.adamlab_fused_step(
        len(params), *map(_address, (numel, *tables)), coefs, None if index is None else _address(index), options
    )
    if rc != 0:
        raise RuntimeError(f"adamlab fused CPU kernel failed with code {rc}")


def _update_odd(lib, tensors: list[Tensor | None], grad: Tensor, coefs, coef: int | None, options) -> None:
    """A non-contiguous tensor or a gradient of another dtype: update contiguous copies,
    then write them back (rare; correctness over speed)."""
    param = tensors[0]
    real = torch.view_as_real if param.is_complex() else (lambda x: x)
    p, v, s, m = (None if x is None else real(x).contiguous() for x in (tensors[0], *tensors[2:]))
    g = real(grad).to(p.dtype).contiguous()
    index = None if coef is None else array("q", [coef])
    _call(lib, [p], [g], [v], [s], [m] if m is not None else [], coefs, index, options)
    for dst, src in zip((tensors[0], *tensors[2:]), (p, v, s, m)):
        if dst is not None and real(dst).data_ptr() != src.data_ptr():
            real(dst).copy_(src)
