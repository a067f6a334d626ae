"""The compatibility matrix: other libraries' Adam and Yogi against adamlab's reference.

Each :class:`Peer` runs one library's optimizer for ``STEPS`` steps on the same random
float64 gradients and returns its parameters and state; :func:`compare` runs
:mod:`adamlab.reference` with the settings that reproduce that peer and returns the
largest relative difference, ``max ‖peer − reference‖∞ / ‖reference‖∞`` over every
tensor the peer exposes (θ, v, s and max s, each per parameter). ``tests/test_peers.py``
turns each row into a test that runs where the peer is installed; ``docs/compatibility.md``
holds the table, regenerated with::

    python -m tests.peers          # in each environment: .venv, .nox/keras, .nox/mxnet

Settings per row are those a user would pick: each library's defaults where they are the
point of the row (Yogi's s0 and v0, Keras's ε̂), otherwise the same η, β and λ for all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamlab import reference

STEPS = 1000
SHAPES = [(8, 4), (16,)]
Run = Callable[[list[np.ndarray], list[list[np.ndarray]]], dict[str, list[np.ndarray]]]


@dataclass(frozen=True)
class Peer:
    """One row of the matrix."""

    name: str  # the peer, as the table names it
    needs: str | None  # the module that must be importable (None: always runs)
    adamlab: str  # the adamlab settings that reproduce it, as a user writes them
    rule: str  # reference rule
    hyper: dict[str, Any]  # reference.step keywords
    run: Run
    s0: float = 0.0
    v0: float = 0.0
    bound: float = 1e-12  # the largest relative difference the test accepts
    note: str = ""  # why the bound is not 1e-12, or how the row runs


def data(seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """θ0 ~ N(0, 1) and STEPS gradients N(0, σ²), σ = 10^U(-3, 0.5) per step and tensor."""
    rng = np.random.default_rng(seed)
    theta0 = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) * 10.0 ** rng.uniform(-3.0, 0.5) for s in SHAPES] for _ in range(STEPS)]
    return theta0, grads


def run_reference(peer: Peer, theta0: list[np.ndarray], grads: list[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    amsgrad = bool(peer.hyper.get("amsgrad", False))
    states = [reference.init_state(t, s0=peer.s0, v0=peer.v0, amsgrad=amsgrad) for t in theta0]
    thetas = list(theta0)
    for gs in grads:
        for i, g in enumerate(gs):
            thetas[i], states[i] = reference.step(peer.rule, thetas[i], g, states[i], **peer.hyper)
    out = {"theta": thetas, "v": [s.v for s in states], "s": [s.s for s in states]}
    if amsgrad:
        out["s_max"] = [s.s_max for s in states]
    return out


def compare(peer: Peer, seed: int = 0) -> float:
    """The largest normwise relative difference between the peer and the reference."""
    theta0, grads = data(seed)
    got = peer.run([t.copy() for t in theta0], grads)
    want = run_reference(peer, theta0, grads)
    worst = 0.0
    for key, tensors in got.items():
        for a, b in zip(tensors, want[key]):
            a = np.asarray(a, dtype=np.float64)
            worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
    return worst


def missing(peer: Peer) -> str | None:
    """Why the peer cannot run here, or None."""
    if peer.needs is not None and importlib.util.find_spec(peer.needs) is None:
        return f"{peer.needs} is not installed here"
    if peer.needs == "keras":
        import keras

        if keras.backend.backend() == "jax":
            import jax

            if not jax.config.jax_enable_x64:
                return "float64 Keras variables need JAX's x64 mode"
    return None


# ---- torch ---------------------------------------------------------------------------------
def _torch(factory: Callable[[list[Any]], Any], amsgrad: bool = False) -> Run:
    def run(theta0: list[np.ndarray], grads: list[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
        import torch

        params = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in theta0]
        opt = factory(params)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        state = [opt.state[p] for p in params]
        out = {
            "theta": [p.detach().numpy().copy() for p in params],
            "v": [s["exp_avg"].numpy().copy() for s in state],
            "s": [s["exp_avg_sq"].numpy().copy() for s in state],
        }
        if amsgrad:
            out["s_max"] = [s["max_exp_avg_sq"].numpy().copy() for s in state]
        return out

    return run


LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 1e-2
ADAM = dict(lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS)
YOGI = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-3)  # every Yogi's defaults


def _torch_rows() -> list[Peer]:
    rows = []
    for impl, flags in (("loop", dict(foreach=False)), ("foreach", dict(foreach=True)), ("fused", dict(fused=True))):

        def adam(ps: list[Any], flags: dict = flags) -> Any:
            import torch

            return torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **flags)

        def adamw(ps: list[Any], flags: dict = flags) -> Any:
            import torch

            return torch.optim.AdamW(ps, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, **flags)

        def amsgrad(ps: list[Any], flags: dict = flags) -> Any:
            import torch

            return torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, amsgrad=True, **flags)

        rows += [
            Peer(
                f"torch.optim.Adam({impl}), weight_decay=λ",
                "torch",
                "adamlab.Adam(same arguments): weight_decay is L2, added to g",
                "adam",
                dict(ADAM, weight_decay=WD),
                _torch(adam),
            ),
            Peer(
                f"torch.optim.AdamW({impl}), weight_decay=λ",
                "torch",
                "adamlab.Adam(..., weight_decay=λ, decoupled_weight_decay=True)",
                "adam",
                dict(ADAM, weight_decay=WD, decoupled_weight_decay=True),
                _torch(adamw),
            ),
            Peer(
                f"torch.optim.Adam({impl}, amsgrad=True)",
                "torch",
                "adamlab.Adam(..., amsgrad=True): max of the raw s, then bias-corrected",
                "adam",
                dict(ADAM, amsgrad=True),
                _torch(amsgrad, amsgrad=True),
            ),
        ]
    return rows


def _torch_optimizer_yogi(ps: list[Any]) -> Any:
    import torch_optimizer

    return torch_optimizer.Yogi(ps, weight_decay=WD)  # lr 1e-2, eps 1e-3, v and s start at 1e-6


def _pytorch_optimizer_yogi(ps: list[Any]) -> Any:
    import pytorch_optimizer

    return pytorch_optimizer.Yogi(ps, weight_decay=WD)  # lr 1e-2, eps 1e-3, v and s start at 1e-6


YOGI_V0 = "adamlab.Yogi(p, initial_exp_avg_value=1e-6) (defaults otherwise: lr 1e-2, eps 1e-3, s0 1e-6)"


# ---- optax (JAX, x64) ----------------------------------------------------------------------
def _optax(factory: Callable[[], Any], recursive: bool = False) -> Run:
    """``recursive``: the reference keeps v̂ and ŝ; compare them with optax's mu/c1, nu/c2."""

    def run(theta0: list[np.ndarray], grads: list[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays from here on
        import jax.numpy as jnp
        import optax

        tx = factory()
        params = [jnp.asarray(t, dtype=jnp.float64) for t in theta0]
        state = tx.init(params)

        @jax.jit
        def step(params: Any, state: Any, gs: Any) -> Any:
            updates, state = tx.update(gs, state, params)
            return optax.apply_updates(params, updates), state

        for gs in grads:
            params, state = step(params, state, [jnp.asarray(g, dtype=jnp.float64) for g in gs])
        get = optax.tree_utils.tree_get
        mu, nu = get(state, "mu"), get(state, "nu")
        out = {"theta": [np.asarray(p) for p in params]}
        if recursive:
            t = STEPS
            out["v"] = [np.asarray(m) / (1.0 - 0.9**t) for m in mu]
            out["s"] = [np.asarray(n) / (1.0 - 0.999**t) for n in nu]
            out["s_max"] = [np.asarray(m) for m in get(state, "nu_max")]
        else:
            out["v"], out["s"] = [np.asarray(m) for m in mu], [np.asarray(n) for n in nu]
        return out

    return run


def _optax_rows() -> list[Peer]:
    def adam() -> Any:
        import optax

        return optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)

    def adamw() -> Any:
        import optax

        return optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD)

    def yogi() -> Any:
        import optax

        return optax.yogi(1e-2)  # b1 0.9, b2 0.999, eps 1e-3, v and s start at 1e-6

    def amsgrad() -> Any:
        import optax

        return optax.amsgrad(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)

    return [
        Peer(
            "optax.adam",
            "optax",
            "adamlab.Adam(p, lr, betas, eps) (optax eps_root=0)",
            "adam",
            dict(ADAM),
            _optax(adam),
        ),
        Peer(
            "optax.adamw, weight_decay=λ",
            "optax",
            "adamlab.Adam(..., weight_decay=λ, decoupled_weight_decay=True) (optax's default λ is 1e-4, torch's 1e-2)",
            "adam",
            dict(ADAM, weight_decay=WD, decoupled_weight_decay=True),
            _optax(adamw),
        ),
        Peer(
            "optax.yogi",
            "optax",
            YOGI_V0,
            "yogi",
            dict(YOGI),
            _optax(yogi),
            s0=1e-6,
            v0=1e-6,
        ),
        Peer(
            "optax.amsgrad",
            "optax",
            'adamlab.Adam(..., amsgrad=True, bias_correction="recursive"): optax takes the max of ŝ',
            "adam",
            dict(ADAM, amsgrad=True, bias_correction="recursive"),
            _optax(amsgrad, recursive=True),
        ),
    ]


