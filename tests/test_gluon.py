"""adamlab.gluon against the float64 reference, and inside gluon.Trainer (legacy MXNet 1.9.1).

MXNet needs its own environment (``nox -s mxnet``); elsewhere this module is skipped.
Two modes, as the torch and Keras tests: float64 free-running for 200 steps (parameters
and every state array to ~1e-12), and float32 with the reference synced before each step.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip(
    "mxnet", reason="mxnet is not installed: MXNet 1.9.1 needs numpy<1.24, run these tests with `nox -s mxnet`"
)
from mxnet import autograd, gluon, nd  # noqa: E402

import adamlab.gluon as ag  # noqa: E402
from adamlab import reference  # noqa: E402

OPTIMIZERS = {"adam": ag.Adam, "yogi": ag.Yogi}
SHAPES = [(3, 2), (1,), (5,)]  # MXNet 1.x NDArrays have no 0-dim shape

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "chapter": dict(learning_rate=0.01, epsilon=1e-6, initial_accumulator_value=0.0),
    "amsgrad": dict(amsgrad=True),
    "no_bias_correction": dict(bias_correction=False),
    "recursive": dict(bias_correction="recursive"),
    "recursive_amsgrad": dict(bias_correction="recursive", amsgrad=True),
    "l2_weight_decay": dict(wd=0.1),
    "decoupled_weight_decay": dict(wd=0.1, decoupled_weight_decay=True),
    "s0_and_eps": dict(initial_accumulator_value=0.5, epsilon=0.0),
    "beta1_zero": dict(beta1=0.0),
    "v0_and_epsilon_hat": dict(initial_exp_avg_value=0.3, epsilon=1e-3, epsilon_hat=True),
    "recursive_epsilon_hat": dict(bias_correction="recursive", epsilon=1e-3, epsilon_hat=True),
}


def reference_hyper(opt: Any) -> dict[str, Any]:
    return dict(
        lr=opt.lr,
        beta1=opt.beta1,
        beta2=opt.beta2,
        eps=opt.epsilon,
        weight_decay=opt.wd,
        decoupled_weight_decay=opt.decoupled_weight_decay,
        amsgrad=opt.amsgrad,
        bias_correction=opt.bias_correction,
        eps_hat=opt.epsilon_hat,
    )


def gradients(rng: np.random.Generator, k: int, dtype: str) -> list[np.ndarray]:
    scale = 10.0 ** ((k % 9) - 6)  # gradient scales 1e-6 .. 1e2
    return [np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for s in SHAPES]


def make(rule: str, dtype: str, seed: int, **kwargs: Any) -> tuple[list[Any], Any, Any, np.random.Generator]:
    rng = np.random.default_rng(seed)
    weights = [nd.array(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    opt = OPTIMIZERS[rule](**kwargs)
    return weights, opt, mx.optimizer.get_updater(opt), rng


def state_of(opt: Any, updater: Any, i: int) -> reference.State:
    arrays = [a.asnumpy().astype(np.float64) for a in updater.states[i]]
    return reference.State(
        t=opt._index_update_count[i], v=arrays[0], s=arrays[1], s_max=arrays[2] if opt.amsgrad else None
    )


def assert_state_close(got: reference.State, want: reference.State, rtol: float, atol: float, what: str) -> None:
    assert got.t == want.t, what
    np.testing.assert_allclose(got.v, want.v, rtol=rtol, atol=atol, err_msg=f"{what}: v")
    np.testing.assert_allclose(got.s, want.s, rtol=rtol, atol=atol, err_msg=f"{what}: s")
    if want.s_max is not None:
        np.testing.assert_allclose(got.s_max, want.s_max, rtol=rtol, atol=atol, err_msg=f"{what}: max s")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_float64_trajectory_matches_reference(rule: str, case: str) -> None:
    weights, opt, updater, rng = make(rule, "float64", seed=0, **{"learning_rate": 0.05, **CASES[case]})
    hyper = reference_hyper(opt)
    thetas = [w.asnumpy() for w in weights]
    states = [
        reference.init_state(t, s0=opt.initial_accumulator_value, v0=opt.initial_exp_avg_value, amsgrad=opt.amsgrad)
        for t in thetas
    ]
    for k in range(200):
        grads = gradients(rng, k, "float64")
        for i, g in enumerate(grads):
            updater(i, nd.array(g, dtype="float64"), weights[i])
            thetas[i], states[i] = reference.step(rule, thetas[i], g, states[i], **hyper)
            what = f"{rule}/{case} step {k + 1} parameter {i} {SHAPES[i]}"
            np.testing.assert_allclose(weights[i].asnumpy(), thetas[i], rtol=1e-12, atol=1e-14, err_msg=what)
            assert_state_close(state_of(opt, updater, i), states[i], 1e-12, 1e-20, what)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_float32_each_step_matches_reference(rule: str, case: str) -> None:
    lr = 0.05
    weights, opt, updater, rng = make(rule, "float32", seed=1, **{"learning_rate": lr, **CASES[case]})
    hyper = reference_hyper(opt)
    for k in range(60):
        for i, g in enumerate(gradients(rng, k, "float32")):
            theta = weights[i].asnumpy().astype(np.float64)
            if k == 0:
                state = reference.init_state(
                    theta, s0=opt.initial_accumulator_value, v0=opt.initial_exp_avg_value, amsgrad=opt.amsgrad
                )
            else:
                state = state_of(opt, updater, i)
            updater(i, nd.array(g), weights[i])
            want_theta, want = reference.step(rule, theta, g, state, **hyper)
            what = f"{rule}/{case} step {k + 1} parameter {i}"
            np.testing.assert_allclose(weights[i].asnumpy(), want_theta, rtol=1e-5, atol=1e-6 + 1e-5 * lr, err_msg=what)
            assert_state_close(state_of(opt, updater, i), want, 1e-5, 1e-30, what)


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_rescale_grad_and_clip_gradient_follow_mxnet_adam(rule: str) -> None:
    """g ← clip(rescale·g + wd·θ): the order MXNet's own Adam uses."""
    weights, opt, updater, rng = make(rule, "float64", seed=2, rescale_grad=0.25, clip_gradient=0.5, wd=0.01)
    hyper = reference_hyper(opt)
    thetas = [w.asnumpy() for w in weights]
    states = [reference.init_state(t, s0=opt.initial_accumulator_value) for t in thetas]
    hyper["weight_decay"] = 0.0  # folded into the gradient below, before the clip
    for k in range(30):
        for i, g in enumerate(gradients(rng, k % 4 + 5, "float64")):
            updater(i, nd.array(g, dtype="float64"), weights[i])
            g_eff = np.clip(0.25 * g + 0.01 * thetas[i], -0.5, 0.5)
            thetas[i], states[i] = reference.step(rule, thetas[i], g_eff, states[i], **hyper)
            np.testing.assert_allclose(weights[i].asnumpy(), thetas[i], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_recursive_first_step_forgets_s0(rule: str) -> None:
    """ŝ_1 = g² whatever s0 is, in float32: the recursive decays are exactly 0 at t = 1.
    A lerp ŝ + ρ_1 (g² - ŝ) computes s0 - s0 there: g² = 1e-12 is lost next to s0 = 0.5."""
    opt = OPTIMIZERS[rule](bias_correction="recursive", initial_accumulator_value=0.5)
    updater, weight = mx.optimizer.get_updater(opt), nd.ones((3,))
    g = np.array([0.0, 1e-6, 1.0], dtype="float32")
    updater(0, nd.array(g), weight)
    s = updater.states[0][1].asnumpy().astype(np.float64)
    np.testing.assert_allclose(s, g.astype(np.float64) ** 2, rtol=1e-6, atol=0.0)
    assert np.isfinite(weight.asnumpy()).all()


def test_gradient_is_not_modified() -> None:
    weights, _opt, updater, rng = make("yogi", "float32", seed=3, wd=0.1, rescale_grad=0.5)
    g = nd.array(rng.standard_normal(SHAPES[0]))
    before = g.asnumpy().copy()
    updater(0, g, weights[0])
    np.testing.assert_array_equal(g.asnumpy(), before)


# ---- Gluon ------------------------------------------------------------------------------------
def _net_and_data(seed: int = 0) -> tuple[Any, Any, Any]:
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 5)).astype("float32")
    y = (x @ rng.standard_normal((5, 1)) + 0.1 * rng.standard_normal((200, 1))).astype("float32")
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(8, activation="tanh"), gluon.nn.Dense(1))
    net.initialize(mx.init.Normal(0.1))
    return net, nd.array(x), nd.array(y)


