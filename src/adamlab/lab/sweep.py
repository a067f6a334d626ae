"""Exercise 1: the learning rate — ``adamlab sweep``.

Source: *Dive into Deep Learning* §11.10, exercise 1 ("Adjust the learning rate and
observe and analyze the experimental results"); the section's summary names larger
minibatches as a remedy for high-variance gradients, hence the second axis.

A log grid of learning rates (default 1e-4 … 1, 13 points) for Adam and Yogi, with SGD,
momentum, RMSProp and Adagrad for context (each in the book's convention, see
:mod:`adamlab.lab.family`), several seeds per point, on the airfoil data with
the lab's concise trainer. A second axis repeats Adam and Yogi at larger batch sizes.

A run *diverged* when its final loss is not finite or exceeds :data:`DIVERGED_LOSS`
(twice the loss of predicting 0 on the standardized target). Diverged runs are kept and
marked, never dropped. The table names each optimizer's *stable range* (every seed
converged at every lr in it: the widest contiguous block of the grid) and its *useful
range* (median final loss within :data:`NEAR_FLOOR` of the least-squares floor).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import click
import numpy as np

from adamlab.lab import limits, pool
from adamlab.lab.cli import ProgressBar, execute, fail, input_errors, plot_format_option, standard_options
from adamlab.lab.data import DATA_HELP, EXAMPLES_PER_EVAL, LabData, LabInputError, least_squares_floor, load
from adamlab.lab.family import member
from adamlab.lab.plots import color, figure, plain_log_ticks, style

SOURCE = "Dive into Deep Learning, section 11.10, exercise 1 (learning rate); the summary's larger minibatches"
DIVERGED_LOSS = 1.0  # ½-MSE; predicting 0 on the standardized target scores 0.5
NEAR_FLOOR = 0.01  # "useful": median final loss within this of the floor
RUNS_FROM = "--points x --seeds x optimizers (and batch sizes)"  # what makes the run count, for its bound
DEFAULT_OPTIMIZERS = ("adam", "yogi", "sgd", "momentum", "rmsprop", "adagrad")


@dataclass(frozen=True)
class SweepConfig:
    """The grid; configuration as data."""

    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    lr_min: float = 1e-4
    lr_max: float = 1.0
    points: int = 13
    seeds: int = 2
    seed: int = 0
    epochs: int = 1
    batch_size: int = 10
    batch_sizes: tuple[int, ...] = (50, 250)  # the second axis (Adam and Yogi), besides batch_size
    batch_optimizers: tuple[str, ...] = ("adam", "yogi")
    data: str | None = None

    @classmethod
    def full(cls, **overrides: Any) -> SweepConfig:
        """The long version: 25 points, 5 seeds, 2 epochs, batch sizes 2 … 1500."""
        base = dict(points=25, seeds=5, epochs=2, batch_sizes=(2, 50, 250, 1500))
        return cls(**(base | overrides))

    def lrs(self) -> list[float]:
        return [float(x) for x in np.geomspace(self.lr_min, self.lr_max, self.points)]

    def validate(self) -> SweepConfig:
        for name in (*self.optimizers, *self.batch_optimizers):
            member(name)
        if not (self.lr_min > 0 and self.lr_max >= self.lr_min and math.isfinite(self.lr_max)):
            raise LabInputError(f"need 0 < --lr-min <= --lr-max, got {self.lr_min} and {self.lr_max}")
        for name in ("points", "seeds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise LabInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if any(b < 1 for b in self.batch_sizes):
            raise LabInputError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if self.seed + self.seeds > 2**63:
            raise LabInputError(f"--seed {self.seed} + --seeds {self.seeds} passes the largest seed, 2**63 - 1")
        return self

    def run_count(self) -> int:
        """``len(self.tasks())``, computed without building the list (to bound it first)."""
        extra = [b for b in self.batch_sizes if b != self.batch_size]
        return self.seeds * self.points * (len(self.optimizers) + len(extra) * len(self.batch_optimizers))

    def tasks(self) -> list[tuple[str, float, int, int]]:
        """(optimizer, lr, batch size, seed) for every run, main axis first."""
        seeds = range(self.seed, self.seed + self.seeds)
        out = [(o, lr, self.batch_size, s) for o in self.optimizers for lr in self.lrs() for s in seeds]
        extra = [b for b in self.batch_sizes if b != self.batch_size]
        out += [(o, lr, b, s) for b in extra for o in self.batch_optimizers for lr in self.lrs() for s in seeds]
        return out

    def points_per_run(self, data_rows: int) -> int:
        """The most curve points one run records (one per 200 examples, and the last)."""
        return self.epochs * data_rows // EXAMPLES_PER_EVAL + 2

    def steps(self, data_rows: int) -> list[int]:
        """Optimizer steps of each task (same order): what a task costs, for an honest ETA."""
        return [self.epochs * math.ceil(data_rows / bs) for _, _, bs, _ in self.tasks()]


_DATA: dict[str | None, LabData] = {}


def _train(task: tuple[str, float, int, int], epochs: int, data: str | None) -> dict[str, Any]:
    """One run (in a worker process or in this one); a plain dict comes back."""
    from adamlab.lab.loop import RunConfig, train

    name, lr, batch_size, seed = task
    if data not in _DATA:
        _DATA[data] = load(data)
    result = train(RunConfig("concise", member(name).target, lr, batch_size, epochs, seed, data), _DATA[data])
    final = result.final_loss
    diverged = not math.isfinite(final) or final > DIVERGED_LOSS
    return {
        "optimizer": name,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "status": "diverged" if diverged else "ok",
        "final_loss": final,  # written as null when not finite (results.finite_or_none)
        "sec_per_epoch": result.sec_per_epoch,
        "epochs": result.epochs,
        "losses": result.losses,
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one thread per process: the processes are the parallelism


@dataclass
class SweepResult:
    sweep: SweepConfig
    runs: list[dict[str, Any]]
    floor: float
    data: dict[str, Any]
    jobs: int
    status: str = "complete"  # "partial": interrupted; ``runs`` are those that finished
    planned: int = 0
    command: str = "sweep"
    stopped_by: str = "interrupted"  # why a partial sweep stopped ("a worker process died")

    @property
    def config(self) -> dict[str, Any]:
        return asdict(self.sweep) | {"jobs": self.jobs, "data": self.data["source"], "lrs": self.sweep.lrs()}

    def points(self, optimizer: str, batch_size: int) -> list[dict[str, Any]]:
        """Per lr: median/min/max final loss over seeds, and how many seeds diverged."""
        rows = []
        for lr in self.sweep.lrs():
            mine = [r for r in self.runs if r["optimizer"] == optimizer and r["batch_size"] == batch_size]
            mine = [r for r in mine if r["lr"] == lr]
            if not mine:
                continue
            ok = np.array([r["final_loss"] for r in mine if r["status"] == "ok"], dtype=float)
            rows.append(
                {
                    "lr": lr,
                    "runs": len(mine),
                    "diverged": sum(r["status"] == "diverged" for r in mine),
                    "median": float(np.median(ok)) if ok.size else None,
                    "min": float(ok.min()) if ok.size else None,
                    "max": float(ok.max()) if ok.size else None,
                }
            )
        return rows

    def ranges(self, optimizer: str, batch_size: int) -> dict[str, Any]:
        pts = self.points(optimizer, batch_size)
        stable = _widest([p["diverged"] == 0 for p in pts])
        useful = _widest([p["diverged"] == 0 and p["median"] - self.floor <= NEAR_FLOOR for p in pts])

        def span(block: tuple[int, int] | None) -> list[float] | None:
            return None if block is None else [pts[block[0]]["lr"], pts[block[1]]["lr"]]

        # the best rate among the stable points only: a rate where a seed diverged is no recommendation
        stable_pts = (p for p in pts if p["diverged"] == 0 and p["median"] is not None)
        best = min(stable_pts, key=lambda p: p["median"], default=None)
        return {
            "stable": span(stable),
            "useful": span(useful),
            "best_lr": best and best["lr"],
            "best_loss": best and best["median"],
        }

    def axes(self) -> list[tuple[str, int]]:
        seen = dict.fromkeys((r["optimizer"], r["batch_size"]) for r in self.runs)
        return list(seen)

    def table(self) -> str:
        lines = [
            f"{'optimizer':<9} {'batch':>5}  {'stable lr range':<19} {'useful lr range':<19} {'best lr':>8} {'loss':>7}"
        ]
        for opt, bs in self.axes():
            r = self.ranges(opt, bs)

            def fmt(span: list[float] | None) -> str:
                return "none" if span is None else f"{span[0]:.2g} .. {span[1]:.2g}"

            best = "-" if r["best_lr"] is None else f"{r['best_lr']:>8.2g} {r['best_loss']:>7.4f}"
            lines.append(f"{opt:<9} {bs:>5}  {fmt(r['stable']):<19} {fmt(r['useful']):<19} {best}")
        lines.append(
            f"stable: no seed diverged (final loss finite and <= {DIVERGED_LOSS}); "
            f"useful: median final loss within {NEAR_FLOOR} of the floor {self.floor:.4f}"
        )
        return "\n".join(lines)

    def conclusions(self) -> list[str]:
        """Each optimizer's stable range and best rate, and what larger batches did; from the runs."""
        out = []
        if self.status == "partial":
            why = self.stopped_by[:1].upper() + self.stopped_by[1:]
            out.append(f"{why}: {len(self.runs)} of {self.planned} runs finished; the ranges use those only.")
        cfg = self.sweep
        for opt, bs in self.axes():
            r = self.ranges(opt, bs)
            if r["stable"] is None:
                out.append(f"{opt} (batch {bs}) diverged at every learning rate tried.")
                continue
            lo, hi = r["stable"]
            edge = " (the top of the grid: it may go higher)" if hi >= cfg.lr_max else ""
            out.append(
                f"{opt} (batch {bs}) is stable for lr {lo:.2g} to {hi:.2g}{edge}; its best lr is {r['best_lr']:.2g} "
                f"(median final loss {r['best_loss']:.4f}, {r['best_loss'] - self.floor:.4f} above the floor)."
            )
        return out

    def results(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "data": self.data,
            "diverged_loss": DIVERGED_LOSS,
            "planned_runs": self.planned,
            "ranges": [{"optimizer": o, "batch_size": b} | self.ranges(o, b) for o, b in self.axes()],
            "runs": self.runs,
        }

    def plot(self) -> Any:
        with style():
            return self._plot()

    def _plot(self) -> Any:
        cfg = self.sweep
        fig, axes = figure(1, 3)
        ax = axes[0, 0]
        ceiling = DIVERGED_LOSS * 1.2
        for i, opt in enumerate(cfg.optimizers):
            color_ = color(opt, i)
            pts = self.points(opt, cfg.batch_size)
            lr = [p["lr"] for p in pts if p["median"] is not None]
            ax.plot(lr, [p["median"] for p in pts if p["median"] is not None], "-o", ms=3, color=color_, label=opt)
            ax.fill_between(
                lr, [p["min"] for p in pts if p["min"] is not None], [p["max"] for p in pts if p["max"] is not None],
                color=color_, alpha=0.2, lw=0,
            )  # fmt: skip
            bad = [p["lr"] for p in pts if p["diverged"]]
            ax.plot(bad, [ceiling] * len(bad), "x", color=color_, ms=7, mew=2)
        ax.axhline(self.floor, color="k", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final loss (median, min-max)")
        plain_log_ticks(ax)
        ax.set_title(f"batch {cfg.batch_size}, {cfg.epochs} epoch(s); x = diverged")
        ax.legend()

        ax = axes[0, 1]  # curves at a few learning rates
        lrs = cfg.lrs()
        picks = sorted({min(lrs, key=lambda x: abs(math.log(x / want))) for want in (1e-3, 1e-2, 1e-1)})
        styles = dict(zip(picks, ["-", "--", ":"]))
        for i, opt in enumerate(cfg.optimizers[:2]):
            for lr in picks:
                run = next(
                    (
                        r
                        for r in self.runs
                        if r["optimizer"] == opt and r["lr"] == lr and r["batch_size"] == cfg.batch_size
                    ),
                    None,
                )
                if run is None:  # a partial sweep (Ctrl-C) may not have reached this lr
                    continue
                y = [np.nan if v is None else min(v, ceiling) for v in run["losses"]]
                ax.plot(run["epochs"], y, styles[lr], color=color(opt, i), label=f"{opt} lr {lr:.2g}")
        ax.axhline(self.floor, color="k", ls="--", lw=0.8)
        ax.set(yscale="log", xlabel="epoch", ylabel="loss", title="curves at a few learning rates")
        plain_log_ticks(ax)
        ax.legend()

        ax = axes[0, 2]  # the batch-size axis
        for i, opt in enumerate(cfg.batch_optimizers):
            for j, bs in enumerate(b for o, b in self.axes() if o == opt):
                pts = [p for p in self.points(opt, bs) if p["median"] is not None]
                ax.plot([p["lr"] for p in pts], [p["median"] for p in pts], ["-", "--", ":", "-."][j % 4],
                        color=color(opt, i), marker=".", label=f"{opt} batch {bs}")  # fmt: skip
        ax.set_title("batch size")
        if not any(len(line.get_xdata()) for line in ax.get_lines()):  # nothing converged on this axis
            ax.text(0.5, 0.5, "no converged run", ha="center", va="center", transform=ax.transAxes)
            return fig
        ax.axhline(self.floor, color="k", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final loss (median)")
        plain_log_ticks(ax)
        ax.legend()
        return fig


def _widest(flags: list[bool]) -> tuple[int, int] | None:
    best, start = None, None
    for i, ok in enumerate([*flags, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            if best is None or i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def sweep(
    config: SweepConfig = SweepConfig(), *, jobs: int | None = None, progress: ProgressBar | None = None
) -> SweepResult:
    """Run the grid (in ``jobs`` processes; 1 runs in this one). Ctrl-C keeps the runs that
    finished (``status="partial"``); ``progress`` advances by each run's optimizer steps."""
    config = (config or SweepConfig()).validate()
    data = load(config.data)
    check_batch_sizes(config, data.n)
    floor = least_squares_floor(data)
    jobs = limits.check_jobs(default_jobs() if jobs is None else jobs)
    limits.check_runs(config.run_count(), config.points_per_run(data.n), RUNS_FROM)  # before tasks() is built
    tasks = config.tasks()
    steps = config.steps(data.n)
    _DATA[config.data] = data
    runs: list[dict[str, Any]] = []

    def on_result(index: int, run: dict[str, Any]) -> None:
        runs.append(run)
        if progress is not None:
            progress.advance(steps[index])

    status, stopped_by = "complete", "interrupted"
    try:
        _run_tasks(tasks, config, jobs, on_result)
    except KeyboardInterrupt:
        if not runs:
            raise
        status = "partial"
    except BrokenProcessPool:  # a worker was killed (OOM killer, kill -9): keep what finished
        if not runs:
            raise
        status, stopped_by = "partial", "a worker process died (killed, or out of memory)"
    return SweepResult(config, runs, floor, data.describe(), jobs, status, len(tasks), stopped_by=stopped_by)


def check_batch_sizes(config: SweepConfig, rows: int) -> None:
    """Every batch size of the grid fits in the data (before any output or training)."""
    largest = max((config.batch_size, *config.batch_sizes))
    if largest > rows:
        raise LabInputError(f"the data has {rows} rows, fewer than one batch of {largest} (--batch-size/--batch-sizes)")


def _run_tasks(
    tasks: list[tuple[str, float, int, int]],
    config: SweepConfig,
    jobs: int,
    on_result: Callable[[int, dict[str, Any]], None],
) -> None:
    """Train every task, in this process or ``jobs`` worker processes (:func:`adamlab.lab.pool.ordered_map`:
    on Ctrl-C the workers are stopped at once); ``on_result(i, run)`` as each ends (in order)."""
    if jobs == 1 or len(tasks) < 8:
        for index, task in enumerate(tasks):
            on_result(index, _train(task, config.epochs, config.data))
        return
    chunk = max(1, len(tasks) // (jobs * 8))
    train = partial(_train, epochs=config.epochs, data=config.data)
    results = pool.ordered_map(train, tasks, jobs=jobs, initializer=_init_worker, chunksize=chunk)
    for index, result in enumerate(results):
        on_result(index, result)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"50,250"`` -> (50, 250); an empty list or an empty item (``","``, ``"50,,250"``) is refused."""
    items = [item.strip() for item in text.split(",")]
    try:
        if not all(items):
            raise ValueError
        return tuple(int(item) for item in items)
    except ValueError:
        raise LabInputError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None


@click.command(
    "sweep",
    help=f"""Exercise 1: a learning-rate sweep ({SOURCE}).

    A log grid of learning rates for adam and yogi (with sgd, momentum, rmsprop and adagrad
    in the book's conventions, for context), several seeds per point, and a batch-size axis
    for adam and yogi. Prints each optimizer's stable and useful lr range; writes sweep.json
    and sweep.png (final loss vs lr with the spread across seeds and diverged runs marked,
    curves at a few lrs, the batch-size axis). How long: the default (13 points, 2 seeds,
    1 epoch, batch sizes 10, 50, 250: 25,272 optimizer steps) took 48 s on 2 busy CPU
    cores; --full (25 points, 5 seeds, 2 epochs, batch sizes 2 to 1500: 618,500 steps,
    most of them at batch size 2) is 24x that: about 20 minutes there (estimated from the
    step count). The progress bar counts optimizer steps, so its ETA is honest; Ctrl-C
    writes the runs that finished (status: partial).""",
)
@click.option(
    "--optimizer", "optimizers", multiple=True, help=f"Repeatable [default: {', '.join(DEFAULT_OPTIMIZERS)}]."
)
@click.option("--lr-min", type=float, default=None, help="[default: 1e-4]")
@click.option("--lr-max", type=float, default=None, help="[default: 1]")
@click.option("--points", type=int, default=None, help="Grid points [default: 13; --full 25].")
@click.option("--seeds", type=int, default=None, help="Seeds per point [default: 2; --full 5].")
@click.option("--epochs", type=int, default=None, help="[default: 1; --full 2]")
@click.option("--batch-size", type=int, default=None, help="Main axis batch size [default: 10].")
@click.option("--batch-sizes", type=str, default=None, help="Second axis, comma-separated [default: 50,250].")
@click.option("--full", is_flag=True, help="The long version.")
@click.option("--jobs", type=int, default=None, help="Worker processes, at most the CPUs [default: min(2, CPUs)].")
@click.option("--data", type=str, default=None, help=DATA_HELP)
@plot_format_option
@standard_options
def command(
    optimizers: tuple[str, ...],
    lr_min: float | None,
    lr_max: float | None,
    points: int | None,
    seeds: int | None,
    epochs: int | None,
    batch_size: int | None,
    batch_sizes: str | None,
    full: bool,
    jobs: int | None,
    data: str | None,
    plot_format: str,
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    with input_errors():
        overrides: dict[str, Any] = {"seed": seed, "data": data}
        for key, value in (("lr_min", lr_min), ("lr_max", lr_max), ("points", points), ("seeds", seeds)):
            if value is not None:
                overrides[key] = value
        for key, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value is not None:
                overrides[key] = value
        if optimizers:
            overrides["optimizers"] = tuple(optimizers)
            overrides["batch_optimizers"] = tuple(o for o in ("adam", "yogi") if o in optimizers) or optimizers[:1]
        if batch_sizes is not None:
            overrides["batch_sizes"] = parse_batch_sizes(batch_sizes)
        config = (SweepConfig.full(**overrides) if full else SweepConfig(**overrides)).validate()
        limits.check_jobs(default_jobs() if jobs is None else jobs)
        lab_data = load(config.data)
        check_batch_sizes(config, lab_data.n)  # before --out is touched
        limits.check_runs(config.run_count(), config.points_per_run(lab_data.n), RUNS_FROM)
        total = sum(config.steps(lab_data.n))

        def work(_: Any) -> SweepResult:
            with ProgressBar("sweep", total, enabled=not (quiet or as_json)) as bar:
                try:
                    return sweep(config, jobs=jobs, progress=bar)
                except BrokenProcessPool:  # nothing had finished (else the result is partial)
                    fail(
                        "a sweep worker process died (killed, or out of memory); nothing had finished, nothing written",
                        1,
                    )

        execute(work, out=out, stem="sweep", as_json=as_json, quiet=quiet, plot_format=plot_format)
