"""Issue 18 items 11 and 17: a checkpoint whose bytes hash right but whose payload is wrong
(edited and re-hashed, or written by another version) is refused with one line naming
what is wrong — never a traceback, never a silent run from a bad state."""

from __future__ import annotations

import hashlib
import io
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from adamlab.lab import checkpoint as ckpt
from adamlab.lab.cli import cli
from adamlab.lab.data import load
from adamlab.lab.loop import RunConfig, RunResult, train
from adamlab.lab.resume import Checkpointing, checkpoint_path

SCRATCH = RunConfig("scratch", "adam", 0.01, 10, 1, 0)
CONCISE = RunConfig("concise", "torch.optim.Adam", 0.01, 10, 1, 0)


def run(
    config: RunConfig, *, checkpoint: Path | None = None, checkpoint_every: int = 0, resume: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:  # fmt: skip
    """One run of ``config`` on its data, checkpointed to (or resumed from) ``checkpoint``."""
    data = load(config.data)
    hook = None
    if checkpoint is not None:
        hook = Checkpointing(checkpoint, config, data, every=checkpoint_every, resume=resume)
    return train(config, data, on_progress=progress, checkpoint=hook)


class _Stop(Exception):
    pass


def _mid_run_checkpoint(config: RunConfig, path: Path, stop_at: int = 60) -> dict[str, Any]:
    """A checkpoint written mid-run (every 10 steps; the run is stopped after ``stop_at``)."""

    def progress(step: int, total: int) -> None:
        if step >= stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        run(config, checkpoint=path, checkpoint_every=10, progress=progress)
    payload = ckpt.load(path)
    assert 0 < payload["step"] < 150
    return payload


def _write_raw(path: Path, payload: Any, *, magic: bytes = ckpt.MAGIC) -> None:
    """Write ``payload`` as is (no versions added), with a valid length and digest."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    _write_body(path, buffer.getvalue(), magic=magic)


def _write_body(path: Path, body: bytes, *, magic: bytes = ckpt.MAGIC) -> None:
    path.write_bytes(magic + len(body).to_bytes(8, "big") + hashlib.sha256(body).digest() + body)


def _set(*keys: Any, value: Any) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        target = p
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value(target[keys[-1]]) if callable(value) else value

    return edit


def _pop(key: str) -> Callable[[dict], None]:
    return lambda p: p.pop(key)


SCRATCH_EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "no model": (_pop("model"), "wrong structure (missing ['model'])"),
    "extra key": (_set("extra", value=1), "unexpected ['extra']"),
    "step -5": (_set("step", value=-5), "has step -5, not an integer in [0, 150]"),
    "step past the end": (_set("step", value=151), "has step 151"),
    "step a bool": (_set("step", value=True), "has step True"),
    "step a float": (_set("step", value=60.0), "has step 60.0"),
    "truncated perm": (_set("perm", value=lambda t: t[:10]), "not 1500 int64 indices"),
    "float perm": (_set("perm", value=lambda t: t.float()), "not 1500 int64 indices"),
    "perm with a repeat": (_set("perm", value=lambda t: torch.cat([t[:1], t[:-1]])), "not a permutation"),
    "no perm mid-run": (_set("perm", value=None), "has no data order"),
    "broadcast theta": (_set("model", "theta", value=torch.zeros(1, 1)), "model.theta of torch.float32 (1, 1)"),
    "float64 theta": (_set("model", "theta", value=lambda t: t.double()), "model.theta of torch.float64"),
    "NaN theta": (_set("model", "theta", value=lambda t: t * math.nan), "non-finite values in model.theta"),
    "negative s": (_set("model", "s", value=lambda t: -t - 1), "negative values in model.s"),
    "t -5": (_set("model", "t", value=-5), "model.t = -5, not the step"),
    "t not the step": (_set("model", "t", value=lambda t: t + 1), "not the step"),
    "short generator": (_set("generator", value=torch.zeros(3, dtype=torch.uint8)), "generator state"),
    "torch rng": (_set("global_rng", "torch", value=torch.zeros(3, dtype=torch.uint8)), "global RNG"),
    "python rng": (_set("global_rng", "python", value=(3, (1, 2), None)), "global RNG"),
    "numpy rng": (_set("global_rng", "numpy", value=("MT19937", torch.zeros(3), 0, 0, 0.0)), "global RNG"),
    "curve lengths": (_set("losses", value=lambda v: v[:-1]), "curve"),
    "curve order": (_set("epochs", value=lambda v: v[::-1]), "curve whose epochs are not increasing"),
    "curve past the end": (_set("epochs", value=lambda v: [*v[:-1], 5.0]), "not increasing in (0, 1.0]"),
    "curve not floats": (_set("losses", value=lambda v: [str(x) for x in v]), "not floats"),
    "NaN time": (_set("train_seconds", value=math.nan), "training time of nan"),
    "other versions": (_set("versions", value={"adamlab": "0.0.1", "torch": "1.0"}), "adamlab 0.0.1, torch 1.0"),
    "other config": (_set("config", "lr", value=0.5), "another configuration: lr 0.5 there, 0.01 here"),
    "other data": (_set("data_sha1", value="0" * 40), "was made on other data"),
    "tensor sha1": (_set("data_sha1", value=torch.zeros(3)), "was made on other data"),
    "tensor in config": (_set("config", "lr", value=torch.zeros(3)), "another configuration: lr"),
    "tensor versions": (_set("versions", "torch", value=torch.zeros(3)), "was written by"),
    "vector t": (_set("model", "t", value=torch.zeros(3)), "model.t = "),
}

CONCISE_EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "NaN lr": (
        _set("model", "optimizer", "param_groups", 0, "lr", value=math.nan),
        "model.optimizer.param_groups.0.lr = nan, this run's is 0.01",
    ),
    "betas": (_set("model", "optimizer", "param_groups", 0, "betas", value=(1.5, 2.0)), "betas.0 = 1.5"),
    "one param": (_set("model", "optimizer", "param_groups", 0, "params", value=[0]), "params of the wrong"),
    "step -5": (
        _set("model", "optimizer", "state", 0, "step", value=torch.tensor(-5.0)),
        "model.optimizer.state.0.step = -5.0, not the step",
    ),
    "exp_avg shape": (
        _set("model", "optimizer", "state", 0, "exp_avg", value=torch.zeros(3)),
        "model.optimizer.state.0.exp_avg of torch.float32 (3,), expected torch.float32 (1, 5)",
    ),
    "negative exp_avg_sq": (
        _set("model", "optimizer", "state", 1, "exp_avg_sq", value=lambda t: -t - 1),
        "negative values in model.optimizer.state.1.exp_avg_sq",
    ),
    "weight shape": (_set("model", "net", "weight", value=torch.zeros(1)), "model.net.weight of torch.float32 (1,)"),
    "vector step": (
        _set("model", "optimizer", "state", 0, "step", value=torch.zeros(3)),
        "model.optimizer.state.0.step of the wrong type, dtype or shape",
    ),
    "no state": (_set("model", "optimizer", "state", value={}), "model.optimizer.state = []"),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        name: (root / f"{name}.ckpt", _mid_run_checkpoint(config, root / f"{name}.ckpt"))
        for name, config in (("scratch", SCRATCH), ("concise", CONCISE))
    }


def _edited(saved, kind: str, edit, tmp_path: Path) -> Path:
    source, _ = saved[kind]
    payload = torch.load(io.BytesIO(source.read_bytes()[ckpt._HEADER :]), weights_only=True)
    edit(payload)
    path = tmp_path / "edited.ckpt"
    _write_raw(path, payload)
    return path


@pytest.mark.parametrize("case", SCRATCH_EDITS)
def test_an_edited_scratch_payload_is_refused(saved, tmp_path, case):
    edit, message = SCRATCH_EDITS[case]
    path = _edited(saved, "scratch", edit, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=_literal(message)):
        run(SCRATCH, checkpoint=path, resume=True)


@pytest.mark.parametrize("case", CONCISE_EDITS)
def test_an_edited_concise_payload_is_refused(saved, tmp_path, case):
    edit, message = CONCISE_EDITS[case]
    path = _edited(saved, "concise", edit, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=_literal(message)):
        run(CONCISE, checkpoint=path, resume=True)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


def test_the_unedited_payloads_resume_bitwise(saved):
    for kind, config in (("scratch", SCRATCH), ("concise", CONCISE)):
        path, payload = saved[kind]
        resumed = run(config, checkpoint=path, resume=True)
        assert resumed.resumed_at_step == payload["step"]
        assert resumed.parameters == run(config).parameters


def test_a_diverged_runs_checkpoint_still_resumes(tmp_path):
    # SGD at lr 1e3 diverges: non-finite parameters are then consistent with the curve.
    config = RunConfig("concise", "adamlab.lab.family.sgd", 1e3, 10, 1, 0)
    path = tmp_path / "diverged.ckpt"
    payload = _mid_run_checkpoint(config, path, stop_at=100)
    assert not all(math.isfinite(x) for x in payload["losses"])
    resumed = run(config, checkpoint=path, resume=True)
    assert resumed.resumed_at_step == payload["step"] and resumed.steps == 150


def test_a_checkpoint_of_another_format_is_refused(saved, tmp_path):
    path = tmp_path / "old.ckpt"
    _write_raw(path, {"anything": 1}, magic=b"ADAMLAB-CHECKPOINT/1\n")
    with pytest.raises(ckpt.CheckpointError, match=r"has format '1', this adamlab reads format 2"):
        run(SCRATCH, checkpoint=path, resume=True)


def test_a_payload_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.ckpt"
    _write_raw(path, [1, 2, 3])
    with pytest.raises(ckpt.CheckpointError, match="holds a list"):
        run(SCRATCH, checkpoint=path, resume=True)


def _out_with_checkpoint(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--checkpoint-every", "40", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("case", ["step -5", "broadcast theta", "no model", "other versions"])
def test_the_command_line_says_one_line(saved, tmp_path, case):
    out = _out_with_checkpoint(tmp_path)
    edit, message = SCRATCH_EDITS[case]
    target = checkpoint_path(out / "checkpoints", SCRATCH)
    target.write_bytes(_edited(saved, "scratch", edit, tmp_path).read_bytes())
    before = (out / "train.json").read_bytes()
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--resume", "--out", str(out)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.startswith("adamlab: error: checkpoint ") and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert (out / "train.json").read_bytes() == before


def test_no_torch_warning_before_a_checkpoint_error(tmp_path):
    # A TorchScript archive as the payload: torch.load warns that it looks like one, then
    # refuses it under weights_only. The refusal is the one line; the warning is not shown.
    out = _out_with_checkpoint(tmp_path)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), buffer)
    _write_body(checkpoint_path(out / "checkpoints", SCRATCH), buffer.getvalue())
    # In a child process: pytest would catch the warning before it reached stderr.
    args = ["train", "--epochs", "1", "--resume", "--out", str(out)]
    code = f"from adamlab.lab.cli import main\nmain({args!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("adamlab: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot be loaded" in proc.stderr and "Warning" not in proc.stderr


def test_the_same_data_under_another_path_spelling_resumes(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("\n".join(f"{i % 7},{i % 5},{(i * 3) % 11}" for i in range(60)))
    out = _out_with_checkpoint(tmp_path, "--data", str(data))
    first = (out / "train.json").read_text()
    other = str(tmp_path / "." / "sub" / ".." / "d.csv")
    (tmp_path / "sub").mkdir()
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--resume", "--data", other, "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    a, b = json.loads(first)["results"]["runs"][0], json.loads((out / "train.json").read_text())["results"]["runs"][0]
    assert a["parameters"] == b["parameters"] and b["resumed_at_step"] == b["steps"]


def test_a_differing_field_is_named(tmp_path):
    out = _out_with_checkpoint(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--epochs", "1", "--lr", "0.02", "--resume", "--out", str(out)])
    assert result.exit_code == 2
    assert "belongs to another configuration: lr 0.01 there, 0.02 here" in result.stderr, result.stderr


def test_resume_without_checkpoint_every_saves_the_finished_run(tmp_path):
    path = tmp_path / "scratch.ckpt"
    middle = _mid_run_checkpoint(SCRATCH, path)
    finished = run(SCRATCH, checkpoint=path, resume=True)  # no checkpoint_every
    assert finished.resumed_at_step == middle["step"]
    assert ckpt.load(path)["step"] == finished.steps  # not left at the old step
    again = run(SCRATCH, checkpoint=path, resume=True)
    assert again.resumed_at_step == again.steps and again.parameters == finished.parameters
