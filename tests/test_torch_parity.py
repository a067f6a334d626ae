"""adamlab.Adam is a drop-in for torch.optim.Adam (and, decoupled, torch.optim.AdamW).

Every flag combination torch supports, 1000 steps of random gradients spanning scales
1e-6 .. 1e2, compared to float32 rounding (relative 1e-6). On the CPU the two are in
fact bitwise equal: the single-tensor and foreach paths mirror torch's operations.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import adamlab

FLAGS = [
    dict(amsgrad=a, maximize=m, foreach=f, **wd)
    for a, m, f, wd in itertools.product(
        [False, True],
        [False, True],
        [False, True],
        [{}, dict(weight_decay=0.05), dict(weight_decay=0.05, decoupled_weight_decay=True)],
    )
]


def _train(cls, steps: int, **kwargs):
    torch.manual_seed(0)
    params = [
        torch.randn(4, 3, requires_grad=True),
        torch.randn(5, requires_grad=True),
        torch.randn((), requires_grad=True),
    ]
    opt = cls(params, lr=3e-3, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for k in range(steps):
        scale = 10.0 ** ((k % 9) - 6)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * scale
        opt.step()
    return params, opt


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_adam_equals_torch_adam(flags: dict) -> None:
    ours, opt = _train(adamlab.Adam, 1000, **flags)
    theirs, ref = _train(torch.optim.Adam, 1000, **flags)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0)
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if flags["amsgrad"] else ()):
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key], rtol=1e-6, atol=0)
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item() == 1000


@pytest.mark.parametrize("foreach", [False, True])
def test_decoupled_adam_equals_torch_adamw(foreach: bool) -> None:
    ours, _ = _train(adamlab.Adam, 300, weight_decay=0.1, decoupled_weight_decay=True, foreach=foreach)
    theirs, _ = _train(torch.optim.AdamW, 300, weight_decay=0.1, foreach=foreach)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0)


def test_tensor_lr_matches_float_lr() -> None:
    a, _ = _train(adamlab.Adam, 50)
    torch.manual_seed(0)
    params = [
        torch.randn(4, 3, requires_grad=True),
        torch.randn(5, requires_grad=True),
        torch.randn((), requires_grad=True),
    ]
    opt = adamlab.Adam(params, lr=torch.tensor(3e-3))
    gen = torch.Generator().manual_seed(1)
    for k in range(50):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** ((k % 9) - 6)
        opt.step()
    for p, q in zip(a, params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0)


def test_defaults_are_torchs_and_the_yogi_conventions() -> None:
    p = [torch.zeros(1, requires_grad=True)]
    adam, yogi = adamlab.Adam(p).defaults, adamlab.Yogi(p).defaults
    torch_adam = torch.optim.Adam(p).defaults
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert adam[key] == torch_adam[key]
    assert (yogi["lr"], yogi["betas"], yogi["eps"]) == (1e-2, (0.9, 0.999), 1e-3)
    assert yogi["initial_accumulator_value"] == 1e-6 and adam["initial_accumulator_value"] == 0.0
    assert yogi["bias_correction"] is True and adam["bias_correction"] is True


@pytest.mark.parametrize("cls", [adamlab.Adam, adamlab.Yogi])
def test_help_shows_the_rule_and_every_constructor_parameter(cls) -> None:
    """help(adamlab.Adam) shows a real docstring naming every keyword, with its default."""
    import inspect

    doc = cls.__doc__
    assert doc and "θ ← θ - η" in doc and "after the square root" in doc
    parameters = inspect.signature(cls.__init__).parameters
    for name, parameter in parameters.items():
        if name == "self":
            continue
        assert f"{name}:" in doc, f"{cls.__name__}'s docstring does not describe {name}"
        assert parameter.kind is not parameter.VAR_KEYWORD, "no **kwargs: IDEs must see every keyword"
        if name != "params":
            assert parameter.annotation is not inspect.Parameter.empty, f"{name} has no type"
            assert "default" in doc.split(f"\n        {name}:", 1)[1][:600], f"{name}'s default is not stated"


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "0.1"])
def test_initial_exp_avg_value_is_validated(bad) -> None:
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="initial_exp_avg_value"):
        adamlab.Yogi([p], initial_exp_avg_value=bad)
    with pytest.raises(ValueError, match="initial_exp_avg_value"):
        adamlab.Yogi([p]).add_param_group(
            {"params": [torch.zeros(1, requires_grad=True)], "initial_exp_avg_value": bad}
        )
