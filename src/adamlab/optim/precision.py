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

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adamlab import reference
from adamlab.optim._dtensor import local_tensor
from adamlab.validation import LOW_PRECISIONS, STATE_PRECISIONS

PRECISIONS = STATE_PRECISIONS[1:]  # the values of state_precision besides None
# LOW_PRECISIONS: stored in fewer bits than float32, encoded and decoded
# how each precision stores a moment (None: in the parameter's dtype)
STORED_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "8bit": torch.uint8}
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
# The hot path hashes int32 tensors holding the uint32 bit patterns: a product wraps modulo
# 2^32 in two's complement (the low 32 bits are those of the unsigned product) and a right
# shift is made logical by masking the bits the sign extension brought in. Python ints (the
# keys) are hashed as they are.
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B - (1 << 32)  # the second as its int32 value


def mix32(x: Any) -> Any:
    """:func:`adamlab.reference.mix32` on a Python int or an int64 tensor (values in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def _mix32_(x: Tensor) -> Tensor:
    """:func:`mix32` in place on an int32 tensor of uint32 bit patterns (the fast path)."""
    x ^= (x >> 16) & 0xFFFF
    x *= _MUL1
    x ^= (x >> 15) & 0x1FFFF
    x *= _MUL2
    x ^= (x >> 16) & 0xFFFF
    return x


def _as_int32(x: Any) -> Any:
    """A value in [0, 2^32) (int or int64 tensor) as the int32 with the same bits."""
    if isinstance(x, Tensor):
        return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)
    return x - (1 << 32) if x >= 1 << 31 else x


def rounding_key(seed: int, t: Any, stream: int) -> Any:
    """:func:`adamlab.reference.rounding_key`; ``t`` an int (its low 32 bits, as the
    reference's), or a 0-dim tensor on the device (capturable: the key is computed there,
    no host synchronization)."""
    k = mix32(seed & _MASK)
    t = t.to(torch.int64) & _MASK if isinstance(t, Tensor) else int(t) & _MASK
    k = mix32(k ^ t)
    return mix32(k ^ ((stream * 0x9E3779B9) & _MASK))


def random_bits32(key: Any, n: int, device: torch.device | str, offset: int = 0) -> Tensor:
    """The bits of :func:`random_bits` for the indices offset..offset+n-1, as an int32
    tensor of uint32 bit patterns (the form the rounding uses; no int64 temporary).

    The reference mixes the high word of an index in, ``mix32(index >> 32)``: that is
    mix32(0) = 0 below 2^32, and one constant over a range that does not cross a multiple
    of 2^32 (a range that does is split there)."""
    hi, last_hi = offset >> 32, (offset + max(n, 1) - 1) >> 32
    if hi != last_hi:
        head = ((hi + 1) << 32) - offset
        return torch.cat(
            [random_bits32(key, head, device, offset), random_bits32(key, n - head, device, offset + head)]
        )
    low = offset & _MASK
    if low + n <= 1 << 31:
        index = torch.arange(low, low + n, dtype=torch.int32, device=device)
    else:
        index = _as_int32(torch.arange(low, low + n, dtype=torch.int64, device=device))
    salt = key ^ mix32(hi) if hi else key
    index ^= _as_int32(salt)
    return _mix32_(index)


def random_bits(key: Any, n: int, device: torch.device | str, offset: int = 0) -> Tensor:
    """:func:`adamlab.reference.random_bits` of the indices offset..offset+n-1: int64 values
    in [0, 2^32) (:func:`random_bits32` widened)."""
    return random_bits32(key, n, device, offset).to(torch.int64) & _MASK


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


_NAN_BF16 = (0x7FC0, 0xFFC0 - 0x10000)  # the reference's NaN, + and -, as int16


def round_bf16_stochastic(x: Tensor, bits: Tensor) -> Tensor:
    """float32 → bfloat16, rounding with the low 16 of ``bits`` (int32 or int64, same numel
    as x) (:func:`adamlab.reference.round_bf16_stochastic`).

    In int32: a finite x's bits plus 16 random bits cannot overflow (|x| < 2^128 leaves the
    exponent field below 255), and the arithmetic shift keeps the sign's bits, so the high
    half is the rounded bfloat16. ±inf comes out unchanged (its low half is 0), as nearest
    rounding gives; only a NaN needs the reference's canonical 0x7FC0 with its sign."""
    u = x.contiguous().view(torch.int32).view(-1)
    low = bits.view(-1) & 0xFFFF
    out = ((u + (low if low.dtype == torch.int32 else low.to(torch.int32))) >> 16).to(torch.int16)
    nan = torch.isnan(x.view(-1) if x.is_contiguous() else x.reshape(-1))
    if out.device.type != "cpu" or bool(nan.any()):  # the CPU check is free; elsewhere no sync
        sign = torch.signbit(x.reshape(-1))
        out = torch.where(nan, torch.where(sign, _NAN_BF16[1], _NAN_BF16[0]).to(torch.int16), out)
    return out.view(torch.bfloat16).view(x.shape)


