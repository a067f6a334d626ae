"""The chapter's protocol for any framework: one loop, the same data, the same records.

The torch trainers live in :mod:`adamlab.lab.train`; this module is their torch-free
twin for the chapter's other two frameworks (TensorFlow through Keras 3, and MXNet
Gluon). It needs NumPy only, so it runs in the MXNet environment, where torch is absent.

The protocol (the book's ``train_ch11`` / ``train_concise_ch11``, as in the torch lab):
the standardized airfoil data from :func:`adamlab.lab.data.load`, shuffled minibatches
with a fresh permutation every pass (drawn from ``numpy.random.default_rng(seed)``, since
a torch generator is not available everywhere), the full-data ½-MSE recorded every 200
examples at x = examples / n, only the training step timed, and the book's line
``loss: 0.243, 0.012 sec/epoch``.

A framework supplies a *model*: ``step(X_batch, y_batch)`` (one optimizer step),
``loss(X, y)`` (the full-data ½-MSE as a float), ``implementation()`` and ``parameters()``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from adamlab.lab.data import EXAMPLES_PER_EVAL, LabData, LabInputError
from adamlab.lab.results import versions
from adamlab.lab.runs import CurveRun

DEFAULT_EPOCHS = {"scratch": 2, "concise": 4}


class Model(Protocol):
    def step(self, X: np.ndarray, y: np.ndarray) -> None: ...
    def loss(self, X: np.ndarray, y: np.ndarray) -> float: ...
    def implementation(self) -> str: ...
    def parameters(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class FrameworkConfig:
    """One run: ``trainer`` "scratch" or "concise", ``optimizer`` the run's name in its framework."""

    framework: str
    trainer: str
    optimizer: str
    lr: float = 0.01
    batch_size: int = 10
    epochs: int = 2
    seed: int = 0
    data: str | None = None  # None: the bundled airfoil file

    @property
    def name(self) -> str:
        return f"scratch {self.optimizer.capitalize()}" if self.trainer == "scratch" else self.optimizer

    def validate(self, data: LabData | None = None) -> None:
        if self.trainer not in DEFAULT_EPOCHS:
            raise LabInputError(f"unknown trainer {self.trainer!r} (expected 'scratch' or 'concise')")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr):
            raise LabInputError(f"learning rate must be a finite number, got {self.lr!r}")
        if self.lr <= 0:
            raise LabInputError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise LabInputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise LabInputError(f"epochs must be >= 1, got {self.epochs}")
        if data is not None and data.n < self.batch_size:
            raise LabInputError(f"the data has {data.n} rows, fewer than one batch of {self.batch_size}")


@dataclass
class FrameworkRun(CurveRun):
    """A finished run; the same fields and methods as :class:`adamlab.lab.train.RunResult`."""

    config: FrameworkConfig
    epochs: list[float]
    losses: list[float]
    train_seconds: float
    implementation: str
    parameters: dict[str, list]
    steps: int
    data: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        doc = super().to_dict()
        return {"name": doc.pop("name"), "framework": self.config.framework, **doc}


def train(
    model: Model,
    config: FrameworkConfig,
    data: LabData,
    *,
    framework_versions: dict[str, str] | None = None,
    progress: Any = None,
) -> FrameworkRun:
    """Run ``model`` through the book's protocol; see the module docstring."""
    config.validate(data)
    rng = np.random.default_rng(config.seed)
    X, y = data.X, data.y
    n, bs = data.n, config.batch_size
    batches_per_epoch = math.ceil(n / bs)
    total_steps = config.epochs * batches_per_epoch
    trained, curve_x, curve_y = 0.0, [], []
    Xp = yp = None
    for step in range(total_steps):
        epoch, k = divmod(step, batches_per_epoch)
        if k == 0:  # a fresh permutation every pass; gathered once, so each batch is a slice
            perm = rng.permutation(n)
            Xp, yp = X[perm], y[perm]
        start = time.perf_counter()
        model.step(Xp[k * bs : (k + 1) * bs], yp[k * bs : (k + 1) * bs])
        trained += time.perf_counter() - start
        seen_before, seen = epoch * n + min(k * bs, n), epoch * n + min((k + 1) * bs, n)
        if seen // EXAMPLES_PER_EVAL > seen_before // EXAMPLES_PER_EVAL or step + 1 == total_steps:
            if not curve_x or curve_x[-1] != seen / n:
                curve_x.append(seen / n)
                curve_y.append(model.loss(X, y))
            if progress is not None:
                progress(step + 1, total_steps)
    return FrameworkRun(
        config=config,
        epochs=curve_x,
        losses=curve_y,
        train_seconds=trained,
        implementation=model.implementation(),
        parameters={k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in model.parameters().items()},
        steps=total_steps,
        data=data.describe(),
        versions={**versions(), **(framework_versions or {})},
    )


def half_mse(prediction: np.ndarray, y: np.ndarray) -> float:
    """½·mean((ŷ - y)²), accumulated in float64 (the chapter's loss, reported)."""
    r = np.asarray(prediction, dtype=np.float64).reshape(y.shape) - y
    return float(0.5 * np.mean(r * r))
