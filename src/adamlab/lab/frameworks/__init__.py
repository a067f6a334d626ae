"""The chapter's three frameworks: ``adamlab --framework torch|tensorflow|mxnet``.

The book shows every listing three times. Each framework is one module with the same
interface, driven by the one loop :func:`adamlab.lab.loop.train`::

    torch        torch_chapter        scratch Adam, torch.optim.Adam, adamlab.Adam, scratch Yogi, adamlab.Yogi
    tensorflow   tensorflow_chapter   scratch Adam, keras.optimizers.Adam, adamlab.keras.Adam, scratch Yogi,
                                      adamlab.keras.Yogi
    mxnet        mxnet_chapter        scratch Adam, gluon 'adam', adamlab.gluon.Adam, scratch Yogi, adamlab.gluon.Yogi

A framework module has ``versions()`` and ``Session(config, data, factory)``, whose
``X``, ``y`` (the data in the framework's arrays), ``model`` (``step``, ``loss``,
``implementation``), ``permutation(n)`` and ``parameters()`` are all the loop uses.
TensorFlow needs ``tensorflow`` and ``keras>=3``; MXNet needs its own environment (MXNet
1.9.1 with ``numpy<1.24``, legacy). Each module is imported only when its runs start;
this package needs NumPy only. :mod:`~adamlab.lab.frameworks.book_bugs` shows what the
book's TensorFlow-listing bugs change.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import numpy as np

from adamlab.lab.data import LabInputError

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
_MODULES = {name: f"adamlab.lab.frameworks.{name}_chapter" for name in FRAMEWORKS}
_INSTALL = {
    "torch": "pip install 'adamlab[lab]'",
    "tensorflow": "pip install 'adamlab[keras]' tensorflow",
    "mxnet": "MXNet 1.9.1 needs its own environment with numpy<1.24: nox -s mxnet",
}
# The chapter's five runs, (trainer, optimizer), in the book's order. Data, so that the
# configs are made (and checked) without importing a framework.
CHAPTER_RUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "torch": (
        ("scratch", "adam"),
        ("concise", "torch.optim.Adam"),
        ("concise", "adamlab.Adam"),
        ("scratch", "yogi"),
        ("concise", "adamlab.Yogi"),
    ),
    "tensorflow": (
        ("scratch", "adam"),
        ("concise", "keras.optimizers.Adam"),
        ("concise", "adamlab.keras.Adam"),
        ("scratch", "yogi"),
        ("concise", "adamlab.keras.Yogi"),
    ),
    "mxnet": (
        ("scratch", "adam"),
        ("concise", "gluon 'adam'"),
        ("concise", "adamlab.gluon.Adam"),
        ("scratch", "yogi"),
        ("concise", "adamlab.gluon.Yogi"),
    ),
}


def check_framework(framework: str) -> None:
    if framework not in FRAMEWORKS:
        raise LabInputError(f"unknown framework {framework!r} (expected one of {', '.join(FRAMEWORKS)})")


def module(framework: str) -> Any:
    """The framework's chapter module (imports the framework; a missing one is bad input)."""
    check_framework(framework)
    try:
        found = import_module(_MODULES[framework])
        found.versions()  # imports the framework itself
        return found
    except ImportError as exc:
        raise LabInputError(f"--framework {framework} is not available here ({exc}); {_INSTALL[framework]}") from None


def check_optimizer(framework: str, name: str) -> None:
    """Raise :class:`LabInputError` unless ``name`` is a concise optimizer of ``framework``.

    torch takes the names of :func:`adamlab.lab.names.resolve_optimizer` (an allow-list);
    TensorFlow and MXNet take their chapter's runs.
    """
    check_framework(framework)
    if framework == "torch":
        module("torch").resolve_optimizer(name)
        return
    known = [opt for trainer, opt in CHAPTER_RUNS[framework] if trainer == "concise"]
    if name not in known:
        raise LabInputError(f"unknown optimizer {name!r} for --framework {framework} (known: {', '.join(known)})")


class NumpySession:
    """A TensorFlow or MXNet run as the loop drives it: the data as NumPy arrays, the model
    (``scratch_model`` or ``concise_model``, initialised from ``numpy.random.default_rng(seed)``)
    and the data order from its own ``default_rng(seed)``. Each framework module subclasses it
    naming its two model classes; the loop needs nothing else (torch has its own session,
    with checkpoints)."""

    scratch_model: Any
    concise_model: Any

    def __init__(self, config: Any, data: Any, factory: object = None) -> None:
        if factory is not None:
            raise LabInputError("an optimizer factory is a torch-only option")
        self.X, self.y = data.X, data.y
        self._rng = np.random.default_rng(config.seed)
        make = self.scratch_model if config.trainer == "scratch" else self.concise_model
        self.model = make(data.features, config.optimizer, config.lr, config.seed)

    def permutation(self, n: int) -> Any:
        return self._rng.permutation(n)

    def parameters(self) -> dict[str, list[float]]:
        return {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in self.model.parameters().items()}
