"""The lab's figures: one style, built without pyplot's global state.

Figures are ``matplotlib.figure.Figure`` objects (the lab never opens a window, never
leaks figures between calls, and a returned figure shows inline in Jupyter). Every figure
is drawn inside :func:`style` (one set of sizes, one colour per optimizer wherever it
appears: :func:`color`), and log axes carry plain numbers (0.3, 0.5, 1), not 6×10⁻¹.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

FORMATS = ("png", "svg")
# The book plots the chapter's curves on this loss range (d2l.train_ch11: ylim=[0.22, 0.35]).
BOOK_YLIM = (0.22, 0.35)
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "normal",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 11,
    "lines.linewidth": 1.4,
    "lines.markersize": 3,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text in SVG: smaller, searchable
}
# One colour per optimizer, whichever figure it is in (tab10 order).
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
_COLORS = {
    "adam": 0, "yogi": 1, "amsgrad": 2, "sgd": 3, "momentum": 4, "rmsprop": 5, "adagrad": 6, "adadelta": 8,
    "yogi(s0=0,no-bc)": 9,
}  # fmt: skip


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The lab's plot style, for the figures built inside the block."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def color(name: str, index: int = 0) -> str:
    """The colour of optimizer ``name`` (by its family: "adamlab.Yogi" is yogi's), else the ``index``-th."""
    key = name.lower()
    if key not in _COLORS:
        key = "yogi" if "yogi" in key else "adam" if "adam" in key else key
    return _PALETTE[_COLORS.get(key, index) % len(_PALETTE)]


def figure(rows: int = 1, cols: int = 1, *, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any]:
    """A Figure with a ``rows`` x ``cols`` grid of axes (a 2-D array), in the lab's style."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def plain_log_ticks(ax: Any, axis: str = "y") -> None:
    """Label a log axis with plain numbers (0.2, 0.5, 1) instead of mathtext powers (6×10⁻¹)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (x0, y0), (x1, y1) = ax.dataLim.get_points()
    low, high = (y0, y1) if axis == "y" else (x0, x1)
    if not (math.isfinite(low) and math.isfinite(high) and low > 0):
        return  # nothing positive to show (e.g. every run diverged): matplotlib's default copes
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def plot_curves(runs: Sequence[Any], *, floor: float | None = None, title: str | None = None) -> Any:
    """The book's figure: loss vs epoch, one run per panel (small multiples), the floor dashed.

    Each panel shows its run in colour and the other runs in light grey, so the runs can
    be told apart and compared. The y range is the book's (0.22-0.35) when every curve ends
    inside it, else fitted to the data.
    """
    runs = list(runs)
    cols = min(len(runs), 3) or 1
    rows = math.ceil(len(runs) / cols) or 1
    ends = [r.losses[-1] for r in runs if r.losses]
    book_range = all(math.isfinite(v) and BOOK_YLIM[0] < v < BOOK_YLIM[1] for v in ends)
    with style():
        fig, axes = figure(rows, cols, width=3.4, height=2.7)
        for i, ax in enumerate(axes.flat):
            if i >= len(runs):
                ax.set_visible(False)
                continue
            run = runs[i]
            for other in runs:
                if other is not run:
                    ax.plot(other.epochs, other.losses, color="0.82", lw=0.9, zorder=1)
            ax.plot(run.epochs, run.losses, color=color(run.name, i), marker=".", zorder=3, label=run.name)
            if floor is not None:
                ax.axhline(floor, color="k", ls="--", lw=0.8, zorder=2)
            ax.set_xlim(0, max((r.epochs[-1] for r in runs if r.epochs), default=1))
            if book_range:
                ax.set_ylim(*BOOK_YLIM)
            ax.set_title(run.name)
            if hasattr(run, "book_line"):  # the book's line, inside the panel
                ax.text(0.97, 0.95, run.book_line(), transform=ax.transAxes, ha="right", va="top", fontsize=8)
            if i % cols == 0:
                ax.set_ylabel("loss (½ MSE, full data)")
            if i >= len(runs) - cols:
                ax.set_xlabel("epoch")
        if title:
            note = f"; dashed: least-squares floor {floor:.4f}" if floor is not None else ""
            fig.suptitle(title + note)
    return fig


def figure_bytes(fig: Any, fmt: str = "png") -> bytes:
    """The figure as PNG or SVG bytes (no timestamps: the same figure gives the same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fmt not in FORMATS:
        raise ValueError(f"Invalid plot format: {fmt!r} (expected one of {FORMATS})")
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(buffer, format=fmt, metadata=metadata, dpi=100)
    return buffer.getvalue()
