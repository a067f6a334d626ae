"""Fuzzing the numerics (issue 8, §6): hypothesis over shapes, dtypes, flags and gradients.

Every drawn case runs one implementation of the registry for a few steps. Each step starts
the float64 reference from the implementation's own state (so rounding never accumulates)
and checks, element by element:

* finite gradients whose arithmetic fits the dtype: parameters and every state tensor match
  the reference to the dtype's tolerance;
* non-finite gradients (NaN, ±inf), by default: they propagate exactly where the reference
  says (parameters non-finite in the same elements) and nowhere else;
* ``skip_nonfinite=True``: a group with a non-finite gradient changes nothing, and no NaN or
  inf is ever written;
* what the dtype cannot represent (g² overflows; s underflows below fp16's range while √ŝ
  still matters; ε rounds to 0 over a zero second moment -- the traps of docs/training.md):
  those elements are left out of the comparison (and stay out in later steps) -- but the
  step must still run.

An implementation may raise only the documented errors; none applies to these inputs, so
any exception fails. Examples: the ``ci`` profile runs ``SCALE`` × its ``max_examples`` per
test (a few thousand in all); ``HYPOTHESIS_PROFILE=thorough`` runs 40× more.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adamlab import reference
from tests.registry import DTYPES, IMPLEMENTATIONS, OPTIMIZERS, to64

SCALE = 40  # examples per test = SCALE × the profile's max_examples (ci: 25 → 1000)
EXAMPLES = settings().max_examples * SCALE
PATTERNS = ["normal", "zeros", "tiny", "huge", "mixed", "nan_one", "inf_one", "ninf_one", "all_nan"]
LOW = (torch.bfloat16, torch.float16)


def _available() -> list[str]:
    return [name for name, impl in IMPLEMENTATIONS.items() if impl.device == "cpu" and impl.unavailable() is None]


AVAILABLE = _available()


def gradient(pattern: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float64 gradient of the given pattern (cast to the parameter's dtype by the caller)."""
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    n = g.numel()
    if pattern == "zeros":
        return torch.zeros(shape, dtype=torch.float64)
    if pattern == "tiny":
        return g * 1e-30
    if pattern == "huge":
        return g * 1e30
    if pattern == "mixed":  # signs alternate, magnitudes from 1e-30 to 1e30
        exponents = torch.randint(-30, 31, shape, generator=gen).to(torch.float64)
        signs = torch.where(torch.arange(n).reshape(shape) % 2 == 0, 1.0, -1.0) if n else g
        return signs * 10.0**exponents
    if pattern in ("nan_one", "inf_one", "ninf_one") and n:
        value = {"nan_one": math.nan, "inf_one": math.inf, "ninf_one": -math.inf}[pattern]
        g.view(-1)[int(torch.randint(n, (1,), generator=gen))] = value
    if pattern == "all_nan":
        g.fill_(math.nan)
    return g


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)  # () is 0-dim; a 0 is empty


@st.composite
def cases(draw: Any) -> dict[str, Any]:
    dtype = draw(st.sampled_from(list(DTYPES)))
    return dict(
        rule=draw(st.sampled_from(list(OPTIMIZERS))),
        impl=draw(st.sampled_from(AVAILABLE)),
        dtype=dtype,
        state_precision=draw(st.sampled_from([None, "fp32"])) if dtype in LOW else None,
        shapes=draw(st.lists(shapes, min_size=1, max_size=3)),
        patterns=draw(st.lists(st.sampled_from(PATTERNS), min_size=3, max_size=3)),
        steps=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**16)),
        flags=dict(
            amsgrad=draw(st.booleans()),
            maximize=draw(st.booleans()),
            bias_correction=draw(st.sampled_from([True, False, "recursive"])),
            weight_decay=draw(st.sampled_from([0.0, 0.1])),
            decoupled_weight_decay=draw(st.booleans()),
            skip_nonfinite=draw(st.booleans()),
            lr=draw(st.sampled_from([1e-3, 0.1])),
            eps=draw(st.sampled_from([1e-8, 1e-3])),
            betas=draw(st.sampled_from([(0.9, 0.999), (0.0, 0.99), (0.5, 0.9)])),
        ),
    )


