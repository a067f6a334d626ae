"""The chapter in TensorFlow: scratch Adam and Yogi on ``tf.Variable``s, and concise runs
through Keras 3 (on its TensorFlow backend) with ``keras.optimizers.Adam`` and adamlab's
Keras adapter.

The scratch updates are the chapter's, written on TensorFlow tensors *without* the book's
TensorFlow-listing bugs (see :mod:`adamlab.lab.frameworks.book_bugs`): ε after the square
root and inside the denominator, t incremented every step, Yogi's ε = 1e-3. Gradients come
from ``tf.GradientTape``, as in the book's listings.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from adamlab.lab.data import LabInputError
from adamlab.lab.frameworks import NumpySession
from adamlab.lab.loop import half_mse

SCRATCH_EPS = {"adam": 1e-6, "yogi": 1e-3}  # the chapter's ε; Yogi starts from s = 0
CONCISE = ("keras.optimizers.Adam", "adamlab.keras.Adam", "adamlab.keras.Yogi")


def _keras() -> Any:
    """Keras on its TensorFlow backend (set before Keras is first imported)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise LabInputError(
            f"--framework tensorflow needs Keras on its TensorFlow backend, but Keras runs on "
            f"{keras.backend.backend()!r} here (unset KERAS_BACKEND or set it to tensorflow)"
        )
    return keras


def versions() -> dict[str, str]:
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": _keras().__version__}


class ScratchModel:
    """w ~ N(0, 0.01²) of shape (d, 1), b = 0, their states v and s; the chapter's update."""

    def __init__(self, features: int, rule: str, lr: float, seed: int) -> None:
        import tensorflow as tf

        self.tf = tf
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(0.0, 0.01, size=(features, 1)).astype(np.float32))
        self.b = tf.Variable(tf.zeros(1))
        self.states = [(tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in (self.w, self.b)]
        self.rule, self.lr, self.t = rule, lr, 0
        self.eps = SCRATCH_EPS[rule]

    def implementation(self) -> str:
        hyper = "eps=1e-6" if self.rule == "adam" else "eps=1e-3, s0=0"
        return (
            f"tensorflow scratch {self.rule}: the chapter's update on tf.Variables "
            f"(lr={self.lr}, betas=(0.9, 0.999), {hyper}, bias correction, t from 1); tf.GradientTape"
        )

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        tf = self.tf
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(0.5 * tf.square(tf.matmul(X, self.w) + self.b - y))
        grads = tape.gradient(loss, [self.w, self.b])
        self.t += 1
        beta1, beta2 = 0.9, 0.999
        for p, (v, s), g in zip((self.w, self.b), self.states, grads):
            v.assign(beta1 * v + (1 - beta1) * g)  # v ← β1 v + (1 − β1) g
            if self.rule == "adam":
                s.assign(beta2 * s + (1 - beta2) * tf.square(g))  # s ← β2 s + (1 − β2) g²
            else:
                s.assign(s - (1 - beta2) * tf.sign(s - tf.square(g)) * tf.square(g))  # Yogi
            v_hat = v / (1 - beta1**self.t)
            s_hat = s / (1 - beta2**self.t)
            p.assign_sub(self.lr * v_hat / (tf.sqrt(s_hat) + self.eps))  # ε after the square root

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return half_mse((X @ self.w.numpy() + self.b.numpy()), y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {"w": self.w.numpy(), "b": self.b.numpy()}


def make_optimizer(name: str, lr: float) -> Any:
    keras = _keras()
    if name == "keras.optimizers.Adam":
        return keras.optimizers.Adam(learning_rate=lr)  # ε-hat = 1e-7
    import adamlab.keras

    if name == "adamlab.keras.Adam":
        return adamlab.keras.Adam(learning_rate=lr)
    if name == "adamlab.keras.Yogi":
        return adamlab.keras.Yogi(learning_rate=lr)
    raise LabInputError(f"unknown optimizer {name!r} for --framework tensorflow (known: {', '.join(CONCISE)})")


class ConciseModel:
    """``keras.layers.Dense(1)`` with kernel ~ N(0, 0.01²) and bias 0, MSE loss, one
    ``train_on_batch`` per minibatch (a compiled ``tf.function`` after its first call)."""

    def __init__(self, features: int, optimizer: str, lr: float, seed: int) -> None:
        keras = _keras()
        rng = np.random.default_rng(seed)
        self.model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(1)])
        self.model.layers[-1].set_weights(
            [rng.normal(0.0, 0.01, size=(features, 1)).astype(np.float32), np.zeros(1, np.float32)]
        )
        self.optimizer = make_optimizer(optimizer, lr)
        self.model.compile(optimizer=self.optimizer, loss="mse")

    def implementation(self) -> str:
        cls = type(self.optimizer)
        config = {k: v for k, v in self.optimizer.get_config().items() if v is not None}
        return (
            f"tensorflow concise: keras.layers.Dense(1) + {cls.__module__}.{cls.__qualname__}({config}); "
            "mse, reported / 2"
        )

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        self.model.train_on_batch(X, y)

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return half_mse(self.model.predict_on_batch(X), y)

    def parameters(self) -> dict[str, np.ndarray]:
        kernel, bias = self.model.layers[-1].get_weights()
        return {"weight": kernel, "bias": bias}


class Session(NumpySession):
    """One run (see :class:`adamlab.lab.frameworks.NumpySession`)."""

    scratch_model = ScratchModel
    concise_model = ConciseModel
