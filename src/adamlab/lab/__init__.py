"""The lab: the "Adam" section of *Dive into Deep Learning* (ch. 11), reproduced.

Read top to bottom: :mod:`~adamlab.lab.data` (the airfoil data and the chapter's
pipeline), :mod:`~adamlab.lab.train` (the scratch and concise trainers),
:mod:`~adamlab.lab.chapter` (the chapter's five runs), :mod:`~adamlab.lab.plots`,
:mod:`~adamlab.lab.results` and :mod:`~adamlab.lab.checkpoint`, and
:mod:`~adamlab.lab.cli` (the ``adamlab`` command, which calls the same functions).

In a notebook::

    from adamlab import lab
    result = lab.chapter()          # the five runs; result.plot() draws them
    run = lab.train_scratch("yogi")  # one run; run.plot(), run.to_json()

Torch and matplotlib are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# ``chapter`` is both a submodule and its main function. Importing the function here, once,
# keeps ``adamlab.lab.chapter`` the function: a later ``import adamlab.lab.chapter`` finds the
# module in sys.modules and leaves the package attribute alone. (chapter.py needs NumPy only.)
from adamlab.lab.chapter import ChapterResult as ChapterResult
from adamlab.lab.chapter import chapter as chapter

_LAZY = {
    "train_scratch": "adamlab.lab.train",
    "train_concise": "adamlab.lab.train",
    "run": "adamlab.lab.train",
    "RunConfig": "adamlab.lab.train",
    "RunResult": "adamlab.lab.train",
    "load": "adamlab.lab.data",
    "least_squares_floor": "adamlab.lab.data",
    "LabInputError": "adamlab.lab.data",
    "CheckpointError": "adamlab.lab.checkpoint",
}

__all__ = sorted([*_LAZY, "ChapterResult", "chapter"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adamlab.lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
