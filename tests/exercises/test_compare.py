"""``adamlab compare``: the family on airfoil, through the command and the Python API."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adamlab.lab import compare as cmp
from tests.lab.records import assert_valid_record


def test_compare_two_members_one_epoch(tmp_path) -> None:
    out = tmp_path / "o"
    args = ["--optimizer", "adagrad", "--optimizer", "yogi", "--epochs", "1", "--out", str(out), "--json"]
    res = CliRunner().invoke(cmp.command, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "compare.json").read_text())
    assert_valid_record(doc, "compare")
    assert [r["optimizer"] for r in doc["results"]["table"]] == ["adagrad", "yogi"]
    assert 0.2 < doc["results"]["floor"] < 0.25
    for row in doc["results"]["table"]:
        assert row["gap_to_floor"] >= 0 and row["final_loss"] < 0.3  # both learn the problem
        assert row["sec_per_epoch"] > 0
    run = doc["results"]["runs"][0]
    assert len(run["seconds"]) == len(run["losses"]) == 8 and run["seconds"] == sorted(run["seconds"])
    assert doc["config"]["seed"] == 0 and "torch" in doc["versions"]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "compare.json").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize(
    "args, needle",
    [(["--optimizer", "lion"], "unknown optimizer"), (["--epochs", "0"], "--epochs"), (["--data", "/nope"], "nope")],
)
def test_compare_bad_input(tmp_path, args, needle) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(cmp.command, [*args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
