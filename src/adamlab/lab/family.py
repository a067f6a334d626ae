"""The chapter-11 optimizer family, each with the book's hyperparameters and conventions.

*Dive into Deep Learning*, chapter 11 (§11.5 minibatch SGD, §11.6 momentum, §11.7
Adagrad, §11.8 RMSProp, §11.9 Adadelta, §11.10 Adam and Yogi). The book trains each
from scratch on the ½-MSE of a linear model (``d2l.train_ch11``). The lab's concise
trainer (:func:`adamlab.lab.loop.train`, concise) minimizes ``nn.MSELoss`` instead, whose
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when an optimizer is made, not with the registry
    from torch.optim import Optimizer


# The concise trainer's loss gradient is this multiple of the book's ½-MSE gradient.
MSE_OVER_HALF_MSE = 2.0


# Factories ``f(params, lr)``, one per member, importable by name so that a run's config
# (``"adamlab.lab.family.sgd"``) can rebuild it: see :func:`adamlab.lab.names.resolve_optimizer`.
_HALF = 1 / MSE_OVER_HALF_MSE


def sgd(params: Any, lr: float = 0.05) -> Optimizer:
    import torch

    return torch.optim.SGD(params, lr=lr * _HALF)


def momentum(params: Any, lr: float = 0.01) -> Optimizer:
    import torch

    return torch.optim.SGD(params, lr=lr * _HALF, momentum=0.9)


def adagrad(params: Any, lr: float = 0.1) -> Optimizer:
    from adamlab.lab.book_optimizer import BookOptimizer

    return BookOptimizer(params, "adagrad", lr, eps=1e-6, grad_scale=_HALF)


def rmsprop(params: Any, lr: float = 0.01) -> Optimizer:
    from adamlab.lab.book_optimizer import BookOptimizer

    return BookOptimizer(params, "rmsprop", lr, gamma=0.9, eps=1e-6, grad_scale=_HALF)


def adadelta(params: Any, lr: float = 1.0) -> Optimizer:
    from adamlab.lab.book_optimizer import BookOptimizer

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
