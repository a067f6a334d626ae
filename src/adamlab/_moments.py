"""The per-step coefficients and moment updates, once, for every backend.

Framework-free: :func:`coefficients` uses only ``-``, ``/``, ``*`` and ``**``, so ``t``,
``lr`` and the betas may be Python floats or 0-dim tensors (torch's ``capturable`` path,
tensor betas). Every backend reads the same :class:`Coefficients` record: the torch loop and
foreach paths (:mod:`adamlab.optim.single_tensor`, :mod:`adamlab.optim.multi_tensor`), the
fused CPU kernel (a C struct with these field names, ``csrc/fused_cpu.cpp``), the Triton
kernel (kernel arguments with these names), Keras and Gluon (:func:`first_moment`,
:func:`second_moment`).

With c1_t = 1 - β1^t and c2_t = 1 - β2^t (t counts steps from 1)::

    v ← (β1·keep1) v + w1 g                     (= lerp(v, g, w1))
    Adam: s ← (β2·keep2) s + w2 g²
    Yogi: s ← keep2 s + w2 sgn(g² - c2_prev s) g²
    θ ← θ - step_size · v / (√s / bc2_sqrt + ε)

==================  ===================  =====================  ==================
field               bias_correction=True  False                  "recursive"
==================  ===================  =====================  ==================
w1                  1-β1                 1-β1                   (1-β1)/c1_t
w2                  1-β2                 1-β2                   (1-β2)/c2_t  (ρ_t)
step_size           η/c1_t               η                      η
bc2_sqrt            √c2_t                1                      1
keep1, keep2        1                    1                      c_{t-1}/c_t
c2_prev             1                    1                      c2_{t-1}
==================  ===================  =====================  ==================

"recursive" keeps the debiased v̂ and ŝ in the state (see :func:`adamlab.reference.second_moment`);
its forms are weighted sums with no cancellation at t = 1: c_0 = 0 makes the decay exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Coefficients(NamedTuple):
    """Everything one step needs that depends on t (see the module's table)."""

    w1: Any  # weight of g in v
    w2: Any  # weight of g² in s
    step_size: Any  # η/c1_t with bias correction, else η
    bc2_sqrt: Any  # √c2_t with bias correction, else 1
    keep1: Any  # c1_{t-1}/c1_t for "recursive", else 1: v's decay is β1·keep1
    keep2: Any  # c2_{t-1}/c2_t for "recursive", else 1
    c2_prev: Any  # c2_{t-1} for "recursive", else 1: the raw s is c2_{t-1}·ŝ


Scalars = Coefficients  # the name Keras and Gluon import


def coefficients(t: Any, *, lr: Any, beta1: Any, beta2: Any, bias_correction: bool | str) -> Coefficients:
    """The one function that turns a step count t (from 1) into a step's coefficients.

    ``t`` is a Python number (the default, host-side path, computed as ``torch.optim.Adam``
    computes its scalars) or a 0-dim tensor (no host sync; promoted to float64 when it has
    a ``double`` method: β^t in float32 would lose ~t·3e-8 of relative accuracy).
    """
    if hasattr(t, "double"):
        t = t.double()
    if bias_correction == "recursive":
        c1, c1_prev = 1 - beta1**t, 1 - beta1 ** (t - 1)
        c2, c2_prev = 1 - beta2**t, 1 - beta2 ** (t - 1)
        return Coefficients((1 - beta1) / c1, (1 - beta2) / c2, lr, 1.0, c1_prev / c1, c2_prev / c2, c2_prev)
    if bias_correction:
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        return Coefficients(1 - beta1, 1 - beta2, lr / c1, c2**0.5, 1.0, 1.0, 1.0)
    return Coefficients(1 - beta1, 1 - beta2, lr, 1.0, 1.0, 1.0, 1.0)


def first_moment(v: Any, g: Any, beta1: Any, k: Coefficients) -> Any:
    """v ← β1 v + (1-β1) g   (recursive: v̂ ← (1 - w1) v̂ + w1 g, with 1 - w1 = β1 c1_{t-1}/c1_t)."""
    return v * (beta1 * k.keep1) + g * k.w1


def second_moment(rule: str, s: Any, g: Any, beta2: Any, k: Coefficients, sign: Callable[[Any], Any]) -> Any:
    """The new s: the one place where Adam and Yogi differ (see adamlab.reference)."""
    g2 = g * g
    if rule == "adam":  # s ← β2 s + (1-β2) g²
        return s * (beta2 * k.keep2) + g2 * k.w2
    # Yogi: s ← s - (1-β2) sgn(s - g²) g², the step towards g² bounded by (1-β2) g²
    return s * k.keep2 + sign(g2 - s * k.c2_prev) * g2 * k.w2
