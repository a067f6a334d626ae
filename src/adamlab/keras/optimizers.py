"""``adamlab.keras.Adam`` and ``adamlab.keras.Yogi``: Keras 3 optimizers, any backend.

Both are ``keras.optimizers.Optimizer`` subclasses: slot variables are made in
:meth:`build`, the update is written with ``keras.ops`` only, so one class runs on the
TensorFlow, JAX and PyTorch backends, and the base class keeps its features (clipnorm,
clipvalue, global_clipnorm, EMA, loss scaling, gradient accumulation, learning-rate
schedules, decoupled weight decay). Both are registered as serializable (``adamlab>Adam``,
``adamlab>Yogi``), so a model compiled with them saves to and loads from ``.keras``
files, optimizer state included, once ``adamlab.keras`` has been imported.

**Names.** Importing this module also makes three plain names work wherever Keras takes an
optimizer name (``model.compile(optimizer="yogi")``, ``keras.optimizers.get``):
``"yogi"`` and ``"adamlab_yogi"`` (:class:`Yogi`) and ``"adamlab_adam"`` (:class:`Adam`),
the names ``adamlab.gluon`` registers in MXNet. ``"adam"`` stays ``keras.optimizers.Adam``:
Keras looks registered names up before its own, so registering "adam" would replace it.
The serialized names ``"adamlab>Adam"`` and ``"adamlab>Yogi"`` work too.

Conventions, the same as :mod:`adamlab.reference` and the torch classes
(``t`` counts from 1; ``v`` is the slot ``momentum``, ``s`` the slot ``velocity``,
max(s) the slot ``velocity_hat``)::

    v ← β1 v + (1 - β1) g
    s ← β2 s + (1 - β2) g²                   Adam
    s ← s - (1 - β2) sgn(s - g²) g²          Yogi (the only line that differs)
    θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

**ε goes after the square root.** ``keras.optimizers.Adam`` uses the "ε-hat" form
instead, ``θ ← θ - η √(1-β2^t)/(1-β1^t) · v / (√s + ε̂)`` with ε̂ = 1e-7 by default.
Dividing through by √(1-β2^t) shows that ε̂ is an **ε = ε̂ / √(1-β2^t)** here: about
31.6 ε̂ at t = 1 (β2 = 0.999), falling to ε̂ over the first few thousand steps. The two
forms agree only when ε = 0, so ``adamlab.keras.Adam`` and ``keras.optimizers.Adam``
differ numerically, mostly early in training and where √s is comparable to ε.
``epsilon_hat=True`` reads ``epsilon`` as ε̂: ``Adam(epsilon=1e-7, epsilon_hat=True)`` is
``keras.optimizers.Adam``'s update, and ``Yogi(epsilon_hat=True)`` is TF-Addons' Yogi
(which adds its ε to the raw √s the same way) for Keras 3.

**Sparse gradients** (``tf.IndexedSlices`` from every ``Embedding`` layer on TensorFlow,
``tf.SparseTensor``, JAX ``BCOO``/``BCSR``, torch sparse tensors) are densified on entry,
before clipping, loss-scale undoing and gradient accumulation: a row-sparse gradient *is*
the dense gradient whose untouched rows are 0 (repeated indices summed), and the update
is the dense algorithm on it, as ``keras.optimizers.Adam`` does. A "lazy" update of the
touched rows only would be another algorithm: v must decay and θ keep moving on every row
with momentum, even where g = 0 (for Adam s decays there too; for Yogi g = 0 leaves s
unchanged, sgn(s)·0 = 0). ``clipnorm`` therefore sees the norm of the dense gradient,
repeated indices summed (TensorFlow's own ``clip_by_norm`` on ``IndexedSlices`` takes the
norm of the slices as given). The price is dense work per step on the embedding matrix,
the same as Keras's Adam.

**Weight decay** is the base class's, which Keras applies *decoupled*, before the update
and with the current learning rate: θ ← θ - ηλθ. That is the reference's
``decoupled_weight_decay=True`` (AdamW; ``adamlab.Adam(..., decoupled_weight_decay=True)``
in torch), not ``torch.optim.Adam``'s ``weight_decay``, which adds λθ to the gradient.
For that L2 form put a regularizer on the layers instead:
``kernel_regularizer=keras.regularizers.L2(λ / 2)`` adds λθ to the gradient.

Defaults (the torch classes'): Adam lr 1e-3, β (0.9, 0.999), ε 1e-8, s0 = 0, v0 = 0;
Yogi lr 1e-2, β (0.9, 0.999), ε 1e-3, s0 = 1e-6 (TF-Addons, optax, the paper's author),
v0 = 0. The chapter's from-scratch variants are ``Adam(learning_rate=0.01, epsilon=1e-6)``
and ``Yogi(learning_rate=0.01, epsilon=1e-3, initial_accumulator_value=0.0)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import keras
from keras import ops

from adamlab._moments import Scalars, first_moment, second_moment
from adamlab.validation import validate_hyperparameters

__all__ = ["NAMES", "Adam", "Yogi", "dense_gradient"]


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


# ---- sparse gradients ---------------------------------------------------------------------
def dense_gradient(gradient: Any) -> Any:
    """The dense tensor a sparse gradient stands for: untouched rows 0, repeated indices summed.

    Covers ``tf.IndexedSlices`` (the gradient of every ``Embedding`` lookup on TensorFlow),
    ``tf.SparseTensor``, JAX's ``BCOO``/``BCSR`` and torch's sparse layouts; anything else
    is returned as it is. Only the active backend's package is imported.
    """
    if gradient is None:
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)  # unsorted_segment_sum: duplicates add up
        if isinstance(gradient, tf.SparseTensor):
            return tf.sparse.to_dense(tf.sparse.reorder(gradient))
    elif backend == "jax":
        from jax.experimental import sparse

        if isinstance(gradient, sparse.JAXSparse):
            return gradient.todense()
    elif backend == "torch" and getattr(gradient, "layout", None) is not None:
        import torch

        if gradient.layout != torch.strided:
            return gradient.to_dense()
    return gradient


# ---- the optimizers -----------------------------------------------------------------------
class _AdamFamily(keras.optimizers.Optimizer):
    """Shared machinery of :class:`Adam` and :class:`Yogi`; ``_rule`` names the update."""

    _rule: ClassVar[str]

    def __init__(
        self,
        *,
        learning_rate: Any,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        amsgrad: bool,
        bias_correction: bool | str,
        initial_accumulator_value: float,
        initial_exp_avg_value: float,
        epsilon_hat: bool,
        weight_decay: float | None,
        clipnorm: float | None,
        clipvalue: float | None,
        global_clipnorm: float | None,
        use_ema: bool,
        ema_momentum: float,
        ema_overwrite_frequency: int | None,
        loss_scale_factor: float | None,
        gradient_accumulation_steps: int | None,
        name: str | None,
    ) -> None:
        validate_hyperparameters(
            lr=learning_rate if isinstance(learning_rate, numbers.Real) else None,  # else a schedule
            betas=(beta_1, beta_2),
            eps=epsilon,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        # v0 is a signed average: any finite real.
        if isinstance(initial_exp_avg_value, bool) or not isinstance(initial_exp_avg_value, numbers.Real):
            raise ValueError(f"Invalid initial_exp_avg_value (v0): {initial_exp_avg_value!r} (expected a real number)")
        if not math.isfinite(initial_exp_avg_value):
            raise ValueError(f"Invalid initial_exp_avg_value (v0): {initial_exp_avg_value}")
        if isinstance(learning_rate, numbers.Real):
            learning_rate = float(learning_rate)  # Keras accepts only float, not int or np.float32
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
        )
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        self.bias_correction = bias_correction
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.initial_exp_avg_value = float(initial_exp_avg_value)
        self.epsilon_hat = bool(epsilon_hat)

    def build(self, var_list: list[Any]) -> None:
        """The one place that creates state: v = v0, s = s0, max(s) = s0, like each variable."""
        if self.built:
            return
        super().build(var_list)

        def constant(value: float) -> Callable[..., Any]:
            # Not keras.initializers.Constant: it rounds through float32 for float64 slots.
            return lambda shape, dtype=None: ops.full(shape, value, dtype=dtype)

        v0, s0 = constant(self.initial_exp_avg_value), constant(self.initial_accumulator_value)
        self._momentums, self._velocities, self._velocity_hats = [], [], []
        for variable in var_list:
            if getattr(variable, "overwrite_with_gradient", False):
                # Keras assigns such variables their gradient and never calls update_step.
                for slots in (self._momentums, self._velocities, self._velocity_hats):
                    slots.append(None)
                continue
            self._momentums.append(self.add_variable_from_reference(variable, "momentum", initializer=v0))
            self._velocities.append(self.add_variable_from_reference(variable, "velocity", initializer=s0))
            if self.amsgrad:
                self._velocity_hats.append(self.add_variable_from_reference(variable, "velocity_hat", initializer=s0))

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        """Keras's ``apply``, with sparse gradients densified first (see the module docstring):
        clipping, loss-scale undoing and gradient accumulation all see the dense gradient."""
        return super().apply([dense_gradient(g) for g in grads], trainable_variables)

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
        eps: Any = self.epsilon
        if self.epsilon_hat and self.bias_correction is not False:  # ε = ε̂ / √(1 - β2^t)
            eps = ops.cast(self.epsilon / ops.sqrt(_one_minus_pow(self.beta_2, t)), dtype)

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
        self.assign_sub(variable, k.step_size * v / (denom + eps))  # ε after the sqrt

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
                "initial_exp_avg_value": self.initial_exp_avg_value,
                "epsilon_hat": self.epsilon_hat,
            }
        )
        return config


_ARGS = """    Args:
        learning_rate: η, a float, a ``keras.optimizers.schedules.LearningRateSchedule``
            or a callable returning a float (default: {lr}).
        beta_1: β1, the decay rate of v (default: 0.9).
        beta_2: β2, the decay rate of s (default: 0.999).
        epsilon: ε, added *after* the square root: η·v̂/(√ŝ + ε) (default: {eps}).
        amsgrad: keep the running max of the raw s and bias-correct it (PyTorch's form;
            with ``bias_correction="recursive"`` the max of ŝ, optax's form).
        bias_correction: ``True`` (divide v and s by 1-β^t), ``False``, or ``"recursive"``
            (the slots hold the debiased v̂ and ŝ; see :func:`adamlab.reference.second_moment`).
        initial_accumulator_value: s0, the value s starts from (default: {s0}).
        initial_exp_avg_value: v0, the value v starts from (default: 0; optax's Yogi,
            ``torch_optimizer.Yogi`` and ``pytorch_optimizer.Yogi`` use 1e-6).
        epsilon_hat: read ``epsilon`` as Keras's ε̂, added to the raw √s before the step
            size is bias-corrected: the ε used is ε̂/√(1-β2^t) (default: False).
        weight_decay: λ, decoupled (θ ← θ - ηλθ before the update, as AdamW), by the base
            class; exclude variables with ``exclude_from_weight_decay``.
        clipnorm: clip each gradient to this L2 norm (of the dense gradient, also for
            sparse ones).
        clipvalue: clip each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: clip all gradients together to this global L2 norm.
        use_ema: keep an exponential moving average of the variables (Keras's EMA).
        ema_momentum: the EMA's momentum (default: 0.99).
        ema_overwrite_frequency: every this many steps, overwrite the variables with
            their EMA (default: never).
        loss_scale_factor: a constant the loss was multiplied by; gradients are divided
            by it before the update.
        gradient_accumulation_steps: update every this many steps with the mean of the
            accumulated gradients.
        name: the optimizer's name (default: the class name in snake case).

    Slots per variable: ``momentum`` (v), ``velocity`` (s), ``velocity_hat`` (max s, with
    amsgrad); the step count t is the optimizer's ``iterations`` + 1.
"""


class Adam(_AdamFamily):
    __doc__ = """Adam (Kingma & Ba, 2015) for Keras 3, with ε after the square root as in PyTorch.

    For t = 1, 2, ...::

        v ← β1 v + (1 - β1) g
        s ← β2 s + (1 - β2) g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults are ``torch.optim.Adam``'s: lr 1e-3, β (0.9, 0.999), ε 1e-8, s0 = v0 = 0.
    The chapter's from-scratch Adam is ``Adam(learning_rate=0.01, epsilon=1e-6)``;
    ``keras.optimizers.Adam``'s update is ``Adam(epsilon=1e-7, epsilon_hat=True)``.
    Keras name: ``"adamlab_adam"`` (``"adam"`` is Keras's own).

""" + _ARGS.format(lr="1e-3", eps="1e-8", s0="0")
    _rule = "adam"

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable[[], float] = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 0.0,
        initial_exp_avg_value: float = 0.0,
        epsilon_hat: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value,
            initial_exp_avg_value=initial_exp_avg_value,
            epsilon_hat=epsilon_hat,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
        )


class Yogi(_AdamFamily):
    __doc__ = """Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018) for Keras 3.

    Adam with one line changed: the second moment moves additively, by at most
    (1 - β2)·g² per step, towards g²::

        v ← β1 v + (1 - β1) g
        s ← s - (1 - β2) · sgn(s - g²) · g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults: lr 1e-2, β (0.9, 0.999), ε 1e-3, s0 = 1e-6, v0 = 0, bias correction on —
    the conventions of TF-Addons' Keras-2 Yogi (end of life in May 2024), optax and the
    paper author's code. TF-Addons' Yogi adds ε to the raw √s: its update is
    ``Yogi(epsilon_hat=True)``; optax's ``yogi`` starts v at 1e-6 as well:
    ``Yogi(initial_exp_avg_value=1e-6)``. The chapter's from-scratch Yogi starts from
    s = 0: ``Yogi(learning_rate=0.01, epsilon=1e-3, initial_accumulator_value=0.0)``.
    Keras names: ``"yogi"``, ``"adamlab_yogi"``.

""" + _ARGS.format(lr="1e-2", eps="1e-3", s0="1e-6")
    _rule = "yogi"

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable[[], float] = 1e-2,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-3,
        amsgrad: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 1e-6,
        initial_exp_avg_value: float = 0.0,
        epsilon_hat: bool = False,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value,
            initial_exp_avg_value=initial_exp_avg_value,
            epsilon_hat=epsilon_hat,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
        )


# Registration: .keras files name these classes "adamlab>Adam" and "adamlab>Yogi".
for _cls in (Adam, Yogi):
    keras.saving.register_keras_serializable(package="adamlab")(_cls)
del _cls

# Plain names for model.compile(optimizer=...) and keras.optimizers.get, the same as
# adamlab.gluon's. Keras looks these up before its built-ins, so never "adam".
NAMES: dict[str, type[_AdamFamily]] = {"yogi": Yogi, "adamlab_yogi": Yogi, "adamlab_adam": Adam}
keras.saving.get_custom_objects().update(NAMES)
