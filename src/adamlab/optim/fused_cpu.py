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

Low-precision state (``low_precision=``, a :class:`~adamlab.optim.precision.LowPrecision`
record: bfloat16 or 8-bit moments, stochastically rounded bfloat16 parameters) takes the same
kernel call with more table rows; see :mod:`adamlab.optim.fused_cpu_precision`. Without the
record this module's path is unchanged.

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
from adamlab.optim.flat_state import FlatState
from adamlab.optim.precision import LowPrecision

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_ABI_VERSION = 4

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
    # double coefs[k][7], int64 coef_index[n] (or NULL), options, low precision (or NULL)
    lib.adamlab_fused_step.argtypes = [ctypes.c_int64, p, p, p, ctypes.c_char_p, ctypes.c_char_p]
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
    low_precision: LowPrecision | None = None,
    flat_state: FlatState | None = None,
) -> None:
    if low_precision is not None:
        from adamlab.optim import fused_cpu_precision

        return fused_cpu_precision.update(
            rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr, beta1=beta1,
            beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction, capturable=capturable,
            grad_scale=grad_scale, found_inf=found_inf, low_precision=low_precision,
        )  # fmt: skip
    if not params:
        return
    lib = _lib or load()
    # On the CPU reading these scalars costs nothing (no device to synchronize with).
    if found_inf is not None and float(found_inf) != 0.0:
        return  # skip the whole step, step counts included, as torch's fused Adam does
    options = [
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        1.0 if grad_scale is None else 1.0 / float(grad_scale),
        0, 0, rule == "yogi", bool(amsgrad), bool(maximize), bool(decoupled_weight_decay),
    ]  # fmt: skip
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction)
    if flat_state is not None and flat_state.device.type == "cpu" and flat_state.fits(params, grads):
        # the state is the record's tensors (checked by address by the caller): its rows and
        # step addresses are the record's; only θ and g are read
        table = _table(params + grads, flat_state.numels)
        table.extend(flat_state.rows)
        packed = _options(options, flat_state.param_dtype, flat_state.state_dtype)
        coefs, index, _ = _step_coefficients(lib, state_steps, flat_state.steps, **hyper)
        _call(lib, table, len(params), coefs, index, packed)
        return
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
    addresses = _check_steps(params, state_steps)
    # Everything that can refuse the step (dtype codes, real views, sizes, storage) runs
    # before any step count moves: a refused step changes nothing.
    if common:
        (p_dtype,), (s_dtype,) = p_dtypes, s_dtypes
        packed = _options(options, p_dtype, s_dtype)
        if p_dtype.is_complex:  # as torch: real and imaginary parts are independent
            flat = list(map(torch.view_as_real, flat))
            numels = [2 * n for n in numels]
        table = _table(flat, numels)
        coefs, index, _ = _step_coefficients(lib, state_steps, addresses, **hyper)
        _call(lib, table, len(numels), coefs, index, packed)
        return
    # the rare case: one call per (parameter dtype, state dtype) for the tensors the kernel
    # can walk directly, and one call per tensor, on contiguous copies, for the others
    plain: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    odd: list[tuple[int, list[Tensor], list[Tensor], array, bytes]] = []
    for i, p in enumerate(params):
        tensors = [lst[i] for lst in lists]
        if tensors[1].dtype == p.dtype and all(map(_is_contiguous, tensors)):
            plain.setdefault((p.dtype, exp_avgs[i].dtype), []).append(i)
        else:
            packed = _options(options, p.dtype, exp_avgs[i].dtype)
            copies = _odd_copies(tensors)
            odd.append((i, tensors, copies, _table(copies, [copies[0].numel()]), packed))
    calls: list[tuple[array, list[int], bytes]] = []
    for (p_dtype, s_dtype), where in plain.items():
        packed = _options(options, p_dtype, s_dtype)
        chosen = [lst[i] for lst in lists for i in where]  # row after row, as the table
        if p_dtype.is_complex:
            chosen = list(map(torch.view_as_real, chosen))
        sizes = list(map(_numel, chosen[: len(where)]))
        calls.append((_table(chosen, sizes), where, packed))
    coefs, index, _ = _step_coefficients(lib, state_steps, addresses, **hyper)
    for i, tensors, copies, table, packed in odd:
        _update_odd(lib, tensors, copies, table, coefs, None if index is None else index[i], packed)
    for table, where, packed in calls:
        _call(
            lib, table, len(where), coefs, None if index is None else array("q", map(index.__getitem__, where)), packed
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
_ONE = {1}
_F32 = {torch.float32}
_NOT_COUNTS = frozenset((torch.bool, torch.complex32, torch.complex64, torch.complex128))


def _options(values: list[Any], p_dtype: torch.dtype, s_dtype: torch.dtype) -> bytes:
    """The ``adamlab_options`` record for one call, with the dtype codes of its tensors."""
    if p_dtype.is_complex:
        if not s_dtype.is_complex:
            raise RuntimeError(
                f"the fused CPU implementation needs complex state for {p_dtype} parameters, got {s_dtype} state"
            )
        p_dtype, s_dtype = p_dtype.to_real(), s_dtype.to_real()
    if p_dtype not in _DTYPE_CODES or s_dtype not in _DTYPE_CODES:
        raise RuntimeError(f"the fused CPU implementation does not support {p_dtype} parameters with {s_dtype} state")
    values[6], values[7] = _DTYPE_CODES[p_dtype], _DTYPE_CODES[s_dtype]
    return _OPTIONS.pack(*values)


def _check_steps(params: list[Tensor], steps: list[Tensor]) -> array | None:
    """Every step count is one real number (a 0-dim tensor, as torch's): the kernel adds 1
    through its address, so an empty step would be written out of bounds. Refuse it, naming
    its parameter (the loop and foreach paths raise ``RuntimeError`` for the same input).

    Returns the counts' addresses where every count is a float32 CPU tensor with storage
    (as torch's fused Adam keeps them: the kernel advances them itself), else None (plain
    torch advances them). Read now, used by this step only."""
    if len(steps) != len(params):
        raise RuntimeError(f"fused CPU update: {len(steps)} step counts for {len(params)} parameters")
    dtypes = set(map(_dtype, steps))
    if set(map(_numel, steps)) == _ONE and dtypes.isdisjoint(_NOT_COUNTS):
        if dtypes == _F32 and all(map(_is_cpu, steps)):
            addresses = array("Q", map(_data_ptr, steps))
            return None if 0 in addresses else addresses  # 0: a wrapper subclass without storage
        return None
    for i, (p, step) in enumerate(zip(params, steps)):
        if step.numel() != 1 or step.dtype in _NOT_COUNTS:
            raise RuntimeError(
                f"fused CPU update: the step count of parameter {i} (shape {tuple(p.shape)}) is a {step.dtype} "
                f"tensor of shape {tuple(step.shape)}; expected one real number (a 0-dim tensor)"
            )
    return None


def _step_coefficients(
    lib: ctypes.CDLL,
    steps: list[Tensor],
    addresses: array | None,
    *,
    lr: Any,
    beta1: Any,
    beta2: Any,
    bias_correction: bool | str,
) -> tuple[array, array | None, array]:
    """Advance every step count by one (one C call through ``addresses``, from
    :func:`_check_steps`; plain torch where it is None); the coefficient records (C doubles)
    for the distinct new counts, each computed once by :func:`adamlab._moments.coefficients`,
    which record each tensor uses (None: the first, for all; the usual case), and the new
    counts (C doubles, one per tensor).

    If computing the coefficients fails (a negative count), the counts are put back before
    the error propagates."""
    n = len(steps)
    if addresses is not None:
        t = array("d", bytes(8 * n))
        same = lib.adamlab_advance_steps(n, addresses.buffer_info()[0], t.buffer_info()[0])
        new = None
    else:  # a step count in another dtype or place (an unusual checkpoint): plain torch
        with torch.no_grad():
            new = [step + 1 for step in steps]  # written back once the coefficients are known
        t = array("d", [float(x) for x in new])
        same = len(set(t)) == 1
    try:
        values = [t[0]] if same else sorted(set(t))
        coefs = array("d")
        for value in values:
            coefs.extend(
                map(float, coefficients(value, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction))
            )
    except BaseException:
        if addresses is not None:  # undo the C call: counts that fail here are small, so t - 1 is exact
            for address, value in zip(addresses, t):
                ctypes.c_float.from_address(address).value = value - 1.0
        raise
    if new is not None:
        with torch.no_grad():
            for step, value in zip(steps, new):
                step.copy_(value)
    if same:
        return coefs, None, t
    position = {v: i for i, v in enumerate(values)}
    return coefs, array("q", map(position.__getitem__, t)), t


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


def _table(flat: list[Tensor], numels: list[int]) -> array:
    """The kernel's table for the given (contiguous, CPU, real) tensors, ``flat`` holding the
    parameters, then the gradients, then each state list: the sizes, then the addresses, read
    from the tensors now and used by one call only. A nonempty tensor without storage (a
    wrapper subclass) is refused here, before anything is written."""
    table = array("q", numels)
    table.extend(map(_data_ptr, flat))
    if 0 in table[len(numels) :]:  # empty tensors, or a tensor without storage
        bad = next((type(x).__name__ for x in flat if x.data_ptr() == 0 and x.numel()), None)
        if bad is not None:
            raise RuntimeError(f"the fused CPU implementation needs tensors with storage, got a {bad}")
    return table


def _call(
    lib, table: array, n: int, coefs: array, index: array | None, options: bytes, low_precision: bytes | None = None
) -> None:
    """One kernel call over the n tensors of a table built by :func:`_table` (with the rows of
    ``adamlab_low_precision`` when ``low_precision`` is given)."""
    rc = lib.adamlab_fused_step(
        n, table.buffer_info()[0], coefs.buffer_info()[0], index and index.buffer_info()[0], options, low_precision
    )
    if rc != 0:
        raise RuntimeError(f"adamlab fused CPU kernel failed with code {rc}")


def _odd_copies(tensors: list[Tensor]) -> list[Tensor]:
    """Contiguous real copies (or the tensors themselves, when already so) of θ, g, v, s (and
    max s) of one tensor that the kernel cannot walk directly; g in θ's dtype."""
    real = torch.view_as_real if tensors[0].is_complex() else (lambda x: x)
    p, v, s, *m = (real(x).contiguous() for x in (tensors[0], *tensors[2:]))
    g = real(tensors[1]).to(p.dtype).contiguous()
    return [p, g, v, s, *m]


def _update_odd(
    lib, tensors: list[Tensor], copies: list[Tensor], table: array, coefs: array, coef: int | None, options: bytes
) -> None:
    """One tensor (non-contiguous, or a gradient of another dtype): update the contiguous
    copies made by :func:`_odd_copies`, then write them back (rare; correctness over speed)."""
    real = torch.view_as_real if tensors[0].is_complex() else (lambda x: x)
    p, _, v, s, *m = copies
    index = None if coef is None else array("q", [coef])
    _call(lib, table, 1, coefs, index, options)
    for dst, src in zip((tensors[0], *tensors[2:]), (p, v, s, *m)):
        if real(dst).data_ptr() != src.data_ptr():
            real(dst).copy_(src)
