"""The readable implementation: one parameter at a time, in place, in the parameter's dtype.

It mirrors ``torch.optim.adam._single_tensor_adam`` operation for operation where the
math is Adam's, so that ``adamlab.Adam(foreach=False)`` equals ``torch.optim.Adam`` to
the last bit on CPU. Caller-owned tensors (``p.grad``) are never written: every
transformation of the gradient (maximize, L2 weight decay) makes a new tensor. The
per-step numbers come from :func:`adamlab._moments.coefficients`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adamlab._moments import Coefficients, coefficients


def _scale_add_(x: Tensor, decay: Any, y: Tensor, weight: Any) -> None:
    """x ← decay·x + weight·y, skipping a decay of exactly 1 (a float or a 0-dim tensor)."""
    if not (isinstance(decay, float) and decay == 1.0):
        x.mul_(decay)
    if isinstance(weight, Tensor):
        x.add_(y * weight)
    else:
        x.add_(y, alpha=weight)


def second_moment_(rule: str, s: Tensor, grad: Tensor, beta2: Any, k: Coefficients) -> None:
    """Update s in place. The one place where Adam and Yogi differ (see adamlab.reference)."""
    if rule == "adam":  # s ← (β2·keep2) s + w2 g²
        if isinstance(k.w2, float) and k.keep2 == 1.0:  # torch's own ops: bitwise torch.optim.Adam
            s.mul_(beta2).addcmul_(grad, grad, value=k.w2)
        else:
            _scale_add_(s, beta2 * k.keep2, grad * grad, k.w2)
        return
    g2 = grad * grad  # Yogi: s ← keep2 s + w2 sgn(g² - c2_prev s) g²
    _scale_add_(s, k.keep2, torch.sign(g2 - s * k.c2_prev).mul_(g2), k.w2)


def single_tensor_update(
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
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("the single-tensor implementation does not take grad_scale/found_inf")
    for i, owned in enumerate(params):
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if amsgrad else None
        grad = grads[i]
        param = owned
        if exp_avg.dtype != owned.dtype:  # state_dtype: do the math in the state's dtype
            param, grad = owned.to(exp_avg.dtype), grad.to(exp_avg.dtype)
        if maximize:
            grad = -grad

        step_t += 1
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        if torch.is_complex(param):  # as torch: real and imaginary parts are independent
            param, grad = torch.view_as_real(param), torch.view_as_real(grad)
            exp_avg, exp_avg_sq = torch.view_as_real(exp_avg), torch.view_as_real(exp_avg_sq)
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)

        # capturable: keep t on the device (no host sync); else read it as a float, as torch does
        k = coefficients(
            step_t if capturable else step_t.item(), lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction
        )
        exp_avg.lerp_(grad, k.w1)  # v ← v + w1 (g - v), i.e. (β1·keep1) v + w1 g
        second_moment_(rule, exp_avg_sq, grad, beta2, k)
        if max_exp_avg_sq is not None:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            denom = max_exp_avg_sq.sqrt()
        else:
            denom = exp_avg_sq.sqrt()
        if not (isinstance(k.bc2_sqrt, float) and k.bc2_sqrt == 1.0):
            denom.div_(k.bc2_sqrt)
        denom.add_(eps)  # ε after the square root
        if isinstance(k.step_size, Tensor):
            param.addcdiv_(exp_avg, denom.div_(-k.step_size))
        else:
            param.addcdiv_(exp_avg, denom, value=-k.step_size)
        if exp_avg.dtype != owned.dtype:
            owned.copy_(param.view_as(owned) if not owned.is_complex() else torch.view_as_complex(param))
