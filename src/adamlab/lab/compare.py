"""The whole chapter-11 family on the airfoil data — ``adamlab compare``.

Source: *Dive into Deep Learning*, chapter 11 (§11.5 minibatch SGD through §11.10
Adam/Yogi), each optimizer with the hyperparameters its section uses, on the same data
and protocol (batch 10, 2 epochs as ``d2l.train_ch11``, loss recorded every 200
examples). The loss-vs-time figure follows §11.5, which plots loss against seconds on a
log axis. Conventions and implementations: :mod:`adamlab.lab.family`.

Each run goes through the lab's one training loop (:func:`adamlab.lab.loop.train`, torch, concise).
Seconds at a recorded point are the run's training time scaled by the fraction of steps
done (the trainer times the whole run; every step costs the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from adamlab.lab.cli import ProgressBar, execute, input_errors, plot_format_option, standard_options
from adamlab.lab.data import DATA_HELP, LabData, LabInputError, least_squares_floor, load
from adamlab.lab.family import FAMILY, member
from adamlab.lab.plots import color, figure, style

SOURCE = "Dive into Deep Learning, ch. 11 (sections 11.5-11.10), the book's hyperparameters"


@dataclass
class CompareResult:
    runs: list[Any]  # RunResult, in FAMILY order
    names: list[str]
    floor: float
    config: dict[str, Any]
    data: dict[str, Any]
    status: str = "complete"
    command: str = "compare"

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "optimizer": name,
                "book": FAMILY[name].book,
                "implementation": FAMILY[name].implementation,
                "final_loss": run.final_loss,
                "gap_to_floor": run.final_loss - self.floor,
                "sec_per_epoch": run.sec_per_epoch,
            }
            for name, run in zip(self.names, self.runs)
        ]

    def table(self) -> str:
        lines = [f"{'optimizer':<10} {'final loss':>10} {'gap to floor':>12} {'sec/epoch':>9}  book"]
        for r in self.rows():
            lines.append(
                f"{r['optimizer']:<10} {r['final_loss']:>10.4f} {r['gap_to_floor']:>12.4f}"
                f" {r['sec_per_epoch']:>9.4f}  {r['book']}"
            )
        lines.append(f"{'floor':<10} {self.floor:>10.4f}  (least squares, float64)")
        return "\n".join(lines)

    def seconds(self, run: Any) -> list[float]:
        """Training seconds at each recorded point (uniform cost per step)."""
        total_epochs = run.epochs[-1]
        return [run.train_seconds * e / total_epochs for e in run.epochs]

    def conclusions(self) -> list[str]:
        """The ranking by final loss and by time, from the table."""
        rows = [r for r in self.rows() if math.isfinite(r["final_loss"])]
        out = []
        bad = [r["optimizer"] for r in self.rows() if not math.isfinite(r["final_loss"])]
        if bad:
            out.append(f"Diverged: {', '.join(bad)}.")
        if rows:
            ranked = sorted(rows, key=lambda r: r["final_loss"])
            order = " < ".join(f"{r['optimizer']} ({r['gap_to_floor']:.4f})" for r in ranked)
            out.append(f"Gap to the floor after {self.config['epochs']} epoch(s), best first: {order}.")
            fast = min(rows, key=lambda r: r["sec_per_epoch"])
            slow = max(rows, key=lambda r: r["sec_per_epoch"])
            out.append(
                f"Per epoch, {fast['optimizer']} is cheapest ({fast['sec_per_epoch']:.4f} s) and {slow['optimizer']} "
                f"dearest ({slow['sec_per_epoch']:.4f} s)."
            )
        return out

    def results(self) -> dict[str, Any]:
        runs = [run.to_dict() | {"optimizer": n, "seconds": self.seconds(run)} for n, run in zip(self.names, self.runs)]
        return {"floor": self.floor, "data": self.data, "table": self.rows(), "runs": runs}

    def plot(self) -> Any:
        with style():
            return self._plot()

    def _plot(self) -> Any:
        fig, axes = figure(1, 2)
        for i, (name, run) in enumerate(zip(self.names, self.runs)):
            axes[0, 0].plot(run.epochs, run.losses, marker=".", color=color(name, i), label=name)
            axes[0, 1].plot(self.seconds(run), run.losses, marker=".", color=color(name, i), label=name)
        for ax in axes[0]:
            ax.axhline(self.floor, color="k", ls="--", lw=0.8, label=f"floor {self.floor:.4f}")
            ax.set_ylabel("loss (½ MSE, full data)")
        axes[0, 0].set(xlabel="epoch", title="the chapter-11 family on airfoil")
        axes[0, 1].set(xlabel="training time (s)", xscale="log", title="loss vs time (as in §11.5)")
        axes[0, 0].legend(fontsize="small")
        return fig


def compare(
    optimizers: tuple[str, ...] | None = None,
    *,
    epochs: int = 2,
    batch_size: int = 10,
    seed: int = 0,
    data: LabData | str | Path | None = None,
    progress: ProgressBar | None = None,
) -> CompareResult:
    """Train every member of the family (or ``optimizers``) with the book's hyperparameters."""
    from adamlab.lab.loop import RunConfig, run_each, train

    names = list(dict.fromkeys(optimizers or FAMILY))
    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    configs = [RunConfig("concise", member(n).target, member(n).lr, batch_size, epochs, seed, source) for n in names]
    for c in configs:
        c.validate(lab_data)
    floor = least_squares_floor(lab_data)
    runs, status = run_each(configs, lambda c: train(c, lab_data), advance=progress.advance if progress else None)
    cfg = {"optimizers": names, "epochs": epochs, "batch_size": batch_size, "seed": seed, "data": lab_data.source}
    return CompareResult(runs, names[: len(runs)], floor, cfg, lab_data.describe(), status)


@click.command(
    "compare",
    help=f"""The chapter-11 optimizers on the airfoil data ({SOURCE}).

    Minibatch SGD (lr 0.05), momentum (lr 0.01, beta 0.9), Adagrad (lr 0.1, eps 1e-6
    inside the root), RMSProp (lr 0.01, gamma 0.9, eps 1e-6 inside), Adadelta (rho 0.9,
    eps 1e-5), Adam (lr 0.01) and Yogi (lr 0.01, eps 1e-3), batch 10, 2 epochs. Prints
    a table (final loss, gap to the least-squares floor, sec/epoch); writes compare.json
    and compare.png (loss vs epoch, and vs seconds on a log axis). 13 s measured on 2 busy
    CPU cores.""",
)
@click.option("--optimizer", "optimizers", multiple=True, help=f"Only these (repeatable): {', '.join(FAMILY)}.")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option("--data", type=str, default=None, help=DATA_HELP)
@plot_format_option
@standard_options
def command(
    optimizers: tuple[str, ...],
    epochs: int,
    batch_size: int,
    data: str | None,
    plot_format: str,
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    with input_errors():
        for name in optimizers:
            member(name)
        if epochs < 1:
            raise LabInputError(f"--epochs must be >= 1, got {epochs}")
        if batch_size < 1:
            raise LabInputError(f"--batch-size must be >= 1, got {batch_size}")
        lab_data = load(data)
        names = optimizers or tuple(FAMILY)

        def work(_: Any) -> CompareResult:
            with ProgressBar("compare", len(names), enabled=not (quiet or as_json)) as bar:
                return compare(names, epochs=epochs, batch_size=batch_size, seed=seed, data=lab_data, progress=bar)

        execute(work, out=out, stem="compare", as_json=as_json, quiet=quiet, plot_format=plot_format)
