"""Mixed precision and bad numbers, on the CPU (issue 8, §3).

* ``torch.amp.GradScaler("cpu")`` with every implementation: a step whose gradients hold
  inf/NaN is skipped and changes nothing (parameters, state, step counts); a run with such
  a step equals, bitwise, a run that never saw that batch (loss scales are powers of two).
* ``skip_nonfinite=True`` (no scaler) skips the group's step; the default lets non-finite
  gradients propagate, element by element, exactly as ``torch.optim.Adam`` does.
* bf16/fp16 parameters work, and the three traps of ``docs/training.md`` happen as
  described there -- and ``state_precision="fp32"`` is the fix for the dtype ones.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED
from adamlab.optim.functional import get_implementation

OPTIMIZERS = {"adam": adamlab.Adam, "yogi": adamlab.Yogi}
IMPLS: dict[str, dict[str, Any]] = {
    "single_tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "single_capturable": dict(foreach=False, capturable=True),
    "foreach_capturable": dict(foreach=True, capturable=True),
    "fused_cpu": dict(fused=True),
}
BAD_VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def impl_kwargs(name: str) -> dict[str, Any]:
    """The constructor flags of an implementation; skip (with the reason) if this build lacks it."""
    if name.startswith("fused"):
        if name not in REGISTERED:
            pytest.skip(f"{name} is not registered in this build")
        try:
            get_implementation(name)
        except Exception as exc:  # a kernel that cannot be built on this machine
            pytest.skip(f"{name} unavailable here: {exc}")
    return dict(IMPLS[name])


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def make_opt(cls: type, model: torch.nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
    # two groups, so that "skip the group" and "skip the step" can be told apart
    return cls([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.01, **kwargs)


def batch(i: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + i)
    return torch.randn(12, 6, generator=gen).to(dtype), torch.randn(12, 2, generator=gen).to(dtype)


def loss_of(model: torch.nn.Module, i: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x, y = batch(i, dtype)
    return torch.nn.functional.mse_loss(model(x).float(), y.float())


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy({"params": [p.detach() for p in model.parameters()], "opt": opt.state_dict()})


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for i, (a, b) in enumerate(zip(before["params"], after["params"])):
        assert torch.equal(a, b), f"parameter {i} changed"
    sa, sb = before["opt"]["state"], after["opt"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"state {key}/{name} changed"


def poison(model: torch.nn.Module, value: float, where: int = 0) -> None:
    """Put one non-finite value into one gradient (of layer ``where``: 0 or 2)."""
    model[where].weight.grad[1, 2] = value


# ---- GradScaler -------------------------------------------------------------------------------
def _scaled_step(model, opt, scaler, i, *, bad: float | None, unscale_first: bool) -> None:
    opt.zero_grad()
    scaler.scale(loss_of(model, i)).backward()
    if bad is not None:
        poison(model, bad)
    if unscale_first:  # the usual pattern for gradient clipping
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e6)
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("unscale_first", [False, True], ids=["step", "unscale_clip_step"])
@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_grad_scaler_skips_a_nonfinite_step_and_changes_nothing(impl: str, bad: str, unscale_first: bool) -> None:
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = make_opt(adamlab.Yogi, model, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for i in range(3):
        _scaled_step(model, opt, scaler, i, bad=None, unscale_first=unscale_first)
    before = snapshot(model, opt)
    _scaled_step(model, opt, scaler, 3, bad=BAD_VALUES[bad], unscale_first=unscale_first)
    assert_unchanged(before, snapshot(model, opt))
    assert scaler.get_scale() == 2.0**11, "the scaler backs off after an overflow"
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    for i in range(4, 6):
        _scaled_step(model, opt, scaler, i, bad=None, unscale_first=unscale_first)

    # The same training without a scaler, never seeing batch 3: bitwise the same, because
    # scaling by a power of two and unscaling again is exact.
    plain = make_model()
    plain_opt = make_opt(adamlab.Yogi, plain, **kwargs)
    for i in (0, 1, 2, 4, 5):
        plain_opt.zero_grad()
        loss_of(plain, i).backward()
        if unscale_first:
            torch.nn.utils.clip_grad_norm_(plain.parameters(), max_norm=1e6)
        plain_opt.step()
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), plain.parameters()):
        assert opt.state[p]["step"].item() == plain_opt.state[q]["step"].item() == 5


@pytest.mark.parametrize("impl", list(IMPLS))
def test_grad_scaler_with_bf16_autocast(impl: str) -> None:
    """The CPU AMP loop: bf16 autocast, fp32 parameters, a scaler; the loss goes down."""
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = make_opt(adamlab.Adam, model, **kwargs)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batch(0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_grad_scaler_with_fp16_parameters(impl: str) -> None:
    """As with torch's optimizers: GradScaler refuses to unscale fp16 gradients itself, so fp16
    parameters with a scaler need an optimizer that unscales inside its step (fused)."""
    kwargs = impl_kwargs(impl)
    model = make_model(dtype=torch.float16)
    opt = make_opt(adamlab.Adam, model, state_precision="fp32", **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    opt.zero_grad()
    scaler.scale(loss_of(model, 0, torch.float16)).backward()
    if not kwargs.get("fused"):
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
            scaler.step(opt)
        return
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # a poisoned fp16 step is skipped inside the optimizer
    before = snapshot(model, opt)
    opt.zero_grad()
    scaler.scale(loss_of(model, 1, torch.float16)).backward()
    poison(model, math.inf)
    scaler.step(opt)
    scaler.update()
    assert_unchanged(before, snapshot(model, opt))


# ---- without a scaler: skip_nonfinite, and the default ---------------------------------------
@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_skip_nonfinite_skips_the_group(rule: str, impl: str, bad: str) -> None:
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = make_opt(OPTIMIZERS[rule], model, skip_nonfinite=True, **kwargs)
    for i in range(2):
        opt.zero_grad()
        loss_of(model, i).backward()
        opt.step()
    before = snapshot(model, opt)
    opt.zero_grad()
    loss_of(model, 2).backward()
    poison(model, BAD_VALUES[bad], where=0)  # group 0 only
    opt.step()
    after = snapshot(model, opt)
    # group 0 (model[0]) untouched, group 1 (model[2]) stepped
    for i in (0, 1):
        assert torch.equal(before["params"][i], after["params"][i])
        for name, value in before["opt"]["state"][i].items():
            assert torch.equal(value, after["opt"]["state"][i][name]), name
    for i in (2, 3):
        assert not torch.equal(before["params"][i], after["params"][i])
        assert after["opt"]["state"][i]["step"].item() == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for s in opt.state.values() for t in s.values())


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_a_skipped_first_step_leaves_no_state(rule: str, impl: str) -> None:
    """A group skipped at its very first step has not stepped: no state is left behind
    (as if step() had not been called for it); the other group steps as usual. State that
    existed before the skipped step (here: initialize_moments) is kept."""
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = make_opt(OPTIMIZERS[rule], model, skip_nonfinite=True, **kwargs)
    loss_of(model, 0).backward()
    poison(model, math.nan, where=0)
    opt.step()
    assert all(p not in opt.state for p in model[0].parameters())
    assert all(opt.state[p]["step"].item() == 1 for p in model[2].parameters())
    opt.zero_grad()
    loss_of(model, 1).backward()
    opt.step()  # group 0's first real step
    assert all(opt.state[p]["step"].item() == 1 for p in model[0].parameters())

    model = make_model()
    opt = make_opt(OPTIMIZERS[rule], model, skip_nonfinite=True, **kwargs)
    opt.initialize_moments([lambda i=i: loss_of(model, i) for i in range(2)])
    before = snapshot(model, opt)
    opt.zero_grad()
    loss_of(model, 2).backward()
    poison(model, math.inf, where=0)
    opt.step()
    after = snapshot(model, opt)
    for i in (0, 1):
        for name, value in before["opt"]["state"][i].items():
            assert torch.equal(value, after["opt"]["state"][i][name]), name


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_default_nonfinite_gradients_propagate_elementwise(rule: str, impl: str, bad: str) -> None:
    """Default (documented): like torch, a non-finite gradient element turns its parameter
    element into NaN and leaves every other element exactly as a clean step would."""
    kwargs = impl_kwargs(impl)
    results = []
    for value in (BAD_VALUES[bad], 0.0):
        p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 12).reshape(3, 4))
        opt = OPTIMIZERS[rule]([p], weight_decay=0.01, **kwargs)
        grad = torch.linspace(-0.5, 0.7, 12).reshape(3, 4)
        grad[1, 2] = value
        p.grad = grad
        opt.step()
        results.append(p.detach().clone())
    poisoned, clean = results
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 2] = True
    assert torch.isnan(poisoned[mask]).all()
    assert torch.equal(poisoned[~mask], clean[~mask])


def test_default_propagation_matches_torch_adam() -> None:
    for bad in BAD_VALUES.values():
        outs = []
        for cls in (torch.optim.Adam, adamlab.Adam):
            p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6))
            opt = cls([p], lr=0.01, foreach=False)
            for step in range(3):
                grad = torch.linspace(-0.5, 0.7, 6)
                if step == 1:
                    grad[2] = bad
                p.grad = grad
                opt.step()
            outs.append((p.detach().clone(), opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()))
        for ours, theirs in zip(outs[1], outs[0]):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


# ---- bf16 / fp16 parameters -------------------------------------------------------------------
@pytest.mark.parametrize("state_precision", [None, "fp32"], ids=["state_like_param", "state_fp32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_low_precision_parameters_step_like_the_reference(rule, impl, dtype, state_precision) -> None:
    """One step from identical values matches the float64 reference to the dtype's rounding;
    parameters keep their dtype, the state is float32 with ``state_precision="fp32"`` (else the parameter's)."""
    kwargs = impl_kwargs(impl)
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(4, 5, generator=gen).to(dtype))
    opt = OPTIMIZERS[rule]([p], lr=0.01, eps=1e-3, state_precision=state_precision, **kwargs)
    moment_dtype = torch.float32 if state_precision == "fp32" else None
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-3)
    theta = p.detach().double().numpy()
    state = reference.init_state(theta, s0=opt.param_groups[0]["initial_accumulator_value"])
    for _ in range(3):
        g = torch.randn(4, 5, generator=gen).to(dtype)
        p.grad = g
        start = p.detach().double().numpy()
        opt.step()
        want, state = reference.step(rule, start, g.double().numpy(), state, **hyper)
        got = p.detach().double().numpy()
        # half a unit in the last place of the stored parameter, plus 2 % of the step
        ulp = np.abs(want) * (2.0**-8 if dtype == torch.bfloat16 else 2.0**-11)
        np.testing.assert_array_less(np.abs(got - want), ulp + 0.02 * hyper["lr"] + 1e-12)
        # continue the reference from the optimizer's own (rounded) state
        st = opt.state[p]
        state = reference.State(t=state.t, v=st["exp_avg"].double().numpy(), s=st["exp_avg_sq"].double().numpy())
    assert p.dtype == dtype
    assert opt.state[p]["exp_avg"].dtype == (moment_dtype or dtype)
    assert opt.state[p]["exp_avg_sq"].dtype == (moment_dtype or dtype)


