"""The moment updates for adapters whose tensors support ``*`` and ``+`` (Keras, Gluon).

Framework-free: each adapter computes its per-step :class:`Scalars` with its own
arithmetic (Python floats in Gluon, ``keras.ops`` on the step variable in Keras) and passes
its own ``sign`` function; the update rules themselves live here, once. They are the
torch code's (``adamlab.optim._coefficients``) written so that one formula per rule covers
every bias-correction setting: without ``"recursive"``, keep1 = keep2 = c2_prev = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Scalars(NamedTuple):
    """Everything a step needs that depends on t (c_t = 1 - β^t)."""

    w1: Any  # weight of g in v: 1-β1, or (1-β1)/c1_t for "recursive"
    w2: Any  # weight of g² in s: 1-β2, or ρ_t = (1-β2)/c2_t
    step_size: Any  # η/c1_t with bias correction, else η
    bc2_sqrt: Any  # √c2_t with bias correction, else 1 (None: skip the division)
    keep1: Any  # c1_{t-1}/c1_t for "recursive", else 1: v's decay is β1·keep1
    keep2: Any  # c2_{t-1}/c2_t for "recursive", else 1
    c2_prev: Any  # c2_{t-1} for "recursive", else 1: raw s = c2_{t-1} ŝ


def first_moment(v: Any, g: Any, beta1: float, k: Scalars) -> Any:
    """v ← β1 v + (1-β1) g   (recursive: v̂ ← (1 - w1) v̂ + w1 g, with 1 - w1 = β1 c1_{t-1}/c1_t)."""
    return v * (beta1 * k.keep1) + g * k.w1


def second_moment(rule: str, s: Any, g: Any, beta2: float, k: Scalars, sign: Callable[[Any], Any]) -> Any:
    """The new s. The one place where Adam and Yogi differ (see adamlab.reference).

    Both forms are cancellation-free at t = 1: c2_0 = 0 makes the decay exactly 0, so
    ŝ_1 = ρ_1 g² whatever s0 is.
    """
    g2 = g * g
    if rule == "adam":  # s ← β2 s + (1-β2) g²   (recursive: ŝ ← (1-ρ_t) ŝ + ρ_t g², 1-ρ_t = β2 keep2)
        return s * (beta2 * k.keep2) + g2 * k.w2
    # s ← s - (1-β2) sgn(s - g²) g²   (recursive: ŝ ← keep2 ŝ + ρ_t sgn(g² - c2_{t-1} ŝ) g²)
    return s * k.keep2 + sign(g2 - s * k.c2_prev) * g2 * k.w2
