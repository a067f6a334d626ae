"""``adamlab bench``: the optimizer-step benchmark and the training workload, as a lab command.

    adamlab bench                      every set and candidate on the CPU (a few minutes)
    adamlab bench --smoke              tiny sets, few rounds: seconds (CI runs this)
    adamlab bench --set gpt-like --impl fused --json
    adamlab bench --device cuda        the GPU sets (issue 6)
    adamlab bench --impl 8bit          adamlab's 8-bit state against bitsandbytes and torchao
    adamlab bench --workload gpt       train a small GPT with every optimizer: 1 process,
                                       DDP and FSDP2 on 2 (several minutes on 2 cores)
    adamlab bench --workload gpt --quick   the same, tiny, one process: CI (< 30 s)

The step benchmark writes OUT/bench-DEVICE.json and .png; the workload OUT/workload-gpt.json
and .png. Both print a Markdown table (or the JSON with ``--json``). The lab CLI registers
:data:`command` lazily as ``bench``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from adamlab.bench.sets import PARAM_SETS
from adamlab.lab.cli import fail, standard_options
from adamlab.lab.data import LabInputError

EXIT_INTERRUPTED, EXIT_CHECK_FAILED = 130, 1


def _modes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(m.strip() for m in value.split(",") if m.strip())


@click.command("bench")
@click.option(
    "--device", type=click.Choice(sorted(PARAM_SETS)), default="cpu", show_default=True, help="Device type to run on."
)
@click.option("--set", "sets", multiple=True, help="Parameter set(s) by name [default: all]; repeatable.")
@click.option(
    "--impl", "impls", multiple=True, help="Optimizers whose name contains this (as the table prints them); repeatable."
)
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Rounds dropped first.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True, help="Rounds measured.")
@click.option("--smoke", is_flag=True, help="Tiny sets and few rounds: seconds, for CI.")
@click.option("--cold-start", is_flag=True, help="Also time the first fused step with empty kernel caches.")
@click.option("--no-first-step", is_flag=True, help="Skip timing the first fused step in a new process.")
@click.option(
    "--workload",
    type=click.Choice(["gpt"]),
    default=None,
    help="Train a model instead of timing bare steps: gpt, a small byte-level transformer.",
)
@click.option("--quick", is_flag=True, help="Workload: tiny model, one process, one seed (CI, < 30 s).")
@click.option("--steps", type=click.IntRange(1), default=None, help="Workload: training steps [default 60].")
@click.option(
    "--seeds",
    "n_seeds",
    type=click.IntRange(1),
    default=None,
    help="Workload: seeds SEED..SEED+N-1 on one process [3]; DDP/FSDP2 run SEED.",
)
@click.option(
    "--modes", callback=_modes, default=None, help="Workload: comma list of single, ddp, fsdp2 [all; --quick: single]."
)
@click.option("--world-size", type=click.IntRange(1), default=None, help="Workload: processes of DDP/FSDP2 [2].")
@click.option(
    "--d-model",
    type=click.IntRange(1),
    default=None,
    help="Workload: width [128; with --n-layer 4, 256 is 3.2M params].",
)
@click.option("--n-layer", type=click.IntRange(1), default=None, help="Workload: transformer blocks [2].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Workload: sequences per step [4].")
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
    workload: str | None,
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
    **workload_options: Any,
) -> None:
    """Time optimizer.step() for adamlab's Adam and Yogi (fp32, bf16 and 8-bit state) against
    torch, other Yogis and other 8-bit Adams, or (--workload gpt) train a small transformer
    with each of them."""
    from adamlab.lab.results import check_output_dir

    if workload:
        _workload(device, impls, seed, out, as_json, quiet, **workload_options)
        return
    given = [f"--{k.replace('_', '-')}" for k, v in workload_options.items() if v not in (None, False)]
    if given:
        raise LabInputError(f"{', '.join(given)}: only with --workload gpt")
    from adamlab.bench.core import BenchConfig, chart, run, table

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
    from adamlab.bench.candidates import select
    from adamlab.bench.sets import param_sets

    try:  # refuse an unknown set or candidate name before creating anything
        param_sets(device, smoke=smoke, names=sets or None)
        select(impls or None)
    except ValueError as e:
        raise LabInputError(str(e)) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(cfg, progress=(lambda m: click.echo(f"... {m}", err=True)) if talk else None)
    except ValueError as e:  # an unknown set or candidate name
        raise LabInputError(str(e)) from e
    _write_and_report(result, Path(out_dir), f"bench-{device}", chart, table, as_json=as_json, quiet=quiet)


def _write_and_report(
    result: dict[str, Any], out_dir: Path, stem: str, draw: Any, table: Any, *, as_json: bool, quiet: bool
) -> Path:
    """Write ``STEM.json`` and the figure ``STEM.png`` (each atomically), then print the JSON
    (what the file holds) or the table; returns the JSON's path."""
    from adamlab.lab.results import dumps, write_json

    json_path = write_json(out_dir / f"{stem}.json", result)
    png_path = out_dir / f"{stem}.png"
    _atomic_figure(lambda path: draw(result, path), png_path)
    if as_json:
        click.echo(dumps(result), nl=False)
    elif not quiet:
        click.echo(table(result))
        click.echo(f"\nwrote {json_path} and {png_path}")
    return json_path