def _train(net: Any, trainer: Any, x: Any, y: Any, steps: int) -> list[float]:
    loss_fn, losses = gluon.loss.L2Loss(), []
    for k in range(steps):
        xb, yb = x[k * 20 % 200 : k * 20 % 200 + 20], y[k * 20 % 200 : k * 20 % 200 + 20]
        with autograd.record():
            loss = loss_fn(net(xb), yb)
        loss.backward()
        trainer.step(20)
        losses.append(float(loss_fn(net(x), y).mean().asscalar()))
    return losses


@pytest.mark.parametrize("name", ["yogi", "adamlab_yogi", "adamlab_adam"])
def test_trainer_finds_the_optimizer_by_name_and_trains(name: str) -> None:
    net, x, y = _net_and_data()
    trainer = gluon.Trainer(net.collect_params(), name, {"learning_rate": 0.01})
    assert isinstance(trainer._optimizer, ag.NAMES[name])
    losses = _train(net, trainer, x, y, 60)
    assert losses[-1] < 0.5 * losses[0], losses


def test_mxnet_adam_is_still_mxnets_own() -> None:
    assert type(mx.optimizer.create("adam")) is mx.optimizer.Adam


@pytest.mark.parametrize("name", ["yogi", "adamlab_adam"])
def test_trainer_state_save_load_continues_identically(name: str, tmp_path: Any) -> None:
    params = {"learning_rate": 0.01, "amsgrad": True, "bias_correction": "recursive", "wd": 1e-3}
    net, x, y = _net_and_data()
    trainer = gluon.Trainer(net.collect_params(), name, params)
    _train(net, trainer, x, y, 7)
    net.save_parameters(str(tmp_path / "net.params"))
    trainer.save_states(str(tmp_path / "trainer.states"))

    net2, _, _ = _net_and_data(seed=1)  # different initial values, overwritten by the load
    net2.load_parameters(str(tmp_path / "net.params"))
    trainer2 = gluon.Trainer(net2.collect_params(), name, {"learning_rate": 0.5})
    trainer2.load_states(str(tmp_path / "trainer.states"))
    assert trainer2._optimizer.lr == 0.01 and trainer2._optimizer.amsgrad  # the hyperparameters came back

    a, b = _train(net, trainer, x, y, 5), _train(net2, trainer2, x, y, 5)
    assert a == b
    for p, q in zip(net.collect_params().values(), net2.collect_params().values()):
        np.testing.assert_array_equal(p.data().asnumpy(), q.data().asnumpy())


