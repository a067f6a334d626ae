"""Checkpoints: save at step k, load into fresh objects, carry on -- bitwise (issue 8, §1).

Every implementation, both optimizers, a model with two parameter groups (one with
AMSGrad and weight decay) and a parameter that receives its first gradient only after
the checkpoint (so the saved state has no entry for it). Checkpoints go through
``torch.save``/``torch.load`` like real ones, so nothing is shared by reference.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch

import adamlab
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
K, N, LATE = 4, 5, 6  # checkpoint after K steps, then N more; the "late" parameter joins at step LATE


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


class Net(torch.nn.Module):
    def __init__(self, seed: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)
        self.late = torch.nn.Parameter(torch.randn(3, dtype=dtype))

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        out = self.body(x)
        return out * self.late if i >= LATE else out


def batch(i: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + i)
    return torch.randn(16, 5, generator=gen).to(dtype), torch.randn(16, 3, generator=gen).to(dtype)


def make_opt(cls: type, model: Net, **kwargs: Any) -> torch.optim.Optimizer:
    groups = [
        {"params": [*model.body[0].parameters(), model.late]},
        {"params": list(model.body[2].parameters()), "amsgrad": True, "weight_decay": 0.01},
    ]
    return cls(groups, lr=0.01, **kwargs)


def train(model: Net, opt: torch.optim.Optimizer, start: int, steps: int, dtype: torch.dtype = torch.float32) -> None:
    for i in range(start, start + steps):
        x, y = batch(i, dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, i).float(), y.float()).backward()
        opt.step()


def roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def snapshot(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A deep copy of everything an optimizer holds (state and groups), for comparisons."""
    return copy.deepcopy(opt.state_dict())


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bitwise equality of two optimizer state_dicts (tensors and hyperparameters)."""
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        sa, sb = a["state"][key], b["state"][key]
        assert sa.keys() == sb.keys(), key
        for name in sa:
            assert sa[name].dtype == sb[name].dtype, (key, name)
            assert torch.equal(sa[name], sb[name]), (key, name)
    assert len(a["param_groups"]) == len(b["param_groups"])
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        assert {k: v for k, v in ga.items()} == {k: v for k, v in gb.items()}


def assert_same_params(m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    for (name, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1, p2), name


# ---- resume is bitwise ---------------------------------------------------------------------
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_resume_is_bitwise(rule: str, impl: str) -> None:
    kwargs = impl_kwargs(impl)
    cls = OPTIMIZERS[rule]
    straight = Net(seed=0)
    opt = make_opt(cls, straight, **kwargs)
    train(straight, opt, 0, K)
    ckpt = roundtrip({"model": straight.state_dict(), "opt": opt.state_dict()})
    train(straight, opt, K, N)

    resumed = Net(seed=1)  # different initial values: loading must overwrite them
    opt2 = make_opt(cls, resumed, **kwargs)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert not opt2.state[resumed.late], "the late parameter had no state at the checkpoint"
    train(resumed, opt2, K, N)

    assert_same_params(straight, resumed)
    assert_same_state(opt.state_dict(), opt2.state_dict())
    assert opt2.state[resumed.late]["step"].item() == K + N - LATE


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_in_memory_state_dict_resume_is_bitwise(impl: str) -> None:
    """Without serialization: state_dict() holds references, so deep-copy it (as with torch)."""
    straight, resumed = Net(seed=0), Net(seed=1)
    opt = make_opt(adamlab.Yogi, straight, **IMPLS[impl])
    train(straight, opt, 0, K)
    saved = copy.deepcopy({"model": straight.state_dict(), "opt": opt.state_dict()})
    train(straight, opt, K, N)
    opt2 = make_opt(adamlab.Yogi, resumed, **IMPLS[impl])
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    train(resumed, opt2, K, N)
    assert_same_params(straight, resumed)


@pytest.mark.parametrize("impl", ["single_tensor", "foreach"])
def test_resume_keeps_state_precision_fp32(impl: str) -> None:
    dtype = torch.bfloat16
    straight, resumed = Net(seed=0, dtype=dtype), Net(seed=1, dtype=dtype)
    opt = make_opt(adamlab.Adam, straight, state_precision="fp32", **IMPLS[impl])
    train(straight, opt, 0, K, dtype)
    ckpt = roundtrip({"model": straight.state_dict(), "opt": opt.state_dict()})
    train(straight, opt, K, N, dtype)
    opt2 = make_opt(adamlab.Adam, resumed, state_precision="fp32", **IMPLS[impl])
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.state[resumed.body[0].weight]["exp_avg"].dtype == torch.float32
    train(resumed, opt2, K, N, dtype)
    assert_same_params(straight, resumed)
    assert_same_state(opt.state_dict(), opt2.state_dict())


# ---- across implementations and to/from torch.optim.Adam --------------------------------------
@pytest.mark.parametrize("src_impl", list(IMPLS))
@pytest.mark.parametrize("dst_impl", list(IMPLS))
def test_load_across_implementations(src_impl: str, dst_impl: str) -> None:
    """A checkpoint written by one implementation carries on in another, to float32 rounding.

    ``torch.optim.Optimizer.load_state_dict`` takes the whole param group from the
    checkpoint, ``foreach``/``fused`` included; here the flags are set back to the target's
    by hand, so that the target's implementation really runs.
    """
    src_kwargs, dst_kwargs = impl_kwargs(src_impl), impl_kwargs(dst_impl)
    straight, resumed = Net(seed=0), Net(seed=1)
    opt = make_opt(adamlab.Yogi, straight, **src_kwargs)
    train(straight, opt, 0, K)
    ckpt = roundtrip({"model": straight.state_dict(), "opt": opt.state_dict()})
    train(straight, opt, K, N)

    opt2 = make_opt(adamlab.Yogi, resumed, **dst_kwargs)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    for group in opt2.param_groups:
        group.update(
            foreach=dst_kwargs.get("foreach"),
            fused=dst_kwargs.get("fused"),
            capturable=dst_kwargs.get("capturable", False),
        )
    train(resumed, opt2, K, N)
    for p1, p2 in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6)
    for p1, p2 in zip(straight.parameters(), resumed.parameters()):
        for key, value in opt.state[p1].items():
            torch.testing.assert_close(opt2.state[p2][key], value, rtol=1e-5, atol=1e-7)


def test_load_keeps_the_targets_implementation() -> None:
    straight, resumed = Net(seed=0), Net(seed=1)
    opt = make_opt(adamlab.Yogi, straight, foreach=False)
    train(straight, opt, 0, K)
    opt2 = make_opt(adamlab.Yogi, resumed, foreach=True)
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    assert [g["foreach"] for g in opt2.param_groups] == [True, True]

    # torch.optim.Adam(fused=True) on CPU, loaded into a default adamlab.Adam: must still step.
    model = torch.nn.Linear(3, 2)
    torch_opt = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.randn(4, 3)).sum().backward()
    torch_opt.step()
    ours = adamlab.Adam(model.parameters())
    ours.load_state_dict(roundtrip(torch_opt.state_dict()))
    ours.step()


def _torch_adam_pair(direction: str) -> None:
    """k steps with one optimizer, N with the other, against N+k with the second throughout."""
    first_cls, second_cls = (
        (torch.optim.Adam, adamlab.Adam) if direction == "from_torch" else (adamlab.Adam, torch.optim.Adam)
    )
    straight, resumed = Net(seed=0), Net(seed=1)
    kw = dict(foreach=False, amsgrad=False)
    opt = second_cls(straight.parameters(), lr=0.01, **kw)
    train(straight, opt, 0, K + N)

    first_model = Net(seed=0)
    first = first_cls(first_model.parameters(), lr=0.01, **kw)
    train(first_model, first, 0, K)
    ckpt = roundtrip({"model": first_model.state_dict(), "opt": first.state_dict()})
    resumed.load_state_dict(ckpt["model"])
    second = second_cls(resumed.parameters(), lr=0.01, **kw)
    second.load_state_dict(ckpt["opt"])
    train(resumed, second, K, N)
    # adamlab.Adam(foreach=False) mirrors torch's single-tensor Adam op for op: bitwise on CPU.
    assert_same_params(straight, resumed)
    for p1, p2 in zip(straight.parameters(), resumed.parameters()):
        for key, value in opt.state[p1].items():
            assert torch.equal(second.state[p2][key], value), key


@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_torch_adam_checkpoints_interchange(direction: str) -> None:
    _torch_adam_pair(direction)


def test_torch_adam_state_dict_gets_adamlab_defaults() -> None:
    model = torch.nn.Linear(3, 2)
    torch_opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    torch_opt.step()
    ours = adamlab.Adam(model.parameters())
    ours.load_state_dict(roundtrip(torch_opt.state_dict()))
    group = ours.param_groups[0]
    assert group["bias_correction"] is True and group["state_precision"] is None and group["skip_nonfinite"] is False
    assert group["initial_accumulator_value"] == 0.0
    ours.step()
    assert ours.state[model.weight]["step"].item() == 2


# ---- bad checkpoints: a clear error and nothing half-loaded ------------------------------------
def _trained(impl: str = "foreach") -> tuple[Net, torch.optim.Optimizer, dict[str, Any]]:
    model = Net(seed=0)
    opt = make_opt(adamlab.Yogi, model, **IMPLS[impl])
    train(model, opt, 0, LATE + 1)  # every parameter has state
    saved = roundtrip(opt.state_dict())
    for group in saved["param_groups"]:
        group["lr"] = 123.0  # a visible difference, should the groups be loaded by mistake
    for entry in saved["state"].values():
        entry["exp_avg"] = entry["exp_avg"] + 1.0
    return model, opt, saved


def _last_id(saved: dict[str, Any]) -> int:
    return saved["param_groups"][-1]["params"][-1]


def _break_shape(saved: dict[str, Any]) -> None:
    entry = saved["state"][_last_id(saved)]
    entry["exp_avg_sq"] = torch.zeros(entry["exp_avg_sq"].numel() + 1)


def _break_missing_key(saved: dict[str, Any]) -> None:
    del saved["state"][_last_id(saved)]["exp_avg"]


def _break_missing_amsgrad_key(saved: dict[str, Any]) -> None:
    del saved["state"][_last_id(saved)]["max_exp_avg_sq"]


def _break_param_count(saved: dict[str, Any]) -> None:
    saved["param_groups"][-1]["params"].pop()


def _break_group_count(saved: dict[str, Any]) -> None:
    saved["param_groups"].pop()


BAD = {
    # name: (how to break it, what the message must say)
    "wrong_shape": (_break_shape, r"'exp_avg_sq' for param_groups\[1\]\['params'\]\[1\] \(shape \(3,\)\)"),
    "missing_key": (
        _break_missing_key,
        r"param_groups\[1\]\['params'\]\[1\] \(shape \(3,\)\) is missing \['exp_avg'\]",
    ),
    "missing_amsgrad_key": (_break_missing_amsgrad_key, r"param_groups\[1\]\['params'\]\[1\].*max_exp_avg_sq"),
    "param_count": (_break_param_count, r"parameter group 1: state_dict has 1 parameter\(s\), the optimizer has 2"),
    "group_count": (_break_group_count, r"state_dict has 1 parameter group\(s\), the optimizer has 2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_state_dict_raises_and_loads_nothing(case: str) -> None:
    model, opt, saved = _trained()
    before = snapshot(opt)
    breaker, message = BAD[case]
    breaker(saved)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    assert_same_state(before, snapshot(opt))
    # and the optimizer still works
    train(model, opt, LATE + 1, 1)


def test_not_a_state_dict() -> None:
    _, opt, _ = _trained()
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_state_of_another_model_is_refused() -> None:
    """Same parameter count, different shapes: the classic "wrong checkpoint" mistake."""
    _, opt, _ = _trained()
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 5))
    other_opt = adamlab.Yogi(
        [
            {"params": [other[0].weight, other[0].bias, torch.nn.Parameter(torch.zeros(3))]},
            {"params": list(other[1].parameters())},
        ]
    )
    other(torch.randn(2, 4)).sum().backward()
    other_opt.step()
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\] \(shape \(8, 5\)\)"):
        opt.load_state_dict(roundtrip(other_opt.state_dict()))
    assert_same_state(before, snapshot(opt))