def compute_dtype(impl: str, dtype: torch.dtype, state_precision: str | None) -> torch.dtype:
    """The dtype the implementation does its arithmetic in (docs: fused kernels use fp32 math)."""
    if impl.startswith("fused"):
        return torch.float64 if dtype == torch.float64 else torch.float32
    return torch.float32 if state_precision == "fp32" else dtype


def out_of_range(
    case: dict[str, Any],
    g_eff: np.ndarray,
    s_prev: np.ndarray,
    s_new: np.ndarray,
    s_hat: np.ndarray,
    cd: torch.dtype,
    sd: torch.dtype,
) -> np.ndarray:
    """Elements whose arithmetic this dtype cannot do (documented, not a bug): see the module doc."""
    fl, beta2 = case["flags"], case["flags"]["betas"][1]
    fc, fs = torch.finfo(cd), torch.finfo(sd)
    eps_c = float(torch.tensor(fl["eps"], dtype=cd))
    with np.errstate(all="ignore"):
        g2 = g_eff * g_eff
        bad = g2 > fc.max / 4  # g² (or s) overflows
        bad |= (np.abs(g_eff) > fs.max / 4) | (np.abs(s_new) > fs.max / 4)  # the stored state overflows
        # s lands below the storage dtype's normal range while √ŝ still competes with ε
        bad |= (np.abs(s_hat) < fs.tiny * 16) & (np.sqrt(np.abs(s_hat)) > 1e-3 * fl["eps"]) & (s_hat != 0)
        bad |= ((1 - beta2) * g2 < fs.tiny * 16) & (np.sqrt(g2) > 1e-3 * fl["eps"]) & (g2 != 0)
        # ε rounds to 0 and the second moment is 0: 0/0
        if eps_c == 0.0:
            bad |= s_hat == 0
        # Yogi compares s with g²: near a tie the sign is a coin flip at this precision
        if case["rule"] == "yogi":
            tol = 8 * DTYPES[cd][0] if cd in DTYPES else 1e-6
            bad |= np.abs(s_prev - g2) <= tol * np.maximum(np.abs(s_prev), g2)
            bad |= np.abs(s_prev * (1 - beta2**2) - g2) <= tol * np.maximum(np.abs(s_prev), g2)
    return bad


def run_case(case: dict[str, Any]) -> None:
    dtype, impl, fl = case["dtype"], case["impl"], case["flags"]
    gen = torch.Generator().manual_seed(case["seed"])
    params = [
        torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)) for shape in case["shapes"]
    ]
    if IMPLEMENTATIONS[impl].fused and fl["bias_correction"] == "recursive":  # refused by name (issue 13)
        with pytest.raises(ValueError, match="recursive"):
            OPTIMIZERS[case["rule"]](params, **fl, **IMPLEMENTATIONS[impl].kwargs)
        return
    opt = OPTIMIZERS[case["rule"]](
        params, state_precision=case["state_precision"], **fl, **IMPLEMENTATIONS[impl].kwargs
    )
    group = opt.param_groups[0]
    sd = torch.float32 if case["state_precision"] == "fp32" else dtype
    cd = compute_dtype(impl, dtype, case["state_precision"])
    rtol, atol = DTYPES[cd if cd in LOW else (torch.float32 if torch.float32 in (cd, sd, dtype) else cd)]
    if dtype in LOW or sd in LOW:
        rtol, atol = max(rtol, DTYPES[dtype][0], DTYPES[sd][0]), max(atol, DTYPES[dtype][1], DTYPES[sd][1])
    hyper = dict(
        lr=fl["lr"],
        beta1=fl["betas"][0],
        beta2=fl["betas"][1],
        eps=fl["eps"],
        weight_decay=fl["weight_decay"],
        decoupled_weight_decay=fl["decoupled_weight_decay"],
        amsgrad=fl["amsgrad"],
        maximize=fl["maximize"],
        bias_correction=fl["bias_correction"],
    )
    excluded = [np.zeros(p.shape, dtype=bool) for p in params]
    for step in range(case["steps"]):
        pattern = case["patterns"][step]
        grads = [gradient(pattern if i == 0 else "normal", p.shape, gen).to(dtype) for i, p in enumerate(params)]
        for p, g in zip(params, grads):
            p.grad = g
        had_state = [bool(opt.state.get(p)) for p in params]
        before = [(to64(p), _state64(opt, p, group)) for p in params]
        nonfinite = any(not torch.isfinite(g).all() for g in grads)

        opt.step()  # must not raise

        for p, g, (theta0, state0), skip_mask, had in zip(params, grads, before, excluded, had_state):
            assert p.dtype == dtype and p.grad is g
            if fl["skip_nonfinite"] and nonfinite:  # the whole group's step is skipped
                assert np.array_equal(to64(p), theta0, equal_nan=True)
                if not had:  # skipped at its first step: no state left behind
                    assert not opt.state.get(p)
                    continue
                st = opt.state[p]
                assert int(st["step"].item()) == state0.t
                np.testing.assert_array_equal(to64(st["exp_avg"]), state0.v)
                np.testing.assert_array_equal(to64(st["exp_avg_sq"]), state0.s)
                continue
            st = opt.state[p]
            assert st["exp_avg"].dtype == sd and st["exp_avg_sq"].dtype == sd
            assert int(st["step"].item()) == state0.t + 1
            _check_step(case, hyper, opt, p, g, theta0, state0, skip_mask, cd, sd, rtol, atol)
        if fl["skip_nonfinite"]:
            # the policy: no NaN is ever written -- except where the dtype's range is exceeded
            # (see out_of_range)
            for p, out in zip(params, excluded):
                assert not np.isnan(to64(p)[~out]).any(), f"NaN parameter with skip_nonfinite: {case}"
                for key, t in opt.state[p].items():
                    if t.shape == p.shape:
                        assert not np.isnan(to64(t)[~out]).any(), f"NaN {key} with skip_nonfinite: {case}"