def test_lr_mult_and_wd_mult_are_honoured() -> None:
    net, x, y = _net_and_data()
    frozen_bias = net[0].bias
    frozen_bias.lr_mult = 0.0
    before = frozen_bias.data().asnumpy().copy()
    trainer = gluon.Trainer(net.collect_params(), "yogi", {"learning_rate": 0.05})
    _train(net, trainer, x, y, 3)
    np.testing.assert_array_equal(frozen_bias.data().asnumpy(), before)


def test_multi_precision_float16() -> None:
    weights, opt, updater, rng = make("yogi", "float16", seed=4, multi_precision=True, learning_rate=0.01)
    w32 = weights[0].asnumpy().astype(np.float64)
    state = reference.init_state(w32, s0=opt.initial_accumulator_value)
    for k in range(20):
        g = gradients(rng, k % 3 + 5, "float16")[0]
        updater(0, nd.array(g, dtype="float16"), weights[0])
        w32, state = reference.step("yogi", w32, g, state, **reference_hyper(opt))
    np.testing.assert_allclose(weights[0].asnumpy(), w32, rtol=2e-3, atol=2e-3)  # float16 weights, float32 math


def test_optimizer_pickles() -> None:
    opt = ag.Yogi(learning_rate=0.02, bias_correction=False)
    again = pickle.loads(pickle.dumps(opt))
    assert (type(again), again.lr, again.bias_correction) == (ag.Yogi, 0.02, False)


