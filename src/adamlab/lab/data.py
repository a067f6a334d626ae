"""The chapter's data: NASA's airfoil self-noise measurements, loaded as the book loads them.

The pipeline (*Dive into Deep Learning*, ``d2l.get_data_ch11``)::

    parse the file as float32                         1503 rows x 6 columns (bundled file)
    standardize every column, the target included:   (x - mean) / std, population std (ddof=0),
                                                      over *all* rows, computed in float64
    keep the first 1500 rows                          5 features, 1 target (the last column)
    shuffled minibatches of 10                        a fresh permutation every pass

The bundled file is checked against the sha1 the book verifies and refused if it differs.
A user's own file (``--data``) is delimited text (tab, comma, semicolon or whitespace), the
last column is the target, a header line is optional, and every row is used. Every bad
input raises :class:`LabInputError` with a one-line message.

This module needs NumPy only; :meth:`LabData.tensors` hands the arrays to torch.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

BUNDLED_SHA1 = "76e5be1548fd8222e5074cf0faae75edff8cf93f"
BUNDLED_ROWS = 1500  # the chapter keeps the first 1500 of the 1503 rows
EXAMPLES_PER_EVAL = 200  # the chapter records the loss every 200 examples


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
    table = parse_table(raw.decode("utf-8", errors="replace"), name=str(path))
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
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LabInputError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise LabInputError(f"data path is a directory, not a file: {path}") from None
    except OSError as e:
        raise LabInputError(f"cannot read data file {path}: {e.strerror or e}") from None
    return raw, hashlib.sha1(raw).hexdigest()


_SPLIT = {"\t": "\t", ",": ",", ";": ";"}


def parse_table(text: str, *, name: str = "data") -> np.ndarray:
    """Parse delimited numeric text into a float32 (rows, columns) array.

    The delimiter is the first of tab, comma, semicolon found in the first line, else
    whitespace. A first line with no numeric cell is a header and is skipped. Blank lines
    at the end are ignored.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabInputError(f"{name}: the file is empty")
    delimiter = next((d for d in _SPLIT if d in lines[0]), None)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.split(delimiter)] if delimiter else line.split()

    first = 0
    if not any(_is_number(c) for c in cells(lines[0])):
        first = 1  # a header line
    body = lines[first:]
    if not body:
        raise LabInputError(f"{name}: no data rows (only a header)")
    width = len(cells(body[0]))
    if width < 2:
        raise LabInputError(f"{name}: need at least 2 columns (features, then the target), found {width}")
    values = np.empty((len(body), width), dtype=np.float64)
    for i, line in enumerate(body):
        row = cells(line)
        lineno = i + first + 1
        if len(row) != width:
            raise LabInputError(f"{name}: line {lineno} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            if not _is_number(cell):
                raise LabInputError(f"{name}: line {lineno}, column {j + 1}: not a number: {cell[:20]!r}")
            x = float(cell)
            if not math.isfinite(x):
                raise LabInputError(f"{name}: line {lineno}, column {j + 1}: {cell} is not finite")
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
