"""One signature, one dispatcher.

Every implementation of the update is a function with the signature of
:func:`adamlab.optim.single_tensor.single_tensor_update`::

    update(rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
           lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
           maximize, bias_correction, capturable, grad_scale=None, found_inf=None,
           low_precision=None)

The readable implementations (single_tensor, foreach) compute in float32 only: for
low-precision state, :func:`adam_family_update` wraps them in
:func:`adamlab.optim.precision.low_precision_update` (decode, update, encode); the fused
kernels take ``low_precision`` themselves.

``rule`` is ``"adam"`` or ``"yogi"``. The fused kernels' libraries (the compiled CPU
kernel, Triton) are loaded on first use, so a machine that cannot run them still runs
everything else; where ``fused=True`` asks for a
kernel this machine lacks, :func:`choose` warns once (naming why) and picks ``foreach``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from adamlab.optim import fused_cpu, multi_tensor, single_tensor, triton_fused
from adamlab.optim._dtensor import is_dtensor, local_shards
from adamlab.optim.flat_state import FlatState
from adamlab.optim.precision import LowPrecision, low_precision_update

IMPLEMENTATIONS = ("single_tensor", "differentiable", "foreach", "fused_cpu", "fused_cuda")


def get_implementation(name: str) -> Callable[..., None]:
    """The update function called ``name``; a fused one raises ``RuntimeError`` (saying why)
    where this machine cannot run it."""
    if name == "single_tensor":
        return single_tensor.single_tensor_update
    if name == "differentiable":
        return single_tensor.differentiable_update
    if name == "foreach":
        return multi_tensor.multi_tensor_update
    if name == "fused_cpu":
        fused_cpu.load()
        return fused_cpu.fused_cpu_update
    if name == "fused_cuda":
        triton_fused.kernel_module(interpret=False)
        return triton_fused.fused_cuda_update
    raise ValueError(f"Unknown implementation: {name!r} (expected one of {IMPLEMENTATIONS})")


# fused implementation -> None (it runs here), or [why it cannot, whether fused=True has warned]
_unavailable: dict[str, list[Any] | None] = {}


def choose(
    fused: bool | None,
    foreach: bool | None,
    device: torch.device,
    differentiable: bool = False,
    low_precision: bool = False,
) -> str:
    """The one place that picks an implementation for a group's tensors on ``device``.

    ``differentiable=True`` runs the autograd-safe single-tensor update (validation has
    refused it with ``fused`` or ``foreach=True``, as torch does). ``fused=True`` runs the
    device's fused kernel (warning once, and running foreach, where it is missing).
    ``low_precision=True`` (the group's state is stored in bf16 or 8 bits, or its bfloat16
    parameters are rounded stochastically, and the fused kernels can run its update) makes
    fused the default: with ``fused`` and ``foreach`` both unset the fused kernel runs where
    this machine has it, silently falling back to foreach where it does not — the readable
    path decodes and encodes with many tensor operations and is far slower.
    ``fused=False`` or ``foreach=True``/``False`` keep the readable paths."""
    if differentiable:
        return "differentiable"
    if fused is None and foreach is None and low_precision and device.type in ("cpu", "cuda"):
        name = "fused_cpu" if device.type == "cpu" else "fused_cuda"
        return name if _available(name, warn=None) else "foreach"
    if fused:
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(
                f"fused=True is not available for {device.type} tensors in this build of adamlab; "
                "use foreach=True (or leave fused unset)"
            )
        name = "fused_cpu" if device.type == "cpu" else "fused_cuda"
        return name if _available(name, warn=device.type) else "foreach"
    return "single_tensor" if foreach is False else "foreach"


def _available(name: str, warn: str | None) -> bool:
    """Whether the fused implementation ``name`` runs here (checked once per process). Where
    it does not, the first ``fused=True`` that meets it (``warn`` names the device) warns
    once, naming why; the fused-by-default choice of low-precision state falls back quietly."""
    if name not in _unavailable:
        try:
            get_implementation(name)
            _unavailable[name] = None
        except RuntimeError as error:
            _unavailable[name] = [str(error), False]
    why = _unavailable[name]
    if why is not None and warn is not None and not why[1]:
        why[1] = True
        warnings.warn(
            f"fused=True on {warn} tensors runs the foreach implementation instead: {why[0]}",
            RuntimeWarning,
            stacklevel=5,
        )
    return why is None


def adam_family_update(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    implementation: str,
    lr: Any,
    beta1: Any,
    beta2: Any,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    bias_correction: bool | str,
    capturable: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    low_precision: LowPrecision | None = None,
    flat_state: FlatState | None = None,
) -> None:
    """Run one step of ``rule`` over the given tensors with the named implementation.

    ``low_precision`` (:class:`~adamlab.optim.precision.LowPrecision`) is passed on only when
    given: the moments are stored in bf16 or 8 bits, or bfloat16 parameters are rounded
    stochastically. ``flat_state`` (:class:`~adamlab.optim.flat_state.FlatState`: the state
    tensors are its own, checked by the caller) goes to the fused kernels only, which then
    read no state tensor's metadata; the others take the tensors as they are."""
    if rule not in ("adam", "yogi"):
        raise ValueError(f"Unknown rule: {rule!r} (expected 'adam' or 'yogi')")
    if bias_correction == "recursive" and implementation.startswith("fused"):
        raise ValueError(
            "bias_correction='recursive' is not supported with fused=True; use foreach=True (or foreach=False)"
        )
    if params and is_dtensor(params[0]):
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = local_shards(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        )
    update = get_implementation(implementation)
    extra: dict[str, Any] = {}
    if flat_state is not None and implementation.startswith("fused"):
        extra["flat_state"] = flat_state
    if low_precision is not None:
        if implementation == "differentiable":
            raise ValueError("low-precision state and stochastic rounding do not support differentiable=True")
        if implementation.startswith("fused"):
            extra = {"low_precision": low_precision}
        else:  # the float32 update between decoding and encoding
            update = functools.partial(low_precision_update, update, low_precision=low_precision)
    update(
        rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize,
        bias_correction=bias_correction, capturable=capturable, grad_scale=grad_scale, found_inf=found_inf,
        **extra,
    )  # fmt: skip
