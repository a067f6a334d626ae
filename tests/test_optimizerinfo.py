"""adamlab.Adam and adamlab.Yogi through torch's own test inputs for Adam and AdamW.

``torch.testing._internal.common_optimizers`` (shipped with torch; it needs the
``expecttest`` package, in adamlab's ``dev`` extra) describes each torch optimizer by an
``OptimizerInfo``: the configurations its tests run (``optim_inputs_func``), the inputs
that must fail and how (``optim_error_inputs_func``), and the implementations it has
(``supported_impls``). These tests import them when they run -- nothing of torch's test
code is copied -- so a new torch release brings its new cases here by itself.

* Every config x implementation (loop, foreach, fused, differentiable): adamlab.Adam
  (with ``decoupled_weight_decay=True`` for AdamW) against torch's optimizer with the same
  arguments -- bitwise for loop and foreach, within the README's bound for fused CPU,
  to rounding for differentiable -- parameters and every state tensor, over parameters
  that include a zero-size one, a frozen one and one whose gradient skips a step.
* Yogi through the same configs against the float64 reference (``adamlab.reference``),
  beside the registry-driven tests of ``test_against_reference.py``.
* Every error input raises the same exception type with a message matching torch's,
  for Adam and Yogi alike -- except where adamlab is stricter on purpose (a parameter
  listed twice in a group: torch warns, adamlab refuses, issue 18 item 3).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from tests.registry import reference_hyper, state_of, to64

PEERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
IMPLS = {
    "loop": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused": dict(fused=True),
    "differentiable": dict(differentiable=True),
}
STEPS = 6
# The fused CPU bound after STEPS steps from the same start (see test_conformance_torch.py)
FUSED_BOUND = {torch.float32: 2e-6, torch.float64: 1e-14}


@pytest.fixture(scope="module")
def infos() -> dict[str, Any]:
    try:
        from torch.testing._internal import common_optimizers
    except ImportError as exc:  # expecttest missing: torch's test helpers do not import
        pytest.skip(f"torch's OptimizerInfo does not import here ({exc}); pip install expecttest")
    found = {i.optim_cls.__name__: i for i in common_optimizers.optim_db if i.optim_cls.__name__ in PEERS}
    assert set(found) == set(PEERS), f"torch {torch.__version__} has no OptimizerInfo for {set(PEERS) - set(found)}"
    return found


def _adamlab_kwargs(peer: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The adamlab arguments that mean what ``kwargs`` mean to torch's ``peer``."""
    if peer != "AdamW":
        return dict(kwargs)
    wd = inspect.signature(torch.optim.AdamW).parameters["weight_decay"].default  # AdamW's own default
    return {"weight_decay": wd, **kwargs, "decoupled_weight_decay": True}


