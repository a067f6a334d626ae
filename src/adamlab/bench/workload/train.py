"""The training loop: every optimizer trains its own copy of one model, in lock step.

For one seed, each optimizer gets an identical copy of the model (same initial weights)
and the same batches in the same order. Step ``i`` is taken by every optimizer before any
takes step ``i + 1``, in an order that rotates each step, so a slow spell of a shared
machine falls on all of them alike -- the workload's version of the interleaved rounds
of :mod:`adamlab.bench.core`.

Per step and optimizer, two clocks (host-synchronized on CUDA): *forward+backward*
(``zero_grad``, forward, loss, backward -- which under DDP includes the gradient
all-reduce, and under FSDP2 the all-gathers and reduce-scatters) and *optimizer*
(``step()`` alone). A run's wall time is the sum of its own step times, so its loss
curve against wall time is what it would be if it had the machine to itself.

Distributed: every rank runs this same loop on its share of each batch (rows
``rank::world`` would reorder the data; we take a contiguous slice). DDP and FSDP2
average the gradients over ranks, so a step equals the single-process step on the full
batch up to floating-point rounding. The recorded training loss is the average over
ranks (an all-reduce outside the timed region).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from adamlab.bench.measure import state_bytes
from adamlab.bench.workload import corpus as corpus_mod
from adamlab.bench.workload.model import GPT, GPTConfig


@dataclass
class Run:
    """One optimizer's training run: what it measured so far."""

    optimizer: str
    lr: float
    seed: int
    fwd_bwd_s: list[float] = field(default_factory=list)
    opt_s: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss", "wall_s"}
    state_bytes: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "seed": self.seed,
            "steps": len(self.opt_s),
            "fwd_bwd_s": self.fwd_bwd_s,
            "opt_s": self.opt_s,
            "train_loss": self.train_loss,
            "val": self.val,
            "state_bytes": self.state_bytes,
        }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _mean_over_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[Any], rank: int, world: int, device: str) -> float:
    """Mean validation loss over the fixed batches (each rank takes its slice of each)."""
    losses = [model(*(_shard(t, rank, world).to(device) for t in b)).item() for b in batches]
    return _mean_over_ranks(sum(losses) / len(losses), world)


def _shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = t.shape[0] // world
    return t[rank * n : (rank + 1) * n]


def train(
    *,
    model_cfg: GPTConfig,
    corpus: corpus_mod.Corpus,
    optimizers: list[tuple[str, float, Callable[[Any], Any]]],
    seed: int,
    steps: int,
    batch_size: int,
    eval_every: int,
    eval_batches: int,
    device: str = "cpu",
    rank: int = 0,
    world: int = 1,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    on_eval: Callable[[int, list[Run]], None] | None = None,
) -> tuple[list[Run], bool]:
    """Train one model per ``(name, lr, make)`` in lock step; returns the runs and whether
    all ``steps`` finished (``False``: stopped by Ctrl-C, the runs hold what was measured).

    ``make(params)`` builds the optimizer; ``wrap`` turns the model into DDP or FSDP2.
    """
    torch.manual_seed(seed)
    base = GPT(model_cfg)
    models, opts, runs = [], [], []
    for name, lr, make in optimizers:
        model = wrap(copy.deepcopy(base).to(device))
        opt = make(model.parameters())
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # torchao's optimizers refuse a float in its place
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        models.append(model)
        opts.append(opt)
        runs.append(Run(name, lr, seed))
    del base
    val = corpus_mod.val_batches(corpus, eval_batches, batch_size, model_cfg.block)
    wall = [0.0] * len(runs)

    def eval_all(step: int) -> None:
        for i, (model, run) in enumerate(zip(models, runs)):
            run.val.append({"step": step, "loss": evaluate(model, val, rank, world, device), "wall_s": wall[i]})
        if on_eval:
            on_eval(step, runs)

    n = len(runs)
    try:
        eval_all(0)
        for step in range(steps):
            x, y = (
                _shard(t, rank, world).to(device)
                for t in corpus_mod.train_batch(corpus, step, seed, batch_size, model_cfg.block)
            )
            for i in [(step + k) % n for k in range(n)]:  # rotate who goes first
                model, opt, run = models[i], opts[i], runs[i]
                _sync(device)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = model(x, y)
                loss.backward()
                _sync(device)
                t1 = time.perf_counter()
                opt.step()
                _sync(device)
                t2 = time.perf_counter()
                run.fwd_bwd_s.append(t1 - t0)
                run.opt_s.append(t2 - t1)
                wall[i] += t2 - t0
                run.train_loss.append(_mean_over_ranks(loss.item(), world))
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                eval_all(step + 1)
    except KeyboardInterrupt:
        complete = False
        done = min(len(run.opt_s) for run in runs)  # an interrupted step counts for no one
        for run in runs:
            del run.fwd_bwd_s[done:], run.opt_s[done:], run.train_loss[done:]
    else:
        complete = True
    for opt, run in zip(opts, runs):
        run.state_bytes = state_bytes(opt)
    return runs, complete
