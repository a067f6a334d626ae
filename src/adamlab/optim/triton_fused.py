"""``fused=True`` on CUDA: Adam and Yogi as one Triton kernel launch per step.

The kernel is in :mod:`adamlab.optim.triton_kernel`; this module checks the tensors, builds
the step's table of addresses and sizes (see the kernel's docstring), and launches the kernel
the ordinary way, ``kernel[grid](...)``. Nothing is remembered here between steps: every
step reads every address anew, so new gradients, ``p.data = ...``, replaced state tensors and
new hyperparameters need no special care. Given ``flat_state`` (a
:class:`~adamlab.optim.flat_state.FlatState` whose tensors the optimizer has just found in
the state, by address), the state's table rows are the record's and only θ and g are read.
Triton is imported on first use, so adamlab imports and runs everything else without it.

The same code runs on CPU tensors under Triton's interpreter (:func:`interpreted_update`),
which is how the test suite checks the kernel without a GPU.

Low-precision state (``low_precision=``, a :class:`adamlab.optim.precision.LowPrecision`)
uses the same kernel, specialised: bfloat16 moments rounded stochastically, 8-bit blockwise
moments (one program per block of ``block_size`` elements, so the table's chunks are the
blocks and a block never straddles two tensors), and stochastically rounded bfloat16
parameters. The table then carries three more rows: the seeds and the absmax addresses.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from array import array
from collections.abc import Iterable
from itertools import accumulate, repeat
from operator import add, floordiv
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from adamlab._moments import coefficients
from adamlab.optim.flat_state import FlatState
from adamlab.optim.precision import LowPrecision

# One program per BLOCK elements; 4 warps move 16 bytes per load per thread in float32.
# Fixed on purpose: an autotuner would re-run this in-place kernel and apply the update
# several times (see STYLE.md, lion-pytorch).
BLOCK = 1024
NUM_WARPS = 4
# 8-bit state: a program per block of block_size elements (16..8192), a warp per 256 of them
# (8 elements per thread, as BLOCK = 1024 with 4 warps), at most 16 warps: an 8192 block
# would otherwise hold 64 elements of each of p, g, v and s per thread in registers.
BLOCK_SIZES = range(4, 14)  # log2 of the block sizes the kernel takes
MOMENTS = {None: 0, "bf16": 1, "8bit": 2}  # the kernel's MOMENTS for a LowPrecision.precision


def _warps(block: int) -> int:
    return min(16, max(1, block // 256))


_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_SUPPORTED_SET = set(_SUPPORTED)
_STATE_DTYPES = {0: _SUPPORTED_SET, 1: {torch.bfloat16}, 2: {torch.uint8}}  # the moments' dtypes, by MOMENTS
_INT = {int}

_modules: dict[bool, ModuleType] = {}
_lock = threading.Lock()


def kernel_module(interpret: bool) -> ModuleType:
    """:mod:`adamlab.optim.triton_kernel`, compiled (interpret=False) or interpreted;
    ``RuntimeError`` if Triton is not installed."""
    module = _modules.get(interpret)
    if module is not None:
        return module
    try:
        import triton  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "fused=True on CUDA tensors needs Triton, which is not installed (pip install triton, or use foreach=True)"
        ) from error
    with _lock:
        if not interpret:
            from adamlab.optim import triton_kernel as module
        else:
            # A second copy of the same source, decorated while TRITON_INTERPRET=1 (Triton
            # reads it when @triton.jit runs), so compiled and interpreted kernels coexist.
            spec = importlib.util.find_spec("adamlab.optim.triton_kernel")
            assert spec is not None and spec.origin is not None
            spec = importlib.util.spec_from_file_location("adamlab.optim._triton_kernel_interpreted", spec.origin)
            module = importlib.util.module_from_spec(spec)
            previous = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1"
            try:
                spec.loader.exec_module(module)
            finally:
                if previous is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = previous
        _modules[interpret] = module
        _TL_DTYPES.update({dtype: getattr(module.tl, str(dtype).removeprefix("torch.")) for dtype in _SUPPORTED})
        _TL_DTYPES[torch.uint8] = module.tl.uint8  # 8-bit state codes
    return module


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _same_dense_layout(tensors: list[Tensor]) -> bool:
    """True when all tensors have p's shape and strides and p's elements fill a dense block."""
    p = tensors[0]
    if any(t.shape != p.shape or t.stride() != p.stride() for t in tensors[1:]):
        return False
    if p.is_contiguous():
        return True
    expected = 1  # dense in some dimension order: sorted strides are running products
    # dims ordered by stride, innermost first (channels_last and transposes are dense too)
    for stride, size in sorted((st, s) for s, st in zip(p.shape, p.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _check(lists: tuple[list[Tensor], ...], state_dtypes: set = _SUPPORTED_SET) -> dict[tuple, list[int]]:
    """Check every tensor; the positions of the tensors, by (device, dtypes) of one launch.
    ``state_dtypes``: what the moments may be (low-precision state: bfloat16 or uint8 only)."""
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps = lists
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        where = f"parameter {i} (shape {tuple(p.shape)}, {p.dtype})"
        if p.device.type != params[0].device.type:  # refused before any launch: no half-step
            raise RuntimeError(
                f"fused=True steps one kind of device per parameter group; {where} is on {p.device}, "
                f"parameter 0 on {params[0].device} (put them in separate groups)"
            )
        if grads[i].layout != torch.strided:
            raise RuntimeError(f"fused_cuda does not support sparse gradients; {where} has a {grads[i].layout} one")
        p, g, v, s, m = (_real(t) for t in (p, grads[i], exp_avgs[i], exp_avg_sqs[i], maxes[i]))
        if p.dtype not in _SUPPORTED or g.dtype not in _SUPPORTED or v.dtype not in state_dtypes:
            allowed = (
                "float32, bfloat16 and float16" if state_dtypes is _SUPPORTED_SET else str(next(iter(state_dtypes)))
            )
            raise RuntimeError(
                f"fused_cuda supports float32, bfloat16 and float16 parameters and gradients and {allowed} "
                f"state; {where} has gradient {g.dtype} and state {v.dtype} (use foreach=True)"
            )
        if not (v.dtype == s.dtype == m.dtype):
            raise RuntimeError(f"fused_cuda: the state of {where} mixes dtypes {v.dtype}, {s.dtype}, {m.dtype}")
        if any(t.device != p.device for t in (g, v, s, m, steps[i])):
            raise RuntimeError(f"fused_cuda: the gradient, state and step of {where} must be on {p.device}")
        if steps[i].dtype != torch.float32 or steps[i].numel() != 1:
            raise RuntimeError(f"fused_cuda: the step of {where} must be a one-element float32 tensor")
        if not _same_dense_layout([p, g, v, s, m]):
            raise RuntimeError(
                f"fused_cuda needs the gradient and state of {where} laid out like the parameter "
                f"(dense, strides {p.stride()}); got gradient strides {g.stride()}, state strides {v.stride()}"
            )
        groups.setdefault((p.device, p.dtype, g.dtype, v.dtype), []).append(i)
    return groups


_dtype = Tensor.dtype.__get__
_get_device = Tensor.get_device
_is_contiguous = Tensor.is_contiguous
_numel = Tensor.numel
_data_ptr = Tensor.data_ptr
_LOW_BYTE = 0 if sys.byteorder == "little" else 7  # where an int64's lowest byte is
_LOW_FOUR_BITS = bytes(b & 15 for b in range(256))
_F32 = {torch.float32}
_ONE = {1}


def _groups(lists: tuple[list[Tensor], ...], state_dtypes: set = _SUPPORTED_SET) -> dict[tuple, list[int] | range]:
    """The launches of this step. The common case (one device, one dtype each for
    parameters, gradients and state, everything contiguous, real and of matching size) is
    checked on the concatenated lists, one C-level call per property and no Python statement
    per tensor; anything else goes through :func:`_check`, tensor by tensor."""
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps = lists
    n = len(params)
    flat = params + grads + exp_avgs + exp_avg_sqs + maxes
    try:
        p_dtypes, g_dtypes = set(map(_dtype, params)), set(map(_dtype, grads))
        s_dtypes = set(map(_dtype, flat[2 * n :]))
        # the device index of every tensor (-1 on the CPU) against the first parameter's, which
        # _update has checked is a CUDA tensor: an int per tensor, cheaper than a torch.device
        devices = set(map(_get_device, flat + steps))
        common = (
            len(p_dtypes) == len(g_dtypes) == len(s_dtypes) == 1
            and devices == {params[0].get_device()}
            and (p_dtypes | g_dtypes) <= _SUPPORTED_SET
            and s_dtypes <= state_dtypes
            and set(map(_dtype, steps)) == _F32
            and set(map(_numel, steps)) == _ONE
            and all(map(_is_contiguous, flat))
            and (sizes := list(map(_numel, flat))) == sizes[:n] * 5
        )
    except RuntimeError:  # e.g. is_contiguous() of a sparse gradient: _check names it
        common = False
    if common:
        return {(params[0].device, p_dtypes.pop(), g_dtypes.pop(), s_dtypes.pop()): range(n)}
    return _check(lists, state_dtypes)


def _table(
    lists: tuple[list[Tensor], ...],
    index: list[int] | range,
    block: int = BLOCK,
    low_precision: LowPrecision | None = None,
) -> tuple[array, int, bool]:
    """The step's int64 table [9, n + 1] (flat) for the tensors at ``index``, the number of
    chunks of ``block`` elements, and whether every address is 16-byte aligned. With
    ``low_precision``, rows 9..11: the seeds, and the absmax addresses (8-bit; else 0). Read
    from the tensors now, kept by no one after the upload."""
    n = len(index)
    whole = n == len(lists[0])
    tensors = [lst if whole else [lst[i] for i in index] for lst in lists]
    if any(map(Tensor.is_complex, tensors[0])):
        tensors = [[_real(t) for t in lst] for lst in tensors[:5]] + [tensors[5]]
    table, n_chunks, aligned = _assemble([map(_data_ptr, lst) for lst in tensors], list(map(_numel, tensors[0])), block)
    if low_precision is not None:
        lp = low_precision
        table.extend(lp.seeds if whole else [lp.seeds[i] for i in index])  # row 9
        table.append(0)
        for absmax in (lp.exp_avg_absmax, lp.exp_avg_sq_absmax):  # rows 10, 11
            table.extend(map(_data_ptr, absmax if whole else [absmax[i] for i in index]) if absmax else repeat(0, n))
            table.append(0)
    return table, n_chunks, aligned


def _assemble(addresses: list[Iterable[int]], numels: list[int], block: int) -> tuple[array, int, bool]:
    """Rows 0..8 of the table from the six address rows (θ, g, v, s, max s, step; n ints
    each) and the sizes; the number of chunks; whether the addresses of rows 0..4 are all
    16-byte aligned."""
    n = len(numels)
    table = array("q")
    for row in addresses:  # rows 0..5: addresses
        table.extend(row)
        table.append(0)
    # every address a multiple of 16: the lowest byte of each (a slice of the table's bytes)
    # mapped through `& 15` must be all zeros -- bytes operations, no call per address
    low_bytes = table.tobytes()[_LOW_BYTE : 8 * 5 * (n + 1) : 8]
    aligned = low_bytes.translate(_LOW_FOUR_BITS).count(0) == len(low_bytes)
    table.extend(numels)  # row 6
    table.append(0)
    # row 7: first chunks, a running sum of ceil(numel / BLOCK); an empty tensor still gets
    # one program (it advances the tensor's step count). C-level maps, no per-tensor statement.
    chunks = map(max, map(floordiv, map(add, numels, repeat(block - 1)), repeat(block)), repeat(1))
    table.extend(accumulate(chunks, initial=0))
    n_chunks = table[-1]
    table.frombytes(bytes(8 * (n + 1)))  # row 8: the counters, zeros
    return table, n_chunks, aligned


def _flat_launch(
    flat: FlatState, params: list[Tensor], grads: list[Tensor], amsgrad: bool
) -> tuple[tuple, tuple[array, int, bool]] | None:
    """The one launch of a step whose state is ``flat``'s tensors (checked by the caller), its
    (device, dtypes) and table, reading only θ and g; None where they do not fit the record."""
    if not flat.fits(params, grads) or flat.param_dtype not in _SUPPORTED_SET or flat.state_dtype not in _SUPPORTED_SET:
        return None
    n = len(params)
    rows = flat.rows
    v, s = rows[:n], rows[n : 2 * n]
    addresses = [map(_data_ptr, params), map(_data_ptr, grads), v, s, rows[2 * n :] if amsgrad else s, flat.steps]
    key = (params[0].device, flat.param_dtype, flat.param_dtype, flat.state_dtype)
    return key, _assemble(addresses, flat.numels, BLOCK)


def _update(
    interpret: bool,
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
    if not params:
        return
    if bias_correction == "recursive":
        raise ValueError("bias_correction='recursive' is not supported by the fused kernels; use foreach=True")
    lengths = [len(lst) for lst in (grads, exp_avgs, exp_avg_sqs, state_steps, *([max_exp_avg_sqs] if amsgrad else []))]
    if set(lengths) != {len(params)}:  # the table's rows would shift: the kernel would read out of bounds
        raise RuntimeError(
            f"fused_cuda update: {len(params)} parameters with {lengths} gradients, exp_avgs, exp_avg_sqs, "
            "step counts (and max_exp_avg_sqs): one of each per parameter"
        )
    if low_precision is not None:
        _check_low_precision(low_precision, params, exp_avgs, exp_avg_sqs, amsgrad)
    if interpret:
        if params[0].is_cuda:
            raise RuntimeError(f"interpreted_update runs on CPU tensors; got {params[0].device}")
    elif not params[0].is_cuda:
        raise RuntimeError(f"fused_cuda updates CUDA tensors; got {params[0].device} (use foreach=True)")
    module = kernel_module(interpret)
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else exp_avg_sqs, state_steps)
    moments = 0 if low_precision is None else MOMENTS[low_precision.precision]
    block = low_precision.block_size if moments == 2 else BLOCK
    fast = None if flat_state is None or moments else _flat_launch(flat_state, params, grads, amsgrad)
    if fast is not None:  # the state is flat_state's tensors: one launch, θ and g read
        launches = [(fast[0], range(len(params)), fast[1])]
    else:
        launches = [
            (key, index, _table(lists, index, block, low_precision))
            for key, index in _groups(lists, _STATE_DTYPES[moments]).items()
        ]
    lr_on_device = isinstance(lr, Tensor)
    # w1 = 1-β1 and w2 = 1-β2 do not depend on t (no "recursive" here): computed once, in
    # float64, so that 1-β2 keeps its digits; the kernel derives step_size and bc2_sqrt from t.
    k = coefficients(1.0, lr=1.0, beta1=beta1, beta2=beta2, bias_correction=bias_correction)
    for (device, p_dtype, g_dtype, s_dtype), index, (table, n_chunks, aligned) in launches:
        table = torch.frombuffer(table, dtype=torch.int64).to(device)
        dummy = table  # stands in for absent pointer arguments; never read
        lr_t = _on(lr, device) if lr_on_device else None
        scale_t = None if grad_scale is None else _on(grad_scale, device)
        inf_t = None if found_inf is None else _on(found_inf, device)
        launch = module.adam_family_kernel[(n_chunks,)]
        arguments = (
            table, len(index), 0.0 if lr_on_device else float(lr), dummy if lr_t is None else lr_t,
            dummy if scale_t is None else scale_t, dummy if inf_t is None else inf_t,
            float(k.w1), float(k.w2), float(eps), float(weight_decay),
        )  # fmt: skip
        flags = dict(
            YOGI=rule == "yogi", BIAS_CORRECTION=bool(bias_correction), AMSGRAD=bool(amsgrad),
            MAXIMIZE=bool(maximize), DECOUPLED=bool(decoupled_weight_decay), HAS_WEIGHT_DECAY=weight_decay != 0,
            LR_ON_DEVICE=lr_on_device, HAS_GRAD_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
            P_DTYPE=_TL_DTYPES[p_dtype], G_DTYPE=_TL_DTYPES[g_dtype], S_DTYPE=_TL_DTYPES[s_dtype],
            ALIGNED=aligned, BLOCK=block, num_warps=_warps(block), MOMENTS=moments,
            PARAM_SR=low_precision is not None and low_precision.stochastic_rounding and p_dtype == torch.bfloat16,
            BF16_BY_BITS=interpret,
        )  # fmt: skip
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):  # Triton launches on the current device
                launch(*arguments, **flags)
        else:
            launch(*arguments, **flags)


def _check_low_precision(
    lp: LowPrecision, params: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], amsgrad: bool
) -> None:
    """What the low-precision kernel needs besides :func:`_groups`' checks (which check the
    moments' dtypes); raises before any launch, so nothing changes. Checked on whole lists
    (C-level maps, no statement per tensor) and searched tensor by tensor only to name a
    culprit: this runs every step."""
    if lp.precision not in MOMENTS:
        raise ValueError(f"Invalid low_precision.precision: {lp.precision!r} (expected 'bf16', '8bit' or None)")
    seeds = lp.seeds
    if len(seeds) != len(params):
        raise ValueError(f"low_precision.seeds has {len(seeds)} seeds for {len(params)} parameters")
    if seeds and not (set(map(type, seeds)) <= _INT and min(seeds) >= 0 and max(seeds) < 2**32):
        bad = next(s for s in seeds if not (type(s) in _INT and 0 <= s < 2**32))
        raise ValueError(f"Invalid rounding seed: {bad!r} (expected an int in [0, 2**32))")
    if lp.precision is not None and any(map(Tensor.is_complex, params)):
        raise ValueError(f"state precision {lp.precision!r} does not take complex parameters")
    if lp.precision != "8bit":
        return
    if amsgrad:
        raise ValueError("state precision '8bit' does not take amsgrad=True (use 'bf16' or 'fp32')")
    b = lp.block_size
    if not (type(b) in _INT and b.bit_length() - 1 in BLOCK_SIZES and b & (b - 1) == 0):
        raise ValueError(f"Invalid block_size: {b!r} (expected a power of two from 16 to 8192)")
    for name, absmaxes, moments in (
        ("exp_avg", lp.exp_avg_absmax, exp_avgs),
        ("exp_avg_sq", lp.exp_avg_sq_absmax, exp_avg_sqs),
    ):
        if len(absmaxes) != len(params):
            raise ValueError(f"low_precision.{name}_absmax has {len(absmaxes)} tensors for {len(params)} parameters")
        blocks = list(map(floordiv, map(add, map(_numel, moments), repeat(b - 1)), repeat(b)))
        if (
            set(map(_dtype, absmaxes)) <= _F32
            and list(map(_numel, absmaxes)) == blocks
            and all(map(_is_contiguous, absmaxes))
            and list(map(_get_device, absmaxes)) == list(map(_get_device, moments))
        ):
            continue
        for i, (a, m, n) in enumerate(zip(absmaxes, moments, blocks)):
            if a.dtype != torch.float32 or a.numel() != n or not a.is_contiguous() or a.device != m.device:
                raise RuntimeError(
                    f"fused_cuda: the {name} absmax of parameter {i} must be a contiguous float32 tensor of "
                    f"{n} blocks on {m.device}; got {a.dtype}, {a.numel()} elements on {a.device}"
                )


def _on(t: Tensor | None, device: torch.device) -> Tensor | None:
    """A 0-dim scalar tensor (lr, grad_scale, found_inf) on the launch's device."""
    return t if t is None or t.device == device else t.to(device=device, dtype=torch.float32)


_TL_DTYPES: dict[torch.dtype, Any] = {}  # torch dtype -> Triton dtype, filled by kernel_module


_update_eagerly = torch.compiler.disable(_update)


def fused_cuda_update(*args: Any, **kwargs: Any) -> None:
    """One step of ``rule`` on CUDA tensors; the signature of every implementation. Under
    ``torch.compile`` it runs eagerly: the table is host code (dynamo would guard on every
    address)."""
    if torch.compiler.is_compiling():
        return _update_eagerly(False, *args, **kwargs)
    return _update(False, *args, **kwargs)


interpreted_update = functools.partial(_update, True)
interpreted_update.__doc__ = "The same kernel on CPU tensors under Triton's interpreter (slow; for tests)."
