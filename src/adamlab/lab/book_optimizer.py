"""Adagrad, RMSProp and Adadelta as *Dive into Deep Learning* writes them (ε inside the roots).

Used by :mod:`adamlab.lab.family`; see there for why torch's own classes differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class BookOptimizer(Optimizer):
    """Adagrad, RMSProp or Adadelta exactly as *Dive into Deep Learning* writes them.

    ε sits *inside* the square roots. ``grad_scale`` multiplies the gradient first (a new
    tensor; ``p.grad`` is not modified): 1/2 turns an ``nn.MSELoss`` gradient into the
    book's ½-MSE gradient. For Adadelta ``lr`` multiplies g' (the book has none: lr = 1).
    """

    RULES = ("adagrad", "rmsprop", "adadelta")

    def __init__(
        self,
        params: Iterable[Any],
        rule: str,
        lr: float = 0.01,
        *,
        gamma: float = 0.9,
        eps: float = 1e-6,
        grad_scale: float = 1.0,
    ) -> None:
        if rule not in self.RULES:
            raise ValueError(f"Invalid rule: {rule!r} (expected one of {self.RULES})")
        if not lr > 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"Invalid gamma: {gamma}")
        if not eps >= 0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        super().__init__(params, dict(rule=rule, lr=lr, gamma=gamma, eps=eps, grad_scale=grad_scale))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rule, lr, gamma, eps = group["rule"], group["lr"], group["gamma"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad * group["grad_scale"]
                state = self.state[p]
                if not state:
                    state["s"] = torch.zeros_like(p)
                    if rule == "adadelta":
                        state["delta"] = torch.zeros_like(p)
                s = state["s"]
                if rule == "adagrad":
                    s.add_(g * g)  # s ← s + g²
                else:
                    s.mul_(gamma).addcmul_(g, g, value=1 - gamma)  # s ← γ s + (1 − γ) g²
                if rule == "adadelta":
                    delta = state["delta"]
                    g_prime = (delta + eps).sqrt_().div_((s + eps).sqrt_()).mul_(g)  # √(Δ+ε)/√(s+ε) g
                    p.sub_(g_prime, alpha=lr)
                    delta.mul_(gamma).addcmul_(g_prime, g_prime, value=1 - gamma)  # Δ ← ρΔ + (1−ρ) g'²
                else:
                    p.sub_(g.div_((s + eps).sqrt_()), alpha=lr)  # x ← x − η g/√(s + ε)
        return loss
