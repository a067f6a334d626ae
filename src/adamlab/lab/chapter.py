"""The chapter: five runs on the airfoil data, the floor, one figure and one results file.

:func:`chapter` is what ``adamlab`` with no arguments runs, and what a notebook calls::

    scratch Adam          the chapter's Adam on raw tensors       lr 0.01, batch 10, 2 epochs
    torch.optim.Adam      nn.Linear + torch's Adam                lr 0.01, batch 10, 4 epochs
    adamlab.Adam          nn.Linear + adamlab's Adam              lr 0.01, batch 10, 4 epochs
    scratch Yogi          the chapter's Yogi on raw tensors       lr 0.01, batch 10, 2 epochs
    adamlab.Yogi          nn.Linear + adamlab's Yogi              lr 0.01, batch 10, 4 epochs

Every run uses the same seed, so all start from the same draw of the generator. The
floor is the least-squares optimum of the same ½-MSE, computed in float64 from the data.
Everything is validated (configs, data, output folder, checkpoints to resume) before
anything is trained or written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamlab.lab.data import LabData, LabInputError, least_squares_floor, load
from adamlab.lab.results import RESULTS_SCHEMA, atomic_write, check_output_dir, versions, write_json

CHAPTER_RUNS: tuple[tuple[str, str], ...] = (
    ("scratch", "adam"),
    ("concise", "torch.optim.Adam"),
    ("concise", "adamlab.Adam"),
    ("scratch", "yogi"),
    ("concise", "adamlab.Yogi"),
)
FAMILIES = {"adam": ("adam", "torch.optim.Adam", "adamlab.Adam"), "yogi": ("yogi", "adamlab.Yogi")}
RESULTS_FILE = "results.json"
PLOT_STEM = "loss"


def chapter_configs(
    *,
    optimizers: Sequence[str] | None = None,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    seed: int = 0,
    data: str | None = None,
):
    """The chapter's run configs; ``optimizers`` picks some: "adam", "yogi", or optimizer names.

    A name outside the chapter's five (e.g. ``torch.optim.AdamW``) adds a concise run with it.
    ``epochs=None`` keeps the book's 2 (scratch) and 4 (concise).
    """
    from adamlab.lab.train import DEFAULT_EPOCHS, RunConfig

    runs = list(CHAPTER_RUNS) if not optimizers else []
    for name in optimizers or ():
        family = FAMILIES.get(name.lower(), (name,))
        picked = [run for run in CHAPTER_RUNS if run[1] in family] or [("concise", name)]
        runs += [run for run in picked if run not in runs]
    return [
        RunConfig(trainer, optimizer, lr, batch_size, DEFAULT_EPOCHS[trainer] if epochs is None else epochs, seed, data)
        for trainer, optimizer in runs
    ]


@dataclass
class ChapterResult:
    """The chapter's runs, the floor, and where the data came from."""

    runs: list[Any]
    floor: float
    data: dict[str, Any]
    seed: int
    kind: str = "chapter"  # or "runs": runs other than the chapter's five (``adamlab train``)
    versions: dict[str, str] = field(default_factory=versions)
    files: dict[str, str] = field(default_factory=dict)

    def book_lines(self) -> list[str]:
        return [f"{run.name:<18} {run.book_line()}" for run in self.runs]

    def table(self) -> str:
        lines = [f"{'run':<18} {'final loss':>10} {'gap to floor':>12} {'sec/epoch':>9}"]
        for run in self.runs:
            gap = run.final_loss - self.floor
            lines.append(f"{run.name:<18} {run.final_loss:>10.4f} {gap:>12.4f} {run.sec_per_epoch:>9.4f}")
        lines.append(f"{'floor (lstsq)':<18} {self.floor:>10.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULTS_SCHEMA,
            "kind": self.kind,
            "seed": self.seed,
            "floor": self.floor,
            "data": self.data,
            "versions": self.versions,
            "runs": [run.to_dict() for run in self.runs],
            "files": self.files,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot(self):
        """All runs and the floor (dashed) in one matplotlib Figure."""
        from adamlab.lab.plots import plot_runs

        source = self.data["source"]
        where = "the airfoil data" if source.startswith("bundled:") else Path(source).name
        what = "Adam and Yogi" if self.kind == "chapter" else ", ".join(run.name for run in self.runs)
        return plot_runs(self.runs, floor=self.floor, title=f"{what} on {where} (seed {self.seed})")


def checkpoint_path(out: str | Path, config: Any) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{config.trainer}-{config.optimizer}").strip("-").lower()
    return Path(out) / "checkpoints" / f"{slug}.ckpt"


def chapter(
    *,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    optimizers: Sequence[str] | None = None,
    data: LabData | str | Path | None = None,
    out: str | Path | None = None,
    plot_format: str = "png",
    checkpoint_every: int = 0,
    resume: bool = False,
    configs: Sequence[Any] | None = None,
    on_start: Callable[[Any, int], Callable[[int, int], None] | None] | None = None,
) -> ChapterResult:
    """Run the chapter; with ``out``, write ``results.json`` and ``loss.png`` (or ``.svg``) there.

    ``configs`` (a list of :class:`~adamlab.lab.train.RunConfig`) replaces the chapter's
    five runs: ``adamlab train`` runs one config through here.

    ``checkpoint_every``/``resume`` keep one checkpoint per run in ``out/checkpoints``.
    ``on_start(config, index)`` may return a progress callback ``(step, total)`` for that run.
    """
    from adamlab.lab.plots import FORMATS
    from adamlab.lab.train import load_checkpoint, run

    # Validate everything before training or writing anything.
    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    kind = "chapter" if configs is None else "runs"
    if configs is None:
        configs = chapter_configs(
            optimizers=optimizers, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, data=source
        )
    for config in configs:
        config.validate(lab_data)
    if plot_format not in FORMATS:
        raise LabInputError(f"plot format must be one of {', '.join(FORMATS)}, got {plot_format!r}")
    if checkpoint_every < 0:
        raise LabInputError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if (checkpoint_every or resume) and out is None:
        raise LabInputError("--checkpoint-every and --resume need --out (the checkpoints live there)")
    if out is not None:
        check_output_dir(out)
    if resume:
        for config in configs:
            load_checkpoint(checkpoint_path(out, config), config, lab_data)

    floor = least_squares_floor(lab_data)
    results = []
    for index, config in enumerate(configs):
        progress = on_start(config, index) if on_start else None
        results.append(
            run(
                config,
                lab_data,
                checkpoint=checkpoint_path(out, config) if out is not None else None,
                checkpoint_every=checkpoint_every,
                resume=resume,
                progress=progress,
            )
        )
    result = ChapterResult(runs=results, floor=floor, data=lab_data.describe(), seed=configs[0].seed, kind=kind)
    if out is not None:
        write_outputs(result, Path(out), plot_format)
    return result


def write_outputs(result: ChapterResult, out: Path, plot_format: str = "png") -> None:
    """``results.json`` and the figure, each written atomically."""
    from adamlab.lab.plots import figure_bytes

    plot_file = out / f"{PLOT_STEM}.{plot_format}"
    image = figure_bytes(result.plot(), plot_format)  # rendered first: a failure here writes nothing
    result.files = {"results": str(out / RESULTS_FILE), "plot": str(plot_file)}
    write_json(out / RESULTS_FILE, result.to_dict())
    atomic_write(plot_file, image)
