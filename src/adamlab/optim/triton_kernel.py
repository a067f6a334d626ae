"""The Triton kernel behind ``fused=True`` on CUDA: one step of Adam or Yogi for many tensors.

This module imports Triton; :mod:`adamlab.optim.triton_fused` imports it lazily, so adamlab
runs without Triton. The same source is also loaded a second time with
``TRITON_INTERPRET=1`` (see ``triton_fused.kernel_module``) to run on CPU tensors in tests.

One launch updates every tensor of a group. Program ``pid`` owns one chunk of ``BLOCK``
elements of one tensor; it finds which by a binary search in the table's last row, the
first chunk of every tensor. The table is built on the host each step and uploaded in one
copy (int64, 9 rows of n + 1 columns; 12 with low-precision state)::

    row 0..5   addresses of θ, g, v (exp_avg), s (exp_avg_sq), max s, step count t
    row 6      numel of each tensor
    row 7      first chunk of each tensor (row 7[n] = the number of chunks; at least one per tensor)
    row 8      zeros: the programs of each tensor done so far (an atomic counter per tensor)
    row 9      low-precision state only: each tensor's rounding seed (reference.parameter_seed)
    row 10, 11 8-bit state only: addresses of the float32 absmax of v and of s, one per block

The update follows :func:`adamlab.reference.step` line by line, in float32 (parameters and
state may be bf16/fp16; they are widened on load and rounded once on store), with the
field names of :class:`adamlab._moments.Coefficients`::

    g ← g / grad_scale                           if a GradScaler passed grad_scale
    g ← -g                                       if maximize
    θ ← θ (1 - ηλ)   or   g ← g + λθ             decoupled or L2 weight decay
    v ← v + w1 (g - v)                           w1 = 1-β1
    s ← the rule's second-moment line            the only line where Adam and Yogi differ
    θ ← θ - step_size · v / (√s / bc2_sqrt + ε)  step_size = η/(1-β1^t), bc2_sqrt = √(1-β2^t)

The fused paths do not take ``bias_correction="recursive"`` (keep2 = c2_prev = 1 here).
The step count t lives on the device; every program reads the old count, and the last
program of a tensor to finish (a per-tensor atomic counter, row 8) writes t + 1.
step_size and bc2_sqrt are computed from t here (:func:`coefficients`), so no step needs a
host sync. With ``found_inf`` set every program skips everything, the count included.

Low-precision state (``MOMENTS``, ``PARAM_SR``; the formats are :mod:`adamlab.reference`'s
"low-precision state", computed here bit for bit): the stored moments are decoded to
float32, the update runs as above, the parameter is written from the new moments in
float32, and only then are the moments encoded for storage::

    MOMENTS 0   v, s stored in S_DTYPE, rounded to nearest (every specialisation before #14)
    MOMENTS 1   bfloat16, rounded stochastically with the bits of (seed, t, stream, index)
    MOMENTS 2   8-bit blockwise: one program per block (BLOCK = the block size), absmax of
                the new values by a max over the block, m = |x|/absmax by IEEE division,
                codes by exact integer rounding (the maps are minifloat formats)
    PARAM_SR    bfloat16 parameters rounded stochastically (stream 2)
    BF16_BY_BITS  interpreted runs only: Triton's interpreter truncates float32 → bfloat16
                casts, so there every bfloat16 store rounds to nearest by bit operations,
                as the GPU's conversion does (compiled kernels keep the cast)

The random bits need no host work: each program computes its keys from the tensor's seed
(row 9) and the new t it has just read from the device, and the element index is the
element's position in memory.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def complement_pow(d, n):
    """1 - (1-d)^n for an integer n >= 0, accurate to float32 rounding for d near 0.

    Working from β itself in float32 loses digits to cancellation: with β2 = 0.999
    rounded to float32, 1 - β2^t is off by 1.3e-5 relative for every t tried (1 to 100).
    Here d = 1-β arrives already rounded (computed in float64 on the host), and binary
    exponentiation on complements has no cancellation: (1-x)(1-y) = 1 - (x + y(1-x)),
    every term positive.
    """
    acc = d * 0.0
    base = d
    while n > 0:
        if n % 2 == 1:
            acc = acc + base * (1.0 - acc)
        base = base + base * (1.0 - base)
        n = n // 2
    return acc


@triton.jit
def coefficients(t, lr, w1, w2, BIAS_CORRECTION: tl.constexpr):
    """The t-dependent fields of :func:`adamlab._moments.coefficients`: (step_size, bc2_sqrt)."""
    step_size = lr
    bc2_sqrt = 1.0
    if BIAS_CORRECTION:
        n = t.to(tl.int32)
        step_size = lr / complement_pow(w1, n)
        bc2_sqrt = tl.sqrt(complement_pow(w2, n))
    return step_size, bc2_sqrt


@triton.jit
def sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def update(p, g, v, s, s_max, w1, w2, step_size, bc2_sqrt, eps, YOGI: tl.constexpr, AMSGRAD: tl.constexpr):
    """One step on float32 blocks (g already scaled, negated and weight-decayed)."""
    v = v + w1 * (g - v)
    g2 = g * g
    if YOGI:  # s ← s + w2 sgn(g² - s) g²     (the one line where Adam and Yogi differ)
        s = s + w2 * (sign(g2 - s) * g2)
    else:  # s ← β2 s + w2 g², as s + w2 (g² - s)
        s = s + w2 * (g2 - s)
    if AMSGRAD:
        # the running max keeps a NaN from either side, as torch.maximum and the CPU kernel do
        # (tl.maximum would drop it)
        s_max = tl.where((s_max > s) | (s_max != s_max), s_max, s)
        denom = tl.sqrt(s_max) / bc2_sqrt + eps
    else:
        denom = tl.sqrt(s) / bc2_sqrt + eps  # ε after the square root
    p = p - step_size * (v / denom)
    return p, v, s, s_max


# ---- low-precision state: adamlab.reference's functions, bit for bit ----------------------
# stream · 0x9E3779B9 mod 2^32 for the streams v, s, parameter, max s (reference.rounding_key)
SALT_V = tl.constexpr(0)
SALT_S = tl.constexpr(0x9E3779B9)
SALT_PARAM = tl.constexpr(0x3C6EF372)
SALT_S_MAX = tl.constexpr(0xDAA66D2B)
SIGN_BIT = tl.constexpr(0x80)


@triton.jit
def mix32(x):
    """reference.mix32 on uint32 values (products wrap modulo 2^32, shifts are logical)."""
    x ^= x >> 16
    x = x * 0x7FEB352D
    x ^= x >> 15
    x = x * 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def stream_key(seed_t, SALT: tl.constexpr):
    """reference.rounding_key(seed, t, stream) from seed_t = mix(mix(seed) ^ t) (uint32 scalars)."""
    return mix32(seed_t ^ tl.full((), SALT, tl.uint32))


@triton.jit
def index_words(start, offs):
    """The element indices ``offs`` (int64, from ``start``, the first of a block of a power of
    two elements) as reference.random_bits takes them: (mix(index >> 32), index mod 2^32). The
    high word is mixed once per program: a block never straddles a multiple of 2^32."""
    return mix32((start >> 32).to(tl.uint32)), offs.to(tl.uint32)


@triton.jit
def random_bits(key, hi, lo):
    """reference.random_bits from :func:`index_words`' (hi, lo)."""
    return mix32(key ^ hi ^ lo)


