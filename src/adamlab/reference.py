"""The float64 reference: one step of Adam and of Yogi, in the chapter's notation.

This module is the oracle. It is slow on purpose and written to be read next to
*Dive into Deep Learning*, section 11.10 ("Adam"); every fast implementation in
adamlab (the torch loop, foreach, fused CPU, Triton, Keras, Gluon) is tested step by
step against it, parameters and every state tensor.

Notation (the chapter's, with the torch state key each maps to)::

    t   step count, starting at 1 on the first update       state["step"]
    v   leaky average of the gradient (first moment)         state["exp_avg"]
    s   leaky average of the squared gradient (second moment) state["exp_avg_sq"]
    η   learning rate ``lr``;  β1, β2 ``beta1``, ``beta2``;  ε ``eps``

One step, with every convention named::

    g ← -g                                      if maximize
    g ← g + λθ                                  if weight decay is "L2" (coupled)
    θ ← θ - ηλθ                                 if weight decay is decoupled (AdamW)
    v ← β1 v + (1 - β1) g
    s ← β2 s + (1 - β2) g²                      Adam
    s ← s - (1 - β2) sgn(s - g²) g²             Yogi  (the only line that differs)
    v̂ ← v / (1 - β1^t),  ŝ ← s / (1 - β2^t)     if bias_correction is True
    θ ← θ - η v̂ / (√ŝ + ε)                      ε *after* the square root

Conventions, each an explicit keyword:

* **ε placement** — after the square root, as in Kingma & Ba (2015) Algorithm 1,
  PyTorch and optax. Keras/TensorFlow's Adam, MXNet's ``adam`` and TF-Addons' Yogi add an
  "ε-hat" to the raw √s and bias-correct the step size instead
  (``θ ← θ - η_t v / (√s + ε̂)`` with ``η_t = η √(1-β2^t)/(1-β1^t)``). Dividing through
  by √(1-β2^t) gives ``η v̂ / (√ŝ + ε̂/√(1-β2^t))``: ε̂ is this module's
  **ε = ε̂ / √(1-β2^t)**, an ε that starts large (ε̂/√(1-β2) ≈ 31.6 ε̂ at t = 1 for
  β2 = 0.999) and falls to ε̂. ``eps_hat=True`` puts ε there (the ε given is then ε̂);
  with ``bias_correction=False`` nothing is corrected and the two placements coincide.
* **bias correction** — ``True`` (divide by 1 - β^t, t from 1), ``False`` (use v and
  s as they are: the start-up bias towards v0 = s0 = 0 the chapter describes), or
  ``"recursive"`` (keep the *debiased* estimates in the state and update them with
  step-dependent weights, so no division by 1 - β^t happens at step time; see
  :func:`first_moment` and :func:`second_moment`).
* **initial moments s0 and v0** — ``s0`` (torch: ``initial_accumulator_value``), ``v0``
  (torch: ``initial_exp_avg_value``). The chapter starts from v = s = 0; TF-Addons,
  optax and the Yogi paper's author start Yogi's s from 1e-6, and optax,
  ``torch_optimizer.Yogi`` and ``pytorch_optimizer.Yogi`` start v from 1e-6 too
  (TF-Addons starts v from 0). With bias correction a v0 ≠ 0 fades as β1^t.
* **AMSGrad** — PyTorch's form: keep the running maximum of the *raw* s, then
  bias-correct it. With ``bias_correction="recursive"`` the maximum is taken of the
  debiased estimate (the state holds nothing else).
* **weight decay** — ``decoupled_weight_decay=False`` adds λθ to the gradient (L2, as
  ``torch.optim.Adam``); ``True`` shrinks θ by ηλθ before the update (AdamW).
* **maximize** — ascend instead of descend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

import numpy as np

Rule = Literal["adam", "yogi"]
BiasCorrection = Union[bool, Literal["recursive"]]

RULES: tuple[str, ...] = ("adam", "yogi")


@dataclass(frozen=True)
class State:
    """Optimizer state of one parameter. ``t`` counts completed steps."""

    t: int
    v: np.ndarray
    s: np.ndarray
    s_max: np.ndarray | None = None


def init_state(theta: np.ndarray, *, s0: float = 0.0, v0: float = 0.0, amsgrad: bool = False) -> State:
    """The state before the first step: t = 0, v = v0, s = s0 (and max(s) = s0)."""
    theta = np.asarray(theta, dtype=np.float64)
    s = np.full_like(theta, s0)
    return State(t=0, v=np.full_like(theta, v0), s=s, s_max=s.copy() if amsgrad else None)


def first_moment(v: np.ndarray, g: np.ndarray, t: int, beta1: float, bias_correction: BiasCorrection) -> np.ndarray:
    """v ← β1 v + (1 - β1) g; the recursive form keeps v̂ directly.

    Recursive form: v̂_t = v̂_{t-1} + (g_t - v̂_{t-1}) · (1 - β1)/(1 - β1^t). It equals
    v_t/(1 - β1^t) when v_0 = 0, and its first step returns g_1 whatever v_0 is.
    """
    if bias_correction == "recursive":
        return v + (g - v) * ((1.0 - beta1) / (1.0 - beta1**t))
    return beta1 * v + (1.0 - beta1) * g


def second_moment(
    rule: Rule, s: np.ndarray, g: np.ndarray, t: int, beta2: float, bias_correction: BiasCorrection
) -> np.ndarray:
    """The one place where Adam and Yogi differ.

    Adam: s ← β2 s + (1 - β2) g²          (a leaky average: s moves by (1-β2)(g² - s))
    Yogi: s ← s - (1 - β2) sgn(s - g²) g²  (an additive step: s moves by at most (1-β2) g²)

    Recursive form (state holds ŝ), with c_t = 1 - β2^t and ρ_t = (1 - β2)/c_t:

    Adam: ŝ_t = (1 - ρ_t) ŝ_{t-1} + ρ_t g²
    Yogi: ŝ_t = (c_{t-1}/c_t) ŝ_{t-1} + ρ_t sgn(g² - c_{t-1} ŝ_{t-1}) g²

    Both follow from c_t ŝ_t = s_t and the raw update. The Yogi sign compares g² with
    the *raw* s_{t-1} = c_{t-1} ŝ_{t-1}, so Yogi's form cannot be a plain lerp. Both are
    written as weighted sums, not as ŝ + ρ(…), because at t = 1 (ρ_1 = 1) the latter
    subtracts s0 from itself and in low precision can round ŝ_1 to 0 (and gives NaN when
    g² overflows). Both forms equal the standard debiasing exactly when s0 = 0, and both
    give ŝ_1 = g².
    """
    g2 = g * g
    if bias_correction == "recursive":
        rho = (1.0 - beta2) / (1.0 - beta2**t)
        if rule == "adam":
            return (1.0 - rho) * s + rho * g2
        c_prev = 1.0 - beta2 ** (t - 1)
        return (c_prev / (1.0 - beta2**t)) * s + rho * np.sign(g2 - c_prev * s) * g2
    if rule == "adam":
        return beta2 * s + (1.0 - beta2) * g2
    return s - (1.0 - beta2) * np.sign(s - g2) * g2


def step(
    rule: Rule,
    theta: np.ndarray,
    g: np.ndarray,
    state: State,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    bias_correction: BiasCorrection = True,
    eps_hat: bool = False,
) -> tuple[np.ndarray, State]:
    """One step of ``rule`` ("adam" or "yogi") in float64. Pure: inputs are not modified.

    ``eps_hat=True`` reads ``eps`` as Keras's ε̂ (added to the raw √s): the ε used is
    ε̂/√(1 - β2^t) whenever s is bias-corrected (``True`` or ``"recursive"``).
    Returns the new parameters and the new :class:`State`.
    """
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {RULES})")
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    t = state.t + 1
    if maximize:
        g = -g
    if weight_decay != 0.0:
        if decoupled_weight_decay:
            theta = theta * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
    v = first_moment(state.v, g, t, beta1, bias_correction)
    s = second_moment(rule, state.s, g, t, beta2, bias_correction)
    s_max = None
    if amsgrad:
        s_max = np.maximum(state.s_max if state.s_max is not None else s, s)
    s_used = s_max if amsgrad else s
    if bias_correction is True:
        v_hat = v / (1.0 - beta1**t)
        s_hat = s_used / (1.0 - beta2**t)
    else:  # False: no correction; "recursive": the state already holds v̂ and ŝ
        v_hat, s_hat = v, s_used
    if eps_hat and bias_correction is not False:
        eps = eps / np.sqrt(1.0 - beta2**t)  # ε̂ next to √s is ε = ε̂/√(1-β2^t) next to √ŝ
    theta = theta - lr * v_hat / (np.sqrt(s_hat) + eps)
    as_array = np.asarray  # 0-dim inputs stay arrays, not NumPy scalars
    return as_array(theta), replace(
        state, t=t, v=as_array(v), s=as_array(s), s_max=None if s_max is None else as_array(s_max)
    )


def adam_step(theta: np.ndarray, g: np.ndarray, state: State, **hyper) -> tuple[np.ndarray, State]:
    """One Adam step; see :func:`step`."""
    return step("adam", theta, g, state, **hyper)


def yogi_step(theta: np.ndarray, g: np.ndarray, state: State, **hyper) -> tuple[np.ndarray, State]:
    """One Yogi step; see :func:`step`."""
    return step("yogi", theta, g, state, **hyper)


# ---- low-precision state -----------------------------------------------------------------
# The moments v and s may be *stored* in fewer bits than they are computed in. Every step
# decodes the stored state to float32, runs the update above, and encodes the new state:
#
#   "bf16"  v and s as bfloat16, rounded *stochastically*: a value between two bfloat16
#           neighbours goes to each with probability proportional to its nearness, so the
#           stored state is unbiased (E[round(x)] = x) and a leaky average keeps moving even
#           when a step's change is below half a bfloat16 ulp (round-to-nearest stalls).
#   "8bit"  v and s in blocks of B elements (a power of two; blocks never straddle two
#           parameters, the last one may be short), each block scaled by its own absmax and
#           every element rounded to the *nearest* entry of a 256-entry dynamic map: signed
#           for v, unsigned for s. The maps are small floating-point formats (an exponent gives
#           range, a mantissa precision), so "nearest entry" is IEEE round-half-to-even and
#           every backend computes it with a few exact operations, no table search:
#               v: sign + 4 exponent bits + 3 mantissa bits, bias 15   (1 = 2^0 ... 2^-17)
#               s:        5 exponent bits + 3 mantissa bits, bias 31   (1 = 2^0 ... 2^-33)
#           s never needs a sign: Adam's s is a weighted sum of squares, and Yogi's step moves
#           s by at most (1-β2)g² towards g², so from s >= 0 it stays >= 0 (if g² < s,
#           s - (1-β2)g² > s - g² > 0). Its bit goes to range instead: an s rounded to 0
#           would turn the step into v̂/ε.
#
# Stochastic rounding draws its random bits from a counter-based hash of (seed, t, stream,
# element index) -- no generator state -- so every backend draws the same bits, a resumed
# run continues exactly, and DDP replicas (same seeds) stay identical. The streams:
STREAM_V, STREAM_S, STREAM_PARAM, STREAM_S_MAX = 0, 1, 2, 3
MASK32 = 0xFFFFFFFF
SIGNED_FORMAT = (4, 3, 15)  # (exponent bits, mantissa bits, bias) of v's map
UNSIGNED_FORMAT = (5, 3, 31)  # of s's map


def mix32(x: np.ndarray) -> np.ndarray:
    """A bijective 32-bit integer mixer ("lowbias32": two multiply-xorshift rounds), uint32."""
    x = np.asarray(x, dtype=np.uint64) & MASK32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & MASK32
    x ^= x >> np.uint64(16)
    return x.astype(np.uint32)


def rounding_key(seed: int, t: int, stream: int) -> int:
    """The per-(tensor, step, stream) key: mix(mix(mix(seed) ^ t) ^ (stream·0x9E3779B9 mod 2^32))."""
    k = int(mix32(np.uint64(seed & MASK32)))
    k = int(mix32(np.uint64(k ^ (t & MASK32))))
    return int(mix32(np.uint64(k ^ ((stream * 0x9E3779B9) & MASK32))))


def random_bits(key: int, index: np.ndarray) -> np.ndarray:
    """32 random bits per element: mix(key ^ mix(index >> 32) ^ (index mod 2^32)), uint32.

    ``index`` is the element's position in the parameter's memory order (0, 1, ...)."""
    index = np.asarray(index, dtype=np.uint64)
    hi = mix32(index >> np.uint64(32)).astype(np.uint64)
    return mix32(np.uint64(key) ^ hi ^ (index & MASK32))


def parameter_seed(seed: int, ordinal: int) -> int:
    """The seed of the ordinal-th parameter (state_dict numbering) of an optimizer seeded ``seed``."""
    return int(mix32(np.uint64((seed & MASK32) ^ int(mix32(np.uint64(ordinal & MASK32))))))


def round_bf16_stochastic(x: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding with the low 16 of ``bits``.

    Add a uniform 16-bit integer to the float32 bit pattern and keep the top 16 bits: the
    magnitude rounds up with probability (distance from the lower neighbour)/(ulp). The sign
    is kept, so s >= 0 stays >= 0. Non-finite values round to nearest (NaN stays NaN)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    stochastic = ((u + (np.asarray(bits, dtype=np.uint64) & np.uint64(0xFFFF))) >> np.uint64(16)).astype(np.uint16)
    return np.where(np.isfinite(x), stochastic, round_bf16_nearest(x))


def round_bf16_nearest(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), round half to even (NaN → 0x7FC0 with its sign)."""
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint16)
    nan = ((u >> np.uint64(16)) & np.uint64(0x8000)).astype(np.uint16) | np.uint16(0x7FC0)
    return np.where(np.isnan(x), nan, rounded)


