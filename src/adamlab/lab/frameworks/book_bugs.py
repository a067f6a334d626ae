"""What the book's TensorFlow listings would have changed: a lab experiment.

The TensorFlow versions of the chapter's from-scratch listings differ from the MXNet and
PyTorch ones in three places:

1. **ε on the parameter** (Adam and Yogi): the update reads ``p - lr*v/sqrt(s) + eps``,
   so ε is *added to θ* every step instead of sitting in the denominator: the denominator
   has no ε at all, and every coordinate drifts by +ε per step (t·ε after t steps).
2. **t never incremented** (Adam): the bias correction stays frozen at t = 1,
   v̂ = v/(1-β1) and ŝ = s/(1-β2), so the step is η·v/√s·(√(1-β2)/(1-β1)) ≈ 0.316·η·v/√s
   for ever, instead of growing towards η·v/√s as the start-up bias fades.
3. **Yogi's ε = 1e-6** instead of 1e-3: with s starting from 0, the first steps divide by
   √ŝ + 1e-6 instead of √ŝ + 1e-3.

adamlab's own versions (the reference, the torch/Keras/Gluon optimizers and the
framework chapters) have none of these. This module re-creates each one *only* as a
clearly labelled demonstration: a float64 NumPy trainer on the chapter's protocol whose
moments are updated by :mod:`adamlab.reference` (the same functions every implementation
is tested against), with the buggy variants switched on by flags. It is not the book's
code, and nothing else in adamlab uses it.

    from adamlab.lab.frameworks.book_bugs import compare
    for row in compare(seed=0): print(row)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adamlab import reference
from adamlab.lab.data import LabData, load
from adamlab.lab.loop import RunConfig, half_mse, train


@dataclass(frozen=True)
class Variant:
    """One version of the chapter's scratch update; the flags switch the listing bugs on."""

    label: str
    rule: str  # "adam" or "yogi"
    eps: float
    eps_on_parameter: bool = False  # BUG 1 (demonstration): θ ← θ - η v̂/√ŝ + ε
    frozen_t: bool = False  # BUG 2 (demonstration): bias correction stays at t = 1


VARIANTS: tuple[Variant, ...] = (
    Variant("adam (correct)", "adam", 1e-6),
    Variant("adam, bug: eps added to the parameter", "adam", 1e-6, eps_on_parameter=True),
    Variant("adam, bug: t never incremented", "adam", 1e-6, frozen_t=True),
    Variant("adam, the TF listing (both bugs)", "adam", 1e-6, eps_on_parameter=True, frozen_t=True),
    Variant("yogi (correct)", "yogi", 1e-3),
    Variant("yogi, bug: eps added to the parameter", "yogi", 1e-3, eps_on_parameter=True),
    Variant("yogi, bug: eps = 1e-6", "yogi", 1e-6),
    Variant("yogi, the TF listing (both bugs)", "yogi", 1e-6, eps_on_parameter=True),
)


class ScratchVariant:
    """θ = (w; b) in float64, w ~ N(0, 0.01²), b = 0; v and s from adamlab.reference."""

    def __init__(self, variant: Variant, features: int, lr: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.theta = np.zeros((features + 1, 1))
        self.theta[:features] = rng.normal(0.0, 0.01, size=(features, 1))
        self.v, self.s = np.zeros_like(self.theta), np.zeros_like(self.theta)  # the chapter: s0 = 0
        self.variant, self.lr, self.t = variant, lr, 0

    def implementation(self) -> str:
        return f"book_bugs demonstration (float64 NumPy, adamlab.reference moments): {self.variant}"

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        X1 = np.hstack([X.astype(np.float64), np.ones((X.shape[0], 1))])
        self.update(X1.T @ (X1 @ self.theta - y) / X.shape[0])  # gradient of ½ mean((Xw + b - y)²)

    def update(self, g: np.ndarray) -> None:
        """One step of this variant with gradient ``g`` (shape of θ)."""
        self.t += 1
        beta1, beta2, var = 0.9, 0.999, self.variant
        self.v = reference.first_moment(self.v, g, self.t, beta1, True)
        self.s = reference.second_moment(var.rule, self.s, g, self.t, beta2, True)
        t = 1 if var.frozen_t else self.t
        v_hat, s_hat = self.v / (1 - beta1**t), self.s / (1 - beta2**t)
        if var.eps_on_parameter:
            self.theta = self.theta - self.lr * v_hat / np.sqrt(s_hat) + var.eps  # the bug, on purpose
        else:
            self.theta = self.theta - self.lr * v_hat / (np.sqrt(s_hat) + var.eps)

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return half_mse(X.astype(np.float64) @ self.theta[:-1] + self.theta[-1], y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {"w": self.theta[:-1], "b": self.theta[-1:]}


def run(variant: Variant, *, seed: int = 0, lr: float = 0.01, epochs: int = 2, data: LabData | None = None) -> Any:
    """One variant on the chapter's protocol (batch 10, the bundled data by default)."""
    data = data if data is not None else load()
    config = RunConfig("scratch", variant.rule, lr, 10, epochs, seed, framework="numpy")
    return train(config, data, session=_Session(ScratchVariant(variant, data.features, lr, seed), data, seed))


class _Session:
    """What the lab's loop drives: the variant, the data, and the order from ``default_rng(seed)``."""

    def __init__(self, model: ScratchVariant, data: LabData, seed: int) -> None:
        self.model, self.X, self.y = model, data.X, data.y
        self._rng = np.random.default_rng(seed)

    def permutation(self, n: int) -> np.ndarray:
        return self._rng.permutation(n)

    def parameters(self) -> dict[str, list[float]]:
        return {k: np.ravel(v).tolist() for k, v in self.model.parameters().items()}


def compare(*, seed: int = 0, lr: float = 0.01, epochs: int = 2) -> list[dict[str, Any]]:
    """Every variant, with its final loss and how far its parameters end from the correct run's."""
    data = load()
    runs = {v: run(v, seed=seed, lr=lr, epochs=epochs, data=data) for v in VARIANTS}
    rows = []
    for variant, result in runs.items():
        correct = runs[VARIANTS[0] if variant.rule == "adam" else VARIANTS[4]]
        theta = np.concatenate([np.ravel(result.parameters[k]) for k in ("w", "b")])
        theta_ok = np.concatenate([np.ravel(correct.parameters[k]) for k in ("w", "b")])
        rows.append(
            {
                "variant": variant.label,
                "final_loss": result.final_loss,
                "loss_change": result.final_loss - correct.final_loss,
                "max_parameter_change": float(np.max(np.abs(theta - theta_ok))),
                "losses": result.losses,
            }
        )
    return rows
