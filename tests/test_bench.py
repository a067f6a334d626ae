"""``adamlab bench``: the smoke run end to end, and the pieces it is built from."""

from __future__ import annotations

import json
from math import prod

import pytest
import torch
from click.testing import CliRunner

from adamlab.bench import candidates, measure
from adamlab.bench.cli import command, main
from adamlab.bench.sets import PARAM_SETS, param_sets


def test_smoke_run_writes_json_and_chart(tmp_path) -> None:
    args = ["--smoke", "--no-first-step", "--impl", "adamlab.Yogi fused", "--impl", "Adam foreach=True"]
    args += ["--impl", "Yogi foreach=True", "--impl", "Yogi 8bit fused"]
    result = CliRunner().invoke(command, [*args, "--out", str(tmp_path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (tmp_path / "bench-cpu.json").exists() and (tmp_path / "bench-cpu.png").stat().st_size > 0
    assert json.loads((tmp_path / "bench-cpu.json").read_text()) == doc
    assert [s["set"] for s in doc["sets"]] == ["one-large", "gpt-like", "many-small", "linear-2"]
    assert doc["stream_bandwidth"]["gb_s"] > 0 and doc["bytes_per_param"] == 28
    assert doc["machine"]["versions"]["torch"] == torch.__version__
    ran = {r["candidate"] for s in doc["sets"] for r in s["rows"]}
    skipped = {s["candidate"] for s in doc["skipped"]}
    assert candidates.BASELINE in ran  # always, for the ratios
    assert {"torch.optim.Adam foreach=True", "adamlab.Adam foreach=True", "adamlab.Yogi foreach=True"} <= ran
    from adamlab.optim import fused_cpu

    # the fused row runs wherever the kernel builds; skipped (with its reason) only where it cannot
    assert "adamlab.Yogi fused=True" in (ran if fused_cpu.is_available() else skipped)
    assert "adamlab.Yogi 8bit foreach=True" not in ran | skipped  # "Yogi foreach=True" names the fp32 row only
    assert "adamlab.Yogi 8bit fused=True" in ran | skipped
    for s in doc["sets"]:
        for row in s["rows"]:
            assert row["ms"] > 0 and len(row["samples_ms"]) == 3 and row["first_step_ms"] > 0
            # fp32: two moments; 8-bit: codes and block scales; per tensor a step, a seed, a short last block
            low = 2 + 8 / 256 if " 8bit " in row["candidate"] else 8
            assert low <= row["state_bytes_per_param"] <= low + 24 * s["n_tensors"] / s["n_params"]
            assert row["gb_s"] == pytest.approx(28 * s["n_params"] / row["ms"] / 1e6)
            assert row["bandwidth_share"] == pytest.approx(row["gb_s"] / doc["stream_bandwidth"]["gb_s"])
            if row["candidate"] == candidates.BASELINE:
                assert row["ratio_to_torch_fused"] == 1.0 and row["within_noise"] is False
            else:
                base = next(r for r in s["rows"] if r["candidate"] == candidates.BASELINE)
                spread = max(max(x["samples_ms"]) - min(x["samples_ms"]) for x in (row, base))
                assert row["within_noise"] == (spread > abs(row["ms"] - base["ms"]))


def test_table_names_every_row(tmp_path) -> None:
    result = CliRunner().invoke(
        command,
        [
            "--smoke",
            "--no-first-step",
            "--set",
            "linear-2",
            "--impl",
            "adamlab.Adam foreach=False",
            "--out",
            str(tmp_path),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "| linear-2 | adamlab.Adam foreach=False |" in result.output  # the name --set takes
    assert "linear-2: the chapter's 2-tensor linear model" in result.output
    assert "streaming bandwidth" in result.output and "machine:" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| linear-2 | adamlab.Adam"))
    lo, hi = (float(x) for x in row.split("|")[4].strip().split("–"))  # the spread column: min–max
    assert 0 < lo <= float(row.split("|")[3]) <= hi


def _row(name: str, ms: float, samples: list[float]) -> dict:
    return {"candidate": name, "ms": ms, "samples_ms": samples}


def test_a_row_within_its_spread_is_flagged() -> None:
    from adamlab.bench.core import spread_ms, within_noise

    base = _row(candidates.BASELINE, 1.0, [0.95, 1.0, 1.05])
    assert spread_ms(base) == pytest.approx(0.1)
    assert within_noise(_row("a", 1.05, [1.0, 1.05, 1.1]), base)  # 0.05 apart, spread 0.1
    assert not within_noise(_row("b", 2.0, [1.9, 2.0, 2.1]), base)  # 1.0 apart
    assert within_noise(_row("c", 1.2, [1.2, 1.2, 1.2]), _row(candidates.BASELINE, 1.0, [0.5, 1.0, 1.5]))


def test_table_marks_noisy_rows_and_every_set_name_is_accepted_by_set(tmp_path) -> None:
    from adamlab.bench.core import table

    result = {
        "machine": {"cpu": "x", "cpu_count": 2, "torch_threads": 2, "versions": {"torch": "t"}, "date": "d" * 19},
        "stream_bandwidth": {"gb_s": 10.0},
        "bytes_per_param": 28,
        "torch_default": "foreach",
        "skipped": [],
        "first_fused_step": [],
        "sets": [
            {
                "set": "linear-2",
                "label": "the chapter's model",
                "rows": [
                    {
                        **_row(candidates.BASELINE, 1.0, [0.9, 1.0, 1.1]),
                        "gb_s": 1.0,
                        "bandwidth_share": 0.1,
                        "ratio_to_torch_fused": 1.0,
                        "peak_extra_bytes": 0,
                        "within_noise": False,
                    },
                    {
                        **_row("adamlab.Adam foreach=True", 1.05, [1.0, 1.05, 1.2]),
                        "gb_s": 1.0,
                        "bandwidth_share": 0.1,
                        "ratio_to_torch_fused": 1.05,
                        "peak_extra_bytes": 0,
                        "within_noise": True,
                    },
                ],
            }
        ],
    }
    lines = table(result).splitlines()
    assert any(
        line.startswith("| linear-2 | adamlab.Adam foreach=True | 1.05 | 1.00–1.20 |") and "1.05 ≈" in line
        for line in lines
    )
    assert not any("1.00 ≈" in line for line in lines)
    for name in {s.name for s in param_sets("cpu")}:  # what the table prints is what --set accepts
        assert [s.name for s in param_sets("cpu", names=(name,))] == [name]


def test_bad_names_exit_2_with_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--smoke", "--set", "nope", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown parameter set" in capsys.readouterr().err


def test_unknown_device_is_one_line_exit_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--device", "foo", "--smoke", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "'foo' is not one of 'cpu', 'cuda'" in err
    assert not (tmp_path / "o").exists()


def test_parameter_sets_are_the_issues() -> None:
    sizes = {s.name: (s.n_tensors, s.n_params) for s in param_sets("cpu")}
    assert sizes["one-large"] == (1, 4096 * 4096)
    assert sizes["gpt-like"][0] == 99 and round(sizes["gpt-like"][1] / 1e6, 1) == 41.6
    assert sizes["many-small"] == (2000, 2000 * 64 * 64)
    assert sizes["linear-2"] == (2, 6)
    gpu = {s.name: (s.n_tensors, s.n_params) for s in PARAM_SETS["cuda"]}
    assert gpu["gpt-like"][0] == 291 and round(gpu["gpt-like"][1] / 1e9, 2) == 1.31
    assert gpu["many-small"] == (4000, 4000 * 256 * 256)
    for s in param_sets("cpu", smoke=True):
        assert prod(s.shapes[0]) <= 2**16


def test_candidate_selection_and_unavailable_reasons() -> None:
    chosen = [c.name for c in candidates.select(("yogi fused",))]
    assert chosen == [candidates.BASELINE, "adamlab.Yogi fused=True"]
    with pytest.raises(ValueError, match="no candidate matches"):
        candidates.select(("no such optimizer",))
    missing = candidates.Candidate("x", lambda ps: None, "third-party", requires="surely_not_a_module_adamlab")
    assert "not installed" in missing.unavailable("cpu")
    elsewhere = candidates.Candidate("y", lambda ps: None, "adamlab", devices=("cuda",))
    assert "not for cpu" in elsewhere.unavailable("cpu")

    def broken(ps):
        raise RuntimeError("kernel did not build")

    assert "kernel did not build" in candidates.Candidate("z", broken, "adamlab").unavailable("cpu")


def test_peak_extra_bytes_sees_temporaries() -> None:
    def step() -> None:
        tmp = torch.empty(1 << 20)  # 4 MiB, freed at return
        tmp.fill_(1.0)

    assert measure.peak_extra_bytes(step, "cpu") >= 4 << 20
    assert measure.peak_extra_bytes(lambda: None, "cpu") == 0


def test_stream_bandwidth_counts_read_modify_write() -> None:
    bw = measure.stream_bandwidth("cpu", 1 << 20, repeats=3)
    assert bw["bytes_per_element"] == 12 and bw["gb_s"] == pytest.approx(12 * bw["elements"] / bw["seconds"] / 1e9)


def test_bench_creates_out_and_json_prints_the_file(tmp_path) -> None:
    out = tmp_path / "new" / "deeper"
    args = ["--smoke", "--no-first-step", "--set", "one-large", "--impl", "adamlab.Adam foreach=True"]
    result = CliRunner().invoke(command, [*args, "--out", str(out), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output == (out / "bench-cpu.json").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["bench-cpu.json", "bench-cpu.png"]  # no temp files left


def test_bench_json_is_strict_with_non_finite_values_as_null(tmp_path, monkeypatch) -> None:
    from adamlab.bench import core

    fake = {"sets": [{"set": "x", "rows": [{"ms": float("nan"), "ratio": float("inf")}]}]}
    monkeypatch.setattr(core, "run", lambda cfg, progress=None: fake)
    monkeypatch.setattr(core, "chart", lambda result, path: open(path, "wb").write(b"png"))
    result = CliRunner().invoke(command, ["--smoke", "--out", str(tmp_path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "NaN" not in result.output and "Infinity" not in result.output
    doc = json.loads(result.output)
    assert doc["sets"][0]["rows"][0] == {"ms": None, "ratio": None}
    assert result.output == (tmp_path / "bench-cpu.json").read_text()
    assert (tmp_path / "bench-cpu.png").read_bytes() == b"png"


def test_bench_refuses_an_unknown_set_before_creating_out(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--smoke", "--set", "nope", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and not (tmp_path / "o").exists()


def test_first_step_timeout_is_a_row_error(monkeypatch) -> None:
    import subprocess

    def slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(measure.subprocess, "run", slow)
    assert measure.first_fused_step("cpu", cold=False) == {"cold": False, "error": "timed out after 600 s"}


def test_the_default_run_leaves_out_the_slow_8bit_adams_and_a_pattern_picks_every_8bit_row() -> None:
    default = {c.name for c in candidates.select(None)}
    assert "bitsandbytes Adam8bit" not in default and "torchao AdamW8bit weight_decay=0" not in default
    assert {"adamlab.Adam bf16 fused=True", "adamlab.Yogi 8bit fused=True"} <= default  # the precision rows
    assert "adamlab.Yogi 8bit foreach=True" not in default  # seconds per step: only when named
    eight = [c.name for c in candidates.select(("8bit",))]
    assert eight == [
        candidates.BASELINE,
        *(f"adamlab.{r} 8bit {p}" for r in ("Adam", "Yogi") for p in ("foreach=True", "fused=True")),
        "bitsandbytes Adam8bit",
        "torchao AdamW8bit weight_decay=0",
    ]
    # the fp32 names select what they did before the precision rows existed
    assert [c.name for c in candidates.select(("yogi fused",))] == [candidates.BASELINE, "adamlab.Yogi fused=True"]


def test_precision_rows_construct_adamlab_with_their_state_precision(monkeypatch) -> None:
    import adamlab

    made = []
    for rule in ("Adam", "Yogi"):
        monkeypatch.setattr(adamlab, rule, lambda params, rule=rule, **kw: made.append((rule, kw)))
    low = [c for c in candidates.CANDIDATES if c.name.startswith("adamlab.") and ("bf16" in c.name or "8bit" in c.name)]
    for c in low:
        c.make([])
    assert made == [
        (rule, {"state_precision": precision, path: True})
        for rule in ("Adam", "Yogi")
        for precision in ("bf16", "8bit")
        for path in ("foreach", "fused")
    ]


def test_state_bytes_counts_every_state_tensor_once() -> None:
    p, q = torch.zeros(100, requires_grad=True), torch.zeros(10, 10, requires_grad=True)
    for x in (p, q):
        x.grad = torch.ones_like(x)
    opt = torch.optim.Adam([p, q], foreach=False)
    opt.step()
    n = 8 * 200 + 2 * opt.state[p]["step"].element_size()  # two fp32 moments + a step tensor each
    assert measure.state_bytes(opt) == n
    opt.state[q]["shared"] = opt.state[p]["exp_avg"]  # one tensor in two states: counted once
    opt.state[q]["count"] = 7  # Python numbers hold no tensor bytes
    assert measure.state_bytes(opt) == n
    opt.state[q]["view"] = opt.state[p]["exp_avg"][:10]  # a view is a tensor of its own size
    assert measure.state_bytes(opt) == n + 40


def test_state_bytes_unwraps_torchao_8bit_state() -> None:
    subclass = pytest.importorskip("torchao.optim.subclass_8bit")

    from types import SimpleNamespace

    holder = SimpleNamespace(state={0: {"exp_avg": subclass.OptimState8bit.zeros((256, 256), True, 256)}})
    # 65536 uint8 codes, 256 float32 block scales, the 256-entry float32 map
    assert measure.state_bytes(holder) == 65536 + 4 * 256 + 4 * 256
