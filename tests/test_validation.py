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
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element, got shape (2,)"),
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
    (dict(state_precision=torch.float32), ValueError, "Invalid state_precision: torch.float32"),
    (
        dict(state_precision="int8"),
        ValueError,
        "Invalid state_precision: 'int8' (expected None, 'fp32', 'bf16' or '8bit')",
    ),
    (dict(block_size=100), ValueError, "Invalid block_size: 100 (expected a power of two from 16 to 8192)"),
    (dict(block_size=8), ValueError, "Invalid block_size: 8"),
    (dict(block_size=16384), ValueError, "Invalid block_size: 16384"),
    (dict(block_size=256.0), ValueError, "Invalid block_size: 256.0"),
    (dict(rounding_seed=-1), ValueError, "Invalid rounding_seed: -1 (expected an integer with 0 <= seed < 2**32)"),
    (dict(rounding_seed=2**32), ValueError, "Invalid rounding_seed: 4294967296"),
    (dict(stochastic_rounding="yes"), ValueError, "Invalid stochastic_rounding: 'yes'"),
    (dict(state_precision="8bit", amsgrad=True), ValueError, "state_precision='8bit' does not support amsgrad=True"),
    (
        dict(state_precision="bf16", differentiable=True),
        ValueError,
        "state_precision='bf16' does not support differentiable",
    ),
    (
        dict(state_precision="8bit", differentiable=True),
        ValueError,
        "state_precision='8bit' does not support differentiable",
    ),
    (
        dict(stochastic_rounding=True, differentiable=True),
        ValueError,
        "stochastic_rounding=True does not support differentiable",
    ),
    (dict(fused=True, foreach=True), ValueError, "`fused` and `foreach` cannot be `True` together"),
    (dict(fused=True, foreach=True), RuntimeError, "`fused` and `foreach` cannot be `True` together"),
    (dict(fused=True, differentiable=True), RuntimeError, "`fused` does not support `differentiable`"),
    (dict(foreach=True, differentiable=True), ValueError, "foreach=True cannot be set with it"),
    # issue 18, item 5: None and tensor shapes name the parameter
    (dict(lr=None), ValueError, "Invalid learning rate: None"),
    (dict(eps=None), ValueError, "Invalid epsilon value: None"),
    (dict(weight_decay=None), ValueError, "Invalid weight_decay value: None"),
    (dict(initial_accumulator_value=math.nan), ValueError, "Invalid initial_accumulator_value (s0): nan"),
    (dict(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.999))), ValueError, "Tensor betas[0] must be 1-element"),
    (dict(betas=(0.9, None)), ValueError, "Invalid beta parameter at index 1: None"),
    (dict(betas=(math.nan, 0.999)), ValueError, "Invalid beta parameter at index 0: nan"),
    (dict(betas=(torch.tensor(1.5), torch.tensor(0.999))), ValueError, "Invalid beta parameter at index 0: 1.5"),
    (dict(amsgrad="yes"), ValueError, "Invalid amsgrad: 'yes'"),
    (dict(foreach="no"), ValueError, "Invalid foreach: 'no'"),
    # issue 16, item 3: the tensor-hyperparameter rules of torch.optim.Adam, same types
    (dict(lr=torch.tensor(1e-3), foreach=True), ValueError, "lr as a Tensor is not supported for capturable=False"),
    (dict(betas=(0.9, torch.tensor(0.999))), ValueError, "betas must be either both floats or both Tensors"),
    (dict(betas=(torch.tensor(0.9), 0.999)), ValueError, "betas must be either both floats or both Tensors"),
    (
        dict(betas=(torch.tensor(0.9), torch.tensor(0.999)), foreach=True),
        ValueError,
        "betas[0] as a Tensor is not supported for capturable=False and foreach=True",
    ),
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


TORCH_ACCEPTS = [
    dict(lr=torch.tensor(1e-3), foreach=True, capturable=True),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.999)), foreach=True, capturable=True),
    dict(betas=(torch.tensor([[0.9]]), torch.tensor([0.999])), foreach=False),
    dict(lr=torch.tensor([1e-3]), foreach=False),
    dict(betas=(0, 0.5)),  # ints (torch itself wants floats here; adamlab takes any real)
    dict(amsgrad=1, maximize=0, foreach=None, fused=False),
]


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
@pytest.mark.parametrize("kwargs", TORCH_ACCEPTS, ids=lambda k: str(k))
def test_tensor_hyperparameters_torch_accepts_are_accepted(cls, kwargs) -> None:
    cls([torch.zeros(2, requires_grad=True)], **kwargs)


