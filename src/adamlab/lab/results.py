"""What the lab writes: one record shape, one folder discipline.

**The record.** Every command's JSON (the file and what ``--json`` prints, byte for byte)
has one versioned shape, described by ``schema/results.schema.json``::

    schema_version   SCHEMA_VERSION
    command          "chapter", "train", "sweep", ...
    status           "complete", or "partial" (interrupted: what finished is kept)
    config           every setting of the run, defaults filled in
    versions         Python, platform and package versions
    files            what was written, by role ("results", "figure", "report")
    conclusions      sentences computed from the numbers below
    results          the command's numbers

One rule for numbers that are not finite (a diverged run): they are written as ``null``
and the run that produced them carries ``"status": "diverged"``; the JSON is strict
(``allow_nan=False``), so any parser reads it.

**The folder.** :class:`Outputs` checks every path a command will write *before* any work
(an empty ``--out``, a dangling symlink, a folder that cannot be created, a target that is
a directory, an unwritable ``checkpoints/``), takes a lock on the folder (a second run on
the same ``--out`` is refused with one line), removes what dead runs left behind (safe:
only the lock holder does it), and writes all of a command's files into a staging folder
inside ``--out`` before moving them into place together: a full disk leaves the previous
results and figure as they were, and never a new ``results.json`` beside an old figure.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from adamlab.lab.data import LabInputError

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).parent / "schema" / "results.schema.json"
LOCK_FILE = ".adamlab.lock"
STAGE_PREFIX = ".adamlab-stage-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds (see release_inherited_locks)


# ---------------------------------------------------------------------------------------
# The record


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def run_status(*numbers: Any) -> str:
    """``"diverged"`` if any of ``numbers`` (floats or lists of floats) is not finite, else ``"ok"``."""
    for value in numbers:
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is None or not math.isfinite(v) for v in values):
            return "diverged"
    return "ok"


def dumps(doc: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens), non-finite numbers as ``null``."""
    return json.dumps(finite_or_none(doc), indent=2, allow_nan=False) + "\n"


