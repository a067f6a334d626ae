"""Issue 18 items 12, 13 and 17 (data files): devices, pipes, values beyond float32, BOMs,
comment lines and blank lines. Each is one ``LabInputError`` line naming the file, or a
file read as a user means it."""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adamlab.lab.cli import cli
from adamlab.lab.data import MAX_DATA_BYTES, LabInputError, load, parse_table

ROWS = "1,2,3\n4,5,7\n2,9,1\n"

# A child that loads one path with a hard memory cap and a deadline: what used to grow
# without bound (``/dev/zero``) or block forever (a FIFO with no writer) must not take the
# test runner with it.
_LOAD_IN_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
import adamlab.lab.data
from adamlab.lab.data import LabInputError, load
adamlab.lab.data.PIPE_WAIT_SECONDS = 0.5
try:
    load(sys.argv[1])
except LabInputError as e:
    print("refused:", e)
"""


def _load_in_child(path: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_CHILD, path], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_refused_at_the_size_limit():
    out = _load_in_child("/dev/zero")
    assert out.startswith("refused: data file /dev/zero gives more than the 64 MiB"), out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_without_a_writer_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = _load_in_child(str(fifo))
    assert out.startswith(f"refused: data file {fifo} is a pipe with nothing to read after 0.5 s"), out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_whose_writer_comes_later_is_read_to_its_end(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as f:  # blocks until the reader opens
            f.write(ROWS[:6])
            f.flush()
            time.sleep(0.2)  # the rest arrives later: the reader reads to the end, not to the first gap
            f.write(ROWS[6:])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        data = load(fifo)
    finally:
        writer.join(timeout=10)
    assert (data.n, data.features) == (3, 2)


def test_a_regular_file_over_the_limit_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate(MAX_DATA_BYTES + 1)  # sparse: nothing is written or read
    with pytest.raises(LabInputError, match=r"big.csv is larger than the 64 MiB --data reads"):
        load(big)


def test_the_size_limit_is_stated_in_the_help():
    for command in (["train"], ["sweep"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert "64 MiB" in " ".join(result.output.split()), result.output


@pytest.mark.parametrize("cell", ["1e300", "-4e38", "3.5e38"])
def test_a_value_beyond_float32_names_its_line_and_column(tmp_path, cell):
    path = tmp_path / "huge.csv"
    path.write_text(f"a,b,c\n1,2,3\n4,{cell},7\n2,9,1\n")
    with pytest.raises(LabInputError, match=rf"huge.csv: line 3, column 2: {cell} is beyond float32's range"):
        load(path)


def test_the_largest_float32_value_is_accepted():
    assert parse_table("3.4e38,1\n-3.4e38,2\n").dtype == np.float32


def test_a_huge_value_is_one_line_on_the_command_line(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("1,2,3\n4,1e300,7\n2,9,1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["train", "--data", str(path), "--batch-size", "1", "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "line 2, column 2: 1e300 is beyond float32's range" in result.stderr
    assert not out.exists()


ENCODED = {
    "utf-8 BOM": codecs.BOM_UTF8 + ROWS.encode(),
    "utf-8 BOM and header": codecs.BOM_UTF8 + ("x,y,target\n" + ROWS).encode(),
    "utf-16 LE BOM": ("\ufeff" + ROWS).encode("utf-16-le"),
    "utf-16 BE BOM": ("\ufeff" + ROWS).encode("utf-16-be"),
    "comment first": ("# exported 2026-12-04; x, y; target\n" + ROWS).encode(),
    "comments and header": ("# airfoil subset\n#\nx\ty\tz\n" + ROWS.replace(",", "\t")).encode(),
    "blank lines mid-file": b"1,2,3\n\n4,5,7\n   \n2,9,1\n\n",
    "comment mid-file": b"1,2,3\n# a note\n4,5,7\n2,9,1\n",
}


@pytest.mark.parametrize("case", ENCODED)
def test_boms_comments_and_blank_lines_are_read(tmp_path, case):
    path = tmp_path / "data.csv"
    path.write_bytes(ENCODED[case])
    data = load(path)
    expected = load_plain(tmp_path)
    assert data.X.tobytes() == expected.X.tobytes() and data.y.tobytes() == expected.y.tobytes()


def load_plain(tmp_path: Path):
    plain = tmp_path / "plain.csv"
    plain.write_text(ROWS)
    return load(plain)


def test_a_bom_in_text_given_to_the_parser_is_dropped():
    assert parse_table("\ufeff1,2\n3,4\n").tolist() == [[1, 2], [3, 4]]


def test_messages_keep_the_files_line_numbers_around_skipped_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("# header comment\n\n1,2,3\n\n4,x,7\n")
    with pytest.raises(LabInputError, match=r"line 5, column 2: not a number: 'x'"):
        load(path)
    path.write_text("1,2,3\n\n4,5\n")
    with pytest.raises(LabInputError, match=r"line 3 has 2 columns, expected 3"):
        load(path)


def test_only_comments_is_an_empty_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("# nothing here\n\n# still nothing\n")
    with pytest.raises(LabInputError, match="empty"):
        load(path)