def _bad_params() -> list[tuple[str, object, type, str]]:
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    return [
        # (case, params, exception, message fragment)
        ("bare tensor", p, TypeError, "should be an iterable of Tensors or dicts, but got torch.FloatTensor"),
        ("a set", {p, q}, TypeError, "ordered collections"),
        ("a number", 5, TypeError, "should be an iterable of Tensors or dicts, but got int"),
        ("a float in the list", [p, 1.0], TypeError, "but one of the params is float (param_groups[0]['params'][1])"),
        ("group without params", [{"lr": 0.1}], ValueError, "param_groups[0] has no 'params'"),
        ("group params=5", [{"params": 5}], TypeError, "param_groups[0]['params'] must be a tensor or a list"),
        ("group params a set", [{"params": {p}}], TypeError, "ordered collections"),
        ("a non-leaf", [p * 2], ValueError, "can't optimize a non-leaf Tensor (param_groups[0]['params'][0])"),
        # issue 18, item 3: duplicates refused on every path, naming both places
        (
            "twice in a group",
            [q, p, p],
            ValueError,
            r"param_groups[0]['params'][2] is the same tensor as param_groups[0]['params'][1]",
        ),
        ("twice, named", [("a", p), ("b", p)], ValueError, "a parameter group with duplicate parameters"),
        (
            "in two groups",
            [{"params": [q]}, {"params": [p, q]}],
            ValueError,
            "param_groups[1]['params'][1] is param_groups[0]['params'][0]",
        ),
    ]


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
@pytest.mark.parametrize("case", [c[0] for c in _bad_params()])
def test_bad_params(cls, case) -> None:
    _, params, exc, fragment = next(c for c in _bad_params() if c[0] == case)
    with pytest.raises(exc) as info:
        cls(params)
    assert fragment in str(info.value)


@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True), dict(foreach=False)], ids=str)
def test_duplicates_refused_by_add_param_group_and_nothing_added(flags) -> None:
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = adamlab.Adam([p], **flags)
    group = {"params": [q, q], "lr": 0.5}
    with pytest.raises(ValueError, match="duplicate"):
        opt.add_param_group(group)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] is param_groups\[0\]\['params'\]\[0\]"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1 and group == {"params": [q, q], "lr": 0.5}


def test_add_param_group_validates_with_the_same_rules() -> None:
    opt = adamlab.Adam([torch.zeros(2, requires_grad=True)], foreach=True)
    new = lambda **kw: {"params": [torch.zeros(1, requires_grad=True)], **kw}  # noqa: E731
    for group, exc, fragment in [
        (new(lr=None), ValueError, "param_groups[1]: Invalid learning rate: None"),
        (new(lr=torch.tensor(0.1)), ValueError, "param_groups[1]: lr as a Tensor is not supported"),
        (new(betas=(0.9, torch.tensor(0.9))), ValueError, "param_groups[1]: betas must be either both"),
        (new(eps=math.nan), ValueError, "param_groups[1]: Invalid epsilon value: nan"),
        (new(fused=True), RuntimeError, "param_groups[1]: `fused` and `foreach` cannot be `True` together"),
        ([torch.zeros(1)], TypeError, "param_group must be a dict"),
    ]:
        with pytest.raises(exc) as info:
            opt.add_param_group(group)
        assert fragment in str(info.value)
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi], ids=["adam", "yogi"])
def test_bad_param_group_values_are_caught_too(cls) -> None:
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 2"):
        cls([{"params": P, "betas": (0.9, 2)}])
    opt = cls(P)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": -1})
    assert len(opt.param_groups) == 1  # nothing half-added
    with pytest.raises(ValueError, match="Invalid state_precision: 'float32'"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "state_precision": "float32"})
    with pytest.raises(ValueError, match="state_dtype was replaced by state_precision"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "state_dtype": torch.float32})
    with pytest.raises(ValueError, match=r"params'\]\[0\] has dtype torch.float64: state_precision='8bit'"):
        opt.add_param_group(
            {"params": [torch.zeros(1, dtype=torch.float64, requires_grad=True)], "state_precision": "8bit"}
        )
    assert len(opt.param_groups) == 1


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


