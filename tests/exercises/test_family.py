"""The chapter-11 family: on the concise trainer's MSE gradient, each member makes the book's
update on the ½-MSE (float64, against updates written here in numpy from the book)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamlab.lab.book_optimizer import BookOptimizer
from adamlab.lab.family import FAMILY

rng = np.random.default_rng(1)
X = rng.normal(size=(30, 4))
Y = rng.normal(size=(30, 1))


def _book(name: str, lr: float, steps: int, w0: np.ndarray) -> np.ndarray:
    """The book's scratch updates (d2l §11.5-11.10) on the ½-MSE gradient."""
    w = w0.copy()
    a = np.zeros_like(w)  # v or s
    b = np.zeros_like(w)  # s or Δ
    for t in range(1, steps + 1):
        xb, yb = X[(t % 3) * 10 : (t % 3) * 10 + 10], Y[(t % 3) * 10 : (t % 3) * 10 + 10]
        g = xb.T @ (xb @ w - yb) / len(yb)
        if name == "sgd":
            w = w - lr * g
        elif name == "momentum":
            a = 0.9 * a + g
            w = w - lr * a
        elif name == "adagrad":
            a = a + g**2
            w = w - lr * g / np.sqrt(a + 1e-6)
        elif name == "rmsprop":
            a = 0.9 * a + 0.1 * g**2
            w = w - lr * g / np.sqrt(a + 1e-6)
        elif name == "adadelta":
            a = 0.9 * a + 0.1 * g**2
            gp = np.sqrt(b + 1e-5) / np.sqrt(a + 1e-5) * g
            w = w - gp
            b = 0.9 * b + 0.1 * gp**2
        else:
            eps = 1e-6 if name == "adam" else 1e-3
            a = 0.9 * a + 0.1 * g
            b = 0.999 * b + 0.001 * g**2 if name == "adam" else b - 0.001 * np.sign(b - g**2) * g**2
            w = w - lr * (a / (1 - 0.9**t)) / (np.sqrt(b / (1 - 0.999**t)) + eps)
    return w


@pytest.mark.parametrize("name", list(FAMILY))
def test_member_on_mse_gradient_is_the_books_update(name: str) -> None:
    m = FAMILY[name]
    w0 = rng.normal(size=(4, 1))
    w = torch.nn.Parameter(torch.tensor(w0))
    opt = m.make([w], lr=m.lr)
    for t in range(1, 41):
        xb = torch.tensor(X[(t % 3) * 10 : (t % 3) * 10 + 10])
        yb = torch.tensor(Y[(t % 3) * 10 : (t % 3) * 10 + 10])
        opt.zero_grad()
        torch.nn.functional.mse_loss(xb @ w, yb).backward()  # the concise trainer's loss
        opt.step()
    np.testing.assert_allclose(w.detach().numpy(), _book(name, m.lr, 40, w0), rtol=1e-10, atol=1e-12)


def test_book_optimizer_validates_and_leaves_grad_alone() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="rule"):
        BookOptimizer([p], "adam")
    with pytest.raises(ValueError, match="learning rate"):
        BookOptimizer([p], "adagrad", lr=0.0)
    opt = BookOptimizer([p], "rmsprop", grad_scale=0.5)
    p.grad = torch.tensor([1.0, -2.0])
    opt.step()
    assert p.grad.tolist() == [1.0, -2.0]
