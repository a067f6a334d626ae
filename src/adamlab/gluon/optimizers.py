"""``adamlab.gluon.Adam`` and ``adamlab.gluon.Yogi``: MXNet 1.x optimizers (legacy support).

MXNet moved to the Apache Attic in 2023; 1.9.1 is its final release and installs on
Python 3.11 only beside ``numpy<1.24`` (see ``noxfile.py``, session ``mxnet``). These
classes keep the chapter's MXNet listings runnable; they receive fixes, not features.

Both are ``mxnet.optimizer.Optimizer`` subclasses, registered so that Gluon finds them by
name::

    trainer = gluon.Trainer(net.collect_params(), "yogi", {"learning_rate": 0.01})
    trainer = gluon.Trainer(net.collect_params(), "adamlab_adam", {"learning_rate": 0.01, "epsilon": 1e-6})

(``"adam"`` stays MXNet's own Adam, which uses the ε-hat form; ``"adamlab_yogi"`` is an
alias of ``"yogi"``.) ``Trainer.save_states`` / ``load_states`` keep the state, the
per-parameter step counts and the hyperparameters.

Conventions, the same as :mod:`adamlab.reference` and the torch classes; each parameter
counts its own steps t from 1::

    g ← rescale_grad · g (+ wd · θ, MXNet's L2 weight decay), then clipped to ±clip_gradient
    v ← β1 v + (1 - β1) g
    s ← β2 s + (1 - β2) g²                   Adam
    s ← s - (1 - β2) sgn(s - g²) g²          Yogi (the only line that differs)
    θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)      ε after the square root

MXNet's built-in ``"adam"`` scales η by √(1-β2^t)/(1-β1^t) and adds ε̂ to the raw √s: the
ε-hat form. Dividing through by √(1-β2^t), its ε̂ is an ε = ε̂ / √(1-β2^t) here (about
31.6 ε̂ at t = 1 for β2 = 0.999), so the two agree only when ε = 0; ``epsilon_hat=True``
reads ``epsilon`` as ε̂ and reproduces MXNet's Adam (``wd`` included). v starts at
``initial_exp_avg_value`` (v0, default 0; optax's Yogi and the torch Yogi packages use
1e-6), s at ``initial_accumulator_value`` (s0). ``wd`` is MXNet's
weight decay, added to the gradient (L2, as ``torch.optim.Adam``) and scaled per
parameter by ``wd_mult``; ``decoupled_weight_decay=True`` makes it AdamW's θ ← θ - ηλθ.
The state of a parameter is the tuple (v, s) or, with amsgrad, (v, s, max s).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import mxnet as mx
from mxnet import nd

from adamlab._moments import Scalars, first_moment, second_moment
from adamlab.validation import validate_hyperparameters

__all__ = ["NAMES", "Adam", "Yogi"]


def _c(beta: float, t: int) -> float:
    """c_t = 1 - β^t, accurately for β near 1."""
    return -math.expm1(t * math.log(beta)) if beta > 0.0 else float(t > 0)


def step_scalars(t: int, lr: float, beta1: float, beta2: float, bias_correction: Any) -> Scalars:
    """Everything a step needs that depends on t (counted from 1)."""
    if bias_correction == "recursive":
        c1, c1_prev, c2, c2_prev = _c(beta1, t), _c(beta1, t - 1), _c(beta2, t), _c(beta2, t - 1)
        return Scalars((1.0 - beta1) / c1, (1.0 - beta2) / c2, lr, 1.0, c1_prev / c1, c2_prev / c2, c2_prev)
    step_size, bc2_sqrt = lr, 1.0
    if bias_correction:
        step_size, bc2_sqrt = lr / _c(beta1, t), math.sqrt(_c(beta2, t))
    return Scalars(1.0 - beta1, 1.0 - beta2, step_size, bc2_sqrt, 1.0, 1.0, 1.0)


class _AdamFamily(mx.optimizer.Optimizer):
    """Shared machinery of :class:`Adam` and :class:`Yogi`; ``_rule`` names the update."""

    _rule: ClassVar[str]

    def __init__(
        self,
        learning_rate: float,
        beta1: float,
        beta2: float,
        epsilon: float,
        amsgrad: bool,
        bias_correction: bool | str,
        initial_accumulator_value: float,
        decoupled_weight_decay: bool,
        initial_exp_avg_value: float,
        epsilon_hat: bool,
        **kwargs: Any,
    ) -> None:
        # v0 is a signed average: any finite real.
        if isinstance(initial_exp_avg_value, bool) or not isinstance(initial_exp_avg_value, numbers.Real):
            raise ValueError(f"Invalid initial_exp_avg_value (v0): {initial_exp_avg_value!r} (expected a real number)")
        if not math.isfinite(initial_exp_avg_value):
            raise ValueError(f"Invalid initial_exp_avg_value (v0): {initial_exp_avg_value}")
        validate_hyperparameters(
            lr=learning_rate,
            betas=(beta1, beta2),
            eps=epsilon,
            weight_decay=kwargs.get("wd", 0.0),
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        super().__init__(learning_rate=float(learning_rate), **kwargs)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        self.bias_correction = bias_correction
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.initial_exp_avg_value = float(initial_exp_avg_value)
        self.epsilon_hat = bool(epsilon_hat)

    def create_state(self, index: int, weight: nd.NDArray) -> tuple[nd.NDArray, ...]:
        """The one place that creates state: v = v0, s = s0 (and max s = s0), like the weight."""
        v = nd.full(weight.shape, self.initial_exp_avg_value, weight.context, dtype=weight.dtype)
        s = nd.full(weight.shape, self.initial_accumulator_value, weight.context, dtype=weight.dtype)
        return (v, s, s.copy()) if self.amsgrad else (v, s)

    def update(self, index: int, weight: nd.NDArray, grad: nd.NDArray, state: tuple[nd.NDArray, ...]) -> None:
        """One step of one parameter, in place in ``weight`` and ``state``; ``grad`` is not written."""
        if grad.stype != "default" or weight.stype != "default":
            raise TypeError(f"{type(self).__name__} does not support sparse gradients or weights ({grad.stype})")
        self._update_count(index)
        t = self._index_update_count[index]
        lr, wd = self._get_lr(index), self._get_wd(index)

        g = grad * self.rescale_grad  # a new array: the caller's gradient stays as it is
        if wd and not self.decoupled_weight_decay:
            g = g + wd * weight  # L2, MXNet's convention (and torch.optim.Adam's)
        if self.clip_gradient is not None:
            g = nd.clip(g, -self.clip_gradient, self.clip_gradient)
        if wd and self.decoupled_weight_decay:
            weight[:] = weight * (1.0 - lr * wd)  # AdamW: θ ← θ - ηλθ

        k = step_scalars(t, lr, self.beta1, self.beta2, self.bias_correction)
        v, s = state[0], state[1]
        v[:] = first_moment(v, g, self.beta1, k)
        s[:] = second_moment(self._rule, s, g, self.beta2, k, nd.sign)
        if self.amsgrad:  # PyTorch's form: the running max of the raw s, bias-corrected below
            state[2][:] = nd.maximum(state[2], s)
            s = state[2]
        eps = self.epsilon
        if self.epsilon_hat and self.bias_correction is not False:  # ε = ε̂ / √(1 - β2^t)
            eps = eps / math.sqrt(_c(self.beta2, t))
        denom = nd.sqrt(s) / k.bc2_sqrt + eps  # ε after the square root
        weight[:] = weight - k.step_size * v / denom


class Adam(_AdamFamily):
    """Adam (Kingma & Ba, 2015) with ε after the square root, as the chapter and PyTorch.

    Defaults are ``torch.optim.Adam``'s (lr 1e-3, β (0.9, 0.999), ε 1e-8, s0 = 0); the
    chapter's from-scratch Adam is ``Adam(learning_rate=0.01, epsilon=1e-6)``. Gluon name:
    ``"adamlab_adam"``. ``Adam(epsilon=1e-8, epsilon_hat=True)`` is MXNet's own ``"adam"``.
    Keyword arguments not listed go to ``mxnet.optimizer.Optimizer``
    (``wd``, ``rescale_grad``, ``clip_gradient``, ``lr_scheduler``, ``multi_precision``, ...).
    """

    _rule = "adam"

    def __init__(
        self,
        learning_rate: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 0.0,
        decoupled_weight_decay: bool = False,
        initial_exp_avg_value: float = 0.0,
        epsilon_hat: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            beta1,
            beta2,
            epsilon,
            amsgrad,
            bias_correction,
            initial_accumulator_value,
            decoupled_weight_decay,
            initial_exp_avg_value,
            epsilon_hat,
            **kwargs,
        )


class Yogi(_AdamFamily):
    """Yogi (Zaheer et al., NeurIPS 2018): Adam with s ← s - (1 - β2) sgn(s - g²) g².

    Defaults: lr 1e-2, β (0.9, 0.999), ε 1e-3, s0 = 1e-6, bias correction on (TF-Addons,
    optax, the paper author's code). The chapter's from-scratch Yogi starts from s = 0:
    ``Yogi(learning_rate=0.01, epsilon=1e-3, initial_accumulator_value=0.0)``. Gluon name:
    ``"yogi"`` (alias ``"adamlab_yogi"``).
    """

    _rule = "yogi"

    def __init__(
        self,
        learning_rate: float = 1e-2,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-3,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 1e-6,
        decoupled_weight_decay: bool = False,
        initial_exp_avg_value: float = 0.0,
        epsilon_hat: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            beta1,
            beta2,
            epsilon,
            amsgrad,
            bias_correction,
            initial_accumulator_value,
            decoupled_weight_decay,
            initial_exp_avg_value,
            epsilon_hat,
            **kwargs,
        )


# Registration under explicit names (mxnet.optimizer.register would take the lower-cased
# class name, and "adam" would replace MXNet's own Adam).
NAMES = {"yogi": Yogi, "adamlab_yogi": Yogi, "adamlab_adam": Adam}
for _name, _cls in NAMES.items():
    mx.optimizer.Optimizer.opt_registry[_name] = _cls
del _name, _cls
