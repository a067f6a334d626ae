"""A table of bad inputs: each raises the documented exception with a message naming the value."""

from __future__ import annotations

import math

import pytest
import torch

import adamlab
from adamlab.validation import validate_hyperparameters

P = [torch.zeros(2, requires_grad=True)]

BAD = [
    # (kwargs, exception, message fragment)
    (dict(lr=-1e-3), ValueError, "Invalid learning rate: -0.001"),
    (dict(lr=math.nan), ValueError, "Invalid learning rate: nan"),
    (dict(lr=math.inf), ValueError, "Invalid learning rate: inf"),
    (dict(lr="0.1"), ValueError, "Invalid learning rate: '0.1'"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "tensor lr must have one element"),
    (dict(lr=torch.tensor(-0.5)), ValueError, "Invalid learning rate: -0.5"),
    (dict(betas=(1.2, 0.999)), ValueError, "Invalid beta parameter at index 0: 1.2"),
    (dict(betas=(0.9, 1.0)), ValueError, "Invalid beta parameter at index 1: 1.0"),
    (dict(betas=(-0.1, 0.999)), ValueError, "Invalid beta parameter at index 0: -0.1"),
    (dict(betas=(0.9,)), ValueError, "Invalid betas"),
    (dict(betas=0.9), ValueError, "Invalid betas"),
    (dict(eps=-1e-8), ValueError, "Invalid epsilon value: -1e-08"),
    (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value: -0.1"),
    (dict(initial_accumulator_value=-1.0), ValueError, "Invalid initial_accumulator_value (s0): -1.0"),
    (dict(bias_correction="yes"), ValueError, "Invalid bias_correction: 'yes'"),
    (dict(bias_correction=1), ValueError, "Invalid bias_correction: 1"),
    (dict(state_dtype=torch.int32), ValueError, "Invalid state_dtype: torch.int32"),
    (dict(differentiable=True), ValueError, "differentiable=True"),
    (dict(fused=True, foreach=True), ValueError, "fused=True and foreach=True"),
    (dict(nesterov=True), TypeError, "nesterov"),
    (dict(momentum=0.9), TypeError, "momentum"),
]


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
@pytest.mark.parametrize("kwargs,exc,fragment", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_constructor_arguments(cls, kwargs, exc, fragment) -> None:
    with pytest.raises(exc) as info:
        cls(P, **kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
def test_empty_parameter_list(cls) -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
def test_bad_param_group_values_are_caught_too(cls) -> None:
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 2"):
        cls([{"params": P, "betas": (0.9, 2)}])
    opt = cls(P)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": -1})
    assert len(opt.param_groups) == 1  # nothing half-added
    with pytest.raises(ValueError, match="Invalid state_dtype: 'float32'"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "state_dtype": "float32"})


def test_fused_where_no_kernel_exists_fails_at_first_step_with_a_clear_error() -> None:
    p = torch.zeros(2, device="meta", requires_grad=True)
    opt = adamlab.Yogi([p], fused=True)
    p.grad = torch.zeros(2, device="meta")
    with pytest.raises(RuntimeError, match="fused=True is not available for meta tensors"):
        opt.step()


def test_validation_is_framework_free_and_accepts_good_values() -> None:
    validate_hyperparameters(lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, initial_accumulator_value=0.0)
    validate_hyperparameters(lr=1, betas=[0.9, 0.999], bias_correction="recursive")
    validate_hyperparameters(bias_correction=False)
