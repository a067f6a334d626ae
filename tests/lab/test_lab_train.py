"""The trainers and the book's protocol: evaluation points, timing, data order, the updates."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.lab.chapter import run_chapter
from adamlab.lab.data import LabInputError, least_squares_floor, load
from adamlab.lab.frameworks import torch_chapter as torch_lab
from adamlab.lab.loop import RunConfig, train


def scratch(optimizer, *, data, **kwargs):
    return train(RunConfig("scratch", optimizer, **{"epochs": 2, **kwargs}), data)


def concise(optimizer, *, data, **kwargs):
    """By name, or any class or factory ``f(params, lr=...)``."""
    if isinstance(optimizer, str):
        return train(RunConfig("concise", optimizer, **{"epochs": 4, **kwargs}), data)
    name = getattr(optimizer, "__qualname__", "factory")
    return train(RunConfig("concise", name, **{"epochs": 4, **kwargs}), data, factory=optimizer)


@pytest.fixture(scope="module")
def data():
    return load()


def test_protocol_15_points_for_2_epochs_at_batch_10(data):
    result = scratch("adam", data=data)
    assert len(result.epochs) == len(result.losses) == 15
    np.testing.assert_allclose(result.epochs, [200 * k / 1500 for k in range(1, 16)])
    assert result.steps == 300
    assert result.book_line().startswith("loss: ") and result.book_line().endswith(" sec/epoch")


def test_concise_protocol_30_points_for_4_epochs(data):
    result = concise("torch.optim.Adam", data=data)
    assert len(result.epochs) == 30 and result.epochs[-1] == 4.0


def test_evaluation_is_not_timed(data, monkeypatch):
    slow = 0.05  # 15 evaluations: 0.75 s, far more than the 300 training steps take
    calls = []
    original = torch_lab.ScratchModel.loss

    def slow_loss(self, X, y):
        calls.append(1)
        time.sleep(slow)
        return original(self, X, y)

    monkeypatch.setattr(torch_lab.ScratchModel, "loss", slow_loss)
    result = scratch("adam", data=data)
    assert len(calls) == 15
    assert result.train_seconds < 15 * slow  # timed, the evaluations alone would exceed this


def test_a_fresh_permutation_every_pass(data, monkeypatch):
    seen_by_model: dict[int, list] = {}
    original = torch_lab.ScratchModel.step

    def spy(self, X1, y):
        seen_by_model.setdefault(id(self), []).append(y[:, 0].clone())
        original(self, X1, y)

    monkeypatch.setattr(torch_lab.ScratchModel, "step", spy)
    scratch("adam", data=data, epochs=3)
    seen = max(seen_by_model.values(), key=len)  # the trained model (not the untimed burn-in step)
    assert len(seen) == 450
    per_epoch = [torch.cat(seen[i * 150 : (i + 1) * 150]) for i in range(3)]
    target = torch.from_numpy(data.y[:, 0])
    for order in per_epoch:  # every pass sees every example exactly once ...
        assert torch.equal(order.sort().values, target.sort().values)
    # ... in an order of its own, and not the file's order.
    assert not torch.equal(per_epoch[0], per_epoch[1]) and not torch.equal(per_epoch[1], per_epoch[2])
    assert not torch.equal(per_epoch[0], target)


def test_the_seed_fixes_the_run(data):
    a, b, c = (scratch("yogi", data=data, seed=s, epochs=1) for s in (3, 3, 4))
    assert a.losses == b.losses and a.parameters == b.parameters
    assert a.losses != c.losses


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_scratch_update_matches_the_float64_reference(rule):
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(6, 1, dtype=torch.float64, generator=gen)
    v, s = torch.zeros_like(p), torch.zeros_like(p)
    eps = 1e-6 if rule == "adam" else 1e-3
    theta, state = p.numpy().copy(), reference.init_state(p.numpy(), s0=0.0)
    for t in range(1, 8):
        g = torch.randn(6, 1, dtype=torch.float64, generator=gen) * 10 ** (t % 3 - 1)
        torch_lab.SCRATCH_UPDATES[rule](p, g, v, s, t, 0.01)
        theta, state = reference.step(rule, theta, g.numpy(), state, lr=0.01, beta1=0.9, beta2=0.999, eps=eps)
        np.testing.assert_allclose(p.numpy(), theta, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(v.numpy(), state.v, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(s.numpy(), state.s, rtol=1e-13, atol=1e-15)


def test_scratch_gradient_is_the_autograd_gradient(data):
    X, y = data.tensors()
    model = torch_lab.ScratchModel(5, "adam", 0.01, torch.Generator().manual_seed(0))
    model.theta.copy_(torch.randn(6, 1))
    X1 = model.prepare(X[:10])
    w = model.w.clone().requires_grad_()
    b = model.b.clone().requires_grad_()
    (0.5 * ((X[:10] @ w + b - y[:10]) ** 2).mean()).backward()
    r = X1 @ model.theta - y[:10]
    g = X1.T @ r / 10
    torch.testing.assert_close(g[:5], w.grad)
    torch.testing.assert_close(g[5], b.grad)


def test_concise_accepts_any_optimizer_class_or_factory(data):
    by_name = concise("adamlab.Adam", data=data, epochs=1)
    by_class = concise(adamlab.Adam, data=data, epochs=1)
    by_factory = concise(lambda params, lr: torch.optim.SGD(params, lr=lr), data=data, epochs=1, lr=0.05)
    assert by_name.losses == by_class.losses
    assert by_factory.final_loss < 0.3 and "SGD" in by_factory.implementation


def test_adamlab_adam_lands_where_torch_adam_does(data):
    ours = concise("adamlab.Adam", data=data)
    theirs = concise("torch.optim.Adam", data=data)
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_chapter_final_losses_lie_between_the_floor_and_0_25(data, seed):
    # Seeds 2..4 are run by benchmarks/d2l_compare.py and recorded in benchmarks/RESULTS.md.
    result = run_chapter(seed=seed, data=data)
    floor = least_squares_floor(data)
    assert [r.name for r in result.runs] == [
        "scratch Adam",
        "torch.optim.Adam",
        "adamlab.Adam",
        "scratch Yogi",
        "adamlab.Yogi",
    ]
    for run in result.runs:
        assert round(floor, 4) <= run.final_loss <= 0.2500, (run.name, run.final_loss)
        assert run.config.seed == seed and run.status == "ok"
    doc = result.results()
    assert result.config["seed"] == seed and doc["floor"] == floor and len(doc["runs"]) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "learning rate must be > 0"),
        ({"lr": -1.0}, "learning rate must be > 0"),
        ({"batch_size": 0}, "batch size"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 1501}, "fewer than one batch"),
    ],
)
def test_bad_run_configs(data, kwargs, message):
    with pytest.raises(LabInputError, match=message):
        scratch("adam", data=data, **kwargs)


def test_unknown_optimizers(data):
    with pytest.raises(LabInputError, match="unknown optimizer"):
        scratch("adamw", data=data)
    with pytest.raises(LabInputError, match="unknown optimizer"):
        concise("torch.optim.NoSuchThing", data=data)
    with pytest.raises(LabInputError, match="unknown optimizer"):
        concise("nosuchmodule.Adam", data=data)


def test_the_python_api_is_the_one_the_cli_calls(data, monkeypatch):
    from click.testing import CliRunner

    from adamlab import lab
    from adamlab.lab import chapter as chapter_module
    from adamlab.lab.cli import cli

    assert lab.run_chapter is chapter_module.run_chapter and lab.train is train and lab.RunConfig is RunConfig
    assert not hasattr(lab, "train_scratch") and lab.chapter is chapter_module  # one name, one thing
    calls = []

    def fake_chapter(**kwargs):
        calls.append(kwargs)
        raise lab.LabInputError("stop here")

    monkeypatch.setattr(chapter_module, "run_chapter", fake_chapter)
    result = CliRunner().invoke(cli, ["--lr", "0.02", "--seed", "4", "--optimizer", "yogi", "--out", "/tmp/x-unused"])
    assert result.exit_code == 2 and "stop here" in result.stderr
    assert calls[0]["lr"] == 0.02 and calls[0]["seed"] == 4 and calls[0]["optimizers"] == ("yogi",)


def test_a_result_records_everything(data):
    import json

    result = concise("adamlab.Yogi", data=data, epochs=1, seed=7)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["config"] == {
        "trainer": "concise",
        "optimizer": "adamlab.Yogi",
        "lr": 0.01,
        "batch_size": 10,
        "epochs": 1,
        "seed": 7,
        "data": None,
        "framework": "torch",
    }
    assert "adamlab.optim.optimizer.Yogi" in doc["implementation"] and "eps" in doc["implementation"]
    assert doc["status"] == "ok" and len(doc["losses"]) == len(doc["epochs"]) == 8
    assert doc["final_loss"] == result.final_loss and doc["sec_per_epoch"] == result.sec_per_epoch
