"""How the workload's learning rates were chosen: a short sweep, one process, seed 0.

One representative per update rule (``torch.optim.Adam foreach=True`` for Adam,
``adamlab.Yogi foreach=True`` for Yogi: every implementation of a rule computes the same
update, and the peer Yogis share Yogi's defaults ε = 1e-3, s0 = 1e-6) trains the
workload's model for its number of steps at each rate of a grid, all in lock step; the
rate with the lowest final validation loss becomes :data:`~.config.LEARNING_RATES`.

    python -m adamlab.bench.workload.sweep          # the default model, ~ a minute or more
"""

from __future__ import annotations

import json
import sys
from typing import Any

GRID = {"Adam": (3e-4, 1e-3, 3e-3, 1e-2), "Yogi": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}
REPRESENTATIVE = {"Adam": "torch.optim.Adam foreach=True", "Yogi": "adamlab.Yogi foreach=True"}


def sweep(cfg: Any = None, grid: dict[str, tuple[float, ...]] = GRID, seed: int = 0) -> dict[str, Any]:
    """Final validation loss per rule and rate, and the best rate of each rule."""
    from adamlab.bench.workload import corpus as corpus_mod
    from adamlab.bench.workload.config import preset
    from adamlab.bench.workload.run import optimizer_factories
    from adamlab.bench.workload.train import train

    cfg = cfg or preset("default")
    corpus = corpus_mod.load(cfg.corpus_bytes, split_seed=cfg.split_seed)
    entries = []
    for rule, rates in grid.items():
        [(name, _, make)] = optimizer_factories([REPRESENTATIVE[rule]], cfg.lrs)
        entries += [(f"{name} lr={lr:g}", lr, make) for lr in rates]
    runs, _ = train(
        model_cfg=cfg.model,
        corpus=corpus,
        optimizers=entries,
        seed=seed,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        eval_every=cfg.eval_every,
        eval_batches=cfg.eval_batches,
    )
    table = {r.optimizer: r.val[-1]["loss"] for r in runs}
    best = {
        rule: min(((lr, table[f"{REPRESENTATIVE[rule]} lr={lr:g}"]) for lr in rates), key=lambda t: t[1])[0]
        for rule, rates in grid.items()
    }
    return {"model": cfg.model.__dict__, "steps": cfg.steps, "seed": seed, "final_val_loss": table, "best": best}


if __name__ == "__main__":
    json.dump(sweep(), sys.stdout, indent=2)
    print()
