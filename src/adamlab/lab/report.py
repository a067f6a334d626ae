"""One self-contained HTML page with every experiment — ``adamlab report``.

Source: *Dive into Deep Learning* §11.10 ("Adam") and its exercises; the sections below
reproduce the chapter (:mod:`adamlab.lab.chapter`) and each exercise experiment
(:mod:`~adamlab.lab.sweep`, :mod:`~adamlab.lab.bias`, :mod:`~adamlab.lab.decay`,
:mod:`~adamlab.lab.counterexample`, :mod:`~adamlab.lab.init_batches`,
:mod:`~adamlab.lab.compare`). Each section shows its numbers as HTML tables, its
conclusions (computed from those numbers), its figure as inline SVG (text stays text; the
page needs no network and no other file), its source, and the command that regenerates it.

The page is rendered from ``templates/report.html.j2`` with Jinja2 (autoescaping on). A
small inline script counts the figures that rendered and writes the count to
``<body data-figures-loaded=...>``, so that a headless browser can check the page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from adamlab.lab.cli import ProgressBar, execute, input_errors, standard_options
from adamlab.lab.data import DATA_HELP, load

SOURCE = "Dive into Deep Learning, section 11.10 (Adam) and its exercises"
TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    text: list[bool]  # per column: left-aligned text (else a number, right-aligned)

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> Table:
        columns = list(rows[0]) if rows else []
        text = [not all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]
        return cls([c.replace("_", " ") for c in columns], [[_cell(r.get(c)) for c in columns] for r in rows], text)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "—"
    if isinstance(value, (list, tuple)):
        return " – ".join(_cell(v) for v in value)
    return str(value)


@dataclass
class Section:
    key: str
    title: str
    source: str
    command: str
    tables: list[Table]
    conclusions: list[str]
    figure: str  # inline SVG markup
    seconds: float
    lines: list[str] = field(default_factory=list)


def _tables(key: str, result: Any) -> list[Table]:
    """The section's numbers as tables (list-of-dict rows), per experiment."""
    if key == "chapter":
        rows = [
            {"run": r.name, "final_loss": r.final_loss, "gap_to_floor": r.final_loss - result.floor,
             "sec_per_epoch": r.sec_per_epoch}
            for r in result.runs
        ]  # fmt: skip
        return [Table.of(rows)]
    if key == "sweep":
        return [Table.of(result.results()["ranges"])]
    if key == "counterexample":
        return [Table.of([{"problem": p.problem.name} | row for row in p.per_optimizer()]) for p in result.problems]
    return [Table.of(result.rows())]


def _svg(fig: Any) -> str:
    from adamlab.lab.plots import figure_bytes

    text = figure_bytes(fig, "svg").decode()
    return text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: inline SVG


def _sections(quick: bool, seed: int, data: str | None) -> list[tuple[str, Callable[[], Section]]]:
    """(key, build) for every section; ``quick`` shrinks each experiment to seconds (for tests)."""
    data_flag = f" --data {data}" if data else ""

    def timed(
        key: str,
        title: str,
        source: str,
        command: str,
        make: Callable[[], Any],
    ) -> Section:
        start = time.perf_counter()
        result = make()
        lines = result.book_lines() if hasattr(result, "book_lines") else []
        return Section(key, title, source, command, _tables(key, result), list(result.conclusions()),
                       _svg(result.plot()), time.perf_counter() - start, lines)  # fmt: skip

    def chapter() -> Section:
        from adamlab.lab.chapter import run_chapter

        epochs = 1 if quick else None
        cmd = f"adamlab chapter --seed {seed}{data_flag}" + (" --epochs 1" if quick else "")
        return timed(
            "chapter", "The chapter: Adam and Yogi on airfoil", "D2L §11.10", cmd,
            lambda: run_chapter(seed=seed, data=data, epochs=epochs),
        )  # fmt: skip

    def sweep() -> Section:
        from adamlab.lab.sweep import SOURCE as src
        from adamlab.lab.sweep import SweepConfig, sweep

        if quick:
            cfg = SweepConfig(optimizers=("adam", "sgd"), points=3, lr_min=1e-3, lr_max=10.0, seeds=1,
                              batch_sizes=(100,), batch_optimizers=("adam",), seed=seed, data=data)  # fmt: skip
            cmd = f"adamlab sweep --optimizer adam --optimizer sgd --points 3 --lr-min 1e-3 --lr-max 10 --seeds 1 --batch-sizes 100 --seed {seed}"  # noqa: E501
        else:
            cfg = SweepConfig(seed=seed, data=data)
            cmd = f"adamlab sweep --seed {seed}"
        return timed(
            "sweep",
            "Exercise 1: the learning rate",
            src,
            cmd + data_flag,
            lambda: sweep(cfg, jobs=1 if quick else None),
        )

    def bias() -> Section:
        from adamlab.lab.bias import SOURCE as src
        from adamlab.lab.bias import bias as run

        epochs = 1 if quick else 2
        cmd = f"adamlab bias --epochs {epochs} --seed {seed}{data_flag}"
        return timed(
            "bias", "Exercise 2: without bias correction", src, cmd, lambda: run(epochs=epochs, seed=seed, data=data)
        )

    def decay() -> Section:
        from adamlab.lab.decay import SOURCE as src
        from adamlab.lab.decay import decay as run

        epochs = 2 if quick else 10
        cmd = f"adamlab decay --epochs {epochs} --seed {seed}{data_flag}"
        return timed(
            "decay", "Exercise 3: learning-rate decay", src, cmd, lambda: run(epochs=epochs, seed=seed, data=data)
        )

    def counterexample() -> Section:
        from adamlab.lab.counterexample import SOURCE as src
        from adamlab.lab.counterexample import counterexample as run

        steps = 20_000 if quick else None
        cmd = f"adamlab counterexample --seed {seed}" + (f" --steps {steps}" if steps else "")
        return timed(
            "counterexample", "Exercise 4: Adam diverges, AMSGrad and Yogi converge", src, cmd,
            lambda: run(steps=steps, seed=seed, seeds=2 if quick else 5),
        )  # fmt: skip

    def init_batches() -> Section:
        from adamlab.lab.init_batches import SOURCE as src
        from adamlab.lab.init_batches import init_batches as run

        cmd = f"adamlab init-batches --seed {seed}{data_flag}"
        return timed("init-batches", "Yogi's larger initial batch", src, cmd, lambda: run(seed=seed, data=data))

    def compare() -> Section:
        from adamlab.lab.compare import SOURCE as src
        from adamlab.lab.compare import compare as run

        names = ("sgd", "adagrad", "adam", "yogi") if quick else None
        flags = "".join(f" --optimizer {n}" for n in names or ())
        cmd = f"adamlab compare{flags} --seed {seed}{data_flag}"
        return timed("compare", "The chapter-11 family", src, cmd, lambda: run(names, seed=seed, data=data))

    return [
        ("chapter", chapter),
        ("sweep", sweep),
        ("bias", bias),
        ("decay", decay),
        ("counterexample", counterexample),
        ("init-batches", init_batches),
        ("compare", compare),
    ]