# ---- the 8-bit maps ----------------------------------------------------------------------
def encode_minifloat(m: Tensor, exponent_bits: int, mantissa_bits: int, bias: int) -> Tensor:
    """:func:`adamlab.reference.encode_minifloat`: m in [0, 1] (float32) → int32 codes.

    The binade e is read from m's exponent field (a subnormal float32 m lies below every
    format's e_min and is clamped to it, as is 0); the quantum 2^(e - mantissa_bits) is built
    from its bits, so dividing by it is exact and ``torch.round`` (half to even) is the only
    rounding: no table search, the same result on every device. A NaN m gives code 0."""
    e_min = 1 - bias
    field = (m.contiguous().view(torch.int32) >> 23) & 0xFF
    special = field == 0xFF  # NaN (and inf, outside the domain): code 0, as the reference's
    if m.device.type != "cpu" or bool(special.any()):
        m = torch.where(special, 0.0, m)
        field = torch.where(special, 0, field)
    e = field.sub_(127).clamp_min_(e_min)
    quantum = ((e - (mantissa_bits - 127)) << 23).view(torch.float32)
    n = torch.div(m, quantum).round_()
    return e.sub_(e_min).mul_(1 << mantissa_bits).add_(n.to(torch.int32))


_MAPS: dict[tuple[bool, str], Tensor] = {}


def dynamic_map(signed: bool, device: torch.device | str) -> Tensor:
    """The 256 values of a code (:func:`adamlab.reference.dynamic_map`), float32 on ``device``."""
    device = torch.device(device)
    key = (signed, str(device))
    if key not in _MAPS:
        _MAPS[key] = torch.from_numpy(reference.dynamic_map(signed).copy()).to(device)
    return _MAPS[key]


