"""Properties of the update rules, checked on the reference and on every implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adamlab import reference
from tests.registry import IMPLEMENTATIONS, OPTIMIZERS, require, to64

# 0, or magnitudes whose squares stay normal doubles (scale invariance is exact math; in
# subnormals g² loses digits and the property only holds approximately)
magnitude = st.one_of(st.just(0.0), st.floats(1e-100, 1e3))
finite = st.tuples(st.sampled_from([-1.0, 1.0]), magnitude).map(lambda t: t[0] * t[1])
grads = st.lists(arrays(np.float64, 6, elements=finite), min_size=1, max_size=30)
rules = st.sampled_from(["adam", "yogi"])
bias = st.sampled_from([True, False, "recursive"])


@given(rule=rules, gs=grads, c=st.floats(1e-3, 1e3), bc=bias, amsgrad=st.booleans())
def test_reference_with_eps_0_and_s0_0_is_invariant_to_gradient_scale(rule, gs, c, bc, amsgrad) -> None:
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=0.0, bias_correction=bc, amsgrad=amsgrad)
    theta_a = theta_b = np.zeros(6)
    sa = sb = reference.init_state(np.zeros(6), s0=0.0, amsgrad=amsgrad)
    for g in gs:
        theta_a, sa = reference.step(rule, theta_a, g, sa, **hyper)
        theta_b, sb = reference.step(rule, theta_b, c * g, sb, **hyper)
    np.testing.assert_allclose(theta_a, theta_b, rtol=1e-9, atol=1e-12)


@given(gs=grads, beta2=st.floats(0.0, 0.9999), s0=st.sampled_from([0.0, 1e-6, 1.0]))
def test_yogi_second_moment_moves_at_most_by_its_bound_and_stays_nonnegative(gs, beta2, s0) -> None:
    s = np.full(6, s0)
    for g in gs:
        new = reference.second_moment("yogi", s, g, 1, beta2, True)
        assert np.all(np.abs(new - s) <= (1 - beta2) * g * g * (1 + 1e-12) + 4e-16 * np.abs(s))
        assert np.all(new >= 0)
        s = new


@given(gs=grads, beta2=st.floats(0.0, 0.9999), bc=bias)
def test_adam_and_yogi_second_moments_are_nonnegative(gs, beta2, bc) -> None:
    for rule in ("adam", "yogi"):
        s = np.zeros(6)
        for t, g in enumerate(gs, start=1):
            s = reference.second_moment(rule, s, g, t, beta2, bc)
            assert np.all(s >= 0), (rule, t)


@pytest.mark.parametrize("impl_name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@settings(max_examples=10)
@given(gs=grads, c=st.sampled_from([1e-3, 0.5, 8.0, 1e3]))
def test_implementations_are_scale_invariant_and_keep_s_nonnegative(opt_name, impl_name, gs, c) -> None:
    impl = require(impl_name)
    ps = [torch.zeros(6, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    opt = OPTIMIZERS[opt_name](ps, lr=0.1, eps=0.0, initial_accumulator_value=0.0, **impl.kwargs)
    for g in gs:
        ps[0].grad, ps[1].grad = torch.from_numpy(g), torch.from_numpy(c * g)
        opt.step()
        for p in ps:
            assert (opt.state[p]["exp_avg_sq"] >= 0).all()
    # a zero gradient with eps 0 gives 0/0; compare where the update is defined
    a, b = to64(ps[0]), to64(ps[1])
    ok = np.isfinite(a) & np.isfinite(b)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-12)
