"""A change between steps is seen at the next step, on every implementation.

``optimizer.step()`` reads every gradient and state tensor anew (a fused CPU group keeps
where its flat state lives, checked by address at every step: adamlab.optim.flat_state, whose
short path the rebuilt twin also takes, after its load). Each test here changes something
between two steps, the way user code does, and compares the optimizer with a twin rebuilt
from scratch (a new optimizer loaded from the old one's ``state_dict``) before every step:
results must be identical, bit for bit.

Also here: ``step()`` runs step hooks (the optimizer's own and the global ones) and opens
torch's profiler range while a profiler records.
"""

from __future__ import annotations

import collections
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import adamlab
from tests.registry import IMPLEMENTATIONS, require

IMPLS = list(IMPLEMENTATIONS)


def _params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in [(3, 2), (4,), (), (5,)]]


def _rebuilt(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A new optimizer over the same parameters and hyperparameters, with ``opt``'s state."""
    fresh = type(opt)([dict(group) for group in opt.param_groups])
    fresh.load_state_dict(opt.state_dict())
    return fresh


class Twins:
    """One optimizer that lives across steps, one rebuilt from scratch before every step."""

    def __init__(self, impl_name: str, opt_cls: type = adamlab.Yogi, **kwargs: Any) -> None:
        impl = require(impl_name)
        self.params = [_params(), _params()]
        self.opts = [opt_cls(ps, lr=0.05, **impl.kwargs, **kwargs) for ps in self.params]
        self.gen = torch.Generator().manual_seed(1)

    def both(self, change: Callable[[torch.optim.Optimizer, list[torch.Tensor]], None]) -> None:
        for opt, ps in zip(self.opts, self.params):
            change(opt, ps)

    def step(self, skip: tuple[int, ...] = ()) -> None:
        grads = [torch.randn(p.shape, generator=self.gen, dtype=torch.float64) for p in self.params[0]]
        for ps in self.params:
            for i, (p, g) in enumerate(zip(ps, grads)):
                p.grad = None if i in skip else g.clone()
        self.opts[1] = _rebuilt(self.opts[1])
        for opt in self.opts:
            opt.step()

    def check(self) -> None:
        cached, fresh = self.opts
        for p, q in zip(*self.params):
            assert torch.equal(p, q)
            assert cached.state[p].keys() == fresh.state[q].keys()
            for key in cached.state[p]:
                assert torch.equal(cached.state[p][key], fresh.state[q][key]), key


def _replace_entry(key: str, make: Callable[[torch.Tensor], torch.Tensor]):
    def change(opt, ps):
        opt.state[ps[1]][key] = make(opt.state[ps[1]][key])

    return change


CHANGES: dict[str, Callable[[Any, list[torch.Tensor]], None]] = {
    "exp_avg replaced": _replace_entry("exp_avg", lambda t: torch.full_like(t, 0.5)),
    "exp_avg_sq replaced": _replace_entry("exp_avg_sq", lambda t: torch.full_like(t, 2.0)),
    "step replaced": _replace_entry("step", lambda t: torch.zeros_like(t)),
    "state deleted": lambda opt, ps: opt.state.pop(ps[1]),
    "state replaced by an empty dict": lambda opt, ps: opt.state.__setitem__(ps[0], {}),
    "state cleared": lambda opt, ps: opt.state.clear(),
    "parameter appended to the group": lambda opt, ps: opt.param_groups[0]["params"].append(
        torch.ones(2, dtype=torch.float64, requires_grad=True)
    ),
    "parameter data replaced": lambda opt, ps: setattr(ps[0], "data", ps[0].data.clone() * 2),
    "state loaded": lambda opt, ps: opt.load_state_dict(opt.state_dict()),
    "state dict cleared in place": lambda opt, ps: opt.state[ps[1]].clear(),
    "state tensors moved with .data": lambda opt, ps: [
        setattr(t, "data", t.data.clone()) for t in opt.state[ps[1]].values() if torch.is_tensor(t)
    ],
    "parameter group replaced by a copy": lambda opt, ps: opt.param_groups.__setitem__(0, dict(opt.param_groups[0])),
    "hyperparameters changed": lambda opt, ps: opt.param_groups[0].update(lr=0.2, betas=(0.5, 0.9), eps=1e-2),
}


@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_between_steps_is_seen(impl_name: str, change: str) -> None:
    twins = Twins(impl_name, amsgrad=True)
    for _ in range(3):
        twins.step()
    twins.check()
    twins.both(CHANGES[change])
    for _ in range(3):
        twins.step()
        twins.check()


@pytest.mark.parametrize("impl_name", IMPLS)
def test_amsgrad_turned_on_between_steps(impl_name: str) -> None:
    twins = Twins(impl_name)
    for _ in range(2):
        twins.step()

    def amsgrad_on(opt, ps):
        for state in opt.state.values():
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
        opt.param_groups[0]["amsgrad"] = True

    twins.both(amsgrad_on)
    for _ in range(2):
        twins.step()
        twins.check()


@pytest.mark.parametrize("impl_name", IMPLS)
def test_gradients_that_come_and_go(impl_name: str) -> None:
    twins = Twins(impl_name)
    for skip in [(), (), (1,), (1,), (), (0, 3), (), (2,)]:
        twins.step(skip)
        twins.check()


@pytest.mark.parametrize("impl_name", IMPLS)
def test_the_optimizer_does_not_keep_gradients_alive(impl_name: str) -> None:
    """zero_grad(set_to_none=True) frees the gradients: nothing cached holds them."""
    impl = require(impl_name)
    params = _params()
    opt = adamlab.Adam(params, lr=0.1, **impl.kwargs)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    refs = [weakref.ref(p.grad) for p in params]
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("impl_name", IMPLS)
def test_replaced_or_dropped_state_is_freed_at_once(impl_name: str) -> None:
    """Nothing cached holds state tensors: a replaced entry, a deleted state or a whole
    removed group is freed when the user lets go of it, not at the next step."""
    impl = require(impl_name)
    params = _params()
    extra = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = adamlab.Adam([{"params": params}, {"params": [extra]}], lr=0.1, **impl.kwargs)
    for _ in range(2):
        _give_gradients([*params, extra])
        opt.step()
    old = weakref.ref(opt.state[params[0]]["exp_avg"])
    opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].clone()
    dropped = [weakref.ref(t) for t in opt.state[params[1]].values()]
    del opt.state[params[1]]
    gc.collect()
    assert old() is None and all(r() is None for r in dropped)
    # a removed group: its parameter, gradient and state go as soon as the user drops them
    gone = [weakref.ref(extra), weakref.ref(extra.grad), *(weakref.ref(t) for t in opt.state[extra].values())]
    del opt.param_groups[1], opt.state[extra], extra
    gc.collect()
    assert all(r() is None for r in gone)
    # the reset-the-state idiom: the old state is freed before the next step allocates anew
    old_state = [weakref.ref(t) for s in opt.state.values() for t in s.values()]
    opt.state = collections.defaultdict(dict)
    gc.collect()
    assert old_state and all(r() is None for r in old_state)
    opt.step()
    assert all(opt.state[p]["step"].item() == 1 for p in params)


