"""Exercise 4: Adam diverges where AMSGrad and Yogi converge — ``adamlab counterexample``.

Source: S. J. Reddi, S. Kale & S. Kumar, "On the Convergence of Adam and Beyond",
ICLR 2018, Theorem 1 (online), Section 5 (synthetic experiments), Theorem 3
(stochastic); asked for in *Dive into Deep Learning* §11.10, exercise 4.

Three problems, each a sequence of linear losses f_t(x) = g_t·x on the feasible set
[−1, 1] (x is projected back after every step), step size α/√t, x_1 = 1:

``theorem1``  g_t = C if t mod 3 = 1, else −1 (C = 3). Σ over a period is C − 2 > 0, so
              the optimum is x = −1. β1 = 0, β2 = 1/(1 + C²), α = 0.5. Adam's average
              regret tends to 2(C − 2)/3 (Theorem 1): it ends near x = +1.
``rare``      The same construction with the *default* β's (0.9, 0.999): g_t = 1010 once
              every k = 101 steps, else −10 (the paper's Section 5 synthetic problem,
              whose Σ per period is +10).
``stochastic`` g_t = 1010 with probability 0.01, else −10 (Section 5; E[g] = 0.2 > 0, so
              x = −1 minimizes the expected loss), default β's, several seeds. Regret here
              is that of the expected loss, Σ_t E[g]·(x_t + 1).

Optimizers, each in adamlab's convention (:data:`adamlab.lab.exercises.online1d.CONVENTIONS`):
Adam (ε = 1e-8, bias correction), AMSGrad (PyTorch's form), Yogi (ε = 1e-3, s0 = 1e-6,
bias correction) and Yogi as the chapter and the Yogi paper write it (s0 = 0, no bias
correction). The 10^6-step loops run in a small compiled kernel that repeats
:func:`adamlab.reference.step` operation for operation (see :mod:`.exercises.online1d`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import click
import numpy as np

from adamlab.lab import limits
from adamlab.lab.cli import standard_options
from adamlab.lab.exercises import online1d
from adamlab.lab.exercises.common import (
    LabInputError,
    check_output_dir,
    figure,
    input_errors,
    versions,
    write_results,
)

SOURCE = "Reddi, Kale & Kumar, On the Convergence of Adam and Beyond, ICLR 2018 (Thm 1, Sec. 5, Thm 3)"
MAX_STEPS = 10**8  # the horizon's cap: each run keeps a few float64 arrays of this length
MAX_C = 1e6  # the cap on Theorem 1's C (beta2 = 1/(1 + C^2) is 1e-12 there)
CURVE_POINTS = 200  # log-spaced points of each curve kept in the JSON and the figure


@dataclass(frozen=True)
class Problem:
    """A 1-D online (or stochastic) linear problem on [lo, hi]; configuration as data."""

    name: str
    big: float  # the rare large gradient (C)
    small: float  # the frequent gradient of the other sign
    period: int = 3  # online: big when t mod period == 1
    probability: float = 0.0  # stochastic: big with this probability (0 → online)
    beta1: float = 0.0
    beta2: float = 0.1
    alpha: float = 0.5
    steps: int = 1_000_000
    x0: float = 1.0
    lo: float = -1.0
    hi: float = 1.0
    description: str = ""

    @property
    def stochastic(self) -> bool:
        return self.probability > 0.0

    @property
    def mean_gradient(self) -> float:
        """E[g] (stochastic) or the average over one period (online)."""
        if self.stochastic:
            return self.probability * self.big + (1 - self.probability) * self.small
        return (self.big + (self.period - 1) * self.small) / self.period

    @property
    def optimum(self) -> float:
        return self.lo if self.mean_gradient > 0 else self.hi

    def gradients(self, seed: int) -> np.ndarray:
        """g_1..g_T (the losses are linear, so the gradients do not depend on x)."""
        if self.stochastic:
            rng = np.random.default_rng(seed)
            return np.where(rng.random(self.steps) < self.probability, self.big, self.small)
        t = np.arange(1, self.steps + 1)
        return np.where(t % self.period == 1 % self.period, self.big, self.small).astype(np.float64)

    def validate(self) -> Problem:
        if not 1 <= self.steps <= MAX_STEPS:
            raise LabInputError(f"--steps must lie in [1, {MAX_STEPS:.0e}], got {self.steps}")
        if self.period < 2:
            raise LabInputError(f"--period must be at least 2, got {self.period}")
        if not 0.0 <= self.probability < 1.0:
            raise LabInputError(f"--probability must lie in [0, 1), got {self.probability}")
        for name, value in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= value < 1.0:
                raise LabInputError(f"--{name} must lie in [0, 1), got {value}")
        if not self.alpha > 0.0:
            raise LabInputError(f"--alpha must be positive, got {self.alpha}")
        if not self.big > 0.0 or not self.small < 0.0:
            raise LabInputError(f"need C > 0 and the small gradient < 0, got C={self.big}, small={self.small}")
        return self


def theorem1(C: float = 3.0) -> Problem:
    """Reddi et al., Theorem 1: β1 = 0, β2 = 1/(1 + C²), α = 0.5, C·x once every 3 steps, else −x."""
    return Problem(
        "theorem1",
        big=C,
        small=-1.0,
        period=3,
        beta1=0.0,
        beta2=1.0 / (1.0 + C * C),
        description=f"f_t = {C:g}x if t mod 3 = 1 else -x; beta1 = 0, beta2 = 1/(1+C^2); Thm 1",
    )


PROBLEMS: dict[str, Problem] = {
    "theorem1": theorem1(),
    "rare": Problem(
        "rare",
        big=1010.0,
        small=-10.0,
        period=101,
        beta1=0.9,
        beta2=0.999,
        description="f_t = 1010x if t mod 101 = 1 else -10x; default betas (0.9, 0.999); Sec. 5",
    ),
    "stochastic": Problem(
        "stochastic",
        big=1010.0,
        small=-10.0,
        probability=0.01,
        beta1=0.9,
        beta2=0.999,
        description="f_t = 1010x with probability 0.01 else -10x; default betas (0.9, 0.999); Sec. 5 / Thm 3",
    ),
}


@dataclass
class Run:
    """One optimizer on one problem with one seed."""

    optimizer: str
    seed: int
    final_x: float
    average_regret: float  # R_T / T
    mean_x_last_tenth: float
    seconds: float
    t: list[int] = field(repr=False)
    x: list[float] = field(repr=False)
    regret_over_t: list[float] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "seed": self.seed,
            "final_x": self.final_x,
            "average_regret": self.average_regret,
            "mean_x_last_tenth": self.mean_x_last_tenth,
            "seconds": self.seconds,
        }


@dataclass
class ProblemResult:
    problem: Problem
    runs: list[Run]

    def per_optimizer(self) -> list[dict[str, Any]]:
        """For each optimizer: name, final x and average regret (medians over seeds, with the range)."""
        rows = []
        for name in dict.fromkeys(r.optimizer for r in self.runs):
            mine = [r for r in self.runs if r.optimizer == name]
            fx = np.array([r.final_x for r in mine])
            ar = np.array([r.average_regret for r in mine])
            mx = np.array([r.mean_x_last_tenth for r in mine])
            row = {
                "optimizer": name,
                "final_x": float(np.median(fx)),
                "average_regret": float(np.median(ar)),
                "mean_x_last_tenth": float(np.median(mx)),
            }
            if len(mine) > 1:
                row |= {
                    "seeds": len(mine),
                    "final_x_range": [float(fx.min()), float(fx.max())],
                    "average_regret_range": [float(ar.min()), float(ar.max())],
                }
            rows.append(row)
        return rows


@dataclass
class CounterexampleResult:
    problems: list[ProblemResult]
    config: dict[str, Any]
    backend: str
    seconds: float

    def summary(self) -> dict[str, Any]:
        """What ``--json`` prints: per problem and optimizer, final x and average regret."""
        return {
            "experiment": "counterexample",
            "source": SOURCE,
            "config": self.config,
            "implementation": self.backend,
            "versions": versions(),
            "seconds": self.seconds,
            "problems": {
                p.problem.name: {
                    "description": p.problem.description,
                    "optimum": p.problem.optimum,
                    "optimizers": p.per_optimizer(),
                }
                for p in self.problems
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, curves included (the results JSON)."""
        doc = self.summary()
        for p in self.problems:
            doc["problems"][p.problem.name] |= {
                "problem": asdict(p.problem),
                "runs": [r.summary() | {"t": r.t, "x": r.x, "regret_over_t": r.regret_over_t} for r in p.runs],
            }
        return doc

    def table(self) -> str:
        lines = []
        for p in self.problems:
            lines.append(f"{p.problem.name}: {p.problem.description} (optimum x = {p.problem.optimum:+g})")
            seeds = f" (median of {len(p.runs) // len(p.per_optimizer())} seeds)" if p.problem.stochastic else ""
            lines.append(f"  {'optimizer':<18} {'final x':>9} {'R_T/T':>9} {'mean x, last T/10':>18}{seeds}")
            for row in p.per_optimizer():
                lines.append(
                    f"  {row['optimizer']:<18} {row['final_x']:>+9.4f} {row['average_regret']:>9.4f}"
                    f" {row['mean_x_last_tenth']:>+18.4f}"
                )
        return "\n".join(lines)

    def plot(self) -> Any:
        """x_t and R_t/t against t (log axis), one row per problem."""
        fig, axes = figure(len(self.problems), 2)
        colors = dict(zip([c.name for c in online1d.CONVENTIONS], ["C3", "C2", "C0", "C9"]))
        for row, p in zip(axes, self.problems):
            seen: set[str] = set()
            for r in p.runs:
                label = None if r.optimizer in seen else r.optimizer
                seen.add(r.optimizer)
                kw = dict(color=colors.get(r.optimizer), lw=1.0 if len(p.runs) > 4 else 1.4, alpha=0.85, label=label)
                row[0].plot(r.t, r.x, **kw)
                row[1].plot(r.t, r.regret_over_t, **kw)
            row[0].axhline(p.problem.optimum, color="k", ls="--", lw=0.8)
            row[0].set(xscale="log", xlabel="t", ylabel="$x_t$", title=f"{p.problem.name}: iterate")
            row[1].set(xscale="log", yscale="log", xlabel="t", ylabel="$R_t/t$", title=f"{p.problem.name}: regret")
            row[0].legend(fontsize=8)
        return fig