SECTIONS = ("chapter", "sweep", "bias", "decay", "counterexample", "init-batches", "compare")


@dataclass
class ReportResult:
    """The built sections; :meth:`html` renders the page."""

    sections: list[Section]
    config: dict[str, Any]
    seconds: float
    status: str = "complete"
    command: str = "report"

    def results(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "sections": [
                {
                    "key": s.key,
                    "title": s.title,
                    "command": s.command,
                    "seconds": s.seconds,
                    "conclusions": s.conclusions,
                }
                for s in self.sections
            ],
        }

    def conclusions(self) -> list[str]:
        return [f"{s.key}: {c}" for s in self.sections for c in s.conclusions]

    def table(self) -> str:
        return "\n".join(f"{s.key:<15} {s.seconds:6.1f} s   {s.command}" for s in self.sections)

    def html(self) -> str:
        """The page (one string, nothing external), from the Jinja2 template."""
        import jinja2

        from adamlab.lab.results import versions

        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
        return template.render(
            sections=self.sections, versions=versions(), seconds=self.seconds, seed=self.config["seed"],
            quick=self.config["quick"],
        )  # fmt: skip


def report(
    *,
    seed: int = 0,
    data: str | None = None,
    quick: bool = False,
    only: tuple[str, ...] = (),
    progress: ProgressBar | None = None,
) -> ReportResult:
    """Run the experiments (``quick``: tiny versions, seconds) and return the sections."""
    from adamlab.lab.loop import run_each

    start = time.perf_counter()
    builders = [build for k, build in _sections(quick, seed, data) if not only or k in only]
    sections, status = run_each(builders, lambda build: build(), advance=progress.advance if progress else None)
    config = {"seed": seed, "data": load(data).source, "quick": quick, "only": list(only or SECTIONS)}
    return ReportResult(sections, config, time.perf_counter() - start, status)


@click.command(
    "report",
    help=f"""Every experiment on one self-contained HTML page ({SOURCE}).

    Runs the chapter, the sweep, the bias-correction and decay experiments, the
    counterexample, Yogi's initial batch and the family comparison with their default
    sizes (measured: 58 s on 2 busy CPU cores; --quick: tiny versions, 15 s), and writes
    OUT/report.html (tables, conclusions and SVG figures inline, no network needed) and
    OUT/report.json. Each section shows the command that regenerates it.""",
)
@click.option("--quick", is_flag=True, help="Tiny versions of every experiment.")
@click.option("--only", multiple=True, type=click.Choice(SECTIONS), help="Only these sections (repeatable).")
@click.option("--data", type=str, default=None, help=DATA_HELP)
@standard_options
def command(
    quick: bool, only: tuple[str, ...], data: str | None, seed: int, out: str, as_json: bool, quiet: bool
) -> None:
    with input_errors():
        load(data)

        def work(_: Any) -> ReportResult:
            with ProgressBar("report", len(only or SECTIONS), enabled=not (quiet or as_json)) as bar:
                return report(seed=seed, data=data, quick=quick, only=only, progress=bar)

        files = {"results": "report.json", "report": "report.html"}
        execute(work, out=out, stem="report", files=files, as_json=as_json, quiet=quiet)
