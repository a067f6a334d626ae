"""adamlab.keras against the float64 reference, on the backend named by KERAS_BACKEND.

Keras picks its backend once, at import, so these tests run only in the subprocesses that
``tests/test_keras.py`` starts, one per backend (it sets ``ADAMLAB_KERAS_CASES=1``); in the
main test process this module skips. To run it directly::

    ADAMLAB_KERAS_CASES=1 KERAS_BACKEND=jax python -m pytest tests/test_keras_cases.py

Two modes, as the torch tests (tests/test_against_reference.py):

* float64, free-running for 200 steps: the whole trajectory (parameters and every slot)
  must agree with the reference to ~1e-10, so no convention can be off anywhere.
* float32, synced: before each step the reference starts from the optimizer's own
  values, so each step is compared with one step of exact math, at float32 tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

if os.environ.get("ADAMLAB_KERAS_CASES") != "1":
    pytest.skip("run per Keras backend, in a subprocess, by tests/test_keras.py", allow_module_level=True)
keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

import adamlab.keras as ak  # noqa: E402
from adamlab import reference  # noqa: E402

BACKEND = keras.backend.backend()
# JAX runs twice: in x64 mode (float64 variables need it; set before any array exists) and
# in its default 32-bit mode, the one users run, where the float64 tests skip.
JAX_X64 = os.environ.get("ADAMLAB_KERAS_JAX_X64", "1") == "1"
if BACKEND == "jax" and JAX_X64:
    import jax

    jax.config.update("jax_enable_x64", True)
needs_float64 = pytest.mark.skipif(BACKEND == "jax" and not JAX_X64, reason="float64 needs JAX's x64 mode")

OPTIMIZERS = {"adam": ak.Adam, "yogi": ak.Yogi}
SHAPES = [(3, 2), (), (5,)]

# Flag cases: the conventions an implementation must honour (Keras's own weight decay is
# decoupled, so that is the only weight-decay mode here).
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "chapter": dict(learning_rate=0.01, epsilon=1e-6, initial_accumulator_value=0.0),
    "amsgrad": dict(amsgrad=True),
    "no_bias_correction": dict(bias_correction=False),
    "recursive": dict(bias_correction="recursive"),
    "recursive_amsgrad": dict(bias_correction="recursive", amsgrad=True),
    "weight_decay": dict(weight_decay=0.1),
    "s0_and_eps": dict(initial_accumulator_value=0.5, epsilon=0.0),
    "beta1_zero": dict(beta_1=0.0),
    "v0_and_epsilon_hat": dict(initial_exp_avg_value=0.3, epsilon=1e-3, epsilon_hat=True),
    "recursive_epsilon_hat": dict(bias_correction="recursive", epsilon=1e-3, epsilon_hat=True),
}
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}  # (rtol, atol)


def reference_hyper(opt: Any, lr: float) -> dict[str, Any]:
    """The reference keywords equivalent to a Keras optimizer's configuration.

    Keras keeps the learning rate in floatx (float32), so the reference gets that value;
    the base class casts λ with ops.cast (through floatx on TF and torch, exact on JAX x64).
    """
    lr = float(np.float32(lr))
    wd = float(ops.convert_to_numpy(ops.cast(opt.weight_decay or 0.0, "float64")))
    if BACKEND == "torch" and wd:
        # Keras's torch backend multiplies θ by 1 - λη computed in float32 (a foreach_mul_
        # with the float32 learning-rate variable): give the reference that factor.
        factor = np.float32(1.0) - np.float32(opt.weight_decay) * np.float32(lr)
        wd = (1.0 - float(factor)) / lr
    return dict(
        lr=lr,
        beta1=opt.beta_1,
        beta2=opt.beta_2,
        eps=opt.epsilon,
        weight_decay=wd,
        decoupled_weight_decay=True,  # Keras's base class decays decoupled: θ ← θ - ηλθ
        amsgrad=opt.amsgrad,
        bias_correction=opt.bias_correction,
        eps_hat=opt.epsilon_hat,
    )


def init_states(opt: Any, thetas: list[np.ndarray]) -> list[reference.State]:
    """The reference's state before the first step, with the optimizer's s0 and v0."""
    s0, v0 = opt.initial_accumulator_value, opt.initial_exp_avg_value
    return [reference.init_state(t, s0=s0, v0=v0, amsgrad=opt.amsgrad) for t in thetas]


def slots(opt: Any, i: int) -> reference.State:
    """The optimizer's state of variable i as a reference State (float64 copies)."""
    t = int(ops.convert_to_numpy(opt.iterations))
    s_max = ops.convert_to_numpy(opt._velocity_hats[i]).astype(np.float64) if opt.amsgrad else None
    return reference.State(
        t=t,
        v=ops.convert_to_numpy(opt._momentums[i]).astype(np.float64),
        s=ops.convert_to_numpy(opt._velocities[i]).astype(np.float64),
        s_max=s_max,
    )


