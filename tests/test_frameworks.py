"""The chapter in TensorFlow and MXNet: the shared protocol, the five runs, the loss band.

The protocol tests need NumPy only. The TensorFlow chapter runs where ``tensorflow`` and
``keras`` are installed (``nox -s keras``), the MXNet chapter in the MXNet environment
(``nox -s mxnet``); elsewhere they skip with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest

from adamlab.lab.chapter import chapter_configs, run_chapter
from adamlab.lab.data import LabInputError, least_squares_floor, load
from adamlab.lab.frameworks import CHAPTER_RUNS
from adamlab.lab.loop import RunConfig, train

BAND = (0.2417, 0.2500)  # the band for every final loss


class Recorder:
    """A model that records what the protocol feeds it and takes no step at all."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        self.batches.append(X.copy())

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return float(len(self.batches))

    def implementation(self) -> str:
        return "recorder"


class RecorderSession:
    """What the loop drives, around a :class:`Recorder`; the order from ``default_rng(seed)``."""

    def __init__(self, model: Recorder, data, seed: int = 0) -> None:
        self.model, self.X, self.y = model, data.X, data.y
        self._rng = np.random.default_rng(seed)

    def permutation(self, n: int) -> np.ndarray:
        return self._rng.permutation(n)

    def parameters(self) -> dict[str, list[float]]:
        return {"n": [float(len(self.model.batches))]}


def test_protocol_batches_evaluation_points_and_permutations() -> None:
    data = load()
    model = Recorder()
    config = RunConfig("scratch", "adam", epochs=2, framework="numpy")
    result = train(config, data, session=RecorderSession(model, data))
    assert len(model.batches) == result.steps == 300  # 1500 rows, batch 10, 2 epochs
    assert len(result.epochs) == 15  # every 200 examples: the book's 15 points for 2 epochs
    assert result.epochs[0] == pytest.approx(200 / 1500) and result.epochs[-1] == 2.0
    assert result.losses[0] == 20.0  # evaluated after the 20th batch, not before
    first, second = np.concatenate(model.batches[:150]), np.concatenate(model.batches[150:])
    # each pass sees every row once, in a different order
    assert sorted(map(tuple, first)) == sorted(map(tuple, data.X)) == sorted(map(tuple, second))
    assert not np.array_equal(first, second)
    again = Recorder()
    train(RunConfig("scratch", "adam", epochs=2, framework="numpy"), data, session=RecorderSession(again, data))
    np.testing.assert_array_equal(np.concatenate(again.batches), np.concatenate(model.batches))  # seeded


def test_chapter_configs_mirror_the_torch_chapter() -> None:
    for framework, runs in CHAPTER_RUNS.items():
        configs = chapter_configs(framework)
        assert [(c.trainer, c.optimizer) for c in configs] == list(runs)
        assert [c.epochs for c in configs] == [2, 4, 4, 2, 4]
        assert {c.lr for c in configs} == {0.01} and {c.batch_size for c in configs} == {10}
    yogi = chapter_configs("tensorflow", optimizers=["yogi"])
    assert [c.name for c in yogi] == ["scratch Yogi", "adamlab.keras.Yogi"]
    with pytest.raises(LabInputError, match="no run of the mxnet chapter"):
        chapter_configs("mxnet", optimizers=["sgd"])


def test_bad_framework_and_torch_only_options_are_refused_before_anything_runs() -> None:
    with pytest.raises(LabInputError, match="unknown framework 'jax'"):
        run_chapter("jax")
    with pytest.raises(LabInputError, match=r"only --framework torch|not available here"):
        run_chapter("tensorflow", checkpoint_every=10, checkpoints="unused")


@pytest.mark.skipif(importlib.util.find_spec("mxnet") is not None, reason="mxnet is installed here")
def test_missing_framework_says_how_to_get_it() -> None:
    with pytest.raises(LabInputError, match="nox -s mxnet"):
        run_chapter("mxnet")


def _check_chapter(result, framework: str, tmp_path) -> None:
    floor = least_squares_floor(load())
    assert result.floor == pytest.approx(floor)
    assert [run.name for run in result.runs] == [c.name for c in chapter_configs(framework)]
    for run in result.runs:
        assert BAND[0] <= run.final_loss <= BAND[1], (run.name, run.final_loss)
        assert run.losses[0] > run.final_loss  # it trained
        assert run.book_line().startswith("loss: 0.24")
    from adamlab.lab.results import dumps, record

    doc = json.loads(dumps(record(result, {"results": str(tmp_path / "results.json")})))
    assert {r["config"]["framework"] for r in doc["results"]["runs"]} == {framework}
    assert framework in doc["versions"] and doc["config"]["framework"] == framework


@pytest.mark.slow
def test_tensorflow_chapter_lands_in_the_band(tmp_path) -> None:
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        pytest.skip("tensorflow and keras are not installed (nox -s keras)")
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "tensorflow":
        pytest.skip("Keras is already running on another backend in this process")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _check_chapter(run_chapter("tensorflow", seed=0), "tensorflow", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_mxnet_chapter_lands_in_the_band(seed: int, tmp_path) -> None:
    pytest.importorskip("mxnet", reason="mxnet is not installed (MXNet 1.9.1 needs numpy<1.24: nox -s mxnet)")
    _check_chapter(run_chapter("mxnet", seed=seed), "mxnet", tmp_path)


@pytest.mark.slow
def test_torch_is_the_lab_chapter() -> None:
    pytest.importorskip("torch", reason="torch is not installed")
    from adamlab.lab.chapter import ChapterResult

    result = run_chapter("torch", optimizers=["yogi"])
    assert isinstance(result, ChapterResult)
    assert [run.name for run in result.runs] == ["scratch Yogi", "adamlab.Yogi"]


@pytest.mark.parametrize(
    ("module", "package", "hint"),
    [("adamlab.keras", "keras", "adamlab[keras]"), ("adamlab.gluon", "mxnet", "numpy<1.24")],
)
def test_adapters_say_what_to_install(module: str, package: str, hint: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ImportError, match=re.escape(hint)):
        importlib.import_module(module)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["tensorflow", "mxnet"])
def test_the_command_starts_in_the_framework_environment(framework: str, tmp_path) -> None:
    """The README's ``adamlab --framework tensorflow|mxnet`` promise: the command itself runs there."""
    import subprocess

    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed here (ci/frameworks.sh builds its environment)")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "adamlab", "--framework", framework, "--optimizer", "yogi", "--epochs", "1"]
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([*cmd, "--out", str(out), "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["config"]["framework"] == framework and doc == json.loads((out / "results.json").read_text())
