"""The float64 reference: one step of Adam and of Yogi, in the chapter's notation.

This module is the oracle. It is slow on purpose and written to be read next to
*Dive into Deep Learning*, section 11.10 ("Adam"); every fast implementation in
adamlab (the torch loop, foreach, fused CPU, Triton, Keras, Gluon) is tested step by
step against it, parameters and every state tensor.

Notation (the chapter's, with the torch state key each maps to)::

    t   step count, starting at 1 on the first update       state["step"]
    v   leaky average of the gradient (first moment)         state["exp_avg"]
    s   leaky average of the squared gradient (second moment) state["exp_avg_sq"]
    η   learning rate ``lr``;  β1, β2 ``beta1``, ``beta2``;  ε ``eps``

One step, with every convention named::

    g ← -g                                      if maximize
    g ← g + λθ                                  if weight decay is "L2" (coupled)
    θ ← θ - ηλθ                                 if weight decay is decoupled (AdamW)
    v ← β1 v + (1 - β1) g
    s ← β2 s + (1 - β2) g²                      Adam
    s ← s - (1 - β2) sgn(s - g²) g²             Yogi  (the only line that differs)
    v̂ ← v / (1 - β1^t),  ŝ ← s / (1 - β2^t)     if bias_correction is True
    θ ← θ - η v̂ / (√ŝ + ε)                      ε *after* the square root

Conventions, each an explicit keyword:

* **ε placement** — after the square root, as in Kingma & Ba (2015) Algorithm 1,
  PyTorch and optax. Keras/TensorFlow's Adam, MXNet's ``adam`` and TF-Addons' Yogi add an
  "ε-hat" to the raw √s and bias-correct the step size instead
  (``θ ← θ - η_t v / (√s + ε̂)`` with ``η_t = η √(1-β2^t)/(1-β1^t)``). Dividing through
  by √(1-β2^t) gives ``η v̂ / (√ŝ + ε̂/√(1-β2^t))``: ε̂ is this module's
  **ε = ε̂ / √(1-β2^t)**, an ε that starts large (ε̂/√(1-β2) ≈ 31.6 ε̂ at t = 1 for
  β2 = 0.999) and falls to ε̂. ``eps_hat=True`` puts ε there (the ε given is then ε̂);
  with ``bias_correction=False`` nothing is corrected and the two placements coincide.
* **bias correction** — ``True`` (divide by 1 - β^t, t from 1), ``False`` (use v and
  s as they are: the start-up bias towards v0 = s0 = 0 the chapter describes), or
  ``"recursive"`` (keep the *debiased* estimates in the state and update them with
  step-dependent weights, so no division by 1 - β^t happens at step time; see
  :func:`first_moment` and :func:`second_moment`).
* **initial moments s0 and v0** — ``s0`` (torch: ``initial_accumulator_value``), ``v0``
  (torch: ``initial_exp_avg_value``). The chapter starts from v = s = 0; TF-Addons,
  optax and the Yogi paper's author start Yogi's s from 1e-6, and optax,
  ``torch_optimizer.Yogi`` and ``pytorch_optimizer.Yogi`` start v from 1e-6 too
  (TF-Addons starts v from 0). With bias correction a v0 ≠ 0 fades as β1^t.
* **AMSGrad** — PyTorch's form: keep the running maximum of the *raw* s, then
  bias-correct it. With ``bias_correction="recursive"`` the maximum is taken of the
  debiased estimate (the state holds nothing else).
* **weight decay** — ``decoupled_weight_decay=False`` adds λθ to the gradient (L2, as
  ``torch.optim.Adam``); ``True`` shrinks θ by ηλθ before the update (AdamW).
* **maximize** — ascend instead of descend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

import numpy as np

Rule = Literal["adam", "yogi"]
BiasCorrection = Union[bool, Literal["recursive"]]

RULES: tuple[str, ...] = ("adam", "yogi")


@dataclass(frozen=True)
class State:
    """Optimizer state of one parameter. ``t`` counts completed steps."""

    t: int
    v: np.ndarray
    s: np.ndarray
    s_max: np.ndarray | None = None


def init_state(theta: np.ndarray, *, s0: float = 0.0, v0: float = 0.0, amsgrad: bool = False) -> State:
    """The state before the first step: t = 0, v = v0, s = s0 (and max(s) = s0)."""
    theta = np.asarray(theta, dtype=np.float64)
    s = np.full_like(theta, s0)
    return State(t=0, v=np.full_like(theta, v0), s=s, s_max=s.copy() if amsgrad else None)


def first_moment(v: np.ndarray, g: np.ndarray, t: int, beta1: float, bias_correction: BiasCorrection) -> np.ndarray:
    """v ← β1 v + (1 - β1) g; the recursive form keeps v̂ directly.

    Recursive form: v̂_t = v̂_{t-1} + (g_t - v̂_{t-1}) · (1 - β1)/(1 - β1^t). It equals
    v_t/(1 - β1^t) when v_0 = 0, and its first step returns g_1 whatever v_0 is.
    """
    if bias_correction == "recursive":
        return v + (g - v) * ((1.0 - beta1) / (1.0 - beta1**t))
    return beta1 * v + (1.0 - beta1) * g


def second_moment(
    rule: Rule, s: np.ndarray, g: np.ndarray, t: int, beta2: float, bias_correction: BiasCorrection
) -> np.ndarray:
    """The one place where Adam and Yogi differ.

    Adam: s ← β2 s + (1 - β2) g²          (a leaky average: s moves by (1-β2)(g² - s))
    Yogi: s ← s - (1 - β2) sgn(s - g²) g²  (an additive step: s moves by at most (1-β2) g²)

    Recursive form (state holds ŝ), with c_t = 1 - β2^t and ρ_t = (1 - β2)/c_t:

    Adam: ŝ_t = (1 - ρ_t) ŝ_{t-1} + ρ_t g²
    Yogi: ŝ_t = (c_{t-1}/c_t) ŝ_{t-1} + ρ_t sgn(g² - c_{t-1} ŝ_{t-1}) g²

    Both follow from c_t ŝ_t = s_t and the raw update. The Yogi sign compares g² with
    the *raw* s_{t-1} = c_{t-1} ŝ_{t-1}, so Yogi's form cannot be a plain lerp. Both are
    written as weighted sums, not as ŝ + ρ(…), because at t = 1 (ρ_1 = 1) the latter
    subtracts s0 from itself and in low precision can round ŝ_1 to 0 (and gives NaN when
    g² overflows). Both forms equal the standard debiasing exactly when s0 = 0, and both
    give ŝ_1 = g².
    """
    g2 = g * g
    if bias_correction == "recursive":
        rho = (1.0 - beta2) / (1.0 - beta2**t)
        if rule == "adam":
            return (1.0 - rho) * s + rho * g2
        c_prev = 1.0 - beta2 ** (t - 1)
        return (c_prev / (1.0 - beta2**t)) * s + rho * np.sign(g2 - c_prev * s) * g2
    if rule == "adam":
        return beta2 * s + (1.0 - beta2) * g2
    return s - (1.0 - beta2) * np.sign(s - g2) * g2


def step(
    rule: Rule,
    theta: np.ndarray,
    g: np.ndarray,
    state: State,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    bias_correction: BiasCorrection = True,
    eps_hat: bool = False,
) -> tuple[np.ndarray, State]:
    """One step of ``rule`` ("adam" or "yogi") in float64. Pure: inputs are not modified.

    ``eps_hat=True`` reads ``eps`` as Keras's ε̂ (added to the raw √s): the ε used is
    ε̂/√(1 - β2^t) whenever s is bias-corrected (``True`` or ``"recursive"``).
    Returns the new parameters and the new :class:`State`.
    """
    if rule not in RULES:
        raise ValueError(f"Invalid rule: {rule!r} (expected one of {RULES})")
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    t = state.t + 1
    if maximize:
        g = -g
    if weight_decay != 0.0:
        if decoupled_weight_decay:
            theta = theta * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
    v = first_moment(state.v, g, t, beta1, bias_correction)
    s = second_moment(rule, state.s, g, t, beta2, bias_correction)
    s_max = None
    if amsgrad:
        s_max = np.maximum(state.s_max if state.s_max is not None else s, s)
    s_used = s_max if amsgrad else s
    if bias_correction is True:
        v_hat = v / (1.0 - beta1**t)
        s_hat = s_used / (1.0 - beta2**t)
    else:  # False: no correction; "recursive": the state already holds v̂ and ŝ
        v_hat, s_hat = v, s_used
    if eps_hat and bias_correction is not False:
        eps = eps / np.sqrt(1.0 - beta2**t)  # ε̂ next to √s is ε = ε̂/√(1-β2^t) next to √ŝ
    theta = theta - lr * v_hat / (np.sqrt(s_hat) + eps)
    as_array = np.asarray  # 0-dim inputs stay arrays, not NumPy scalars
    return as_array(theta), replace(
        state, t=t, v=as_array(v), s=as_array(s), s_max=None if s_max is None else as_array(s_max)
    )


def adam_step(theta: np.ndarray, g: np.ndarray, state: State, **hyper) -> tuple[np.ndarray, State]:
    """One Adam step; see :func:`step`."""
    return step("adam", theta, g, state, **hyper)


def yogi_step(theta: np.ndarray, g: np.ndarray, state: State, **hyper) -> tuple[np.ndarray, State]:
    """One Yogi step; see :func:`step`."""
    return step("yogi", theta, g, state, **hyper)
