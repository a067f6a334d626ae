"""``adamlab bench``: the optimizer-step benchmark as a lab command.

    adamlab bench                      every set and candidate on the CPU (a few minutes)
    adamlab bench --smoke              tiny sets, few rounds: seconds (CI runs this)
    adamlab bench --set gpt-like --impl fused --json
    adamlab bench --device cuda        the GPU sets (issue 6)

Writes OUT/bench-DEVICE.json and OUT/bench-DEVICE.png; prints a Markdown table (or the
JSON with ``--json``). The lab CLI registers :data:`command` lazily as ``bench``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from adamlab.lab.cli import standard_options
from adamlab.lab.data import LabInputError


@click.command("bench")
@click.option("--device", default="cpu", show_default=True, help="Device type to run on: cpu or cuda.")
@click.option("--set", "sets", multiple=True, help="Parameter set(s) by name [default: all]; repeatable.")
@click.option("--impl", "impls", multiple=True, help="Candidates whose name contains this; repeatable.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Rounds dropped first.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="Rounds measured.")
@click.option("--smoke", is_flag=True, help="Tiny sets and few rounds: seconds, for CI.")
@click.option("--cold-start", is_flag=True, help="Also time the first fused step with empty kernel caches.")
@click.option("--no-first-step", is_flag=True, help="Skip timing the first fused step in a new process.")
@standard_options
def command(
    device: str,
    sets: tuple[str, ...],
    impls: tuple[str, ...],
    warmup: int,
    repeats: int,
    smoke: bool,
    cold_start: bool,
    no_first_step: bool,
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Time optimizer.step() for adamlab's Adam and Yogi against torch and other Yogis."""
    from adamlab.bench.core import BenchConfig, chart, run, table
    from adamlab.lab.results import check_output_dir, write_json

    out_dir = check_output_dir(out)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise LabInputError("--device cuda: no CUDA device is available")
    cfg = BenchConfig(
        device=device,
        sets=sets or None,
        candidates=impls or None,
        warmup=warmup,
        repeats=repeats,
        seed=seed,
        smoke=smoke,
        first_step=not no_first_step,
        cold_start=cold_start,
    )
    talk = not (quiet or as_json)
    try:
        result = run(cfg, progress=(lambda m: click.echo(f"... {m}", err=True)) if talk else None)
    except ValueError as e:  # an unknown set or candidate name
        raise LabInputError(str(e)) from e
    json_path = write_json(Path(out_dir) / f"bench-{device}.json", result)
    png_path = Path(out_dir) / f"bench-{device}.png"
    chart(result, png_path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not quiet:
        click.echo(table(result))
        click.echo(f"\nwrote {json_path} and {png_path}")


def main(argv: Any = None) -> None:
    """Run the command outside the lab CLI (``python -m adamlab.bench``)."""
    from adamlab.lab.cli import LabGroup

    group = LabGroup(commands={"bench": command})
    group.main(["bench", *(sys.argv[1:] if argv is None else argv)], prog_name="adamlab")
