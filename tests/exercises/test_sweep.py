"""``adamlab sweep`` on a tiny grid: diverged runs marked (not dropped), ranges, files, errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.lab.records import assert_valid_record

from adamlab.lab import sweep as sw


def test_tiny_sweep_marks_divergence_and_names_ranges(tmp_path) -> None:
    out = tmp_path / "o"
    args = ["--optimizer", "adam", "--optimizer", "sgd", "--lr-min", "1e-3", "--lr-max", "10", "--points", "3"]
    args += ["--seeds", "1", "--batch-sizes", "100", "--jobs", "1", "--out", str(out), "--json"]
    res = CliRunner().invoke(sw.command, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "sweep.json").read_text())
    assert_valid_record(doc, "sweep")
    runs = doc["results"]["runs"]
    assert len(runs) == 2 * 3 + 3  # main axis, plus adam at batch 100
    sgd_at_10 = next(r for r in runs if r["optimizer"] == "sgd" and r["lr"] == pytest.approx(10))
    assert sgd_at_10["status"] == "diverged"  # kept and marked
    adam_at_01 = next(r for r in runs if r["optimizer"] == "adam" and r["lr"] == pytest.approx(0.1))
    assert adam_at_01["status"] == "ok" and adam_at_01["final_loss"] < 0.3
    ranges = {(r["optimizer"], r["batch_size"]): r for r in doc["results"]["ranges"]}
    assert ranges[("sgd", 10)]["stable"][1] == pytest.approx(0.1)  # lr 10 is outside it
    assert ranges[("adam", 100)]["stable"] is not None
    assert doc["config"]["seeds"] == 1 and "numpy" in doc["versions"]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_parallel_equals_serial() -> None:
    cfg = sw.SweepConfig(optimizers=("yogi",), lr_min=0.01, lr_max=0.1, points=4, seeds=2, batch_sizes=(), epochs=1)
    serial = sw.sweep(cfg, jobs=1)
    parallel = sw.sweep(cfg, jobs=2)
    key = [(r["lr"], r["seed"]) for r in serial.runs]
    assert key == [(r["lr"], r["seed"]) for r in parallel.runs]
    assert [r["final_loss"] for r in serial.runs] == [r["final_loss"] for r in parallel.runs]  # seeded: identical


def test_widest_block() -> None:
    assert sw._widest([True, True, False, True, True, True, False]) == (3, 5)
    assert sw._widest([False, False]) is None


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--optimizer", "lion"], "unknown optimizer"),
        (["--lr-min", "0"], "--lr-min"),
        (["--points", "0"], "--points"),
        (["--batch-sizes", "a,b"], "--batch-sizes"),
        (["--batch-sizes", ","], "--batch-sizes"),
        (["--batch-sizes", ""], "--batch-sizes"),
        (["--batch-sizes", "50,,250"], "--batch-sizes"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_sweep_bad_input(tmp_path, args, needle) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(sw.command, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
