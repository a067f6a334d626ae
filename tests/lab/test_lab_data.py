"""The chapter's data pipeline: the bundled file, standardization, rows, and every bad input."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from adamlab.lab import data as labdata
from adamlab.lab.data import BUNDLED_SHA1, LabInputError, least_squares_floor, load, load_bundled, parse_table


def test_bundled_file_is_the_books_file():
    raw = labdata.bundled_path().read_bytes()
    assert hashlib.sha1(raw).hexdigest() == BUNDLED_SHA1


def test_standardization_equals_a_float64_computation():
    d = load()
    raw = np.genfromtxt(labdata.bundled_path(), dtype=np.float32, delimiter="\t").astype(np.float64)
    assert raw.shape == (1503, 6)
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=0)  # all 1503 rows, population std
    assert d.X.dtype == np.float32 and d.y.dtype == np.float32
    np.testing.assert_allclose(d.X, expected[:1500, :5], rtol=0, atol=1e-6)
    np.testing.assert_allclose(d.y, expected[:1500, 5:], rtol=0, atol=1e-6)


def test_first_1500_rows_are_used():
    d = load()
    assert (d.n, d.features, d.rows_in_file) == (1500, 5, 1503)
    assert d.describe()["rows_used"] == 1500


def test_a_modified_bundled_file_is_refused(tmp_path):
    copy = tmp_path / "airfoil_self_noise.dat"
    shutil.copy(labdata.bundled_path(), copy)
    load_bundled(copy)  # the unmodified copy loads
    raw = bytearray(copy.read_bytes())
    raw[100] = ord("7") if raw[100] != ord("7") else ord("8")
    copy.write_bytes(bytes(raw))
    with pytest.raises(LabInputError, match="sha1"):
        load_bundled(copy)


def test_floor_is_the_least_squares_optimum():
    d = load()
    floor = least_squares_floor(d)
    assert 0.2410 < floor < 0.2420
    # No linear model does better: perturbing the optimum only raises the loss.
    X = np.hstack([d.X.astype(np.float64), np.ones((d.n, 1))])
    beta = np.linalg.solve(X.T @ X, X.T @ d.y.astype(np.float64))
    assert 0.5 * np.mean((X @ beta - d.y) ** 2) == pytest.approx(floor, rel=1e-9)
    assert 0.5 * np.mean((X @ (beta + 0.01) - d.y) ** 2) > floor


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1\t2\t3\n4\t5\t7\n", (2, 3)),
        ("a,b,c\r\n1,2,3\r\n4,5,7\r\n\r\n", (2, 3)),  # header, CRLF, trailing blank line
        ("1;2\n3;5\n", (2, 2)),
        ("1 2  3\n4 5 7\n", (2, 3)),
        ("1e3, -.5, +2.\n2E-1, 0.25, 3\n", (2, 3)),
    ],
)
def test_user_files_delimiters_and_header(text, shape):
    assert parse_table(text).shape == shape


def test_a_user_file_uses_every_row(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(37, 4))
    path = tmp_path / "mine.csv"
    path.write_text("f1,f2,f3,target\n" + "\n".join(",".join(repr(float(x)) for x in row) for row in table))
    d = load(path)
    assert (d.n, d.features) == (37, 3)
    np.testing.assert_allclose(d.y[:, 0], (table[:, 3] - table[:, 3].mean()) / table[:, 3].std(), atol=1e-6)


BAD_FILES = {
    "empty": ("", "empty"),
    "blank": ("\n\n", "empty"),
    "header only": ("a,b\n", "no data rows"),
    "ragged": ("1,2,3\n4,5\n", "line 2 has 2 columns, expected 3"),
    "one column": ("1\n2\n", "at least 2 columns"),
    "non-numeric": ("1,2\n3,x\n", "line 2, column 2: not a number"),
    "empty cell": ("1,2\n3,\n", "line 2, column 2: not a number"),
    "nan": ("1,2\n3,nan\n4,5\n", "not finite"),
    "inf": ("1,2\n-inf,3\n4,5\n", "not finite"),
    "constant column": ("1,2\n1,3\n1,5\n", "column 1 is constant"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_user_files(tmp_path, case):
    text, message = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LabInputError, match=message):
        load(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(LabInputError, match="not found"):
        load(tmp_path / "nope.csv")
    with pytest.raises(LabInputError, match="directory"):
        load(tmp_path)
