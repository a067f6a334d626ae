"""The lab: the "Adam" section of *Dive into Deep Learning* (ch. 11), reproduced.

Read top to bottom: :mod:`~adamlab.lab.data` (the airfoil data and the chapter's
pipeline), :mod:`~adamlab.lab.loop` (one run: the config, the training loop, the result),
:mod:`~adamlab.lab.frameworks` (torch, TensorFlow and MXNet: the models the loop drives),
:mod:`~adamlab.lab.chapter` (the chapter's five runs), :mod:`~adamlab.lab.plots`,
:mod:`~adamlab.lab.results` (the record and the output folder) and
:mod:`~adamlab.lab.cli` (the ``adamlab`` command, which calls the same functions).
The exercises: :mod:`~adamlab.lab.sweep`, :mod:`~adamlab.lab.bias`,
:mod:`~adamlab.lab.decay`, :mod:`~adamlab.lab.counterexample`,
:mod:`~adamlab.lab.init_batches`, :mod:`~adamlab.lab.compare`, :mod:`~adamlab.lab.report`.

In a notebook::

    from adamlab import lab
    result = lab.run_chapter()                  # the five runs; result.plot(), result.conclusions()
    run = lab.train(lab.RunConfig("scratch", "yogi"))   # one run; run.plot(), run.to_dict()
    lab.save(result, "adamlab-results")         # results.json + loss.png, as `adamlab` writes them

Torch and matplotlib are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "run_chapter": "adamlab.lab.chapter",
    "ChapterResult": "adamlab.lab.chapter",
    "train": "adamlab.lab.loop",
    "RunConfig": "adamlab.lab.loop",
    "RunResult": "adamlab.lab.loop",
    "save": "adamlab.lab.results",
    "load": "adamlab.lab.data",
    "least_squares_floor": "adamlab.lab.data",
    "LabInputError": "adamlab.lab.data",
    "CheckpointError": "adamlab.lab.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adamlab.lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
