"""Defects found by review of the redesigned lab, each reproduced here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adamlab.lab.chapter import ChapterResult


def test_epochs_beyond_memory_are_refused_before_any_work(tmp_path: Path) -> None:
    """`train --epochs 1e20` ran until killed (its curve grows without bound); now one line, exit 2."""
    out = tmp_path / "o"
    done = subprocess.run(
        [sys.executable, "-m", "adamlab", "train", "--epochs", "100000000000000000000", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "--epochs 100000000000000000000" in done.stderr
    assert not out.exists()


class _Run:
    def __init__(self, name: str, loss: float, params: dict) -> None:
        self.name, self.final_loss, self.parameters, self.status = name, loss, params, "ok"
        self.config = type("C", (), {"trainer": "concise", "optimizer": name})()


def _conclusions(a: _Run, b: _Run) -> list[str]:
    result = ChapterResult.__new__(ChapterResult)
    result.runs, result.floor = [a, b], 0.2417
    return result.conclusions()


def test_reproduces_is_said_only_when_the_numbers_agree() -> None:
    same = _conclusions(_Run("torch.optim.Adam", 0.245, {"w": [1.0]}), _Run("adamlab.Adam", 0.245, {"w": [1.0]}))
    assert any("adamlab.Adam reproduces torch.optim.Adam on this data: bitwise" in line for line in same)
    apart = _conclusions(
        _Run("keras.optimizers.Adam", 0.2450, {"w": [1.0]}), _Run("adamlab.keras.Adam", 0.2460, {"w": [1.1]})
    )
    assert not any("reproduces" in line for line in apart)
    assert any("adamlab.keras.Adam differs from keras.optimizers.Adam" in line for line in apart)


def test_save_refuses_a_single_run_by_name(tmp_path: Path) -> None:
    """`lab.save(lab.train(...))` was an AttributeError naming nothing; now a TypeError that says
    what save takes, and nothing is written."""
    import pytest

    from adamlab import lab

    run = lab.train(lab.RunConfig("scratch", "adam", epochs=1))
    with pytest.raises(TypeError, match=r"save\(\) takes an experiment's result.*got a RunResult"):
        lab.save(run, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    doc = lab.save(lab.run_chapter(configs=[run.config], command="train"), tmp_path / "o")
    assert doc["command"] == "train" and (tmp_path / "o" / "train.json").is_file()
