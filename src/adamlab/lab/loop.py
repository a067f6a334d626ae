"""One training run with the book's protocol, in any framework (needs NumPy only).

The protocol (*Dive into Deep Learning*, ``train_ch11`` and ``train_concise_ch11``): the
standardized airfoil data (:mod:`adamlab.lab.data`), shuffled minibatches with a fresh
permutation every pass, the full-data ½-MSE recorded every 200 examples at
x = examples / n (epochs), only the shuffling and the steps timed, and at the end the
book's line ``loss: 0.243, 0.012 sec/epoch``.

A run is described by a :class:`RunConfig` (data, not globals: the framework is one of its
fields) and returns a :class:`RunResult`. The framework module
(:mod:`adamlab.lab.frameworks`) builds the model and the data order; :func:`train` is the
same loop for all three. Checkpoints (torch only) are one hook called after each step and
one restore before the first: :mod:`adamlab.lab.resume`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from adamlab.lab.data import EXAMPLES_PER_EVAL, LabData, LabInputError
from adamlab.lab.results import run_status

BOOK_EPOCHS = {"scratch": 2, "concise": 4}  # the chapter's: 2 for its own code, 4 for the concise one

# ``on_progress(step, total_steps)``: called when a loss point is recorded.
OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunConfig:
    """One run: ``optimizer`` is "adam"/"yogi" (scratch) or a run name of its framework (concise)."""

    trainer: str = "scratch"
    optimizer: str = "adam"
    lr: float = 0.01
    batch_size: int = 10
    epochs: int = 2
    seed: int = 0
    data: str | None = None  # None: the bundled airfoil file
    framework: str = "torch"

    @property
    def name(self) -> str:
        return f"scratch {self.optimizer.capitalize()}" if self.trainer == "scratch" else self.optimizer

    def validate(self, data: LabData | None = None, *, resolve: bool = True) -> None:
        """Raise :class:`LabInputError` for any value the trainers cannot run.

        ``resolve=False`` skips looking a concise optimizer up by name (a factory was given).
        """
        from adamlab.lab import frameworks

        if self.trainer not in BOOK_EPOCHS:
            raise LabInputError(f"unknown trainer {self.trainer!r} (expected 'scratch' or 'concise')")
        if self.trainer == "scratch" and self.optimizer not in ("adam", "yogi"):
            raise LabInputError(f"unknown optimizer {self.optimizer!r} for the scratch trainer (expected adam or yogi)")
        if self.trainer == "concise" and resolve:
            frameworks.check_optimizer(self.framework, self.optimizer)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr):
            raise LabInputError(f"learning rate must be a finite number, got {self.lr!r}")
        if self.lr <= 0:
            raise LabInputError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise LabInputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise LabInputError(f"epochs must be >= 1, got {self.epochs}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise LabInputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if data is not None and data.n < self.batch_size:
            raise LabInputError(f"the data has {data.n} rows, fewer than one batch of {self.batch_size}")


@dataclass
class RunResult:
    """A finished run: the curve, the timing, the final parameters and how it was made."""

    config: RunConfig
    epochs: list[float]
    losses: list[float]
    train_seconds: float
    implementation: str
    parameters: dict[str, list]
    steps: int
    resumed_at_step: int | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def sec_per_epoch(self) -> float:
        return self.train_seconds / self.config.epochs

    @property
    def status(self) -> str:
        """``"diverged"`` when a recorded loss is not finite, else ``"ok"``."""
        return run_status(self.losses)

    def book_line(self) -> str:
        """The book's line: ``loss: 0.243, 0.012 sec/epoch``."""
        return f"loss: {self.final_loss:.3f}, {self.sec_per_epoch:.3f} sec/epoch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "config": asdict(self.config),
            "implementation": self.implementation,
            "final_loss": self.final_loss,
            "sec_per_epoch": self.sec_per_epoch,
            "train_seconds": self.train_seconds,
            "steps": self.steps,
            "resumed_at_step": self.resumed_at_step,
            "epochs": self.epochs,
            "losses": self.losses,
            "parameters": self.parameters,
        }

    def plot(self, floor: float | None = None):
        """A matplotlib Figure of the loss curve (shown inline in Jupyter)."""
        from adamlab.lab.plots import plot_curves

        return plot_curves([self], floor=floor)


