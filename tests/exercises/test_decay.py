"""``adamlab decay``: the schedules really drive the trainer's optimizer; table, files, errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from adamlab.lab import decay as dc
from tests.lab.records import assert_valid_record


@pytest.mark.parametrize("schedule", dc.SCHEDULES)
def test_scheduled_factory_steps_the_lr_once_per_optimizer_step(schedule: str) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = dc.scheduled("adam", schedule, total_steps=40, steps_per_epoch=10)([p], lr=0.01)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
    assert lrs[0] == pytest.approx(0.01)
    expected_mid = {"constant": 0.01, "inv-sqrt": 0.01 / 3**0.5, "cosine": 0.005, "step": 0.001}[schedule]
    assert lrs[20] == pytest.approx(expected_mid, rel=1e-9)  # step 20 of 40 = epoch 2 of 4
    if schedule != "constant":
        assert lrs[-1] < lrs[0]


def test_decay_cli_two_schedules(tmp_path) -> None:
    out = tmp_path / "o"
    args = ["--schedule", "constant", "--schedule", "cosine", "--epochs", "3", "--out", str(out), "--json"]
    res = CliRunner().invoke(dc.command, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert_valid_record(doc, "decay")
    rows = {r["schedule"]: r for r in doc["results"]["table"]}
    assert set(rows) == {"constant", "cosine"}
    # annealing to 0 removes the minibatch noise at the end: less jitter, closer to the floor
    assert rows["cosine"]["last_epoch_std"] < rows["constant"]["last_epoch_std"]
    assert rows["cosine"]["last_epoch_mean_gap"] < rows["constant"]["last_epoch_mean_gap"]
    assert all(r["gap_to_floor"] > -1e-6 for r in rows.values())  # nothing beats least squares
    saved = json.loads((out / "decay.json").read_text())
    assert saved == doc and saved["config"]["epochs"] == 3 and len(saved["results"]["runs"]) == 2
    assert any("cosine" in line for line in doc["conclusions"])
    assert (out / "decay.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, needle", [(["--lr", "-1"], "learning rate"), (["--epochs", "0"], "epochs")])
def test_decay_bad_input(tmp_path, args, needle) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(dc.command, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
