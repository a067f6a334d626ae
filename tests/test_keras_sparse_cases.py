"""Sparse gradients in adamlab.keras, on the backend named by KERAS_BACKEND.

Run per backend, in a subprocess, by ``tests/test_keras.py`` (as test_keras_cases.py).
The convention under test (see :mod:`adamlab.keras.optimizers`): a sparse gradient —
``tf.IndexedSlices`` from an ``Embedding`` lookup, a JAX ``BCOO``, a torch sparse tensor —
is the dense gradient whose untouched rows are 0 and whose repeated indices add up, and
the update is the dense algorithm on it. So the float64 reference, fed that dense gradient
(clipped by *its* norm), must match step by step, parameters and slots.
"""

from __future__ import annotations

import os
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
JAX_X64 = os.environ.get("ADAMLAB_KERAS_JAX_X64", "1") == "1"
if BACKEND == "jax" and JAX_X64:
    import jax

    jax.config.update("jax_enable_x64", True)
needs_float64 = pytest.mark.skipif(BACKEND == "jax" and not JAX_X64, reason="float64 needs JAX's x64 mode")

OPTIMIZERS = {"adam": ak.Adam, "yogi": ak.Yogi}
ROWS, DIM = 10, 3


def sparse(indices: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> Any:
    """A row-sparse gradient in the backend's own sparse type (indices may repeat)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(tf.constant(values), tf.constant(indices, dtype=tf.int64), tf.constant(shape))
    if BACKEND == "jax":
        import jax.numpy as jnp
        from jax.experimental import sparse as jsparse

        return jsparse.BCOO((jnp.asarray(values), jnp.asarray(indices[:, None])), shape=shape)
    import torch

    return torch.sparse_coo_tensor(torch.as_tensor(indices)[None, :], torch.as_tensor(values), shape)


def dense(indices: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float64)
    np.add.at(out, indices, values)  # repeated indices add up
    return out


def value(x: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def clip(grads: list[np.ndarray], features: dict[str, float]) -> list[np.ndarray]:
    """Keras's clipnorm (per variable) and global_clipnorm, on the dense gradients."""
    if "clipnorm" in features:
        c = features["clipnorm"]
        return [g * c / max(np.sqrt(np.sum(g * g)), c) for g in grads]
    if "global_clipnorm" in features:
        c = features["global_clipnorm"]
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        return [g * c / max(norm, c) for g in grads]
    return grads


FEATURES = {"plain": {}, "clipnorm": dict(clipnorm=0.5), "global_clipnorm": dict(global_clipnorm=0.5)}


@needs_float64
@pytest.mark.parametrize("features", list(FEATURES))
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_sparse_gradient_is_the_dense_algorithm(rule: str, features: str) -> None:
    """An embedding-like variable with a row-sparse gradient (repeated rows), beside a dense
    one, for 30 steps: θ, v and s match the reference on the dense gradient to 1e-10
    (1e-6 with clipping)."""
    rng = np.random.default_rng(7)
    shapes = [(ROWS, DIM), (4,)]
    variables = [keras.Variable(rng.standard_normal(s), dtype="float64") for s in shapes]
    opt = OPTIMIZERS[rule](learning_rate=0.05, **FEATURES[features])
    thetas = [value(v) for v in variables]
    states = [reference.init_state(t, s0=opt.initial_accumulator_value) for t in thetas]
    hyper = dict(lr=float(np.float32(0.05)), beta1=0.9, beta2=0.999, eps=opt.epsilon)
    # Keras's own clipping rounds the clip factor through float32 on the torch backend
    # (up to 3e-7 in s measured); a wrong norm (of the slices, not the summed rows) is off
    # by > 1e-3.
    rtol = 1e-6 if FEATURES[features] else 1e-10
    for k in range(30):
        rows = rng.integers(0, ROWS, size=6)  # 6 lookups in 10 rows: repeats and untouched rows
        values = rng.standard_normal((6, DIM)) * 10.0 ** rng.uniform(-2, 1)
        other = rng.standard_normal(4)
        opt.apply([sparse(rows, values, shapes[0]), ops.convert_to_tensor(other, dtype="float64")], variables)
        grads = clip([dense(rows, values, shapes[0]), other], FEATURES[features])
        for i, g in enumerate(grads):
            thetas[i], states[i] = reference.step(rule, thetas[i], g, states[i], **hyper)
            what = f"{rule}/{features} step {k + 1} variable {i}"
            for got, want in (
                (variables[i], thetas[i]),
                (opt._momentums[i], states[i].v),
                (opt._velocities[i], states[i].s),
            ):
                # normwise: v crosses 0, where an elementwise rtol amplifies a clip's rounding
                np.testing.assert_allclose(value(got), want, rtol=0, atol=rtol * np.max(np.abs(want)), err_msg=what)


@needs_float64
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_untouched_rows_keep_moving(rule: str) -> None:
    """The convention, spelled out: a row the gradient does not touch has g = 0, so its v
    decays by β1 and θ keeps moving with the momentum; s decays by β2 (Adam) or stays as it
    is (Yogi: s - (1-β2) sgn(s)·0 = s). A touched-rows-only ("lazy") update would freeze all
    three."""
    variable = keras.Variable(np.zeros((ROWS, DIM)), dtype="float64")
    opt = OPTIMIZERS[rule](learning_rate=0.1)
    opt.apply([sparse(np.array([0]), np.ones((1, DIM)), (ROWS, DIM))], [variable])
    theta1, v1, s1 = value(variable)[0], value(opt._momentums[0])[0], value(opt._velocities[0])[0]
    opt.apply([sparse(np.array([5]), np.ones((1, DIM)), (ROWS, DIM))], [variable])  # row 0 untouched
    theta2, v2, s2 = value(variable)[0], value(opt._momentums[0])[0], value(opt._velocities[0])[0]
    np.testing.assert_allclose(v2, 0.9 * v1, rtol=1e-15)
    np.testing.assert_allclose(s2, 0.999 * s1 if rule == "adam" else s1, rtol=1e-15)
    assert np.all(theta2 < theta1)  # still descending along the momentum
    np.testing.assert_array_equal(value(variable)[1], 0.0)  # never touched, v = 0: θ stays


def _embedding_model() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            keras.layers.Embedding(50, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )


def _token_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(256, 6)).astype("int32")
    weights = rng.standard_normal(50)
    return x, weights[x].mean(axis=1, keepdims=True).astype("float32")


