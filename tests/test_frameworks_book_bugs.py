"""What each bug of the book's TensorFlow listings would have changed (NumPy only).

The buggy updates exist only in :mod:`adamlab.lab.frameworks.book_bugs`, as labelled
demonstrations; adamlab's own updates are the correct ones, which these tests also pin to
the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from adamlab import reference
from adamlab.lab.frameworks.book_bugs import VARIANTS, ScratchVariant, Variant, compare

BY_LABEL = {v.label: v for v in VARIANTS}
ADAM, YOGI = BY_LABEL["adam (correct)"], BY_LABEL["yogi (correct)"]


def _steps(variant: Variant, grads: list[np.ndarray], theta0: np.ndarray) -> list[np.ndarray]:
    """Drive ScratchVariant with given gradients (bypassing the data) and record θ."""
    model = ScratchVariant(variant, features=theta0.size - 1, lr=0.01, seed=0)
    model.theta = theta0.copy()
    out = []
    for g in grads:
        model.update(g)
        out.append(model.theta.copy())
    return out


@pytest.mark.parametrize("variant", [ADAM, YOGI], ids=lambda v: v.rule)
def test_the_correct_variants_are_the_reference(variant: Variant) -> None:
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((4, 1))
    grads = [rng.standard_normal((4, 1)) * 10.0 ** rng.integers(-4, 2) for _ in range(50)]
    state = reference.init_state(theta)
    for got, g in zip(_steps(variant, grads, theta), grads):
        theta, state = reference.step(variant.rule, theta, g, state, lr=0.01, beta1=0.9, beta2=0.999, eps=variant.eps)
        np.testing.assert_allclose(got, theta, rtol=1e-12, atol=1e-15)


def test_eps_on_the_parameter_moves_every_coordinate_by_eps() -> None:
    """BUG 1: ``p - lr*v/sqrt(s) + eps``. With a gradient of exactly 0 after the first step
    the correct update still moves θ (v ≠ 0); the buggy one adds ε on top, and drops ε
    from the denominator."""
    theta0 = np.zeros((3, 1))
    grads = [np.full((3, 1), 1.0)] + [np.zeros((3, 1))] * 9
    buggy = _steps(BY_LABEL["adam, bug: eps added to the parameter"], grads, theta0)
    right = _steps(ADAM, grads, theta0)
    # step 1: correct θ = -η·g/(|g| + ε); buggy θ = -η·g/|g| + ε
    assert right[0][0, 0] == pytest.approx(-0.01 / (1 + 1e-6), rel=1e-12)
    assert buggy[0][0, 0] == pytest.approx(-0.01 + 1e-6, rel=1e-12)
    drift = buggy[-1] - right[-1]
    # ≈ 10 steps × ε = 1e-5, less a little from the ε missing in the denominator
    np.testing.assert_allclose(drift, 1e-5, rtol=1e-2)


def test_frozen_t_rescales_every_step() -> None:
    """BUG 2: t stays 1, so v̂ = v/(1-β1), ŝ = s/(1-β2). With a constant gradient the
    correct step is η (the bias corrections cancel the start-up bias exactly), the frozen
    one η·√(1-β2)/(1-β1)·(1-β1^t)/√(1-β2^t): 2.06x at t = 10, 1.02x at t = 100, 0.62x at t = 300."""
    grads = [np.ones((2, 1))] * 300
    buggy = np.diff(
        [0.0] + [th[0, 0] for th in _steps(BY_LABEL["adam, bug: t never incremented"], grads, np.zeros((2, 1)))]
    )
    right = np.diff([0.0] + [th[0, 0] for th in _steps(ADAM, grads, np.zeros((2, 1)))])
    ratio = buggy / right
    for t, expected in ((1, 1.0), (10, 2.06), (100, 1.02), (300, 0.62)):
        formula = np.sqrt(1 - 0.999) / (1 - 0.9) * (1 - 0.9**t) / np.sqrt(1 - 0.999**t)
        assert ratio[t - 1] == pytest.approx(formula, rel=1e-5)
        assert ratio[t - 1] == pytest.approx(expected, abs=0.01)


def test_yogi_eps_1e6_takes_bigger_first_steps_on_small_gradients() -> None:
    """BUG 3: ε = 1e-6 instead of 1e-3. From s = 0 the first step is η·g/(|g| + ε):
    for |g| = 1e-3 that is η/2 with the chapter's ε and ≈ η with the listing's."""
    grads = [np.full((2, 1), 1e-3)]
    right = _steps(YOGI, grads, np.zeros((2, 1)))[0][0, 0]
    buggy = _steps(BY_LABEL["yogi, bug: eps = 1e-6"], grads, np.zeros((2, 1)))[0][0, 0]
    assert right == pytest.approx(-0.01 * 1e-3 / (1e-3 + 1e-3))
    assert buggy == pytest.approx(-0.01 * 1e-3 / (1e-3 + 1e-6))


@pytest.mark.slow
def test_on_the_chapter_each_bug_changes_the_run() -> None:
    """The chapter's protocol (seed 0): what the listings' bugs did to the runs."""
    rows = {row["variant"]: row for row in compare(seed=0)}
    for row in rows.values():
        assert 0.2417 <= row["final_loss"] <= 0.2500, row["variant"]  # none breaks the chapter...
    for label in BY_LABEL:
        if "bug" in label or "listing" in label:
            assert rows[label]["max_parameter_change"] > 1e-5, label  # ...but every one changes it
    # ε on θ is nearly invisible for Adam (ε = 1e-6 ≪ √ŝ in the denominator it left)...
    assert abs(rows["adam, bug: eps added to the parameter"]["loss_change"]) < 1e-5
    # ...but not for Yogi: without ε in the denominator its first steps are much larger.
    assert rows["yogi, bug: eps added to the parameter"]["loss_change"] > 1e-3
    # The frozen t moves the Adam run by far more than ε does.
    assert rows["adam, bug: t never incremented"]["max_parameter_change"] > 1e-2
