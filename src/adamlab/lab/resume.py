"""Checkpoint and resume a lab run (torch): the one piece the training loop calls out to.

:func:`adamlab.lab.loop.train` calls :meth:`Checkpointing.restore` once before its first
step and :meth:`Checkpointing.after_step` after each step; nothing else in the loop knows
about checkpoints. A checkpoint (:mod:`adamlab.lab.checkpoint`: the file format, verified
before use) holds the model and optimizer state, every RNG state, the position in the
data order and the curve so far, so a resumed run on CPU ends bitwise where an
uninterrupted one does.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adamlab.lab import checkpoint as ckpt
from adamlab.lab.data import LabData, LabInputError
from adamlab.lab.loop import Progress, RunConfig


def checkpoint_path(folder: str | Path, config: RunConfig) -> Path:
    """``folder/<trainer>-<optimizer>.ckpt``: one checkpoint per run of the chapter."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{config.trainer}-{config.optimizer}").strip("-").lower()
    return Path(folder) / f"{slug}.ckpt"


class Checkpointing:
    """Save ``config``'s run to ``path`` every ``every`` steps (and at the end); with
    ``resume``, continue from the checkpoint there if one exists."""

    def __init__(self, path: str | Path, config: RunConfig, data: LabData, *, every: int = 0, resume: bool = False):
        if every < 0:
            raise LabInputError(f"--checkpoint-every must be >= 0, got {every}")
        if config.framework != "torch":
            raise LabInputError(
                f"--checkpoint-every and --resume: only --framework torch supports them, not {config.framework}"
            )
        self.path, self.config, self.data = Path(path), config, data
        self.every, self.resume = every, resume

    def load(self) -> dict[str, Any] | None:
        """The verified checkpoint of this run, or None if there is none yet (or no resume)."""
        if not self.resume or not self.path.exists():
            return None
        state = ckpt.load(self.path)
        if state.get("config") != asdict(self.config):
            raise ckpt.CheckpointError(
                f"checkpoint {self.path} belongs to another configuration: {state.get('config')}"
            )
        if state.get("data_sha1") != self.data.sha1:
            raise ckpt.CheckpointError(f"checkpoint {self.path} was made on other data (sha1 {state.get('data_sha1')})")
        return state

    def restore(self, session: Any) -> Progress | None:
        state = self.load()
        if state is None:
            return None
        session.load_state_dict(state)
        return Progress(
            state["step"], state["train_seconds"], list(state["epochs"]), list(state["losses"]), state["perm"]
        )

    def after_step(self, session: Any, progress: Progress, total_steps: int) -> None:
        if self.every and (progress.step % self.every == 0 or progress.step == total_steps):
            payload = {
                "config": asdict(self.config),
                "data_sha1": self.data.sha1,
                **session.state_dict(),  # model, generator, global_rng
                "step": progress.step,
                "perm": progress.perm,
                "train_seconds": progress.train_seconds,
                "epochs": progress.epochs,
                "losses": progress.losses,
            }
            ckpt.save(self.path, payload)
