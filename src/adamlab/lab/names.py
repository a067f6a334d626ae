"""Optimizer names on the command line, resolved from an allow-list: a name never imports
a module outside it.

``--optimizer NAME`` (and a run's recorded config) names a class or factory as
``MODULE.ATTRIBUTE``. Only these modules are ever imported to resolve a name:

=========================  ==============================================================
``torch.optim``            any :class:`torch.optim.Optimizer` subclass (``torch.optim.AdamW``)
``adamlab``,               ``adamlab.Adam``, ``adamlab.Yogi`` (``adamlab.optim.Adam`` too)
``adamlab.optim``
``torch_optimizer``,       the third-party optimizers the benchmark compares against (its
``pytorch_optimizer``,     ``third-party`` candidates: Yogis and 8-bit Adams), when installed
``bitsandbytes``,
``torchao``
the lab's family           ``adamlab.lab.family.sgd`` ... (what ``compare`` and
                           ``sweep`` record): exactly the factories in its registry
=========================  ==============================================================

Any other name (``os.system``, ``this.X``) is refused *before* anything is imported, so a
name typed on the command line cannot run code at import time. The Python API takes any
class or factory directly.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from adamlab.lab.data import LabInputError

# Short names the command line accepts, besides MODULE.ATTRIBUTE.
SHORT_NAMES = {
    "torch.optim.Adam": "torch.optim:Adam",
    "adamlab.Adam": "adamlab.optim:Adam",
    "adamlab.Yogi": "adamlab.optim:Yogi",
}
OPTIMIZER_MODULES = ("torch.optim", "adamlab", "adamlab.optim")


def peer_modules() -> tuple[str, ...]:
    """The third-party modules the benchmark times (``adamlab.bench.candidates``, no torch import)."""
    from adamlab.bench.candidates import CANDIDATES

    return tuple(dict.fromkeys(c.requires for c in CANDIDATES if c.family == "third-party" and c.requires))


def allowed_modules() -> tuple[str, ...]:
    return (*OPTIMIZER_MODULES, *peer_modules())


def resolve_optimizer(name: str) -> Callable[..., Any]:
    """``"torch.optim.Adam"``, ``"adamlab.Yogi"``, a lab family factory or a peer's class -> it.

    Raises :class:`LabInputError` naming ``name`` for anything outside the allow-list (nothing
    is imported), for a name the allowed module lacks, and for an attribute that is not an
    optimizer class (``torch.optim.lr_scheduler``, the abstract ``torch.optim.Optimizer``).
    """
    from adamlab.lab.family import FAMILY

    family = {m.target: m.make for m in FAMILY.values()}
    if name in family:
        return family[name]
    module, _, attr = (SHORT_NAMES.get(name) or ":".join(name.rpartition(".")[::2])).partition(":")
    allowed = allowed_modules()
    if module not in allowed or not attr or not attr.isidentifier() or attr.startswith("_"):
        raise LabInputError(
            f"unknown optimizer {name!r} (known: adam, yogi, {', '.join(SHORT_NAMES)}, "
            f"or a class of {', '.join(m for m in allowed if m != 'adamlab.optim')})"
        )
    try:
        found = getattr(import_module(module), attr)
    except ImportError:
        raise LabInputError(f"optimizer {name!r} needs {module}, which is not installed") from None
    except AttributeError:
        raise LabInputError(f"unknown optimizer {name!r}: {module} has no {attr!r}") from None
    import torch

    if not (isinstance(found, type) and issubclass(found, torch.optim.Optimizer)) or found is torch.optim.Optimizer:
        raise LabInputError(f"{name!r} is not a torch.optim.Optimizer class (e.g. torch.optim.Adam, adamlab.Yogi)")
    return found
