"""Yogi's larger initial batch: start s (and optionally v) from k minibatches' gradients.

Zaheer, Reddi, Sachan, Kale & Kumar (NeurIPS 2018), Section 4 and the experiments, and
*Dive into Deep Learning* §11.10 (mentioned, not implemented there): instead of s0 = 0
(the chapter) or a tiny constant (s0 = 1e-6, the library convention), estimate the second
moment from the gradients of k minibatches *before* the first update::

    s0 = (1/k) Σ_{j=1..k} g_j²          (elementwise)
    v0 = (1/k) Σ_{j=1..k} g_j           (only with ``first_moment=True``; else v0 = 0)

No parameter moves and the step count stays 0: the k gradients only fill the state, in
the usual keys (``exp_avg``, ``exp_avg_sq``, and ``max_exp_avg_sq`` with AMSGrad), so
the state checkpoints with ``state_dict()`` like any other.

Bias correction: the standard correction divides s by 1 - β2^t, which assumes s0 = 0; a
state that starts at E[g²] is then *over*-estimated by a factor ~1/(1 - β2^t) (≈1000 at
t = 1 for β2 = 0.999) and the first steps shrink. The Yogi paper's algorithm has no bias
correction, and that is the intended pairing: ``Yogi(..., bias_correction=False)``.
``bias_correction="recursive"`` would discard the estimate at the first step (ρ_1 = 1), so
it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

# One minibatch: its gradients, aligned with the optimizer's parameters (a None for a
# parameter without one), or a closure that computes the minibatch loss (as for step()).
Batch = Union[Sequence[Union[Tensor, None]], Callable[[], Any]]


def _params(optimizer: Optimizer) -> list[tuple[Tensor, dict[str, Any]]]:
    return [(p, group) for group in optimizer.param_groups for p in group["params"]]


def _new_state(optimizer: Optimizer, p: Tensor, group: dict[str, Any], ordinals: dict[int, int]) -> dict[str, Any]:
    """The state the optimizer would create at the first step (adamlab's own function, given
    the parameters' state_dict ordinals, computed once for all: its seeds need them)."""
    init = getattr(optimizer, "_init_state", None)
    if init is not None:
        return init(p, group, ordinals.get(id(p)))
    # torch.optim.Adam / AdamW: the same keys and dtypes torch creates lazily.
    state = optimizer.state[p]
    on_device = group.get("capturable", False) or group.get("fused", False)
    # torch's step dtype: float32 with fused, else the default scalar dtype (float64 under a float64 default)
    fused = group.get("fused", False)
    dtype = torch.float32 if fused or torch.get_default_dtype() != torch.float64 else torch.float64
    state["step"] = torch.zeros((), dtype=dtype, device=p.device if on_device else "cpu")
    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if group.get("amsgrad", False):
        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _batch_grads(batch: Batch, params: list[Tensor], j: int) -> list[Tensor | None]:
    """Batch ``j``'s gradients, one per parameter (None where it has none), each checked:
    a tensor shaped like its parameter, dense, finite. ``TypeError``/``ValueError`` name the
    batch and the parameter."""
    if callable(batch):
        saved = [p.grad for p in params]  # never clobber the caller's gradients
        for p in params:
            p.grad = None
        try:
            with torch.enable_grad():
                loss = batch()
                if not isinstance(loss, Tensor):
                    raise TypeError(f"batch {j}: the closure returned {loss!r}, not a loss tensor")
                if loss.numel() != 1:
                    raise ValueError(
                        f"batch {j}: the closure returned a loss of shape {tuple(loss.shape)}, not a scalar"
                    )
                if not loss.requires_grad:
                    raise ValueError(f"batch {j}: the closure's loss does not depend on any parameter (no grad_fn)")
                loss.backward()
            grads = [None if p.grad is None else p.grad.detach() for p in params]
        finally:
            for p, g in zip(params, saved):
                p.grad = g
    elif isinstance(batch, (Tensor, str, bytes, Mapping)) or not isinstance(batch, Iterable):
        raise TypeError(
            f"batch {j} is {type(batch).__name__}: expected a list of gradients (one per parameter, "
            "None where none) or a closure returning the loss"
        )
    else:
        grads = list(batch)
    if len(grads) != len(params):
        raise ValueError(f"batch {j} has {len(grads)} gradient(s), the optimizer has {len(params)} parameter(s)")
    for i, (g, p) in enumerate(zip(grads, params)):
        if g is None:
            continue
        if not isinstance(g, Tensor):
            raise TypeError(f"batch {j}: gradient {i} is {type(g).__name__} {g!r}, expected a tensor or None")
        if g.is_sparse:
            raise ValueError(f"batch {j}: gradient {i} is sparse; initialize_moments does not take sparse gradients")
        if g.shape != p.shape:
            raise ValueError(f"batch {j}: gradient {i} has shape {tuple(g.shape)}, its parameter {tuple(p.shape)}")
        if g.is_complex() != p.is_complex() or not (g.is_floating_point() or g.is_complex()):
            raise TypeError(f"batch {j}: gradient {i} has dtype {g.dtype}, its parameter {p.dtype}")
        real = torch.view_as_real(g) if g.is_complex() else g
        finite = torch.isfinite(real)
        if not bool(finite.all()):
            raise ValueError(
                f"batch {j}: gradient {i} (shape {tuple(p.shape)}) holds inf or NaN "
                f"({real[~finite][0].item()!r} first); s would hold it for good"
            )
    return grads


@torch.no_grad()
def initialize_moments(optimizer: Optimizer, batches: Iterable[Batch], *, first_moment: bool = False) -> int:
    """Fill s (and v if ``first_moment``) with the average over ``batches`` of g² (and g).

    ``batches`` yields, per minibatch, either the gradients (a sequence aligned with
    ``[p for group in optimizer.param_groups for p in group["params"]]``; None for a
    parameter that has none) or a closure returning the minibatch loss, which is
    backpropagated (the parameters' ``.grad`` is restored afterwards). A parameter is
    initialized from the batches that gave it a gradient; one that got none keeps the
    default state. Works for adamlab.Adam/Yogi and torch.optim.Adam/AdamW.

    Must be called before the first step. Returns k, the number of batches used.

    Every batch is checked before anything is written: a batch that is not a gradient list
    or a closure, a closure that returns no scalar loss, a gradient that is not a tensor
    shaped like its parameter, or one holding inf or NaN (s would keep it for good: a NaN
    in s makes every later step NaN, which ``skip_nonfinite`` cannot catch) raises
    ``TypeError``/``ValueError`` naming the batch and the parameter, and the optimizer's
    state is left as it was.
    """
    entries = _params(optimizer)
    params = [p for p, _ in entries]
    for p, group in entries:
        if group.get("bias_correction", True) == "recursive":
            raise ValueError(
                "initialize_moments cannot be used with bias_correction='recursive': its first step "
                "sets s to g_1² and discards s0 (use bias_correction=False, as the Yogi paper does)"
            )
        state = optimizer.state.get(p)
        if state and float(state["step"]) > 0:
            raise ValueError(f"initialize_moments must be called before the first step (step = {float(state['step'])})")
    sums = [None] * len(params)
    sq_sums = [None] * len(params)
    counts = [0] * len(params)
    k = 0
    if batches is None or isinstance(batches, (Tensor, str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of batches (gradient lists or closures), got {type(batches).__name__}"
        )
    for j, batch in enumerate(batches):
        k += 1
        for i, g in enumerate(_batch_grads(batch, params, j)):
            if g is None:
                continue
            g = torch.view_as_real(g) if g.is_complex() else g  # as the update: re and im apart
            g = g.to(torch.float64)  # accumulate in float64; round once into the state
            sq_sums[i] = g * g if sq_sums[i] is None else sq_sums[i].addcmul_(g, g)
            if first_moment:
                sums[i] = g.clone() if sums[i] is None else sums[i].add_(g)
            counts[i] += 1
    if k == 0:
        raise ValueError("initialize_moments needs at least one batch")
    ordinals = optimizer._ordinals() if hasattr(optimizer, "_ordinals") else {}  # once: not per parameter
    for i, (p, group) in enumerate(entries):
        if counts[i] == 0:
            continue
        state = optimizer.state[p] if optimizer.state.get(p) else _new_state(optimizer, p, group, ordinals)
        block = group.get("block_size", 256)
        _fill(state, "exp_avg_sq", sq_sums[i] / counts[i], block)
        if "max_exp_avg_sq" in state:
            _fill(state, "max_exp_avg_sq", sq_sums[i] / counts[i], block)
        if first_moment:
            _fill(state, "exp_avg", sums[i] / counts[i], block)
    lay_out = getattr(optimizer, "_lay_out_flat", None)  # adamlab's: fused=True state in one storage per kind
    if lay_out is not None:
        lay_out()
    return k


def _fill(state: dict[str, Any], key: str, value: Tensor, block_size: int) -> None:
    """Store ``value`` as the moment ``key``: in its dtype (to nearest), or as 8-bit codes and
    block scales (``state_precision="8bit"``; blocks over the moment's memory order)."""
    target = state[key]
    if target.dtype == torch.uint8:
        from adamlab.optim import precision as lowp

        values = lowp.empty_like_layout(target, torch.float32)
        values.copy_(value.to(device=target.device, dtype=torch.float32).view(target.shape))
        stream = lowp.STREAM_V if key == "exp_avg" else lowp.STREAM_S
        lowp.encode_(target, state[key + "_absmax"], values, block_size, stream, None)
        return
    view = torch.view_as_real(target) if target.is_complex() else target
    view.copy_(value.to(device=view.device, dtype=view.dtype))


def minibatch_gradients(
    params: Iterable[Tensor], loss_fn: Callable[..., Tensor], batches: Iterable[Any]
) -> Iterable[list[Tensor | None]]:
    """Yield the gradients of ``loss_fn(*batch)`` w.r.t. ``params`` for each batch (no ``.grad`` touched).

    ``Yogi.initialize_moments(minibatch_gradients(model.parameters(), loss, batches))``
    """
    params = list(params)
    for batch in batches:
        with torch.enable_grad():
            loss = loss_fn(*batch) if isinstance(batch, (tuple, list)) else loss_fn(batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        yield [None if g is None else g.detach() for g in grads]
