"""Result files: atomic writes, the output folder check, and the versions every result records.

Every file the lab writes goes through :func:`atomic_write`: a temp file in the same
folder, flushed and fsynced, then ``os.replace``-d over the target (and the folder
fsynced), so a reader never sees half a file, even after SIGKILL or power loss.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from adamlab.lab.data import LabInputError

RESULTS_SCHEMA = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the new bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, doc: Any) -> Path:
    return atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def check_output_dir(out: str | Path) -> Path:
    """Refuse an output folder we could not write to, without writing anything to it.

    ``out`` may not exist yet; then its nearest existing ancestor must be a writable folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LabInputError(f"--out {out} exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise LabInputError(f"--out {out} is not writable: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LabInputError(f"--out {out} is not writable (no write permission on {probe})")
    return out


def versions() -> dict[str, str]:
    """Python, platform and the versions of every package a result depends on."""
    import numpy

    import adamlab

    found = {
        "adamlab": adamlab.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch"] = torch.__version__
        found["torch_threads"] = str(torch.get_num_threads())
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None:
        found["matplotlib"] = matplotlib.__version__
    return found
