"""The lab's output folder (issue 18 items 7-10) and its one record shape (issue 17).

Concurrent runs on one --out, results and figure replaced together, diverged values as
null with a status, every output path checked before any work; every command's record
validated against the one schema, --json equal to the file.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adamlab.lab import chapter, loop
from adamlab.lab.cli import cli
from adamlab.lab.results import LOCK_FILE, SCHEMA_VERSION, Outputs
from tests.lab.records import assert_valid_record, strict_loads

TRAIN = ["train", "--epochs", "1", "--batch-size", "100"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("adamlab: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any run starts: output problems must surface before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr(loop, "train", refuse)
    monkeypatch.setattr(chapter, "train", refuse)


# --- item 7: concurrent runs ------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_is_refused_with_one_line(tmp_path, no_training):
    out = tmp_path / "out"
    with Outputs(out, {"results": "x.json"}):  # another run holds the folder
        stale = out / "checkpoints" / ".scratch-adam.ckpt.inflight.tmp"  # its in-flight checkpoint
        stale.parent.mkdir()
        stale.write_bytes(b"being written")
        message = one_line_error(invoke(*TRAIN, "--out", str(out)))
        assert f"another adamlab run (pid {os.getpid()}) is writing to {out}" in message
        assert stale.exists()  # the refused run touched nothing of the running one


def test_two_processes_on_one_folder_the_first_finishes(tmp_path):
    import signal

    out = tmp_path / "out"
    first_cmd = [sys.executable, "-m", "adamlab", "train", "--epochs", "2", "--checkpoint-every", "50", "--quiet"]
    first = subprocess.Popen([*first_cmd, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((out / "checkpoints").glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # held mid-run (whatever the machine's speed) while the second starts
    try:
        second = subprocess.run(
            [sys.executable, "-m", "adamlab", "train", "--epochs", "1", "--quiet", "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert second.returncode == 2 and "another adamlab run" in second.stderr, second.stderr
    assert second.stderr.count("\n") == 1
    assert json.loads((out / "train.json").read_text())["config"]["epochs"] == {"scratch Adam": 2}


def test_leftovers_of_dead_runs_are_removed_by_the_next_lock_holder(tmp_path):
    out = tmp_path / "out"
    (out / ".adamlab-stage-dead").mkdir(parents=True)
    (out / ".adamlab-stage-dead" / "train.json").write_text("{")
    (out / ".results.json.x1.tmp").write_text("{")  # an atomic write of an older version
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".scratch-adam.ckpt.y2.tmp").write_bytes(b"half")
    (out / "keep.txt").write_text("the user's")
    result = invoke(*TRAIN, "--out", str(out))
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()} | {p.name for p in (out / "checkpoints").iterdir()}
    assert names == {LOCK_FILE, "train.json", "train.png", "keep.txt", "checkpoints"}


# --- item 8: results and figure replaced together ------------------------------------------


def test_a_full_disk_leaves_the_previous_results_and_figure_and_names_the_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke(*TRAIN, "--out", str(out)).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("train.json", "train.png")}
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("train.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    message = one_line_error(invoke(*TRAIN, "--seed", "1", "--out", str(out)), code=1)
    assert f"cannot write {out / 'train.json'}: No space left on device" in message
    assert {name: (out / name).read_bytes() for name in before} == before  # neither file replaced
    assert not list(out.glob(".adamlab-stage-*"))


def test_a_new_figure_format_removes_the_old_figure(tmp_path):
    out = tmp_path / "out"
    assert invoke(*TRAIN, "--out", str(out)).exit_code == 0
    result = invoke(*TRAIN, "--plot-format", "svg", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert not (out / "train.png").exists() and (out / "train.svg").exists()
    assert json.loads(result.stdout)["files"] == {"results": str(out / "train.json"), "figure": str(out / "train.svg")}


# --- item 9: diverged values --------------------------------------------------------------


def test_a_diverged_run_is_null_with_a_status_in_strict_json(tmp_path):
    out = tmp_path / "out"
    result = invoke(*TRAIN, "--lr", "1e30", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = strict_loads(result.stdout)  # no NaN/Infinity tokens
    assert strict_loads((out / "train.json").read_text()) == doc
    run = doc["results"]["runs"][0]
    assert run["status"] == "diverged" and run["final_loss"] is None and None in run["losses"]
    assert any(line.startswith("Diverged") for line in doc["conclusions"])
    assert_valid_record(doc, "train")


def test_sweep_uses_the_same_rule(tmp_path):
    from adamlab.lab import sweep

    out = tmp_path / "out"
    args = ["--optimizer", "sgd", "--lr-min", "10", "--lr-max", "1000", "--points", "2", "--seeds", "1"]
    result = CliRunner().invoke(
        sweep.command, [*args, "--batch-sizes", "10", "--jobs", "1", "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    runs = strict_loads(result.stdout)["results"]["runs"]
    assert {r["status"] for r in runs} == {"diverged"}
    assert any(r["final_loss"] is None for r in runs)
    assert "diverged" not in runs[0] or runs[0]["diverged"] is None  # one field: status


# --- item 10: every output path checked before any work ----------------------------------


def _dangling(tmp_path: Path) -> str:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    return str(link)


def _results_is_a_folder(tmp_path: Path) -> str:
    (tmp_path / "o" / "train.json").mkdir(parents=True)
    return str(tmp_path / "o")


@pytest.mark.parametrize(
    "make_out, needle",
    [
        (lambda d: "", "--out is empty"),
        (lambda d: " ", "--out is empty"),
        (_dangling, "dangling symbolic link"),
        (lambda d: "/proc/adamlab-test", "cannot create it"),
        (_results_is_a_folder, "train.json is a directory"),
    ],
)
def test_output_problems_surface_before_any_work(tmp_path, no_training, make_out, needle):
    out = make_out(tmp_path)
    message = one_line_error(invoke(*TRAIN, "--out", out))
    assert needle in message
    assert ".tmp" not in message  # the message names the file, not a temp file


def test_an_unwritable_checkpoint_folder_is_refused_before_any_work(tmp_path, no_training, monkeypatch):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    import tempfile

    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "checkpoints":
            raise PermissionError(errno.EACCES, "Permission denied")  # what a read-only folder says
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    message = one_line_error(invoke(*TRAIN, "--checkpoint-every", "5", "--out", str(out)))
    assert f"checkpoint folder {out / 'checkpoints'} is not writable (Permission denied)" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_for_real(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints").chmod(0o555)
    message = one_line_error(invoke(*TRAIN, "--checkpoint-every", "5", "--out", str(out)))
    assert "not writable" in message


# --- issue 17: one record ---------------------------------------------------------------


def test_the_chapter_record_is_valid_and_fills_its_defaults(tmp_path):
    out = tmp_path / "out"
    result = invoke("--optimizer", "yogi", "--epochs", "1", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = strict_loads(result.stdout)
    assert result.stdout == (out / "results.json").read_text()  # byte for byte
    assert_valid_record(doc, "chapter")
    assert doc["schema_version"] == SCHEMA_VERSION and doc["status"] == "complete"
    assert doc["config"]["framework"] == "torch" and doc["config"]["data"].startswith("bundled:")
    assert doc["config"]["epochs"] == {"scratch Yogi": 1, "adamlab.Yogi": 1}


def test_the_schema_refuses_what_breaks_the_shape(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "out"
    doc = json.loads(invoke(*TRAIN, "--json", "--out", str(out)).stdout)
    assert_valid_record(doc, "train")
    for broken in (
        {**doc, "schema_version": 1},
        {**doc, "config": {**doc["config"], "lr": None}},  # a default not filled in
        {k: v for k, v in doc.items() if k != "conclusions"},
        {**doc, "results": {**doc["results"], "runs": [{**doc["results"]["runs"][0], "status": "fine"}]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            assert_valid_record(broken)
