"""The chapter-11 optimizer family, each with the book's hyperparameters and conventions.

*Dive into Deep Learning*, chapter 11 (§11.5 minibatch SGD, §11.6 momentum, §11.7
Adagrad, §11.8 RMSProp, §11.9 Adadelta, §11.10 Adam and Yogi). The book trains each
from scratch on the ½-MSE of a linear model (``d2l.train_ch11``). The lab's concise
trainer (:func:`adamlab.lab.train.train_concise`) minimizes ``nn.MSELoss`` instead, whose
gradient is exactly twice the ½-MSE gradient, and halves the loss it reports. Each member
below is configured so that, fed that doubled gradient, it makes *the book's update on the
½-MSE*; every rescaling is by a power of two, so nothing is rounded differently:

=========  ===========================================  ====================================
name       book's update (g: ½-MSE gradient)             implementation
=========  ===========================================  ====================================
sgd        x ← x − η g                      (η 0.05)    torch.optim.SGD, lr η/2
momentum   v ← β v + g;  x ← x − η v   (η 0.01, β 0.9)  torch.optim.SGD(momentum=β), lr η/2
adagrad    s ← s + g²;  x ← x − η g/√(s + ε)            by hand (torch puts ε outside the
           (η 0.1, ε 1e-6 *inside* the root)             root), grad_scale 1/2
rmsprop    s ← γ s + (1−γ) g²;  x ← x − η g/√(s + ε)    by hand (ditto), grad_scale 1/2
           (η 0.01, γ 0.9, ε 1e-6 inside)
adadelta   s ← ρ s + (1−ρ) g²;  g' = √(Δ+ε)/√(s+ε) g;   by hand (torch's Adadelta matches
           x ← x − g';  Δ ← ρ Δ + (1−ρ) g'²              but has one ε for two roots of
           (ρ 0.9, ε 1e-5; no learning rate)             differently scaled terms), grad_scale 1/2
adam       the chapter's (η 0.01, ε 1e-6 after √)        adamlab.Adam, ε·2
yogi       the chapter's (η 0.01, ε 1e-3, s0 = 0)        adamlab.Yogi, ε·2, s0 = 0
=========  ===========================================  ====================================

(ε·2 for Adam/Yogi: with g' = 2g, v' = 2v and s' = 4s, so v̂'/(√ŝ' + 2ε) = v̂/(√ŝ + ε).)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

# The concise trainer's loss gradient is this multiple of the book's ½-MSE gradient.
MSE_OVER_HALF_MSE = 2.0


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


# Factories ``f(params, lr)``, one per member, importable by name so that a run's config
# (``"adamlab.lab.exercises.family.sgd"``) can rebuild it: see :func:`adamlab.lab.train.resolve_optimizer`.
_HALF = 1 / MSE_OVER_HALF_MSE


def sgd(params: Any, lr: float = 0.05) -> Optimizer:
    return torch.optim.SGD(params, lr=lr * _HALF)


def momentum(params: Any, lr: float = 0.01) -> Optimizer:
    return torch.optim.SGD(params, lr=lr * _HALF, momentum=0.9)


def adagrad(params: Any, lr: float = 0.1) -> Optimizer:
    return BookOptimizer(params, "adagrad", lr, eps=1e-6, grad_scale=_HALF)


def rmsprop(params: Any, lr: float = 0.01) -> Optimizer:
    return BookOptimizer(params, "rmsprop", lr, gamma=0.9, eps=1e-6, grad_scale=_HALF)


def adadelta(params: Any, lr: float = 1.0) -> Optimizer:
    return BookOptimizer(params, "adadelta", lr, gamma=0.9, eps=1e-5, grad_scale=_HALF)


def adam(params: Any, lr: float = 0.01) -> Optimizer:
    import adamlab

    return adamlab.Adam(params, lr=lr, eps=1e-6 * MSE_OVER_HALF_MSE)


def yogi(params: Any, lr: float = 0.01) -> Optimizer:
    import adamlab

    return adamlab.Yogi(params, lr=lr, eps=1e-3 * MSE_OVER_HALF_MSE, initial_accumulator_value=0.0)


@dataclass(frozen=True)
class Member:
    """One optimizer of the family: the book's lr and hyperparameters, and its factory."""

    name: str
    lr: float
    book: str  # the book's hyperparameters, in words
    implementation: str

    @property
    def make(self) -> Callable[..., Optimizer]:
        return globals()[self.name]

    @property
    def target(self) -> str:
        """The name the lab's concise trainer resolves to :attr:`make`."""
        return f"{__name__}.{self.name}"


FAMILY: dict[str, Member] = {
    m.name: m
    for m in (
        Member("sgd", 0.05, "minibatch SGD, lr 0.05 (§11.5)", "torch.optim.SGD(lr=lr/2)"),
        Member("momentum", 0.01, "momentum, lr 0.01, beta 0.9 (§11.6)", "torch.optim.SGD(lr=lr/2, momentum=0.9)"),
        Member(
            "adagrad",
            0.1,
            "Adagrad, lr 0.1, eps 1e-6 inside the root (§11.7)",
            "by hand: BookOptimizer('adagrad', eps=1e-6, grad_scale=1/2)",
        ),
        Member(
            "rmsprop",
            0.01,
            "RMSProp, lr 0.01, gamma 0.9, eps 1e-6 inside the root (§11.8)",
            "by hand: BookOptimizer('rmsprop', gamma=0.9, eps=1e-6, grad_scale=1/2)",
        ),
        Member(
            "adadelta",
            1.0,
            "Adadelta, rho 0.9, eps 1e-5, no learning rate (§11.9)",
            "by hand: BookOptimizer('adadelta', gamma=0.9, eps=1e-5, grad_scale=1/2); lr multiplies g'",
        ),
        Member("adam", 0.01, "Adam, lr 0.01, eps 1e-6 (§11.10)", "adamlab.Adam(eps=2e-6)"),
        Member(
            "yogi",
            0.01,
            "Yogi, lr 0.01, eps 1e-3, s0 = 0 (§11.10)",
            "adamlab.Yogi(eps=2e-3, initial_accumulator_value=0)",
        ),
    )
}


def member(name: str) -> Member:
    from adamlab.lab.data import LabInputError

    if name not in FAMILY:
        raise LabInputError(f"unknown optimizer {name!r} (expected one of {', '.join(FAMILY)})")
    return FAMILY[name]
