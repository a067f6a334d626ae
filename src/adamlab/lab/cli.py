"""The ``adamlab`` command: the chapter by default, more lab commands as subcommands.

    adamlab                      the chapter's five runs (same as ``adamlab chapter``)
    adamlab chapter [OPTIONS]    ... with options
    adamlab train [OPTIONS]      one run: --trainer scratch|concise --optimizer NAME

Subcommands are loaded lazily from :data:`COMMANDS` (``name -> "module:attribute"``), so
``adamlab --help`` imports neither torch nor matplotlib, and another lab module plugs in
with one line. A command module builds its command with :func:`standard_options` (every
lab command takes ``--json``, ``--out``, ``--seed``, ``--quiet``) and raises
:class:`~adamlab.lab.data.LabInputError` for bad input.

Errors: one line on stderr, exit code 2, no traceback, and nothing written to ``--out``
(everything is validated before anything is written). The progress bar shows only when
stdout is a terminal and neither ``--quiet`` nor ``--json`` is given.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from importlib import import_module
from typing import Any, NoReturn

import click

from adamlab.lab import stdio
from adamlab.lab.data import DATA_HELP, LabInputError

# Subcommands: name -> ("module:attribute" of a click.Command, one-line help). A module is
# imported only when its command runs (or its own --help is asked for).
COMMANDS: dict[str, tuple[str, str]] = {
    "chapter": ("adamlab.lab.cli:chapter_command", "The chapter's five runs (what `adamlab` alone does)."),
    "train": ("adamlab.lab.cli:train_command", "One run of either trainer, any optimizer."),
    "sweep": ("adamlab.lab.sweep:command", "Exercise 1: a learning-rate sweep."),
    "bias": ("adamlab.lab.bias:command", "Exercise 2: Adam without bias correction."),
    "decay": ("adamlab.lab.decay:command", "Exercise 3: learning-rate decay."),
    "counterexample": ("adamlab.lab.counterexample:command", "Exercise 4: Adam diverges, AMSGrad and Yogi converge."),
    "init-batches": ("adamlab.lab.init_batches:command", "Yogi's larger initial batch."),
    "compare": ("adamlab.lab.compare:command", "The chapter-11 optimizers on the airfoil data."),
    "report": ("adamlab.lab.report:command", "Every experiment on one self-contained HTML page."),
    "bench": ("adamlab.bench.cli:command", "Time optimizer.step() against torch's Adam and other Yogis."),
}
DEFAULT_OUT = "adamlab-results"
EXIT_BAD_INPUT = 2


class LabGroup(click.Group):
    """A click group whose subcommands are imported lazily from :data:`COMMANDS`, and whose
    errors are one line on stderr with exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, _, attr = COMMANDS[name][0].partition(":")
            return getattr(import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Click would import every command for its short help; the table has it.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click's main would print a blank line first, then "Aborted!"
            raise Interrupted from None

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        stdio.occupy_closed()  # `adamlab >&-`: output discarded; no result file lands on fd 1
        try:
            code = super().main(args, prog_name or "adamlab", standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except (click.exceptions.Abort, Interrupted):
            fail("aborted", 130)
        except (click.ClickException, LabInputError) as e:
            message = e.format_message() if isinstance(e, click.ClickException) else str(e)
            fail(message)
        except OSError as e:  # e.g. the disk filled up while writing results
            fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e), 1)
        sys.exit(code if isinstance(code, int) else 0)


class Interrupted(Exception):
    """Ctrl-C during a command (reported by :class:`LabGroup` as one line, exit code 130)."""


