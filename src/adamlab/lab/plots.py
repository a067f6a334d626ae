"""Loss-vs-epoch figures, drawn with matplotlib's Agg backend and no global pyplot state.

Figures are built as ``matplotlib.figure.Figure`` objects, so the lab never opens a
window, never leaks figures between calls, and a returned figure shows inline in
Jupyter. :func:`save_figure` writes PNG or SVG atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adamlab.lab.results import atomic_write

FORMATS = ("png", "svg")


def plot_runs(runs: Sequence[Any], *, floor: float | None = None, title: str | None = None):
    """One curve per run (``run.name``, ``run.epochs``, ``run.losses``); the floor dashed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for run in runs:
        ax.plot(run.epochs, run.losses, marker=".", markersize=3, linewidth=1.2, label=run.name)
    if floor is not None:
        ax.axhline(floor, color="black", linestyle="--", linewidth=1, label=f"least-squares floor {floor:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (½ MSE, full data)")
    ax.set_xlim(0, max((run.epochs[-1] for run in runs), default=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def figure_bytes(fig: Any, fmt: str = "png") -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fmt not in FORMATS:
        raise ValueError(f"Invalid plot format: {fmt!r} (expected one of {FORMATS})")
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, metadata={"Software": None} if fmt == "png" else {"Date": None})
    return buffer.getvalue()


def save_figure(fig: Any, path: str | Path, fmt: str = "png") -> Path:
    return atomic_write(path, figure_bytes(fig, fmt))