# ---- Keras, TF-Addons, MXNet: the ε-hat form -----------------------------------------------
# ε̂ = 1e-4, not Keras's 1e-7 or MXNet's 1e-8: with √s ~ 1e-3 here, the placement of a tiny ε̂
# would hide below the float32 rounding of their scalars (test_peers.py checks it shows).
EPS_HAT = 1e-4


def _keras_adam(theta0: list[np.ndarray], grads: list[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    import keras
    from keras import ops

    variables = [keras.Variable(t, dtype="float64") for t in theta0]
    opt = keras.optimizers.Adam(learning_rate=LR, beta_1=BETAS[0], beta_2=BETAS[1], epsilon=EPS_HAT)
    opt.build(variables)
    apply = opt.apply
    if keras.backend.backend() == "tensorflow":  # as model.fit runs it, and ~10x faster
        import tensorflow as tf

        apply = tf.function(lambda gs: opt.apply(gs, variables))
        for gs in grads:
            apply([tf.constant(g) for g in gs])
    else:
        for gs in grads:
            opt.apply([ops.convert_to_tensor(g, dtype="float64") for g in gs], variables)
    as_np = ops.convert_to_numpy
    return {
        "theta": [as_np(v) for v in variables],
        "v": [as_np(m) for m in opt._momentums],
        "s": [as_np(s) for s in opt._velocities],
    }


def tf_addons_yogi(
    theta0: list[np.ndarray],
    grads: list[list[np.ndarray]],
    lr: float = 0.01,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-3,
    initial_accumulator_value: float = 1e-6,
) -> dict[str, list[np.ndarray]]:
    """TF-Addons' Yogi (``tensorflow_addons/optimizers/yogi.py``, 0.23, the final release),
    its dense step transcribed in NumPy with its defaults and without its L1/L2 proximal
    terms (0 by default). The slot ``m`` starts at 0 (``add_slot``'s default
    initializer), ``v`` at ``initial_accumulator_value``; ε is added to the *raw* √v::

        lr_t = lr · √(1 - β2^t) / (1 - β1^t)
        m ← β1 m + (1 - β1) g
        v ← v + (1 - β2) · sign(g² - v) · g²
        θ ← θ - lr_t · m / (√v + ε)
    """
    thetas = list(theta0)
    m = [np.zeros_like(t) for t in theta0]
    v = [np.full_like(t, initial_accumulator_value) for t in theta0]
    for t, gs in enumerate(grads, start=1):
        lr_t = lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        for i, g in enumerate(gs):
            m[i] = m[i] * beta1 + g * (1.0 - beta1)
            g2 = g * g
            v[i] = v[i] + (1.0 - beta2) * np.sign(g2 - v[i]) * g2
            thetas[i] = thetas[i] - lr_t * m[i] / (np.sqrt(v[i]) + epsilon)
    return {"theta": thetas, "v": m, "s": v}


def _mxnet_adam(theta0: list[np.ndarray], grads: list[list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    import mxnet as mx

    opt = mx.optimizer.Adam(learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1], epsilon=EPS_HAT, wd=WD)
    weights = [mx.nd.array(t, dtype="float64") for t in theta0]
    states = [opt.create_state(i, w) for i, w in enumerate(weights)]
    for gs in grads:
        for i, (w, g) in enumerate(zip(weights, gs)):
            opt.update(i, w, mx.nd.array(g, dtype="float64"), states[i])
    return {
        "theta": [w.asnumpy() for w in weights],
        "v": [s[0].asnumpy() for s in states],
        "s": [s[1].asnumpy() for s in states],
    }


def _eps_hat_rows() -> list[Peer]:
    return [
        Peer(
            "keras.optimizers.Adam, ε̂ = 1e-4",
            "keras",
            "adamlab.keras.Adam(epsilon=ε̂, epsilon_hat=True)",
            "adam",
            # Keras keeps η in a floatx (float32) variable: the reference gets that value.
            dict(ADAM, lr=float(np.float32(LR)), eps=EPS_HAT, eps_hat=True),
            _keras_adam,
            bound=1e-5,
            note="on TensorFlow, Keras computes β^t from β rounded to float32 (ops.cast of a Python "
            "float): 1.8e-6; on JAX in x64 mode 2.7e-15 (tests/test_keras_cases.py checks ≤ 1e-12 there)",
        ),
        Peer(
            "TF-Addons Yogi (formula)",
            None,
            "adamlab.keras.Yogi(epsilon_hat=True) (lr 1e-2, ε̂ 1e-3, s0 1e-6, v0 0)",
            "yogi",
            dict(YOGI, eps_hat=True),
            tf_addons_yogi,
            s0=1e-6,
            note="tensorflow-addons (end of life, needs Keras 2 / TF < 2.16) is not installed: its dense "
            "step is transcribed from its source (tests/peers.py: tf_addons_yogi)",
        ),
        Peer(
            "mxnet.optimizer.Adam (1.9.1), ε̂ = 1e-4, wd=λ",
            "mxnet",
            "adamlab.gluon.Adam(..., epsilon=ε̂, wd=λ, epsilon_hat=True)",
            "adam",
            dict(ADAM, eps=EPS_HAT, weight_decay=WD, eps_hat=True),
            _mxnet_adam,
            bound=1e-5,
            note="MXNet's adam_update kernel takes lr, β, ε and wd as float32 scalars (its "
            "parameter struct), even for float64 arrays",
        ),
    ]


def _yogi_rows() -> list[Peer]:
    return [
        Peer(
            "torch_optimizer.Yogi (0.3.0), weight_decay=λ",
            "torch_optimizer",
            YOGI_V0 + ", weight_decay=λ (L2, added to g)",
            "yogi",
            dict(YOGI, weight_decay=WD),
            _torch(_torch_optimizer_yogi),
            s0=1e-6,
            v0=1e-6,
        ),
        Peer(
            "pytorch_optimizer.Yogi, weight_decay=λ",
            "pytorch_optimizer",
            YOGI_V0 + ", weight_decay=λ, decoupled_weight_decay=True (its weight_decouple=True default)",
            "yogi",
            dict(YOGI, weight_decay=WD, decoupled_weight_decay=True),
            _torch(_pytorch_optimizer_yogi),
            s0=1e-6,
            v0=1e-6,
        ),
    ]


PEERS: list[Peer] = [*_torch_rows(), *_optax_rows(), *_eps_hat_rows(), *_yogi_rows()]


def main() -> None:
    """Print the measured rows for the peers installed here, as Markdown."""
    for peer in PEERS:
        why = missing(peer)
        measured = f"{compare(peer):.1e}" if why is None else f"not run: {why}"
        print(f"| {peer.name} | `{peer.adamlab}` | {measured} | {peer.bound:.0e} | {peer.note} |")


if __name__ == "__main__":
    main()
