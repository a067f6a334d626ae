"""torch.compile on CUDA (issue 8, §4; the GPU check script runs this). Skipped without CUDA.

A compiled training step (inductor, Triton kernels) with a capturable optimizer and an lr
tensor on the device matches eager, and an lr schedule does not recompile. ``fused=True``
runs its Triton launcher eagerly between the compiled regions (``torch.compiler.disable``).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import adamlab
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
STEPS = 6


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(i)
    return torch.randn(8, 16, generator=gen).cuda(), torch.randn(8, 4, generator=gen).cuda()


KWARGS = {
    "foreach_capturable": dict(foreach=True, capturable=True),
    "single_capturable": dict(foreach=False, capturable=True),
    "fused_cuda": dict(fused=True),
}


@pytest.mark.parametrize("impl", list(KWARGS))
def test_cuda_compiled_training_step_matches_eager_without_recompiles(impl: str) -> None:
    if impl.startswith("fused") and impl not in REGISTERED:
        pytest.skip(f"{impl} is not registered in this build")
    torch._dynamo.reset()
    models = make_model(), make_model()
    opts = [adamlab.Yogi(m.parameters(), lr=torch.tensor(0.01, device="cuda"), **KWARGS[impl]) for m in models]

    def make_step(model, opt):
        def train_step(x, y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss

        return train_step

    counter = CompileCounterWithBackend("inductor")
    step_e, step_c = make_step(models[0], opts[0]), torch.compile(make_step(models[1], opts[1]), backend=counter)
    graphs = []
    for i in range(STEPS):
        for opt in opts:
            opt.param_groups[0]["lr"].fill_(0.01 / (i + 1))
        x, y = batch(i)
        torch.testing.assert_close(step_c(x, y), step_e(x, y), rtol=1e-5, atol=1e-6)
        graphs.append(counter.frame_count)
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert graphs[2:] == [graphs[1]] * (STEPS - 2), graphs
    torch._dynamo.reset()