def value(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def assert_state_close(got: reference.State, want: reference.State, rtol: float, atol: float, what: str) -> None:
    np.testing.assert_allclose(got.v, want.v, rtol=rtol, atol=atol, err_msg=f"{what}: v (momentum)")
    np.testing.assert_allclose(got.s, want.s, rtol=rtol, atol=atol, err_msg=f"{what}: s (velocity)")
    if want.s_max is not None:
        np.testing.assert_allclose(got.s_max, want.s_max, rtol=rtol, atol=atol, err_msg=f"{what}: max s")


def gradients(rng: np.random.Generator, k: int, dtype: str) -> list[np.ndarray]:
    scale = 10.0 ** ((k % 9) - 6)  # gradient scales 1e-6 .. 1e2
    return [np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for s in SHAPES]


def make(rule: str, dtype: str, seed: int, **kwargs: Any) -> tuple[list[Any], Any, np.random.Generator]:
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.standard_normal(s).astype(dtype), dtype=dtype) for s in SHAPES]
    return variables, OPTIMIZERS[rule](**kwargs), rng


_COMPILED: dict[int, Any] = {}


def apply(opt: Any, variables: list[Any], grads: list[np.ndarray]) -> None:
    """``opt.apply(grads, variables)``; on TensorFlow inside a ``tf.function``, as
    ``model.fit`` runs it (and ~10x faster than eager)."""
    if BACKEND != "tensorflow":
        opt.apply([ops.convert_to_tensor(g, dtype=str(g.dtype)) for g in grads], variables)
        return
    import tensorflow as tf

    if id(opt) not in _COMPILED:
        opt.build(variables)  # slots are made eagerly, outside the traced function
        _COMPILED[id(opt)] = (opt, tf.function(lambda gs: opt.apply(gs, variables)))
    _COMPILED[id(opt)][1]([tf.constant(g) for g in grads])


