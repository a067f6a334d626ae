"""load_state_dict checks everything first and changes nothing on refusal (issue 18, items 1-2).

Each case damages one field of a real checkpoint (a trained Yogi with two groups, AMSGrad
in the second) the way a hand edit, another program or a hostile file would. The load
must raise ``ValueError`` naming the group, the parameter and the value, and leave the
optimizer exactly as it was (groups, state, step counts), still able to step. The same
rules as the constructor's apply to every hyperparameter (:func:`adamlab.validation.validate_group`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import adamlab


def _setup(cls: type = adamlab.Yogi, **kwargs: Any) -> tuple[list[torch.Tensor], torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    c = torch.nn.Parameter(torch.randn(2))
    opt = cls([{"params": [a, b]}, {"params": [c], "amsgrad": True, "weight_decay": 0.01}], lr=0.01, **kwargs)
    for _ in range(3):
        for p in (a, b, c):
            p.grad = torch.randn_like(p)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    return [a, b, c], opt, saved


def _entry(saved: dict, group: int = 0, index: int = 1) -> dict:
    return saved["state"][saved["param_groups"][group]["params"][index]]


def _set_group(key: str, value: Any, group: int = 0) -> Callable[[dict], None]:
    def breaker(saved: dict) -> None:
        saved["param_groups"][group][key] = value

    return breaker


def _set_state(key: str, make: Callable[[torch.Tensor], Any], group: int = 0, index: int = 1) -> Callable[[dict], None]:
    def breaker(saved: dict) -> None:
        entry = _entry(saved, group, index)
        entry[key] = make(entry[key])

    return breaker


def _negative(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = -1.0
    return t


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[-1] = math.nan
    return t


B = r"param_groups\[0\]\['params'\]\[1\] \(shape \(4,\)\)"
G0 = r"state_dict param_groups\[0\]: "
CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    # item 1: half-loaded before; 'x' showed "<generator object ...>"
    "step None": (_set_state("step", lambda t: None), rf"'step' for {B} is None"),
    "step 'x'": (_set_state("step", lambda t: "x"), rf"'step' for {B} is 'x'"),
    # item 2: what the constructor refuses
    "lr NaN": (_set_group("lr", math.nan), G0 + "Invalid learning rate: nan"),
    "lr -1": (_set_group("lr", -1.0), G0 + "Invalid learning rate: -1.0"),
    "lr None": (_set_group("lr", None), G0 + "Invalid learning rate: None"),
    "lr two-element tensor": (_set_group("lr", torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    "eps -1": (_set_group("eps", -1.0), G0 + "Invalid epsilon value: -1.0"),
    "weight_decay NaN": (
        _set_group("weight_decay", math.nan, 1),
        r"param_groups\[1\]: Invalid weight_decay value: nan",
    ),
    "bias_correction 'maybe'": (_set_group("bias_correction", "maybe"), G0 + "Invalid bias_correction: 'maybe'"),
    "state_precision int8": (_set_group("state_precision", "int8"), G0 + "Invalid state_precision: 'int8'"),
    "block_size 100": (_set_group("block_size", 100), G0 + "Invalid block_size: 100"),
    "rounding_seed -1": (_set_group("rounding_seed", -1), G0 + "Invalid rounding_seed: -1"),
    "s0 -1": (_set_group("initial_accumulator_value", -1.0), G0 + r"Invalid initial_accumulator_value \(s0\): -1.0"),
    "betas (1.5, 2.0)": (_set_group("betas", (1.5, 2.0)), G0 + "Invalid beta parameter at index 0: 1.5"),
    "betas 0.9": (_set_group("betas", 0.9), G0 + r"Invalid betas: 0.9 \(expected a pair"),
    "betas mixed": (
        _set_group("betas", (0.9, torch.tensor(0.99))),
        G0 + "betas must be either both floats or both Tensors",
    ),
    "amsgrad 'maybe'": (_set_group("amsgrad", "maybe"), G0 + "Invalid amsgrad: 'maybe'"),
    "step -5": (_set_state("step", lambda t: torch.tensor(-5.0)), rf"'step' for {B} is -5.0"),
    "step NaN": (_set_state("step", lambda t: torch.tensor(math.nan)), rf"'step' for {B} is nan"),
    "step 2.5": (_set_state("step", lambda t: torch.tensor(2.5)), rf"'step' for {B} is 2.5"),
    "step shape (2,)": (_set_state("step", lambda t: torch.ones(2)), rf"'step' for {B} is a tensor of shape \(2,\)"),
    "exp_avg_sq negative": (
        _set_state("exp_avg_sq", _negative),
        rf"'exp_avg_sq' for {B} holds a negative value \(-1.0\)",
    ),
    "max_exp_avg_sq negative": (
        _set_state("max_exp_avg_sq", _negative, 1, 0),
        r"'max_exp_avg_sq' for param_groups\[1\]\['params'\]\[0\] \(shape \(2,\)\) holds a negative",
    ),
    "exp_avg NaN": (_set_state("exp_avg", _nan), rf"'exp_avg' for {B} holds inf or NaN"),
    "exp_avg int": (_set_state("exp_avg", lambda t: t.to(torch.int64)), rf"'exp_avg' for {B} has dtype torch.int64"),
    "exp_avg complex": (_set_state("exp_avg", lambda t: t.to(torch.complex64)), rf"'exp_avg' for {B} has dtype"),
    "exp_avg a list": (_set_state("exp_avg", lambda t: t.tolist()), rf"'exp_avg' for {B} has shape list"),
    "state entry a list": (
        lambda s: s["state"].__setitem__(s["param_groups"][0]["params"][1], [1, 2]),
        rf"state_dict entry for {B} must be a dict",
    ),
    "state a list": (lambda s: s.__setitem__("state", [1, 2]), r"state_dict\['state'\] must be a dict"),
    "param_groups a dict": (
        lambda s: s.__setitem__("param_groups", {}),
        r"state_dict\['param_groups'\] must be a list",
    ),
    "group without params": (
        lambda s: s["param_groups"][0].pop("params"),
        r"state_dict param_groups\[0\] has no 'params' \(its keys: \['amsgrad',",
    ),
    "params=5": (
        _set_group("params", 5),
        r"state_dict param_groups\[0\]\['params'\] must be a list of parameter ids, got 5",
    ),
    "group a string": (
        lambda s: s["param_groups"].__setitem__(0, "x"),
        r"state_dict param_groups\[0\] must be a dict with a 'params' list, got 'x'",
    ),
    "an id twice": (
        lambda s: s["param_groups"][1]["params"].__setitem__(0, s["param_groups"][0]["params"][0]),
        r"state_dict param_groups\[1\]\['params'\]\[0\] repeats parameter id 0 of param_groups\[0\]\['params'\]\[0\]",
    ),
    "an unhashable id": (
        lambda s: s["param_groups"][0]["params"].__setitem__(0, [0]),
        r"state_dict param_groups\[0\]\['params'\]\[0\] is \[0\], not a parameter id",
    ),
}


def _assert_unchanged(before: dict, opt: torch.optim.Optimizer) -> None:
    after = opt.state_dict()
    assert before["state"].keys() == after["state"].keys()
    for key, entry in before["state"].items():
        assert entry.keys() == after["state"][key].keys()
        for name, value in entry.items():
            got = after["state"][key][name]
            assert got.dtype == value.dtype and torch.equal(got, value), (key, name)
    assert before["param_groups"] == after["param_groups"]


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_state_dict_is_refused_and_nothing_changes(case: str) -> None:
    params, opt, saved = _setup()
    before = copy.deepcopy(opt.state_dict())
    theta = [p.detach().clone() for p in params]
    damaged = copy.deepcopy(saved)
    damaged["param_groups"][0]["lr"] = 0.5  # a visible difference, were the groups loaded first
    for entry in damaged["state"].values():
        entry["exp_avg"] = entry["exp_avg"] + 1.0  # and for the state
    breaker, message = CASES[case]
    breaker(damaged)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(damaged)
    _assert_unchanged(before, opt)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # still steps
    assert all(not torch.equal(p, t) for p, t in zip(params, theta))


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(fused=True), dict(foreach=False)], ids=str)
def test_the_loaded_groups_are_checked_with_this_optimizers_run_keys(flags: dict) -> None:
    """A tensor lr saved by a capturable optimizer is refused by a foreach one (torch's rule),
    and accepted by the others: the run keys (foreach, fused, capturable) stay the optimizer's."""
    _, opt, saved = _setup(**flags)
    saved["param_groups"][0]["lr"] = torch.tensor(0.01)
    saved["param_groups"][0]["capturable"] = True
    if flags.get("foreach"):
        with pytest.raises(ValueError, match="lr as a Tensor is not supported for capturable=False and foreach=True"):
            opt.load_state_dict(saved)
    else:
        opt.load_state_dict(saved)
        assert opt.param_groups[0]["capturable"] is False


def test_a_good_state_dict_still_loads_and_old_integer_steps_too() -> None:
    _, _, saved = _setup()
    for entry in saved["state"].values():
        entry["step"] = int(entry["step"].item())  # the form torch < 1.12 saved
    _, fresh, _ = _setup()
    fresh.load_state_dict(saved)
    assert all(torch.is_tensor(s["step"]) and s["step"].item() == 3 for s in fresh.state.values())
