"""``adamlab bench --workload gpt``: optimizers judged by training a small transformer.

A byte-level decoder-only transformer (:mod:`.model`) trained a fixed number of steps on
the Python standard library's source (:mod:`.corpus`) by every optimizer at once, in
lock step (:mod:`.train`); on one process and on several under DDP and FSDP2
(:mod:`.launch`); per-optimizer peak RSS in processes of their own (:mod:`.memory`);
tables, checks and the figure (:mod:`.report`). :func:`run` (:mod:`.run`) is the whole
thing, and what the CLI calls::

    from adamlab.bench.workload import preset, run
    result = run(preset("quick"))
"""

from __future__ import annotations

from adamlab.bench.workload.config import PRESETS, WorkloadConfig, preset
from adamlab.bench.workload.run import run

__all__ = ["PRESETS", "WorkloadConfig", "preset", "run"]