@triton.jit
def round_bf16_stochastic(x, bits):
    """reference.round_bf16_stochastic: float32 → bfloat16, adding the low 16 random bits to
    the bit pattern; infinities stay, a NaN becomes the quiet NaN with its sign."""
    u = x.to(tl.uint32, bitcast=True)
    stochastic = (u + (bits & 0xFFFF)) >> 16  # < 2^32 for every finite x: no wrap
    special = (u & 0x7F800000) == 0x7F800000  # inf or NaN
    nan = special & ((u & 0x7FFFFF) != 0)
    nearest = tl.where(nan, ((u >> 16) & 0x8000) | 0x7FC0, u >> 16)  # an infinity's low half is 0
    return tl.where(special, nearest, stochastic).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def round_bf16_nearest(x):
    """reference.round_bf16_nearest: float32 → bfloat16, ties to even, by bit operations: what
    the GPU's conversion does. Triton's interpreter truncates its float32 → bfloat16 casts (and
    its explicit "rtne" mode rounds ties away), so interpreted kernels (BF16_BY_BITS) round here."""
    u = x.to(tl.uint32, bitcast=True)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # an infinity stays, a finite max rounds to it
    nan = ((u & 0x7F800000) == 0x7F800000) & ((u & 0x7FFFFF) != 0)
    return tl.where(nan, ((u >> 16) & 0x8000) | 0x7FC0, rounded).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def encode_minifloat(m, MANTISSA: tl.constexpr, BIAS: tl.constexpr):
    """reference.encode_minifloat for finite m in [0, 1]: the code (int32) of the nearest value,
    ties to even, by integer operations on m's bits (exact; no rint, no division).

    m = sig · 2^(E-23) with E = max(biased, 1) - 127 (sig without the implicit bit for a float32
    subnormal); the format's exponent is e = max(E, 1 - BIAS), its step 2^(e - MANTISSA), so the
    mantissa count is sig shifted right by k = 23 - MANTISSA + e - E, rounded half to even.
    k >= 23 - MANTISSA; from k = 25 on every sig (< 2^24) is below half a step: 0."""
    u = m.to(tl.int32, bitcast=True)
    biased = u >> 23  # m >= 0: no sign bit
    e = tl.maximum(biased - 127, 1 - BIAS)
    sig = (u & 0x7FFFFF) | tl.where(biased > 0, 0x800000, 0)
    k = tl.minimum(23 - MANTISSA + e - (tl.maximum(biased, 1) - 127), 25)
    n = (sig + (1 << (k - 1)) - 1 + ((sig >> k) & 1)) >> k  # a carry to 2^(MANTISSA+1) is the next exponent
    return (e - (1 - BIAS)) * (1 << MANTISSA) + n


