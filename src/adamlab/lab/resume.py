"""Checkpoint and resume a lab run (torch): the one piece the training loop calls out to.

:func:`adamlab.lab.loop.train` calls :meth:`Checkpointing.restore` once before its first
step and :meth:`Checkpointing.after_step` after each step; nothing else in the loop knows
about checkpoints. A checkpoint (:mod:`adamlab.lab.checkpoint`: the file format, verified
before use) holds the model and optimizer state, every RNG state, the position in the
data order and the curve so far, so a resumed run on CPU ends bitwise where an
uninterrupted one does. A checkpoint is validated against the run before it is used
(:class:`adamlab.lab.checkpoint.Expected`, built from a model of the run after one step).
"""

from __future__ import annotations

import math
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
    ``resume``, continue from the checkpoint there if one exists, and save at the end (also
    when ``every`` is 0). ``factory``: the run's
    optimizer factory when it is not looked up by name (as :func:`adamlab.lab.loop.train`'s)."""

    def __init__(
        self, path: str | Path, config: RunConfig, data: LabData, *, every: int = 0, resume: bool = False,
        factory: Any = None,
    ) -> None:  # fmt: skip
        if every < 0:
            raise LabInputError(f"--checkpoint-every must be >= 0, got {every}")
        if config.framework != "torch":
            raise LabInputError(
                f"--checkpoint-every and --resume: only --framework torch supports them, not {config.framework}"
            )
        self.path, self.config, self.data = Path(path), config, data
        self.every, self.resume, self.factory = every, resume, factory

    def load(self, session: Any = None) -> dict[str, Any] | None:
        """This run's checkpoint, verified and validated against the run (:func:`ckpt.validate`),
        or None if there is none yet (or no resume). ``session``: the run's
        :class:`~adamlab.lab.frameworks.torch_chapter.Session` (one is made if not given)."""
        if not self.resume or not self.path.exists():
            return None
        return ckpt.load(self.path, self.expected(session))

    def expected(self, session: Any = None) -> ckpt.Expected:
        """What a checkpoint of this run must hold: its config, data, length and model structure."""
        if session is None:
            from adamlab.lab.frameworks.torch_chapter import Session

            session = Session(self.config, self.data, self.factory)
        return ckpt.Expected(
            config=asdict(self.config),
            data_sha1=self.data.sha1,
            rows=self.data.n,
            total_steps=self.config.epochs * math.ceil(self.data.n / self.config.batch_size),
            epochs=float(self.config.epochs),
            model=session.template.state_dict(),
            generator=session.generator.get_state(),
        )

    def restore(self, session: Any) -> Progress | None:
        state = self.load(session)
        if state is None:
            return None
        session.load_state_dict(state)
        return Progress(
            state["step"], state["train_seconds"], list(state["epochs"]), list(state["losses"]), state["perm"]
        )

    def after_step(self, session: Any, progress: Progress, total_steps: int) -> None:
        # --resume alone keeps the checkpoint current at the end of the run (it was the run's
        # way back in; left at its old step, the next --resume would redo the same work)
        final = progress.step == total_steps and (self.every or self.resume)
        if final or (self.every and progress.step % self.every == 0):
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
