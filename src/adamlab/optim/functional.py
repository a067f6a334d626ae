"""One signature, one dispatcher.

Every implementation of the update is a function with the signature of
:func:`adamlab.optim.single_tensor.single_tensor_update`::

    update(rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
           lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
           maximize, bias_correction, capturable, grad_scale=None, found_inf=None)

``rule`` is ``"adam"`` or ``"yogi"``. Implementations are registered by name in
:data:`IMPLEMENTATIONS`; optional ones (fused kernels) are imported lazily on first use,
so a machine that cannot build them still runs everything else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.nn import Parameter

# name -> "module:function", imported on first use
IMPLEMENTATIONS: dict[str, str] = {
    "single_tensor": "adamlab.optim.single_tensor:single_tensor_update",
    "differentiable": "adamlab.optim.single_tensor:differentiable_update",
    "foreach": "adamlab.optim.multi_tensor:multi_tensor_update",
    "fused_cpu": "adamlab.optim.fused_cpu:fused_cpu_update",
    "fused_cuda": "adamlab.optim.triton_fused:fused_cuda_update",
}

_loaded: dict[str, Callable[..., None]] = {}


def get_implementation(name: str) -> Callable[..., None]:
    """The update function registered as ``name`` (imported on first use)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation: {name!r} (expected one of {sorted(IMPLEMENTATIONS)})")
    if name not in _loaded:
        module, _, attr = IMPLEMENTATIONS[name].partition(":")
        _loaded[name] = getattr(importlib.import_module(module), attr)
    return _loaded[name]


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
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    bias_correction: Any,
    capturable: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Run one step of ``rule`` over the given tensors with the named implementation.

    The keywords are spelled out (not passed on as ``**kwargs``): re-packing a dozen keyword
    arguments costs microseconds, a fifth of a small model's fused step on a GPU.
    """
    if rule not in ("adam", "yogi"):
        raise ValueError(f"Unknown rule: {rule!r} (expected 'adam' or 'yogi')")
    if params and is_dtensor(params[0]):
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = local_shards(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        )
    update = _loaded.get(implementation) or get_implementation(implementation)
    update(
        rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize,
        bias_correction=bias_correction, capturable=capturable, grad_scale=grad_scale, found_inf=found_inf,
    )  # fmt: skip


_PLAIN_TYPES = (Tensor, Parameter)


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (FSDP2, tensor parallel); cheap for plain tensors."""
    return type(t) not in _PLAIN_TYPES and hasattr(t, "_local_tensor")


def local_shards(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs) -> tuple[list[Tensor], ...]:
    """DTensors (FSDP2, tensor parallel) -> the local shards every implementation updates in place.

    The update is elementwise, so each rank updating its own shard is the whole update, and
    no op is dispatched through DTensor (torch 2.11 has no sharding strategy for
    ``_foreach_sign_``, which Yogi's foreach path uses). A gradient or state tensor whose
    placement differs from its parameter's is redistributed to the parameter's first.
    """
    from torch.distributed.tensor import DTensor

    def local(t: Tensor, like: Tensor) -> Tensor:
        if not isinstance(t, DTensor):
            return t
        if isinstance(like, DTensor) and t.placements != like.placements:
            t = t.redistribute(like.device_mesh, like.placements)
        return t.to_local()

    return (
        [local(p, p) for p in params],
        [local(g, p) for g, p in zip(grads, params)],
        [local(v, p) for v, p in zip(exp_avgs, params)],
        [local(s, p) for s, p in zip(exp_avg_sqs, params)],
        [local(m, p) for m, p in zip(max_exp_avg_sqs, params)],
    )
