"""The chapter's data: NASA's airfoil self-noise measurements, loaded as the book loads them.

The pipeline (*Dive into Deep Learning*, ``d2l.get_data_ch11``)::

    parse the file as float32                         1503 rows x 6 columns (bundled file)
    standardize every column, the target included:   (x - mean) / std, population std (ddof=0),
                                                      over *all* rows, computed in float64
    keep the first 1500 rows                          5 features, 1 target (the last column)
    shuffled minibatches of 10                        a fresh permutation every pass

The bundled file is checked against the sha1 the book verifies and refused if it differs.
A user's own file (``--data``) is delimited text (tab, comma, semicolon or whitespace) in
UTF-8 (a byte-order mark is dropped; UTF-16 with a BOM is read too), the last column is
the target, a header line is optional, blank lines and ``#`` comment lines are skipped,
and every row is used. Every value must fit in float32 (the training dtype). At most
:data:`MAX_DATA_BYTES` are read, from a file or a pipe (``--data <(zcat data.gz)``), so a
device such as ``/dev/zero`` is refused rather than read until memory runs out, and a
named pipe with no writer reads as empty rather than blocking. Every bad input raises
:class:`LabInputError` with a one-line message naming the file (and the line and column).

This module needs NumPy only; :meth:`LabData.tensors` hands the arrays to torch.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import os
import re
import select
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

BUNDLED_SHA1 = "76e5be1548fd8222e5074cf0faae75edff8cf93f"
BUNDLED_ROWS = 1500  # the chapter keeps the first 1500 of the 1503 rows
EXAMPLES_PER_EVAL = 200  # the chapter records the loss every 200 examples
MAX_DATA_BYTES = 64 * 2**20  # --data: ~1M rows of 6 columns; parsing it takes seconds, not minutes
PIPE_WAIT_SECONDS = 10.0  # --data a pipe: how long to wait for its first byte (or its writer)
DATA_HELP = f"Your own delimited file or pipe (at most {MAX_DATA_BYTES // 2**20} MiB); last column the target."
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LabInputError(ValueError):
    """Bad input to the lab (data file, option value, output folder). One line, no traceback."""


def bundled_path() -> Path:
    """Path of the airfoil file shipped inside the package."""
    return Path(str(resources.files("adamlab").joinpath("data", "airfoil_self_noise.dat")))


@dataclass(frozen=True, eq=False)
class LabData:
    """Standardized features ``X`` (n, d) and target ``y`` (n, 1), float32, plus provenance."""

    X: np.ndarray
    y: np.ndarray
    source: str  # "bundled" or the user's path
    sha1: str
    rows_in_file: int

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def features(self) -> int:
        return self.X.shape[1]

    def describe(self) -> dict[str, Any]:
        """Provenance for the results JSON."""
        return {
            "source": self.source,
            "sha1": self.sha1,
            "rows_in_file": self.rows_in_file,
            "rows_used": self.n,
            "features": self.features,
            "pipeline": "float32; standardize every column (mean, population std, all rows); last column target",
        }

    def tensors(self) -> tuple[Any, Any]:
        """``X`` and ``y`` as torch tensors (sharing memory with the arrays)."""
        import torch

        return torch.from_numpy(self.X), torch.from_numpy(self.y)


def load(path: str | Path | None = None, *, rows: int | None = None) -> LabData:
    """Load the bundled airfoil data (``path=None``) or a user's delimited file.

    ``rows`` keeps the first ``rows`` rows after standardization; the default is the
    chapter's 1500 for the bundled file and every row for a user's file.
    """
    if path is None:
        return load_bundled(rows=BUNDLED_ROWS if rows is None else rows)
    raw, sha1 = _read(Path(path))
    table = parse_table(_decode(raw), name=str(path))
    return _prepare(table, source=str(path), sha1=sha1, rows=rows)


def load_bundled(path: str | Path | None = None, *, rows: int = BUNDLED_ROWS) -> LabData:
    """The chapter's file, refused unless its sha1 is the one the book checks."""
    path = bundled_path() if path is None else Path(path)
    raw, sha1 = _read(path)
    if sha1 != BUNDLED_SHA1:
        raise LabInputError(f"bundled data file {path} has sha1 {sha1}, expected {BUNDLED_SHA1}: refusing it")
    table = parse_table(raw.decode("ascii"), name=str(path))
    return _prepare(table, source="bundled:airfoil_self_noise.dat", sha1=sha1, rows=rows)


