"""FSDP2 (``fully_shard``) with ``adamlab.Yogi``: DTensor parameters, foreach and fused.

One process per rank (``torchrun --nproc-per-node N``, or plain ``python`` for one rank).
Trains a small MLP sharded with ``fully_shard`` and compares it, after every step, with the
same model trained unsharded by ``adamlab.Yogi(foreach=True)``; then round-trips the sharded
optimizer state through ``torch.distributed.checkpoint`` and checks it comes back equal.
Prints one PASS/FAIL line per check; exits non-zero on a failure.

    python benchmarks/gpu/fsdp2_check.py            # cuda + nccl if there is a GPU, else cpu + gloo
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import adamlab


def make_model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)


def sharded(device):
    model = make_model(device)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def batch(i, device):
    g = torch.Generator().manual_seed(i)
    return torch.randn(16, 32, generator=g).to(device), torch.randn(16, 8, generator=g).to(device)


def step(model, opt, i, device):
    x, y = batch(i, device)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def main() -> int:
    cuda = torch.cuda.is_available()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    failures = 0

    def report(name, ok, detail=""):
        nonlocal failures
        failures += not ok
        if rank == 0:
            print(f"{'PASS' if ok else 'FAIL'} fsdp2 {name} (world {world}, {device.type}) {detail}", flush=True)

    impls = {"foreach": dict(foreach=True)}
    if cuda:
        impls["fused"] = dict(fused=True)
    for impl_name, impl in impls.items():
        try:
            reference, model = make_model(device), sharded(device)
            ref_opt = adamlab.Yogi(reference.parameters(), lr=0.01, foreach=True)
            opt = adamlab.Yogi(model.parameters(), lr=0.01, **impl)
            assert all(isinstance(p, DTensor) for p in model.parameters()), "parameters are not DTensors"
            worst = 0.0
            for i in range(4):
                step(reference, ref_opt, i, device)
                step(model, opt, i, device)
                for p, q in zip(model.parameters(), reference.parameters()):
                    worst = max(worst, (p.full_tensor() - q).abs().max().item())
            report(f"Yogi {impl_name} matches unsharded", worst < 1e-5, f"max |diff| {worst:.2e}")

            with tempfile.TemporaryDirectory() as tmp:
                path = [tmp]
                dist.broadcast_object_list(path, src=0)
                dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path[0])
                fresh = sharded(device)
                fresh_opt = adamlab.Yogi(fresh.parameters(), lr=0.01, **impl)
                step(fresh, fresh_opt, 0, device)  # create state to load into
                loaded = {"optim": get_optimizer_state_dict(fresh, fresh_opt)}
                dcp.load(loaded, checkpoint_id=path[0])
                set_optimizer_state_dict(fresh, fresh_opt, loaded["optim"])
                dist.barrier()
            same = True
            for p, q in zip(model.parameters(), fresh.parameters()):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    a, b = opt.state[p][key], fresh_opt.state[q][key]
                    a = a.full_tensor() if isinstance(a, DTensor) else a
                    b = b.full_tensor() if isinstance(b, DTensor) else b
                    same &= torch.equal(a.cpu(), b.cpu())
            report(f"Yogi {impl_name} optimizer state round-trips through torch.distributed.checkpoint", same)
        except Exception as error:  # report and go on: one line per check
            report(f"Yogi {impl_name}", False, f"{type(error).__name__}: {error}")
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