def _params(dtype: torch.dtype, differentiable: bool) -> list[torch.Tensor]:
    """Awkward on purpose: a 0-dim, a zero-size, a frozen (never a gradient) parameter."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (4,), (), (0, 3), (2,)]
    leaves = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    # differentiable: non-leaf copies (autograd records the in-place update), as torch's tests
    return [p.clone() for p in leaves] if differentiable else leaves


def _grads(params: list[torch.Tensor], k: int) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(100 + k)
    grads: list[torch.Tensor | None] = [
        torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params
    ]
    grads[-1] = None  # frozen
    if k == 2:
        grads[1] = None  # skips one step
    return grads


def _run(cls: type, kwargs: dict[str, Any], dtype: torch.dtype, differentiable: bool) -> Any:
    """STEPS steps; returns (params, optimizer), or the exception a construction or step raised."""
    params = _params(dtype, differentiable)
    try:
        opt = cls(params, **kwargs)
        for k in range(STEPS):
            for p, g in zip(params, _grads(params, k)):
                p.grad = g
            opt.step()
    except Exception as exc:
        return exc
    return params, opt


def _configs(info: Any, dtype: torch.dtype) -> list[Any]:
    configs = info.optim_inputs_func(device="cpu", dtype=dtype)
    assert configs, "torch gave no configs"
    return configs


def _fused_runs_here() -> str | None:
    out = _run(adamlab.Adam, dict(fused=True), torch.float32, False)
    return f"fused_cpu unavailable here: {out}" if isinstance(out, Exception) else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("peer", list(PEERS))
def test_every_torch_config_matches_torch(infos: dict, peer: str, impl: str, dtype: torch.dtype) -> None:
    info = infos[peer]
    if impl not in info.supported_impls and impl != "loop":
        pytest.skip(f"torch's {peer} does not list {impl}")
    if impl == "fused" and (reason := _fused_runs_here()):
        pytest.skip(reason)
    differentiable = impl == "differentiable"
    checked = 0
    for config in _configs(info, dtype):
        kwargs = {**config.kwargs, **IMPLS[impl]}
        what = f"{peer} config {config.desc!r} {kwargs} ({impl}, {dtype})"
        theirs = _run(PEERS[peer], kwargs, dtype, differentiable)
        ours = _run(adamlab.Adam, _adamlab_kwargs(peer, kwargs), dtype, differentiable)
        if isinstance(theirs, Exception):
            assert isinstance(ours, type(theirs)), f"{what}: torch raised {theirs!r}, adamlab gave {ours!r}"
            continue
        assert not isinstance(ours, Exception), f"{what}: adamlab raised {ours!r}"
        (ps, opt), (qs, ref) = ours, theirs
        for i, (p, q) in enumerate(zip(ps, qs)):
            pairs = [("param", p, q)] + [(k, opt.state[p][k], v) for k, v in ref.state[q].items()]
            assert opt.state[p].keys() == ref.state[q].keys(), f"{what}: state keys of param {i}"
            for name, a, b in pairs:
                a, b = a.detach(), b.detach()
                if impl in ("loop", "foreach"):
                    assert a.dtype == b.dtype and torch.equal(a, b), f"{what}: {name} of param {i} not bitwise"
                elif impl == "fused":
                    worst = (a - b).abs().max().item() if a.numel() else 0.0
                    assert worst <= FUSED_BOUND[dtype] * max(1.0, b.abs().max().item() if b.numel() else 0.0), (
                        f"{what}: {name} of param {i} off by {worst}"
                    )
                else:  # differentiable: torch computes 1-β^t from its float32 step there, adamlab in float64
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"{what}: {name} of param {i}")
        checked += 1
    assert checked, f"no {peer} config ran for {impl}"


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("peer", list(PEERS))
def test_yogi_through_every_torch_config_matches_the_reference(infos: dict, peer: str, impl: str) -> None:
    if impl == "fused" and (reason := _fused_runs_here()):
        pytest.skip(reason)
    differentiable = impl == "differentiable"
    for config in _configs(infos[peer], torch.float64):
        kwargs = _adamlab_kwargs(peer, {**config.kwargs, **IMPLS[impl]})
        out = _run(adamlab.Yogi, kwargs, torch.float64, differentiable)
        assert not isinstance(out, Exception), f"Yogi {kwargs}: {out!r}"
        params, opt = out
        group = opt.param_groups[0]
        hyper = reference_hyper(group)
        start = _params(torch.float64, False)
        for i, p in enumerate(params):
            theta = to64(start[i])
            state = reference.init_state(theta, s0=group["initial_accumulator_value"], amsgrad=group["amsgrad"])
            for k in range(STEPS):
                g = _grads(start, k)[i]
                if g is not None:
                    theta, state = reference.step("yogi", theta, to64(g), state, **hyper)
            np.testing.assert_allclose(to64(p), theta, rtol=1e-10, atol=1e-12, err_msg=f"Yogi {kwargs} param {i}")
            if state.t:
                got = state_of(opt, p)
                assert got.t == state.t
                np.testing.assert_allclose(got.s, state.s, rtol=1e-10, atol=1e-20, err_msg=f"Yogi {kwargs} s {i}")
            else:
                assert not opt.state.get(p), "a parameter without a gradient got state"


# Where adamlab departs from torch on purpose: (torch's error type) -> (adamlab's, why)
STRICTER = {UserWarning: (ValueError, "a parameter listed twice is refused, not warned about (issue 18, item 3)")}


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
@pytest.mark.parametrize("peer", list(PEERS))
def test_every_torch_error_input_raises_the_same(infos: dict, peer: str, cls: type) -> None:
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    error_inputs = infos[peer].optim_error_inputs_func(device="cpu", dtype=torch.float32)
    assert error_inputs, "torch gave no error inputs"
    for error in error_inputs:
        given = error.optimizer_error_input
        params = given.params if given.params is not None else [torch.nn.Parameter(torch.randn(2, 2))]
        expected, regex = error.error_type, error.error_regex
        if expected in STRICTER:
            expected = STRICTER[expected][0]
        what = f"{peer} error input {given.desc!r} {given.kwargs}"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning where torch warns would be no refusal
            with pytest.raises(expected, match=regex) as raised:
                opt = cls(params, **_adamlab_kwargs(peer, given.kwargs))
                if error.error_on == OptimizerErrorEnum.STEP_ERROR:
                    for p in opt.param_groups[0]["params"]:
                        p.grad = torch.ones_like(p)
                    opt.step()
        assert raised.type is not None, what