def test_embedding_gradient_is_sparse_on_tensorflow() -> None:
    """What the model tests below feed the optimizer on TensorFlow: tf.IndexedSlices."""
    if BACKEND != "tensorflow":
        pytest.skip("only TensorFlow gives Embedding a sparse gradient")
    import tensorflow as tf

    model = _embedding_model()
    x, y = _token_data()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x[:8]) - y[:8]) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)


@pytest.mark.parametrize(
    "features", [{}, dict(clipnorm=0.05), dict(global_clipnorm=0.05), dict(gradient_accumulation_steps=2)]
)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_embedding_model_trains(rule: str, features: dict[str, Any]) -> None:
    """model.fit with an Embedding layer (compiled: tf.function, jax.jit, torch)."""
    x, y = _token_data()
    model = _embedding_model()
    model.compile(optimizer=OPTIMIZERS[rule](learning_rate=0.02, **features), loss="mse")
    losses = model.fit(x, y, batch_size=32, epochs=8, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def _against_keras_adam(repeat: bool) -> float:
    """The largest difference between our Adam (with Keras's ε̂ form) and keras.optimizers.Adam
    on the same sparse gradients, relative to how far θ moved."""
    rng = np.random.default_rng(3)
    start = rng.standard_normal((ROWS, DIM))
    ours_var, theirs_var = keras.Variable(start, dtype="float64"), keras.Variable(start, dtype="float64")
    ours = ak.Adam(learning_rate=0.01, epsilon=1e-7, epsilon_hat=True)
    theirs = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    for _ in range(20):
        rows = rng.integers(0, ROWS, size=6) if repeat else rng.choice(ROWS, size=4, replace=False)
        values = rng.standard_normal((len(rows), DIM))
        ours.apply([sparse(rows, values, (ROWS, DIM))], [ours_var])
        try:
            theirs.apply([sparse(rows, values, (ROWS, DIM))], [theirs_var])
        except Exception as exc:
            pytest.skip(f"keras.optimizers.Adam does not take this backend's sparse gradient: {exc!r:.200}")
    moved = np.max(np.abs(value(theirs_var) - start))
    return float(np.max(np.abs(value(ours_var) - value(theirs_var))) / moved)


@needs_float64
def test_keras_adam_is_the_dense_algorithm_too_without_repeated_rows() -> None:
    """keras.optimizers.Adam also updates every row (v and s decay everywhere, θ moves
    everywhere): on sparse gradients without repeated rows it is our Adam in its ε̂ form."""
    # β^t from float32 β on TensorFlow and torch (see test_keras_cases.py): 1e-5 of the move.
    assert _against_keras_adam(repeat=False) < 1e-5


@needs_float64
def test_keras_adam_squares_repeated_rows_before_summing_them() -> None:
    """Where the documentation says adamlab and keras.optimizers.Adam part: with a row looked
    up twice in one batch, Keras's ops.square squares each slice of the IndexedSlices before
    they are summed into s (Σ g_i² instead of (Σ g_i)²); adamlab densifies first, so s gets
    the square of the row's gradient (test_sparse_gradient_is_the_dense_algorithm)."""
    if BACKEND != "tensorflow":
        pytest.skip("measured on TensorFlow's IndexedSlices")
    assert _against_keras_adam(repeat=True) > 1e-3
