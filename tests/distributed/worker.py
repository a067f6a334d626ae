"""One rank of the distributed checks in ``tests/test_distributed.py`` (gloo, CPU).

Run as ``python worker.py RANK WORLD_SIZE INIT_FILE OUT_DIR [NAME/IMPL ...]``: it joins
a gloo process group through a file store (no port to pick; gloo itself talks over the
loopback device, ``GLOO_SOCKET_IFNAME=lo``), runs the named scenarios (all, if none are
named) and writes what each saw to ``OUT_DIR``. The test process computes the
single-process answers with the same ``make_model``/``batch``/``step`` (it imports this
file) and compares.

Scenarios, each with ``adamlab.Yogi`` over every CPU implementation:

* ``ddp``: DistributedDataParallel, each rank on its half of the batch.
* ``zero``: ZeroRedundancyOptimizer(optimizer_class=adamlab.Yogi) under DDP; the
  consolidated state_dict (rank 0) is saved for loading into a plain ``adamlab.Yogi``.
* ``fsdp2``: ``fully_shard`` (DTensor parameters), then a ``torch.distributed.checkpoint``
  round trip of the sharded optimizer state mid-training.
* ``fsdp2_skip``: ``skip_nonfinite=True`` with a NaN in one rank's gradient shard.

An exception is recorded (type, message, traceback) instead of killing the rank, so the
test can report which scenario failed and why, and the other scenarios still run.
"""

from __future__ import annotations

import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

STEPS, RESUME_AT, LR = 6, 3, 0.05
FULL_BATCH = 16
IMPLS: dict[str, dict[str, Any]] = {
    "single_tensor": dict(foreach=False),
    "foreach": dict(foreach=True),
    "fused_cpu": dict(fused=True),
}


def available_impls() -> list[str]:
    """The CPU implementations this build can run (a fused kernel may be missing)."""
    from adamlab.optim.functional import IMPLEMENTATIONS, get_implementation

    names = []
    for name in IMPLS:
        if name.startswith("fused"):
            if name not in IMPLEMENTATIONS:
                continue
            try:
                get_implementation(name)
            except Exception:
                continue
        names.append(name)
    return names


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(500 + i)
    return torch.randn(FULL_BATCH, 6, generator=gen), torch.randn(FULL_BATCH, 3, generator=gen)


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = t.shape[0] // world
    return t[rank * n : (rank + 1) * n]


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, i: int, rank: int, world: int) -> None:
    x, y = batch(i)
    opt.zero_grad()
    # mean over the local half; DDP and FSDP average gradients over ranks: the full-batch mean
    torch.nn.functional.mse_loss(model(shard(x, rank, world)), shard(y, rank, world)).backward()
    opt.step()


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p  # a collective for DTensors
        out[name.replace("module.", "")] = p.detach().clone()
    return out


# ---- scenarios ------------------------------------------------------------------------------
def run_ddp(rank: int, world: int, impl: str) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    import adamlab

    model = DDP(make_model())
    opt = adamlab.Yogi(model.parameters(), lr=LR, **IMPLS[impl])
    for i in range(STEPS):
        step(model, opt, i, rank, world)
    return {"params": full_params(model)}


def run_zero(rank: int, world: int, impl: str) -> dict[str, Any]:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    import adamlab

    model = DDP(make_model())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=adamlab.Yogi, lr=LR, **IMPLS[impl])
    for i in range(STEPS):
        step(model, opt, i, rank, world)
    local = sum(p.numel() for g in opt.optim.param_groups for p in g["params"])
    opt.consolidate_state_dict(to=0)
    out: dict[str, Any] = {"params": full_params(model), "local_numel": local}
    if rank == 0:
        out["state_dict"] = opt.state_dict()
    return out


def _fsdp_model() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def run_fsdp2(rank: int, world: int, impl: str, ckpt_dir: Path) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    import adamlab

    model = _fsdp_model()
    opt = adamlab.Yogi(model.parameters(), lr=LR, **IMPLS[impl])
    for i in range(RESUME_AT):
        step(model, opt, i, rank, world)
    state_types = sorted({type(v).__name__ for s in opt.state.values() for v in s.values()})
    local_shapes = [tuple(p.to_local().shape) for p in model.parameters()]
    model_sd, optim_sd = get_state_dict(model, opt)
    path = ckpt_dir / f"fsdp2-{impl}"
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    for i in range(RESUME_AT, STEPS):
        step(model, opt, i, rank, world)
    straight = full_params(model)

    # a fresh model and optimizer, loaded from the sharded checkpoint
    torch.manual_seed(1234)
    model2 = _fsdp_model()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)  # different from the checkpoint, so loading must overwrite it
    opt2 = adamlab.Yogi(model2.parameters(), lr=LR, **IMPLS[impl])
    model_sd2, optim_sd2 = get_state_dict(model2, opt2)
    loaded = {"model": model_sd2, "optim": optim_sd2}
    dcp.load(loaded, checkpoint_id=str(path))
    set_state_dict(model2, opt2, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    steps_after_load = sorted({s["step"].item() for s in opt2.state.values()})
    for i in range(RESUME_AT, STEPS):
        step(model2, opt2, i, rank, world)
    resumed = full_params(model2)
    return {
        "params": straight,
        "resumed_params": resumed,
        "state_types": state_types,
        "param_is_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "local_shapes": local_shapes,
        "steps_after_load": steps_after_load,
    }


def run_fsdp2_skip(rank: int, world: int, impl: str) -> dict[str, Any]:
    """skip_nonfinite under FSDP2: a NaN in *one* rank's gradient shard must skip the step on
    every rank, or the ranks' step counts and shards drift apart."""
    import adamlab

    model = _fsdp_model()
    opt = adamlab.Yogi(model.parameters(), lr=LR, skip_nonfinite=True, **IMPLS[impl])
    for i in range(RESUME_AT):
        x, y = batch(i)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(shard(x, rank, world)), shard(y, rank, world)).backward()
        if i == 1 and rank == 0:
            model[0].weight.grad.to_local()[0, 0] = float("nan")  # this rank's shard only
        opt.step()
    steps = [float(s["step"].item()) for s in opt.state.values()]
    return {"steps": steps, "params": full_params(model)}


