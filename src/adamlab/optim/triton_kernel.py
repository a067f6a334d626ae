"""The Triton kernel behind ``fused=True`` on CUDA: one step of Adam or Yogi for many tensors.

This module imports Triton; :mod:`adamlab.optim.triton_fused` imports it lazily, so adamlab
runs without Triton. The same source is also loaded a second time with
``TRITON_INTERPRET=1`` (see ``triton_fused._kernel_module``) to run on CPU tensors in tests.

One launch updates every tensor of a group. Program ``pid`` owns one chunk of ``BLOCK``
elements of one tensor; it finds which through a device-side table built once on the host
(``triton_fused._Launch``) and reused across steps:

    chunks[pid, 0]  tensor index i       chunks[pid, 1]  chunk index c within tensor i
    meta[i, k]      addresses of p, v (exp_avg), s (exp_avg_sq), max(s), step  (k = 0..4)
    meta[i, 5]      numel of tensor i     meta[i, 6]      number of chunks of tensor i
    meta[i, 7]      unused (a row is 64 bytes)
    grads[i]        address of tensor i's gradient

The gradient addresses are a table of their own: ``zero_grad(set_to_none=True)`` gives new
gradient buffers every step, and switching tables (kept by content) costs no rebuild.

The update follows :func:`adamlab.reference.step` line by line, in float32 (parameters and
state may be bf16/fp16; they are widened on load and rounded once on store)::

    g ← g / grad_scale                           if a GradScaler passed grad_scale
    g ← -g                                       if maximize
    θ ← θ (1 - ηλ)   or   g ← g + λθ             decoupled or L2 weight decay
    v ← v + w1 (g - v)                           w1 = 1-β1   (recursive: (1-β1)/(1-β1^t))
    s ← the rule's second-moment line            the only line where Adam and Yogi differ
    θ ← θ - step_size · v / (√s / bc2 + ε)       step_size = η/(1-β1^t), bc2 = √(1-β2^t)

The step count t lives on the device. Every program reads the old count; the last program
of a tensor to finish (a per-tensor atomic counter, reset by that program) writes t. With
``found_inf`` set, every program skips everything, the count included: no host sync.
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
def sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def update(
    p,
    g,
    v,
    s,
    s_max,
    inv_scale,
    lr,
    weight_decay,
    w1,
    w2,
    one_minus_beta2,
    c2_prev,
    keep2,
    step_size,
    bc2_sqrt,
    eps,
    RULE: tl.constexpr,
    RECURSIVE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
):
    """One step on float32 blocks; returns the new (θ, v, s, max s)."""
    if HAS_GRAD_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    if HAS_WEIGHT_DECAY:
        if DECOUPLED:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    v = v + w1 * (g - v)
    g2 = g * g
    # ---- the second moment: the one place where Adam and Yogi differ -------------------
    # Recursive forms are weighted sums, never ŝ + ρ_t (… - ŝ): at t = 1 (ρ_1 = 1) that
    # subtracts s0 from itself and rounds ŝ_1 to 0 in float32 when g² << s0.
    if RULE == 0:  # Adam
        if RECURSIVE:  # ŝ ← (1 - ρ_t) ŝ + ρ_t g²
            s = (1.0 - w2) * s + w2 * g2
        else:  # s ← β2 s + (1-β2) g²
            s = s + w2 * (g2 - s)
    else:  # Yogi
        if RECURSIVE:  # ŝ ← (c_{t-1}/c_t) ŝ + ρ_t sgn(g² - c_{t-1} ŝ) g²
            s = keep2 * s + w2 * (sign(g2 - c2_prev * s) * g2)
        else:  # s ← s - (1-β2) sgn(s - g²) g²
            s = s - one_minus_beta2 * sign(s - g2) * g2
    # -------------------------------------------------------------------------------------
    if AMSGRAD:
        s_max = tl.maximum(s_max, s)
        denom = tl.sqrt(s_max) / bc2_sqrt + eps
    else:
        denom = tl.sqrt(s) / bc2_sqrt + eps
    p = p - step_size * (v / denom)
    return p, v, s, s_max


@triton.jit(do_not_specialize_on_alignment=["lr_ptr", "grad_scale_ptr", "found_inf_ptr"])
def adam_family_kernel(
    meta_ptr,  # int64 [n_tensors, 8]: see the module docstring
    grads_ptr,  # int64 [n_tensors]: gradient addresses
    chunks_ptr,  # int32 [n_chunks, 2]
    counters_ptr,  # int32 [n_tensors], all zero between launches
    lr,  # float, unless LR_ON_DEVICE
    lr_ptr,  # 0-dim float32 tensor when LR_ON_DEVICE
    grad_scale_ptr,
    found_inf_ptr,
    one_minus_beta1,
    one_minus_beta2,
    eps,
    weight_decay,
    RULE: tl.constexpr,  # 0 Adam, 1 Yogi
    BIAS_CORRECTION: tl.constexpr,  # 0 off, 1 on, 2 recursive
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
        # Rows, not columns: a program's table entries share one cache line.
        i = tl.load(chunks_ptr + 2 * pid)
        c = tl.load(chunks_ptr + 2 * pid + 1)
        row = meta_ptr + 8 * i.to(tl.int64)
        p_ptr = tl.load(row).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(grads_ptr + i).to(tl.pointer_type(G_DTYPE))
        v_ptr = tl.load(row + 1).to(tl.pointer_type(S_DTYPE))
        s_ptr = tl.load(row + 2).to(tl.pointer_type(S_DTYPE))
        m_ptr = tl.load(row + 3).to(tl.pointer_type(S_DTYPE))
        step_ptr = tl.load(row + 4).to(tl.pointer_type(tl.float32))
        numel = tl.load(row + 5)
        tensor_chunks = tl.load(row + 6)
        if ALIGNED:
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            s_ptr = tl.multiple_of(s_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)

        # Issue the loads first: they stay in flight while the scalars below are computed.
        start = c.to(tl.int64) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        full = start + BLOCK <= numel
        mask = offs < numel
        if full:  # a full chunk: no mask, so loads and stores can be 16 bytes wide
            p = tl.load(p_ptr + offs).to(tl.float32)
            g = tl.load(g_ptr + offs).to(tl.float32)
            v = tl.load(v_ptr + offs).to(tl.float32)
            s = tl.load(s_ptr + offs).to(tl.float32)
        else:  # the tail of a tensor (or an empty tensor's only chunk)
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

        # ---- per-step scalars (adamlab.optim._coefficients, in float32) -----------------
        t = tl.load(step_ptr) + 1.0
        n = t.to(tl.int32)
        if LR_ON_DEVICE:
            lr = tl.load(lr_ptr).to(tl.float32)
        inv_scale = 1.0
        if HAS_GRAD_SCALE:
            inv_scale = 1.0 / tl.load(grad_scale_ptr).to(tl.float32)
        w1 = one_minus_beta1
        w2 = one_minus_beta2
        step_size = lr
        bc2_sqrt = 1.0
        c2_prev = 0.0
        keep2 = 0.0
        if BIAS_CORRECTION == 1:
            step_size = lr / complement_pow(one_minus_beta1, n)
            bc2_sqrt = tl.sqrt(complement_pow(one_minus_beta2, n))
        if BIAS_CORRECTION == 2:
            # c_t = 1-β2^t from complements (no cancellation). At t = 1, ρ_1 = (1-β2)/c_1 = 1 and
            # c_0/c_1 = 0 are exact, so ŝ_1 = g² whatever s0 is (v̂_1 = g likewise).
            c2 = complement_pow(one_minus_beta2, n)
            c2_prev = complement_pow(one_minus_beta2, n - 1)
            w1 = one_minus_beta1 / complement_pow(one_minus_beta1, n)
            w2 = one_minus_beta2 / c2  # ρ_t
            keep2 = c2_prev / c2  # c_{t-1}/c_t

        p, v, s, s_max = update(
            p, g, v, s, s_max, inv_scale, lr, weight_decay, w1, w2, one_minus_beta2, c2_prev, keep2,
            step_size, bc2_sqrt, eps, RULE, BIAS_CORRECTION == 2, AMSGRAD, MAXIMIZE, DECOUPLED,
            HAS_WEIGHT_DECAY, HAS_GRAD_SCALE,
        )  # fmt: skip
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

        # The last program of tensor i to get here writes t (all others have read the old
        # count before their atomic) and resets the counter for the next launch.
        done = tl.atomic_add(counters_ptr + i, 1)
        if done == tensor_chunks - 1:
            tl.store(step_ptr, t)
            tl.store(counters_ptr + i, 0)
