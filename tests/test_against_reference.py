"""Every implementation equals the float64 reference, step by step: parameters and all state.

Two modes:
* float64, free-running for 200 steps over every flag combination: the trajectories
  must agree to ~1e-10, so no convention can be off anywhere.
* float32 / bf16 / fp16 (hypothesis over shapes, hyperparameters, flags, gradient
  scales): before each step the reference is synced to the implementation's values,
  so each step is compared with one step of exact math, at the dtype's tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adamlab import reference
from tests.registry import (
    DTYPES,
    FLAG_CASES,
    IMPLEMENTATIONS,
    OPTIMIZERS,
    assert_close,
    case_id,
    reference_hyper,
    require,
    state_of,
    to64,
)

SHAPES = [(3, 2), (), (5,)]


def _make(opt_name: str, impl_name: str, dtype: torch.dtype, shapes, seed: int, **kwargs: Any):
    impl = require(impl_name, kwargs)
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    opt = OPTIMIZERS[opt_name](params, **impl.kwargs, **kwargs)
    return params, opt, gen


@pytest.mark.parametrize("flags", FLAG_CASES, ids=case_id)
@pytest.mark.parametrize("impl_name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_float64_trajectory_matches_reference(opt_name: str, impl_name: str, flags: dict) -> None:
    params, opt, gen = _make(opt_name, impl_name, torch.float64, SHAPES, seed=0, lr=0.05, **flags)
    group = opt.param_groups[0]
    hyper = reference_hyper(group)
    thetas = [to64(p) for p in params]
    states = [reference.init_state(t, s0=group["initial_accumulator_value"], amsgrad=group["amsgrad"]) for t in thetas]
    for k in range(200):
        scale = 10.0 ** ((k % 9) - 6)  # gradient scales 1e-6 .. 1e2
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
            thetas[i], states[i] = reference.step(opt_name, thetas[i], to64(p.grad), states[i], **hyper)
        opt.step()
    for i, p in enumerate(params):
        got = state_of(opt, p)
        assert got.t == states[i].t == 200
        assert_close(to64(p), thetas[i], 1e-10, 1e-12, f"param {i}")
        assert_close(got.v, states[i].v, 1e-10, 1e-14, f"exp_avg {i}")
        assert_close(got.s, states[i].s, 1e-10, 1e-20, f"exp_avg_sq {i}")
        if flags["amsgrad"]:
            assert_close(got.s_max, states[i].s_max, 1e-10, 1e-20, f"max_exp_avg_sq {i}")


_flag_strategy = st.sampled_from(FLAG_CASES)
_hyper_strategy = st.fixed_dictionaries(
    {
        "lr": st.floats(1e-4, 0.3),
        "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
        "eps": st.sampled_from([0.0, 1e-8, 1e-6, 1e-3]),
    }
)
_shapes_strategy = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=3)

LOW_PRECISION = [
    (torch.float32, None, 200),
    (torch.bfloat16, None, 20),
    (torch.float16, None, 20),
    (torch.bfloat16, "fp32", 50),
    (torch.float16, "fp32", 50),
]


def _tolerances(rule, theta, g, st0, exp_state, hyper, rtol, tiny=0.0):
    """Elementwise error bounds for one step at relative precision ``rtol``.

    Rounding errors scale with the *inputs* of each operation, not its result (v may
    cancel to nearly 0; note 1 - float32(β1) is not 1 - β1), so the bounds are built
    from |v|, |s|, |g| and |θ| and propagated through the update.
    """
    g_eff = np.abs(g) + (0 if hyper["decoupled_weight_decay"] else hyper["weight_decay"] * np.abs(theta))
    v_mag = np.abs(st0.v) + g_eff
    s_prev = st0.s if not hyper["amsgrad"] else np.maximum(st0.s, st0.s_max)
    s_mag = np.abs(s_prev) + g_eff**2
    t = exp_state.t
    bc = hyper["bias_correction"] is True
    bc1 = 1 - hyper["beta1"] ** t if bc else 1.0
    bc2 = 1 - hyper["beta2"] ** t if bc else 1.0
    s_used = exp_state.s_max if hyper["amsgrad"] else exp_state.s
    tol_v, tol_s = rtol * v_mag + tiny, rtol * s_mag + tiny
    if rule == "yogi":
        # where s and g² tie within rounding, sgn(s - g²) may legitimately come out either way
        raw_s = st0.s * (1 - hyper["beta2"] ** (t - 1)) if hyper["bias_correction"] == "recursive" else st0.s
        tie = np.abs(raw_s - g_eff**2) <= 2 * rtol * (np.abs(raw_s) + g_eff**2)
        weight = (
            (1 - hyper["beta2"]) / (1 - hyper["beta2"] ** t)
            if hyper["bias_correction"] == "recursive"
            else 1 - hyper["beta2"]
        )
        tol_s = tol_s + np.where(tie, 2 * weight * g_eff**2, 0.0)
    s_hat = np.abs(s_used) / bc2
    denom = np.maximum(np.sqrt(s_hat) + hyper["eps"], 1e-30)
    # |√a - √b| <= √|a - b|, and <= |a - b| / (2√a) where s is not tiny
    tol_sqrt = np.minimum(np.sqrt(tol_s / bc2), tol_s / bc2 / np.maximum(2 * np.sqrt(s_hat), 1e-30))
    v_hat = np.abs(exp_state.v) / bc1
    update_err = tol_v / bc1 / denom + v_hat * tol_sqrt / denom**2 + rtol * v_hat / denom
    tol_theta = rtol * np.abs(theta) + hyper["lr"] * update_err
    return tol_v, tol_s, tol_theta


LOW_PRECISION = [
    (torch.float32, None, 200),
    (torch.bfloat16, None, 20),
    (torch.float16, None, 20),
    (torch.bfloat16, "fp32", 50),
    (torch.float16, "fp32", 50),
]


@pytest.mark.parametrize(
    "dtype,state_precision,steps",
    LOW_PRECISION,
    ids=[f"{d}-state{s}".replace("torch.", "") for d, s, _ in LOW_PRECISION],
)
@pytest.mark.parametrize("impl_name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@settings(max_examples=6)
@given(flags=_flag_strategy, hyper=_hyper_strategy, shapes=_shapes_strategy, seed=st.integers(0, 2**16))
def test_each_step_matches_reference(
    opt_name, impl_name, dtype, state_precision, steps, flags, hyper, shapes, seed
) -> None:
    assume(not (IMPLEMENTATIONS[impl_name].fused and flags.get("bias_correction") == "recursive"))
    params, opt, gen = _make(
        opt_name, impl_name, dtype, shapes, seed, state_precision=state_precision, **hyper, **flags
    )
    moment_dtype = torch.float32 if state_precision == "fp32" else None
    group = opt.param_groups[0]
    ref_hyper = reference_hyper(group)
    # the moments' precision, and the parameter's (it is rounded to its dtype after the math)
    rtol_state = 4 * DTYPES[moment_dtype or dtype][0]
    rtol_param = 4 * DTYPES[dtype][0] + rtol_state
    # fp16 cannot hold (1-β2)·g² for small g (it underflows; see docs/training.md): keep g near 1 there
    low, high = (-1, 1) if torch.float16 in (dtype, moment_dtype) else (-6, 2)
    # below the smallest normal number a stored value keeps only absolute precision (a subnormal step)
    param_tiny, state_tiny = (
        torch.finfo(d).smallest_normal * torch.finfo(d).eps for d in (dtype, moment_dtype or dtype)
    )
    for k in range(steps):
        scale = 10.0 ** (low + k % (high - low + 1))
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        before = [(to64(p), state_of(opt, p) if opt.state[p] else None) for p in params]
        opt.step()
        for i, p in enumerate(params):
            theta, st0 = before[i]
            if st0 is None:
                st0 = reference.init_state(theta, s0=group["initial_accumulator_value"], amsgrad=group["amsgrad"])
            g = to64(p.grad)
            exp_theta, exp_state = reference.step(opt_name, theta, g, st0, **ref_hyper)
            got = state_of(opt, p)
            assert got.t == exp_state.t
            tol_v, tol_s, _ = _tolerances(opt_name, theta, g, st0, exp_state, ref_hyper, rtol_state, state_tiny)
            _, _, tol_theta = _tolerances(opt_name, theta, g, st0, exp_state, ref_hyper, rtol_param, state_tiny)
            tol_theta = tol_theta + param_tiny
            where = f"at step {k + 1} (param {i})"
            _within(got.v, exp_state.v, tol_v, f"exp_avg {where}")
            _within(got.s, exp_state.s, tol_s, f"exp_avg_sq {where}")
            _within(to64(p), exp_theta, tol_theta, f"param {where}")


def _within(actual: np.ndarray, expected: np.ndarray, tol: np.ndarray, what: str) -> None:
    err = np.abs(actual - expected)
    bad = ~(err <= tol + 1e-30)
    assert not bad.any(), (
        f"{what}: got {actual[bad]}, expected {expected[bad]}, tolerance {np.broadcast_to(tol, err.shape)[bad]}"
    )


@pytest.mark.parametrize("impl_name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_initial_exp_avg_value_matches_reference(opt_name: str, impl_name: str) -> None:
    """v0 (optax's and TF-Addons' Yogi start both moments at 1e-6) on every path."""
    v0, s0 = 0.25, 1e-6  # v0 large enough that a path ignoring it is far off
    params, opt, gen = _make(
        opt_name, impl_name, torch.float64, SHAPES, seed=3, lr=0.05, initial_exp_avg_value=v0,
        initial_accumulator_value=s0, amsgrad=True,
    )  # fmt: skip
    hyper = reference_hyper(opt.param_groups[0])
    thetas = [to64(p) for p in params]
    states = [
        reference.State(t=0, v=np.full_like(t, v0), s=np.full_like(t, s0), s_max=np.full_like(t, s0)) for t in thetas
    ]
    for _ in range(20):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            thetas[i], states[i] = reference.step(opt_name, thetas[i], to64(p.grad), states[i], **hyper)
        opt.step()
    for p, theta, state in zip(params, thetas, states):
        assert_close(to64(p), theta, 1e-10, 1e-12, "param")
        assert_close(to64(opt.state[p]["exp_avg"]), state.v, 1e-10, 1e-12, "exp_avg")
