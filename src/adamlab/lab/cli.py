"""The ``adamlab`` command: the chapter by default, more lab commands as subcommands.

    adamlab                      the chapter's five runs (same as ``adamlab chapter``)
    adamlab chapter [OPTIONS]    ... with options
    adamlab train [OPTIONS]      one run: --trainer scratch|concise --optimizer NAME

Subcommands are loaded lazily from :data:`COMMANDS` (``name -> "module:attribute"``), so
``adamlab --help`` imports neither torch nor matplotlib, and another lab module plugs in
with one line. Every lab command takes :func:`standard_options` (``--json``, ``--out``,
``--seed``, ``--quiet``) and, when it draws a figure, ``--plot-format``; it validates its
input, then hands its work to :func:`execute`, the one tail: check and lock ``--out``, do
the work, write the record and figure together, print the JSON (what the file holds) or
the table and the conclusions.

Errors: one line on stderr, exit code 2, no traceback, nothing written. Ctrl-C during the
work keeps what finished: written, ``"status": "partial"``, exit code 130.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator
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
EXIT_INTERRUPTED = 130
INTERRUPTED_NOTHING_KEPT = "interrupted; nothing had finished, nothing written"


class LabGroup(click.Group):
    """A click group whose subcommands are imported lazily from :data:`COMMANDS`, whose
    errors are one line on stderr with exit code 2, and which suggests the command meant."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, _, attr = COMMANDS[name][0].partition(":")
            return getattr(import_module(module), attr)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f" (commands: {', '.join(self.list_commands(ctx))})"
            raise click.UsageError(f"no such command '{name}'{hint}", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Click would import every command for its short help; the table has it.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # click's main would print a blank line, then "Aborted!": one line instead
            raise Interrupted from None

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        stdio.occupy_closed()  # `adamlab >&-`: output discarded; no result file lands on fd 1
        try:
            code = super().main(args, prog_name or "adamlab", standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except (click.exceptions.Abort, Interrupted):
            fail(INTERRUPTED_NOTHING_KEPT, EXIT_INTERRUPTED)
        except (click.ClickException, LabInputError) as e:
            message = e.format_message() if isinstance(e, click.ClickException) else str(e)
            fail(message)
        except OSError as e:  # e.g. the disk filled up while writing results
            fail(_os_error(e), 1)
        sys.exit(code if isinstance(code, int) else 0)


class Interrupted(Exception):
    """Ctrl-C that no command turned into a partial result (reported by :class:`LabGroup`
    as one line, exit code 130; a command that kept runs exits 130 itself, see :func:`execute`)."""


def fail(message: object, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """The lab's one error format: ``adamlab: error: MESSAGE`` on one stderr line, then exit."""
    click.echo(f"adamlab: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """``with input_errors():`` — bad input becomes :func:`fail`'s one line, also when a command
    runs on its own (e.g. under a test's ``CliRunner``, outside :class:`LabGroup`)."""
    try:
        yield
    except (LabInputError, ValueError) as err:
        fail(err)
    except KeyboardInterrupt:
        fail(INTERRUPTED_NOTHING_KEPT, EXIT_INTERRUPTED)
    except OSError as err:
        fail(_os_error(err), 1)


def _os_error(err: OSError) -> str:
    """The error with the file it concerns (the lab's own errors already name it)."""
    message = err.strerror or str(err)
    if err.filename and str(err.filename) not in message:
        message = f"{message}: {err.filename}"
    return message


def _reject_group_options(ctx: click.Context) -> None:
    """Options of the bare ``adamlab`` (the chapter) before a command would be dropped: refuse them."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name != "version"
        and ctx.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)
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
            click.option(
                "--json", "as_json", is_flag=True, help="Print the results record (what OUT holds) on stdout."
            ),
            click.option("--quiet", is_flag=True, help="Print nothing but errors."),
        ]
    ):
        command = option(command)
    return command


def plot_format_option(command: Any) -> Any:
    """``--plot-format png|svg``: the one name of the figure-format option."""
    return click.option(
        "--plot-format", type=click.Choice(["png", "svg"]), default="png", show_default=True, help="Figure format."
    )(command)


def execute(
    work: Callable[[Any], Any],
    *,
    out: str,
    stem: str,
    as_json: bool,
    quiet: bool,
    plot_format: str = "png",
    figure: str | None = None,
    files: dict[str, str] | None = None,
    checkpoints: bool = False,
) -> Any:
    """The one tail of every command: check and lock OUT, ``work(outputs)``, write, print.

    ``work`` returns an experiment result (``command``, ``config``, ``status``,
    ``results()``, ``conclusions()``, ``table()``, ``plot()``). Files: ``STEM.json`` and
    ``FIGURE.PLOT_FORMAT`` (``figure`` defaults to ``stem``), or ``files``.
    """
    from adamlab.lab.plots import FORMATS
    from adamlab.lab.results import Outputs, dumps, write_result

    figure = figure or stem
    if files is None:
        files = {"results": f"{stem}.json", "figure": f"{figure}.{plot_format}"}
    replaces = tuple(f"{figure}.{f}" for f in FORMATS if f != plot_format and "figure" in files)
    with Outputs(out, files, replaces=replaces, checkpoints=checkpoints) as outputs:
        result = work(outputs)
        doc = write_result(result, outputs, plot_format)
    if as_json:
        click.echo(dumps(doc), nl=False)
    elif not quiet:
        if hasattr(result, "book_lines"):
            click.echo("\n".join(result.book_lines()) + "\n")
        click.echo(result.table())
        for line in doc["conclusions"]:
            click.echo(f"* {line}")
        click.echo(f"wrote {' and '.join(doc['files'].values())}")
    if result.status == "partial":
        if not as_json:
            click.echo("adamlab: interrupted; what finished is written (status: partial)", err=True)
        sys.exit(EXIT_INTERRUPTED)
    return result


class ProgressBar:
    """A rich progress bar over ``total`` units of work (with an ETA), or nothing at all.

    Shown only when ``enabled`` and stdout is a terminal (silent under ``--quiet``/``--json``
    and in pipes). Units should cost about the same (the sweep counts optimizer steps, not
    runs), so the ETA is honest. ``advance()`` is cheap when disabled.
    """

    def __init__(self, description: str, total: int, *, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.description, self.total = description, total

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
            self.bar = Progress(*columns, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.bar.update(self.task, advance=n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


def training_options(command: Any) -> Any:
    """Options of the commands that train: hyperparameters, data, checkpoints."""
    for option in reversed(
        [
            click.option(
                "--framework",
                type=click.Choice(["torch", "tensorflow", "mxnet"]),
                default="torch",
                show_default=True,
                help="Run with this framework's tensors and built-in Adam (tensorflow/mxnet need their extras).",
            ),
            click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate."),
            click.option("--batch-size", type=int, default=10, show_default=True, help="Minibatch size."),
            click.option("--epochs", type=int, default=None, help="Epochs [book: 2 scratch, 4 concise]."),
            click.option("--data", type=str, default=None, help=DATA_HELP),
            click.option("--checkpoint-every", type=int, default=0, help="Checkpoint every N steps (OUT/checkpoints)."),
            click.option("--resume", is_flag=True, help="Resume from the checkpoints in OUT (saved again at the end)."),
        ]
    ):
        command = option(command)
    return plot_format_option(command)


def _chapter_options(command: Any) -> Any:
    command = click.option(
        "--optimizer",
        "optimizers",
        multiple=True,
        help="Only these runs: adam, yogi, or an optimizer name (torch.optim.Adam, adamlab.Yogi, ...). Repeatable.",
    )(command)
    return training_options(standard_options(command))


def _run_chapter_command(
    *,
    as_json: bool,
    quiet: bool,
    out: str,
    plot_format: str,
    stem: str = "results",
    figure: str = "loss",
    configs: list[Any] | None = None,
    command: str = "chapter",
    **options: Any,
) -> None:
    """The chapter (or ``train``'s one run) through :func:`execute`."""
    from adamlab.lab.chapter import run_chapter

    with input_errors():
        if options["checkpoint_every"] < 0:
            raise LabInputError(f"--checkpoint-every must be >= 0, got {options['checkpoint_every']}")
        saving = bool(options["checkpoint_every"] or options["resume"])
        show_progress = sys.stdout.isatty() and not (quiet or as_json)

        def work(outputs: Any) -> Any:
            with _run_progress(show_progress) as on_start:
                return run_chapter(
                    configs=configs, checkpoints=outputs.checkpoint_dir if saving else None,
                    on_start=on_start, command=command, **options,
                )  # fmt: skip

        # Validate the runs (configs, data, framework, checkpoints) before OUT is touched.
        from adamlab.lab.chapter import chapter_configs, check_runs
        from adamlab.lab.data import load

        data = load(options["data"])
        options["data"] = data
        source = None if data.source.startswith("bundled:") else data.source
        checked = configs or chapter_configs(
            options["framework"], optimizers=options["optimizers"], lr=options["lr"],
            batch_size=options["batch_size"], epochs=options["epochs"], seed=options["seed"], data=source,
        )  # fmt: skip
        check_runs(checked, data)
        from adamlab.lab import limits  # the curves' size, before any work (--epochs has no other bound)

        epochs = max(c.epochs for c in checked)
        limits.check_runs(len(checked), epochs * data.n // 200 + 2, f"--epochs {epochs}")
        if saving and options["framework"] != "torch":
            raise LabInputError("--checkpoint-every and --resume: only --framework torch supports them")
        execute(work, out=out, stem=stem, figure=figure, as_json=as_json, quiet=quiet, plot_format=plot_format,
                checkpoints=saving)  # fmt: skip


@contextlib.contextmanager
def _run_progress(enabled: bool) -> Iterator[Any]:
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


def _version() -> str:
    import adamlab

    return adamlab.__version__


@click.group(cls=LabGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="adamlab", message="%(prog)s %(version)s")
@_chapter_options
@click.pass_context
def cli(ctx: click.Context, **options: Any) -> None:
    """adamlab: reproduce the "Adam" section of Dive into Deep Learning (ch. 11).

    With no command, runs the chapter (13 s measured on 2 busy CPU cores): scratch Adam,
    torch.optim.Adam, adamlab.Adam, scratch Yogi and adamlab.Yogi on the airfoil data;
    prints the book's lines, a table and the conclusions; writes OUT/loss.png and
    OUT/results.json.
    """
    if ctx.invoked_subcommand is None:
        _run_chapter_command(**options)
    else:
        _reject_group_options(ctx)


@click.command("chapter")
@_chapter_options
def chapter_command(**options: Any) -> None:
    """The chapter's five runs (what `adamlab` with no command does; 13 s measured on 2 busy cores)."""
    _run_chapter_command(**options)


@click.command("train")
@click.option("--trainer", type=click.Choice(["scratch", "concise"]), default="scratch", show_default=True)
@click.option("--optimizer", type=str, default=None, help="adam|yogi (scratch); torch.optim.Adam, adamlab.Yogi, ...")
@training_options
@standard_options
def train_command(trainer: str, optimizer: str | None, **options: Any) -> None:
    """One run of either trainer (defaults: scratch adam, the book's epochs; seconds).

    Writes OUT/train.json and OUT/train.png (never the chapter's results.json and loss.png).
    """
    from adamlab.lab.loop import BOOK_EPOCHS, RunConfig

    with input_errors():
        from adamlab.lab.data import load

        framework = options["framework"]
        default = {"torch": "torch.optim.Adam", "tensorflow": "keras.optimizers.Adam", "mxnet": "gluon 'adam'"}
        optimizer = optimizer or ("adam" if trainer == "scratch" else default[framework])
        data = load(options["data"])
        source = None if data.source.startswith("bundled:") else data.source
        epochs = BOOK_EPOCHS[trainer] if options["epochs"] is None else options["epochs"]
        config = RunConfig(trainer, optimizer, options["lr"], options["batch_size"], epochs, options["seed"], source,
                           framework)  # fmt: skip
    _run_chapter_command(configs=[config], command="train", stem="train", figure="train", optimizers=(), **options)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``adamlab`` script (and of ``python -m adamlab``)."""
    cli.main(argv, prog_name="adamlab")


if __name__ == "__main__":
    main()
