"""torch.compile (issue 8, §4): few and small, because compiling is slow on a small CPU.

* ``torch.compile(opt.step)`` and a compiled training step that calls it run and match
  eager (inductor, the default backend; one optimizer and implementation each).
* Every implementation runs under ``torch.compile`` (the ``aot_eager`` backend: the same
  graph capture and functionalization, without inductor's code generation).
* Changing the learning rate (a tensor, or a float) does not recompile: graphs are counted
  with ``torch._dynamo.testing.CompileCounter``.
* Low-precision state and stochastic rounding (issue 14) under ``torch.compile(opt.step)``:
  the same bits as eager (their bit-level paths run eagerly inside the compiled step).

Versions: verified on the torch this suite runs with (2.13 in the dev environment and CI).
``pyproject.toml`` allows torch >= 2.4 for eager use; for ``torch.compile`` we state support
only for the versions verified here (see docs/training.md).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import adamlab
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED
from adamlab.optim.functional import get_implementation

IMPLS: dict[str, dict[str, Any]] = {
    "single_tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "single_capturable": dict(foreach=False, capturable=True),
    "foreach_capturable": dict(foreach=True, capturable=True),
    "fused_cpu": dict(fused=True),
}
STEPS = 6


def impl_kwargs(name: str) -> dict[str, Any]:
    if name.startswith("fused"):
        if name not in REGISTERED:
            pytest.skip(f"{name} is not registered in this build")
        try:
            get_implementation(name)
        except Exception as exc:  # a kernel that cannot be built on this machine
            pytest.skip(f"{name} unavailable here: {exc}")
    return dict(IMPLS[name])


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def make_small_model() -> torch.nn.Module:
    """For inductor: every kernel it generates is a C++ compile, so keep them few."""
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    return torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)


def assert_match(model_a, opt_a, model_b, opt_b) -> None:
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for key, value in opt_a.state[p].items():
            # compiled scalar math may round the last bit differently (state elements ~1e-5)
            torch.testing.assert_close(opt_b.state[q][key], value, rtol=1e-5, atol=1e-8)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, step_fn, steps: int = STEPS) -> list[int]:
    """Train with a learning-rate schedule; return the compile counter after each step."""
    graphs = []
    for i in range(steps):
        x, y = batch(i)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        set_lr(opt, 0.01 / (i + 1))
        step_fn()
        graphs.append(getattr(step_fn, "counter", None) and step_fn.counter.frame_count)
    return graphs


def set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)  # in place, as a tensor-valued scheduler would
        else:
            group["lr"] = value


def compiled(fn, backend) -> Any:
    out = torch.compile(fn, backend=backend)
    out.counter = backend
    return out


@pytest.mark.parametrize("impl", list(IMPLS))
def test_compiled_step_matches_eager_and_lr_changes_do_not_recompile(impl: str) -> None:
    """Every implementation under ``torch.compile(opt.step)`` (aot_eager backend), lr a tensor
    that a schedule changes every step."""
    kwargs = impl_kwargs(impl)
    if impl == "foreach":  # torch's rule (issue 16, item 3): refused; foreach_capturable runs it
        with pytest.raises(ValueError, match="lr as a Tensor is not supported for capturable=False and foreach=True"):
            adamlab.Yogi(make_model().parameters(), lr=torch.tensor(0.01), **kwargs)
        return
    eager, model = make_model(), make_model()
    opt_e = adamlab.Yogi(eager.parameters(), lr=torch.tensor(0.01), **kwargs)
    opt_c = adamlab.Yogi(model.parameters(), lr=torch.tensor(0.01), **kwargs)
    train(eager, opt_e, opt_e.step)
    graphs = train(model, opt_c, compiled(opt_c.step, CompileCounterWithBackend("aot_eager")))
    assert_match(eager, opt_e, model, opt_c)
    if not impl.startswith("fused"):  # the ctypes kernel is opaque to dynamo: it runs eagerly
        assert graphs[0] > 0, "nothing was compiled"
    # step 1 compiles (and creates the state), step 2 the steady state; then nothing, not for
    # a new lr nor for a new step count
    assert graphs[2:] == [graphs[1]] * (STEPS - 2), graphs


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_float_lr_changes_do_not_recompile(impl: str) -> None:
    """A Python-float lr: dynamo does not specialize on the float's value either."""
    model = make_model()
    opt = adamlab.Adam(model.parameters(), lr=0.01, **IMPLS[impl])
    graphs = train(model, opt, compiled(opt.step, CompileCounter()))
    assert graphs[2:] == [graphs[1]] * (STEPS - 2), graphs


@pytest.mark.slow
def test_inductor_compiled_training_step_matches_eager() -> None:
    """Forward, backward and ``opt.step()`` in one compiled function (inductor)."""
    eager, compiled = make_small_model(), make_small_model()
    opt_e = adamlab.Yogi(eager.parameters(), lr=0.01, foreach=True, capturable=True)
    opt_c = adamlab.Yogi(compiled.parameters(), lr=0.01, foreach=True, capturable=True)

    def make_step(model, opt):
        def train_step(x, y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return train_step

    step_e, step_c = make_step(eager, opt_e), torch.compile(make_step(compiled, opt_c))
    for i in range(STEPS):
        x, y = batch(i)
        loss_e, loss_c = step_e(x, y), step_c(x, y)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-7)
    assert_match(eager, opt_e, compiled, opt_c)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("impl", ["fused_default", "foreach"])
def test_low_precision_state_under_compile_matches_eager(precision: str, impl: str) -> None:
    """``torch.compile(opt.step)`` with bf16 or 8-bit state (issue 14): the fused kernel that
    such a group runs by default stays eager inside the compiled step, the readable path is
    traced; both end where the eager optimizer ends -- the same codes, bf16 moments and seeds,
    the parameters to float32 rounding."""
    kwargs = dict(state_precision=precision, block_size=16)
    if impl == "foreach":
        kwargs["foreach"] = True
    eager, model = make_model(), make_model()
    opt_e = adamlab.Adam(eager.parameters(), lr=0.01, **kwargs)
    opt_c = adamlab.Adam(model.parameters(), lr=0.01, **kwargs)
    train(eager, opt_e, opt_e.step, steps=3)
    train(model, opt_c, compiled(opt_c.step, CompileCounterWithBackend("aot_eager")), steps=3)
    assert_match(eager, opt_e, model, opt_c)
    stored = {"bf16": {torch.bfloat16}, "8bit": {torch.uint8}}[precision]
    assert {s["exp_avg"].dtype for s in opt_c.state.values()} == stored


def test_stochastic_rounding_of_bf16_parameters_under_compile_matches_eager() -> None:
    """bfloat16 parameters written back with stochastic rounding (the readable path), in a
    compiled step: the same bits as eager, for every parameter of the group."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(8, 4), (8,), (3,)]
    init = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    eager = [torch.nn.Parameter(t.clone()) for t in init]
    traced = [torch.nn.Parameter(t.clone()) for t in init]
    opt_e = adamlab.Adam(eager, lr=1e-3, foreach=True, stochastic_rounding=True, rounding_seed=7)
    opt_c = adamlab.Adam(traced, lr=1e-3, foreach=True, stochastic_rounding=True, rounding_seed=7)
    step = torch.compile(opt_c.step, backend="aot_eager")
    for _ in range(2):
        for p, q, g in zip(eager, traced, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_e.step()
        step()
    for p, q in zip(eager, traced):
        assert torch.equal(p.view(torch.int16), q.view(torch.int16))
        for key, value in opt_e.state[p].items():
            assert torch.equal(opt_c.state[q][key], value), key
