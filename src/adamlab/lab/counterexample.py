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

Optimizers, each in adamlab's convention (:data:`adamlab.lab.online1d.CONVENTIONS`):
Adam (ε = 1e-8, bias correction), AMSGrad (PyTorch's form), Yogi (ε = 1e-3, s0 = 1e-6,
bias correction) and Yogi as the chapter and the Yogi paper write it (s0 = 0, no bias
correction). The 10^6-step loops run in a small compiled kernel that repeats
:func:`adamlab.reference.step` operation for operation (see :mod:`adamlab.lab.online1d`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import click
import numpy as np

from adamlab.lab import limits, online1d
from adamlab.lab.cli import execute, input_errors, plot_format_option, standard_options
from adamlab.lab.data import LabInputError
from adamlab.lab.plots import color, figure, plain_log_ticks, style

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
    status: str = "complete"
    command: str = "counterexample"

    def results(self) -> dict[str, Any]:
        """Per problem: the problem, and per optimizer the final x and average regret (medians
        over seeds), and every run with its curves."""
        return {
            "implementation": self.backend,
            "seconds": self.seconds,
            "problems": {
                p.problem.name: {
                    "description": p.problem.description,
                    "optimum": p.problem.optimum,
                    "problem": asdict(p.problem),
                    "optimizers": p.per_optimizer(),
                    "runs": [r.summary() | {"t": r.t, "x": r.x, "regret_over_t": r.regret_over_t} for r in p.runs],
                }
                for p in self.problems
            },
        }

    def conclusions(self) -> list[str]:
        """Per problem: which optimizers end near the optimum, at one and the same lr schedule."""
        out = []
        for p in self.problems:
            prob = p.problem
            rows = p.per_optimizer()
            near = [r["optimizer"] for r in rows if abs(r["mean_x_last_tenth"] - prob.optimum) < 0.1]
            far = [
                f"{r['optimizer']} (mean x {r['mean_x_last_tenth']:+.2f})" for r in rows if r["optimizer"] not in near
            ]
            names = ", ".join(r["optimizer"] for r in rows)
            what = f"{len(p.runs) // max(len(rows), 1)} seeds, medians" if prob.stochastic else "one run each"
            out.append(
                f"{prob.name}: {names} all ran at the same learning-rate schedule {prob.alpha:g}/sqrt(t) with the "
                f"same betas ({prob.beta1:g}, {prob.beta2:.3g}) for {prob.steps:,} steps ({what}), so only the update "
                f"rule differs. Near the optimum x = {prob.optimum:+g} over the last tenth: "
                f"{', '.join(near) or 'none'}; away from it: {', '.join(far) or 'none'}. {_what_it_shows(near)}"
            )
        return out

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
        """One row per problem: x_t and R_t/t against t (log axis); one colour per optimizer.
        With several seeds, the median line and the min-max band (not one line per seed)."""
        with style():
            fig, axes = figure(len(self.problems), 2, height=2.8)
            for row, p in zip(axes, self.problems):
                for i, name in enumerate(dict.fromkeys(r.optimizer for r in p.runs)):
                    mine = [r for r in p.runs if r.optimizer == name]
                    t = np.array(mine[0].t)
                    for ax, key in ((row[0], "x"), (row[1], "regret_over_t")):
                        values = np.array([getattr(r, key) for r in mine])
                        ax.plot(t, np.median(values, axis=0), color=color(name, i), label=name)
                        if len(mine) > 1:
                            ax.fill_between(t, values.min(axis=0), values.max(axis=0), color=color(name, i), alpha=0.2,
                                            lw=0)  # fmt: skip
                row[0].axhline(p.problem.optimum, color="k", ls="--", lw=0.8)
                row[0].set(xscale="log", xlabel="t", ylabel="$x_t$", title=f"{p.problem.name}: iterate")
                row[1].set(xscale="log", yscale="log", xlabel="t", ylabel="$R_t/t$", title=f"{p.problem.name}: regret")
                plain_log_ticks(row[1])
                row[0].legend()
        return fig


def _what_it_shows(near: list[str]) -> str:
    """What one shared schedule lets the outcome say (not Adam at a larger rate than the others)."""
    if "adam" not in near and any(n != "adam" for n in near):
        return (
            f"With the step size equal for all, Adam's failure comes from its second-moment update, which "
            f"{', '.join(n for n in near if n != 'adam')} change{'s' if len(near) == 1 else ''}."
        )
    if not near:
        return "No update rule reaches the optimum within this horizon at this schedule."
    return "Adam reaches the optimum here too."


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


def check_seeds(seeds: int, chosen: list[Problem]) -> None:
    """``--seeds`` at least 1, and the runs' records within memory (checked before range(seeds) is built)."""
    if seeds < 1:
        raise LabInputError(f"--seeds must be at least 1, got {seeds}")
    limits.check_runs(seeds * len(online1d.CONVENTIONS) * len(chosen), CURVE_POINTS, "--seeds x optimizers x problems")


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
    check_seeds(seeds, chosen)
    resolved = online1d.resolve_backend(backend)
    start = time.perf_counter()
    results = [run_problem(p, seeds=tuple(range(seed, seed + seeds)), backend=resolved) for p in chosen]
    theorem = next((p for p in chosen if p.name == "theorem1"), theorem1())
    config = {
        "problems": list(problems),
        "steps": {p.name: p.steps for p in chosen},
        "C": theorem.big,
        "seed": seed,
        "seeds": seeds,
        "backend": resolved,
        "conventions": [c.to_dict() for c in online1d.CONVENTIONS],
    }
    return CounterexampleResult(results, config, resolved, time.perf_counter() - start)


@click.command(
    "counterexample",
    help=f"""Exercise 4: Adam's non-convergence, and AMSGrad and Yogi ({SOURCE}).

    Runs Theorem 1's online problem (C = 3, beta1 = 0, beta2 = 1/(1+C^2), lr 0.5/sqrt(t),
    10^6 steps), the same construction with the default betas ("rare"), and the
    stochastic version, for Adam, AMSGrad, Yogi and Yogi with s0 = 0 and no bias
    correction. Prints a table, writes counterexample.json (with the curves) and
    counterexample.png (x_t and R_t/t on a log time axis) to --out. All optimizers run at
    the same learning-rate schedule. --seed is the first seed of the stochastic problem.
    7 s measured on 2 busy CPU cores with a C compiler.""",
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
@plot_format_option
@standard_options
def command(
    problem_names: tuple[str, ...],
    steps: int | None,
    C: float | None,
    seed: int,
    seeds: int,
    backend: str,
    out: str,
    plot_format: str,
    as_json: bool,
    quiet: bool,
) -> None:
    with input_errors():
        names = tuple(PROBLEMS) if "all" in problem_names else tuple(dict.fromkeys(problem_names))
        check_seeds(seeds, select_problems(names, steps=steps, C=C))  # validate everything before writing anything
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

        def work(_: Any) -> CounterexampleResult:
            return counterexample(names, steps=steps, C=C, seed=seed, seeds=seeds, backend=backend)

        execute(work, out=out, stem="counterexample", as_json=as_json, quiet=quiet, plot_format=plot_format)
