"""Standard streams a caller closed (``adamlab >&-``): treated as ``/dev/null``.

With file descriptor 1 closed, Python starts with ``sys.stdout = None`` and the next file
the program opens (a result, a checkpoint) gets descriptor 1, where anything written to
"stdout" — by a library's C code, or a forked worker — would land inside that file.
:func:`occupy_closed` opens ``/dev/null`` on each closed descriptor of 0, 1 and 2 first,
and gives Python a stream on it: output to a closed stdout is discarded (as click's own
``echo`` already does when ``sys.stdout`` is None), the command runs and writes its files,
and the exit code still tells success from failure.
"""

from __future__ import annotations

import os
import sys


def occupy_closed() -> list[int]:
    """Open ``/dev/null`` on every closed descriptor among 0, 1, 2; return those descriptors."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # the lowest free descriptor: a closed one below is filled first
            os.dup2(null, fd)
            os.close(null)
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if fd in closed or getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))
    return closed