def test_epsilon_hat_differs_from_mxnet_adam() -> None:
    """ε after √ŝ (ours) vs ε̂ added to √s with a bias-corrected step size (MXNet's 'adam'),
    and ``epsilon_hat=True``, which is MXNet's form: ε = ε̂/√(1-β2^t)."""

    def run(eps: float, epsilon_hat: bool = False) -> float:
        rng = np.random.default_rng(5)
        w0 = rng.standard_normal(4)
        ours, theirs = nd.array(w0, dtype="float64"), nd.array(w0, dtype="float64")
        u1 = mx.optimizer.get_updater(ag.Adam(learning_rate=0.01, epsilon=eps, epsilon_hat=epsilon_hat))
        u2 = mx.optimizer.get_updater(mx.optimizer.Adam(learning_rate=0.01, epsilon=eps))
        for _ in range(50):
            g = nd.array(rng.standard_normal(4) * 1e-5, dtype="float64")
            u1(0, g, ours)
            u2(0, g, theirs)
        return float(np.max(np.abs(ours.asnumpy() - theirs.asnumpy())))

    assert run(0.0) < 1e-5  # not ~1e-12: MXNet's Adam kernel takes its scalars as float32
    assert run(1e-5) > 1e-3
    assert run(1e-5, epsilon_hat=True) < 1e-5


def test_initial_exp_avg_value_starts_v() -> None:
    opt = ag.Yogi(initial_exp_avg_value=1e-6)
    v, s = opt.create_state(0, nd.zeros((2, 3), dtype="float64"))
    np.testing.assert_array_equal(v.asnumpy(), np.full((2, 3), 1e-6))
    np.testing.assert_array_equal(s.asnumpy(), np.full((2, 3), 1e-6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(learning_rate=-0.1), "Invalid learning rate: -0.1"),
        (dict(beta1=1.2), "Invalid beta parameter at index 0: 1.2"),
        (dict(beta2=-0.5), "Invalid beta parameter at index 1: -0.5"),
        (dict(epsilon=-1e-8), "Invalid epsilon value: -1e-08"),
        (dict(wd=-1.0), "Invalid weight_decay value: -1.0"),
        (dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value (s0): -1.0"),
        (dict(bias_correction="yes"), "Invalid bias_correction: 'yes'"),
        (dict(initial_exp_avg_value=float("nan")), "Invalid initial_exp_avg_value (v0): nan"),
        (dict(initial_exp_avg_value="0"), "Invalid initial_exp_avg_value (v0): '0'"),
    ],
)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_bad_hyperparameters_name_the_parameter(rule: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        OPTIMIZERS[rule](**kwargs)
    assert message in str(info.value)


def test_defaults_match_the_torch_classes() -> None:
    adam, yogi = ag.Adam(), ag.Yogi()
    assert (adam.lr, adam.beta1, adam.beta2, adam.epsilon, adam.initial_accumulator_value) == (
        1e-3,
        0.9,
        0.999,
        1e-8,
        0,
    )
    assert (yogi.lr, yogi.beta1, yogi.beta2, yogi.epsilon, yogi.initial_accumulator_value) == (
        1e-2,
        0.9,
        0.999,
        1e-3,
        1e-6,
    )
    assert adam.bias_correction is True and yogi.bias_correction is True
