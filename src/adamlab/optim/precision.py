"""Low-precision optimizer state in torch: the formats of :mod:`adamlab.reference`, and the
readable update that stores the moments in them.

The reference ("low-precision state") defines every format in NumPy: the counter-based
random bits, stochastic and nearest bfloat16 rounding, the two minifloat maps and the
blockwise 8-bit quantization. This module computes exactly the same bits with torch
operations (tested bit for bit against the reference), on any device, so the loop and
foreach paths, and a state_dict conversion, share one implementation:

* the 32-bit hash works on int64 tensors whose values are kept below 2^32 by a mask after
  every product (the low 32 bits of a wrapped 64-bit product are still exact);
* an element's index is its position in its tensor's *memory* order (:func:`flat`), and an
  8-bit block is B consecutive elements of that order: blocks never straddle two
  parameters, nor two shards (a DTensor's state is its local shard's);
* :func:`low_precision_update` decodes the stored moments to float32 temporaries, runs an
  implementation's own float32 update on them (the math is not repeated here), and encodes
  the new moments; the parameter update reads the new moments before they are rounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adamlab import reference

PRECISIONS = ("fp32", "bf16", "8bit")  # the values of state_precision besides None
LOW_PRECISIONS = ("bf16", "8bit")  # stored in fewer bits than float32: encoded and decoded
STREAM_V, STREAM_S, STREAM_PARAM, STREAM_S_MAX = (
    reference.STREAM_V,
    reference.STREAM_S,
    reference.STREAM_PARAM,
    reference.STREAM_S_MAX,
)
_MASK = reference.MASK32


class LowPrecision(NamedTuple):
    """Passed to an update as ``low_precision=`` (``None``: every tensor in its own dtype).

    ``precision`` is ``"bf16"``, ``"8bit"`` or ``None`` (moments stored in their own dtype:
    only the parameters are rounded stochastically). The lists run parallel to ``params``."""

    precision: str | None
    block_size: int  # 8bit: elements per block (a power of two)
    stochastic_rounding: bool  # bfloat16 parameters are rounded stochastically (stream 2)
    seeds: list[int]  # each parameter's seed (reference.parameter_seed), 0 <= seed < 2**32
    exp_avg_absmax: list[Tensor]  # 8bit: float32, one per block; else []
    exp_avg_sq_absmax: list[Tensor]


# ---- the hash ----------------------------------------------------------------------------
def mix32(x: Any) -> Any:
    """:func:`adamlab.reference.mix32` on a Python int or an int64 tensor (values in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def rounding_key(seed: int, t: Any, stream: int) -> Any:
    """:func:`adamlab.reference.rounding_key`; ``t`` an int, or a 0-dim tensor on the device
    (capturable: the key is computed there, no host synchronization)."""
    k = mix32(seed & _MASK)
    if isinstance(t, Tensor):
        t = t.to(torch.int64) & _MASK
    k = mix32(k ^ t)
    return mix32(k ^ ((stream * 0x9E3779B9) & _MASK))


def random_bits(key: Any, n: int, device: torch.device | str) -> Tensor:
    """:func:`adamlab.reference.random_bits` of the indices 0..n-1: int64 values in [0, 2^32)."""
    index = torch.arange(n, dtype=torch.int64, device=device)
    hi = mix32(index >> 32)
    return mix32(hi ^ (index & _MASK) ^ key)


def parameter_seed(seed: int, ordinal: int) -> int:
    """:func:`adamlab.reference.parameter_seed` (Python ints)."""
    return mix32((seed & _MASK) ^ mix32(ordinal & _MASK))


# ---- bfloat16 ----------------------------------------------------------------------------
def _bits32(x: Tensor) -> Tensor:
    """A float32 tensor's bit patterns as int64 in [0, 2^32)."""
    return x.contiguous().view(torch.int32).to(torch.int64) & _MASK


def _as_bf16(b: Tensor) -> Tensor:
    """int64 values in [0, 2^16) → the bfloat16 tensor with those bit patterns."""
    return torch.where(b >= 0x8000, b - 0x10000, b).to(torch.int16).view(torch.bfloat16)


def round_bf16_nearest(x: Tensor) -> Tensor:
    """float32 → bfloat16, round half to even, NaN → 0x7FC0 with its sign (the reference's)."""
    u = _bits32(x)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = ((u >> 16) & 0x8000) | 0x7FC0
    return _as_bf16(torch.where(torch.isnan(x), nan, rounded)).view(x.shape)


def round_bf16_stochastic(x: Tensor, bits: Tensor) -> Tensor:
    """float32 → bfloat16, rounding with the low 16 of ``bits`` (int64, same numel as x);
    non-finite values round to nearest (:func:`adamlab.reference.round_bf16_stochastic`)."""
    u = _bits32(x).view(-1)
    stochastic = _as_bf16((u + (bits & 0xFFFF)) >> 16).view(x.shape)
    return torch.where(torch.isfinite(x), stochastic, round_bf16_nearest(x))


# ---- the 8-bit maps ----------------------------------------------------------------------
def encode_minifloat(m: Tensor, exponent_bits: int, mantissa_bits: int, bias: int) -> Tensor:
    """:func:`adamlab.reference.encode_minifloat`: m in [0, 1] (float32) → int64 codes.

    The binade e is read from m's exponent field (a subnormal float32 m lies below every
    format's e_min and is clamped to it); the quantum 2^(e - mantissa_bits) is built from
    its bits, so dividing by it is exact and ``torch.round`` (half to even) is the only
    rounding: no table search, the same result on every device."""
    e_min = 1 - bias
    finite = torch.isfinite(m)
    e = ((_bits32(m) >> 23) & 0xFF) - 127  # ⌊log2 m⌋ for a normal m; 0 and subnormals: -127
    e = torch.where(finite & (m > 0), e.view(m.shape), e_min).clamp_min(e_min)
    quantum = ((e - mantissa_bits + 127) << 23).to(torch.int32).view(torch.float32)
    n = torch.round(torch.where(finite, m, 0.0) / quantum)
    return (e - e_min) * (1 << mantissa_bits) + n.to(torch.int64)


_MAPS: dict[tuple[bool, str], Tensor] = {}


def dynamic_map(signed: bool, device: torch.device | str) -> Tensor:
    """The 256 values of a code (:func:`adamlab.reference.dynamic_map`), float32 on ``device``."""
    device = torch.device(device)
    key = (signed, str(device))
    if key not in _MAPS:
        _MAPS[key] = torch.from_numpy(reference.dynamic_map(signed).copy()).to(device)
    return _MAPS[key]


def quantize_blockwise(x: Tensor, block_size: int, signed: bool) -> tuple[Tensor, Tensor]:
    """:func:`adamlab.reference.quantize_blockwise`: flat float32 → (uint8 codes, float32 absmax)."""
    n = x.numel()
    blocks = -(-n // block_size)
    padded = torch.zeros(blocks * block_size, dtype=torch.float32, device=x.device)
    padded[:n] = x
    padded = padded.view(blocks, block_size)
    magnitude = padded.abs()
    finite = torch.isfinite(padded).all(dim=1)
    absmax = torch.where(finite, magnitude.amax(dim=1), math.nan)
    scale = torch.where(absmax > 0, absmax, 1.0)[:, None]
    m = torch.where(finite[:, None], magnitude / scale, 0.0)
    codes = encode_minifloat(m, *(reference.SIGNED_FORMAT if signed else reference.UNSIGNED_FORMAT))
    if signed:
        codes = codes | torch.where(finite[:, None] & (padded < 0), 0x80, 0)
    return codes.view(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, block_size: int, signed: bool) -> Tensor:
    """:func:`adamlab.reference.dequantize_blockwise`: map[code] · absmax, float32, flat."""
    codes = codes.reshape(-1)
    scale = absmax.repeat_interleave(block_size)[: codes.numel()]
    return dynamic_map(signed, codes.device)[codes.to(torch.int64)] * scale


# ---- tensors in memory order ------------------------------------------------------------
def flat(t: Tensor) -> Tensor:
    """The 1-D view of ``t`` in its memory order (dense tensors of any layout: channels_last,
    a transpose); a tensor with gaps or overlaps is read in its logical order (a copy)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    permuted = t.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else t.reshape(-1)


def write_flat(t: Tensor, values: Tensor) -> None:
    """Store flat ``values`` (in :func:`flat`'s order of ``t``) into ``t``."""
    view = flat(t)
    if view.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        view.copy_(values)
    else:  # flat made a copy (a tensor with gaps): its logical order
        t.copy_(values.view(t.shape))


def empty_like_layout(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A new tensor with ``t``'s shape and layout (preserve_format)."""
    return torch.empty_like(t, dtype=dtype, memory_format=torch.preserve_format)


# ---- a moment, stored -------------------------------------------------------------------
def decode(stored: Tensor, absmax: Tensor | None, block_size: int, signed: bool) -> Tensor:
    """A stored moment as a new float32 tensor of its shape and layout (exact)."""
    out = empty_like_layout(stored, torch.float32)
    if stored.dtype == torch.uint8:
        write_flat(out, dequantize_blockwise(flat(stored), absmax, block_size, signed))
    else:
        out.copy_(stored)
    return out


def encode_(stored: Tensor, absmax: Tensor | None, values: Tensor, block_size: int, stream: int, key: Any) -> None:
    """Write float32 ``values`` (shaped like ``stored``) into the stored moment: uint8 by
    blockwise quantization (its absmax too), bfloat16 by stochastic rounding with the bits
    of ``key`` (for stream ``stream``; ``key=None``: to nearest), any other dtype to nearest."""
    if stored.dtype == torch.uint8:
        codes, new_absmax = quantize_blockwise(flat(values), block_size, signed=stream == STREAM_V)
        write_flat(stored, codes)
        absmax.copy_(new_absmax)
    elif stored.dtype == torch.bfloat16 and key is not None:
        source = flat(values)
        write_flat(stored, round_bf16_stochastic(source, random_bits(key, source.numel(), source.device)))
    else:
        stored.copy_(values)


def constant_state(
    like: Tensor, value: float, precision: str, block_size: int, signed: bool
) -> tuple[Tensor, Tensor | None]:
    """A moment of ``precision`` holding ``value`` everywhere, shaped like ``like``: bf16 the
    nearest bfloat16 of float32(value); 8bit each block quantized (absmax |value|)."""
    if precision == "bf16":
        stored = empty_like_layout(like, torch.bfloat16)
        stored.fill_(round_bf16_nearest(torch.tensor([value], dtype=torch.float32)).item())
        return stored, None
    codes, absmax = quantize_blockwise(torch.tensor([value], dtype=torch.float32), 1, signed)
    stored = empty_like_layout(like, torch.uint8)
    stored.fill_(int(codes[0]))
    return stored, torch.full((-(-_local(like).numel() // block_size),), float(absmax[0]), device=_local(like).device)


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (its state is per shard), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") and type(t).__name__ == "DTensor" else t


# ---- the update ----------------------------------------------------------------------------
def low_precision_update(
    update: Callable[..., None],
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    low_precision: LowPrecision,
    capturable: bool,
    amsgrad: bool,
    **hyper: Any,
) -> None:
    """One step of ``update`` (a float32 implementation) with stored moments decoded and encoded.

    Each stored moment becomes a float32 temporary (bf16 and 8-bit exactly; a moment already
    float32 is used as it is), a parameter that is not float32 a float32 copy when it needs
    float32 math (bfloat16 under stochastic rounding, or any moment stored in low precision).
    ``update`` runs the usual float32 step on those, then the new moments are encoded with the
    keys of the new t (streams :data:`STREAM_V`, :data:`STREAM_S`, :data:`STREAM_S_MAX`) and
    the parameters written back: bfloat16 ones stochastically (stream :data:`STREAM_PARAM`)
    when ``stochastic_rounding``, others to nearest.
    """
    lp = low_precision
    low = lp.precision in LOW_PRECISIONS
    block = lp.block_size
    v_absmax = lp.exp_avg_absmax or [None] * len(params)
    s_absmax = lp.exp_avg_sq_absmax or [None] * len(params)
    work_p, work_g, work_v, work_s, work_m = [], [], [], [], []
    for i, p in enumerate(params):
        wide = low or (lp.stochastic_rounding and p.dtype == torch.bfloat16)  # float32 math
        work_p.append(p.to(torch.float32) if wide and p.dtype != torch.float32 else p)
        g = grads[i]
        work_g.append(g.to(torch.float32) if wide and g.dtype != torch.float32 else g)
        work_v.append(
            decode(exp_avgs[i], v_absmax[i], block, True)
            if wide and exp_avgs[i].dtype != torch.float32
            else exp_avgs[i]
        )
        work_s.append(
            decode(exp_avg_sqs[i], s_absmax[i], block, False)
            if wide and exp_avg_sqs[i].dtype != torch.float32
            else exp_avg_sqs[i]
        )
        if amsgrad:
            m = max_exp_avg_sqs[i]
            work_m.append(decode(m, None, block, False) if wide and m.dtype != torch.float32 else m)
    update(rule, work_p, work_g, work_v, work_s, work_m, state_steps, capturable=capturable, amsgrad=amsgrad, **hyper)
    for i, p in enumerate(params):
        seed = lp.seeds[i] if lp.seeds else 0
        # the key of the new t: a device tensor when capturable (no host sync), else an int
        t = state_steps[i] if capturable else int(state_steps[i].item())
        # moments stored in their own dtype (precision None or "fp32") round to nearest: no key
        moment_seed = seed if lp.precision == "bf16" else None
        if work_v[i] is not exp_avgs[i]:
            encode_(exp_avgs[i], v_absmax[i], work_v[i], block, STREAM_V, _key(moment_seed, t, STREAM_V))
        if work_s[i] is not exp_avg_sqs[i]:
            encode_(exp_avg_sqs[i], s_absmax[i], work_s[i], block, STREAM_S, _key(moment_seed, t, STREAM_S))
        if amsgrad and work_m[i] is not max_exp_avg_sqs[i]:
            encode_(max_exp_avg_sqs[i], None, work_m[i], block, STREAM_S_MAX, _key(moment_seed, t, STREAM_S_MAX))
        if work_p[i] is not p:
            if lp.stochastic_rounding and p.dtype == torch.bfloat16:
                source = flat(work_p[i])
                bits = random_bits(rounding_key(seed, t, STREAM_PARAM), source.numel(), source.device)
                _write_like(p, work_p[i], round_bf16_stochastic(source, bits))
            else:
                p.copy_(work_p[i])


def _key(seed: int | None, t: Any, stream: int) -> Any:
    """rounding_key, or None (round to nearest) without a seed."""
    return None if seed is None else rounding_key(seed, t, stream)


def _write_like(p: Tensor, work: Tensor, rounded_flat: Tensor) -> None:
    """Write ``rounded_flat`` (the memory order of ``work``, which has p's layout) into p."""
    out = empty_like_layout(work, p.dtype)
    write_flat(out, rounded_flat)
    p.copy_(out)
