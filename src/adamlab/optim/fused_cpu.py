"""The fused CPU implementation: one C++ call per step for all tensors of a group.

Same signature and math as :mod:`adamlab.optim.single_tensor`. The kernel
(``csrc/fused_cpu.cpp``) takes a table of data pointers and sizes and streams each element
once -- θ, g, v, s in; θ, v, s out -- with fp32 math (fp64 for fp64 tensors), split into
chunks across tensors and run on torch's OpenMP threads. Many small tensors cost one call,
not one dispatch each.

A step is two calls into the library: ``adamlab_advance_steps`` adds 1 to every step count
and hands the new counts back; :func:`adamlab._moments.coefficients` turns each distinct
count into a :class:`~adamlab._moments.Coefficients` record, passed as its fields in order
as C doubles (the C struct ``adamlab_coefficients``, same field names);
``adamlab_fused_step`` runs the update over one table (sizes, then the addresses of θ, g,
v, s and max s), read from the tensors at that step and kept by no one.

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
import struct
from array import array
from typing import Any

import torch
from torch import Tensor

from adamlab import _library
from adamlab._moments import Coefficients, coefficients

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_ABI_VERSION = 3

# The C records, packed from plain Python values in one call each (no ctypes Structure to
# build per step): ``adamlab_coefficients`` is the fields of :class:`Coefficients` as C
# doubles, in that order; ``adamlab_options`` is what is the same for every tensor of a call.
_COEFFICIENT_FIELDS = len(Coefficients._fields)  # 7 doubles
_OPTIONS = struct.Struct("=6d6i")  # lr beta1 beta2 eps weight_decay inv_grad_scale | param_dtype
# state_dtype yogi amsgrad maximize decoupled (the C struct has no padding: 6*8 + 6*4 bytes)


def _declare(lib: ctypes.CDLL) -> None:
    """Set the argument and result types of every function the library exports."""
    p = ctypes.c_void_p
    lib.adamlab_fused_abi_version.argtypes = []
    lib.adamlab_fused_abi_version.restype = ctypes.c_int
    lib.adamlab_advance_steps.argtypes = [ctypes.c_int64, p, p]  # n, float* steps[n], double t[n]
    lib.adamlab_advance_steps.restype = ctypes.c_int
    # n, int64 table[5 or 6][n] (numel, then the addresses of θ, g, v, s, max s),
    # double coefs[k][7], int64 coef_index[n] (or NULL), options
    lib.adamlab_fused_step.argtypes = [ctypes.c_int64, p, p, p, ctypes.c_char_p]
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
    lib = _lib or load()
    # On the CPU reading these scalars costs nothing (no device to synchronize with).
    if found_inf is not None and float(found_inf) != 0.0:
        return  # skip the whole step, step counts included, as torch's fused Adam does
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    # The common case -- one parameter (and gradient) dtype, one state dtype, everything on
    # the CPU, contiguous and of its parameter's size -- is checked on the concatenated lists,
    # one C-level call per property and no Python statement per tensor; the concatenation is
    # also the kernel's table, row after row. Anything else goes tensor by tensor below.
    state = exp_avgs + exp_avg_sqs + max_exp_avg_sqs if amsgrad else exp_avgs + exp_avg_sqs
    flat = params + grads + state
    sizes = list(map(_numel, flat))
    numels = sizes[: len(params)]
    p_dtypes, s_dtypes = set(map(_dtype, params + grads)), set(map(_dtype, state))
    common = (
        len(p_dtypes) == len(s_dtypes) == 1
        and sizes == numels * len(lists)
        and all(map(_is_cpu, flat))
        and all(map(_is_contiguous, flat))
    )
    if not common:
        _check_sizes(lists)
    coefs, index = _step_coefficients(
        lib, state_steps, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction
    )
    options = [
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        1.0 if grad_scale is None else 1.0 / float(grad_scale),
        0, 0, rule == "yogi", bool(amsgrad), bool(maximize), bool(decoupled_weight_decay),
    ]  # fmt: skip
    if common:
        (p_dtype,), (s_dtype,) = p_dtypes, s_dtypes
        if p_dtype.is_complex:  # as torch: real and imaginary parts are independent
            flat = list(map(torch.view_as_real, flat))
            numels = [2 * n for n in numels]
        _call(lib, flat, numels, coefs, index, _options(options, p_dtype, s_dtype))
        return
    # the rare case: one call per (parameter dtype, state dtype) for the tensors the kernel
    # can walk directly, and one call per tensor, on contiguous copies, for the others
    plain: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        tensors = [lst[i] for lst in lists]
        if tensors[1].dtype == p.dtype and all(map(_is_contiguous, tensors)):
            plain.setdefault((p.dtype, exp_avgs[i].dtype), []).append(i)
        else:
            _update_odd(
                lib, tensors, coefs, None if index is None else index[i], _options(options, p.dtype, exp_avgs[i].dtype)
            )
    for (p_dtype, s_dtype), where in plain.items():
        chosen = [lst[i] for lst in lists for i in where]  # row after row, as the table
        if p_dtype.is_complex:
            chosen = list(map(torch.view_as_real, chosen))
        sizes = list(map(_numel, chosen[: len(where)]))
        _call(
            lib,
            chosen,
            sizes,
            coefs,
            None if index is None else array("q", map(index.__getitem__, where)),
            _options(options, p_dtype, s_dtype),
        )


_fused_cpu_update_eagerly = torch.compiler.disable(_fused_cpu_update)


def fused_cpu_update(*args: Any, **kwargs: Any) -> None:
    """One fused step on CPU tensors; the signature of every implementation. Under
    ``torch.compile`` it runs eagerly: dynamo cannot trace into the ctypes call, and tracing
    up to it would guard on every Python scalar (one recompile per new lr value)."""
    if torch.compiler.is_compiling():
        return _fused_cpu_update_eagerly(*args, **kwargs)
    return _fused_cpu_update(*args, **kwargs)


_dtype = Tensor.dtype.__get__
_is_cpu = Tensor.is_cpu.__get__
_is_contiguous = Tensor.is_contiguous
_numel = Tensor.numel
_data_ptr = Tensor.data_ptr


def _options(values: list[Any], p_dtype: torch.dtype, s_dtype: torch.dtype) -> bytes:
    """The ``adamlab_options`` record for one call, with the dtype codes of its tensors."""
    if p_dtype.is_complex:
        p_dtype, s_dtype = p_dtype.to_real(), s_dtype.to_real()
    if p_dtype not in _DTYPE_CODES or s_dtype not in _DTYPE_CODES:
        raise RuntimeError(f"the fused CPU implementation does not support {p_dtype} parameters with {s_dtype} state")
    values[6], values[7] = _DTYPE_CODES[p_dtype], _DTYPE_CODES[s_dtype]
    return _OPTIONS.pack(*values)


def _step_coefficients(lib: ctypes.CDLL, steps: list[Tensor], **hyper: Any) -> tuple[array, array | None]:
    """Advance every step count by one (one C call); the coefficient records (C doubles) for
    the distinct new counts, each computed once by :func:`adamlab._moments.coefficients`,
    and which record each tensor uses (None: the first, for all; the usual case)."""
    n = len(steps)
    if set(map(_dtype, steps)) == {torch.float32} and all(map(_is_cpu, steps)):
        t = array("d", bytes(8 * n))
        addresses = array("Q", map(_data_ptr, steps))  # read now, used now, kept by no one
        same = lib.adamlab_advance_steps(n, addresses.buffer_info()[0], t.buffer_info()[0])
    else:  # a step count in another dtype or place (an unusual checkpoint): plain torch
        for step in steps:
            step += 1
        t = array("d", [step.item() for step in steps])
        same = len(set(t)) == 1
    values = [t[0]] if same else sorted(set(t))
    coefs = array("d")
    for value in values:
        coefs.extend(map(float, coefficients(value, **hyper)))
    if same:
        return coefs, None
    position = {v: i for i, v in enumerate(values)}
    return coefs, array("q", map(position.__getitem__, t))


def _check_sizes(lists: list[list[Tensor]]) -> None:
    """The kernel walks numel(p) elements of every tensor: a gradient or state tensor of
    another size, or one that is not on the CPU, would be read or written out of bounds.
    Refuse it, naming it (torch raises too)."""
    numels = list(map(_numel, lists[0]))
    for name, lst in zip(("parameter", "gradient", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), lists):
        if len(lst) != len(numels):
            raise RuntimeError(f"fused CPU update: {len(lst)} {name} tensors for {len(numels)} parameters")
        for i, t in enumerate(lst):
            if not t.is_cpu:
                raise RuntimeError(f"the fused CPU implementation got a tensor on {t.device} ({name} {i})")
            if t.numel() != numels[i]:
                raise RuntimeError(
                    f"fused CPU update: the {name} of parameter {i} has {t.numel()} elements, the parameter {numels[i]}"
                )
        if name.endswith("sq"):
            odd = next((i for i, (t, v) in enumerate(zip(lst, lists[2])) if t.dtype != v.dtype), None)
            if odd is not None:
                raise RuntimeError(
                    f"fused CPU update: the state of parameter {odd} mixes dtypes "
                    f"{lists[2][odd].dtype} (exp_avg) and {lst[odd].dtype} ({name})"
                )


def _call(lib, flat: list[Tensor], numels: list[int], coefs: array, index: array | None, options: bytes) -> None:
    """One kernel call over the given (contiguous, CPU, real) tensors, ``flat`` holding the
    parameters, then the gradients, then each state list: one table of sizes and addresses,
    read from the tensors now and used by this call only."""
    table = array("q", numels)
    table.extend(map(_data_ptr, flat))
    if 0 in table[len(numels) :]:  # empty tensors, or a tensor without storage (a wrapper subclass)
        bad = next((type(x).__name__ for x in flat if x.data_ptr() == 0 and x.numel()), None)
        if bad is not None:
            raise RuntimeError(f"the fused CPU implementation needs tensors with storage, got a {bad}")
    rc = lib.adamlab_fused_step(
        len(numels), table.buffer_info()[0], coefs.buffer_info()[0], index and index.buffer_info()[0], options
    )
    if rc != 0:
        raise RuntimeError(f"adamlab fused CPU kernel failed with code {rc}")


def _update_odd(lib, tensors: list[Tensor], coefs: array, coef: int | None, options: bytes) -> None:
    """One tensor (non-contiguous, or a gradient of another dtype): update contiguous
    copies, then write them back (rare; correctness over speed)."""
    param = tensors[0]
    real = torch.view_as_real if param.is_complex() else (lambda x: x)
    p, v, s, *m = (real(x).contiguous() for x in (tensors[0], *tensors[2:]))
    g = real(tensors[1]).to(p.dtype).contiguous()
    index = None if coef is None else array("q", [coef])
    _call(lib, [p, g, v, s, *m], [p.numel()], coefs, index, options)
    for dst, src in zip((tensors[0], *tensors[2:]), (p, v, s, *m)):
        if real(dst).data_ptr() != src.data_ptr():
            real(dst).copy_(src)
