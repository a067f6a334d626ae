"""The chapter in PyTorch: Adam and Yogi from scratch on raw tensors, and any torch optimizer.

The framework module of ``--framework torch`` (the default), beside
:mod:`~adamlab.lab.frameworks.tensorflow_chapter` and :mod:`~adamlab.lab.frameworks.mxnet_chapter`;
the loop itself is :func:`adamlab.lab.loop.train`.

* **scratch** — w ~ N(0, 0.01²) of shape (d, 1), b = 0; the update written by hand on raw
  tensors, in the chapter's notation (:func:`adam` and :func:`yogi`); 2 epochs.
* **concise** — ``nn.Linear(d, 1)`` with weight ~ N(0, 0.01²) (bias: PyTorch's default
  uniform init); any torch.optim-style optimizer; ``nn.MSELoss``; 4 epochs; the reported
  loss halved to the same ½-MSE scale.

A seed fixes the initialization and the data order: each run draws both from its own
``torch.Generator``, never from the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from adamlab.lab.data import LabData, LabInputError
from adamlab.lab.loop import RunConfig
from adamlab.lab.names import resolve_optimizer  # the allow-list of optimizer names (re-exported)

CHAPTER_RUNS = (
    ("scratch", "adam"),
    ("concise", "torch.optim.Adam"),
    ("concise", "adamlab.Adam"),
    ("scratch", "yogi"),
    ("concise", "adamlab.Yogi"),
)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


# ----------------------------------------------------------------------------------------------
# The chapter's updates, on raw tensors, in place. t counts from 1 at the first update.


def adam(p: Tensor, g: Tensor, v: Tensor, s: Tensor, t: int, lr: float, beta1=0.9, beta2=0.999, eps=1e-6) -> None:
    """One Adam step of the chapter: θ ← θ − η v̂ / (√ŝ + ε), ε after the square root."""
    v.lerp_(g, 1 - beta1)  # v ← β1 v + (1 − β1) g
    s.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # s ← β2 s + (1 − β2) g²
    _bias_corrected_step(p, v, s, t, lr, beta1, beta2, eps)


def yogi(p: Tensor, g: Tensor, v: Tensor, s: Tensor, t: int, lr: float, beta1=0.9, beta2=0.999, eps=1e-3) -> None:
    """One Yogi step of the chapter: Adam with the additive second-moment update, s0 = 0."""
    v.lerp_(g, 1 - beta1)  # v ← β1 v + (1 − β1) g
    g2 = g * g
    s.addcmul_(torch.sign(g2 - s), g2, value=1 - beta2)  # s ← s − (1 − β2) sgn(s − g²) g²
    _bias_corrected_step(p, v, s, t, lr, beta1, beta2, eps)


def _bias_corrected_step(p: Tensor, v: Tensor, s: Tensor, t: int, lr: float, beta1, beta2, eps) -> None:
    # θ ← θ − η v̂ / (√ŝ + ε) with v̂ = v / (1 − β1^t), ŝ = s / (1 − β2^t). The corrections are
    # scalars, so they go into the scalars: √ŝ = √s / √(1 − β2^t), and η v̂ = (η / (1 − β1^t)) v.
    sqrt_s_hat = s.sqrt().div_(math.sqrt(1 - beta2**t))
    p.addcdiv_(v, sqrt_s_hat.add_(eps), value=-lr / (1 - beta1**t))


SCRATCH_UPDATES: dict[str, Callable[..., None]] = {"adam": adam, "yogi": yogi}


class ScratchModel:
    """w, b and their states (v, s), as the chapter keeps them.

    w and b are views into one tensor θ = (w; b), and v and s match it, so one call of the
    update moves both. The update is elementwise, so this is the chapter's per-parameter
    loop, with half the tensor operations.
    """

    def __init__(self, features: int, rule: str, lr: float, generator: torch.Generator) -> None:
        self.theta = torch.zeros(features + 1, 1)
        self.w, self.b = self.theta[:features], self.theta[features]  # views: w (d, 1), b (1,)
        self.w.copy_(torch.normal(0.0, 0.01, size=(features, 1), generator=generator))  # b = 0
        self.v, self.s = torch.zeros_like(self.theta), torch.zeros_like(self.theta)
        self.t = 0
        self.rule, self.lr = rule, lr
        self.update = SCRATCH_UPDATES[rule]

    def implementation(self) -> str:
        hyper = "eps=1e-6" if self.rule == "adam" else "eps=1e-3, s0=0"
        return (
            f"scratch {self.rule}: the chapter's update on raw torch tensors "
            f"(lr={self.lr}, betas=(0.9, 0.999), {hyper}, bias correction, t from 1); "
            "gradient of the ½-MSE in closed form"
        )

    @staticmethod
    def prepare(X: Tensor) -> Tensor:
        """[X, 1]: with it, X w + b is one product [X, 1] θ."""
        return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)

    def step(self, X1: Tensor, y: Tensor) -> None:
        # The model is linear, so the gradient of l = ½ mean((X w + b − y)²) is exact in
        # closed form: r = X w + b − y, ∂l/∂w = Xᵀ r / n and ∂l/∂b = mean(r), both at once as
        # [X, 1]ᵀ r / n. No autograd graph, no host synchronization.
        r = (X1 @ self.theta).sub_(y)
        g = (X1.T @ r).div_(X1.shape[0])
        self.t += 1
        self.update(self.theta, g, self.v, self.s, self.t, self.lr)

    def loss(self, X1: Tensor, y: Tensor) -> float:
        return 0.5 * torch.mean((X1 @ self.theta - y) ** 2).item()

    def parameters(self) -> dict[str, Tensor]:
        return {"w": self.w, "b": self.b}

    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta, "v": self.v, "s": self.s, "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("theta", "v", "s"):
            getattr(self, name).copy_(state[name])
        self.t = int(state["t"])


class ConciseModel:
    """``nn.Linear`` plus any torch.optim-style optimizer; ``nn.MSELoss`` (the full MSE)."""

    def __init__(self, features: int, optimizer: Any, lr: float, generator: torch.Generator) -> None:
        self.net = torch.nn.utils.skip_init(torch.nn.Linear, features, 1)  # no draw from the global RNG
        with torch.no_grad():
            self.net.weight.normal_(0.0, 0.01, generator=generator)
            bound = 1 / math.sqrt(features)  # PyTorch's default bias init, from our generator
            self.net.bias.uniform_(-bound, bound, generator=generator)
        factory = resolve_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
        self.optimizer = factory(self.net.parameters(), lr=lr)

    @staticmethod
    def prepare(X: Tensor) -> Tensor:
        return X

    def implementation(self) -> str:
        cls = type(self.optimizer)
        hyper = {k: v for k, v in self.optimizer.defaults.items() if isinstance(v, (int, float, bool, tuple, str))}
        return f"concise: torch.nn.Linear + {cls.__module__}.{cls.__qualname__}({hyper}); nn.MSELoss, reported / 2"

    def step(self, X: Tensor, y: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(self.net(X), y).backward()
        self.optimizer.step()

    def loss(self, X: Tensor, y: Tensor) -> float:
        with torch.no_grad():
            return torch.nn.functional.mse_loss(self.net(X), y).item() / 2

    def parameters(self) -> dict[str, Tensor]:
        return {"weight": self.net.weight.detach(), "bias": self.net.bias.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])


@contextmanager
def _cannot_run_here(name: str) -> Iterator[None]:
    """An optimizer this trainer cannot build or step is bad input (raised before anything is written)."""
    try:
        yield
    except LabInputError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise LabInputError(f"{name} cannot run here: {e}") from None


class Session:
    """One run's model, data tensors and data order (what :func:`adamlab.lab.loop.train` drives).

    The model's init and every permutation come from one ``torch.Generator`` seeded with
    the run's seed. One untimed step of a throwaway model first, so that lazy set-up
    (torch.optim's first step imports torch._dynamo, seconds on a cold start) is not
    counted as training time; that stepped model is kept as ``template``: its
    ``state_dict()`` is the structure (keys, dtypes, shapes, hyperparameters) a checkpoint
    of this run must have (:class:`adamlab.lab.checkpoint.Expected`).
    """

    def __init__(self, config: RunConfig, data: LabData, factory: Any = None) -> None:
        X, self.y = data.tensors()
        self.generator = torch.Generator().manual_seed(config.seed)
        with _cannot_run_here(config.optimizer):  # e.g. an optimizer without an ``lr`` argument
            self.model = self._make(config, data.features, factory, self.generator)
            self.X = self.model.prepare(X)
            bs = config.batch_size  # e.g. LBFGS, whose step() needs a closure, fails here
            self.template = self._make(config, data.features, factory, torch.Generator().manual_seed(0))
            self.template.step(self.X[:bs], self.y[:bs])

    @staticmethod
    def _make(config: RunConfig, features: int, factory: Any, generator: torch.Generator) -> Any:
        if config.trainer == "scratch":
            return ScratchModel(features, config.optimizer, config.lr, generator)
        return ConciseModel(features, factory or config.optimizer, config.lr, generator)

    def permutation(self, n: int) -> Tensor:
        return torch.randperm(n, generator=self.generator)

    def parameters(self) -> dict[str, list[float]]:
        return {k: v.reshape(-1).tolist() for k, v in self.model.parameters().items()}

    def state_dict(self) -> dict[str, Any]:
        """The model and optimizer state and every RNG state (the checkpoint's ``model``,
        ``generator`` and ``global_rng``)."""
        from adamlab.lab import checkpoint

        return {
            "model": self.model.state_dict(),
            "generator": self.generator.get_state(),
            "global_rng": checkpoint.global_rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from adamlab.lab import checkpoint

        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        checkpoint.set_global_rng_states(state["global_rng"])