def _read(path: Path) -> tuple[bytes, str]:
    """The file's bytes (at most :data:`MAX_DATA_BYTES`) and their sha1.

    Opened non-blocking, so that a named pipe without a writer does not block the open;
    a pipe is then given :data:`PIPE_WAIT_SECONDS` to deliver its first byte (a writer
    may connect in that time) and is read, blocking, to its end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise LabInputError(f"data file not found: {path}") from None
    except OSError as e:
        raise LabInputError(f"cannot read data file {path}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise LabInputError(f"data path is a directory, not a file: {path}")
        if stat.S_ISREG(mode) and os.fstat(fd).st_size > MAX_DATA_BYTES:
            raise LabInputError(f"data file {path} is larger than the {MAX_DATA_BYTES // 2**20} MiB --data reads")
        if stat.S_ISFIFO(mode) and hasattr(select, "poll"):
            poll = select.poll()
            poll.register(fd, select.POLLIN)
            if not poll.poll(PIPE_WAIT_SECONDS * 1000):  # no data, no writer that came and went
                raise LabInputError(
                    f"data file {path} is a pipe with nothing to read after {PIPE_WAIT_SECONDS:g} s (no writer?)"
                )
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while chunk := os.read(fd, min(2**20, MAX_DATA_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_DATA_BYTES:  # a device or a pipe that goes on (/dev/zero, /dev/urandom)
                raise LabInputError(f"data file {path} gives more than the {MAX_DATA_BYTES // 2**20} MiB --data reads")
    except OSError as e:
        raise LabInputError(f"cannot read data file {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    return raw, hashlib.sha1(raw).hexdigest()


def _decode(raw: bytes) -> str:
    """UTF-8 text; a UTF-8 byte-order mark is dropped, a UTF-16 one selects UTF-16."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    return raw.decode("utf-8-sig", errors="replace")


_SPLIT = {"\t": "\t", ",": ",", ";": ";"}


def parse_table(text: str, *, name: str = "data") -> np.ndarray:
    """Parse delimited numeric text into a float32 (rows, columns) array.

    Blank lines and lines starting with ``#`` are skipped wherever they are (messages give
    the line numbers of the file). The delimiter is the first of tab, comma, semicolon
    found in the first remaining line, else whitespace. That first line is a header, and
    skipped, if none of its cells is a number. Every value must be finite in float32.
    """
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise LabInputError(f"{name}: the file is empty (no lines but blank lines and # comments)")
    delimiter = next((d for d in _SPLIT if d in numbered[0][1]), None)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.split(delimiter)] if delimiter else line.split()

    if not any(_is_number(c) for c in cells(numbered[0][1])):
        numbered = numbered[1:]  # a header line
    if not numbered:
        raise LabInputError(f"{name}: no data rows (only a header)")
    width = len(cells(numbered[0][1]))
    if width < 2:
        raise LabInputError(f"{name}: need at least 2 columns (features, then the target), found {width}")
    values = np.empty((len(numbered), width), dtype=np.float64)
    for i, (lineno, line) in enumerate(numbered):
        row = cells(line)
        if len(row) != width:
            raise LabInputError(f"{name}: line {lineno} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            if not _is_number(cell):
                raise LabInputError(f"{name}: line {lineno}, column {j + 1}: not a number: {cell[:20]!r}")
            x = float(cell)
            if not math.isfinite(x):
                raise LabInputError(f"{name}: line {lineno}, column {j + 1}: {cell} is not finite")
            if abs(x) > _FLOAT32_MAX:  # would be inf in float32, the dtype the lab trains in
                where = f"{name}: line {lineno}, column {j + 1}"
                raise LabInputError(f"{where}: {cell[:20]} is beyond float32's range (±{_FLOAT32_MAX:.4g})")
            values[i, j] = x
    return values.astype(np.float32)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|inf|infinity)$", re.IGNORECASE)


def _is_number(cell: str) -> bool:
    return bool(_NUMBER.match(cell))


def _prepare(table: np.ndarray, *, source: str, sha1: str, rows: int | None) -> LabData:
    """Standardize every column over all rows, then keep the first ``rows``."""
    data64 = table.astype(np.float64)
    std = data64.std(axis=0)  # population std, ddof=0, as the book's numpy call
    constant = np.flatnonzero(std == 0)
    if constant.size:
        raise LabInputError(f"{source}: column {constant[0] + 1} is constant (std 0), cannot standardize")
    data = ((data64 - data64.mean(axis=0)) / std).astype(np.float32)
    if rows is not None:
        if rows < 1:
            raise LabInputError(f"rows must be >= 1, got {rows}")
        data = data[:rows]
    return LabData(
        X=np.ascontiguousarray(data[:, :-1]),
        y=np.ascontiguousarray(data[:, -1:]),
        source=source,
        sha1=sha1,
        rows_in_file=table.shape[0],
    )


def least_squares_floor(data: LabData) -> float:
    """The smallest ½-MSE any linear model ``X w + b`` reaches on this data, in float64.

    The floor the trainers approach: solve the least-squares problem for [X, 1] exactly
    and evaluate ½·mean(residual²).
    """
    X = np.hstack([data.X.astype(np.float64), np.ones((data.n, 1))])
    y = data.y.astype(np.float64)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    residual = X @ beta - y
    return float(0.5 * np.mean(residual**2))