# ---- the traps of docs/training.md ------------------------------------------------------------
@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_trap_bf16_beta2_rounds_to_one_and_the_second_moment_never_decays(impl: str) -> None:
    assert torch.tensor(0.999, dtype=torch.bfloat16).item() == 1.0
    decays = {}
    for state_precision in (None, "fp32"):
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        opt = adamlab.Adam([p], lr=1e-4, state_precision=state_precision, **IMPLS[impl])
        p.grad = torch.ones(4, dtype=torch.bfloat16)  # one large gradient ...
        opt.step()
        s1 = opt.state[p]["exp_avg_sq"].float().clone()
        p.grad = torch.full((4,), 0.01, dtype=torch.bfloat16)  # ... then small ones
        for _ in range(1000):
            opt.step()
        decays[state_precision] = (opt.state[p]["exp_avg_sq"].float() / s1).max().item()
    # exact: s ← 0.999·s rounds back to s in bf16, and (1-β2)·g² = 1e-7 is below half an ulp of s
    assert decays[None] == 1.0
    # fp32 state: s decays as 0.999^1000 ≈ 0.37 (plus the small gradients' 1e-4 share)
    assert decays["fp32"] == pytest.approx(0.999**1000 + (1 - 0.999**1000) * 1e-4 / 1e-3, rel=1e-3)


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_trap_fp16_second_moment_underflows(impl: str) -> None:
    """(1-β2)·g² = 1e-9 for g = 1e-3: below fp16's smallest subnormal (6e-8), so s stays 0,
    the denominator is √0 + ε with ε = 1e-8 also rounded to 0 in fp16: the step is -inf."""
    for state_precision in (None, "fp32"):
        p = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
        opt = adamlab.Adam([p], lr=0.01, state_precision=state_precision, **IMPLS[impl])
        p.grad = torch.full((3,), 1e-3, dtype=torch.float16)
        opt.step()
        s = opt.state[p]["exp_avg_sq"]
        if state_precision is None:
            assert (s == 0).all()
            assert torch.isinf(p).all()
        else:
            assert s.dtype == torch.float32
            torch.testing.assert_close(s, torch.full((3,), 1e-9), rtol=1e-3, atol=0)
            # the first Adam step is lr·sign(g), rounded to fp16
            assert torch.equal(p.detach(), torch.full((3,), 1 - 0.01, dtype=torch.float16))


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_trap_fp16_eps_rounds_to_zero_and_a_zero_gradient_gives_nan(impl: str) -> None:
    """ε = 1e-8 is 0 in fp16: an element whose gradient is exactly 0 computes 0/0."""
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0
    for state_precision in (None, "fp32"):
        p = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
        opt = adamlab.Adam([p], state_precision=state_precision, **IMPLS[impl])
        p.grad = torch.tensor([0.0, 1.0], dtype=torch.float16)
        opt.step()
        if state_precision is None:
            assert torch.isnan(p[0]) and torch.isfinite(p[1])
        else:
            assert p[0].item() == 1.0 and torch.isfinite(p).all()


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_trap_eps_is_relative_to_the_gradient_scale(rule: str) -> None:
    """Adam's step is scale-invariant only while ε ≪ √ŝ ≈ |g|. With a loss scaled by 1e-8
    (say, an unscaled mean over huge batches) the default ε halves the step; scaling ε with
    the gradients restores invariance."""

    def first_step(scale: float, eps: float) -> float:
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        cls = OPTIMIZERS[rule]
        opt = cls([p], lr=0.01, eps=eps, initial_accumulator_value=0.0)
        p.grad = torch.full((1,), scale, dtype=torch.float64)
        opt.step()
        return -p.item()

    assert first_step(1.0, eps=1e-8) == pytest.approx(0.01, rel=1e-7)
    assert first_step(1e-8, eps=1e-8) == pytest.approx(0.005, rel=1e-7)  # g/(|g|+ε) = 1/2
    assert first_step(1e-8, eps=1e-16) == pytest.approx(0.01, rel=1e-7)  # ε scaled with g
