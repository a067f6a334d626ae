"""Bounds on the counts a command may ask for, from what this machine can do.

A count on the command line (``sweep --points``, ``--seeds``, ``--jobs``) is checked
*before* anything is allocated, forked or trained, and refused with one line that says
the bound and where it comes from:

* worker processes: at most the CPUs this process may run on (``os.sched_getaffinity``);
  more workers than CPUs only share them, each with its own copy of torch.
* runs in one grid: their records (curves) must fit in half the memory available now
  (``MemAvailable`` of ``/proc/meminfo``), estimated at :data:`BYTES_PER_RUN` plus
  :data:`BYTES_PER_POINT` per curve point, whatever the time they would take.
"""

from __future__ import annotations

import os

from adamlab.lab.data import LabInputError

BYTES_PER_RUN = 4096  # the task, the run record, its JSON: measured ~2 KiB, doubled
BYTES_PER_POINT = 128  # one (epoch, loss) pair in the record and in the JSON


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_jobs(jobs: int, option: str = "--jobs") -> int:
    """``jobs`` if this machine can run that many workers at once, else :class:`LabInputError`."""
    if jobs < 1:
        raise LabInputError(f"{option} must be >= 1, got {jobs}")
    cpus = usable_cpus()
    if jobs > cpus:
        raise LabInputError(f"{option} {jobs} is more than the {cpus} CPUs this process may use (at most {cpus})")
    return jobs


def check_runs(runs: int, points_per_run: int, what: str) -> int:
    """``runs`` if their records fit in half the available memory, else :class:`LabInputError`.

    ``what`` says which options made the count (``"--points x --seeds x ..."``).
    """
    need = runs * (BYTES_PER_RUN + BYTES_PER_POINT * points_per_run)
    memory = available_memory()
    if memory is not None and need > memory // 2:
        raise LabInputError(
            f"{what} = {runs:,} runs of {points_per_run:,} curve points would need ~{_size(need)}; "
            f"this machine has {_size(memory)} available (at most half of it is used)"
        )
    return runs


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # unreachable