@needs_float64
# ---- the reference, free-running (float64) and synced (float32) --------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_float64_trajectory_matches_reference(rule: str, case: str) -> None:
    kwargs = {"learning_rate": 0.05, **CASES[case]}
    variables, opt, rng = make(rule, "float64", seed=0, **kwargs)
    hyper = reference_hyper(opt, kwargs["learning_rate"])
    thetas = [value(v) for v in variables]
    states = init_states(opt, thetas)
    rtol, atol = TOLERANCES["float64"]
    for k in range(200):
        grads = gradients(rng, k, "float64")
        apply(opt, variables, grads)
        for i, g in enumerate(grads):
            thetas[i], states[i] = reference.step(rule, thetas[i], g, states[i], **hyper)
            what = f"{rule}/{case} step {k + 1} variable {i} {SHAPES[i]}"
            np.testing.assert_allclose(value(variables[i]), thetas[i], rtol=rtol, atol=atol, err_msg=what)
            assert_state_close(slots(opt, i), states[i], rtol, atol, what)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_float32_each_step_matches_reference(rule: str, case: str) -> None:
    kwargs = {"learning_rate": 0.05, **CASES[case]}
    variables, opt, rng = make(rule, "float32", seed=1, **kwargs)
    hyper = reference_hyper(opt, kwargs["learning_rate"])
    rtol, atol = TOLERANCES["float32"]
    for k in range(60):
        grads = gradients(rng, k, "float32")
        before = [(value(v), slots(opt, i) if k else None) for i, v in enumerate(variables)]
        apply(opt, variables, grads)
        for i, g in enumerate(grads):
            theta, state = before[i]
            if state is None:
                state = init_states(opt, [theta])[0]
            want_theta, want = reference.step(rule, theta, g, state, **hyper)
            what = f"{rule}/{case} step {k + 1} variable {i} {SHAPES[i]}"
            # θ moves by at most ~lr per step: compare the update relative to the step size.
            step_atol = atol + rtol * kwargs["learning_rate"]
            np.testing.assert_allclose(value(variables[i]), want_theta, rtol=rtol, atol=step_atol, err_msg=what)
            assert_state_close(slots(opt, i), want, rtol, atol * 1e-6, what)


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_recursive_first_step_forgets_s0(rule: str) -> None:
    """ŝ_1 = g² whatever s0 is, in float32: the recursive decays are exactly 0 at t = 1.
    A lerp ŝ + ρ_1 (g² - ŝ) computes s0 - s0 there: g² = 1e-12 is lost next to s0 = 0.5,
    and for g = 0 a ρ_1 one ulp above 1 makes ŝ negative and θ NaN."""
    variable = keras.Variable(np.ones(3, dtype="float32"), dtype="float32")
    opt = OPTIMIZERS[rule](bias_correction="recursive", initial_accumulator_value=0.5)
    g = np.array([0.0, 1e-6, 1.0], dtype="float32")
    apply(opt, [variable], [g])
    s = ops.convert_to_numpy(opt._velocities[0]).astype(np.float64)
    np.testing.assert_allclose(s, g.astype(np.float64) ** 2, rtol=1e-6, atol=0.0)
    assert np.isfinite(value(variable)).all()


@needs_float64
# ---- the base class's features ------------------------------------------------------------
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_schedule_clipnorm_and_gradient_accumulation_follow_the_reference(rule: str) -> None:
    """lr schedules, clipnorm and gradient accumulation: the reference, fed what Keras
    feeds update_step (the clipped mean of each window of gradients, the scheduled lr)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.5)
    steps, clip = 3, 0.7
    variables, opt, rng = make(
        rule, "float64", seed=2, learning_rate=schedule, clipnorm=clip, gradient_accumulation_steps=steps
    )
    hyper = reference_hyper(opt, 0.0)
    thetas = [value(v) for v in variables]
    states = [reference.init_state(t, s0=opt.initial_accumulator_value) for t in thetas]
    window: list[list[np.ndarray]] = []
    for k in range(18):
        grads = gradients(rng, k % 4 + 5, "float64")  # scales 1e-1 .. 1e2, so clipping bites
        apply(opt, variables, grads)
        window.append(grads)
        if len(window) < steps:
            continue
        t = (k + 1) // steps
        hyper["lr"] = float(ops.convert_to_numpy(schedule(k)))  # schedules see the raw apply() count
        for i in range(len(SHAPES)):
            g = np.mean([w[i] for w in window], axis=0)
            norm = np.sqrt(np.sum(g * g))
            g = g * clip / max(norm, clip)  # Keras's clipnorm: per variable
            thetas[i], states[i] = reference.step(rule, thetas[i], g, states[i], **hyper)
        window = []
        for i, v in enumerate(variables):
            # 1e-8, not 1e-10: Keras's own clipping rounds through float32 on some backends;
            # a wrong convention (window, clip, schedule step) is off by > 1e-3.
            np.testing.assert_allclose(value(v), thetas[i], rtol=1e-8, atol=1e-10, err_msg=f"update {t}, var {i}")


@needs_float64
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_loss_scale_factor_is_undone_before_the_update(rule: str) -> None:
    a_vars, a, rng = make(rule, "float64", seed=3)
    b_vars, b, _ = make(rule, "float64", seed=3, loss_scale_factor=1024.0)
    for k in range(20):
        grads = gradients(rng, k, "float64")
        apply(a, a_vars, grads)
        apply(b, b_vars, [g * 1024.0 for g in grads])  # what a scaled loss produces
    for x, y in zip(a_vars, b_vars):
        np.testing.assert_allclose(value(x), value(y), rtol=1e-12, atol=1e-15)


@needs_float64
def test_ema_tracks_the_parameters_and_swaps_in() -> None:
    variables, opt, rng = make("yogi", "float64", seed=4, use_ema=True, ema_momentum=0.9)
    average = [value(v) for v in variables]
    for k in range(10):
        apply(opt, variables, gradients(rng, k + 3, "float64"))
        # Keras's EMA: the first step copies the variable, then a ← m a + (1 - m) θ
        average = [value(v) if k == 0 else 0.9 * a + 0.1 * value(v) for a, v in zip(average, variables)]
    opt.finalize_variable_values(variables)
    for v, a in zip(variables, average):  # Keras casts the EMA momentum through floatx
        np.testing.assert_allclose(value(v), a, rtol=1e-7, atol=1e-8)


# ---- ε placement: Keras's ε̂ is ε = ε̂ / √(1 - β2^t) -----------------------------------------
# keras.optimizers.Adam keeps η in a float32 variable, and on TensorFlow and torch computes
# β^t from β rounded to float32 (ops.cast of a Python float): float64-exact only on JAX x64.
KERAS_ADAM_RTOL = 1e-12 if BACKEND == "jax" else 1e-5


def _keras_adam_run(epsilon: float, steps: int = 200) -> tuple[list[np.ndarray], list[np.ndarray], list[Any]]:
    """θ0, then keras.optimizers.Adam's θ after ``steps`` steps; gradients ~1e-5, so √s ~ ε̂."""
    rng = np.random.default_rng(5)
    theta0 = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * 1e-5 for s in SHAPES] for _ in range(steps)]
    variables = [keras.Variable(t, dtype="float64") for t in theta0]
    opt = keras.optimizers.Adam(learning_rate=0.01, epsilon=epsilon)
    for gs in grads:
        apply(opt, variables, gs)
    return theta0, [value(v) for v in variables], grads