def _state64(opt: torch.optim.Optimizer, p: torch.Tensor, group: dict[str, Any]) -> reference.State:
    st = opt.state[p]
    if not st:  # before the first step: the documented initial state, in the state's dtype
        dtype = torch.float32 if group["state_precision"] == "fp32" else p.dtype
        s0 = to64(torch.full(p.shape, group["initial_accumulator_value"], dtype=dtype))
        return reference.State(t=0, v=np.zeros(p.shape), s=s0, s_max=s0.copy() if group["amsgrad"] else None)
    return reference.State(
        t=int(st["step"].item()),
        v=to64(st["exp_avg"]),
        s=to64(st["exp_avg_sq"]),
        s_max=to64(st["max_exp_avg_sq"]) if "max_exp_avg_sq" in st else None,
    )


def _check_step(case, hyper, opt, p, g, theta0, state0, excluded, cd, sd, rtol, atol) -> None:
    g64 = to64(g)
    with np.errstate(all="ignore"):
        want, new = reference.step(case["rule"], theta0, g64, state0, **hyper)
        g_eff = -g64 if hyper["maximize"] else g64
        if hyper["weight_decay"] and not hyper["decoupled_weight_decay"]:
            g_eff = g_eff + hyper["weight_decay"] * theta0
        s_hat = new.s / (1 - hyper["beta2"] ** new.t) if hyper["bias_correction"] is True else new.s
    excluded |= out_of_range(case, g_eff, state0.s, new.s, s_hat, cd, sd)
    excluded |= ~np.isfinite(theta0) | ~np.isfinite(state0.s) | ~np.isfinite(state0.v)
    grad_bad = ~np.isfinite(g64)
    got = to64(p)
    # non-finite gradients (default policy): they reach their own parameter elements
    assert np.all(~np.isfinite(got[grad_bad])), f"a NaN/inf gradient left its parameter finite: {case}"
    keep = ~excluded & ~grad_bad  # ... and nothing else: every other element is compared
    # Tolerances scale with the *inputs* of each operation (v ← β1 v + (1-β1) g can cancel to
    # nearly 0; its rounding error is relative to |v| + |g|, not to the result).
    b1, b2, lr, t = hyper["beta1"], hyper["beta2"], hyper["lr"], new.t
    with np.errstate(all="ignore"):
        v_in = np.abs(state0.v) + np.abs(g_eff)
        s_in = np.abs(state0.s) + g_eff * g_eff
        s_used = new.s_max if new.s_max is not None else new.s
        s_hat_used = s_used / (1 - b2**t) if hyper["bias_correction"] is True else s_used
        v_scale = 1 / (1 - b1**t) if hyper["bias_correction"] is not False else 1.0
        sensitivity = lr * v_in * v_scale / (np.sqrt(np.abs(s_hat_used)) + hyper["eps"])
        step_size = np.abs(want - theta0)
        theta_tol = rtol * (np.abs(theta0) + np.abs(want) + step_size + 8 * sensitivity) + atol * lr
    with np.errstate(all="ignore"):  # inf - inf in elements that are not compared
        theta_err = np.abs(got - want)
    np.testing.assert_array_less(
        theta_err[keep], theta_tol[keep] * 1.0001 + 1e-300, err_msg=f"parameters differ: {case}"
    )
    st = opt.state[p]
    tiny = 16 * torch.finfo(sd).tiny
    for key, ref, size in (("exp_avg", new.v, v_in), ("exp_avg_sq", new.s, s_in), ("max_exp_avg_sq", new.s_max, s_in)):
        if ref is None:
            continue
        have = to64(st[key])
        with np.errstate(all="ignore"):
            err = np.abs(have - ref)
        tol = 4 * rtol * (np.abs(ref) + size) + 4 * torch.finfo(sd).eps * np.abs(have) + tiny
        np.testing.assert_array_less(err[keep], tol[keep] * 1.0001 + 1e-300, err_msg=f"state {key} differs: {case}")


