"""Defects found by review after the optimizer rebuild, each reproduced here.

* a step that fails part-way through a group kept the parameters it had already updated but
  dropped their state, so the next step started them again from t = 1;
* ``load_state_dict`` with float32 state (then ``state_dtype``, now ``state_precision="fp32"``) made a
  complex parameter's moments real;
* a one-element, not 0-dim, tensor lr (torch squeezes it) broke 0-dim parameters.
"""

from __future__ import annotations

import pytest
import torch

import adamlab


def test_a_step_failing_mid_group_keeps_the_state_of_what_it_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    from adamlab.optim import single_tensor

    q, p = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = adamlab.Adam([q, p], lr=0.1, foreach=False)
    q.grad, p.grad = torch.ones(3), torch.ones(2)
    real = single_tensor.single_tensor_update
    calls = []

    def fails_on_the_second(*args, **kwargs):  # the loop path updates parameters one by one
        params = args[1]
        real(args[0], params[:1], *[a[:1] for a in args[2:]], **kwargs)
        calls.append(1)
        raise RuntimeError("boom on the second parameter")

    monkeypatch.setattr(single_tensor, "single_tensor_update", fails_on_the_second)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert not torch.equal(q.detach(), torch.zeros(3)), "q was updated before the failure"
    assert float(opt.state[q]["step"]) == 1.0  # its state stays with it
    assert p not in opt.state or not opt.state[p]  # p never stepped: no state
    monkeypatch.setattr(single_tensor, "single_tensor_update", real)
    opt.step()
    assert float(opt.state[q]["step"]) == 2.0 and float(opt.state[p]["step"]) == 1.0


@pytest.mark.parametrize("foreach", [False, True])
def test_load_state_dict_keeps_complex_moments_with_fp32_state(foreach: bool) -> None:
    torch.manual_seed(0)
    p = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    opt = adamlab.Adam([p], lr=0.1, state_precision="fp32", foreach=foreach)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.complex64
    saved = opt.state_dict()
    twin_p = p.detach().clone().requires_grad_()
    twin = adamlab.Adam([twin_p], lr=0.1, state_precision="fp32", foreach=foreach)
    twin.load_state_dict(saved)
    assert twin.state[twin_p]["exp_avg"].dtype == torch.complex64
    assert torch.equal(twin.state[twin_p]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
    g = torch.randn_like(p)
    p.grad, twin_p.grad = g, g.clone()
    opt.step()
    twin.step()
    assert torch.equal(p, twin_p)


@pytest.mark.parametrize("foreach", [False, True])
def test_a_one_element_tensor_lr_is_a_scalar(foreach: bool) -> None:
    """lr=torch.tensor([1e-3]) steps like lr=1e-3 (torch's CPU refuses capturable=True, so the
    twin is adamlab with a float lr)."""
    p, q = torch.zeros((), requires_grad=True), torch.zeros(3, requires_grad=True)
    ref_p, ref_q = p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    opt = adamlab.Adam([q, p], lr=torch.tensor([1e-3]), capturable=True, foreach=foreach)
    ref = adamlab.Adam([ref_q, ref_p], lr=1e-3, capturable=True, foreach=foreach)
    for _ in range(2):
        for a, b in ((p, ref_p), (q, ref_q)):
            a.grad = torch.ones_like(a)
            b.grad = torch.ones_like(b)
        opt.step()
        ref.step()
    assert torch.allclose(p, ref_p, rtol=1e-6, atol=0) and torch.allclose(q, ref_q, rtol=1e-6, atol=0)
    assert p.shape == () and float(p) < 0