def _reference_with(eps_at: Any, theta0: list[np.ndarray], grads: list[Any]) -> list[np.ndarray]:
    """The reference, ε after √ŝ, with ε = eps_at(t) at step t; η as Keras stores it (float32)."""
    thetas, states = list(theta0), [reference.init_state(t) for t in theta0]
    lr = float(np.float32(0.01))
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            thetas[i], states[i] = reference.adam_step(
                thetas[i], g, states[i], lr=lr, beta1=0.9, beta2=0.999, eps=eps_at(t)
            )
    return thetas


def _relative(got: list[np.ndarray], want: list[np.ndarray], theta0: list[np.ndarray]) -> float:
    """The largest difference relative to how far θ moved (θ itself is ~1, the moves ~0.1)."""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b - t0))) for a, b, t0 in zip(got, want, theta0))


@needs_float64
def test_keras_epsilon_hat_is_epsilon_over_sqrt_one_minus_beta2_power() -> None:
    """Measured against keras.optimizers.Adam: ε̂ = 1e-5 is ε = ε̂/√(1-β2^t) after √ŝ, and
    not ε̂·√(1-β2^t) (the formula this project's docs once gave). Differences are relative
    to how far θ moved."""
    hat = 1e-5
    theta0, theirs, grads = _keras_adam_run(hat)
    right = _relative(theirs, _reference_with(lambda t: hat / np.sqrt(1.0 - 0.999**t), theta0, grads), theta0)
    wrong = _relative(theirs, _reference_with(lambda t: hat * np.sqrt(1.0 - 0.999**t), theta0, grads), theta0)
    assert right < KERAS_ADAM_RTOL, right
    assert wrong > 1e-2, wrong


