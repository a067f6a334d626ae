"""``adamlab.keras.Adam`` and ``adamlab.keras.Yogi``: Keras 3 optimizers, any backend.

Both are ``keras.optimizers.Optimizer`` subclasses: slot variables are made in
:meth:`build`, the update is written with ``keras.ops`` only, so one class runs on the
TensorFlow, JAX and PyTorch backends, and the base class keeps its features (clipnorm,
clipvalue, global_clipnorm, EMA, loss scaling, gradient accumulation, learning-rate
schedules, decoupled weight decay). Both are registered as serializable (``adamlab>Adam``,
``adamlab>Yogi``), so a model compiled with them saves to and loads from ``.keras``
files, optimizer state included, once ``adamlab.keras`` has been imported.

Conventions, the same as :mod:`adamlab.reference` and the torch classes
(``t`` counts from 1; ``v`` is the slot ``momentum``, ``s`` the slot ``velocity``,
max(s) the slot ``velocity_hat``)::

    v ← β1 v + (1 - β1) g
    s ← β2 s + (1 - β2) g²                   Adam
    s ← s - (1 - β2) sgn(s - g²) g²          Yogi (the only line that differs)
    θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

**ε goes after the square root.** ``keras.optimizers.Adam`` uses the "ε-hat" form
instead, ``θ ← θ - η √(1-β2^t)/(1-β1^t) · v / (√s + ε̂)`` with ε̂ = 1e-7 by default,
which equals ε = ε̂·√(1 - β2^t) here: ε shrinks by a factor 1/√1000 ≈ 0.03 over the
first few thousand steps. The two forms agree only when ε = 0, so ``adamlab.keras.Adam``
and ``keras.optimizers.Adam`` differ numerically (mostly early in training and where
√s is comparable to ε); ``adamlab.keras.Adam`` follows ``torch.optim.Adam``.

**Weight decay** is the base class's, which Keras applies *decoupled*, before the update
and with the current learning rate: θ ← θ - ηλθ. That is the reference's
``decoupled_weight_decay=True`` (AdamW; ``adamlab.Adam(..., decoupled_weight_decay=True)``
in torch), not ``torch.optim.Adam``'s ``weight_decay``, which adds λθ to the gradient.
For that L2 form put a regularizer on the layers instead:
``kernel_regularizer=keras.regularizers.L2(λ / 2)`` adds λθ to the gradient.

Defaults (the torch classes'): Adam lr 1e-3, β (0.9, 0.999), ε 1e-8, s0 = 0;
Yogi lr 1e-2, β (0.9, 0.999), ε 1e-3, s0 = 1e-6 (TF-Addons, optax, the paper's author).
The chapter's from-scratch variants are ``Adam(learning_rate=0.01, epsilon=1e-6)`` and
``Yogi(learning_rate=0.01, epsilon=1e-3, initial_accumulator_value=0.0)``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import keras
from keras import ops

from adamlab._moments import Scalars, first_moment, second_moment
from adamlab.validation import validate_hyperparameters

__all__ = ["Adam", "Yogi"]


# ---- the math: scalars per step, then the update ----------------------------------------
def _one_minus_pow(beta: float, t: Any) -> Any:
    """c_t = 1 - β^t for a float tensor t >= 0, computed as -expm1(t·log β).

    In float32, ``1 - ops.power(0.999, t)`` loses ~1e-5 relative accuracy (0.999 itself
    rounds to 0.99900001); log β is taken in float64 on the host, so this stays within a
    few ulps of the exact value for every t.
    """
    if beta == 0.0:  # 1 - 0^0 = 0, else 1
        return ops.where(t > 0.0, ops.ones_like(t), ops.zeros_like(t))
    return -ops.expm1(t * math.log(beta))


def step_scalars(t: Any, lr: Any, beta1: float, beta2: float, bias_correction: Any) -> Scalars:
    """Everything a step needs that depends on t (a float tensor, counted from 1)."""
    if bias_correction == "recursive":
        c1, c1_prev = _one_minus_pow(beta1, t), _one_minus_pow(beta1, t - 1.0)
        c2, c2_prev = _one_minus_pow(beta2, t), _one_minus_pow(beta2, t - 1.0)
        return Scalars((1.0 - beta1) / c1, (1.0 - beta2) / c2, lr, None, c1_prev / c1, c2_prev / c2, c2_prev)
    step_size, bc2_sqrt = lr, None
    if bias_correction:
        step_size, bc2_sqrt = lr / _one_minus_pow(beta1, t), ops.sqrt(_one_minus_pow(beta2, t))
    return Scalars(1.0 - beta1, 1.0 - beta2, step_size, bc2_sqrt, 1.0, 1.0, 1.0)


# ---- the optimizers -----------------------------------------------------------------------
class _AdamFamily(keras.optimizers.Optimizer):
    """Shared machinery of :class:`Adam` and :class:`Yogi`; ``_rule`` names the update."""

    _rule: ClassVar[str]

    def __init__(
        self,
        learning_rate: Any,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        amsgrad: bool,
        bias_correction: bool | str,
        initial_accumulator_value: float,
        weight_decay: float | None,
        **kwargs: Any,
    ) -> None:
        validate_hyperparameters(
            lr=learning_rate if isinstance(learning_rate, numbers.Real) else None,  # else a schedule
            betas=(beta_1, beta_2),
            eps=epsilon,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        if isinstance(learning_rate, numbers.Real):
            learning_rate = float(learning_rate)  # Keras accepts only float, not int or np.float32
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        self.bias_correction = bias_correction
        self.initial_accumulator_value = float(initial_accumulator_value)

    def build(self, var_list: list[Any]) -> None:
        """The one place that creates state: v = 0, s = s0, max(s) = s0, like each variable."""
        if self.built:
            return
        super().build(var_list)
        s0_value = self.initial_accumulator_value

        def s0(shape: Any, dtype: Any = None) -> Any:
            # Not keras.initializers.Constant: it rounds s0 through float32 for float64 slots.
            return ops.full(shape, s0_value, dtype=dtype)

        self._momentums, self._velocities, self._velocity_hats = [], [], []
        for variable in var_list:
            if getattr(variable, "overwrite_with_gradient", False):
                # Keras assigns such variables their gradient and never calls update_step.
                for slots in (self._momentums, self._velocities, self._velocity_hats):
                    slots.append(None)
                continue
            self._momentums.append(self.add_variable_from_reference(variable, "momentum"))
            self._velocities.append(self.add_variable_from_reference(variable, "velocity", initializer=s0))
            if self.amsgrad:
                self._velocity_hats.append(self.add_variable_from_reference(variable, "velocity_hat", initializer=s0))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step for one variable. The base class has already clipped the gradient,
        unscaled it and applied decoupled weight decay; it counts ``iterations``."""
        i = self._get_variable_index(variable)
        dtype = variable.dtype
        # The per-step scalars in float32, or float64 for float64 variables (never lower:
        # β2^t in float16 would be useless), then cast to the variable's dtype.
        scalar_dtype = "float64" if dtype == "float64" else "float32"
        t = ops.cast(self.iterations + 1, scalar_dtype)
        lr = ops.cast(learning_rate, scalar_dtype)
        k = step_scalars(t, lr, self.beta_1, self.beta_2, self.bias_correction)
        # Python floats stay Python floats: ops.cast would round them through floatx first.
        k = Scalars(*(x if x is None or isinstance(x, float) else ops.cast(x, dtype) for x in k))

        g = ops.cast(gradient, dtype)
        v_slot, s_slot = self._momentums[i], self._velocities[i]
        # Read the slots as backend tensors: arithmetic on a keras.Variable goes through
        # keras.ops, which turns Python floats into floatx tensors (0.999 -> 0.99900001).
        v = first_moment(ops.convert_to_tensor(v_slot), g, self.beta_1, k)
        s = second_moment(self._rule, ops.convert_to_tensor(s_slot), g, self.beta_2, k, ops.sign)
        self.assign(v_slot, v)
        self.assign(s_slot, s)
        if self.amsgrad:  # PyTorch's form: the running max of the raw s, bias-corrected below
            s_max_slot = self._velocity_hats[i]
            s_max = ops.convert_to_tensor(s_max_slot)
            # ops.where, not ops.maximum: on the torch backend (Keras 3.15) ops.maximum of
            # two float64 tensors returns float32 (keras-team/keras#23223). For the same
            # reason the math uses the backend tensors' own operators, not keras.ops binaries.
            s = ops.where(s > s_max, s, s_max)
            self.assign(s_max_slot, s)
        denom = ops.sqrt(s)
        if k.bc2_sqrt is not None:
            denom = denom / k.bc2_sqrt
        self.assign_sub(variable, k.step_size * v / (denom + self.epsilon))  # ε after the sqrt

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
                "bias_correction": self.bias_correction,
                "initial_accumulator_value": self.initial_accumulator_value,
            }
        )
        return config


