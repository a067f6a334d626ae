"""``adamlab.bench``: time ``optimizer.step()`` across implementations, devices and shapes.

The pieces are data and plain functions, so a device or an implementation plugs in with
one entry: :data:`adamlab.bench.sets.PARAM_SETS` (parameter sets per device type),
:data:`adamlab.bench.candidates.CANDIDATES` (what is timed), and
:func:`adamlab.bench.core.run` (the interleaved timing loop, bandwidth and memory).
``adamlab bench`` (:mod:`adamlab.bench.cli`) and ``python -m adamlab.bench`` call the
same :func:`run`.
"""

from __future__ import annotations

__all__ = ["BenchConfig", "run"]


def __getattr__(name: str):  # torch is imported only when the benchmark is used
    if name in __all__:
        from adamlab.bench import core

        return getattr(core, name)
    raise AttributeError(name)
