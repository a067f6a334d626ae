"""What a workload run does, as data, and the checks made before anything is allocated.

:class:`WorkloadConfig` holds the model, the training length, the optimizers and the
process layouts ("modes") to run; :data:`PRESETS` are the default run and ``--quick``
(CI). :func:`check` refuses, with a :class:`ValueError` naming the value, an unknown
optimizer or mode, a world size larger than this machine's cores, and a model whose
estimated memory exceeds what is available -- all before a tensor is allocated.

The default model is small (0.43M parameters, 128 tokens per step) because the default
run trains it 75 times (15 optimizers: 11 fp32 and adamlab's fused bf16 and 8-bit Adam and
Yogi; 3 seeds on one process, 1 under DDP, 1 under FSDP2) and must end in minutes on 2 CPU
cores; ``--d-model 256 --n-layer 4`` gives 3.2M.

Learning rates are per update rule (:data:`LEARNING_RATES`): every Adam shares one, every
Yogi another, each with its own default ε (Adam 1e-8; Yogi 1e-3 with s0 = 1e-6, the same
in adamlab, torch_optimizer and pytorch_optimizer). They were picked by
:func:`adamlab.bench.workload.sweep.sweep` on the default model (recorded in
benchmarks/RESULTS.md): the rate with the lowest final validation loss.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from adamlab.bench.workload.model import GPTConfig

MODES = ("single", "ddp", "fsdp2")
LEARNING_RATES = {"Adam": 1e-3, "Yogi": 3e-3}  # from the sweep on the default model


def rule_of(optimizer: str) -> str:
    """ "Adam" or "Yogi": the update rule an optimizer name implements."""
    return "Yogi" if "yogi" in optimizer.lower() else "Adam"


@dataclass(frozen=True)
class WorkloadConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    steps: int = 60
    batch_size: int = 4  # sequences per step (split over the ranks of a distributed run)
    eval_every: int = 15
    eval_batches: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    dist_seeds: tuple[int, ...] = (0,)  # seeds run under DDP and FSDP2 (each costs a full run)
    modes: tuple[str, ...] = MODES
    world_size: int = 2
    optimizers: tuple[str, ...] | None = None  # name substrings, as `adamlab bench --impl`; None: all
    lrs: dict[str, float] = field(default_factory=lambda: dict(LEARNING_RATES))
    corpus_bytes: int = 4 << 20
    split_seed: int = 0
    device: str = "cpu"  # single-process runs; distributed runs are CPU + gloo
    threads: int | None = None  # torch threads of the single-process runs; None: torch's default (all cores)
    rss_probe_steps: int = 3  # steps of the per-optimizer peak-RSS probe (0: no probe)
    loss_tolerance: float = 1e-3  # max |val loss distributed - single| (nats), same seed, every eval; measured < 1e-6
    min_loss_drop: float = 0.5  # the final val loss must sit this far (nats) below the initial one
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, WorkloadConfig] = {
    "default": WorkloadConfig(),
    # CI: a model of ~0.1M parameters, one process, 1 seed, no RSS probes; still trains and
    # must show the loss falling (the distributed modes have their own tests)
    "quick": WorkloadConfig(
        model=GPTConfig(block=32, n_layer=2, n_head=2, d_model=64),
        steps=30,
        batch_size=8,
        eval_every=15,
        eval_batches=2,
        seeds=(0,),
        corpus_bytes=1 << 20,
        modes=("single",),
        threads=1,  # two threads of a tiny model spin-wait for each other on a busy machine
        rss_probe_steps=0,
        min_loss_drop=0.3,
        quick=True,
    ),
}


def preset(name: str, **overrides: Any) -> WorkloadConfig:
    """A preset with some fields replaced (``None`` values are ignored); model fields too."""
    cfg = PRESETS[name]
    model_keys = set(asdict(cfg.model))
    model = {k: v for k, v in overrides.items() if k in model_keys and v is not None}
    rest = {k: v for k, v in overrides.items() if k not in model_keys and v is not None}
    return replace(cfg, model=replace(cfg.model, **model), **rest)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes the kernel says a new allocation can get (MemAvailable), or physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_estimate(cfg: WorkloadConfig, n_optimizers: int) -> dict[str, int]:
    """Bytes a run needs at its peak, from the configuration alone (float32).

    Per optimizer (all live together in the lock-step loop): weights, gradients and two
    state tensors (16 B/param). Once: the activations autograd keeps for one
    forward+backward (per layer about 20 floats per token and channel, the attention
    matrix per head, and the logits), a temporary copy of the weights, and the corpus.
    A distributed run holds the same per rank.
    """
    m = cfg.model
    n = m.n_params()
    tokens = cfg.batch_size * m.block
    activations = 4 * (
        tokens * m.d_model * 20 * m.n_layer
        + cfg.batch_size * m.n_head * m.block**2 * m.n_layer * 2
        + tokens * m.vocab * 3
    )
    per_process = 16 * n * n_optimizers + activations + 4 * n + cfg.corpus_bytes * 2
    ranks = 1 + (cfg.world_size if set(cfg.modes) & {"ddp", "fsdp2"} else 0)
    return {"params": n, "per_process": per_process, "total": per_process * ranks}


def check(cfg: WorkloadConfig, optimizer_names: list[str]) -> dict[str, int]:
    """Refuse what cannot run here (ValueError naming the value); returns the memory estimate."""
    unknown = sorted(set(cfg.modes) - set(MODES))
    if unknown or not cfg.modes:
        raise ValueError(f"unknown mode(s) {unknown or list(cfg.modes)} (expected some of {list(MODES)})")
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    m = cfg.model
    if min(m.block, m.n_layer, m.n_head, m.d_model) < 1 or m.d_model % m.n_head:
        raise ValueError(f"bad model shape {m}: sizes must be positive and d_model a multiple of n_head")
    if not cfg.seeds:
        raise ValueError("no seeds to run")
    distributed = set(cfg.modes) & {"ddp", "fsdp2"}
    if distributed:
        if "single" not in cfg.modes:
            raise ValueError(
                f"modes {sorted(distributed)} need the single mode too: their check compares with it "
                "(add single to --modes)"
            )
        if cfg.world_size < 2:
            raise ValueError(f"world size {cfg.world_size}: a distributed run needs at least 2 processes")
        if cfg.world_size > cores():
            raise ValueError(f"world size {cfg.world_size} is larger than this machine's {cores()} CPU cores")
        if cfg.batch_size % cfg.world_size:
            raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {cfg.world_size} processes")
    if distributed and cfg.device != "cpu":
        raise ValueError(
            f"distributed runs are CPU + gloo only; got --device {cfg.device} with modes {sorted(distributed)}"
        )
    missing = sorted({rule_of(o) for o in optimizer_names} - set(cfg.lrs))
    if missing:
        raise ValueError(f"no learning rate for rule(s) {missing} (have {sorted(cfg.lrs)})")
    estimate = memory_estimate(cfg, len(optimizer_names))
    free = available_memory()
    if estimate["total"] > free:
        raise ValueError(
            f"the model is too large for this machine: {estimate['params'] / 1e6:.1f}M parameters x "
            f"{len(optimizer_names)} optimizers need about {estimate['total'] / 2**30:.1f} GiB "
            f"({estimate['per_process'] / 2**30:.1f} GiB per process), {free / 2**30:.1f} GiB is available"
        )
    return estimate
