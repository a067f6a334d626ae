"""``adamlab init-batches``: five starts of Yogi on airfoil, loss after every step."""

from __future__ import annotations

import json

from click.testing import CliRunner

from adamlab.lab import init_batches as ib
from tests.lab.records import assert_valid_record


def test_init_batches_cli(tmp_path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(ib.command, ["--k", "3", "--batch-size", "50", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["start"] for r in doc["results"]["table"]] == ["s0=0", "s0=1e-6", "s0=0,no-bc", "init 3", "init 3 +v0"]
    assert doc == json.loads((out / "init-batches.json").read_text())
    assert_valid_record(doc, "init-batches")
    runs = doc["results"]["runs"]
    curves = [r["loss_per_step"] for r in runs]
    assert all(len(c) == 1 + 30 for c in curves)  # before step 1, then 30 steps of batch 50
    assert len({c[0] for c in curves}) == 1  # same seed, and initializing moves no parameter
    assert len({c[1] for c in curves}) == 5  # ... but every start takes a different first step
    assert all(c[-1] < c[0] for c in curves)
    assert (out / "init-batches.png").stat().st_size > 10_000


def test_init_batches_bad_k(tmp_path) -> None:
    res = CliRunner().invoke(ib.command, ["--k", "0", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--k" in res.stderr and not (tmp_path / "o").exists()


def test_the_conclusion_follows_the_numbers() -> None:
    """Computed, not canned: the same code says 'helped' or 'hurt' as the curves say."""
    floor = 0.24
    base = [0.5, 0.4, 0.3, 0.26, 0.245, 0.242]  # within 0.01 of the floor after 4 steps
    fast = [0.5, 0.3, 0.245, 0.242, 0.241, 0.241]  # after 2
    slow = [0.5, 0.45, 0.4, 0.35, 0.3, 0.249]  # after 5
    starts = ib.starts(3)

    def result(init_curve, with_bc=base, no_bc=base):
        curves = [with_bc, base, no_bc, init_curve, init_curve]
        return ib.InitBatchesResult(starts, curves, [None] * 5, floor, {}, {})

    helped, hurt = result(fast).conclusions(), result(slow).conclusions()
    assert "after 2 steps, vs 4 steps from s0 = 0 (s0=0,no-bc, the same bias correction): it helped" in helped[0]
    assert "after 5 steps, vs 4 steps from s0 = 0 (s0=0,no-bc, the same bias correction): it hurt" in hurt[0]
    # the baseline is the start that differs only in the initialization (both without bias
    # correction), not the chapter's bias-corrected s0 = 0: two changes at once would blame one
    fooled = result(slow, with_bc=[0.5, 0.49, 0.48, 0.47, 0.46, 0.3], no_bc=fast).conclusions()
    assert "after 5 steps, vs 2 steps from s0 = 0 (s0=0,no-bc" in fooled[0] and "it hurt" in fooled[0]


def test_on_airfoil_the_conclusion_matches_the_table(tmp_path) -> None:
    result = ib.init_batches(10)
    rows = {r["start"]: r for r in result.rows()}
    a, b = rows["init 10"]["steps_to_within_0.01"], rows["s0=0,no-bc"]["steps_to_within_0.01"]
    verdict = "it helped" if a is not None and (b is None or a < b) else "it hurt" if b is not None and (
        a is None or a > b) else "no difference"  # fmt: skip
    assert verdict in result.conclusions()[0]
