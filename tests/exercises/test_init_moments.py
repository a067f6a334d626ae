"""Yogi's larger initial batch: :func:`adamlab.optim.init_moments.initialize_moments`."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.optim.init_moments import initialize_moments, minibatch_gradients

rng = np.random.default_rng(0)
X = torch.tensor(rng.normal(size=(40, 3)))
Y = torch.tensor(rng.normal(size=(40, 1)))


def _model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1).double()


def _loss(net, xb, yb):
    return 0.5 * ((net(xb) - yb) ** 2).mean()


def _batches(k: int, bs: int = 5):
    return [(X[i * bs : (i + 1) * bs], Y[i * bs : (i + 1) * bs]) for i in range(k)]


@pytest.mark.parametrize("first_moment", [False, True])
def test_state_is_the_average_of_k_minibatch_gradients(first_moment: bool) -> None:
    net = _model()
    before = [p.detach().clone() for p in net.parameters()]
    opt = adamlab.Yogi(net.parameters(), bias_correction=False)
    grads = list(minibatch_gradients(net.parameters(), lambda xb, yb: _loss(net, xb, yb), _batches(4)))
    assert initialize_moments(opt, grads, first_moment=first_moment) == 4
    for i, p in enumerate(net.parameters()):
        stack = torch.stack([g[i] for g in grads])
        st = opt.state[p]
        torch.testing.assert_close(st["exp_avg_sq"], (stack**2).mean(0), rtol=1e-14, atol=0)
        expected_v = stack.mean(0) if first_moment else torch.zeros_like(p)
        torch.testing.assert_close(st["exp_avg"], expected_v, rtol=1e-14, atol=0)
        assert float(st["step"]) == 0.0
        assert torch.equal(p.detach(), before[i])  # nothing moved


def test_closures_equal_explicit_gradients_and_leave_grad_alone() -> None:
    net_a, net_b = _model(), _model()
    opt_a = adamlab.Yogi(net_a.parameters(), bias_correction=False)
    opt_b = adamlab.Yogi(net_b.parameters(), bias_correction=False)
    sentinel = [torch.full_like(p, 7.0) for p in net_b.parameters()]
    for p, s in zip(net_b.parameters(), sentinel):
        p.grad = s.clone()
    initialize_moments(opt_a, minibatch_gradients(net_a.parameters(), lambda x, y: _loss(net_a, x, y), _batches(3)))
    initialize_moments(opt_b, [lambda b=b: _loss(net_b, *b) for b in _batches(3)])
    for pa, pb, s in zip(net_a.parameters(), net_b.parameters(), sentinel):
        torch.testing.assert_close(opt_b.state[pb]["exp_avg_sq"], opt_a.state[pa]["exp_avg_sq"])
        assert torch.equal(pb.grad, s)  # the caller's gradients are untouched


@pytest.mark.parametrize("first_moment", [False, True])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_steps_after_init_follow_the_reference(rule: str, first_moment: bool) -> None:
    w = torch.nn.Parameter(torch.tensor(rng.normal(size=5)))
    cls = adamlab.Yogi if rule == "yogi" else adamlab.Adam
    opt = cls([w], lr=0.01, eps=1e-3, bias_correction=False)
    init = [[torch.tensor(rng.normal(size=5) * 2)] for _ in range(8)]
    initialize_moments(opt, init, first_moment=first_moment)
    stack = np.stack([g[0].numpy() for g in init])
    state = reference.init_state(w.detach().numpy(), s0=0.0)
    state = replace(state, s=(stack**2).mean(0), v=stack.mean(0) if first_moment else state.v)
    theta = w.detach().numpy().copy()
    for _ in range(20):
        g = rng.normal(size=5)
        w.grad = torch.tensor(g)
        opt.step()
        theta, state = reference.step(
            rule, theta, g, state, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-3, bias_correction=False
        )
        np.testing.assert_allclose(w.detach().numpy(), theta, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(opt.state[w]["exp_avg_sq"].numpy(), state.s, rtol=1e-12)


def test_state_checkpoints_like_the_rest() -> None:
    net = _model()
    opt = adamlab.Yogi(net.parameters(), bias_correction=False, amsgrad=True)
    initialize_moments(opt, [lambda b=b: _loss(net, *b) for b in _batches(5)], first_moment=True)
    saved = copy.deepcopy((net.state_dict(), opt.state_dict()))
    for p in net.parameters():
        assert torch.equal(opt.state[p]["max_exp_avg_sq"], opt.state[p]["exp_avg_sq"])

    def train(net, opt):
        for xb, yb in _batches(8):
            opt.zero_grad()
            _loss(net, xb, yb).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    expected = train(net, opt)
    net2 = _model()
    net2.load_state_dict(saved[0])
    opt2 = adamlab.Yogi(net2.parameters(), bias_correction=False, amsgrad=True)
    opt2.load_state_dict(saved[1])
    for a, b in zip(train(net2, opt2), expected):
        assert torch.equal(a, b)


def test_torch_adam_too() -> None:
    ours, theirs = _model(), _model()
    opt_a = adamlab.Adam(ours.parameters(), lr=0.01, foreach=False)
    opt_b = torch.optim.Adam(theirs.parameters(), lr=0.01, foreach=False)
    initialize_moments(opt_a, [lambda b=b: _loss(ours, *b) for b in _batches(4)])
    initialize_moments(opt_b, [lambda b=b: _loss(theirs, *b) for b in _batches(4)])
    for net, opt in ((ours, opt_a), (theirs, opt_b)):
        for xb, yb in _batches(8):
            opt.zero_grad()
            _loss(net, xb, yb).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_refusals() -> None:
    net = _model()
    batches = [lambda b=b: _loss(net, *b) for b in _batches(2)]
    with pytest.raises(ValueError, match="recursive"):
        initialize_moments(adamlab.Yogi(net.parameters(), bias_correction="recursive"), batches)
    opt = adamlab.Yogi(net.parameters())
    with pytest.raises(ValueError, match="at least one batch"):
        initialize_moments(opt, [])
    with pytest.raises(ValueError, match="parameter"):
        initialize_moments(opt, [[torch.zeros(1, 3)]])
    with pytest.raises(ValueError, match="shape"):
        initialize_moments(opt, [[torch.zeros(3), torch.zeros(1)]])
    _loss(net, *_batches(1)[0]).backward()
    opt.step()
    with pytest.raises(ValueError, match="before the first step"):
        initialize_moments(opt, batches)
