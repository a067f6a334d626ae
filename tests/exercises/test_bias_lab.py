"""``adamlab bias``: the three bias-correction variants on airfoil."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from adamlab.lab import bias as bi
from tests.lab.records import assert_valid_record


def test_bias_cli(tmp_path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(bi.command, ["--epochs", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "bias.json").read_text())  # --json prints what the file holds
    assert_valid_record(doc, "bias")
    rows = {r["variant"]: r for r in doc["results"]["table"]}
    assert rows["bias_correction=True"]["first_step_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert rows["bias_correction=False"]["first_step_ratio"] == pytest.approx(0.1 / 0.001**0.5, rel=1e-3)
    assert rows["recursive"]["final_loss"] == pytest.approx(rows["bias_correction=True"]["final_loss"], rel=1e-5)
    runs = doc["results"]["runs"]
    assert runs[0]["variant"] == "recursive"  # the answer to the exercise leads
    assert doc["conclusions"][0].startswith("No correction needed")
    moments = {r["variant"]: r["moments"] for r in runs}
    assert all(len(m["v_hat"]) == bi.MOMENT_STEPS for m in moments.values())
    np.testing.assert_allclose(moments["recursive"]["v_hat"], moments["bias_correction=True"]["v_hat"], rtol=1e-4)
    # without correction v starts at (1 - β1) g: shrunk towards 0
    assert moments["bias_correction=False"]["v_hat"][0] == pytest.approx(0.1 * moments["bias_correction=False"]["g"][0])
    assert (out / "bias.png").stat().st_size > 10_000
