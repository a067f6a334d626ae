"""Hyperparameter validation: the one place every front end checks its input.

The torch optimizers, the Keras and Gluon adapters and the lab's command line all call
:func:`validate_hyperparameters`. Each bad value raises ``ValueError`` with a message that
names the parameter and the value (``Invalid beta parameter at index 0: 1.2``), in the
wording ``torch.optim.Adam`` uses where it has one. Nothing here uses ``assert``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

BIAS_CORRECTIONS: tuple[Any, ...] = (True, False, "recursive")


def _is_tensor(x: Any) -> bool:
    # Duck-typed so that this module never imports a framework.
    return hasattr(x, "dim") and hasattr(x, "numel") and hasattr(x, "item")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r} (expected a real number)")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: {value}")
    return value


def validate_lr(lr: Any) -> None:
    """lr >= 0, a Python/NumPy real or a 0-dim (one-element) tensor."""
    if _is_tensor(lr):
        if lr.numel() != 1:
            raise ValueError(f"Invalid learning rate: a tensor lr must have one element, got shape {tuple(lr.shape)}")
        value = float(lr.detach().cpu().item()) if hasattr(lr, "detach") else float(lr.item())
    else:
        value = _real("learning rate", lr)
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f"Invalid learning rate: {value}")


def validate_betas(betas: Any) -> tuple[float, float]:
    """0 <= β1 < 1 and 0 <= β2 < 1; returns them as floats."""
    try:
        items = tuple(betas)
    except TypeError:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))") from None
    if len(items) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    out = []
    for i, b in enumerate(items):
        if _is_tensor(b):
            b = b.item()
        value = _real(f"beta parameter at index {i}", b)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        out.append(value)
    return out[0], out[1]


def validate_hyperparameters(
    *,
    lr: Any = None,
    betas: Any = None,
    eps: Any = None,
    weight_decay: Any = None,
    initial_accumulator_value: Any = None,
    bias_correction: Any = True,
) -> None:
    """Check every hyperparameter that was given (``None`` means "not given")."""
    if lr is not None:
        validate_lr(lr)
    if betas is not None:
        validate_betas(betas)
    for label, value in (
        ("epsilon value", eps),
        ("weight_decay value", weight_decay),
        ("initial_accumulator_value (s0)", initial_accumulator_value),
    ):
        if value is None:
            continue
        number = _real(label, value)
        if not 0.0 <= number < math.inf:
            raise ValueError(f"Invalid {label}: {value}")
    if not any(bias_correction is c or (isinstance(c, str) and bias_correction == c) for c in BIAS_CORRECTIONS):
        raise ValueError(f"Invalid bias_correction: {bias_correction!r} (expected True, False or 'recursive')")


def validate_state_dtype(state_dtype: Any) -> None:
    """None (the parameter's dtype) or a floating dtype (duck-typed: torch.dtype.is_floating_point)."""
    if state_dtype is not None and getattr(state_dtype, "is_floating_point", None) is not True:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (expected None or a floating torch.dtype)")


def check_known_keys(where: str, given: Mapping[str, Any], known: set[str]) -> None:
    """Unknown keywords raise ``TypeError`` naming them, like a Python call would."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s): {', '.join(map(repr, unknown))}")
