"""The chapter's two trainers: Adam and Yogi from scratch, and any torch optimizer.

Both follow the book's protocol (*Dive into Deep Learning*, ``train_ch11`` and
``train_concise_ch11``): a linear model ``ŷ = X w + b`` on the standardized airfoil
data, shuffled minibatches with a fresh permutation every pass, the full-data ½-MSE
recorded every 200 examples at x = examples / n (epochs), only the training work timed,
and at the end the book's line ``loss: 0.243, 0.012 sec/epoch``.

* **scratch** — w ~ N(0, 0.01²) of shape (d, 1), b = 0; the update written by hand on raw
  tensors, in the chapter's notation (:func:`adam` and :func:`yogi`); 2 epochs.
* **concise** — ``nn.Linear(d, 1)`` with weight ~ N(0, 0.01²) (bias: PyTorch's default
  uniform init); any torch.optim-style optimizer; ``nn.MSELoss``; 4 epochs; the reported
  loss halved to the same ½-MSE scale.

Every run is described by a :class:`RunConfig` (data, not globals) and returns a
:class:`RunResult` with the curve, the timing, the final parameters, the implementation
and the versions. A seed fixes the initialization and the data order: each run draws
both from its own ``torch.Generator``, never from the global RNG.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adamlab.lab import checkpoint as ckpt
from adamlab.lab.data import EXAMPLES_PER_EVAL, LabData, LabInputError
from adamlab.lab.names import resolve_optimizer  # the allow-list of optimizer names
from adamlab.lab.results import versions
from adamlab.lab.runs import CurveRun

SCRATCH_RULES = ("adam", "yogi")
DEFAULT_EPOCHS = {"scratch": 2, "concise": 4}


@dataclass(frozen=True)
class RunConfig:
    """One run of the lab. ``optimizer`` is "adam"/"yogi" (scratch) or a torch optimizer name (concise)."""

    trainer: str = "scratch"
    optimizer: str = "adam"
    lr: float = 0.01
    batch_size: int = 10
    epochs: int = 2
    seed: int = 0
    data: str | None = None  # None: the bundled airfoil file

    @property
    def name(self) -> str:
        return f"scratch {self.optimizer.capitalize()}" if self.trainer == "scratch" else self.optimizer

    def validate(self, data: LabData | None = None, *, resolve: bool = True) -> None:
        """Raise :class:`LabInputError` for any value the trainers cannot run.

        ``resolve=False`` skips looking the concise optimizer up by name (a factory was given).
        """
        if self.trainer not in DEFAULT_EPOCHS:
            raise LabInputError(f"unknown trainer {self.trainer!r} (expected 'scratch' or 'concise')")
        if self.trainer == "scratch" and self.optimizer not in SCRATCH_RULES:
            raise LabInputError(f"unknown optimizer {self.optimizer!r} for the scratch trainer (expected adam or yogi)")
        if self.trainer == "concise" and resolve:
            resolve_optimizer(self.optimizer)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr):
            raise LabInputError(f"learning rate must be a finite number, got {self.lr!r}")
        if self.lr <= 0:
            raise LabInputError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise LabInputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise LabInputError(f"epochs must be >= 1, got {self.epochs}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise LabInputError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if data is not None and data.n < self.batch_size:
            raise LabInputError(f"the data has {data.n} rows, fewer than one batch of {self.batch_size}")


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


# ----------------------------------------------------------------------------------------------


@dataclass
class RunResult(CurveRun):
    """A finished run: the curve, the timing, the final parameters and how it was made."""

    config: RunConfig
    epochs: list[float]
    losses: list[float]
    train_seconds: float
    implementation: str
    parameters: dict[str, list]
    steps: int
    data: dict[str, Any] = field(default_factory=dict)
    resumed_at_step: int | None = None
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "resumed_at_step": self.resumed_at_step}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(
            config=RunConfig(**d["config"]),
            epochs=list(d["epochs"]),
            losses=list(d["losses"]),
            train_seconds=d["train_seconds"],
            implementation=d["implementation"],
            parameters=d["parameters"],
            steps=d["steps"],
            data=d.get("data", {}),
            resumed_at_step=d.get("resumed_at_step"),
            versions=d.get("versions", {}),
        )


Progress = Callable[[int, int], None]


def train_scratch(
    optimizer: str = "adam",
    *,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int = 2,
    seed: int = 0,
    data: LabData | str | Path | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """The chapter's from-scratch Adam (``"adam"``) or Yogi (``"yogi"``); see :func:`run`."""
    config = RunConfig("scratch", optimizer, lr, batch_size, epochs, seed, _data_path(data))
    return run(config, data, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress)


