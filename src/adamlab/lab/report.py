"""One self-contained HTML page with every experiment — ``adamlab report``.

Source: *Dive into Deep Learning* §11.10 ("Adam") and its exercises; the sections below
reproduce the chapter (:mod:`adamlab.lab.chapter`) and each exercise experiment
(:mod:`~adamlab.lab.sweep`, :mod:`~adamlab.lab.bias`, :mod:`~adamlab.lab.decay`,
:mod:`~adamlab.lab.counterexample`, :mod:`~adamlab.lab.init_batches`,
:mod:`~adamlab.lab.compare`). Each section shows its table, its figure (a PNG embedded as
a ``data:`` URI: the page needs no network and no other file), its source, and the
command that regenerates it.

A small inline script counts the figures that decoded and writes the count to
``<body data-figures-loaded=...>``, so that a headless browser can check the page.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from adamlab.lab.cli import standard_options
from adamlab.lab.data import DATA_HELP, load
from adamlab.lab.exercises.common import (
    Progress,
    check_output_dir,
    figure_data_uri,
    input_errors,
    versions,
    write_json,
)
from adamlab.lab.results import atomic_write

SOURCE = "Dive into Deep Learning, section 11.10 (Adam) and its exercises"


@dataclass
class Section:
    key: str
    title: str
    source: str
    command: str
    table: str
    figure: str  # data: URI
    seconds: float


def _sections(quick: bool, seed: int, data: str | None) -> list[tuple[str, Callable[[], Section]]]:
    """(key, build) for every section; ``quick`` shrinks each experiment to seconds (for tests)."""
    data_flag = f" --data {data}" if data else ""

    def timed(
        key: str,
        title: str,
        source: str,
        command: str,
        make: Callable[[], Any],
        table: Callable[[Any], str] | None = None,
    ) -> Section:
        start = time.perf_counter()
        result = make()
        text = table(result) if table else result.table()
        return Section(key, title, source, command, text, figure_data_uri(result.plot()), time.perf_counter() - start)

    def chapter() -> Section:
        from adamlab.lab.chapter import chapter as run

        epochs = 1 if quick else None
        cmd = f"adamlab chapter --seed {seed}{data_flag}" + (" --epochs 1" if quick else "")

        def book_lines_and_table(result: Any) -> str:
            return "\n".join([*result.book_lines(), "", result.table()])

        return timed(
            "chapter", "The chapter: Adam and Yogi on airfoil", "D2L §11.10", cmd,
            lambda: run(seed=seed, data=data, epochs=epochs), book_lines_and_table,
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

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ddd; }
pre { background: #f6f6f4; padding: .7em 1em; overflow-x: auto; font-size: 12.5px; }
code.cmd { background: #eef3f8; padding: .15em .4em; }
img { max-width: 100%; border: 1px solid #eee; }
.meta { color: #666; font-size: 13px; }
nav a { margin-right: 1em; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.figure'), ok = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) ok += 1; });
  document.body.setAttribute('data-figures-loaded', String(ok));
});
"""


def render(sections: list[Section], *, seed: int, meta: dict[str, Any]) -> str:
    """The HTML page (one string, nothing external)."""
    e = html.escape
    nav = " ".join(f'<a href="#{e(s.key)}">{e(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>adamlab report</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        f'</head><body data-figures="{len(sections)}" data-figures-loaded="0">',
        "<h1>adamlab: the Adam section of <i>Dive into Deep Learning</i>, reproduced and extended</h1>",
        f'<p class="meta">seed {seed} · {e(json.dumps(meta["versions"]))} · built in {meta["seconds"]:.1f} s</p>',
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        parts += [
            f'<section id="{e(s.key)}">',
            f"<h2>{e(s.title)}</h2>",
            f'<p class="meta">Source: {e(s.source)} · regenerate: <code class="cmd">{e(s.command)}</code>'
            f" · {s.seconds:.1f} s</p>",
            f"<pre>{e(s.table)}</pre>",
            f'<img class="figure" alt="{e(s.title)}" src="{s.figure}">',
            "</section>",
        ]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def report(
    *,
    seed: int = 0,
    data: str | None = None,
    quick: bool = False,
    only: tuple[str, ...] = (),
    progress: Progress | None = None,
) -> tuple[str, list[Section], dict[str, Any]]:
    """Run the experiments and return (html, sections, meta)."""
    start = time.perf_counter()
    builders = [(k, b) for k, b in _sections(quick, seed, data) if not only or k in only]
    sections = []
    for _key, build in builders:
        sections.append(build())
        if progress is not None:
            progress.advance()
    meta = {"versions": versions(), "seconds": time.perf_counter() - start, "quick": quick, "seed": seed}
    return render(sections, seed=seed, meta=meta), sections, meta


@click.command(
    "report",
    help=f"""Every experiment on one self-contained HTML page ({SOURCE}).

    Runs the chapter, the sweep, the bias-correction and decay experiments, the
    counterexample, Yogi's initial batch and the family comparison with their default
    sizes (--quick: tiny versions, seconds), and writes OUT/report.html (figures embedded,
    no network needed) and OUT/report.json. Each section shows the command that
    regenerates it.""",
)
@click.option("--quick", is_flag=True, help="Tiny versions of every experiment.")
@click.option("--only", multiple=True, type=click.Choice(SECTIONS), help="Only these sections (repeatable).")
@click.option("--data", type=str, default=None, help=DATA_HELP)
@standard_options
def command(
    quick: bool, only: tuple[str, ...], data: str | None, seed: int, out: str, as_json: bool, quiet: bool
) -> None:
    with input_errors("report"):
        load(data)
        out_dir = check_output_dir(out)
        n = len(only or SECTIONS)
        with Progress("report", n, enabled=not (quiet or as_json)) as bar:
            page, sections, meta = report(seed=seed, data=data, quick=quick, only=only, progress=bar)
    path = atomic_write(Path(out_dir) / "report.html", page.encode())
    doc = {
        "experiment": "report",
        "source": SOURCE,
        "seed": seed,
        "config": {"quick": quick, "only": list(only), "data": data},
        "versions": meta["versions"],
        "seconds": meta["seconds"],
        "sections": [{"key": s.key, "title": s.title, "command": s.command, "seconds": s.seconds} for s in sections],
        "file": str(path),
    }
    write_json(Path(out_dir) / "report.json", doc)
    if as_json:
        click.echo(json.dumps(doc, indent=1))
    elif not quiet:
        for s in sections:
            click.echo(f"{s.key:<15} {s.seconds:6.1f} s   {s.command}")
        click.echo(f"wrote {path}")
