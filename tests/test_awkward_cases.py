"""The awkward cases, on purpose, for every implementation in the registry."""

from __future__ import annotations

import pytest
import torch

import adamlab
from adamlab import reference
from tests.registry import IMPLEMENTATIONS, OPTIMIZERS, reference_hyper, require, to64

IMPLS = list(IMPLEMENTATIONS)


@pytest.fixture(params=list(OPTIMIZERS))
def opt_cls(request):
    return OPTIMIZERS[request.param]


def _steps_with_reference(opt_name, params, opt, grads_per_step):
    """Run opt and the reference side by side; grads_per_step[k][i] is None for 'no grad'."""
    group = opt.param_groups[0]
    hyper = reference_hyper(group)
    thetas = [to64(p) for p in params]
    states = [reference.init_state(t, s0=group["initial_accumulator_value"]) for t in thetas]
    for grads in grads_per_step:
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = g
            if g is not None:
                thetas[i], states[i] = reference.step(opt_name, thetas[i], to64(g), states[i], **hyper)
        opt.step()
    return thetas, states


@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_none_grads_late_joiner_zero_size_and_0dim(opt_name: str, impl_name: str) -> None:
    impl = require(impl_name)
    gen = torch.Generator().manual_seed(0)
    shapes = [(3,), (0,), (), (2, 0, 3), (4, 2)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    opt = OPTIMIZERS[opt_name](params, lr=0.1, **impl.kwargs)
    steps = []
    for k in range(12):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        grads[0] = None if k % 3 == 1 else grads[0]  # sometimes no gradient
        grads[4] = None if k < 5 else grads[4]  # joins late: its own t starts at 1
        steps.append(grads)
    thetas, states = _steps_with_reference(opt_name, params, opt, steps)
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), torch.from_numpy(thetas[i]), rtol=1e-12, atol=1e-12)
        assert opt.state[p]["step"].item() == states[i].t
    assert opt.state[params[4]]["step"].item() == 7
    assert opt.state[params[0]]["step"].item() == 8


@pytest.mark.parametrize("impl_name", IMPLS)
def test_frozen_layer_is_untouched(opt_cls, impl_name: str) -> None:
    impl = require(impl_name)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    opt = opt_cls(model.parameters(), lr=0.1, **impl.kwargs)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    for p, before in zip(model[0].parameters(), frozen):
        assert torch.equal(p, before)
        assert p not in opt.state or not opt.state[p]


