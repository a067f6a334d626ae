"""The fused CPU step with low-precision state: :func:`adamlab.optim.fused_cpu.fused_cpu_update`
called with ``low_precision=`` (a :class:`~adamlab.optim.precision.LowPrecision` record).

The formats are :mod:`adamlab.reference`'s ("low-precision state"). The kernel call is the
fp32 one (``csrc/fused_cpu.cpp``, ``adamlab_fused_step``) with one more record,
``adamlab_low_precision`` (precision, whether bfloat16 parameters round stochastically, block
size), and more rows in its table: each tensor's rounding seed and new step count t -- the
kernel derives ``rounding_key(seed, t, stream)`` itself -- and, for 8-bit, the addresses of
v's and s's absmax. Per element the kernel decodes the stored moments to fp32, updates them
as for fp32 state, updates the parameter from the new moments, then encodes them: bfloat16
rounded stochastically, or 8-bit per block (the absmax of the new values, ``|x|/absmax`` by
IEEE division, the nearest code of the block's map).

The element index of the random bits and of the blocks is the element's position in the
parameter's memory order. A parameter whose gradient and state share its layout (contiguous,
or dense like channels_last) is walked in place; any other layout is walked through copies
laid out in the parameter's memory order, written back after the step (rare; correctness
over speed).

``precision=None`` rounds only the bfloat16 parameters stochastically (the moments stay in
their own dtype); every other parameter takes the fp32 path unchanged.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

import torch
from torch import Tensor

from adamlab.optim import fused_cpu
from adamlab.optim.precision import PRECISIONS, LowPrecision

_PRECISION_CODES = {None: 0, "bf16": 1, "8bit": 2}  # adamlab_low_precision.precision
_LOW_PRECISION = struct.Struct("=iiq")  # precision, stochastic_params | block_size
_STATE_DTYPES = {"bf16": torch.bfloat16, "8bit": torch.uint8}
_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # with bf16 or 8-bit moments
_U8 = 4  # the kernel's dtype code of 8-bit codes
MIN_BLOCK, MAX_BLOCK = 16, 8192  # MAX_BLOCK: the kernel's kMaxBlock (a stack buffer per thread)


def update(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    low_precision: LowPrecision,
    amsgrad: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    **hyper: Any,
) -> None:
    """One fused step with the state stored as ``low_precision`` says. Everything that can
    refuse the step runs before anything is written: a refused step changes nothing."""
    lp = low_precision
    _check_record(lp, len(params), amsgrad)
    if found_inf is not None and float(found_inf) != 0.0:
        return  # skip the whole step, step counts included, as for fp32 state
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    if lp.precision is None:  # only bfloat16 parameters have anything to round stochastically
        chosen = [i for i, p in enumerate(params) if lp.stochastic_rounding and p.dtype == torch.bfloat16]
    else:
        chosen = list(range(len(params)))
    taken = set(chosen)
    rest = [i for i in range(len(params)) if i not in taken]
    prepared = _prepare([pick(lst, chosen) for lst in lists], pick(state_steps, chosen), lp, chosen)
    if rest:
        fused_cpu._fused_cpu_update(
            rule, *(pick(lst, rest) for lst in (params, grads, exp_avgs, exp_avg_sqs)),
            pick(max_exp_avg_sqs, rest) if amsgrad else [], pick(state_steps, rest),
            amsgrad=amsgrad, grad_scale=grad_scale, **hyper,
        )  # fmt: skip
    if chosen:
        _run(rule, prepared, pick(state_steps, chosen), lp, amsgrad=amsgrad, grad_scale=grad_scale, **hyper)


def pick(lst: list, where: list[int]) -> list:
    return [lst[i] for i in where]


def _check_record(lp: LowPrecision, n: int, amsgrad: bool) -> None:
    """The record itself: a known precision, a valid block size, one seed per parameter."""
    if lp.precision is not None and lp.precision not in PRECISIONS:
        raise ValueError(f"Invalid state precision: {lp.precision!r} (expected None, 'bf16' or '8bit')")
    if lp.precision == "fp32":
        raise ValueError("low_precision.precision 'fp32' is fp32 state: pass None (the moments keep their dtype)")
    if lp.precision == "8bit":
        if amsgrad:
            raise ValueError(
                "8-bit state does not support amsgrad=True (there is no 8-bit max_exp_avg_sq); "
                "use state_precision='bf16' or amsgrad=False"
            )
        b = lp.block_size
        if not isinstance(b, int) or isinstance(b, bool) or not MIN_BLOCK <= b <= MAX_BLOCK or b & (b - 1):
            raise ValueError(f"Invalid block size: {b!r} (expected a power of two from {MIN_BLOCK} to {MAX_BLOCK})")
        for name, lst in (("exp_avg_absmax", lp.exp_avg_absmax), ("exp_avg_sq_absmax", lp.exp_avg_sq_absmax)):
            if len(lst) != n:
                raise ValueError(f"low_precision.{name} has {len(lst)} tensors for {n} parameters")
    needs_seeds = lp.precision is not None or lp.stochastic_rounding
    if needs_seeds and len(lp.seeds) != n:
        raise ValueError(f"low_precision.seeds has {len(lp.seeds)} seeds for {n} parameters")
    bad = next((s for s in lp.seeds if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**32), None)
    if needs_seeds and bad is not None:
        raise ValueError(f"Invalid rounding seed: {bad!r} (expected an int, 0 <= seed < 2**32)")


def _prepare(lists: list[list[Tensor]], steps: list[Tensor], lp: LowPrecision, ordinals: list[int]) -> dict:
    """Check the tensors of the low-precision call and lay them out for the kernel; nothing is
    written. Returns the calls by (parameter dtype, state dtype): which tensors (positions in
    ``lists``; ``ordinals``: their positions in the record's lists), the tensors of each kind
    (θ, g, v, s, max s, then 8-bit's absmax; possibly memory-order copies) as columns, and the
    copies to write back."""
    if not lists[0]:
        return {}
    fused_cpu._check_steps(lists[0], steps)
    common = _common(lists, lp, ordinals)
    if common is not None:
        return common
    fused_cpu._check_sizes(lists)
    params, exp_avgs = lists[0], lists[2]
    want = _STATE_DTYPES.get(lp.precision)
    calls: dict[tuple[torch.dtype, torch.dtype], dict[str, list]] = {}
    for i, (p, v) in enumerate(zip(params, exp_avgs)):
        if lp.precision is not None and p.dtype not in _PARAM_DTYPES:
            raise ValueError(
                f"state precision {lp.precision!r} needs float32, bfloat16 or float16 parameters; "
                f"parameter {ordinals[i]} is {p.dtype}"
            )
        if want is not None and v.dtype != want:
            raise ValueError(
                f"state precision {lp.precision!r} keeps its moments as {want}; the state of parameter "
                f"{ordinals[i]} is {v.dtype}"
            )
        if lp.precision is None and v.dtype not in fused_cpu._DTYPE_CODES:
            raise RuntimeError(
                f"the fused CPU implementation does not support {p.dtype} parameters with {v.dtype} state"
            )
        tensors, back = _in_memory_order([lst[i] for lst in lists])
        if lp.precision == "8bit":
            tensors += [_absmax(lst[ordinals[i]], p, lp.block_size, name, ordinals[i]) for lst, name in (
                (lp.exp_avg_absmax, "exp_avg_absmax"), (lp.exp_avg_sq_absmax, "exp_avg_sq_absmax"))]  # fmt: skip
        if any(x.data_ptr() == 0 for x in tensors) and p.numel():
            raise RuntimeError(f"the fused CPU implementation needs tensors with storage, got a {type(p).__name__}")
        call = calls.setdefault((p.dtype, v.dtype), {"where": [], "ordinals": [], "columns": [], "back": []})
        if not call["columns"]:
            call["columns"] = [[] for _ in tensors]
        for column, x in zip(call["columns"], tensors):
            column.append(x)
        call["where"].append(i)
        call["ordinals"].append(ordinals[i])
        call["back"].extend(back)
    return calls


def _common(lists: list[list[Tensor]], lp: LowPrecision, ordinals: list[int]) -> dict | None:
    """The usual call -- one parameter dtype that the precision takes, its gradients in it, the
    state in the precision's dtype, everything contiguous on the CPU with storage, of the right
    sizes -- checked on whole lists (one C-level call per property, no Python statement per
    tensor) and returned as one call; None for anything else (checked tensor by tensor)."""
    params, grads = lists[0], lists[1]
    state = [x for lst in lists[2:] for x in lst]
    p_dtypes, s_dtypes = set(map(fused_cpu._dtype, params + grads)), set(map(fused_cpu._dtype, state))
    if len(p_dtypes) != 1 or len(s_dtypes) != 1:
        return None
    (p_dtype,), (s_dtype,) = p_dtypes, s_dtypes
    want = _STATE_DTYPES.get(lp.precision)
    if (lp.precision is not None and p_dtype not in _PARAM_DTYPES) or (want is not None and s_dtype != want):
        return None
    if lp.precision is None and s_dtype not in fused_cpu._DTYPE_CODES:
        return None
    numels = list(map(fused_cpu._numel, params))
    flat = params + grads + state
    if list(map(fused_cpu._numel, flat[len(params) :])) != numels * (len(lists) - 1):
        return None
    columns = list(lists)
    if lp.precision == "8bit":
        absmax = [pick(lp.exp_avg_absmax, ordinals), pick(lp.exp_avg_sq_absmax, ordinals)]
        blocks = [-(-n // lp.block_size) for n in numels]
        if any(list(map(fused_cpu._numel, lst)) != blocks for lst in absmax):
            return None
        if set(map(fused_cpu._dtype, absmax[0] + absmax[1])) != {torch.float32}:
            return None
        flat = flat + absmax[0] + absmax[1]
        columns += absmax
    if not (all(map(fused_cpu._is_cpu, flat)) and all(map(fused_cpu._is_contiguous, flat))):
        return None
    if 0 in map(fused_cpu._data_ptr, flat):
        return None  # empty tensors, or one without storage: the checks tensor by tensor
    return {(p_dtype, s_dtype): {"where": list(range(len(params))), "ordinals": ordinals, "columns": columns,
                                 "back": []}}  # fmt: skip


def _absmax(x: Tensor, p: Tensor, block_size: int, name: str, ordinal: int) -> Tensor:
    """An 8-bit moment's scales: float32, one per block of ``p``, contiguous, on the CPU."""
    blocks = -(-p.numel() // block_size)
    if x.dtype != torch.float32 or not x.is_cpu or x.numel() != blocks or not x.is_contiguous():
        raise ValueError(
            f"the {name} of parameter {ordinal} must be a contiguous float32 CPU tensor of {blocks} values "
            f"(ceil({p.numel()} / block size {block_size})); got {x.dtype} of shape {tuple(x.shape)} on {x.device}"
        )
    return x


def _in_memory_order(tensors: list[Tensor]) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """θ, g, v, s (, max s) of one parameter as contiguous tensors whose order is the memory
    order of v, the stored first moment (8-bit blocks run over it; it is θ's layout from the
    state's creation or loading), and the (destination, copy) pairs to write back after the
    step. Tensors already laid out so are used in place (the usual case, and a dense θ whose
    state shares its layout); θ with gaps, or laid out anew since (``model.to(memory_format=
    ...)``), is stepped in a copy."""
    p = tensors[0]
    if tensors[1].dtype == p.dtype and all(map(fused_cpu._is_contiguous, tensors)):
        return list(tensors), []
    v = tensors[2]
    order = sorted(range(v.dim()), key=lambda d: (-v.stride(d), -v.size(d)))  # v's dimensions, outermost first
    out, back = [], []
    for k, x in enumerate(tensors):
        view = x.permute(order)
        if k == 1:  # the gradient is read only, in θ's dtype
            out.append(view.to(p.dtype).contiguous())
        elif view.is_contiguous():
            out.append(view)
        else:
            copy = view.contiguous()
            out.append(copy)
            back.append((view, copy))
    return out, back


def _run(rule: str, calls: dict, steps: list[Tensor], lp: LowPrecision, *, amsgrad: bool, grad_scale, **hyper) -> None:
    """Advance the step counts and run one kernel call per (parameter dtype, state dtype)."""
    lib = fused_cpu._lib or fused_cpu.load()
    options = [
        float(hyper["lr"]), float(hyper["beta1"]), float(hyper["beta2"]), float(hyper["eps"]),
        float(hyper["weight_decay"]), 1.0 if grad_scale is None else 1.0 / float(grad_scale),
        0, 0, rule == "yogi", bool(amsgrad), bool(hyper["maximize"]), bool(hyper["decoupled_weight_decay"]),
    ]  # fmt: skip
    low = _LOW_PRECISION.pack(_PRECISION_CODES[lp.precision], bool(lp.stochastic_rounding), lp.block_size or 0)
    addresses = fused_cpu._check_steps(steps, steps)  # checked in _prepare: here for their addresses
    coefs, index, t = fused_cpu._step_coefficients(
        lib,
        steps,
        addresses,
        lr=hyper["lr"],
        beta1=hyper["beta1"],
        beta2=hyper["beta2"],
        bias_correction=hyper["bias_correction"],
    )
    for (p_dtype, s_dtype), call in calls.items():
        where, columns = call["where"], call["columns"]
        options[6] = fused_cpu._DTYPE_CODES[p_dtype]
        options[7] = _U8 if s_dtype == torch.uint8 else fused_cpu._DTYPE_CODES[s_dtype]
        # the kernel's table: sizes; addresses of θ, g, v, s (, max s); seeds; new step
        # counts; for 8-bit the addresses of v's and s's absmax
        state_columns = 5 if amsgrad else 4
        table = array("q", map(fused_cpu._numel, columns[0]))
        for column in columns[:state_columns]:
            table.extend(map(fused_cpu._data_ptr, column))
        table.extend(map(lp.seeds.__getitem__, call["ordinals"]))
        table.extend(int(t[i]) for i in where)
        for column in columns[state_columns:]:
            table.extend(map(fused_cpu._data_ptr, column))
        sub = None if index is None else array("q", map(index.__getitem__, where))
        fused_cpu._call(lib, table, len(where), coefs, sub, fused_cpu._OPTIONS.pack(*options), low)
        for dst, copy in call["back"]:
            dst.copy_(copy)
