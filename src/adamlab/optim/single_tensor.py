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
    """Update s in place. The one place where Adam and Yogi differ (see adamlab.reference).

    ``beta2`` is a float, or a tensor (``differentiable=True``): 1-β2 then arrives as the
    tensor ``k.w2`` and enters as a tensor weight (:func:`_scale_add_`), never as a Python
    scalar ``value=``, so autograd sees it."""
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
    differentiable: bool = False,
) -> None:
    """One step over each parameter in turn (see the module docstring).

    ``differentiable`` (:func:`differentiable_update`) keeps the step count as a tensor
    and computes every per-step scalar from it, and never writes in place into a tensor
    that autograd saved for the backward pass (the amsgrad max, the denominator, v where
    the parameter update reads it), as ``torch.optim.adam._single_tensor_adam`` does.

    Low-precision state reaches it decoded to float32
    (:func:`adamlab.optim.precision.low_precision_update`).
    """
    if grad_scale is not None or found_inf is not None:
        raise RuntimeError("the single-tensor implementation does not take grad_scale/found_inf")
    for i, owned in enumerate(params):
        exp_avg, exp_avg_sq, step_t = exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if amsgrad else None
        grad = grads[i]
        param = owned
        if exp_avg.dtype != owned.dtype:  # state_precision='fp32': the math in the state's dtype
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
        k = coefficients(step, lr=lr, beta1=beta1, beta2=beta2, bias_correction=bias_correction)
        if differentiable:
            _differentiable_tail(rule, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta2, eps, k)
        else:
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


def _differentiable_tail(
    rule: str,
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Tensor | None,
    beta2: Any,
    eps: float,
    k: Coefficients,
) -> None:
    """The moments and the parameter update of one step, every operation autograd-safe.

    The same math, from the same :class:`~adamlab._moments.Coefficients` record, as the
    default path; the differences are for autograd only: tensor weights in the dtype of
    what they scale, and no in-place write into a tensor that an earlier operation saved
    for the backward pass (``sqrt`` saves its result, ``maximum`` its inputs, ``addcdiv``
    its operands, and v is written again by the next step).
    """
    exp_avg.lerp_(grad, k.w1.to(exp_avg.dtype) if isinstance(k.w1, Tensor) else k.w1)
    second_moment_(rule, exp_avg_sq, grad, beta2, k)
    m = exp_avg_sq
    if max_exp_avg_sq is not None:
        # copies of both: s is written again by the next step (torch copies only the max,
        # so its amsgrad cannot backpropagate through two steps; this can)
        max_exp_avg_sq.copy_(torch.maximum(max_exp_avg_sq.clone(), exp_avg_sq.clone()))
        m = max_exp_avg_sq
    denom = (m.sqrt() / k.bc2_sqrt).add_(eps)
    param.addcdiv_(exp_avg.clone(), denom / -k.step_size)


def differentiable_update(*args: Any, **kwargs: Any) -> None:
    """:func:`single_tensor_update` with ``differentiable=True`` (the registered "differentiable")."""
    single_tensor_update(*args, **kwargs, differentiable=True)