def train_concise(
    optimizer: Any = "torch.optim.Adam",
    *,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int = 4,
    seed: int = 0,
    data: LabData | str | Path | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """``nn.Linear`` trained by any torch.optim-style optimizer: a name, a class, or a factory
    ``f(params, lr=...)``; see :func:`run`."""
    name = optimizer if isinstance(optimizer, str) else f"{optimizer.__module__}.{optimizer.__qualname__}"
    config = RunConfig("concise", name, lr, batch_size, epochs, seed, _data_path(data))
    factory = None if isinstance(optimizer, str) else optimizer
    return run(
        config,
        data,
        factory=factory,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        progress=progress,
    )


def _data_path(data: LabData | str | Path | None) -> str | None:
    if isinstance(data, LabData):
        return None if data.source.startswith("bundled:") else data.source
    return None if data is None else str(data)


@contextmanager
def _cannot_run_here(name: str) -> Iterator[None]:
    """An optimizer this trainer cannot build or step is bad input (raised before anything is written)."""
    try:
        yield
    except LabInputError:
        raise
    except (TypeError, ValueError, RuntimeError) as e:
        raise LabInputError(f"{name} cannot run here: {e}") from None


def _burn_in(config: RunConfig, features: int, factory: Any, X: Tensor, y: Tensor) -> ScratchModel | ConciseModel:
    """One untimed step of a throwaway model, so that lazy set-up (torch.optim's first step
    imports torch._dynamo, seconds on a cold start) is not counted as training time.
    Returned: the structure a checkpoint's model state must have."""
    generator = torch.Generator().manual_seed(0)
    if config.trainer == "scratch":
        model: ScratchModel | ConciseModel = ScratchModel(features, config.optimizer, config.lr, generator)
    else:
        model = ConciseModel(features, factory or config.optimizer, config.lr, generator)
    model.step(X, y)
    return model


def load_checkpoint(
    path: str | Path | None, config: RunConfig, data: LabData, factory: Any = None
) -> dict[str, Any] | None:
    """The checkpoint of this run at ``path``, verified and validated (:func:`ckpt.validate`), or None."""
    if path is None or not Path(path).exists():
        return None
    X, y = data.tensors()
    bs = config.batch_size
    prepare = ScratchModel.prepare if config.trainer == "scratch" else ConciseModel.prepare
    with _cannot_run_here(config.optimizer):
        template = _burn_in(config, data.features, factory, prepare(X[:bs]), y[:bs])
    expect = ckpt.Expected(
        config=asdict(config),
        data_sha1=data.sha1,
        rows=data.n,
        total_steps=config.epochs * math.ceil(data.n / bs),
        epochs=float(config.epochs),
        model=template.state_dict(),
        generator=torch.Generator().get_state(),
    )
    return ckpt.load(path, expect)


def run(
    config: RunConfig,
    data: LabData | str | Path | None = None,
    *,
    factory: Any = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: Progress | None = None,
) -> RunResult:
    """Train one run with the book's protocol.

    ``checkpoint_every=N`` saves a checkpoint to ``checkpoint`` every N optimizer steps
    (and at the end); ``resume=True`` continues from it if it exists. On CPU a resumed
    run ends bitwise where an uninterrupted one does.
    """
    from adamlab.lab.data import load

    if not isinstance(data, LabData):
        data = load(data)
    config.validate(data, resolve=factory is None)
    if checkpoint_every < 0:
        raise LabInputError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if (checkpoint_every or resume) and checkpoint is None:
        raise LabInputError("checkpointing needs a checkpoint path")
    X, y = data.tensors()
    n, bs = data.n, config.batch_size

    # Initialization: the model's init and every permutation come from this generator.
    generator = torch.Generator().manual_seed(config.seed)
    if config.trainer == "scratch":
        model: ScratchModel | ConciseModel = ScratchModel(data.features, config.optimizer, config.lr, generator)
    else:
        with _cannot_run_here(config.optimizer):  # e.g. an optimizer without an ``lr`` argument
            model = ConciseModel(data.features, factory or config.optimizer, config.lr, generator)
    X = model.prepare(X)
    with _cannot_run_here(config.optimizer):  # e.g. LBFGS, whose step() needs a closure
        _burn_in(config, data.features, factory, X[:bs], y[:bs])

    batches_per_epoch = math.ceil(n / bs)
    total_steps = config.epochs * batches_per_epoch
    step, trained, curve_x, curve_y = 0, 0.0, [], []
    perm = Xp = yp = None
    resumed_at = None
    if checkpoint is not None:
        ckpt.remove_stale_temp_files(checkpoint)  # left by a run killed mid-write
    state = load_checkpoint(checkpoint, config, data, factory) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        generator.set_state(state["generator"])
        ckpt.set_global_rng_states(state["global_rng"])
        step, trained = state["step"], state["train_seconds"]
        curve_x, curve_y = list(state["epochs"]), list(state["losses"])
        perm = state["perm"]
        if perm is not None:
            Xp, yp = X[perm], y[perm]
        resumed_at = step

    def save_checkpoint() -> None:
        ckpt.save(
            checkpoint,
            {
                "config": asdict(config),
                "data_sha1": data.sha1,
                "model": model.state_dict(),
                "generator": generator.get_state(),
                "global_rng": ckpt.global_rng_states(),
                "step": step,
                "perm": perm,
                "train_seconds": trained,
                "epochs": curve_x,
                "losses": curve_y,
            },
        )

    # Train. Shuffling and the steps are timed; evaluation, progress and checkpoints are not.
    while step < total_steps:
        epoch, k = divmod(step, batches_per_epoch)
        start = time.perf_counter()
        if k == 0:  # a fresh permutation every pass; gathering once makes each batch a view
            perm = torch.randperm(n, generator=generator)
            Xp, yp = X[perm], y[perm]
        model.step(Xp[k * bs : (k + 1) * bs], yp[k * bs : (k + 1) * bs])
        trained += time.perf_counter() - start
        step += 1
        seen_before, seen = epoch * n + min(k * bs, n), epoch * n + min((k + 1) * bs, n)
        if seen // EXAMPLES_PER_EVAL > seen_before // EXAMPLES_PER_EVAL or step == total_steps:
            if not curve_x or curve_x[-1] != seen / n:
                curve_x.append(seen / n)
                curve_y.append(model.loss(X, y))
            if progress is not None:
                progress(step, total_steps)
        if checkpoint_every and (step % checkpoint_every == 0 or step == total_steps):
            save_checkpoint()

    return RunResult(
        config=config,
        epochs=curve_x,
        losses=curve_y,
        train_seconds=trained,
        implementation=model.implementation(),
        parameters={k: v.reshape(-1).tolist() for k, v in model.parameters().items()},
        steps=step,
        data=data.describe(),
        resumed_at_step=resumed_at,
    )