@pytest.mark.parametrize("impl_name", IMPLS)
def test_mixed_dtypes_in_one_group(opt_cls, impl_name: str) -> None:
    impl = require(impl_name)
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    params = [torch.ones(3, dtype=d, requires_grad=True) for d in dtypes]
    opt = opt_cls(params, lr=0.1, **impl.kwargs)
    for _ in range(3):
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        opt.step()
    results = [p.detach().double() for p in params]
    for p, d in zip(params, dtypes):
        assert p.dtype == d and opt.state[p]["exp_avg"].dtype == d
    # same math in each dtype: agree to the coarsest dtype's precision
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("impl_name", IMPLS)
def test_non_contiguous_param(opt_cls, impl_name: str) -> None:
    impl = require(impl_name)
    base = torch.randn(6, 4, dtype=torch.float64)
    strided = base.t().contiguous().t().requires_grad_()  # column-major layout
    assert not strided.is_contiguous()
    contiguous = base.clone().requires_grad_()
    a = opt_cls([strided], lr=0.1, **impl.kwargs)
    b = opt_cls([contiguous], lr=0.1, **impl.kwargs)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        g = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        strided.grad, contiguous.grad = g.t().contiguous().t(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(strided, contiguous, rtol=1e-14, atol=1e-14)
    assert a.state[strided]["exp_avg"].stride() == strided.stride()


@pytest.mark.parametrize("impl_name", IMPLS)
def test_complex_params_match_torch(impl_name: str) -> None:
    """Complex parameters work as in torch: real and imaginary parts are independent."""
    impl = require(impl_name)
    torch.manual_seed(0)
    z = torch.randn(5, dtype=torch.complex64, requires_grad=True)
    w = z.detach().clone().requires_grad_()
    ours = adamlab.Adam([z], lr=0.05, **impl.kwargs)
    theirs = torch.optim.Adam([w], lr=0.05, foreach=impl.kwargs.get("foreach", False))
    for _ in range(10):
        g = torch.randn(5, dtype=torch.complex64)
        z.grad, w.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(z, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl_name", IMPLS)
def test_gradients_and_inputs_are_never_written(opt_cls, impl_name: str) -> None:
    impl = require(impl_name)
    params = [torch.randn(4, requires_grad=True), torch.randn(2, 2, requires_grad=True)]
    opt = opt_cls(params, lr=0.1, weight_decay=0.1, maximize=True, **impl.kwargs)
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in params]
    versions = [p.grad._version for p in params]
    opt.step()
    for p, g, v in zip(params, grads, versions):
        assert torch.equal(p.grad, g)
        assert p.grad._version == v


def test_sparse_gradients_raise_a_clear_error(opt_cls) -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = opt_cls(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_param_groups_with_their_own_hyperparameters(opt_cls) -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = opt_cls([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.0}])
    c = torch.ones(2, requires_grad=True)
    opt.add_param_group({"params": [c], "lr": 0.2, "betas": (0.5, 0.9)})
    for p in (a, b, c):
        p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2))  # lr 0
    assert (a < 1).all() and (c < 1).all()
    assert opt.param_groups[2]["betas"] == (0.5, 0.9)


def test_closure_is_evaluated_with_grad_enabled(opt_cls) -> None:
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = opt_cls([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert opt.state[p]["step"].item() == 1


@pytest.mark.parametrize("impl_name", IMPLS)
def test_load_state_dict_does_not_alias_the_callers_tensors(opt_cls, impl_name: str) -> None:
    impl = require(impl_name)
    p = torch.ones(3, requires_grad=True)
    opt = opt_cls([p], lr=0.1, **impl.kwargs)
    p.grad = torch.ones(3)
    opt.step()
    saved = opt.state_dict()  # in memory: references to live tensors, as torch returns them
    snapshot = {k: v.clone() for k, v in saved["state"][0].items()}
    q = torch.ones(3, requires_grad=True)
    other = opt_cls([q], lr=0.1, **impl.kwargs)
    other.load_state_dict(saved)
    q.grad = torch.full((3,), 2.0)
    other.step()
    for k, v in snapshot.items():
        assert torch.equal(opt.state[p][k], v), f"loading then stepping wrote into the source's {k!r}"


def test_gradscaler_with_a_group_that_opts_out_of_fused(opt_cls) -> None:
    """GradScaler hands grad_scale/found_inf to a fused optimizer; a group with fused=False
    unscales into new tensors instead (p.grad untouched) and matches an unscaled run."""
    require("fused_cpu")
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    ref_a, ref_b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = opt_cls([{"params": [a]}, {"params": [b], "fused": False}], lr=0.1, fused=True)
    ref = opt_cls([ref_a, ref_b], lr=0.1, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scaler creates its scale lazily, at the first scale()
    for k in range(3):
        for p, q in ((a, ref_a), (b, ref_b)):
            g = torch.full_like(p, 0.5 * (k + 1))
            p.grad, q.grad = g * scaler.get_scale(), g
        scaled_grad = b.grad.clone()
        scaler.step(opt)
        scaler.update()
        ref.step()
        assert torch.equal(b.grad, scaled_grad)
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(b, ref_b)
    b.grad = torch.full_like(b, float("inf"))
    a.grad = torch.ones_like(a)
    before = (a.detach().clone(), b.detach().clone())
    scaler.step(opt)  # inf found: the whole step is skipped, both groups
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
