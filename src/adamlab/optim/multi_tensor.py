"""The multi-tensor implementation: ``torch._foreach_*`` over lists grouped by device and dtype.

Same signature and same math as :mod:`adamlab.optim.single_tensor`; a handful of
kernel launches per group instead of a handful per parameter. Per-parameter step
counts may differ (a parameter that joins late starts at t = 1), so a coefficient is
one scalar when every tensor is at the same step and a list (one entry per tensor)
otherwise. The per-step numbers come from :func:`adamlab._moments.coefficients`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adamlab._moments import coefficients


def _times(a: Any, b: Any) -> Any:
    """a·b for scalars or per-tensor lists (either side)."""
    if isinstance(a, list) or isinstance(b, list):
        n = len(a) if isinstance(a, list) else len(b)
        a, b = (a if isinstance(a, list) else [a] * n), (b if isinstance(b, list) else [b] * n)
        return [x * y for x, y in zip(a, b)]
    return a * b


def _is_one(x: Any) -> bool:
    return isinstance(x, float) and x == 1.0


def _mul_(tensors: list[Tensor], x: Any) -> None:
    if not _is_one(x):
        torch._foreach_mul_(tensors, x)


def second_moment_foreach_(
    rule: str, s: list[Tensor], grads: list[Tensor], beta2: Any, k: Callable[[str], Any]
) -> None:
    """Update every s in place. The one place where Adam and Yogi differ (see adamlab.reference)."""
    w2, keep2 = k("w2"), k("keep2")
    if rule == "adam":  # s ← (β2·keep2) s + w2 g²
        if isinstance(w2, float) and _is_one(keep2):  # torch's own ops: bitwise torch.optim.Adam
            torch._foreach_mul_(s, beta2)
            torch._foreach_addcmul_(s, grads, grads, w2)
            return
        g2w = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(g2w, w2)
        torch._foreach_mul_(s, _times(beta2, keep2))
        torch._foreach_add_(s, g2w)
        return
    # Yogi: s ← keep2 s + w2 sgn(g² - c2_prev s) g²
    g2 = torch._foreach_mul(grads, grads)
    c2_prev = k("c2_prev")
    direction = torch._foreach_sub(g2, s if _is_one(c2_prev) else torch._foreach_mul(s, c2_prev))
    torch._foreach_sign_(direction)
    torch._foreach_mul_(direction, g2)
    torch._foreach_mul_(direction, w2)
    _mul_(s, keep2)
    torch._foreach_add_(s, direction)


def _coefficient_picker(steps: list[Tensor], capturable: bool, **hyper: Any) -> Callable[[str], Any]:
    """``k(name)``: that coefficient for every tensor, as one scalar when all agree.

    Host path: t is read as a float (as torch does) and the coefficients are computed once
    per distinct t. Capturable: one 0-dim device tensor per parameter (no host sync).
    """
    if capturable:
        cs = [coefficients(t, **hyper) for t in steps]

        def pick(name: str) -> Any:
            values = [getattr(c, name) for c in cs]
            return values[0] if isinstance(values[0], float) else values  # a float depends on β only

        return pick
    values = torch.stack(steps).tolist() if len(steps) > 8 else [t.item() for t in steps]
    table = {v: coefficients(v, **hyper) for v in set(values)}
    first, *others = table.values()

    def pick(name: str) -> Any:
        # one scalar where every t gives the same value (w1, w2 and the rest that depend on β
        # only: then torch's own ops run, bitwise torch.optim.Adam); else one per tensor
        value = getattr(first, name)
        if all(getattr(c, name) == value for c in others):
            return value
        return [getattr(table[v], name) for v in values]

    return pick


def _negate(x: Any) -> Any:
    return [-v for v in x] if isinstance(x, list) else -x


def _as_real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]


def multi_tensor_update(
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
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
) -> None:
    """One step over every tensor at once (see the module docstring). Low-precision state
    reaches it decoded to float32 (:func:`adamlab.optim.precision.low_precision_update`)."""
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("the foreach implementation does not take grad_scale/found_inf")
    if not params:
        return
    tensorlists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [], state_steps]
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlists)
    for (g_params, g_grads, g_exp_avgs, g_exp_avg_sqs, g_max, g_steps), _ in grouped.values():
        owned = g_params
        if g_exp_avgs[0].dtype != g_params[0].dtype:  # state_precision='fp32': math in the state's dtype
            g_params = [p.to(g_exp_avgs[0].dtype) for p in g_params]
            g_grads = [g.to(g_exp_avgs[0].dtype) for g in g_grads]
        if maximize:
            g_grads = torch._foreach_neg(g_grads)  # a new list: p.grad stays untouched
        if g_steps[0].is_cpu:
            torch._foreach_add_(g_steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        else:
            torch._foreach_add_(g_steps, 1)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(g_params, 1 - lr * weight_decay)
            elif maximize:  # g_grads is already our own copy
                torch._foreach_add_(g_grads, g_params, alpha=weight_decay)
            else:
                g_grads = torch._foreach_add(g_grads, g_params, alpha=weight_decay)

        g_params, g_grads = _as_real(g_params), _as_real(g_grads)
        g_exp_avgs, g_exp_avg_sqs, g_max = _as_real(g_exp_avgs), _as_real(g_exp_avg_sqs), _as_real(g_max or [])

        k = _coefficient_picker(g_steps, capturable, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction)
        torch._foreach_lerp_(g_exp_avgs, g_grads, k("w1"))  # v ← v + w1 (g - v)
        second_moment_foreach_(rule, g_exp_avg_sqs, g_grads, beta2, k)
        del g_grads
        if amsgrad:
            torch._foreach_maximum_(g_max, g_exp_avg_sqs)
            denom = torch._foreach_sqrt(g_max)
        else:
            denom = torch._foreach_sqrt(g_exp_avg_sqs)
        bc2_sqrt = k("bc2_sqrt")
        if not _is_one(bc2_sqrt):
            torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)  # ε after the square root
        neg_step_size = _negate(k("step_size"))
        if isinstance(neg_step_size[0] if isinstance(neg_step_size, list) else neg_step_size, Tensor):
            torch._foreach_div_(
                denom, neg_step_size if isinstance(neg_step_size, list) else [neg_step_size] * len(denom)
            )
            torch._foreach_addcdiv_(g_params, g_exp_avgs, denom)
        else:
            torch._foreach_addcdiv_(g_params, g_exp_avgs, denom, neg_step_size)
        if owned[0].dtype != g_exp_avgs[0].dtype:
            torch._foreach_copy_(
                owned, [torch.view_as_complex(p) if o.is_complex() else p for o, p in zip(owned, g_params)]
            )
