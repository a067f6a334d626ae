"""Worker processes for the lab's grids: results in task order, stopped at once on Ctrl-C.

:func:`ordered_map` runs ``fn`` over tasks in ``jobs`` processes and yields the results
in order. The workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
group): the parent alone decides. When the parent stops consuming for any reason
(KeyboardInterrupt, an error in a task, the consumer breaking off) the workers are
terminated mid-task and pending tasks are cancelled, instead of the executor's default
of waiting for every in-flight chunk (seconds to minutes).

Workers start by ``fork`` where the platform has it (milliseconds, with torch already
imported, as torch's own DataLoader workers do), ``spawn`` elsewhere. A worker that dies
(killed, out of memory) raises ``BrokenProcessPool`` here rather than hanging. A worker
holds nothing of its parent's: it closes the inherited lock on ``--out``, and it ends
when its parent dies (even by SIGKILL), so no orphan keeps computing or holding files.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def ordered_map(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    jobs: int,
    initializer: Callable[[], None] | None = None,
    chunksize: int = 1,
) -> Iterator[Any]:
    """``map(fn, tasks)`` in ``jobs`` worker processes; ``fn`` and tasks must pickle."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(initializer, os.getpid()))
    try:
        yield from pool.map(fn, tasks, chunksize=chunksize)
    except BaseException:  # KeyboardInterrupt, a task's error, GeneratorExit: stop now
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _start_worker(initializer: Callable[[], None] | None, parent: int) -> None:
    """A worker's first act. ``parent`` is the pool owner's pid, read *before* the fork: a
    parent killed between the fork and this call would make ``os.getppid()`` here name the
    reaper instead, and the worker would wait for tasks forever."""
    _die_with_parent(parent)
    from adamlab.lab.results import release_inherited_locks

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    release_inherited_locks()  # a forked copy of --out's lock would outlive a killed parent
    if initializer is not None:
        initializer()


def _die_with_parent(parent: int) -> None:
    """End this worker when its parent dies (a SIGKILLed parent cannot stop its workers, and
    they ignore SIGINT): PR_SET_PDEATHSIG on Linux, else a thread that watches ``getppid()``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # the parent died before the call: nobody would signal
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (SIGTERM), cancel what is pending, reap them (1 s at most each).

    ``ProcessPoolExecutor.terminate_workers()`` (Python 3.14) does exactly this; before it,
    concurrent.futures has no public way to the processes: they are reached through the
    private ``_processes`` (pid -> Process, the dict that method itself uses), and
    ``tests/lab/test_cli_bounds.py`` fails if that attribute ever goes.
    """
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=1.0)
