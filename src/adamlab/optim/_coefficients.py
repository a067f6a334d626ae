"""Per-step scalars shared by every torch implementation.

One function turns a step count t into the numbers an update needs, for each
bias-correction convention. ``step`` may be a Python float (the default, host-side
path: the numbers are Python floats, computed exactly as ``torch.optim.Adam`` computes
them) or a 0-dim tensor on the parameter's device (``capturable=True``: no host sync,
the numbers are 0-dim tensors). The same expressions serve both.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Coefficients(NamedTuple):
    w1: Any  # weight of g in v's lerp: 1-β1, or (1-β1)/(1-β1^t) for "recursive"
    w2: Any  # weight of the s update: 1-β2, or ρ_t = (1-β2)/(1-β2^t) for "recursive"
    step_size: Any  # η/(1-β1^t) with bias correction, else η
    bc2_sqrt: Any  # √(1-β2^t) with bias correction, else 1
    keep2: Any  # c_{t-1}/c_t with c_t = 1-β2^t: recursive Yogi only
    c2_prev: Any  # c_{t-1} = 1-β2^(t-1): recursive Yogi only


def coefficients(step: Any, *, lr: Any, beta1: float, beta2: float, bias_correction: Any) -> Coefficients:
    if hasattr(step, "double"):
        # β^t in float32 loses ~t·3e-8 relative accuracy; do the scalar math in float64.
        step = step.double()
    if bias_correction == "recursive":
        c2, c2_prev = 1 - beta2**step, 1 - beta2 ** (step - 1)
        return Coefficients(
            w1=(1 - beta1) / (1 - beta1**step),
            w2=(1 - beta2) / c2,
            step_size=lr,
            bc2_sqrt=1.0,
            keep2=c2_prev / c2,
            c2_prev=c2_prev,
        )
    if bias_correction:
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        return Coefficients(1 - beta1, 1 - beta2, lr / bias_correction1, bias_correction2**0.5, None, None)
    return Coefficients(1 - beta1, 1 - beta2, lr, 1.0, None, None)
