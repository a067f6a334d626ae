"""initialize_moments refuses bad batches, naming the batch and parameter (issue 18, item 6).

Before, a NaN in one gradient of one batch went into s for good (NaN parameters after
clean steps, even with ``skip_nonfinite=True``), and a batch that was a list of floats,
``None`` or a closure returning ``None`` raised ``AttributeError``/``TypeError`` naming no
batch. Each case here must raise the documented type, name the batch, and leave the
optimizer's state (and the parameters' ``.grad``) as they were.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

import adamlab


def _setup() -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    return params, adamlab.Yogi(params, bias_correction=False, skip_nonfinite=True)


def _good(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.ones_like(p) for p in params]


def _with(params: list[torch.Tensor], i: int, value: Any) -> list[Any]:
    grads: list[Any] = _good(params)
    grads[i] = value
    return grads


def _nan_at(p: torch.Tensor, value: float) -> torch.Tensor:
    g = torch.ones_like(p)
    g.view(-1)[-1] = value
    return g


def _loss(params: list[torch.Tensor]) -> torch.Tensor:
    return sum((p * p).sum() for p in params)


CASES = {
    # name: (second batch, given the params; exception; message fragment)
    "NaN gradient": (
        lambda ps: _with(ps, 1, _nan_at(ps[1], math.nan)),
        ValueError,
        "batch 1: gradient 1 (shape (2, 2)) holds inf or NaN (nan first)",
    ),
    "inf gradient": (
        lambda ps: _with(ps, 0, _nan_at(ps[0], -math.inf)),
        ValueError,
        "batch 1: gradient 0 (shape (3,)) holds inf or NaN (-inf first)",
    ),
    "NaN through a closure": (
        lambda ps: lambda: _loss(ps) * math.nan,
        ValueError,
        "batch 1: gradient 0 (shape (3,)) holds inf or NaN",
    ),
    "list of floats": (lambda ps: [1.0, 2.0], TypeError, "batch 1: gradient 0 is float 1.0, expected a tensor or None"),
    "None": (lambda ps: None, TypeError, "batch 1 is NoneType: expected a list of gradients"),
    "a number": (lambda ps: 3.0, TypeError, "batch 1 is float"),
    "a bare tensor": (lambda ps: torch.ones(3), TypeError, "batch 1 is Tensor"),
    "closure returning None": (
        lambda ps: lambda: None,
        TypeError,
        "batch 1: the closure returned None, not a loss tensor",
    ),
    "closure returning a vector": (
        lambda ps: lambda: ps[0] * 2,
        ValueError,
        "batch 1: the closure returned a loss of shape (3,)",
    ),
    "closure with a detached loss": (
        lambda ps: lambda: torch.tensor(1.0),
        ValueError,
        "batch 1: the closure's loss does not depend",
    ),
    "wrong count": (
        lambda ps: [torch.ones(3)],
        ValueError,
        "batch 1 has 1 gradient(s), the optimizer has 2 parameter(s)",
    ),
    "wrong shape": (
        lambda ps: _with(ps, 1, torch.ones(4)),
        ValueError,
        "batch 1: gradient 1 has shape (4,), its parameter (2, 2)",
    ),
    "integer gradient": (
        lambda ps: _with(ps, 0, torch.ones(3, dtype=torch.int64)),
        TypeError,
        "batch 1: gradient 0 has dtype torch.int64",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_batch_is_refused_naming_it_and_nothing_changes(case: str) -> None:
    params, opt = _setup()
    make, exc, fragment = CASES[case]
    before = copy.deepcopy(opt.state_dict())
    grads_before = [None, torch.full_like(params[1], 7.0)]
    for p, g in zip(params, grads_before):
        p.grad = g
    with pytest.raises(exc) as info:
        opt.initialize_moments([_good(params), make(params), _good(params)])
    assert fragment in str(info.value)
    assert not opt.state and opt.state_dict()["param_groups"] == before["param_groups"]  # nothing created
    assert params[0].grad is None and params[1].grad is grads_before[1]


@pytest.mark.parametrize("batches", [None, 5, torch.ones(2)], ids=["None", "int", "tensor"])
def test_batches_not_an_iterable_of_batches(batches: Any) -> None:
    _, opt = _setup()
    with pytest.raises(TypeError, match="batches must be an iterable of batches"):
        opt.initialize_moments(batches)


def test_refused_nan_batch_leaves_later_training_finite() -> None:
    """The reported failure: one NaN element in one batch, then clean steps -> NaN parameters."""
    params, opt = _setup()
    with pytest.raises(ValueError):
        opt.initialize_moments([_good(params), _with(params, 0, _nan_at(params[0], math.nan))])
    opt.initialize_moments([_good(params), _good(params)])
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert all(torch.isfinite(p).all() for p in params)


def test_good_batches_still_work_for_torch_adam_too() -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params)
    assert adamlab.optim.init_moments.initialize_moments(opt, [[torch.full((3,), 2.0)], [None]]) == 2
    assert torch.equal(opt.state[params[0]]["exp_avg_sq"], torch.full((3,), 4.0))