_ARGS = """
    Args:
        learning_rate: η, a float, a ``keras.optimizers.schedules.LearningRateSchedule``
            or a callable (default: {lr}).
        beta_1, beta_2: β1 and β2, decay rates of v and s (defaults: 0.9, 0.999).
        epsilon: ε, added *after* the square root: η·v̂/(√ŝ + ε) (default: {eps}).
            Not Keras's ε-hat; see the module docstring.
        amsgrad: keep the running max of the raw s and bias-correct it (PyTorch's form).
        bias_correction: ``True`` (divide v and s by 1-β^t), ``False``, or ``"recursive"``
            (the slots hold the debiased v̂ and ŝ; see :func:`adamlab.reference.second_moment`).
        initial_accumulator_value: s0, the value s starts from (default: {s0}).
        weight_decay: λ, decoupled (θ ← θ - ηλθ before the update, as AdamW), by the base
            class; exclude variables with ``exclude_from_weight_decay``.
        **kwargs: the base class's: ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
            ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
            ``loss_scale_factor``, ``gradient_accumulation_steps``, ``name``.

    Slots per variable: ``momentum`` (v), ``velocity`` (s), ``velocity_hat`` (max s, with
    amsgrad); the step count t is the optimizer's ``iterations`` + 1.
"""


class Adam(_AdamFamily):
    """Adam (Kingma & Ba, 2015) for Keras 3, with ε after the square root as in PyTorch.

    For t = 1, 2, ...::

        v ← β1 v + (1 - β1) g
        s ← β2 s + (1 - β2) g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults are ``torch.optim.Adam``'s: lr 1e-3, β (0.9, 0.999), ε 1e-8, s0 = 0.
    The chapter's from-scratch Adam is ``Adam(learning_rate=0.01, epsilon=1e-6)``.
    """ + _ARGS.format(lr="1e-3", eps="1e-8", s0="0")

    _rule = "adam"

    def __init__(
        self,
        learning_rate: Any = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 0.0,
        weight_decay: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            bias_correction,
            initial_accumulator_value,
            weight_decay,
            name=name,
            **kwargs,
        )


class Yogi(_AdamFamily):
    """Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018) for Keras 3.

    Adam with one line changed: the second moment moves additively, by at most
    (1 - β2)·g² per step, towards g²::

        v ← β1 v + (1 - β1) g
        s ← s - (1 - β2) · sgn(s - g²) · g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults: lr 1e-2, β (0.9, 0.999), ε 1e-3, s0 = 1e-6, bias correction on — the
    conventions of TF-Addons' Keras-2 Yogi (end of life in May 2024), optax and the paper
    author's code. The chapter's from-scratch Yogi starts from s = 0:
    ``Yogi(learning_rate=0.01, epsilon=1e-3, initial_accumulator_value=0.0)``.
    """ + _ARGS.format(lr="1e-2", eps="1e-3", s0="1e-6")

    _rule = "yogi"

    def __init__(
        self,
        learning_rate: Any = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-3,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 1e-6,
        weight_decay: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            bias_correction,
            initial_accumulator_value,
            weight_decay,
            name=name,
            **kwargs,
        )


# Registration: .keras files name these classes "adamlab>Adam" and "adamlab>Yogi".
for _cls in (Adam, Yogi):
    keras.saving.register_keras_serializable(package="adamlab")(_cls)
del _cls
