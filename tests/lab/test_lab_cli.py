"""The ``adamlab`` command: exit codes, files written, and every bad input of issue 3 §5."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from adamlab.lab import data as labdata
from adamlab.lab.cli import COMMANDS, cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_chapter_run_prints_the_book_lines_and_writes_files(tmp_path):
    out = tmp_path / "out"
    result = invoke("--out", str(out), "--epochs", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sum("loss: " in line and line.endswith(" sec/epoch") for line in lines) == 5
    assert any(line.startswith("floor (lstsq)") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == [".adamlab.lock", "loss.png", "results.json"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["seed"] == 0 and len(doc["results"]["runs"]) == 5 and "torch" in doc["versions"]
    assert any(line.startswith("* adamlab.Adam reproduces torch.optim.Adam") for line in lines)
    for run in doc["results"]["runs"]:
        assert run["config"]["epochs"] == 1 and run["implementation"] and run["epochs"] and run["losses"]
        assert len(run["epochs"]) == len(run["losses"]) == 8  # 1500 examples: at 200, 400, ..., 1400, then the end


def test_chapter_subcommand_json_quiet_and_svg(tmp_path):
    out = tmp_path / "o"
    result = invoke("chapter", "--optimizer", "yogi", "--json", "--seed", "3", "--out", str(out), "--plot-format=svg")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "results.json").read_text())
    assert [r["name"] for r in doc["results"]["runs"]] == ["scratch Yogi", "adamlab.Yogi"]
    assert doc["config"]["seed"] == 3 and all(r["config"]["seed"] == 3 for r in doc["results"]["runs"])
    assert (out / "loss.svg").read_text().lstrip().startswith("<?xml")
    quiet = invoke("train", "--trainer", "concise", "--optimizer", "torch.optim.SGD", "--quiet", "--out", str(out))
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert json.loads((out / "train.json").read_text())["results"]["runs"][0]["name"] == "torch.optim.SGD"
    assert json.loads((out / "results.json").read_text()) == doc  # train never overwrites the chapter's files
    assert (out / "train.png").exists() and (out / "loss.svg").exists()


def test_user_data_file(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("x1\tx2\ty\n" + "".join(f"{i}\t{(i * 7) % 11}\t{i % 5}\n" for i in range(40)))
    result = invoke("train", "--data", str(path), "--json", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    run, data = doc["results"]["runs"][0], doc["results"]["data"]
    assert data["source"] == str(path) and data["rows_used"] == 40 and run["config"]["data"] == str(path)


def _bad(tmp_path, name: str, text: str | None) -> str:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "missing data file": (lambda d: ["--data", str(d / "nope.csv")], "not found"),
    "unreadable data file": (lambda d: ["--data", str(d)], "directory"),
    "empty file": (lambda d: ["--data", _bad(d, "e.csv", "")], "empty"),
    "ragged rows": (lambda d: ["--data", _bad(d, "r.csv", "1,2,3\n4,5,6\n7,8\n")], "line 3 has 2 columns"),
    "wrong column count": (lambda d: ["--data", _bad(d, "c.csv", "1\n2\n3\n")], "at least 2 columns"),
    "non-numeric cell": (lambda d: ["--data", _bad(d, "n.csv", "1,2\n3,four\n")], "not a number"),
    "nan": (lambda d: ["--data", _bad(d, "nan.csv", "1,2\nNaN,3\n")], "not finite"),
    "inf": (lambda d: ["--data", _bad(d, "inf.csv", "1,2\n2,inf\n")], "not finite"),
    "constant column": (lambda d: ["--data", _bad(d, "k.csv", "1,2\n3,2\n4,2\n")], "constant"),
    "fewer rows than a batch": (lambda d: ["--data", _bad(d, "s.csv", "1,2\n3,4\n5,7\n")], "fewer than one batch"),
    "lr zero": (lambda d: ["--lr", "0"], "learning rate must be > 0"),
    "lr negative": (lambda d: ["--lr", "-0.01"], "learning rate must be > 0"),
    "unknown optimizer": (lambda d: ["--optimizer", "adamx"], "unknown optimizer 'adamx'"),
    "out is a file": (lambda d: ["--out", _bad(d, "file", "x")], "not a directory"),
    "out under a file": (lambda d: ["--out", _bad(d, "f2", "x") + "/sub"], "not writable"),
    "bad batch size": (lambda d: ["--batch-size", "0"], "batch size"),
    "negative seed": (lambda d: ["--seed", "-1"], "seed must be"),
    "zero epochs": (lambda d: ["--epochs", "0"], "epochs must be >= 1"),
    "negative checkpoint interval": (lambda d: ["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    "bad plot format": (lambda d: ["--plot-format", "gif"], "--plot-format"),
    "not a number option": (lambda d: ["--lr", "fast"], "'fast' is not a valid float"),
    "unknown option": (lambda d: ["--nope"], "No such option"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("command", [[], ["train"]])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case, command):
    if command and case == "unknown optimizer":
        command = ["train", "--trainer", "concise"]
    make_args, message = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    args = make_args(work)
    out = tmp_path / "out"
    if "--out" not in args:
        args += ["--out", str(out)]
    result = invoke(*command, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("adamlab: error: "), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_modified_bundled_file_exits_2(tmp_path, monkeypatch):
    copy = tmp_path / "airfoil_self_noise.dat"
    shutil.copy(labdata.bundled_path(), copy)
    with open(copy, "ab") as f:
        f.write(b"1\t2\t3\t4\t5\t6\r\n")
    monkeypatch.setattr(labdata, "bundled_path", lambda: copy)
    out = tmp_path / "out"
    result = invoke("--out", str(out))
    assert result.exit_code == 2 and "sha1" in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_help_is_fast_and_imports_neither_torch_nor_matplotlib_nor_the_commands():
    code = (
        "import sys; from adamlab.lab.cli import main\n"
        "try: main(['--help'])\n"
        "except SystemExit as e: assert e.code == 0\n"
        "heavy = {'torch', 'matplotlib', 'adamlab.lab.sweep', 'adamlab.lab.frameworks.torch_chapter'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert f"  {name} " in done.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_registered_command_loads_and_has_the_standard_options(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    for option in ("--json", "--out", "--seed", "--quiet"):
        assert option in result.stdout


def test_version_and_python_dash_m():
    import adamlab

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"adamlab {adamlab.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "adamlab", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"adamlab {adamlab.__version__}\n", done.stderr


@pytest.mark.parametrize(("typed", "meant"), [("swep", "sweep"), ("chaptr", "chapter"), ("init-batch", "init-batches")])
def test_a_mistyped_command_gets_a_suggestion(typed, meant):
    result = invoke(typed)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"no such command '{typed}'; did you mean '{meant}'?" in result.stderr


def test_trainer_is_a_fixed_choice(tmp_path):
    result = invoke("train", "--trainer", "scrach", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "'scrach' is not one of 'scratch', 'concise'" in result.stderr
    assert "[scratch|concise]" in invoke("train", "--help").stdout


def test_one_name_for_the_figure_format_option():
    for name in ("chapter", "train", "sweep", "bias", "decay", "counterexample", "init-batches", "compare"):
        help_text = invoke(name, "--help").stdout
        assert "--plot-format [png|svg]" in help_text and "--format" not in help_text, name


def test_help_says_how_long_each_mode_takes():
    assert "13 s measured" in invoke("--help").stdout and "13 s measured" in invoke("chapter", "--help").stdout
    assert "58 s" in " ".join(invoke("report", "--help").stdout.split())
    sweep_help = " ".join(invoke("sweep", "--help").stdout.split())
    assert "--full" in sweep_help and "minutes" in sweep_help and "ETA" in sweep_help


def test_ctrl_c_keeps_the_runs_that_finished(tmp_path, monkeypatch):
    from adamlab.lab import chapter as chapter_module

    real, calls = chapter_module.train, []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chapter_module, "train", interrupted_on_the_third)
    out = tmp_path / "o"
    result = invoke("--epochs", "1", "--json", "--out", str(out))
    assert result.exit_code == 130
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "partial" and json.loads(result.stdout) == doc
    assert [r["name"] for r in doc["results"]["runs"]] == ["scratch Adam", "torch.optim.Adam"]
    assert len(doc["results"]["planned_runs"]) == 5
    assert doc["conclusions"][0] == "Interrupted: 2 of 5 runs finished; only those are reported."
    assert (out / "loss.png").exists()


def test_ctrl_c_before_anything_finished_writes_nothing(tmp_path, monkeypatch):
    from adamlab.lab import chapter as chapter_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chapter_module, "train", interrupted)
    out = tmp_path / "o"
    result = invoke("--epochs", "1", "--out", str(out))
    assert result.exit_code == 130 and "nothing written" in result.stderr
    assert not (out / "results.json").exists()


def test_ctrl_c_in_a_sweep_keeps_the_finished_runs(tmp_path, monkeypatch):
    from adamlab.lab import sweep

    real, calls = sweep._train, []

    def interrupted_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "_train", interrupted_on_the_fourth)
    out = tmp_path / "o"
    args = ["--optimizer", "adam", "--points", "3", "--seeds", "2", "--batch-sizes", "10", "--jobs", "1"]
    result = CliRunner().invoke(sweep.command, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 130
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["status"] == "partial" and len(doc["results"]["runs"]) == 3 and doc["results"]["planned_runs"] == 6
    assert doc["conclusions"][0].startswith("Interrupted: 3 of 6 runs finished")


def test_gitignore_names_the_default_output_folder():
    from pathlib import Path

    from adamlab.lab.cli import DEFAULT_OUT

    root = Path(__file__).resolve().parents[2]
    assert f"/{DEFAULT_OUT}/" in (root / ".gitignore").read_text().splitlines()
