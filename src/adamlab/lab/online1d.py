"""Projected online Adam/Yogi on one scalar, fast: 10^6 steps in milliseconds.

The counterexamples of Reddi, Kale & Kumar (ICLR 2018) are online problems on the
interval [lo, hi] with *linear* losses f_t(x) = g_t·x, so the gradient sequence g_1..g_T
does not depend on the iterates and can be drawn up front. What remains is a scalar
recursion, one step of :func:`adamlab.reference.step` followed by a projection::

    η_t = α / √t
    x_{t+1} = clip(step(x_t, g_t, η_t), lo, hi)

That recursion is sequential (the projection and Yogi's sign make it nonlinear), and a
Python loop pays ~20 µs a step. Two backends run it, with one signature:

* ``"c"``: the same arithmetic, operation for operation and in the same order as
  :func:`adamlab.reference.step`, in a 60-line C function (``lab/csrc/online1d.c``)
  compiled when adamlab is installed (``-O2 -ffp-contract=off``, so that no fused
  multiply-add changes a rounding) and opened with :mod:`ctypes` by
  :mod:`adamlab._library`. About 5 ms per 10^6 steps.
* ``"reference"``: calls :func:`adamlab.reference.step` itself each step: the oracle,
  slow, and the fallback where adamlab was installed without its kernels.

``"auto"`` picks ``"c"`` and falls back to ``"reference"`` when the kernel is not installed. The
tests run both in lock step and compare every iterate bit for bit.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from adamlab import _library, reference

BACKENDS = ("auto", "c", "reference")


@dataclass(frozen=True)
class Convention:
    """One optimizer in one library convention (the keywords of :func:`adamlab.reference.step`)."""

    name: str
    rule: str  # "adam" or "yogi"
    eps: float
    s0: float = 0.0
    amsgrad: bool = False
    bias_correction: bool | str = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Each optimizer as adamlab's torch classes define it by default (Adam: torch's
# conventions; Yogi: TF-Addons/optax/the paper author's s0 = 1e-6, ε = 1e-3), and Yogi
# as the chapter writes it (s0 = 0) without bias correction (the Yogi paper's Algorithm 2).
ADAM = Convention("adam", "adam", eps=1e-8)
AMSGRAD = Convention("amsgrad", "adam", eps=1e-8, amsgrad=True)
YOGI = Convention("yogi", "yogi", eps=1e-3, s0=1e-6)
YOGI_PLAIN = Convention("yogi(s0=0,no-bc)", "yogi", eps=1e-3, s0=0.0, bias_correction=False)
CONVENTIONS = (ADAM, AMSGRAD, YOGI, YOGI_PLAIN)


def _load() -> Any:
    """The installed C kernel (``csrc/online1d.c``, built with the package), declared."""
    fn = _library.load("_online1d").adamlab_online1d
    dbl, ptr = ctypes.c_double, ctypes.POINTER(ctypes.c_double)
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long, ptr, *([dbl] * 8), ptr]
    fn.restype = ctypes.c_int
    return fn


_LIB: Any = None
_LIB_ERROR: str | None = None


def c_kernel() -> Any:
    """The compiled kernel, or raise RuntimeError saying why it is unavailable."""
    global _LIB, _LIB_ERROR
    if _LIB is None and _LIB_ERROR is None:
        try:
            _LIB = _load()
        except RuntimeError as err:
            _LIB_ERROR = str(err)
    if _LIB is None:
        raise RuntimeError(f"the C backend is unavailable: {_LIB_ERROR}")
    return _LIB


def resolve_backend(backend: str) -> str:
    """``"auto"`` → ``"c"`` when the kernel builds here, else ``"reference"``."""
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r} (expected one of {BACKENDS})")
    if backend == "auto":
        try:
            c_kernel()
            return "c"
        except RuntimeError:
            return "reference"
    if backend == "c":
        c_kernel()  # raise now, with the reason, if the user asked for it explicitly
    return backend


def trajectory(
    conv: Convention,
    g: np.ndarray,
    *,
    alpha: float,
    beta1: float,
    beta2: float,
    x0: float = 1.0,
    lo: float = -1.0,
    hi: float = 1.0,
    backend: str = "auto",
) -> np.ndarray:
    """Iterates x_1 = x0, x_2, ..., x_{T+1} (length T + 1) of projected ``conv`` on gradients ``g``.

    The step size at step t is α/√t; after each step x is clipped to [lo, hi].
    """
    g = np.ascontiguousarray(g, dtype=np.float64)
    if g.ndim != 1:
        raise ValueError(f"Invalid gradients: expected a 1-D array, got shape {g.shape}")
    backend = resolve_backend(backend)
    if backend == "c":
        x = np.empty(g.size + 1, dtype=np.float64)
        bias = {True: 1, False: 0, "recursive": 2}[conv.bias_correction]
        ptr = ctypes.POINTER(ctypes.c_double)
        c_kernel()(
            int(conv.rule == "yogi"),
            int(conv.amsgrad),
            bias,
            g.size,
            g.ctypes.data_as(ptr),
            alpha,
            beta1,
            beta2,
            conv.eps,
            conv.s0,
            x0,
            lo,
            hi,
            x.ctypes.data_as(ptr),
        )
        return x
    return _reference_trajectory(conv, g, alpha=alpha, beta1=beta1, beta2=beta2, x0=x0, lo=lo, hi=hi)


def _reference_trajectory(
    conv: Convention, g: np.ndarray, *, alpha: float, beta1: float, beta2: float, x0: float, lo: float, hi: float
) -> np.ndarray:
    """The oracle: :func:`adamlab.reference.step` once per step, then the projection."""
    x = np.empty(g.size + 1, dtype=np.float64)
    theta = np.array(x0, dtype=np.float64)
    state = reference.init_state(theta, s0=conv.s0, amsgrad=conv.amsgrad)
    x[0] = x0
    for i in range(g.size):
        t = i + 1
        theta, state = reference.step(
            conv.rule,
            theta,
            np.array(g[i]),
            state,
            lr=alpha / math.sqrt(t),
            beta1=beta1,
            beta2=beta2,
            eps=conv.eps,
            amsgrad=conv.amsgrad,
            bias_correction=conv.bias_correction,
        )
        theta = np.clip(theta, lo, hi)
        x[t] = theta
    return x


def regret(
    x: np.ndarray, g: np.ndarray, *, lo: float = -1.0, hi: float = 1.0, mean_gradient: float | None = None
) -> np.ndarray:
    """R_t for t = 1..T (length T), for linear losses f_t(x) = g_t·x on [lo, hi].

    Online (``mean_gradient=None``): R_t = Σ_{τ≤t} g_τ x_τ − min_{x∈[lo,hi]} Σ_{τ≤t} g_τ x.
    Stochastic: the regret of the *expected* loss F(x) = E[g]·x, R_t = Σ_{τ≤t} F(x_τ) − t·min F,
    which is what the stochastic theorem bounds from below.
    """
    played = x[:-1]
    if mean_gradient is None:
        cum_g = np.cumsum(g)
        return np.cumsum(g * played) - np.minimum(lo * cum_g, hi * cum_g)
    t = np.arange(1, played.size + 1, dtype=np.float64)
    return np.cumsum(mean_gradient * played) - t * min(lo * mean_gradient, hi * mean_gradient)