@triton.jit
def decode_minifloat(code, MANTISSA: tl.constexpr, BIAS: tl.constexpr):
    """reference.decode_minifloat: the float32 value of an int32 code (exact: a small integer
    times a power of two built from its exponent bits)."""
    field = code >> MANTISSA
    mantissa = code & ((1 << MANTISSA) - 1)
    significand = tl.where(field > 0, mantissa + (1 << MANTISSA), mantissa)
    exponent = tl.maximum(field, 1) - BIAS - MANTISSA  # >= -33: a normal float32 power of two
    return significand.to(tl.float32) * ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def dequantize_block(codes, absmax, SIGNED: tl.constexpr):
    """reference.dequantize_blockwise for one block: map[code] · absmax (one float32 product).
    Maps: v signed, sign bit 7 and (4, 3, 15) magnitude; s unsigned (5, 3, 31)."""
    c = codes.to(tl.int32)
    if SIGNED:
        magnitude = decode_minifloat(c & 0x7F, 3, 15)
        value = tl.where(c >= SIGN_BIT, -magnitude, magnitude)
    else:
        value = decode_minifloat(c, 3, 31)
    return value * absmax


@triton.jit
def maximum(a, b):  # tl.reduce's combine (tl.max is a @jit of Triton's own, which the
    return tl.maximum(a, b)  # interpreted copy of this module cannot call)


@triton.jit
def quantize_block(x, mask, SIGNED: tl.constexpr):
    """reference.quantize_blockwise for one block of float32 values: (uint8 codes, absmax).

    absmax is the exact max |x| (tl.max over the block's elements); m = |x| / absmax by IEEE
    division (div_rn: Triton's ``/`` is approximate on CUDA, and a code must not depend on
    it). An all-zero block keeps absmax 0 and codes 0; a block holding a non-finite value
    stores absmax NaN and codes 0."""
    a = tl.abs(x)
    inf = tl.full((), 0x7F800000, tl.uint32).to(tl.float32, bitcast=True)
    finite = (a.to(tl.uint32, bitcast=True) & 0x7F800000) != 0x7F800000
    # one reduction: a non-finite element (inf or NaN) counts as inf, so the block is bad
    # exactly when its max is inf; lanes past the tensor's end count as 0
    absmax = tl.reduce(tl.where(mask, tl.where(finite, a, inf), 0.0), 0, maximum)
    bad = absmax == inf
    a = tl.where(finite, a, 0.0)
    m = tl.math.div_rn(a, tl.where(absmax > 0, absmax, 1.0))
    if SIGNED:
        codes = encode_minifloat(m, 3, 15) | tl.where(x < 0, SIGN_BIT, 0)
    else:
        codes = encode_minifloat(m, 3, 31)
    codes = tl.where(bad, 0, codes)
    absmax = tl.where(bad, tl.full((), 0x7FC00000, tl.uint32).to(tl.float32, bitcast=True), absmax)
    return codes.to(tl.uint8), absmax