def record(result: Any, files: dict[str, str]) -> dict[str, Any]:
    """The record of ``result`` (an experiment result: ``command``, ``config``, ``status``,
    ``results()``, ``conclusions()``) with the ``files`` it was written to."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": result.command,
        "status": result.status,
        "config": result.config,
        "versions": versions(),
        "files": files,
        "conclusions": list(result.conclusions()),
        "results": result.results(),
    }


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
    for name in ("torch", "matplotlib", "tensorflow", "keras", "mxnet"):
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, "__version__", None), str):
            found[name] = module.__version__
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch_threads"] = str(torch.get_num_threads())
    return found


# ---------------------------------------------------------------------------------------
# Single files


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` holds either the old or the new bytes.

    A temp file in the same folder, flushed and fsynced, then ``os.replace``-d over the
    target; an error names ``path`` (not the temp file).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: str | Path, doc: Any) -> Path:
    return atomic_write(path, dumps(doc).encode())


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


# ---------------------------------------------------------------------------------------
# The output folder


def check_output_dir(out: str | Path) -> Path:
    """Refuse an ``--out`` that cannot be a folder we write into; creates nothing.

    Empty, a dangling symlink, a file, or a path whose nearest existing ancestor is not a
    writable folder: :class:`LabInputError` naming the path and the reason.
    """
    if str(out).strip() == "":
        raise LabInputError("--out is empty; name a folder (default: adamlab-results)")
    path = Path(out)
    if path.is_symlink() and not path.exists():
        raise LabInputError(f"--out {out} is a dangling symbolic link (to {os.readlink(path)})")
    if path.exists() and not path.is_dir():
        raise LabInputError(f"--out {out} exists and is not a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise LabInputError(f"--out {out} is not writable: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LabInputError(f"--out {out} is not writable (no write permission on {probe})")
    return path


class Outputs:
    """The files one command writes into ``out``: checked first, locked, replaced together.

    ``files`` maps a role to a file name (``{"results": "results.json", "figure": "loss.png"}``);
    ``replaces`` names files an earlier run may have left that these replace (``loss.svg``
    when writing ``loss.png``): they are removed when the new files land. With
    ``checkpoints=True`` the folder ``out/checkpoints`` must be writable too.

    Use as a context manager around the work::

        with Outputs(out, {"results": "sweep.json", "figure": "sweep.png"}) as outputs:
            result = work()                             # errors in out/ surface before this
            outputs.write({"figure": png, "results": json_bytes})
    """

    def __init__(
        self,
        out: str | Path,
        files: dict[str, str],
        *,
        replaces: tuple[str, ...] = (),
        checkpoints: bool = False,
    ) -> None:
        self.folder = check_output_dir(out)
        self.files = dict(files)
        self.replaces = replaces
        self.checkpoints = checkpoints
        self._lock_fd: int | None = None
        self._stage: Path | None = None

    def paths(self) -> dict[str, str]:
        return {role: str(self.folder / name) for role, name in self.files.items()}

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / "checkpoints"

    def __enter__(self) -> Outputs:
        try:
            self.prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def prepare(self) -> None:
        """Create the folder, take the lock, clear what dead runs left, check every target."""
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabInputError(f"--out {folder}: cannot create it ({e.strerror or e})") from None
        self._lock()
        self._remove_leftovers()
        for name in self.files.values():
            target = folder / name
            if target.is_dir() and not target.is_symlink():
                raise LabInputError(f"{target} is a directory; remove it or choose another --out")
        if self.checkpoints:
            _check_writable_dir(self.checkpoint_dir, "checkpoint folder")
        try:
            self._stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=folder))
        except OSError as e:
            raise LabInputError(f"--out {folder} is not writable ({e.strerror or e})") from None

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (the lab is tested on Linux)
            return
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_UMASK)
        except OSError as e:
            raise LabInputError(f"--out {self.folder} is not writable ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise LabInputError(
                    f"another adamlab run{who} is writing to {self.folder}; wait for it or use another --out"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)

    def _remove_leftovers(self) -> None:
        """Staging folders and temp files of runs that died (we hold the lock: none is alive)."""
        for stage in self.folder.glob(f"{STAGE_PREFIX}*"):
            shutil.rmtree(stage, ignore_errors=True)
        for folder in (self.folder, self.checkpoint_dir):
            if folder.is_dir():
                for temp in folder.glob(".*.tmp"):
                    if temp.is_file():
                        temp.unlink(missing_ok=True)

    def write(self, contents: dict[str, bytes]) -> dict[str, str]:
        """Write every role's bytes to the staging folder, then move them all into place.

        The ``"results"`` file moves last, so a reader who sees new results sees the new figure.
        """
        if self._stage is None:
            raise RuntimeError("Outputs.write() outside its `with` block")
        order = sorted(contents, key=lambda role: role == "results")
        for role in order:
            target = self.folder / self.files[role]
            staged = self._stage / self.files[role]
            try:
                with open(staged, "wb") as f:
                    f.write(contents[role])
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(staged, 0o666 & ~_UMASK)
            except OSError as e:
                raise OSError(e.errno, f"cannot write {target}: {e.strerror}", str(target)) from None
        for role in order:
            target = self.folder / self.files[role]
            try:
                os.replace(self._stage / self.files[role], target)
            except OSError as e:
                raise OSError(e.errno, f"cannot replace {target}: {e.strerror}", str(target)) from None
        for name in self.replaces:
            stale = self.folder / name
            if stale.is_file() or stale.is_symlink():
                stale.unlink(missing_ok=True)
        _fsync_dir(self.folder)
        return {role: str(self.folder / self.files[role]) for role in order}

    def close(self) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self._lock_fd is not None:
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def release_inherited_locks() -> None:
    """In a child made by ``fork``: close the lock descriptors it inherited from its parent.

    An flock belongs to the open file, shared by every copy of the descriptor: a forked
    worker that kept its copy would hold ``--out`` locked after its parent died (a
    SIGKILLed sweep refused the next run on that folder, naming a dead pid). Only ever
    called in a child; the parent's own descriptors (and its lock) are untouched.
    """
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


def _check_writable_dir(folder: Path, what: str) -> None:
    if folder.is_symlink() and not folder.exists():
        raise LabInputError(f"{what} {folder} is a dangling symbolic link")
    if folder.exists() and not folder.is_dir():
        raise LabInputError(f"{what} {folder} exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise LabInputError(f"{what} {folder} is not writable ({e.strerror or e})") from None


def write_result(result: Any, outputs: Outputs, plot_format: str = "png") -> dict[str, Any]:
    """Render ``result``'s files (figure, report page), build its record, write them all
    together into ``outputs``; returns the record (what the results file holds)."""
    from adamlab.lab.plots import figure_bytes

    contents: dict[str, bytes] = {}
    if "figure" in outputs.files:
        contents["figure"] = figure_bytes(result.plot(), plot_format)  # rendered first: a failure writes nothing
    if "report" in outputs.files:
        contents["report"] = result.html().encode()
    doc = record(result, outputs.paths())
    contents["results"] = dumps(doc).encode()
    outputs.write(contents)
    return doc


def save(result: Any, out: str | Path, *, stem: str | None = None, plot_format: str = "png") -> dict[str, Any]:
    """Write an experiment result from Python as its command would: ``OUT/STEM.json`` and the figure.

    ``stem`` defaults to the command's name (the chapter: ``results.json`` and ``loss.png``).
    """
    command = getattr(result, "command", None)
    if not isinstance(command, str):
        raise TypeError(
            f"save() takes an experiment's result (lab.run_chapter(), lab.sweep(), ...), got a "
            f"{type(result).__name__}; a single run is saved through lab.run_chapter(configs=[config], "
            "command='train')"
        )
    figure = {"chapter": "loss"}.get(command, stem or command)
    stem = stem or ("results" if command == "chapter" else command)
    files = {"results": f"{stem}.json", "figure": f"{figure}.{plot_format}"}
    with Outputs(out, files) as outputs:
        return write_result(result, outputs, plot_format)