@needs_float64
def test_epsilon_hat_true_is_keras_adam() -> None:
    hat = 1e-5
    theta0, theirs, grads = _keras_adam_run(hat)
    variables = [keras.Variable(t, dtype="float64") for t in theta0]
    ours = ak.Adam(learning_rate=0.01, epsilon=hat, epsilon_hat=True)
    plain = ak.Adam(learning_rate=0.01, epsilon=hat)
    plain_vars = [keras.Variable(t, dtype="float64") for t in theta0]
    for gs in grads:
        apply(ours, variables, gs)
        apply(plain, plain_vars, gs)
    assert _relative([value(v) for v in variables], theirs, theta0) < KERAS_ADAM_RTOL
    # Same ε, ε after √ŝ: far from Keras's Adam where √s ~ ε.
    assert _relative([value(v) for v in plain_vars], theirs, theta0) > 1e-2


@needs_float64
def test_equals_keras_adam_when_epsilon_is_zero() -> None:
    theta0, theirs, grads = _keras_adam_run(0.0, steps=50)
    variables = [keras.Variable(t, dtype="float64") for t in theta0]
    ours = ak.Adam(learning_rate=0.01, epsilon=0.0)
    for gs in grads:
        apply(ours, variables, gs)
    assert _relative([value(v) for v in variables], theirs, theta0) < KERAS_ADAM_RTOL


# ---- Keras integration ----------------------------------------------------------------------
def _linear_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 5)).astype("float32")
    y = (x @ rng.standard_normal((5, 1)) + 0.1 * rng.standard_normal((256, 1))).astype("float32")
    return x, y


def _model() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_model_fit_reduces_the_loss(rule: str) -> None:
    x, y = _linear_data()
    model = _model()
    model.compile(optimizer=OPTIMIZERS[rule](learning_rate=0.01), loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "features",
    [
        dict(use_ema=True, ema_momentum=0.9),
        dict(gradient_accumulation_steps=2),
        dict(clipnorm=1.0, weight_decay=1e-3),
        dict(global_clipnorm=1.0, amsgrad=True),
        "LossScaleOptimizer",
    ],
    ids=["ema", "gradient_accumulation", "clipnorm_weight_decay", "global_clipnorm_amsgrad", "loss_scale_optimizer"],
)
def test_model_fit_with_the_base_class_features(features: Any) -> None:
    """Inside model.fit (compiled: tf.function, jax.jit, torch), with each base-class feature."""
    x, y = _linear_data()
    model = _model()
    if features == "LossScaleOptimizer":
        optimizer = keras.optimizers.LossScaleOptimizer(ak.Yogi(learning_rate=0.02))
    else:
        optimizer = ak.Yogi(learning_rate=0.02, **features)
    model.compile(optimizer=optimizer, loss="mse")
    losses = model.fit(x, y, batch_size=32, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_keras_file_round_trip_continues_training_identically(rule: str, tmp_path: Any) -> None:
    x, y = _linear_data()
    model = _model()
    opt = OPTIMIZERS[rule](learning_rate=0.01, amsgrad=True, bias_correction="recursive", weight_decay=0.01)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is type(opt)
    assert loaded.optimizer.get_config() == opt.get_config()
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 8
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))

    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_get_config_round_trip() -> None:
    opt = ak.Yogi(learning_rate=0.02, epsilon=1e-4, bias_correction=False, initial_accumulator_value=0.0, clipnorm=1.0)
    again = ak.Yogi.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == opt.get_config()


