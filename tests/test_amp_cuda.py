"""GradScaler and non-finite gradients on CUDA (issue 8, §3; the GPU check script runs this).

Skipped without a CUDA device. What the CPU tests cannot show:

* ``torch.amp.GradScaler("cuda")`` with every CUDA implementation: a step with inf/NaN
  gradients changes nothing, and a run with it equals (bitwise) a run without that batch.
* The fused kernel skips **without a host synchronization**: ``scaler.step(opt)`` and
  ``skip_nonfinite=True`` run under ``torch.cuda.set_sync_debug_mode("error")``.
* fp16 parameters with a scaler (fused only), bf16 parameters with fp32 state.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

import adamlab
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED
from adamlab.optim.functional import get_implementation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

IMPLS: dict[str, dict[str, Any]] = {
    "single_tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "single_capturable": dict(foreach=False, capturable=True),
    "foreach_capturable": dict(foreach=True, capturable=True),
    "fused_cuda": dict(fused=True),
}
DEV = "cuda"


def impl_kwargs(name: str) -> dict[str, Any]:
    if name.startswith("fused"):
        if name not in REGISTERED:
            pytest.skip(f"{name} is not registered in this build")
        try:
            get_implementation(name)
        except Exception as exc:
            pytest.skip(f"{name} unavailable here: {exc}")
    return dict(IMPLS[name])


def make_model(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(DEV, dtype)


def loss_of(model: torch.nn.Module, i: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2000 + i)
    x, y = torch.randn(12, 6, generator=gen), torch.randn(12, 2, generator=gen)
    return torch.nn.functional.mse_loss(model(x.to(DEV, dtype)).float(), y.to(DEV))


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy({"params": [p.detach() for p in model.parameters()], "opt": opt.state_dict()})


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b)
    for key, entry in before["opt"]["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, after["opt"]["state"][key][name]), (key, name)


def scaled_step(model, opt, scaler, i, bad: float | None, no_sync: bool = False) -> None:
    opt.zero_grad()
    scaler.scale(loss_of(model, i)).backward()
    if bad is not None:
        model[0].weight.grad[1, 2] = bad
    if no_sync:  # any device->host synchronization inside raises
        torch.cuda.set_sync_debug_mode("error")
    try:
        scaler.step(opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    scaler.update()


@pytest.mark.parametrize("bad", ["nan", "inf"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cuda_grad_scaler_skips_and_changes_nothing(impl: str, bad: str) -> None:
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = adamlab.Yogi(model.parameters(), lr=0.01, **kwargs)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)
    for i in range(3):
        scaled_step(model, opt, scaler, i, None)
    before = snapshot(model, opt)
    no_sync = impl.startswith("fused")  # the fused kernel reads found_inf on the device
    scaled_step(model, opt, scaler, 3, {"nan": math.nan, "inf": math.inf}[bad], no_sync=no_sync)
    assert_unchanged(before, snapshot(model, opt))
    assert scaler.get_scale() == 2.0**11
    for i in (4, 5):
        scaled_step(model, opt, scaler, i, None)
    plain = make_model()
    plain_opt = adamlab.Yogi(plain.parameters(), lr=0.01, **kwargs)
    for i in (0, 1, 2, 4, 5):
        plain_opt.zero_grad()
        loss_of(plain, i).backward()
        plain_opt.step()
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("impl", ["fused_cuda"])
def test_cuda_fused_skip_nonfinite_does_not_synchronize(impl: str) -> None:
    model = make_model()
    opt = adamlab.Adam(model.parameters(), skip_nonfinite=True, **impl_kwargs(impl))
    loss_of(model, 0).backward()
    opt.step()  # state is created here (allocations may sync); the next steps must not
    before = snapshot(model, opt)
    opt.zero_grad()
    loss_of(model, 1).backward()
    model[2].bias.grad[0] = math.nan
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_unchanged(before, snapshot(model, opt))


@pytest.mark.parametrize("impl", list(IMPLS))
def test_cuda_fp16_parameters_with_a_scaler(impl: str) -> None:
    kwargs = impl_kwargs(impl)
    model = make_model(torch.float16)
    opt = adamlab.Adam(model.parameters(), state_precision="fp32", **kwargs)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)
    opt.zero_grad()
    scaler.scale(loss_of(model, 0, torch.float16)).backward()
    if not kwargs.get("fused"):
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
            scaler.step(opt)
        return
    scaler.step(opt)
    scaler.update()
    assert all(torch.isfinite(p).all() and p.dtype == torch.float16 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())


@pytest.mark.parametrize("impl", list(IMPLS))
def test_cuda_bf16_autocast_training_reduces_the_loss(impl: str) -> None:
    kwargs = impl_kwargs(impl)
    model = make_model()
    opt = adamlab.Adam(model.parameters(), lr=0.01, **kwargs)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_of(model, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