# review finding 8: two Parameters over one storage, with fused=True, raced in the OpenMP kernel
def _over_one_storage(kind: str) -> list[torch.Tensor]:
    base = torch.randn(300_000)
    if kind == "same storage":
        return [torch.nn.Parameter(base), torch.nn.Parameter(base)]
    if kind == "overlapping views":
        return [torch.nn.Parameter(base[:200_000]), torch.nn.Parameter(base[100_000:])]
    # a column of a matrix and the matrix's last row: strided, sharing one element
    m = base[:12].view(3, 4)
    return [torch.nn.Parameter(m[:, 3]), torch.nn.Parameter(m[2])]


@pytest.mark.parametrize("kind", ["same storage", "overlapping views", "strided views"])
@pytest.mark.parametrize("where", ["group in constructor", "add_param_group", "validate_group_params with defaults"])
def test_fused_refuses_parameters_that_share_memory(kind: str, where: str) -> None:
    from adamlab.validation import validate_group_params

    a, b = _over_one_storage(kind)
    keep = torch.nn.Parameter(torch.zeros(2))
    message = r"param_groups\[\d\]\['params'\]\[2\] shares memory with param_groups\[\d\]\['params'\]\[0\]"
    with pytest.raises(ValueError, match=message):
        if where == "group in constructor":
            adamlab.Adam([{"params": [a, keep, b], "fused": True}])
        elif where == "add_param_group":
            opt = adamlab.Adam([keep], foreach=True)
            opt.add_param_group({"params": [a, torch.nn.Parameter(torch.zeros(3)), b], "fused": True})
        else:
            validate_group_params({"params": [a, keep, b]}, "param_groups[0]", [], False, {"fused": True})
    if where == "add_param_group":
        assert len(opt.param_groups) == 1  # nothing added


def test_fused_refuses_parameters_that_share_memory_with_fused_as_the_default() -> None:
    a, b = _over_one_storage("same storage")
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] shares memory with param_groups\[0\]\['params'\]\[0\]"):
        adamlab.Adam([a, b], fused=True)


@pytest.mark.parametrize("options", [dict(state_precision="bf16"), dict(state_precision="8bit"),
                                     dict(stochastic_rounding=True)], ids=str)  # fmt: skip
def test_low_precision_state_refuses_parameters_that_share_memory_unless_foreach(options) -> None:
    """Low-precision state runs the fused kernel when neither fused nor foreach is set: the
    same refusal as fused=True (its threads would race on the shared elements: results that
    change from run to run), naming the reason; foreach=True takes them."""
    a, b = _over_one_storage("overlapping views")
    with pytest.raises(ValueError, match=r"\['params'\]\[1\] shares memory .* low-precision state"):
        adamlab.Adam([a, b], **options)
    opt = adamlab.Adam([torch.nn.Parameter(torch.zeros(2))], foreach=True)
    with pytest.raises(ValueError, match="shares memory"):
        opt.add_param_group({"params": [a, b], "foreach": None, **options})
    adamlab.Adam([a, b], foreach=True, **options)


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict(fused=False)], ids=str)
def test_loop_and_foreach_accept_parameters_that_share_memory(flags) -> None:
    """They update one parameter after another (as torch does): aliases are allowed there."""
    a, b = _over_one_storage("same storage")
    adamlab.Adam([a, b], **flags)
    adamlab.Adam([{"params": [a, b], **flags}])


def test_fused_accepts_disjoint_views_of_one_storage() -> None:
    base = torch.randn(1000)
    a, b = torch.nn.Parameter(base[:500]), torch.nn.Parameter(base[500:])
    c, d = torch.nn.Parameter(base[:0]), torch.nn.Parameter(base[:0])  # empty: nothing shared
    opt = adamlab.Adam([{"params": [a, b, c, d], "fused": True}])
    a.grad, b.grad = torch.ones(500), torch.ones(500)
    opt.step()