def fail(message: object, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """The lab's one error format: ``adamlab: error: MESSAGE`` on one stderr line, then exit.

    :class:`LabGroup` and :func:`adamlab.lab.exercises.common.input_errors` (for a command
    invoked on its own, e.g. by a test's ``CliRunner``) both end here.
    """
    click.echo(f"adamlab: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _reject_group_options(ctx: click.Context) -> None:
    """Options of the bare ``adamlab`` (the chapter) before a command would be dropped: refuse them."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if ctx.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)
    ]
    if given:
        verb = "goes" if len(given) == 1 else "go"
        example = f"adamlab {ctx.invoked_subcommand} {' '.join(given)}"
        raise click.UsageError(f"{', '.join(given)} {verb} after the command: {example}")


def standard_options(command: Any) -> Any:
    """``--json``, ``--out DIR``, ``--seed``, ``--quiet``: the options every lab command has."""
    for option in reversed(
        [
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of init and data order."),
            click.option("--out", type=click.Path(), default=DEFAULT_OUT, show_default=True, help="Output folder."),
            click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout."),
            click.option("--quiet", is_flag=True, help="Print nothing but errors."),
        ]
    ):
        command = option(command)
    return command


def training_options(command: Any) -> Any:
    """Options of the commands that train: hyperparameters, data, checkpoints."""
    for option in reversed(
        [
            click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate."),
            click.option("--batch-size", type=int, default=10, show_default=True, help="Minibatch size."),
            click.option("--epochs", type=int, default=None, help="Epochs [book: 2 scratch, 4 concise]."),
            click.option("--data", type=str, default=None, help=DATA_HELP),
            click.option("--plot-format", type=str, default="png", show_default=True, help="png or svg."),
            click.option("--checkpoint-every", type=int, default=0, help="Checkpoint every N steps (OUT/checkpoints)."),
            click.option("--resume", is_flag=True, help="Resume from the checkpoints in OUT."),
        ]
    ):
        command = option(command)
    return command


def _chapter_options(command: Any) -> Any:
    command = click.option(
        "--framework",
        type=click.Choice(["torch", "tensorflow", "mxnet"]),
        default="torch",
        show_default=True,
        help="Run the chapter with this framework's tensors and built-in Adam (tensorflow/mxnet need their extras).",
    )(command)
    command = click.option(
        "--optimizer",
        "optimizers",
        multiple=True,
        help="Only these runs: adam, yogi, or an optimizer name (torch.optim.Adam, adamlab.Yogi, ...). Repeatable.",
    )(command)
    return training_options(standard_options(command))


def run_chapter(*, as_json: bool, quiet: bool, **options: Any) -> None:
    """Run the chapter (:func:`adamlab.lab.frameworks.run_chapter`) and report it as the options ask."""
    from adamlab.lab.frameworks import run_chapter as chapter_in

    framework = options.pop("framework", "torch")
    show_progress = sys.stdout.isatty() and not (quiet or as_json)
    with _progress(show_progress) as on_start:
        result = chapter_in(framework, on_start=on_start, **options)
    if as_json:
        click.echo(result.to_json())
    elif not quiet:
        for line in result.book_lines():
            click.echo(line)
        click.echo()
        click.echo(result.table())
        click.echo(f"wrote {result.files['plot']} and {result.files['results']}")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress bar with one task per run (yields the ``on_start`` hook), or nothing."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:

        def on_start(config: Any, index: int):
            task = bar.add_task(config.name, total=1)
            return lambda step, total: bar.update(task, completed=step, total=total)

        yield on_start


@click.group(cls=LabGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@_chapter_options
@click.pass_context
def cli(ctx: click.Context, **options: Any) -> None:
    """adamlab: reproduce the "Adam" section of Dive into Deep Learning (ch. 11).

    With no command, runs the chapter: scratch Adam, torch.optim.Adam, adamlab.Adam,
    scratch Yogi and adamlab.Yogi on the airfoil data; prints the book's lines and a
    table; writes OUT/loss.png and OUT/results.json.
    """
    if ctx.invoked_subcommand is None:
        run_chapter(**options)
    else:
        _reject_group_options(ctx)


@click.command("chapter")
@_chapter_options
def chapter_command(**options: Any) -> None:
    """The chapter's five runs (what `adamlab` with no command does)."""
    run_chapter(**options)


@click.command("train")
@click.option("--trainer", type=str, default="scratch", show_default=True, help="scratch or concise.")
@click.option("--optimizer", type=str, default=None, help="adam|yogi (scratch); torch.optim.Adam, adamlab.Yogi, ...")
@training_options
@standard_options
def train_command(trainer: str, optimizer: str | None, **options: Any) -> None:
    """One run of either trainer (defaults: scratch adam, the book's epochs)."""
    from adamlab.lab.data import load
    from adamlab.lab.train import DEFAULT_EPOCHS, RunConfig

    if trainer not in DEFAULT_EPOCHS:
        raise LabInputError(f"unknown trainer {trainer!r} (expected scratch or concise)")
    optimizer = optimizer or ("adam" if trainer == "scratch" else "torch.optim.Adam")
    data = load(options["data"])
    source = None if data.source.startswith("bundled:") else data.source
    config = RunConfig(
        trainer,
        optimizer,
        options["lr"],
        options["batch_size"],
        DEFAULT_EPOCHS[trainer] if options["epochs"] is None else options["epochs"],
        options["seed"],
        source,
    )
    options["data"] = data
    run_chapter(configs=[config], **options)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``adamlab`` script."""
    cli.main(argv, prog_name="adamlab")


if __name__ == "__main__":
    main()
