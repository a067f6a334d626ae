"""FSDP2 on CUDA with NCCL (issue 8, §5; the GPU check script runs this). Skipped without CUDA.

One GPU, so one rank: the parameters are still DTensors (sharded over a mesh of one), which
is what the CUDA implementations -- the Triton kernel included -- must handle; and a
``torch.distributed.checkpoint`` round trip resumes bitwise. Two-rank numerics are checked
on the CPU with gloo (``tests/test_distributed.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import adamlab
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()),
    reason="needs a CUDA device and NCCL",
)
KWARGS: dict[str, dict[str, Any]] = {
    "single_tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused_cuda": dict(fused=True),
}
STEPS, RESUME_AT = 6, 3


@pytest.fixture(scope="module")
def nccl(tmp_path_factory: pytest.TempPathFactory):
    init = tmp_path_factory.mktemp("nccl") / "init"
    dist.init_process_group("nccl", init_method=f"file://{init}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def make_model(shard: bool) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).cuda()
    if shard:
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    return model


def train(model, opt, start: int, stop: int) -> None:
    for i in range(start, stop):
        gen = torch.Generator().manual_seed(500 + i)
        x, y = torch.randn(16, 6, generator=gen).cuda(), torch.randn(16, 3, generator=gen).cuda()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def full(model) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", list(KWARGS))
def test_cuda_fsdp2_matches_plain_and_dcp_resumes_bitwise(nccl, impl: str, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    if impl.startswith("fused") and impl not in REGISTERED:
        pytest.skip(f"{impl} is not registered in this build")
    plain = make_model(shard=False)
    plain_opt = adamlab.Yogi(plain.parameters(), lr=0.05, **KWARGS[impl])
    train(plain, plain_opt, 0, STEPS)

    model = make_model(shard=True)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    opt = adamlab.Yogi(model.parameters(), lr=0.05, **KWARGS[impl])
    train(model, opt, 0, RESUME_AT)
    assert all(isinstance(s["exp_avg"], DTensor) for s in opt.state.values())
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_path))
    train(model, opt, RESUME_AT, STEPS)
    for p, q in zip(full(model), full(plain)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    model2 = make_model(shard=True)
    opt2 = adamlab.Yogi(model2.parameters(), lr=0.05, **KWARGS[impl])
    msd2, osd2 = get_state_dict(model2, opt2)
    state = {"model": msd2, "optim": osd2}
    dcp.load(state, checkpoint_id=str(tmp_path))
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    train(model2, opt2, RESUME_AT, STEPS)
    for p, q in zip(full(model2), full(model)):
        assert torch.equal(p, q)
