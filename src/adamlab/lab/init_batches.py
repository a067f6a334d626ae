"""Yogi's larger initial batch — ``adamlab init-batches``.

Source: Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex
Optimization" (NeurIPS 2018), which initializes the second moment from a larger initial
batch; *Dive into Deep Learning* §11.10 mentions it and leaves it out. The API is
:func:`adamlab.optim.init_moments.initialize_moments`.

On the airfoil data, the chapter's Yogi (lr 0.01, ε 1e-3, batch 10) over the first epoch,
with the full-data loss recorded after *every* step, from five starts:

``s0=0``            the chapter: s starts at 0, bias correction on
``s0=1e-6``         the library convention (TF-Addons, optax), bias correction on
``s0=0,no-bc``      s from 0 without bias correction: what the initialization repairs
``init k``          s0 = mean of g² over k minibatches, no bias correction (the paper's pairing)
``init k +v0``      ... and v0 = mean of g as well

The k minibatches are drawn with their own generator (seeded) and are not part of the
epoch; no parameter moves while they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from adamlab.lab.cli import ProgressBar, execute, input_errors, plot_format_option, standard_options
from adamlab.lab.data import DATA_HELP, LabData, LabInputError, least_squares_floor, load
from adamlab.lab.family import MSE_OVER_HALF_MSE
from adamlab.lab.plots import figure, style

if TYPE_CHECKING:  # torch loads when an experiment runs, not with `adamlab --help`
    import torch

SOURCE = "Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018 (larger initial batch)"


@dataclass(frozen=True)
class Start:
    name: str
    s0: float = 0.0
    bias_correction: bool = True
    init_batches: int = 0
    first_moment: bool = False


def starts(k: int) -> list[Start]:
    return [
        Start("s0=0"),
        Start("s0=1e-6", s0=1e-6),
        Start("s0=0,no-bc", bias_correction=False),
        Start(f"init {k}", bias_correction=False, init_batches=k),
        Start(f"init {k} +v0", bias_correction=False, init_batches=k, first_moment=True),
    ]


def _factory(
    start: Start, X: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, curves: list[list[float]]
) -> Any:
    """``f(params, lr)`` for the lab's trainer: Yogi, initialized, recording the loss after each step.

    Each optimizer it makes appends its own curve to ``curves`` (the trainer also builds a
    throwaway model for an untimed burn-in step; the run's curve is the longest).
    """
    import torch

    import adamlab
    from adamlab.optim.init_moments import initialize_moments

    def loss_of(W: torch.Tensor, b: torch.Tensor, Xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(Xb @ W.T + b, yb)  # the concise trainer's loss

    def factory(params: Any, lr: float) -> torch.optim.Optimizer:
        W, b = list(params)  # nn.Linear: weight (1, d), bias (1,)
        opt = adamlab.Yogi(
            [W, b],
            lr=lr,
            eps=1e-3 * MSE_OVER_HALF_MSE,  # the chapter's ε on the ½-MSE (see adamlab.lab.family)
            initial_accumulator_value=start.s0,
            bias_correction=start.bias_correction,
        )
        if start.init_batches:
            g = torch.Generator().manual_seed(10_000 + seed)  # not the run's generator
            idx = [torch.randint(0, X.shape[0], (batch_size,), generator=g) for _ in range(start.init_batches)]
            batches = [lambda i=i: loss_of(W, b, X[i], y[i]) for i in idx]
            initialize_moments(opt, batches, first_moment=start.first_moment)

        curve: list[float] = []
        curves.append(curve)

        @torch.no_grad()
        def record(*_: Any) -> None:
            curve.append(0.5 * float(loss_of(W, b, X, y)))

        record()  # the loss before the first step
        opt.register_step_post_hook(record)
        return opt

    return factory


@dataclass
class InitBatchesResult:
    starts: list[Start]
    curves: list[list[float]]  # loss before step 1 and after every step of the first epoch(s)
    runs: list[Any]
    floor: float
    config: dict[str, Any]
    data: dict[str, Any]
    status: str = "complete"
    command: str = "init-batches"

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for s, c in zip(self.starts, self.curves):
            c = np.array(c)
            hit = np.nonzero(c - self.floor <= 0.01)[0]
            rows.append(
                {
                    "start": s.name,
                    "loss_after_10": float(c[min(10, len(c) - 1)]),
                    "loss_after_50": float(c[min(50, len(c) - 1)]),
                    "final_loss": float(c[-1]),
                    "steps_to_within_0.01": int(hit[0]) if hit.size else None,
                }
            )
        return rows

    def table(self) -> str:
        lines = [f"{'start':<14} {'after 10':>9} {'after 50':>9} {'end':>8} {'steps to floor+0.01':>20}"]
        for r in self.rows():
            hit = "never" if r["steps_to_within_0.01"] is None else str(r["steps_to_within_0.01"])
            lines.append(
                f"{r['start']:<14} {r['loss_after_10']:>9.4f} {r['loss_after_50']:>9.4f} {r['final_loss']:>8.4f}"
                f" {hit:>20}"
            )
        lines.append(f"floor {self.floor:.4f}; loss = full-data ½-MSE after each step")
        return "\n".join(lines)

    def conclusions(self) -> list[str]:
        """Did the larger initial batch help Yogi converge sooner than the chapter's s0 = 0? From the table."""
        rows = {r["start"]: r for r in self.rows()}
        steps = "steps_to_within_0.01"

        def when(row: dict[str, Any]) -> str:
            return "never" if row[steps] is None else f"{row[steps]} steps"

        out = []
        for s in self.starts:
            # compare with the start that differs only in the initialization: the same
            # bias-correction setting, s from 0 (init k runs without correction: s is real data)
            base_name = "s0=0" if s.bias_correction else "s0=0,no-bc"
            base = rows.get(base_name)
            if not s.init_batches or s.name not in rows or base is None:
                continue
            row = rows[s.name]
            a, b = row[steps], base[steps]
            if a is None and b is None:
                verdict = "neither comes within 0.01 of the floor"
            elif b is None or (a is not None and a < b):
                verdict = "it helped"
            elif a is None or a > b:
                verdict = "it hurt"
            else:
                verdict = "no difference"
            out.append(
                f"{s.name} (s from {s.init_batches} minibatches): within 0.01 of the floor after {when(row)}, "
                f"vs {when(base)} from s0 = 0 ({base_name}, the same bias correction): {verdict} on this data."
            )
        base = rows.get("s0=0")
        nobc = rows.get("s0=0,no-bc")
        if nobc is not None and base is not None:
            out.append(
                f"Without bias correction and without the initialization, Yogi needs {when(nobc)} "
                f"(loss after 10 steps {nobc['loss_after_10']:.4f} vs {base['loss_after_10']:.4f} with correction)."
            )
        return out

    def results(self) -> dict[str, Any]:
        runs = [
            {"start": s.__dict__, "loss_per_step": c, "implementation": r.implementation}
            for s, c, r in zip(self.starts, self.curves, self.runs)
        ]
        return {"floor": self.floor, "data": self.data, "table": self.rows(), "runs": runs}

    def plot(self) -> Any:
        with style():
            return self._plot()

    def _plot(self) -> Any:
        fig, axes = figure(1, 2)
        for s, c in zip(self.starts, self.curves):
            axes[0, 0].plot(range(len(c)), c, label=s.name)
            axes[0, 1].plot(range(len(c)), np.maximum(np.array(c) - self.floor, 1e-6), label=s.name)
        axes[0, 0].axhline(self.floor, color="k", ls="--", lw=0.8)
        axes[0, 0].set(xlabel="step", ylabel="loss (½ MSE, full data)", title="Yogi: initial second moment")
        axes[0, 1].set(xlabel="step", ylabel="loss − floor", xscale="symlog", yscale="log", title="log scales")
        axes[0, 0].legend(fontsize="small")
        return fig


def init_batches(
    k: int = 10,
    *,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int = 1,
    seed: int = 0,
    data: LabData | str | None = None,
    progress: ProgressBar | None = None,
) -> InitBatchesResult:
    """Run the five starts (same seed: same init and data order)."""
    from adamlab.lab.loop import RunConfig, run_each, train

    if k < 1:
        raise LabInputError(f"--k must be >= 1, got {k}")
    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    config = RunConfig("concise", "adamlab.Yogi", lr, batch_size, epochs, seed, source)
    config.validate(lab_data)
    X, y = lab_data.tensors()
    chosen = starts(k)

    def one(start: Start) -> tuple[Any, list[float]]:
        made: list[list[float]] = []
        run = train(config, lab_data, factory=_factory(start, X, y, batch_size, seed, made))
        return run, max(made, key=len)

    done, status = run_each(chosen, one, advance=progress.advance if progress else None)
    cfg = {"k": k, "lr": lr, "batch_size": batch_size, "epochs": epochs, "seed": seed, "data": lab_data.source}
    cfg["optimizer"] = "adamlab.Yogi(eps=1e-3 on the ½-MSE, betas (0.9, 0.999))"
    runs, curves = [r for r, _ in done], [c for _, c in done]
    return InitBatchesResult(chosen[: len(done)], curves, runs, least_squares_floor(lab_data), cfg,
                             lab_data.describe(), status)  # fmt: skip


@click.command(
    "init-batches",
    help=f"""Yogi's larger initial batch ({SOURCE}; mentioned in D2L 11.10).

    The chapter's Yogi over the first epoch on airfoil from s0 = 0, s0 = 1e-6, s0 = 0
    without bias correction, and s (and v) initialized from k minibatches' gradients
    (adamlab.optim.init_moments.initialize_moments). Prints the loss after 10 and 50
    steps and whether the initialization helped; writes init-batches.json and
    init-batches.png (loss after every step). 11 s measured on 2 busy CPU cores.""",
)
@click.option("--k", "k", type=int, default=10, show_default=True, help="Initial minibatches.")
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option("--data", type=str, default=None, help=DATA_HELP)
@plot_format_option
@standard_options
def command(
    k: int,
    lr: float,
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
        from adamlab.lab.loop import RunConfig

        if k < 1:
            raise LabInputError(f"--k must be >= 1, got {k}")
        lab_data = load(data)
        RunConfig("concise", "adamlab.Yogi", lr, batch_size, epochs, seed).validate(lab_data)

        def work(_: Any) -> InitBatchesResult:
            with ProgressBar("init-batches", 5, enabled=not (quiet or as_json)) as bar:
                return init_batches(k, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, data=lab_data,
                                    progress=bar)  # fmt: skip

        execute(work, out=out, stem="init-batches", as_json=as_json, quiet=quiet, plot_format=plot_format)