def _give_gradients(tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        t.grad = torch.ones_like(t)


def test_load_state_dict_takes_non_tensor_entries_and_empty_states() -> None:
    """What torch.optim.Adam loads, adamlab loads: a state entry that is not a tensor (kept
    as is), and a parameter whose saved state is {} (a lookup in the defaultdict left it)."""
    params = _params()
    opt = adamlab.Adam(params, lr=0.1)
    _give_gradients(params[:2])
    opt.step()
    opt.state[params[0]]["note"] = 7
    _ = opt.state[params[3]]  # leaves {} behind, saved as such
    saved = opt.state_dict()
    assert saved["state"][3] == {}
    fresh = adamlab.Adam(_params(), lr=0.1)
    fresh.load_state_dict(saved)
    first = fresh.param_groups[0]["params"][0]
    assert fresh.state[first]["note"] == 7 and fresh.state[first]["step"].item() == 1
    _give_gradients(fresh.param_groups[0]["params"])
    fresh.step()
    assert fresh.state[first]["step"].item() == 2


def test_a_post_hook_registered_by_the_closure_runs_that_step() -> None:
    params = _params()
    opt = adamlab.Adam(params, lr=0.1)
    calls = []

    def closure():
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(1))
        for p in params:
            p.grad = torch.ones_like(p)
        return 0.0

    opt.step(closure)
    assert calls == [1]  # as torch.optim.Adam: the hook is there when the step ends


def test_a_sparse_gradient_after_dense_ones_raises() -> None:
    emb = torch.nn.Embedding(5, 2)
    opt = adamlab.Adam(emb.parameters(), lr=0.1)
    emb.weight.grad = torch.ones_like(emb.weight)
    opt.step()
    emb.weight.grad = torch.ones_like(emb.weight).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


# ---- step hooks and the profiler -------------------------------------------------------


def _one_step(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("opt_cls", [adamlab.Adam, adamlab.Yogi])
def test_step_hooks_run_around_the_step(opt_cls) -> None:
    params = _params()
    opt = opt_cls(params, lr=0.1)
    calls: list[tuple[str, float]] = []
    value = lambda: float(params[1][0])  # noqa: E731
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", value()))),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", value()))),
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", value()))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", value()))),
    ]
    try:
        before = value()
        _one_step(opt)
        after = value()
    finally:
        for h in handles:
            h.remove()
    assert after != before
    assert calls == [("global pre", before), ("pre", before), ("post", after), ("global post", after)]
    _one_step(opt)  # hooks removed: nothing more is called
    assert len(calls) == 4


def test_a_pre_hook_can_replace_the_arguments() -> None:
    params = _params()
    opt = adamlab.Adam(params, lr=0.1)
    evaluated = []
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": lambda: evaluated.append(1) or 3.0}))
    for p in params:
        p.grad = torch.ones_like(p)
    assert opt.step() == 3.0
    assert evaluated == [1]


def test_the_profiler_still_sees_the_step() -> None:
    opt = adamlab.Yogi(_params(), lr=0.1)
    _one_step(opt)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _one_step(opt)
    names = {event.name for event in prof.events()}
    assert "Optimizer.step#Yogi.step" in names


def test_the_step_path_uses_no_private_internals() -> None:
    """No torch._C calls, no torch hook registries, no Triton launcher internals in optim/
    (torch._foreach_* ops, as torch's own optimizers use, are fine)."""
    import pathlib

    import adamlab.optim

    root = pathlib.Path(adamlab.optim.__file__).parent
    forbidden = (
        "torch._C",
        "_global_optimizer",
        "_set_grad_enabled",
        ".run.launch",
        "packed_metadata",
        "importlib.import_module",
    )
    for path in [*root.glob("*.py"), *root.glob("csrc/*")]:
        text = path.read_text()
        for name in forbidden:
            assert name not in text, f"{path.name} uses {name}"
    assert not (root / "_host.py").exists() and not (root / "csrc" / "host.cpp").exists()
