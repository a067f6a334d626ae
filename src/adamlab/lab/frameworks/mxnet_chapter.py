"""The chapter in MXNet (legacy, 1.9.1): scratch Adam and Yogi on NDArrays, and concise
runs with ``gluon.nn.Dense(1)`` and a ``gluon.Trainer`` using MXNet's ``'adam'`` or
adamlab's Gluon optimizers (``'adamlab_adam'``, ``'yogi'``).

The scratch updates are the chapter's, on NDArrays with ``mxnet.autograd``; Yogi starts
from s = 0 with ε = 1e-3, Adam uses ε = 1e-6, ε after the square root.
"""

from __future__ import annotations

import numpy as np

from adamlab.lab.data import LabInputError
from adamlab.lab.frameworks import NumpySession
from adamlab.lab.loop import half_mse

SCRATCH_EPS = {"adam": 1e-6, "yogi": 1e-3}
CONCISE = {"gluon 'adam'": "adam", "adamlab.gluon.Adam": "adamlab_adam", "adamlab.gluon.Yogi": "yogi"}


def versions() -> dict[str, str]:
    import mxnet

    return {"mxnet": mxnet.__version__}


class ScratchModel:
    """w ~ N(0, 0.01²) of shape (d, 1), b = 0, their states v and s; the chapter's update."""

    def __init__(self, features: int, rule: str, lr: float, seed: int) -> None:
        from mxnet import autograd, nd

        self.nd, self.autograd = nd, autograd
        rng = np.random.default_rng(seed)
        self.w = nd.array(rng.normal(0.0, 0.01, size=(features, 1)))
        self.b = nd.zeros(1)
        self.params = [self.w, self.b]
        for p in self.params:
            p.attach_grad()
        self.states = [(nd.zeros(p.shape), nd.zeros(p.shape)) for p in self.params]
        self.rule, self.lr, self.t = rule, lr, 0
        self.eps = SCRATCH_EPS[rule]

    def implementation(self) -> str:
        hyper = "eps=1e-6" if self.rule == "adam" else "eps=1e-3, s0=0"
        return (
            f"mxnet scratch {self.rule}: the chapter's update on NDArrays "
            f"(lr={self.lr}, betas=(0.9, 0.999), {hyper}, bias correction, t from 1); mxnet.autograd"
        )

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        nd = self.nd
        X, y = nd.array(X), nd.array(y)
        with self.autograd.record():
            loss = (0.5 * (nd.dot(X, self.w) + self.b - y) ** 2).mean()
        loss.backward()
        self.t += 1
        beta1, beta2 = 0.9, 0.999
        for p, (v, s) in zip(self.params, self.states):
            g = p.grad
            v[:] = beta1 * v + (1 - beta1) * g  # v ← β1 v + (1 − β1) g
            if self.rule == "adam":
                s[:] = beta2 * s + (1 - beta2) * nd.square(g)  # s ← β2 s + (1 − β2) g²
            else:
                s[:] = s - (1 - beta2) * nd.sign(s - nd.square(g)) * nd.square(g)  # Yogi
            v_hat = v / (1 - beta1**self.t)
            s_hat = s / (1 - beta2**self.t)
            p[:] -= self.lr * v_hat / (nd.sqrt(s_hat) + self.eps)  # ε after the square root

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return half_mse(X @ self.w.asnumpy() + self.b.asnumpy(), y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {"w": self.w.asnumpy(), "b": self.b.asnumpy()}


class ConciseModel:
    """``gluon.nn.Dense(1)`` with weight ~ N(0, 0.01²) and bias 0, ``gluon.loss.L2Loss``
    (already ½(ŷ - y)²), a ``gluon.Trainer`` stepping by the batch size."""

    def __init__(self, features: int, optimizer: str, lr: float, seed: int) -> None:
        import mxnet as mx
        from mxnet import autograd, gluon, nd

        import adamlab.gluon  # noqa: F401  (registers 'yogi' and 'adamlab_adam')

        if optimizer not in CONCISE:
            raise LabInputError(f"unknown optimizer {optimizer!r} for --framework mxnet (known: {', '.join(CONCISE)})")
        self.nd, self.autograd = nd, autograd
        rng = np.random.default_rng(seed)
        self.net = gluon.nn.Dense(1, in_units=features)
        self.net.initialize(mx.init.Zero())
        self.net.weight.set_data(nd.array(rng.normal(0.0, 0.01, size=(1, features))))
        self.loss_fn = gluon.loss.L2Loss()
        self.trainer = gluon.Trainer(self.net.collect_params(), CONCISE[optimizer], {"learning_rate": lr})
        self.name = optimizer

    def implementation(self) -> str:
        opt = self.trainer._optimizer
        cls = type(opt)
        hyper = {
            k: getattr(opt, k)
            for k in ("lr", "beta1", "beta2", "epsilon", "initial_accumulator_value")
            if hasattr(opt, k)
        }
        where = f"{cls.__module__}.{cls.__qualname__}({hyper})"
        return f"mxnet concise: gluon.nn.Dense(1) + gluon.Trainer({self.name!r} = {where}); L2Loss"

    def step(self, X: np.ndarray, y: np.ndarray) -> None:
        X, y = self.nd.array(X), self.nd.array(y)
        with self.autograd.record():
            loss = self.loss_fn(self.net(X), y)
        loss.backward()
        self.trainer.step(X.shape[0])

    def loss(self, X: np.ndarray, y: np.ndarray) -> float:
        return half_mse(X @ self.net.weight.data().asnumpy().T + self.net.bias.data().asnumpy(), y)

    def parameters(self) -> dict[str, np.ndarray]:
        return {"weight": self.net.weight.data().asnumpy(), "bias": self.net.bias.data().asnumpy()}


class Session(NumpySession):
    """One run (see :class:`adamlab.lab.frameworks.NumpySession`)."""

    scratch_model = ScratchModel
    concise_model = ConciseModel
