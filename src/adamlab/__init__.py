"""adamlab: Adam and Yogi done properly, and the lab that shows how and why they work.

``import adamlab`` needs only NumPy. Framework code loads on first use:
``adamlab.Adam`` / ``adamlab.Yogi`` are the PyTorch optimizers and
``adamlab.convert_state_dict`` converts their checkpoints between state precisions
(imported from :mod:`adamlab.optim` when first accessed).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {"Adam": "adamlab.optim", "Yogi": "adamlab.optim", "convert_state_dict": "adamlab.optim"}

__all__ = ["Adam", "Yogi", "__version__", "convert_state_dict"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adamlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
