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


def assert_inf_step_skipped_without_sync(model, opt, scaler, dtype=torch.float32):
    """One GradScaler step whose gradient holds inf: step() must not sync with the host, and
    nothing may change -- parameters, every state tensor, the step counts included."""
    before = [p.clone() for p in model.parameters()], [t.clone() for _, t in state_of(opt)]
    x, y = batch(2, dtype)
    opt.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(x).float(), y.float())).backward()
    next(model.parameters()).grad[0, 0] = float("inf")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host sync inside step() would raise
    try:
        scaler.step(opt)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    scaler.update()
    for p, q in zip(model.parameters(), before[0]):
        assert torch.equal(p, q)
    for (k, t), u in zip(state_of(opt), before[1]):
        assert torch.equal(t, u), k


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
    assert_inf_step_skipped_without_sync(a, fused, scaler_a)  # one bad step: nothing may change
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


# ---- low-precision state (issue 14): the kernel against the reference, and the optimizers ----
# The interpreter runs of tests/test_triton_precision.py, here on the GPU: the compiled kernel
# (integer hash, bit casts, div.rn, the block reduction) against reference.low_precision_step.
# Triton's √ and ``/`` are approximate on CUDA, so on exact inputs only the moments (products
# and sums) are bit for bit; the parameters are within the float32 tolerance.

from tests import test_triton_precision as lowp  # noqa: E402


def _on_gpu():
    from adamlab.optim import triton_fused

    return dict(update=triton_fused.fused_cuda_update, device="cuda")


@pytest.mark.parametrize("case", list(lowp.CASES))
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_low_precision_kernel_matches_reference(rule, precision, case):
    lowp.run_steps(lowp.Run(rule, precision, case=lowp.CASES[case], seed=len(case), **_on_gpu()), steps=3)


@pytest.mark.parametrize("block_size", [16, 256, 2048, 8192])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_low_precision_kernel_block_sizes_and_large_tensors(rule, block_size):
    shapes = [(100_003,), (block_size,), (0,), (3, 7), (257, 129)]
    run = lowp.Run(rule, "8bit", shapes=shapes, block_size=block_size, seed=block_size, **_on_gpu())
    lowp.run_steps(run, steps=2)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_low_precision_kernel_bf16_params_and_grad_scale(rule, precision):
    run = lowp.Run(rule, precision, p_dtype=torch.bfloat16, stochastic_rounding=True, seed=5, **_on_gpu())
    lowp.run_steps(run, steps=2, grad_scale=1024.0)
    lowp.run_steps(lowp.Run(rule, "bf16", case=dict(amsgrad=True), seed=6, **_on_gpu()), steps=2)


@pytest.mark.parametrize("p_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_low_precision_kernel_bit_for_bit_moments(rule, precision, p_dtype):
    lowp.exact_inputs(rule, precision, p_dtype, _on_gpu(), exact_parameters=False)
    lowp.exact_from_a_decoded_state(rule, precision, _on_gpu(), exact_parameters=False)
    lowp.exact_with_grad_scale_and_maximize(precision, _on_gpu(), exact_parameters=False)


def _has_state_precision():
    import inspect

    return "state_precision" in inspect.signature(adamlab.Adam).parameters


needs_state_precision = pytest.mark.skipif(not _has_state_precision(), reason="adamlab.Adam has no state_precision yet")

PRECISION_OPTIONS = {
    "bf16": dict(state_precision="bf16"),
    "8bit": dict(state_precision="8bit", block_size=64),
    "bf16-sr": dict(state_precision="bf16", stochastic_rounding=True),
    "8bit-sr": dict(state_precision="8bit", stochastic_rounding=True),
    "fp32-sr": dict(state_precision="fp32", stochastic_rounding=True),
    "bf16-amsgrad": dict(state_precision="bf16", amsgrad=True),
}


def _codes_agree(a, b, what, fraction=lowp.FRACTION):
    """Two stored moments (fused and foreach) after one step: equal but for a few one-unit steps."""
    if a.dtype == torch.uint8:
        signed = "exp_avg" == what.split(":")[-1].strip()
        lowp.assert_mostly_equal(
            a.cpu().numpy().reshape(-1), b.cpu().numpy().reshape(-1), "v" if signed else "s", what, fraction
        )
    elif a.dtype == torch.bfloat16:
        lowp.assert_mostly_equal(lowp.bf16_bits(a), lowp.bf16_bits(b), "bits", what, fraction)
    else:
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-7, msg=what)


@needs_state_precision
@pytest.mark.parametrize("options", list(PRECISION_OPTIONS))
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_fused_low_precision_matches_foreach(rule, options):
    """adamlab.Adam/Yogi(fused=True, state_precision=...) on the GPU against the foreach path:
    after one step codes and bits agree but for a few one-unit steps; after five the runs are
    still close and the state keeps its formats."""
    dtype = torch.bfloat16 if options.endswith("-sr") else torch.float32
    a, b = make_model(dtype=dtype), make_model(dtype=dtype)
    opts = PRECISION_OPTIONS[options]
    fused = OPTIMIZERS[rule](a.parameters(), lr=0.01, fused=True, rounding_seed=7, **opts)
    foreach = OPTIMIZERS[rule](b.parameters(), lr=0.01, foreach=True, rounding_seed=7, **opts)
    train(a, fused, 1, dtype=dtype)
    train(b, foreach, 1, dtype=dtype)
    for (ka, ta), (kb, tb) in zip(state_of(fused), state_of(foreach)):
        assert ka == kb and ta.dtype == tb.dtype and ta.shape == tb.shape
        if ka.endswith("absmax"):
            torch.testing.assert_close(ta.cpu(), tb.cpu(), rtol=1e-5, atol=1e-8, msg=ka)
        elif ka in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            _codes_agree(ta, tb, f"state: {ka}")
    for p, q in zip(a.parameters(), b.parameters()):
        if dtype == torch.bfloat16:
            lowp.assert_mostly_equal(lowp.bf16_bits(p), lowp.bf16_bits(q), "bits", "parameter")
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    train(a, fused, 4, dtype=dtype)
    train(b, foreach, 4, dtype=dtype)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.float(), q.float(), rtol=2e-2, atol=2e-3)
    assert all(s["step"].item() == 5 for s in fused.state.values())


@needs_state_precision
@pytest.mark.parametrize("options", ["bf16-sr", "8bit"])
def test_fused_low_precision_grad_scaler_without_a_sync(options):
    """GradScaler with low-precision state: unscale and the inf skip happen on the device (no
    host sync in step()), and a skipped step changes no code, scale, bit or count."""
    dtype = torch.bfloat16 if options.endswith("-sr") else torch.float32
    model = make_model(dtype=dtype)
    opt = adamlab.Adam(model.parameters(), lr=0.01, fused=True, **PRECISION_OPTIONS[options])
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    train(model, opt, 2, scaler=scaler, dtype=dtype)
    assert_inf_step_skipped_without_sync(model, opt, scaler, dtype)
    train(model, opt, 2, scaler=scaler, dtype=dtype)
    assert all(s["step"].item() == 4 for s in opt.state.values())