@pytest.mark.skipif(not AVAILABLE, reason="no CPU implementation registered")
@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=cases())
def test_fuzz_every_implementation_against_the_reference(case: dict[str, Any]) -> None:
    run_case(case)


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_recursive_adam_overflowing_square_writes_no_nan(impl: str) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = OPTIMIZERS["adam"]([p], bias_correction="recursive", skip_nonfinite=True, **IMPLEMENTATIONS[impl].kwargs)
    for g in (0.5, 1e30, 0.5):  # 1e30 is finite in float32; its square is not
        p.grad = torch.full((2,), g)
        opt.step()
    assert not torch.isnan(p).any() and not torch.isnan(opt.state[p]["exp_avg_sq"]).any()


BAD_HYPER = {
    # keyword: (strategy of invalid values, the words the ValueError must contain)
    "lr": (st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(math.inf)), "learning rate"),
    "eps": (st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(math.inf)), "epsilon value"),
    "weight_decay": (st.one_of(st.floats(max_value=-1e-300), st.just(math.nan)), "weight_decay value"),
    "initial_accumulator_value": (st.one_of(st.floats(max_value=-1e-300), st.just(math.nan)), "s0"),
    "betas": (
        st.one_of(
            st.tuples(st.floats(min_value=1.0, max_value=1e9), st.just(0.999)),
            st.tuples(st.just(0.9), st.floats(max_value=-1e-300)),
            st.tuples(st.just(0.9), st.just(math.nan)),
        ),
        "beta parameter at index",
    ),
    "bias_correction": (st.sampled_from(["yes", 1.5, None, "Recursive"]), "bias_correction"),
    "state_precision": (st.sampled_from([torch.float32, "int8", "FP32", "float32", 8, True]), "state_precision"),
    "block_size": (
        st.one_of(st.integers(-4, 15), st.integers(8193, 2**20), st.sampled_from([24, 100, 256.0])),
        "block_size",
    ),
    "rounding_seed": (
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), st.just(1.5)),
        "rounding_seed",
    ),
}


@settings(max_examples=EXAMPLES // 4)
@given(rule=st.sampled_from(list(OPTIMIZERS)), key=st.sampled_from(list(BAD_HYPER)), data=st.data())
def test_fuzz_invalid_hyperparameters_raise_the_documented_error(rule: str, key: str, data: Any) -> None:
    strategy, words = BAD_HYPER[key]
    value = data.draw(strategy)
    with pytest.raises(ValueError) as info:
        OPTIMIZERS[rule]([torch.nn.Parameter(torch.zeros(2))], **{key: value})
    message = str(info.value)
    assert message.startswith("Invalid") and words in message, message
