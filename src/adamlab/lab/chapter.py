"""The chapter: five runs on the airfoil data, in any of its three frameworks.

:func:`run_chapter` is what ``adamlab`` with no arguments runs, and what a notebook calls::

    scratch Adam          the chapter's Adam on raw tensors       lr 0.01, batch 10, 2 epochs
    torch.optim.Adam      nn.Linear + torch's Adam                lr 0.01, batch 10, 4 epochs
    adamlab.Adam          nn.Linear + adamlab's Adam              lr 0.01, batch 10, 4 epochs
    scratch Yogi          the chapter's Yogi on raw tensors       lr 0.01, batch 10, 2 epochs
    adamlab.Yogi          nn.Linear + adamlab's Yogi              lr 0.01, batch 10, 4 epochs

(``framework="tensorflow"``/``"mxnet"``: the same five with that framework's tensors and
built-in Adam; :mod:`adamlab.lab.frameworks`.) Every run uses the same seed. The floor is
the least-squares optimum of the same ½-MSE, computed in float64 from the data.

The order: validate everything (configs, data, checkpoints to resume), train each run
(:func:`adamlab.lab.loop.train`), and return a :class:`ChapterResult`; the ``adamlab``
command writes it with :func:`adamlab.lab.cli.execute`. Ctrl-C between or
during runs keeps the runs that finished (``status: "partial"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamlab.lab import frameworks
from adamlab.lab.data import LabData, LabInputError, least_squares_floor, load
from adamlab.lab.loop import BOOK_EPOCHS, RunConfig, RunResult, train

FAMILIES = {"adam": "adam", "yogi": "yogi"}


def chapter_configs(
    framework: str = "torch",
    *,
    optimizers: Sequence[str] | None = None,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    seed: int = 0,
    data: str | None = None,
) -> list[RunConfig]:
    """The chapter's runs in ``framework``; ``optimizers`` picks some: "adam", "yogi", or run names.

    With torch, a name outside the chapter's five (e.g. ``torch.optim.AdamW``) adds a
    concise run with it. ``epochs=None`` keeps the book's 2 (scratch) and 4 (concise).
    """
    frameworks.check_framework(framework)
    book = frameworks.CHAPTER_RUNS[framework]
    runs = list(book) if not optimizers else []
    for name in optimizers or ():
        key = name.lower()
        picked = [r for r in book if r[1].lower() == key or (key in FAMILIES and _family(r[1]) == key)]
        if not picked:
            if framework != "torch":
                known = ", ".join(["adam", "yogi", *(r[1] for r in book)])
                raise LabInputError(f"no run of the {framework} chapter matches {name!r} (known: {known})")
            picked = [("concise", name)]
        runs += [r for r in picked if r not in runs]
    return [
        RunConfig(
            trainer, name, lr, batch_size, BOOK_EPOCHS[trainer] if epochs is None else epochs, seed, data, framework
        )
        for trainer, name in runs
    ]


def _family(name: str) -> str:
    return "yogi" if "yogi" in name.lower() else "adam"


@dataclass
class ChapterResult:
    """The chapter's runs (or ``adamlab train``'s one run), the floor, and the data's provenance."""

    runs: list[RunResult]
    floor: float
    data: dict[str, Any]
    config: dict[str, Any]
    command: str = "chapter"  # or "train"
    status: str = "complete"  # "partial": interrupted, ``runs`` are those that finished
    planned: list[str] = field(default_factory=list)

    def book_lines(self) -> list[str]:
        return [f"{run.name:<18} {run.book_line()}" for run in self.runs]

    def table(self) -> str:
        lines = [f"{'run':<18} {'final loss':>10} {'gap to floor':>12} {'sec/epoch':>9}"]
        for run in self.runs:
            gap = run.final_loss - self.floor
            lines.append(f"{run.name:<18} {run.final_loss:>10.4f} {gap:>12.4f} {run.sec_per_epoch:>9.4f}")
        lines.append(f"{'floor (lstsq)':<18} {self.floor:>10.4f}")
        return "\n".join(lines)

    def conclusions(self) -> list[str]:
        """What the numbers say, computed from them (gaps to the floor, implementations that agree)."""
        out = []
        if self.status == "partial":
            out.append(f"Interrupted: {len(self.runs)} of {len(self.planned)} runs finished; only those are reported.")
        diverged = [r.name for r in self.runs if r.status == "diverged"]
        if diverged:
            out.append(f"Diverged (a loss that is not finite): {', '.join(diverged)}.")
        ok = [r for r in self.runs if r.status == "ok"]
        if ok:
            gaps = {r.name: r.final_loss - self.floor for r in ok}
            worst = max(gaps, key=gaps.get)
            out.append(
                f"{len(ok)} run(s) end {min(gaps.values()):.4f} to {gaps[worst]:.4f} above the least-squares "
                f"floor {self.floor:.4f} (furthest: {worst})."
            )
        by_name = {r.name: r for r in ok}
        for a, b in (("torch.optim.Adam", "adamlab.Adam"), ("keras.optimizers.Adam", "adamlab.keras.Adam"),
                     ("gluon 'adam'", "adamlab.gluon.Adam")):  # fmt: skip
            if a in by_name and b in by_name:
                ra, rb = by_name[a], by_name[b]
                same = ra.parameters == rb.parameters
                diff = abs(ra.final_loss - rb.final_loss)
                if same:
                    out.append(f"{b} reproduces {a} on this data: bitwise-identical parameters.")
                elif diff <= 1e-6:
                    out.append(f"{b} reproduces {a} on this data to rounding: final losses {diff:.2e} apart.")
                else:  # Keras's and MXNet's Adam put an ε-hat next to the raw √s; adamlab's ε is after √ŝ
                    out.append(
                        f"{b} differs from {a}: final losses {diff:.2e} apart "
                        "(their ε conventions differ; see docs/compatibility.md)."
                    )
        scratch = {r.config.optimizer: r for r in ok if r.config.trainer == "scratch"}
        if "adam" in scratch and "yogi" in scratch:
            d = scratch["yogi"].final_loss - scratch["adam"].final_loss
            word = "below" if d < 0 else "above"
            out.append(
                f"From scratch, Yogi ends {abs(d):.4f} {word} Adam after {scratch['adam'].config.epochs} epoch(s) "
                "at the same lr and seed."
            )
        return out

    def results(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "data": self.data,
            "planned_runs": self.planned,
            "runs": [run.to_dict() for run in self.runs],
        }

    def plot(self) -> Any:
        """The book's figure: loss vs epoch, one panel per run, the floor dashed."""
        from adamlab.lab.plots import plot_curves

        source = self.data["source"]
        where = "the airfoil data" if source.startswith("bundled:") else Path(source).name
        framework = self.config.get("framework", "torch")
        return plot_curves(self.runs, floor=self.floor, title=f"{framework}, {where}, seed {self.config['seed']}")