def bf16_to_float32(b: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    return (np.asarray(b, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def encode_minifloat(m: np.ndarray, exponent_bits: int, mantissa_bits: int, bias: int) -> np.ndarray:
    """m in [0, 1] (float32) → the code of the nearest value of the format, ties to even.

    With e = ⌊log2 m⌋ (−∞ for m = 0), e_min = 1 - bias and q = 2^(max(e, e_min) - mantissa_bits),
    the code is (max(e, e_min) - e_min)·2^mantissa_bits + rint(m / q): IEEE rounding to a small
    float with subnormals, where the code orders like the value. Every operation is exact
    except rint (half to even). A NaN m gives code 0."""
    m = np.asarray(m, dtype=np.float32)
    e_min = 1 - bias
    finite = np.isfinite(m)
    safe = np.where(finite & (m > 0), m, np.float32(1.0))
    e = np.where(finite & (m > 0), np.frexp(safe)[1] - 1, e_min)
    e = np.maximum(e, e_min)
    n = np.rint(np.where(finite, m, np.float32(0.0)) / np.ldexp(np.float32(1.0), e - mantissa_bits))
    return ((e - e_min) * (1 << mantissa_bits) + n.astype(np.int64)).astype(np.int64)


def decode_minifloat(code: np.ndarray, exponent_bits: int, mantissa_bits: int, bias: int) -> np.ndarray:
    """The value (float32, exact) of a code of :func:`encode_minifloat`'s format."""
    code = np.asarray(code, dtype=np.int64)
    field, mantissa = code >> mantissa_bits, code & ((1 << mantissa_bits) - 1)
    e_min = 1 - bias
    significand = np.where(field > 0, mantissa + (1 << mantissa_bits), mantissa)
    exponent = np.maximum(field, 1) - bias - mantissa_bits  # field 0: subnormal, same scale as field 1
    assert exponent_bits >= 1 and e_min == 1 - bias
    return np.ldexp(significand.astype(np.float32), exponent.astype(np.int32)).astype(np.float32)


def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 values (float32) a code stands for, indexed by code: the quantization map.

    Signed (v): bit 7 is the sign, bits 0-6 a :data:`SIGNED_FORMAT` magnitude. Unsigned (s):
    all 8 bits an :data:`UNSIGNED_FORMAT` magnitude. Codes above 1.0 (7 of them in each
    map) are never produced by :func:`quantize_blockwise`."""
    codes = np.arange(256)
    if signed:
        magnitude = decode_minifloat(codes & 0x7F, *SIGNED_FORMAT)
        return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)
    return decode_minifloat(codes, *UNSIGNED_FORMAT)


def quantize_blockwise(x: np.ndarray, block_size: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 values (flat, memory order) → (uint8 codes, float32 absmax per block).

    Per block: a = max |x| (exact); each element's m = |x| / a (IEEE division) is encoded to its
    nearest map entry; the sign, for the signed map, goes to bit 7 (-0.0 encodes as +0). An
    all-zero block stores a = 0 and codes 0. A block holding a non-finite value stores a = NaN
    (so it decodes to NaN, as an fp32 state would hold NaN) and codes 0."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    blocks = -(-n // block_size)
    padded = np.zeros(blocks * block_size, dtype=np.float32)
    padded[:n] = x
    padded = padded.reshape(blocks, block_size)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(padded).all(axis=1)
        absmax = np.where(finite, np.abs(padded).max(axis=1), np.float32(np.nan)).astype(np.float32)
        scale = np.where(absmax > 0, absmax, np.float32(1.0))[:, None]
        m = np.where(finite[:, None], np.abs(padded) / scale, np.float32(0.0)).astype(np.float32)
    fmt = SIGNED_FORMAT if signed else UNSIGNED_FORMAT
    codes = encode_minifloat(m, *fmt)
    if signed:
        codes = codes | np.where(finite[:, None] & (padded < 0), 0x80, 0)
    return codes.reshape(-1)[:n].astype(np.uint8), absmax


def dequantize_blockwise(codes: np.ndarray, absmax: np.ndarray, block_size: int, signed: bool) -> np.ndarray:
    """(uint8 codes, float32 absmax) → float32 values: map[code] · absmax of its block (one fp32 product)."""
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(absmax, dtype=np.float32), block_size)[: codes.size]
    return (dynamic_map(signed)[codes] * scale).astype(np.float32)


Precision = Literal["bf16", "8bit"]


def encode_moment(
    x: np.ndarray, stream: int, precision: Precision, *, t: int, seed: int, block_size: int = 256
) -> dict[str, np.ndarray]:
    """A moment as the optimizer stores it. ``x`` is rounded to float32 first (the kernels
    compute in float32); ``stream`` is :data:`STREAM_V` (signed map) or :data:`STREAM_S` /
    :data:`STREAM_S_MAX` (unsigned). Returns ``{"bits": uint16}`` (bf16) or
    ``{"codes": uint8, "absmax": float32}`` (8bit)."""
    x32 = np.asarray(x, dtype=np.float32).reshape(-1)
    if precision == "bf16":
        return {"bits": round_bf16_stochastic(x32, random_bits(rounding_key(seed, t, stream), np.arange(x32.size)))}
    if precision == "8bit":
        codes, absmax = quantize_blockwise(x32, block_size, signed=stream == STREAM_V)
        return {"codes": codes, "absmax": absmax}
    raise ValueError(f"Invalid precision: {precision!r} (expected 'bf16' or '8bit')")


def decode_moment(stored: dict[str, np.ndarray], stream: int, *, block_size: int = 256) -> np.ndarray:
    """The float32 values (flat) of a moment stored by :func:`encode_moment` (exact)."""
    if "bits" in stored:
        return bf16_to_float32(stored["bits"])
    return dequantize_blockwise(stored["codes"], stored["absmax"], block_size, signed=stream == STREAM_V)


def low_precision_step(
    rule: Rule,
    theta: np.ndarray,
    g: np.ndarray,
    state: State,
    *,
    precision: Precision,
    seed: int,
    block_size: int = 256,
    round_param: Literal["float32", "bf16_nearest", "bf16_stochastic"] = "float32",
    **hyper,
) -> tuple[np.ndarray, State, dict[str, dict[str, np.ndarray]]]:
    """One step with the moments stored in ``precision``: the float64 :func:`step` from the
    decoded state, then the new v and s (and max s) encoded. The parameter update uses the
    new moments *before* they are rounded for storage (as every kernel does: they are in its
    registers). ``seed`` is the parameter's own (:func:`parameter_seed`); ``state`` holds the
    decoded values (flat or shaped). ``round_param`` stores θ in float32, or in bfloat16
    rounded to nearest or stochastically (stream :data:`STREAM_PARAM`).

    Returns (θ, the new State holding the decoded moments, the stored form of each moment
    by name ``"v"``, ``"s"``, ``"s_max"``). θ is float64 for ``"float32"`` (callers compare
    it with a float32 parameter at float32 tolerance) and the bfloat16 value as float32 else."""
    theta_new, new = step(rule, theta, g, state, **hyper)
    shape = np.shape(theta_new)
    stored = {
        "v": encode_moment(new.v, STREAM_V, precision, t=new.t, seed=seed, block_size=block_size),
        "s": encode_moment(new.s, STREAM_S, precision, t=new.t, seed=seed, block_size=block_size),
    }
    if new.s_max is not None:
        stored["s_max"] = encode_moment(new.s_max, STREAM_S_MAX, precision, t=new.t, seed=seed, block_size=block_size)
    decoded = {
        name: decode_moment(enc, {"v": STREAM_V, "s": STREAM_S, "s_max": STREAM_S_MAX}[name], block_size=block_size)
        .astype(np.float64)
        .reshape(shape)
        for name, enc in stored.items()
    }
    new = replace(new, v=decoded["v"], s=decoded["s"], s_max=decoded.get("s_max"))
    if round_param == "float32":
        return theta_new, new, stored
    theta32 = np.asarray(theta_new, dtype=np.float32).reshape(-1)
    if round_param == "bf16_nearest":
        bits = round_bf16_nearest(theta32)
    elif round_param == "bf16_stochastic":
        key = rounding_key(seed, new.t, STREAM_PARAM)
        bits = round_bf16_stochastic(theta32, random_bits(key, np.arange(theta32.size)))
    else:
        raise ValueError(f"Invalid round_param: {round_param!r}")
    return bf16_to_float32(bits).reshape(shape), new, stored