def _log_points(steps: int, n: int = CURVE_POINTS) -> np.ndarray:
    return np.unique(np.geomspace(1, steps, n).round().astype(np.int64))


def run_problem(
    problem: Problem,
    *,
    seeds: tuple[int, ...] = (0,),
    conventions: tuple[online1d.Convention, ...] = online1d.CONVENTIONS,
    backend: str = "auto",
) -> ProblemResult:
    """Run every optimizer on ``problem`` (each seed for a stochastic one, one run otherwise)."""
    problem.validate()
    idx = _log_points(problem.steps)
    runs = []
    for seed in seeds if problem.stochastic else seeds[:1]:
        g = problem.gradients(seed)
        mean = problem.mean_gradient if problem.stochastic else None
        for conv in conventions:
            start = time.perf_counter()
            x = online1d.trajectory(
                conv,
                g,
                alpha=problem.alpha,
                beta1=problem.beta1,
                beta2=problem.beta2,
                x0=problem.x0,
                lo=problem.lo,
                hi=problem.hi,
                backend=backend,
            )
            seconds = time.perf_counter() - start
            regret = online1d.regret(x, g, lo=problem.lo, hi=problem.hi, mean_gradient=mean)
            T = problem.steps
            runs.append(
                Run(
                    optimizer=conv.name,
                    seed=seed,
                    final_x=float(x[-1]),
                    average_regret=float(regret[-1] / T),
                    mean_x_last_tenth=float(x[-max(1, T // 10) :].mean()),
                    seconds=seconds,
                    t=idx.tolist(),
                    x=x[idx - 1].tolist(),  # x_t, the point played at step t
                    regret_over_t=(regret[idx - 1] / idx).tolist(),
                )
            )
    return ProblemResult(problem, runs)


def select_problems(names: tuple[str, ...], *, steps: int | None = None, C: float | None = None) -> list[Problem]:
    """The named problems with the overrides applied, validated (raises :class:`LabInputError`)."""
    chosen = []
    for name in names:
        if name not in PROBLEMS:
            raise LabInputError(f"unknown problem {name!r} (expected one of {', '.join(PROBLEMS)})")
        problem = PROBLEMS[name]
        if name == "theorem1" and C is not None:
            if not 2.0 < C <= MAX_C:  # also refuses nan and inf
                raise LabInputError(f"--C must lie in (2, {MAX_C:.0e}] (the optimum is -1 only above 2), got {C}")
            problem = theorem1(C)
        if steps is not None:
            problem = replace(problem, steps=steps)
        chosen.append(problem.validate())
    return chosen


def counterexample(
    problems: tuple[str, ...] = ("theorem1", "rare", "stochastic"),
    *,
    steps: int | None = None,
    C: float | None = None,
    seed: int = 0,
    seeds: int = 5,
    backend: str = "auto",
) -> CounterexampleResult:
    """Run the counterexamples (the Python API behind ``adamlab counterexample``).

    ``steps`` overrides every problem's horizon (default 10^6); ``C`` the large gradient
    of ``theorem1`` (β2 = 1/(1 + C²) follows); a stochastic problem runs ``seeds`` seeds
    from ``seed``.
    """
    chosen = select_problems(problems, steps=steps, C=C)
    if seeds < 1:
        raise LabInputError(f"--seeds must be at least 1, got {seeds}")
    runs = seeds * len(online1d.CONVENTIONS) * len(chosen)
    limits.check_runs(runs, CURVE_POINTS, "--seeds x optimizers x problems")  # before range(seeds) is built
    resolved = online1d.resolve_backend(backend)
    start = time.perf_counter()
    results = [run_problem(p, seeds=tuple(range(seed, seed + seeds)), backend=resolved) for p in chosen]
    config = {"problems": list(problems), "steps": steps, "C": C, "seed": seed, "seeds": seeds}
    config["conventions"] = [c.to_dict() for c in online1d.CONVENTIONS]
    return CounterexampleResult(results, config, resolved, time.perf_counter() - start)


@click.command(
    "counterexample",
    help=f"""Exercise 4: Adam's non-convergence, and AMSGrad and Yogi ({SOURCE}).

    Runs Theorem 1's online problem (C = 3, beta1 = 0, beta2 = 1/(1+C^2), lr 0.5/sqrt(t),
    10^6 steps), the same construction with the default betas ("rare"), and the
    stochastic version, for Adam, AMSGrad, Yogi and Yogi with s0 = 0 and no bias
    correction. Prints a table, writes counterexample.json (with the curves) and
    counterexample.png (x_t and R_t/t on a log time axis) to --out. --json prints, for each
    problem and optimizer, the final x and the average regret R_T/T. --seed is the first
    seed of the stochastic problem.""",
)
@click.option(
    "--problem",
    "problem_names",
    multiple=True,
    type=click.Choice([*PROBLEMS, "all"]),
    default=("all",),
    show_default=True,
    help="Which problem(s); repeat the option for several.",
)
@click.option("--steps", type=int, default=None, help="Horizon T for every problem, at most 10^8 [default: 10^6].")
@click.option("--C", "C", type=float, default=None, help="Theorem 1's large gradient C, in (2, 10^6] [default: 3].")
@click.option("--seeds", type=int, default=5, show_default=True, help="Seeds of the stochastic problem.")
@click.option(
    "--backend",
    type=click.Choice(online1d.BACKENDS),
    default="auto",
    show_default=True,
    help="c: compiled kernel; reference: adamlab.reference.step per step (slow).",
)
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@standard_options
def command(
    problem_names: tuple[str, ...],
    steps: int | None,
    C: float | None,
    seed: int,
    seeds: int,
    backend: str,
    out: str,
    fmt: str,
    as_json: bool,
    quiet: bool,
) -> None:
    with input_errors("counterexample"):
        names = tuple(PROBLEMS) if "all" in problem_names else tuple(dict.fromkeys(problem_names))
        select_problems(names, steps=steps, C=C)  # validate everything before writing anything
        if seeds < 1:
            raise LabInputError(f"--seeds must be at least 1, got {seeds}")
        try:
            resolved = online1d.resolve_backend(backend)
        except RuntimeError as err:
            raise LabInputError(str(err)) from None
        if resolved == "reference" and backend == "auto" and not quiet:
            click.echo(
                "adamlab counterexample: warning: no C compiler, so the loops run in the float64 reference "
                "(same numbers, ~40 µs a step: minutes for 10^6 steps; --steps shortens them)",
                err=True,
            )
        out_dir = check_output_dir(out)
        result = counterexample(names, steps=steps, C=C, seed=seed, seeds=seeds, backend=backend)
    json_path, fig_path = write_results(out_dir, "counterexample", result.to_dict(), result.plot(), fmt)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=1))
    elif not quiet:
        click.echo(result.table())
        click.echo(f"{result.backend} backend, {result.seconds:.2f} s; wrote {json_path} and {fig_path}")