def check_runs(configs: Sequence[RunConfig], data: LabData) -> None:
    """Everything about ``configs`` that can fail, checked before any run: each config, each
    framework's presence, and (torch) that each concise optimizer builds and takes a step."""
    for config in configs:
        config.validate(data)
    for name in {c.framework for c in configs}:
        frameworks.module(name)
    for config in configs:
        if config.framework == "torch" and config.trainer == "concise":
            frameworks.module("torch").Session(config, data)  # e.g. LBFGS: its step() needs a closure


def run_chapter(
    framework: str = "torch",
    *,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    optimizers: Sequence[str] | None = None,
    data: LabData | str | Path | None = None,
    configs: Sequence[RunConfig] | None = None,
    checkpoints: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    on_start: Callable[[RunConfig, int], Callable[[int, int], None] | None] | None = None,
    command: str = "chapter",
) -> ChapterResult:
    """Run the chapter (or ``configs``, e.g. ``adamlab train``'s one run) and return the result.

    ``checkpoints`` (a folder) with ``checkpoint_every``/``resume`` keeps one checkpoint per
    run there (torch). ``on_start(config, index)`` may return a progress callback
    ``(step, total)`` for that run. Everything is validated before anything is trained.
    """
    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    if configs is None:
        configs = chapter_configs(
            framework, optimizers=optimizers, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, data=source
        )
    configs = list(configs)
    check_runs(configs, lab_data)
    saving = checkpoint_every or resume
    if saving and checkpoints is None:
        raise LabInputError("--checkpoint-every and --resume need a checkpoint folder (--out)")
    if saving:
        from adamlab.lab.resume import Checkpointing, checkpoint_path  # torch: imported only when used
    hooks = [
        Checkpointing(checkpoint_path(checkpoints, c), c, lab_data, every=checkpoint_every, resume=resume)
        if saving
        else None
        for c in configs
    ]
    for hook in hooks:
        if hook is not None:
            hook.load()  # a bad checkpoint is refused before any run

    first = configs[0]
    config = {
        "framework": first.framework,
        "runs": [c.name for c in configs],
        "lr": first.lr,
        "batch_size": first.batch_size,
        "epochs": {c.name: c.epochs for c in configs},
        "seed": first.seed,
        "data": lab_data.source,
        "checkpoint_every": checkpoint_every,
        "resume": resume,
    }
    result = ChapterResult([], least_squares_floor(lab_data), lab_data.describe(), config, command)
    result.planned = [c.name for c in configs]
    try:
        for index, (run_config, hook) in enumerate(zip(configs, hooks)):
            progress = on_start(run_config, index) if on_start else None
            result.runs.append(train(run_config, lab_data, on_progress=progress, checkpoint=hook))
    except KeyboardInterrupt:
        if not result.runs:
            raise
        result.status = "partial"
    return result
