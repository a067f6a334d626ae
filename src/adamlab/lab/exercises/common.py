"""Small pieces the exercise commands share: one-line errors and figures.

Result files, the output-folder check and versions come from :mod:`adamlab.lab.results`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adamlab.lab import plots
from adamlab.lab.data import LabInputError
from adamlab.lab.results import atomic_write, check_output_dir, versions, write_json

__all__ = [
    "LabInputError",
    "Progress",
    "check_output_dir",
    "experiment_record",
    "figure",
    "figure_data_uri",
    "input_errors",
    "save_figure",
    "versions",
    "write_json",
    "write_results",
]


@contextmanager
def input_errors(name: str) -> Iterator[None]:
    """``with input_errors("sweep"):`` — a bad input becomes one stderr line and exit code 2.

    Catches :class:`LabInputError` and the ``ValueError`` that validation raises; nothing
    else (a bug should still show its traceback). The line is :func:`adamlab.lab.cli.fail`'s,
    the same as :class:`~adamlab.lab.cli.LabGroup` prints, so a command says the same thing
    whether it runs under ``adamlab`` or on its own. ``name`` is kept for the callers.
    """
    from adamlab.lab.cli import fail

    try:
        yield
    except (LabInputError, ValueError) as err:
        fail(err)


def experiment_record(experiment: str, source: str, result: Any, runs: list[Any]) -> dict[str, Any]:
    """The JSON record of an experiment on the airfoil data (bias, decay, compare, init-batches).

    ``result`` has ``config`` (a dict with ``seed``), ``floor``, ``data``, ``versions`` and
    ``rows()`` (the printed table); ``runs`` are the per-run records.
    """
    return {
        "experiment": experiment,
        "source": source,
        "config": result.config,
        "seed": result.config["seed"],
        "floor": result.floor,
        "data": result.data,
        "versions": result.versions,
        "table": result.rows(),
        "runs": runs,
    }


def figure(rows: int, cols: int, *, width: float = 5.0, height: float = 3.4) -> tuple[Any, Any]:
    """A matplotlib figure with a grid of axes (created without pyplot's global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: Path) -> Path:
    """Write the figure atomically in the format its suffix names (png or svg)."""
    return plots.save_figure(fig, path, path.suffix.lstrip("."))


def write_results(out_dir: Path, stem: str, doc: Any, fig: Any, fmt: str) -> tuple[Path, Path]:
    """``OUT/STEM.json`` and ``OUT/STEM.FMT``. The figure is rendered to bytes first, so a
    figure that cannot be drawn leaves no file behind; each file is written atomically."""
    image = plots.figure_bytes(fig, fmt)
    json_path = write_json(Path(out_dir) / f"{stem}.json", doc)
    return json_path, atomic_write(Path(out_dir) / f"{stem}.{fmt}", image)


def figure_data_uri(fig: Any, fmt: str = "png") -> str:
    """The figure as a ``data:`` URI, for a self-contained HTML page."""
    mime = {"png": "image/png", "svg": "image/svg+xml"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(plots.figure_bytes(fig, fmt)).decode()}"


class Progress:
    """A rich progress bar over ``total`` units of work, or nothing at all.

    Shown only when ``enabled`` and stdout is a terminal (the lab's convention: silent
    under ``--quiet``/``--json`` and in pipes). ``advance()`` is cheap when disabled.
    """

    def __init__(self, description: str, total: int, *, enabled: bool = True) -> None:
        import sys

        self.enabled = enabled and sys.stdout.isatty()
        self.description, self.total = description, total

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.bar.update(self.task, advance=n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()
