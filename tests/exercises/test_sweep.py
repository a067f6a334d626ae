"""``adamlab sweep`` on a tiny grid: diverged runs marked (not dropped), ranges, files, errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adamlab.lab import sweep as sw
from tests.lab.records import assert_valid_record


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
    stable = ranges[("sgd", 10)]["stable"]
    assert f"sgd (batch 10) is stable for lr {stable[0]:.2g} to {stable[1]:.2g};" in " ".join(doc["conclusions"])
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


def test_progress_counts_optimizer_steps_not_runs() -> None:
    """An honest ETA: a run at batch 10 costs 10x the steps of one at batch 100, and says so."""
    cfg = sw.SweepConfig(optimizers=("adam",), lr_min=0.01, lr_max=0.1, points=2, seeds=1, batch_sizes=(100,),
                         batch_optimizers=("adam",))  # fmt: skip

    class Recorder:
        def __init__(self) -> None:
            self.advances: list[int] = []

        def advance(self, n: int = 1) -> None:
            self.advances.append(n)

    bar = Recorder()
    sw.sweep(cfg, jobs=1, progress=bar)
    assert bar.advances == [150, 150, 15, 15] and sum(bar.advances) == sum(cfg.steps(1500))


def test_the_loss_axes_read_as_plain_numbers() -> None:
    cfg = sw.SweepConfig(optimizers=("adam", "sgd"), lr_min=1e-3, lr_max=10.0, points=3, seeds=1, batch_sizes=(100,),
                         batch_optimizers=("adam",))  # fmt: skip
    fig = sw.sweep(cfg, jobs=1).plot()
    from adamlab.lab.plots import figure_bytes

    figure_bytes(fig)  # draws it: the tick labels exist now
    for ax in fig.axes:
        if ax.get_yscale() == "log":
            labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
            assert labels and not any("times" in label or "^" in label for label in labels), labels
            assert all(float(label) > 0 for label in labels)
    sizes = {ax.title.get_fontsize() for ax in fig.axes}
    assert sizes == {10.0}  # the lab's one title size