def _workload(
    device: str,
    impls: tuple[str, ...],
    seed: int,
    out: str,
    as_json: bool,
    quiet: bool,
    *,
    quick: bool,
    steps: int | None,
    n_seeds: int | None,
    modes: tuple[str, ...] | None,
    world_size: int | None,
    d_model: int | None,
    n_layer: int | None,
    batch_size: int | None,
) -> None:
    """``--workload gpt``: check everything, then train, then write and report."""
    from adamlab.bench.workload import config as wl_config
    from adamlab.bench.workload.report import figure, table
    from adamlab.bench.workload.run import resolve, run
    from adamlab.lab.results import check_output_dir

    name = "quick" if quick else "default"
    n_seeds = n_seeds or len(wl_config.PRESETS[name].seeds)
    try:
        cfg = wl_config.preset(
            name,
            device=device,
            steps=steps,
            modes=modes,
            world_size=world_size,
            d_model=d_model,
            n_layer=n_layer,
            batch_size=batch_size,
            optimizers=impls or None,
            seeds=tuple(range(seed, seed + n_seeds)),
            dist_seeds=(seed,),
        )
        names, skipped = resolve(cfg.optimizers, device)
        wl_config.check(cfg, names)
    except (ValueError, TypeError) as e:
        raise LabInputError(str(e)) from e
    if not names:
        raise LabInputError(f"no optimizer can run here: {skipped}")
    out_dir = check_output_dir(out)
    talk = not (quiet or as_json)
    with _progress(talk) as progress:
        result = run(cfg, progress=progress, names=names)
    result["skipped"] = skipped
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = _write_and_report(result, out_dir, "workload-gpt", figure, table, as_json=as_json, quiet=quiet)
    failed = [c for c in result["checks"] if not c["ok"]]
    if result["partial"]:
        fail(f"interrupted: wrote the partial results (marked partial) to {json_path}", EXIT_INTERRUPTED)
    if failed:
        c = failed[0]
        fail(
            f"{len(failed)} check(s) failed, first: {c['check']} ({c['mode']}, {c['optimizer']}, seed {c['seed']}): "
            f"{c['detail']}",
            EXIT_CHECK_FAILED,
        )


def _atomic_figure(draw: Any, path: Path) -> Path:
    """``draw(tmp)`` to a temp file in ``path``'s folder (same suffix, so the format holds),
    then ``os.replace`` it over ``path``: a reader sees the old figure or the new one."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        from adamlab.lab.results import _UMASK

        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        draw(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _progress:
    """A rich progress bar on a terminal; otherwise one line per evaluation on stderr; or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("starting", total=None)
            return self.update
        return lambda message, done, total: click.echo(f"... [{done}/{total} steps] {message}", err=True)

    def update(self, message: str, done: int, total: int) -> None:
        self.bar.update(self.task, description=message, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def main(argv: Any = None) -> None:
    """Run the command outside the lab CLI (``python -m adamlab.bench``)."""
    from adamlab.lab.cli import LabGroup

    group = LabGroup(commands={"bench": command})
    group.main(["bench", *(sys.argv[1:] if argv is None else argv)], prog_name="adamlab")
