"""``adamlab.Adam/Yogi(fused=True)`` on a CUDA GPU: the optimizer around the Triton kernel.

Skipped without a GPU (CI has none); ``benchmarks/gpu_check.sh`` runs it on one. The
kernel's numerics against the float64 reference are in ``tests/test_triton.py`` (whose
``cuda`` cases run there too); this module checks what only a GPU shows: the optimizer
classes dispatching to it, ``torch.amp.GradScaler`` (unscale inside the kernel, skip on
inf without a host sync), and capture and replay in a CUDA graph with ``capturable=True``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import adamlab

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("triton")), reason="needs a CUDA GPU and triton"
)

OPTIMIZERS = {"adam": adamlab.Adam, "yogi": adamlab.Yogi}


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    return model.to(device="cuda", dtype=dtype)


def batch(i, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(100 + i)
    x = torch.randn(32, 16, device="cuda", generator=g, dtype=dtype)
    return x, torch.randn(32, 3, device="cuda", generator=g, dtype=dtype)


def train(model, opt, steps, scaler=None, bad_step=None, dtype=torch.float32):
    for i in range(steps):
        x, y = batch(i, dtype)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
        if scaler is None:
            loss.backward()
            opt.step()
            continue
        scaler.scale(loss).backward()
        if i == bad_step:
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()


def state_of(opt):
    return [(k, t) for s in opt.state.values() for k, t in sorted(s.items())]


@pytest.mark.parametrize("rule", ["adam", "yogi"])
@pytest.mark.parametrize(
    "flags",
    [
        {},
        dict(amsgrad=True, weight_decay=0.01),
        dict(decoupled_weight_decay=True, weight_decay=0.1, maximize=True),
        dict(bias_correction="recursive"),
    ],
)
def test_fused_matches_foreach(rule, flags):
    a, b = make_model(), make_model()
    fused = OPTIMIZERS[rule](a.parameters(), lr=0.01, fused=True, **flags)
    foreach = OPTIMIZERS[rule](b.parameters(), lr=0.01, foreach=True, **flags)
    train(a, fused, 5)
    train(b, foreach, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for (ka, ta), (kb, tb) in zip(state_of(fused), state_of(foreach)):
        assert ka == kb
        torch.testing.assert_close(ta.cpu(), tb.cpu(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_with_fp32_state(dtype):
    a = make_model(dtype=dtype)
    opt = adamlab.Yogi(a.parameters(), lr=0.01, fused=True, state_precision="fp32")
    train(a, opt, 3, dtype=dtype)
    for p in a.parameters():
        assert p.dtype == dtype and torch.isfinite(p).all()
        assert opt.state[p]["exp_avg_sq"].dtype == torch.float32
        assert opt.state[p]["step"].item() == 3


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_grad_scaler_skips_inf_steps_without_a_sync(rule):
    a, b = make_model(), make_model()
    fused = OPTIMIZERS[rule](a.parameters(), lr=0.01, fused=True)
    foreach = OPTIMIZERS[rule](b.parameters(), lr=0.01, foreach=True)
    scaler_a = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    scaler_b = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    train(a, fused, 2, scaler=scaler_a)
    before = [p.clone() for p in a.parameters()], [t.clone() for _, t in state_of(fused)]
    # one bad step: nothing may change, the step count included
    x, y = batch(2)
    fused.zero_grad()
    scaler_a.scale(torch.nn.functional.mse_loss(a(x), y)).backward()
    next(a.parameters()).grad[0, 0] = float("inf")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside step() would raise
    try:
        scaler_a.step(fused)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    scaler_a.update()
    for p, q in zip(a.parameters(), before[0]):
        assert torch.equal(p, q)
    for (_, t), u in zip(state_of(fused), before[1]):
        assert torch.equal(t, u)
    assert scaler_a.get_scale() == 2.0**9
    # and the run goes on like a foreach run that skipped the same step on the host
    train(b, foreach, 3, scaler=scaler_b, bad_step=2)
    train_more = [batch(i) for i in range(3, 6)]
    for opt, model, scaler in ((fused, a, scaler_a), (foreach, b, scaler_b)):
        for x, y in train_more:
            opt.zero_grad()
            scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(s["step"].item() == 5 for s in fused.state.values())


def test_cuda_graph_capture_and_replay():
    """capturable=True: lr lives on the device; a captured step replays like eager steps."""
    eager_model, graph_model = make_model(), make_model()
    lr_e = torch.tensor(0.01, device="cuda")
    lr_g = torch.tensor(0.01, device="cuda")
    eager = adamlab.Yogi(eager_model.parameters(), lr=lr_e, fused=True, capturable=True)
    graphed = adamlab.Yogi(graph_model.parameters(), lr=lr_g, fused=True, capturable=True)
    static = [torch.zeros_like(p) for p in graph_model.parameters()]
    for p, g in zip(graph_model.parameters(), static):
        p.grad = g

    def grads(i):
        gen = torch.Generator(device="cuda").manual_seed(i)
        return [torch.randn(p.shape, device="cuda", generator=gen) for p in graph_model.parameters()]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (compile, build the table) off the capture stream
        for i in range(3):
            for g, new in zip(static, grads(i)):
                g.copy_(new)
            graphed.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step()
    for i in range(3):
        for p, g in zip(eager_model.parameters(), grads(i)):
            p.grad = g
        eager.step()
    for i in range(3, 9):
        if i == 6:  # a schedule changes lr in place: the graph sees it
            lr_e.fill_(0.003)
            lr_g.fill_(0.003)
        for g, new in zip(static, grads(i)):
            g.copy_(new)
        graph.replay()
        for p, g in zip(eager_model.parameters(), grads(i)):
            p.grad = g
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(graph_model.parameters(), eager_model.parameters()):
        assert torch.equal(p, q)
    for (_, t), (_, u) in zip(state_of(graphed), state_of(eager)):
        assert torch.equal(t, u)
    assert all(s["step"].item() == 9 for s in graphed.state.values())


def test_fused_on_a_second_device_is_guarded():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    model = make_model().to("cuda:1")
    opt = adamlab.Adam(model.parameters(), fused=True)
    with torch.cuda.device(0):
        x, y = batch(0)
        torch.nn.functional.mse_loss(model(x.to("cuda:1")), y.to("cuda:1")).backward()
        opt.step()
    assert all(s["step"].item() == 1 for s in opt.state.values())
