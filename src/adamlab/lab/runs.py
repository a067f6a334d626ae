"""What every finished training run offers, whichever framework trained it (torch-free).

:class:`adamlab.lab.train.RunResult` (torch) and
:class:`adamlab.lab.frameworks.protocol.FrameworkRun` (TensorFlow, MXNet) are dataclasses
with the same fields; :class:`CurveRun` gives both the book's line, the JSON record and
the figure. This module imports neither torch nor NumPy: the MXNet environment has no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


class CurveRun:
    """A run with ``config`` (a dataclass with ``name`` and ``epochs``), the curve
    (``epochs``, ``losses``), ``train_seconds``, ``implementation``, ``parameters``,
    ``steps``, ``data`` and ``versions``."""

    config: Any
    epochs: list[float]
    losses: list[float]
    train_seconds: float
    implementation: str
    parameters: dict[str, list]
    steps: int
    data: dict[str, Any]
    versions: dict[str, str]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def sec_per_epoch(self) -> float:
        return self.train_seconds / self.config.epochs

    def book_line(self) -> str:
        """The book's line: ``loss: 0.243, 0.012 sec/epoch``."""
        return f"loss: {self.final_loss:.3f}, {self.sec_per_epoch:.3f} sec/epoch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": asdict(self.config),
            "implementation": self.implementation,
            "final_loss": self.final_loss,
            "sec_per_epoch": self.sec_per_epoch,
            "train_seconds": self.train_seconds,
            "steps": self.steps,
            "epochs": self.epochs,
            "losses": self.losses,
            "parameters": self.parameters,
            "data": self.data,
            "versions": self.versions,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self, floor: float | None = None):
        """A matplotlib Figure of the loss curve (shown inline in Jupyter)."""
        from adamlab.lab.plots import plot_runs

        return plot_runs([self], floor=floor)
