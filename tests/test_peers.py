"""The compatibility matrix, one test per row (``tests/peers.py``): each peer, run for 1,000
float64 steps on random gradients, against adamlab's reference with the settings that
reproduce it. A row runs where its library is installed and skips with the reason
elsewhere: torch, torch_optimizer and pytorch_optimizer in the main environment, optax and
Keras in the ``keras`` nox environment, MXNet in the ``mxnet`` one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.peers import PEERS, Peer, compare, data, missing, tf_addons_yogi

pytestmark = pytest.mark.slow


def _require(peer: Peer) -> None:
    why = missing(peer)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("peer", PEERS, ids=[p.name for p in PEERS])
def test_peer_matches_the_reference(peer: Peer) -> None:
    _require(peer)
    worst = compare(peer)
    assert worst <= peer.bound, f"{peer.name}: largest relative difference {worst:.2e} > {peer.bound:.0e}"


# The settings each row needs are needed: without them the same peer is far off.
SETTINGS = {
    "optax.yogi": dict(v0=0.0),
    "torch_optimizer.Yogi (0.3.0), weight_decay=λ": dict(v0=0.0),
    "pytorch_optimizer.Yogi, weight_decay=λ": dict(v0=0.0, hyper_decoupled_weight_decay=False),
    "TF-Addons Yogi (formula)": dict(hyper_eps_hat=False),
    "keras.optimizers.Adam, ε̂ = 1e-4": dict(hyper_eps_hat=False),
    "mxnet.optimizer.Adam (1.9.1), ε̂ = 1e-4, wd=λ": dict(hyper_eps_hat=False),
    "optax.amsgrad": dict(hyper_bias_correction=True),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_without_the_setting_the_row_fails(name: str) -> None:
    peer = next(p for p in PEERS if p.name == name)
    _require(peer)
    changes = SETTINGS[name]
    hyper = dict(peer.hyper, **{k[len("hyper_") :]: v for k, v in changes.items() if k.startswith("hyper_")})
    other = dataclasses.replace(peer, hyper=hyper, **{k: v for k, v in changes.items() if not k.startswith("hyper_")})
    right, wrong = compare(peer), compare(other)
    assert wrong > max(10 * peer.bound, 100 * right), f"{name}: {changes} gives {wrong:.1e}, with it {right:.1e}"


def test_tf_addons_formula_is_the_epsilon_hat_form() -> None:
    """TF-Addons adds ε̂ to the raw √s: at t = 1 that is ε = ε̂/√(1-β2) ≈ 31.6 ε̂ next to √ŝ,
    checked on one step against the closed form (θ1 = θ0 - η g/(|g| + ε̂/√(1-β2)) for s0 = 0)."""
    theta0, grads = data(seed=1)
    g = grads[0][0]
    out = tf_addons_yogi([theta0[0]], [[g]], epsilon=1e-3, initial_accumulator_value=0.0)
    want = theta0[0] - 0.01 * g / (np.abs(g) + 1e-3 / np.sqrt(1.0 - 0.999))
    np.testing.assert_allclose(out["theta"][0], want, rtol=1e-14, atol=0.0)
