"""Review findings: --optimizer names only optimizers, group options go after the command,
and every bad input is one ``adamlab: error:`` line with exit code 2 and nothing written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from adamlab.lab.cli import cli


def assert_refused(result, out, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("adamlab: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "name, needle",
    [
        ("os.system", "unknown optimizer"),  # outside the allow-list: not even imported
        ("adamlab.reference.step", "unknown optimizer"),
        ("torch.optim.LBFGS", "cannot run here"),  # an Optimizer, but its step() needs a closure
    ],
)
def test_concise_optimizer_must_be_a_runnable_torch_optimizer(tmp_path, name, needle):
    out = tmp_path / "out"
    args = ["train", "--trainer", "concise", "--optimizer", name, "--epochs", "1", "--out", str(out)]
    assert_refused(CliRunner().invoke(cli, args), out, name, needle)


def test_chapter_optimizer_is_checked_the_same_way(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--optimizer", "os.system", "--epochs", "1", "--out", str(out)])
    assert_refused(result, out, "os.system")


def test_the_lab_family_factories_still_resolve():
    from adamlab.lab.family import FAMILY, sgd
    from adamlab.lab.frameworks.torch_chapter import resolve_optimizer

    assert resolve_optimizer(FAMILY["sgd"].target) is sgd


@pytest.mark.parametrize(
    "before, option",
    [
        (["--json", "--seed", "7"], "--json"),
        (["--seed", "7"], "--seed"),
        (["--lr", "-1"], "--lr"),
        (["--quiet"], "--quiet"),
    ],
)
def test_group_options_before_a_command_are_refused(tmp_path, before, option):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*before, "counterexample", "--steps", "100", "--out", str(out)])
    assert_refused(result, out, option, "after the command: adamlab counterexample")


def test_one_option_before_a_command_names_where_it_goes(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--json", "counterexample", "--steps", "100", "--out", str(out)])
    assert_refused(result, out, "--json goes after the command: adamlab counterexample --json")


def test_group_option_refused_before_bench_too(tmp_path):
    out = tmp_path / "out"
    assert_refused(CliRunner().invoke(cli, ["--lr", "-1", "--out", str(out), "bench"]), out, "--lr")


def test_a_command_on_its_own_says_the_same_line(tmp_path):
    from adamlab.lab import sweep

    out = tmp_path / "out"
    alone = CliRunner().invoke(sweep.command, ["--batch-sizes", ",", "--out", str(out)])
    grouped = CliRunner().invoke(cli, ["sweep", "--batch-sizes", ",", "--out", str(out)])
    assert_refused(alone, out, "--batch-sizes")
    assert_refused(grouped, out, "--batch-sizes")
    assert alone.stderr == grouped.stderr


def test_the_loop_and_the_chapter_import_without_torch():
    """One loop for every framework: the MXNet environment has no torch."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from adamlab.lab.loop import RunConfig, train\n"
        "from adamlab.lab.chapter import run_chapter, chapter_configs\n"
        "from adamlab.lab.results import Outputs, record\n"
        "assert [c.framework for c in chapter_configs('mxnet')] == ['mxnet'] * 5\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_each_name_says_one_thing():
    import dataclasses
    import importlib

    from adamlab.lab import cli, frameworks, loop

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adamlab.lab.exercises")  # helpers live beside the experiments now
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("adamlab.lab.train")  # the torch trainer is a framework module
    assert dataclasses.is_dataclass(loop.Progress) and not hasattr(cli, "Progress")  # where a run stands
    assert frameworks.module("torch").__name__ == "adamlab.lab.frameworks.torch_chapter"
    assert {name: frameworks._MODULES[name].rsplit(".", 1)[1] for name in frameworks.FRAMEWORKS} == {
        "torch": "torch_chapter",
        "tensorflow": "tensorflow_chapter",
        "mxnet": "mxnet_chapter",
    }
