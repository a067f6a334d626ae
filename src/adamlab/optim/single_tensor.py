"""The readable implementation: one parameter at a time, in place, in the parameter's dtype.

It mirrors ``torch.optim.adam._single_tensor_adam`` operation for operation where the
math is Adam's, so that ``adamlab.Adam(foreach=False)`` equals ``torch.optim.Adam`` to
the last bit on CPU. Caller-owned tensors (``p.grad``) are never written: every
transformation of the gradient (maximize, L2 weight decay) makes a new tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from adamlab.optim._coefficients import Coefficients, coefficients


def second_moment_(rule: str, s: Tensor, grad: Tensor, beta2: Any, c: Coefficients, recursive: bool) -> None:
    """Update s in place. The one place where Adam and Yogi differ (see adamlab.reference).

    ``beta2`` is a float, or a tensor (differentiable=True): then 1-β2 enters as a tensor
    weight, never as a Python scalar ``value=``, so autograd sees it."""
    if isinstance(beta2, Tensor) and not recursive:
        g2 = grad * grad
        w2 = (1 - beta2).to(s.dtype)
        if rule == "adam":  # s ← s + (1-β2)(g² - s)
            s.lerp_(g2, w2)
        else:  # s ← s - (1-β2) sgn(s - g²) g²
            s.sub_(torch.sign(s - g2) * g2 * w2)
        return
    if rule == "adam":
        if recursive:  # ŝ ← (1 - ρ_t) ŝ + ρ_t g²
            # not lerp_: for ρ_t >= 1/2 (t <= 2) it computes g² - (g² - ŝ)(1 - ρ_t), NaN when g² = inf
            s.mul_(1 - c.w2).add_(grad * grad * c.w2)
        else:  # s ← β2 s + (1-β2) g²
            s.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return
    g2 = grad * grad
    if recursive:  # ŝ ← (c_{t-1}/c_t) ŝ + ρ_t sgn(g² - c_{t-1} ŝ) g²
        direction = torch.sign(g2 - s * c.c2_prev).mul_(g2)
        s.mul_(c.keep2).add_(direction.mul_(c.w2))
    else:  # s ← s - (1-β2) sgn(s - g²) g²
        s.addcmul_(torch.sign(s - g2), g2, value=-(1 - beta2))


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
    differentiable: bool = False,
) -> None:
    """One step over each parameter in turn (see the module docstring).

    ``differentiable`` (:func:`differentiable_update`) keeps the step count as a tensor
    and computes every per-step scalar from it, and never writes in place into a tensor
    that autograd saved for the backward pass (the amsgrad max, the denominator, v where
    the parameter update reads it), as ``torch.optim.adam._single_tensor_adam`` does.
    """
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("the single-tensor implementation does not take grad_scale/found_inf")
    recursive = bias_correction == "recursive"
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

        # capturable: keep t on the device (no host sync); else read it as a float, as torch does.
        # differentiable: a copy, since β**t saves t for the backward pass and t changes next step
        step = step_t.clone() if differentiable else step_t if capturable else step_t.item()
        c = coefficients(step, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction)

        if differentiable:
            _differentiable_tail(rule, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta2, eps, c, recursive)
        else:
            exp_avg.lerp_(grad, c.w1)
            second_moment_(rule, exp_avg_sq, grad, beta2, c, recursive)
            if max_exp_avg_sq is not None:
                torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                denom = max_exp_avg_sq.sqrt()
            else:
                denom = exp_avg_sq.sqrt()
            if not (isinstance(c.bc2_sqrt, float) and c.bc2_sqrt == 1.0):
                denom.div_(c.bc2_sqrt)
            denom.add_(eps)
            if isinstance(c.step_size, Tensor):
                param.addcdiv_(exp_avg, denom.div_(-c.step_size))
            else:
                param.addcdiv_(exp_avg, denom, value=-c.step_size)
        if exp_avg.dtype != owned.dtype:
            owned.copy_(param.view_as(owned) if not owned.is_complex() else torch.view_as_complex(param))


def _differentiable_tail(
    rule: str,
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    beta2: Any,
    eps: float,
    c: Coefficients,
    recursive: bool,
) -> None:
    """The moments and the parameter update of one step, every operation autograd-safe.

    The same math as the default path; the differences are for autograd only: tensor
    weights in the dtype of what they scale, and no in-place write into a tensor that an
    earlier operation saved for the backward pass (``sqrt`` saves its result, ``maximum``
    its inputs, ``addcdiv`` its operands, and v is written again by the next step).
    """
    exp_avg.lerp_(grad, c.w1.to(exp_avg.dtype) if isinstance(c.w1, Tensor) else c.w1)
    second_moment_(rule, exp_avg_sq, grad, beta2, c, recursive)
    m = exp_avg_sq
    if max_exp_avg_sq is not None:
        # copies of both: s is written again by the next step (torch copies only the max,
        # so its amsgrad cannot backpropagate through two steps; this can)
        max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq.clone()))
        m = max_exp_avg_sq
    denom = (m.sqrt() / c.bc2_sqrt).add_(eps)
    param.addcdiv_(exp_avg.clone(), denom / -c.step_size)


def differentiable_update(*args: Any, **kwargs: Any) -> None:
    """:func:`single_tensor_update` with ``differentiable=True`` (the registered "differentiable")."""
    single_tensor_update(*args, **kwargs, differentiable=True)