def test_defaults_match_the_torch_classes() -> None:
    adam, yogi = ak.Adam(), ak.Yogi()
    assert (float(adam.learning_rate), adam.beta_1, adam.beta_2, adam.epsilon) == pytest.approx(
        (1e-3, 0.9, 0.999, 1e-8)
    )
    assert adam.initial_accumulator_value == 0.0 and adam.bias_correction is True
    assert (float(yogi.learning_rate), yogi.beta_1, yogi.beta_2, yogi.epsilon) == pytest.approx(
        (1e-2, 0.9, 0.999, 1e-3)
    )
    assert yogi.initial_accumulator_value == 1e-6 and yogi.bias_correction is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(learning_rate=-0.1), "Invalid learning rate: -0.1"),
        (dict(beta_1=1.2), "Invalid beta parameter at index 0: 1.2"),
        (dict(beta_2=-0.5), "Invalid beta parameter at index 1: -0.5"),
        (dict(epsilon=-1e-8), "Invalid epsilon value: -1e-08"),
        (dict(weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
        (dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value (s0): -1.0"),
        (dict(bias_correction="yes"), "Invalid bias_correction: 'yes'"),
        (dict(initial_exp_avg_value=float("nan")), "Invalid initial_exp_avg_value (v0): nan"),
        (dict(initial_exp_avg_value=None), "Invalid initial_exp_avg_value (v0): None"),
    ],
)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_bad_hyperparameters_name_the_parameter(rule: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        OPTIMIZERS[rule](**kwargs)
    assert message in str(info.value)


@pytest.mark.skipif(BACKEND == "torch", reason="the torch backend imports torch by design")
def test_import_does_not_import_torch() -> None:
    """A Keras user on TensorFlow or JAX never needs torch: importing it is an error here."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import keras, adamlab, adamlab.keras\n"
        "adamlab.keras.Yogi()\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- names, docstrings, signatures -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("yogi", ak.Yogi),
        ("adamlab_yogi", ak.Yogi),
        ("adamlab_adam", ak.Adam),
        ("adamlab>Yogi", ak.Yogi),
        ("adamlab>Adam", ak.Adam),
    ],
)
def test_keras_finds_the_optimizers_by_name(name: str, cls: type) -> None:
    assert type(keras.optimizers.get(name)) is cls


@pytest.mark.parametrize("name", ["adam", "Adam"])
def test_adam_stays_keras_own(name: str) -> None:
    found = keras.optimizers.get(name)  # on the torch backend, a torch subclass of Keras's Adam
    assert isinstance(found, keras.optimizers.Adam) and not isinstance(found, ak.Adam)


def test_model_compile_with_the_name_yogi_trains() -> None:
    x, y = _linear_data()
    model = _model()
    model.compile(optimizer="yogi", loss="mse")
    assert type(model.optimizer) is ak.Yogi
    losses = model.fit(x, y, batch_size=32, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("cls", [ak.Adam, ak.Yogi])
def test_docstring_and_signature_spell_out_every_keyword(cls: type) -> None:
    """help() shows the update rule and every argument; no **kwargs, every keyword typed,
    and every keyword of Keras's base Optimizer is there (IDEs and type checkers see them)."""
    import inspect

    doc = cls.__doc__
    assert doc and "θ ← θ - η" in doc and "Args:" in doc
    signature = inspect.signature(cls.__init__)
    params = [p for name, p in signature.parameters.items() if name != "self"]
    assert all(p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL for p in params)
    assert all(p.annotation is not p.empty for p in params), [p.name for p in params if p.annotation is p.empty]
    for p in params:
        assert f"{p.name}:" in doc, f"{p.name} is not documented in {cls.__name__}"
    # Keras's backend optimizer classes take (*args, **kwargs): the base with the keywords.
    base = next(
        inspect.signature(k.__init__).parameters
        for k in keras.optimizers.Optimizer.__mro__
        if "learning_rate" in inspect.signature(k.__init__).parameters
    )
    wanted = {n for n, p in base.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
    assert wanted <= set(signature.parameters), wanted - set(signature.parameters)
    with pytest.raises(TypeError):
        cls(decay=0.1)  # not a keyword: a typo fails at the call, not deep in Keras


@pytest.mark.parametrize("cls", [ak.Adam, ak.Yogi])
def test_initial_exp_avg_value_starts_v(cls: type) -> None:
    variable = keras.Variable(np.zeros((2, 3), dtype="float32"), dtype="float32")
    opt = cls(initial_exp_avg_value=1e-6, initial_accumulator_value=0.25)
    opt.build([variable])
    np.testing.assert_array_equal(value(opt._momentums[0]), np.full((2, 3), np.float32(1e-6), dtype=np.float64))
    np.testing.assert_array_equal(value(opt._velocities[0]), np.full((2, 3), 0.25))
    again = cls.from_config(opt.get_config())
    assert (again.initial_exp_avg_value, again.epsilon_hat) == (1e-6, False)
