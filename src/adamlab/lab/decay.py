"""Exercise 3: learning-rate decay — ``adamlab decay``.

Source: *Dive into Deep Learning* §11.10, exercise 3 ("Try to decay the learning rate
as convergence progresses"; cf. §11.11 on schedules). The chapter's Adam (lr 0.01, ε 1e-6,
batch 10) on the airfoil data, longer than the chapter's 2 epochs (default 10), with four
schedules, each a ``torch.optim.lr_scheduler`` stepped after every optimizer step (through
``Optimizer.register_step_post_hook``, so the lab's trainer runs unchanged):

``constant``   η
``inv-sqrt``   η / √(1 + t/n_e)   (1/√t with t counted in epochs: n_e steps per epoch)
``cosine``     η (1 + cos(π t/T)) / 2   (CosineAnnealingLR down to 0 over the run)
``step``       η, then η/10 after half the run and η/100 after three quarters (MultiStepLR)

It reports how close each gets to the floor (the least-squares optimum, ≈ 0.2417) and how
much the loss still jitters over the last epoch (standard deviation and range of the
full-data loss recorded every 200 examples).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from adamlab.lab.cli import standard_options
from adamlab.lab.data import DATA_HELP, LabData, least_squares_floor, load
from adamlab.lab.exercises.common import (
    LabInputError,
    Progress,
    check_output_dir,
    experiment_record,
    figure,
    input_errors,
    versions,
    write_results,
)
from adamlab.lab.exercises.family import FAMILY

if TYPE_CHECKING:  # torch loads when an experiment runs, not with `adamlab --help`
    import torch

SOURCE = "Dive into Deep Learning, section 11.10, exercise 3 (learning-rate decay)"
SCHEDULES = ("constant", "inv-sqrt", "cosine", "step")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, steps_per_epoch: int) -> Any:
    """The named schedule as a torch lr_scheduler, stepped once per optimizer step."""
    from torch.optim import lr_scheduler as S

    if name == "constant":
        return S.LambdaLR(optimizer, lambda t: 1.0)
    if name == "inv-sqrt":
        return S.LambdaLR(optimizer, lambda t: 1.0 / math.sqrt(1.0 + t / steps_per_epoch))
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
    if name == "step":
        return S.MultiStepLR(optimizer, milestones=[total_steps // 2, (3 * total_steps) // 4], gamma=0.1)
    raise LabInputError(f"unknown schedule {name!r} (expected one of {', '.join(SCHEDULES)})")


def scheduled(optimizer: str, schedule: str, *, total_steps: int, steps_per_epoch: int) -> Any:
    """A factory ``f(params, lr)`` for the lab's trainer: the family member, plus the schedule."""
    make = FAMILY[optimizer].make

    def factory(params: Any, lr: float) -> torch.optim.Optimizer:
        opt = make(params, lr=lr)
        sched = make_scheduler(schedule, opt, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
        opt.register_step_post_hook(lambda *_: sched.step())
        opt.lab_scheduler = sched  # keep it reachable (and inspectable)
        return opt

    return factory


@dataclass
class DecayResult:
    schedules: list[str]
    runs: list[Any]  # RunResult per schedule
    floor: float
    config: dict[str, Any]
    data: dict[str, Any]
    versions: dict[str, str] = field(default_factory=versions)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, run in zip(self.schedules, self.runs):
            epochs, losses = np.array(run.epochs), np.array(run.losses)
            last = losses[epochs > epochs[-1] - 1.0]
            rows.append(
                {
                    "schedule": name,
                    "final_loss": run.final_loss,
                    "gap_to_floor": run.final_loss - self.floor,
                    "last_epoch_mean_gap": float(last.mean() - self.floor),
                    "last_epoch_std": float(last.std()),
                    "last_epoch_range": float(last.max() - last.min()),
                    "sec_per_epoch": run.sec_per_epoch,
                }
            )
        return rows

    def table(self) -> str:
        lines = [f"{'schedule':<9} {'final loss':>10} {'gap':>8} {'last-epoch gap':>14} {'jitter sd':>9} {'range':>8}"]
        for r in self.rows():
            lines.append(
                f"{r['schedule']:<9} {r['final_loss']:>10.5f} {r['gap_to_floor']:>8.5f}"
                f" {r['last_epoch_mean_gap']:>14.5f} {r['last_epoch_std']:>9.5f} {r['last_epoch_range']:>8.5f}"
            )
        lines.append(f"floor {self.floor:.5f} (least squares); jitter: the loss every 200 examples over the last epoch")
        return "\n".join(lines)

    def plot(self) -> Any:
        fig, axes = figure(1, 2, width=5.6, height=3.8)
        for name, run in zip(self.schedules, self.runs):
            gap = np.maximum(np.array(run.losses) - self.floor, 1e-7)
            axes[0, 0].plot(run.epochs, run.losses, lw=1.1, label=name)
            axes[0, 1].plot(run.epochs, gap, lw=1.1, label=name)
        axes[0, 0].axhline(self.floor, color="k", ls="--", lw=0.8, label=f"floor {self.floor:.4f}")
        axes[0, 0].set(xlabel="epoch", ylabel="loss (½ MSE)", title=f"{self.config['optimizer']}: lr schedules")
        axes[0, 0].set_ylim(self.floor - 0.002, self.floor + 0.03)
        axes[0, 1].set(xlabel="epoch", ylabel="loss − floor", yscale="log", title="gap to the floor")
        axes[0, 0].legend(fontsize="small")
        return fig

    def to_dict(self) -> dict[str, Any]:
        runs = [run.to_dict() | {"schedule": s} for s, run in zip(self.schedules, self.runs)]
        return experiment_record("decay", SOURCE, self, runs)


def decay(
    schedules: tuple[str, ...] = SCHEDULES,
    *,
    optimizer: str = "adam",
    lr: float = 0.01,
    epochs: int = 10,
    batch_size: int = 10,
    seed: int = 0,
    data: LabData | str | None = None,
    progress: Progress | None = None,
) -> DecayResult:
    """Train the chapter's optimizer once per schedule (same seed: same init and data order)."""
    from adamlab.lab.train import RunConfig, run

    for s in schedules:
        if s not in SCHEDULES:
            raise LabInputError(f"unknown schedule {s!r} (expected one of {', '.join(SCHEDULES)})")
    if optimizer not in ("adam", "yogi"):
        raise LabInputError(f"--optimizer must be adam or yogi, got {optimizer!r}")
    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    target = "adamlab.Adam" if optimizer == "adam" else "adamlab.Yogi"  # the name the config records
    config = RunConfig("concise", target, lr, batch_size, epochs, seed, source)
    config.validate(lab_data)
    steps_per_epoch = math.ceil(lab_data.n / batch_size)
    total = steps_per_epoch * epochs
    runs = []
    for s in schedules:
        factory = scheduled(optimizer, s, total_steps=total, steps_per_epoch=steps_per_epoch)
        runs.append(run(config, lab_data, factory=factory))
        if progress is not None:
            progress.advance()
    cfg = asdict(config) | {"optimizer": optimizer, "family_member": FAMILY[optimizer].implementation}
    cfg["schedules"] = list(schedules)
    return DecayResult(list(schedules), runs, least_squares_floor(lab_data), cfg, lab_data.describe())


@click.command(
    "decay",
    help=f"""Exercise 3: learning-rate decay ({SOURCE}).

    The chapter's Adam (lr 0.01, batch 10) for 10 epochs with a constant lr, 1/sqrt(t)
    (t in epochs), cosine annealing and step decay (x0.1 at 1/2 and 3/4 of the run).
    Prints how close each gets to the least-squares floor and how much the loss jitters
    over the last epoch; writes decay.json and decay.png.""",
)
@click.option("--schedule", "schedules", multiple=True, type=click.Choice(SCHEDULES), help="Repeatable [default: all].")
@click.option("--optimizer", type=click.Choice(["adam", "yogi"]), default="adam", show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option("--data", type=str, default=None, help=DATA_HELP)
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@standard_options
def command(
    schedules: tuple[str, ...],
    optimizer: str,
    lr: float,
    epochs: int,
    batch_size: int,
    data: str | None,
    fmt: str,
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    with input_errors("decay"):
        from adamlab.lab.train import RunConfig

        lab_data = load(data)
        RunConfig("concise", "adamlab.Adam", lr, batch_size, epochs, seed).validate(lab_data)
        out_dir = check_output_dir(out)
        names = schedules or SCHEDULES
        with Progress("decay", len(names), enabled=not (quiet or as_json)) as bar:
            result = decay(
                names, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed,
                data=lab_data, progress=bar,
            )  # fmt: skip
    doc = result.to_dict()
    _, fig_path = write_results(out_dir, "decay", doc, result.plot(), fmt)
    if as_json:
        click.echo(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=1))
    elif not quiet:
        click.echo(result.table())
        click.echo(f"wrote {out_dir / 'decay.json'} and {fig_path}")