def block_count(numel: int, block_size: int) -> int:
    """The number of 8-bit blocks (absmax values) of a tensor of ``numel`` elements."""
    return -(-numel // block_size)


def quantize_blockwise(x: Tensor, block_size: int, signed: bool) -> tuple[Tensor, Tensor]:
    """:func:`adamlab.reference.quantize_blockwise`: flat float32 → (uint8 codes, float32 absmax).

    A block's absmax is ``amax(|x|)``, which is NaN or inf exactly when the block holds a
    non-finite value: such a block gets absmax NaN and codes 0."""
    x = x.reshape(-1)
    n = x.numel()
    blocks = block_count(n, block_size)
    if n % block_size:
        padded = torch.zeros(blocks * block_size, dtype=torch.float32, device=x.device)
        padded[:n] = x
    else:
        padded = x
    padded = padded.view(blocks, block_size)
    magnitude = padded.abs()
    absmax = magnitude.amax(dim=1)
    finite = torch.isfinite(absmax)
    every_finite = x.device.type == "cpu" and bool(finite.all())
    m = magnitude.div_(torch.where(absmax > 0, absmax, 1.0)[:, None])
    if not every_finite:
        m.masked_fill_(~finite[:, None], 0.0)
        absmax = torch.where(finite, absmax, math.nan)
    codes = encode_minifloat(m, *(reference.SIGNED_FORMAT if signed else reference.UNSIGNED_FORMAT))
    if signed:
        negative = padded < 0
        if not every_finite:
            negative &= finite[:, None]
        codes |= negative.to(torch.int32) << 7
    return codes.view(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, block_size: int, signed: bool) -> Tensor:
    """:func:`adamlab.reference.dequantize_blockwise`: map[code] · absmax, float32, flat."""
    codes = codes.reshape(-1)
    n = codes.numel()
    out = dynamic_map(signed, codes.device).index_select(0, codes.to(torch.int32))
    full = n // block_size
    out[: full * block_size].view(full, block_size).mul_(absmax[:full, None])
    if full * block_size < n:
        out[full * block_size :].mul_(absmax[full])
    return out


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


def same_memory_order(a: Tensor, b: Tensor) -> bool:
    """Whether the elements of ``a`` and ``b`` (same shape) lie in the same memory order."""
    if a.stride() == b.stride() or a.numel() <= 1:
        return True
    index = torch.arange(a.numel()).view(a.shape)
    return torch.equal(
        flat(empty_like_layout(a, torch.int64).copy_(index)), flat(empty_like_layout(b, torch.int64).copy_(index))
    )


def empty_like_layout(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A new tensor with ``t``'s shape and layout (preserve_format)."""
    return torch.empty_like(t, dtype=dtype, memory_format=torch.preserve_format)


# ---- a moment, stored -------------------------------------------------------------------
CHUNK = 1 << 20  # elements per piece: bounds every float32 (and int32) temporary of the readable path


def decode(stored: Tensor, absmax: Tensor | None, block_size: int, signed: bool) -> Tensor:
    """A stored moment as a new float32 tensor of its shape and layout (exact)."""
    out = empty_like_layout(stored, torch.float32)
    if stored.dtype == torch.uint8:
        write_flat(out, dequantize_blockwise(flat(stored), absmax, block_size, signed))
    else:
        out.copy_(stored)
    return out


def decode_piece(stored: Tensor, absmax: Tensor | None, start: int, stop: int, block_size: int, signed: bool) -> Tensor:
    """Elements start..stop of a stored moment's flat (memory order) view as float32: a
    new tensor (exact), or the view itself when the moment is float32. ``start`` is a
    multiple of the block size, so the piece's blocks are whole blocks of the moment."""
    piece = stored[start:stop]
    if piece.dtype == torch.uint8:
        return dequantize_blockwise(
            piece, absmax[start // block_size : block_count(stop, block_size)], block_size, signed
        )
    return piece.to(torch.float32)


def encode_piece_(
    stored: Tensor, absmax: Tensor | None, start: int, values: Tensor, block_size: int, stream: int, key: Any
) -> None:
    """Write float32 ``values`` into elements start.. of a stored moment's flat view:
    uint8 by blockwise quantization (the blocks' absmax too), bfloat16 by stochastic rounding
    with the bits of ``key`` at those indices (``key=None``: to nearest), else to nearest."""
    stop = start + values.numel()
    if stored.dtype == torch.uint8:
        codes, new_absmax = quantize_blockwise(values, block_size, signed=stream == STREAM_V)
        stored[start:stop].copy_(codes)
        first = start // block_size
        absmax[first : first + new_absmax.numel()].copy_(new_absmax)
    elif stored.dtype == torch.bfloat16 and key is not None:
        stored[start:stop].copy_(round_bf16_stochastic(values, random_bits32(key, stop - start, values.device, start)))
    else:
        stored[start:stop].copy_(values)


def encode_(stored: Tensor, absmax: Tensor | None, values: Tensor, block_size: int, stream: int, key: Any) -> None:
    """Write float32 ``values`` (shaped like ``stored``, in its layout) into the stored
    moment, :data:`CHUNK` elements at a time (:func:`encode_piece_`)."""
    target, copied = flat_rw(stored)
    source = flat(values)
    for start in range(0, source.numel(), CHUNK):
        encode_piece_(target, absmax, start, source[start : start + CHUNK], block_size, stream, key)
    if copied:
        stored.copy_(target.view(stored.shape))


def flat_rw(t: Tensor) -> tuple[Tensor, bool]:
    """:func:`flat` of ``t`` for writing, and whether it is a copy (a tensor with gaps, in
    its logical order) that must be copied back into ``t`` afterwards."""
    view = flat(t)
    return view, view.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()


# Under torch.compile the two entry points below run eagerly (a graph break each): their
# bit-level work (dtype views of bfloat16 and int16, data_ptr comparisons, cached constants)
# is what dynamo traces wrongly or recompiles for per parameter, and the readable path is not
# a fast path to compile (the fused kernels are; they run eagerly under compile too).
@torch.compiler.disable
def constant_state(
    like: Tensor, value: float, precision: str, block_size: int, signed: bool
) -> tuple[Tensor, Tensor | None]:
    """A moment of ``precision`` holding ``value`` everywhere, shaped like ``like``: bf16 the
    nearest bfloat16 of float32(value); 8bit each block quantized (absmax |value|, float32
    whatever the default dtype)."""
    fill, absmax = _constant(float(value), precision, signed)
    stored = empty_like_layout(like, STORED_DTYPES[precision])
    stored.fill_(fill)
    if absmax is None:
        return stored, None
    shard = local_tensor(like)
    blocks = block_count(shard.numel(), block_size)
    return stored, torch.full((blocks,), absmax, dtype=torch.float32, device=shard.device)


@functools.lru_cache(maxsize=64)
def _constant(value: float, precision: str, signed: bool) -> tuple[Any, float | None]:
    """The stored form of a constant (computed once per value: every new state needs it)."""
    if precision == "bf16":
        return round_bf16_nearest(torch.tensor([value], dtype=torch.float32)).item(), None
    codes, absmax = quantize_blockwise(torch.tensor([value], dtype=torch.float32), 1, signed)
    return int(codes[0]), float(absmax[0])


# ---- the update ----------------------------------------------------------------------------
@torch.compiler.disable
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

    A parameter that needs float32 math (any moment stored in low precision, or a bfloat16
    parameter under stochastic rounding) is walked in its memory order, in pieces of at most
    :data:`CHUNK` elements; pieces of several parameters are batched up to CHUNK elements
    per call of ``update``, so the float32 temporaries stay bounded whatever the sizes.
    For each batch: the stored moments of the pieces are decoded to float32 (bf16 and 8-bit
    exactly; a float32 moment is used in place), a non-float32 parameter copied to float32;
    ``update`` runs the usual float32 step on them, each piece with its own copy of the step
    count (so every piece sees the same t); then the new moments are encoded with the keys
    of the new t (streams :data:`STREAM_V`, :data:`STREAM_S`, :data:`STREAM_S_MAX`, random
    bits at the pieces' own indices) and the parameters written back: bfloat16 ones
    stochastically (stream :data:`STREAM_PARAM`) when ``stochastic_rounding``, others to
    nearest. Finally each step count takes the new t. Other parameters (stochastic rounding
    on, not bfloat16, moments in their own dtype) run ``update`` as they are.
    """
    lp = low_precision
    low = lp.precision in LOW_PRECISIONS
    wide = [i for i, p in enumerate(params) if low or (lp.stochastic_rounding and p.dtype == torch.bfloat16)]
    if len(wide) < len(params):
        plain = sorted(set(range(len(params))) - set(wide))
        pick = lambda tensors: [tensors[i] for i in plain]  # noqa: E731
        update(
            rule, pick(params), pick(grads), pick(exp_avgs), pick(exp_avg_sqs),
            pick(max_exp_avg_sqs) if amsgrad else [], pick(state_steps), capturable=capturable, amsgrad=amsgrad,
            **hyper,
        )  # fmt: skip
    if not wide:
        return
    walks = {i: _Walk(i, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lp, amsgrad) for i in wide}
    batch: list[tuple[_Walk, int, int]] = []
    size = 0
    for i in wide:
        n = walks[i].numel
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            batch.append((walks[i], start, stop))
            size += stop - start
            if size >= CHUNK:
                _run_batch(update, rule, batch, lp, capturable, amsgrad, hyper)
                batch, size = [], 0
    if batch:
        _run_batch(update, rule, batch, lp, capturable, amsgrad, hyper)
    for walk in walks.values():
        walk.finish()


def _walked(x: Tensor, like: Tensor, like_copied: bool) -> tuple[Tensor, Tensor | None]:
    """``x`` (shaped like ``like``) as a flat tensor in the order the walk reads ``like``: its
    memory order (a tensor with gaps, ``like_copied``: its logical order); and, where that is a
    copy, the copy shaped like ``x``, to write back (None: a view of ``x``)."""
    if x.stride() == like.stride():
        view, copied = flat_rw(x)
        return view, (view.view(x.shape) if copied else None)
    copy = x.contiguous() if like_copied else empty_like_layout(like, x.dtype).copy_(x)
    return flat(copy), copy


class _Walk:
    """One parameter of the readable low-precision path: flat views of its stored moments in
    their memory order, and the parameter and its gradient in the same order, and its new t.

    The walk follows the stored first moment's memory order (8-bit blocks run over it; it is
    the parameter's layout from the state's creation or loading): a parameter or gradient laid
    out otherwise -- a parameter with gaps, one whose layout changed after its state was made
    (``model.to(memory_format=...)``) -- is read through a copy in that order, and the
    parameter written back from it."""

    def __init__(self, i, params, grads, exp_avgs, exp_avg_sqs, maxes, steps, lp, amsgrad) -> None:
        self.stored = [exp_avgs[i], exp_avg_sqs[i]] + ([maxes[i]] if amsgrad else [])
        self.views = [flat_rw(s) for s in self.stored]
        like, like_copied = self.stored[0], self.views[0][1]
        p = self.param = params[i]
        self.p, self.p_copy = _walked(p, like, like_copied)
        self.g = _walked(grads[i], like, like_copied)[0]
        self.numel = self.p.numel()
        self.absmax = [lp.exp_avg_absmax[i] if lp.exp_avg_absmax else None,
                       lp.exp_avg_sq_absmax[i] if lp.exp_avg_sq_absmax else None, None][: len(self.stored)]  # fmt: skip
        for name, absmax in zip(("exp_avg_absmax", "exp_avg_sq_absmax"), self.absmax):
            if absmax is not None and absmax.numel() != block_count(self.numel, lp.block_size):
                raise ValueError(
                    f"the {name} of a parameter of shape {tuple(p.shape)} holds {absmax.numel()} block scales; "
                    f"block_size={lp.block_size} needs {block_count(self.numel, lp.block_size)}: block_size cannot "
                    "change after the first step (convert a state_dict with "
                    f"adamlab.convert_state_dict(state_dict, '8bit', block_size={lp.block_size}) and load it)"
                )
        self.step = steps[i]
        self.start_step = steps[i].clone()
        self.new_step: Tensor | None = None
        self.seed = lp.seeds[i] if lp.seeds else 0
        self.keys: dict[int, Any] = {}

    def key(self, stream: int, moment: bool, lp: LowPrecision, capturable: bool) -> Any:
        """The key of the new t for ``stream``; None (round to nearest) for a moment stored
        in its own dtype (precision None or "fp32")."""
        if moment and lp.precision != "bf16":
            return None
        if stream not in self.keys:
            t = self.new_step if capturable else int(self.new_step.item())
            self.keys[stream] = rounding_key(self.seed, t, stream)
        return self.keys[stream]

    def finish(self) -> None:
        """Write back what was walked in a copy, and the new step count."""
        if self.p_copy is not None:
            self.param.copy_(self.p_copy)
        for stored, (view, copied) in zip(self.stored, self.views):
            if copied:
                stored.copy_(view.view(stored.shape))
        if self.new_step is None:  # no element: the count moves all the same
            self.step.add_(1)
        else:
            self.step.copy_(self.new_step)


_STREAMS = (STREAM_V, STREAM_S, STREAM_S_MAX)


def _run_batch(update, rule, batch, lp, capturable, amsgrad, hyper) -> None:
    """Decode, update and encode one batch of (walk, start, stop) pieces."""
    block = lp.block_size
    work_p, work_g, steps = [], [], []
    work = [[], [], []]  # v, s, max s
    for walk, start, stop in batch:
        p = walk.p[start:stop]
        work_p.append(p if p.dtype == torch.float32 else p.to(torch.float32))
        work_g.append(walk.g[start:stop].to(torch.float32))
        for k, ((view, _), absmax) in enumerate(zip(walk.views, walk.absmax)):
            work[k].append(decode_piece(view, absmax, start, stop, block, signed=k == 0))
        steps.append(walk.start_step.clone())
    update(rule, work_p, work_g, work[0], work[1], work[2], steps, capturable=capturable, amsgrad=amsgrad, **hyper)
    for j, (walk, start, stop) in enumerate(batch):
        if walk.new_step is None:
            walk.new_step = steps[j]
        for k, ((view, _), absmax) in enumerate(zip(walk.views, walk.absmax)):
            values = work[k][j]
            if values.data_ptr() != view[start:stop].data_ptr():  # not updated in place
                encode_piece_(
                    view, absmax, start, values, block, _STREAMS[k], walk.key(_STREAMS[k], True, lp, capturable)
                )
        target = walk.p[start:stop]
        if work_p[j] is not target:
            if lp.stochastic_rounding and target.dtype == torch.bfloat16:
                key = walk.key(STREAM_PARAM, False, lp, capturable)
                target.copy_(round_bf16_stochastic(work_p[j], random_bits32(key, stop - start, target.device, start)))
            else:
                target.copy_(work_p[j])
