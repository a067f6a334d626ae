"""Every ``torch.optim.lr_scheduler`` a user reaches for works with adamlab.Adam / adamlab.Yogi.

Issue 4, exercise 3 (*Dive into Deep Learning* §11.10: "learning-rate decay"). For each
scheduler, with lr held as a float and as a 0-dim tensor, a small least-squares problem
runs 30 steps, and:

* adamlab's trajectory, replayed with the learning rates (and β1, which OneCycleLR cycles)
  the scheduler set before each step, matches the float64 oracle :mod:`adamlab.reference`;
* adamlab.Adam and ``torch.optim.Adam`` under the same scheduler see the same learning
  rates and end at the same parameters (to float32 rounding);
* a tensor lr stays a tensor (schedulers fill it in place) and gives the float lr's result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as S

import adamlab
from adamlab import reference

STEPS = 30
LR = 0.05
_rng = np.random.default_rng(0)
X = _rng.normal(size=(64, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * _rng.normal(size=64)


def _grad(w: np.ndarray) -> np.ndarray:
    return X.T @ (X @ w - Y) / len(Y)


SCHEDULERS: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=5, gamma=0.5),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=STEPS, eta_min=1e-4),
    "LambdaLR(1/sqrt(t))": lambda o: S.LambdaLR(o, lambda e: (1 + e) ** -0.5),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.1, total_iters=10),
    "LinearLR+SequentialLR": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=STEPS - 5)], milestones=[5]
    ),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=2),
}


def _run(make_opt: Callable[[Any], Any], scheduler: str, dtype: torch.dtype) -> tuple[np.ndarray, list, list, Any]:
    """Train; return final w, and the (lr, β1) each step used, and the optimizer."""
    w = torch.zeros(3, dtype=dtype, requires_grad=True)
    Xt, Yt = torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype)
    opt = make_opt([w])
    sched = SCHEDULERS[scheduler](opt)
    lrs, beta1s = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = 0.5 * ((Xt @ w - Yt) ** 2).mean()
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        lrs.append(float(lr))
        beta1s.append(float(opt.param_groups[0]["betas"][0]))
        opt.step()
        if isinstance(sched, S.ReduceLROnPlateau):
            sched.step(1.0)  # a flat metric: the lr is cut every patience + 1 steps
        else:
            sched.step()
    return w.detach().double().numpy(), lrs, beta1s, opt


def _oracle(rule: str, lrs: list, beta1s: list, *, eps: float, s0: float, beta2: float = 0.999) -> np.ndarray:
    w = np.zeros(3)
    state = reference.init_state(w, s0=s0)
    for lr, beta1 in zip(lrs, beta1s):
        w, state = reference.step(rule, w, _grad(w), state, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    return w


OPTIMIZERS = {
    "Adam": (adamlab.Adam, "adam", dict(eps=1e-8, s0=0.0)),
    "Yogi": (adamlab.Yogi, "yogi", dict(eps=1e-3, s0=1e-6)),
}


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_scheduler_drives_adamlab_like_the_oracle(name: str, scheduler: str, foreach: bool, tensor_lr: bool) -> None:
    cls, rule, conv = OPTIMIZERS[name]
    lr = torch.tensor(LR, dtype=torch.float64) if tensor_lr else LR
    # torch's rule (issue 16, item 3): a tensor lr with foreach=True needs capturable=True
    capturable = tensor_lr and foreach
    w, lrs, beta1s, opt = _run(
        lambda p: cls(p, lr=lr, foreach=foreach, capturable=capturable), scheduler, torch.float64
    )
    assert len(set(lrs)) > 1, "the lr never changed: the test would be vacuous"
    if tensor_lr:
        assert torch.is_tensor(opt.param_groups[0]["lr"]), "the scheduler replaced the tensor lr by a float"
    np.testing.assert_allclose(w, _oracle(rule, lrs, beta1s, **conv), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_adam_under_a_scheduler_follows_torch_adam(scheduler: str, tensor_lr: bool) -> None:
    lr = (lambda: torch.tensor(LR)) if tensor_lr else (lambda: LR)
    ours = _run(lambda p: adamlab.Adam(p, lr=lr(), foreach=False), scheduler, torch.float32)
    theirs = _run(lambda p: torch.optim.Adam(p, lr=lr(), foreach=False), scheduler, torch.float32)
    assert ours[1] == theirs[1] and ours[2] == theirs[2]  # the same lr (and β1) at every step
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_tensor_lr_equals_float_lr(scheduler: str) -> None:
    a = _run(lambda p: adamlab.Yogi(p, lr=LR), scheduler, torch.float64)
    b = _run(lambda p: adamlab.Yogi(p, lr=torch.tensor(LR, dtype=torch.float64)), scheduler, torch.float64)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-15)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)


def test_scheduler_state_round_trips_with_the_optimizer() -> None:
    """A checkpoint of optimizer + scheduler resumes the same trajectory."""
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    Xt, Yt = torch.tensor(X), torch.tensor(Y)

    def steps(opt: Any, sched: Any, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            (0.5 * ((Xt @ w - Yt) ** 2).mean()).backward()
            opt.step()
            sched.step()

    opt = adamlab.Yogi([w], lr=LR)
    sched = S.CosineAnnealingLR(opt, T_max=STEPS)
    steps(opt, sched, 10)
    saved = copy.deepcopy((w.detach(), opt.state_dict(), sched.state_dict()))  # state_dict shares tensors
    steps(opt, sched, 10)
    expected = w.detach().clone()

    with torch.no_grad():
        w.copy_(saved[0])
    opt2 = adamlab.Yogi([w], lr=LR)
    sched2 = S.CosineAnnealingLR(opt2, T_max=STEPS)
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    steps(opt2, sched2, 10)
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=0)