@dataclass
class Progress:
    """Where a run stands; what a checkpoint saves and a resume restores."""

    step: int = 0
    train_seconds: float = 0.0
    epochs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    perm: Any = None  # the current pass's permutation


def train(
    config: RunConfig,
    data: LabData | None = None,
    *,
    factory: Any = None,
    on_progress: OnProgress | None = None,
    checkpoint: Any = None,
    session: Any = None,
) -> RunResult:
    """Train one run of ``config`` on ``data`` (default: the bundled airfoil data).

    ``factory`` (torch, concise): any ``f(params, lr=...)`` returning an optimizer, used
    instead of looking ``config.optimizer`` up. ``checkpoint``: a
    :class:`adamlab.lab.resume.Checkpointing`, which may restore the run before the first
    step and saves it after steps.
    """
    from adamlab.lab import frameworks
    from adamlab.lab.data import load

    data = data if isinstance(data, LabData) else load(data)
    config.validate(data, resolve=factory is None)
    if session is None:
        session = frameworks.module(config.framework).Session(config, data, factory)
    X, y, model = session.X, session.y, session.model
    n, bs = data.n, config.batch_size
    batches_per_epoch = math.ceil(n / bs)
    total_steps = config.epochs * batches_per_epoch

    state = checkpoint.restore(session) if checkpoint is not None else None
    resumed_at = state.step if state is not None else None
    state = state or Progress()
    Xp = yp = None
    if state.perm is not None:
        Xp, yp = X[state.perm], y[state.perm]

    while state.step < total_steps:
        epoch, k = divmod(state.step, batches_per_epoch)
        start = time.perf_counter()
        if k == 0:  # a fresh permutation every pass; gathered once, so each batch is a slice
            state.perm = session.permutation(n)
            Xp, yp = X[state.perm], y[state.perm]
        model.step(Xp[k * bs : (k + 1) * bs], yp[k * bs : (k + 1) * bs])
        state.train_seconds += time.perf_counter() - start
        state.step += 1
        # The book records the full-data loss every 200 examples, and once at the end.
        seen_before, seen = epoch * n + min(k * bs, n), epoch * n + min((k + 1) * bs, n)
        if seen // EXAMPLES_PER_EVAL > seen_before // EXAMPLES_PER_EVAL or state.step == total_steps:
            if not state.epochs or state.epochs[-1] != seen / n:
                state.epochs.append(seen / n)
                state.losses.append(model.loss(X, y))
            if on_progress is not None:
                on_progress(state.step, total_steps)
        if checkpoint is not None:
            checkpoint.after_step(session, state, total_steps)

    return RunResult(
        config=config,
        epochs=state.epochs,
        losses=state.losses,
        train_seconds=state.train_seconds,
        implementation=model.implementation(),
        parameters=session.parameters(),
        steps=state.step,
        resumed_at_step=resumed_at,
    )


def half_mse(prediction: Any, y: Any) -> float:
    """½·mean((ŷ - y)²) of NumPy arrays, accumulated in float64 (the chapter's loss, reported)."""
    import numpy as np

    r = np.asarray(prediction, dtype=np.float64).reshape(y.shape) - y
    return float(0.5 * np.mean(r * r))


def run_each(items: Any, work: Callable[[Any], Any], *, advance: Callable[[], None] | None = None) -> tuple[list, str]:
    """``[work(item) for item in items]`` and ``"complete"``; on Ctrl-C, what finished and
    ``"partial"`` (Ctrl-C before anything finished propagates: there is nothing to keep)."""
    done: list = []
    try:
        for item in items:
            done.append(work(item))
            if advance is not None:
                advance()
    except KeyboardInterrupt:
        if not done:
            raise
        return done, "partial"
    return done, "complete"
