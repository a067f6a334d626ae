"""Issue 8 §2: a lab run killed with SIGKILL and resumed ends bitwise where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from adamlab.lab import checkpoint as ckpt
from adamlab.lab.cli import cli
from adamlab.lab.data import load
from adamlab.lab.loop import RunConfig, train
from adamlab.lab.resume import Checkpointing, checkpoint_path


def _path(out: Path, config: RunConfig) -> Path:
    return checkpoint_path(out / "checkpoints", config)


CASES = {
    "scratch": (RunConfig("scratch", "yogi", 0.01, 10, 4, 5), ["--trainer", "scratch", "--optimizer", "yogi"]),
    "concise": (
        RunConfig("concise", "adamlab.Adam", 0.01, 10, 2, 5),
        ["--trainer", "concise", "--optimizer", "adamlab.Adam"],
    ),
}


def _command(args: list[str], out: Path, every: int, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "adamlab.lab.cli", "train", *args, "--seed", "5", "--quiet", "--out", str(out)]
    epochs = ["--epochs", "4" if "scratch" in args else "2"]
    return [*base, *epochs, "--checkpoint-every", str(every), *(["--resume"] if resume else [])]


def _run_and_kill(cmd: list[str], checkpoint: Path, rng: random.Random) -> bool:
    """Start ``cmd``, SIGKILL it a random moment after it has checkpointed; True if the kill landed
    (the process had not exited by itself): mid-run, or after training while writing outputs."""
    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != before:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait()
    assert rc in (0, -signal.SIGKILL), proc.stderr.read()
    return rc == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path, case):
    config, args = CASES[case]
    rng = random.Random(os.urandom(8))
    every = rng.choice([1, 2, 3])  # the resumed run redoes the steps since the last checkpoint
    out = tmp_path / "out"
    checkpoint = _path(out, config)

    killed = _run_and_kill(_command(args, out, every, resume=False), checkpoint, rng)
    state = ckpt.load(checkpoint)  # whatever moment the kill hit, the checkpoint on disk is whole
    # Resume in this process (the command line's resume is what test_resume_* below run).
    data = load()
    resumed = train(config, data, checkpoint=Checkpointing(checkpoint, config, data, every=every, resume=True))
    uninterrupted = train(config, data)

    assert resumed.losses == uninterrupted.losses
    assert resumed.epochs == uninterrupted.epochs
    assert resumed.parameters == uninterrupted.parameters
    assert resumed.final_loss == uninterrupted.final_loss
    assert resumed.resumed_at_step == state["step"]
    if killed:  # mid-run, or after the last step while the outputs were being written
        assert 0 < state["step"] <= uninterrupted.steps


def _make_checkpoint(out: Path) -> Path:
    args = ["train", "--epochs", "1", "--checkpoint-every", "40", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return _path(out, RunConfig("scratch", "adam", 0.01, 10, 1, 0))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[len(raw) - 100] ^= 0x01
    p.write_bytes(bytes(raw))


CORRUPTIONS = {
    "truncated": (_truncate, "truncated"),
    "header only": (lambda p: p.write_bytes(p.read_bytes()[:30]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "not an adamlab checkpoint"),
    "bit flip": (_flip, "corrupt"),
    "foreign file": (lambda p: torch.save({"w": torch.zeros(1)}, p), "not an adamlab checkpoint"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_checkpoint_is_refused_with_exit_2(tmp_path, case):
    out = tmp_path / "out"
    path = _make_checkpoint(out)
    corrupt, message = CORRUPTIONS[case]
    corrupt(path)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load(path)
    results_before = (out / "train.json").read_bytes()
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--resume", "--out", str(out)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("adamlab: error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert (out / "train.json").read_bytes() == results_before  # nothing was used or rewritten


@pytest.mark.parametrize("change", [["--lr", "0.02"], ["--seed", "1"], ["--batch-size", "20"]])
def test_a_checkpoint_of_another_config_is_refused(tmp_path, change):
    out = tmp_path / "out"
    _make_checkpoint(out)
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", *change, "--resume", "--out", str(out)])
    assert result.exit_code == 2 and "another configuration" in result.stderr


def test_resume_of_a_finished_run_returns_its_result(tmp_path):
    out = tmp_path / "out"
    _make_checkpoint(out)
    first = json.loads((out / "train.json").read_text())["results"]["runs"][0]
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--resume", "--json", "--out", str(out)])
    again = json.loads(result.stdout)["results"]["runs"][0]
    assert again["losses"] == first["losses"] and again["parameters"] == first["parameters"]
    assert again["train_seconds"] == first["train_seconds"] and again["resumed_at_step"] == first["steps"]


def test_global_rng_states_round_trip():
    import numpy as np

    states = ckpt.global_rng_states()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_global_rng_states(states)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_chapter_checkpoints_every_run_and_resumes_them(tmp_path):
    out = tmp_path / "out"
    args = ["chapter", "--optimizer", "yogi", "--epochs", "1", "--out", str(out), "--json"]
    first = CliRunner().invoke(cli, [*args, "--checkpoint-every", "50"])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["concise-adamlab-yogi.ckpt", "scratch-yogi.ckpt"]
    stale = out / "checkpoints" / ".scratch-yogi.ckpt.abc123.tmp"  # as a writer killed mid-write leaves it
    stale.write_bytes(b"half a checkpoint")
    again = CliRunner().invoke(cli, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert not stale.exists()
    for a, b in zip(json.loads(first.stdout)["results"]["runs"], json.loads(again.stdout)["results"]["runs"]):
        assert a["losses"] == b["losses"] and a["parameters"] == b["parameters"]
        assert b["resumed_at_step"] == b["steps"] == 150
