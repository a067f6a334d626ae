"""Exercise 2 (*Dive into Deep Learning* §11.10): Adam and Yogi without bias correction.

``bias_correction="recursive"`` keeps the debiased estimates in the state,
v̂_t = v̂_{t-1} + (g_t - v̂_{t-1})(1-β1)/(1-β1^t) (and ŝ likewise; Yogi's form is derived
in :func:`adamlab.reference.second_moment`). It must equal standard debiasing when
s0 = 0: in float64 to a relative 1e-12, in float32 within rounding. ``False`` shows the
start-up bias towards v0 = s0 = 0 that the chapter describes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference

BETAS = [(0.9, 0.999), (0.0, 0.1), (0.5, 0.9), (0.95, 0.9999)]


def _grads(steps: int, shape=(7,), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(size=shape))  # coordinates of different magnitudes
    return [rng.normal(size=shape) * scale + 0.3 for _ in range(steps)]


def _run_reference(rule: str, grads, bias_correction, betas, s0=0.0, eps=1e-8, lr=1e-2):
    theta = np.linspace(0.5, 1.5, grads[0].size)  # away from 0, where "relative" means nothing
    state = reference.init_state(theta, s0=s0)
    trace = []
    for g in grads:
        theta, state = reference.step(
            rule, theta, g, state, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, bias_correction=bias_correction
        )
        trace.append((theta, state))
    return trace


@pytest.mark.parametrize("betas", BETAS, ids=str)
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_reference_recursive_equals_standard_float64(rule, betas) -> None:
    grads = _grads(300)
    standard = _run_reference(rule, grads, True, betas)
    recursive = _run_reference(rule, grads, "recursive", betas)
    for t, ((th_a, st_a), (th_b, st_b)) in enumerate(zip(standard, recursive), start=1):
        # normwise relative: a coordinate crossing 0 makes the elementwise ratio meaningless
        assert np.abs(th_b - th_a).max() <= 1e-12 * np.abs(th_a).max(), f"theta, t={t}"
        # the recursive state holds v̂ = v/(1-β1^t) and ŝ = s/(1-β2^t)
        np.testing.assert_allclose(st_b.v, st_a.v / (1 - betas[0] ** t), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(st_b.s, st_a.s / (1 - betas[1] ** t), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=lambda c: c.__name__)
def test_torch_recursive_equals_standard_float64(cls, foreach) -> None:
    grads = _grads(300)
    runs = {}
    for mode in (True, "recursive"):
        p = torch.nn.Parameter(torch.linspace(0.5, 1.5, 7, dtype=torch.float64))
        opt = cls([p], lr=1e-2, initial_accumulator_value=0.0, bias_correction=mode, foreach=foreach)
        thetas = []
        for g in grads:
            p.grad = torch.from_numpy(g)
            opt.step()
            thetas.append(p.detach().clone().numpy())
        runs[mode] = (np.array(thetas), opt.state[p])
    assert np.abs(runs["recursive"][0] - runs[True][0]).max() <= 1e-12 * np.abs(runs[True][0]).max()
    t = len(grads)
    v_std, v_rec = runs[True][1]["exp_avg"].numpy(), runs["recursive"][1]["exp_avg"].numpy()
    np.testing.assert_allclose(v_rec, v_std / (1 - 0.9**t), rtol=1e-12)


def test_float32_within_rounding_and_why_betas_matter() -> None:
    """float32: both modes stay within float32 rounding of the float64 oracle.

    adamlab computes 1-β and 1-β^t from Python floats (float64) and rounds once. Doing that
    arithmetic in float32 is a different algorithm: 1 - float32(0.999) is not 0.001 (it is
    0.00099998713, relative error 1.3e-5), so a float32 reimplementation would drift by
    that much more than rounding.
    """
    one_minus = np.float32(1) - np.float32(0.999)
    assert one_minus != np.float32(0.001)
    assert abs(float(one_minus) / 0.001 - 1) == pytest.approx(1.287e-5, rel=1e-3)

    grads = _grads(200, seed=1)
    oracle = _run_reference("adam", grads, True, (0.9, 0.999), eps=1e-6)[-1][0]
    finals = {}
    for mode in (True, "recursive"):
        p = torch.nn.Parameter(torch.linspace(0.5, 1.5, 7, dtype=torch.float32))
        opt = adamlab.Adam([p], lr=1e-2, eps=1e-6, bias_correction=mode)
        for g in grads:
            p.grad = torch.from_numpy(g.astype(np.float32))
            opt.step()
        finals[mode] = p.detach().double().numpy()
        # 200 steps, each |Δθ| <~ lr: accumulated rounding ~ steps * 2^-24 * |θ| plus the
        # float32 rounding of the gradients; far below a relative 1e-4.
        np.testing.assert_allclose(finals[mode], oracle, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(finals["recursive"], finals[True], rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_without_correction_the_start_is_biased(rule) -> None:
    """Constant gradient g: v_t = (1-β1^t) g is shrunk towards v0 = 0 while v̂_t = g exactly;
    the first step is (1-β1)/√(1-β2) ≈ 3.16 times the corrected one (s is shrunk more than v)."""
    b1, b2, lr, g = 0.9, 0.999, 1e-3, np.full(3, 0.7)
    trace = {m: _run_reference(rule, [g] * 50, m, (b1, b2), eps=0.0, lr=lr) for m in (True, False, "recursive")}
    theta0 = np.linspace(0.5, 1.5, 3)
    first = {m: float((theta0 - trace[m][0][0])[0]) for m in trace}
    assert first[True] == pytest.approx(lr, rel=1e-12)
    assert first["recursive"] == pytest.approx(lr, rel=1e-12)
    assert first[False] == pytest.approx(lr * (1 - b1) / np.sqrt(1 - b2), rel=1e-12)  # ≈ 3.16 lr
    for t in (1, 10, 50):
        raw_v = trace[False][t - 1][1].v
        np.testing.assert_allclose(raw_v, (1 - b1**t) * g, rtol=1e-12)  # biased towards 0
        np.testing.assert_allclose(trace["recursive"][t - 1][1].v, g, rtol=1e-12)  # unbiased
    assert np.all(trace[False][9][1].v < 0.66 * g)  # still 35% short after 10 steps


def test_recursive_first_step_returns_g_whatever_v0() -> None:
    # ρ_1 = (1-β)/(1-β^1) = 1, so v̂_1 = v0 + (g - v0) = g up to the rounding of the subtraction
    g = np.array([0.3, -2.0])
    for v0 in (np.zeros(2), np.array([5.0, -7.0]), np.array([1e6, 3.0])):
        v1 = reference.first_moment(v0, g, 1, 0.9, "recursive")
        np.testing.assert_allclose(v1, g, rtol=0, atol=2 * np.finfo(float).eps * np.abs(v0).max())
        s1 = reference.second_moment("adam", v0 * v0, g, 1, 0.999, "recursive")
        np.testing.assert_allclose(s1, g * g, rtol=0, atol=2 * np.finfo(float).eps * (v0 * v0).max())
    assert np.array_equal(reference.first_moment(np.zeros(2), g, 1, 0.9, "recursive"), g)  # exact from 0
