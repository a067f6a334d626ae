"""The Triton kernel behind ``fused=True`` on CUDA: one step of Adam or Yogi for many tensors.

This module imports Triton; :mod:`adamlab.optim.triton_fused` imports it lazily, so adamlab
runs without Triton. The same source is also loaded a second time with
``TRITON_INTERPRET=1`` (see ``triton_fused.kernel_module``) to run on CPU tensors in tests.

One launch updates every tensor of a group. Program ``pid`` owns one chunk of ``BLOCK``
elements of one tensor; it finds which by a binary search in the table's last row, the
first chunk of every tensor. The table is built on the host each step and uploaded in one
copy (int64, 9 rows of n + 1 columns)::

    row 0..5   addresses of θ, g, v (exp_avg), s (exp_avg_sq), max s, step count t
    row 6      numel of each tensor
    row 7      first chunk of each tensor (row 7[n] = the number of chunks; at least one per tensor)
    row 8      zeros: the programs of each tensor done so far (an atomic counter per tensor)

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
        s_max = tl.maximum(s_max, s)
        denom = tl.sqrt(s_max) / bc2_sqrt + eps
    else:
        denom = tl.sqrt(s) / bc2_sqrt + eps  # ε after the square root
    p = p - step_size * (v / denom)
    return p, v, s, s_max


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
    BLOCK: tl.constexpr,
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
        start = (pid - tl.load(first + i)) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        full = start + BLOCK <= numel
        mask = offs < numel
        if full:  # a full chunk: no mask, so loads and stores can be 16 bytes wide
            p = tl.load(p_ptr + offs).to(tl.float32)
            g = tl.load(g_ptr + offs).to(tl.float32)
            v = tl.load(v_ptr + offs).to(tl.float32)
            s = tl.load(s_ptr + offs).to(tl.float32)
        else:  # the tail of a tensor
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            s = tl.load(s_ptr + offs, mask=mask, other=1.0).to(tl.float32)
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