@triton.jit
def widen(x, MOMENTS: tl.constexpr):
    """A loaded moment in float32 for the update; 8-bit codes stay codes (decoded with their
    block's absmax once it is loaded)."""
    if MOMENTS != 2:
        x = x.to(tl.float32)
    return x


@triton.jit
def adam_family_kernel(
    table_ptr,  # int64 [9, n + 1]: see the module docstring
    n,  # number of tensors
    lr,  # float, unless LR_ON_DEVICE
    lr_ptr,  # 0-dim float32 tensor when LR_ON_DEVICE
    grad_scale_ptr,
    found_inf_ptr,
    w1,
    w2,
    eps,
    weight_decay,
    YOGI: tl.constexpr,
    BIAS_CORRECTION: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    LR_ON_DEVICE: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    P_DTYPE: tl.constexpr,
    G_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr,  # every address is a multiple of 16 bytes: vector loads
    BLOCK: tl.constexpr,  # MOMENTS 2: the block size of the 8-bit state
    MOMENTS: tl.constexpr,  # 0: in S_DTYPE, 1: bfloat16 rounded stochastically, 2: 8-bit blockwise
    PARAM_SR: tl.constexpr,  # bfloat16 parameters rounded stochastically
    BF16_BY_BITS: tl.constexpr,  # the interpreter: round to bfloat16 by bit operations, not by a cast
):
    pid = tl.program_id(0)
    skip = 0.0
    if HAS_FOUND_INF:
        skip = tl.load(found_inf_ptr).to(tl.float32)
    if skip == 0.0:
        width = n + 1
        first = table_ptr + 7 * width
        lo = pid * 0  # the tensor i with first[i] <= pid < first[i + 1]
        hi = n + pid * 0  # a tensor: Triton passes n == 1 as a constant
        while hi - lo > 1:
            mid = (lo + hi) // 2
            right = tl.load(first + mid) <= pid
            lo = tl.where(right, mid, lo)
            hi = tl.where(right, hi, mid)
        i = lo
        p_ptr = tl.load(table_ptr + i).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(table_ptr + width + i).to(tl.pointer_type(G_DTYPE))
        v_ptr = tl.load(table_ptr + 2 * width + i).to(tl.pointer_type(S_DTYPE))
        s_ptr = tl.load(table_ptr + 3 * width + i).to(tl.pointer_type(S_DTYPE))
        m_ptr = tl.load(table_ptr + 4 * width + i).to(tl.pointer_type(S_DTYPE))
        step_ptr = tl.load(table_ptr + 5 * width + i).to(tl.pointer_type(tl.float32))
        numel = tl.load(table_ptr + 6 * width + i)
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            s_ptr = tl.multiple_of(s_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)

        # Issue the loads first: they stay in flight while the scalars below are computed.
        chunk = pid - tl.load(first + i)
        start = chunk * BLOCK
        offs = start + tl.arange(0, BLOCK)
        full = start + BLOCK <= numel
        mask = offs < numel
        if full:  # a full chunk: no mask, so loads and stores can be 16 bytes wide
            p = tl.load(p_ptr + offs).to(tl.float32)
            g = tl.load(g_ptr + offs).to(tl.float32)
            v = widen(tl.load(v_ptr + offs), MOMENTS)
            s = widen(tl.load(s_ptr + offs), MOMENTS)
        else:  # the tail of a tensor
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = widen(tl.load(v_ptr + offs, mask=mask, other=0.0), MOMENTS)
            s = widen(tl.load(s_ptr + offs, mask=mask, other=1.0), MOMENTS)
        if MOMENTS == 2:  # 8-bit codes: this program's block is the tensor's block `chunk`
            has_block = start < numel  # an empty tensor has no block (its program only counts t)
            v_absmax_ptr = tl.load(table_ptr + 10 * width + i).to(tl.pointer_type(tl.float32))
            s_absmax_ptr = tl.load(table_ptr + 11 * width + i).to(tl.pointer_type(tl.float32))
            v = dequantize_block(v, tl.load(v_absmax_ptr + chunk, mask=has_block, other=0.0), True)
            s = dequantize_block(s, tl.load(s_absmax_ptr + chunk, mask=has_block, other=0.0), False)
        s_max = s
        if AMSGRAD:
            if full:
                s_max = tl.load(m_ptr + offs).to(tl.float32)
            else:
                s_max = tl.load(m_ptr + offs, mask=mask, other=1.0).to(tl.float32)

        if LR_ON_DEVICE:
            lr = tl.load(lr_ptr).to(tl.float32)
        t = tl.load(step_ptr) + 1.0  # every program reads the old count
        step_size, bc2_sqrt = coefficients(t, lr, w1, w2, BIAS_CORRECTION)
        if HAS_GRAD_SCALE:
            g = g * (1.0 / tl.load(grad_scale_ptr).to(tl.float32))
        if MAXIMIZE:
            g = -g
        if HAS_WEIGHT_DECAY:
            if DECOUPLED:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        p, v, s, s_max = update(p, g, v, s, s_max, w1, w2, step_size, bc2_sqrt, eps, YOGI, AMSGRAD)
        # p is final; only now are the moments rounded for storage
        if MOMENTS == 1 or PARAM_SR:  # the streams' keys from the seed and the new t
            seed_t = mix32(mix32(tl.load(table_ptr + 9 * width + i).to(tl.uint32)) ^ t.to(tl.uint32))
            index_hi, index_lo = index_words(start, offs)
        if PARAM_SR:
            p = round_bf16_stochastic(p, random_bits(stream_key(seed_t, SALT_PARAM), index_hi, index_lo))
        if MOMENTS == 1:
            v = round_bf16_stochastic(v, random_bits(stream_key(seed_t, SALT_V), index_hi, index_lo))
            s = round_bf16_stochastic(s, random_bits(stream_key(seed_t, SALT_S), index_hi, index_lo))
            if AMSGRAD:
                s_max = round_bf16_stochastic(s_max, random_bits(stream_key(seed_t, SALT_S_MAX), index_hi, index_lo))
        if MOMENTS == 2:
            v, v_absmax = quantize_block(v, mask, True)
            s, s_absmax = quantize_block(s, mask, False)
            tl.store(v_absmax_ptr + chunk, v_absmax, mask=has_block)
            tl.store(s_absmax_ptr + chunk, s_absmax, mask=has_block)
        if BF16_BY_BITS:  # interpreted: the casts below would truncate (see round_bf16_nearest)
            if P_DTYPE == tl.bfloat16 and not PARAM_SR:
                p = round_bf16_nearest(p)
            if S_DTYPE == tl.bfloat16 and MOMENTS == 0:
                v = round_bf16_nearest(v)
                s = round_bf16_nearest(s)
                s_max = round_bf16_nearest(s_max)
        if full:
            tl.store(p_ptr + offs, p.to(P_DTYPE))
            tl.store(v_ptr + offs, v.to(S_DTYPE))
            tl.store(s_ptr + offs, s.to(S_DTYPE))
            if AMSGRAD:
                tl.store(m_ptr + offs, s_max.to(S_DTYPE))
        else:
            tl.store(p_ptr + offs, p.to(P_DTYPE), mask=mask)
            tl.store(v_ptr + offs, v.to(S_DTYPE), mask=mask)
            tl.store(s_ptr + offs, s.to(S_DTYPE), mask=mask)
            if AMSGRAD:
                tl.store(m_ptr + offs, s_max.to(S_DTYPE), mask=mask)

        # The last program of tensor i to get here writes t: all others have read the old
        # count before their atomic.
        done = tl.atomic_add(table_ptr + 8 * width + i, 1)
        if done == tl.load(first + i + 1) - tl.load(first + i) - 1:
            tl.store(step_ptr, t)