# low-precision state (issue 14): the same seeds on every rank
LOW_PRECISION = {"bf16": dict(state_precision="bf16"), "8bit": dict(state_precision="8bit", block_size=16)}


def run_ddp_low(rank: int, world: int, impl: str, precision: str) -> dict[str, Any]:
    """DDP with low-precision state: every rank draws the same stochastic-rounding bits, so
    the replicas, parameters and stored state alike, stay identical."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import adamlab

    model = DDP(make_model())
    opt = adamlab.Yogi(model.parameters(), lr=LR, rounding_seed=5, **LOW_PRECISION[precision], **IMPLS[impl])
    for i in range(STEPS):
        step(model, opt, i, rank, world)
    state = {f"{i}.{k}": v.clone() for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items()}
    return {"params": full_params(model), "state": state}


def run_zero_low(rank: int, world: int, impl: str, precision: str) -> dict[str, Any]:
    """ZeroRedundancyOptimizer over adamlab.Yogi with low-precision state: each rank keeps the
    state of its own parameters; the consolidated state_dict holds everyone's."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    import adamlab

    model = DDP(make_model())
    opt = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=adamlab.Yogi, lr=LR, rounding_seed=5, **LOW_PRECISION[precision],
        **IMPLS[impl],
    )  # fmt: skip
    for i in range(STEPS):
        step(model, opt, i, rank, world)
    opt.consolidate_state_dict(to=0)
    return {"params": full_params(model), "state_dict": opt.state_dict() if rank == 0 else None}


def run_fsdp2_low(rank: int, world: int, impl: str, precision: str) -> dict[str, Any]:
    """FSDP2 with low-precision state: each rank's state is its local shard's (8-bit blocks
    over the local shard, plain local absmax tensors)."""
    import adamlab

    model = _fsdp_model()
    opt = adamlab.Yogi(model.parameters(), lr=LR, **LOW_PRECISION[precision], **IMPLS[impl])
    for i in range(STEPS):
        step(model, opt, i, rank, world)
    layout = {}
    for i, p in enumerate(model.parameters()):
        for k, v in opt.state[p].items():
            local = v.to_local() if hasattr(v, "to_local") else v
            layout[f"{i}.{k}"] = (type(v).__name__, str(local.dtype), tuple(local.shape))
    local_numels = [p.to_local().numel() for p in model.parameters()]
    return {"params": full_params(model), "layout": layout, "local_numels": local_numels}


def main(rank: int, world: int, init_file: str, out_dir: Path, only: list[str]) -> None:
    """Run the named scenarios (``name/impl``, in that order; all if none are named).

    Each scenario's results are written as soon as it ends (``rank{R}-{name}-{impl}.pt``),
    so a scenario that kills the process loses only itself and those after it.
    """
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    runners = {
        "ddp": run_ddp,
        "zero": run_zero,
        "fsdp2": lambda r, w, i: run_fsdp2(r, w, i, out_dir),
        "fsdp2_skip": run_fsdp2_skip,
        "ddp_bf16": lambda r, w, i: run_ddp_low(r, w, i, "bf16"),
        "ddp_8bit": lambda r, w, i: run_ddp_low(r, w, i, "8bit"),
        "fsdp2_bf16": lambda r, w, i: run_fsdp2_low(r, w, i, "bf16"),
        "fsdp2_8bit": lambda r, w, i: run_fsdp2_low(r, w, i, "8bit"),
        "zero_8bit": lambda r, w, i: run_zero_low(r, w, i, "8bit"),
    }
    todo = only or [f"{name}/{impl}" for impl in available_impls() for name in runners]
    for item in todo:
        name, impl = item.split("/")
        try:
            result = runners[name](rank, world, impl)
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        torch.save(result, out_dir / f"rank{rank}-{name}-{impl}.pt")
        dist.barrier()  # keep the ranks in lock step even when one scenario failed
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5:])
