"""``adamlab bench --workload gpt``: the quick run end to end, distributed runs against the
single-process one, Ctrl-C, bad input, and the pieces (corpus, model, memory)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch

from adamlab.bench.cli import main
from adamlab.bench.workload import config, corpus, memory, preset, run
from adamlab.bench.workload.model import GPT, GPTConfig


def _invoke(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_quick_run_trains_every_optimizer_and_writes_json_and_figure(tmp_path, capsys) -> None:
    code, out, err = _invoke(["--workload", "gpt", "--quick", "--out", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert json.loads((tmp_path / "workload-gpt.json").read_text()) == doc
    assert (tmp_path / "workload-gpt.png").stat().st_size > 10_000
    assert not doc["partial"] and doc["config"]["quick"]
    names = {r["optimizer"] for r in doc["runs"]["single"]}
    assert {
        "torch.optim.Adam foreach=True",
        "torch.optim.Adam fused=True",
        "adamlab.Adam foreach=False",
        "adamlab.Adam foreach=True",
        "adamlab.Yogi foreach=False",
        "adamlab.Yogi foreach=True",
    } <= names
    assert names | {s["optimizer"] for s in doc["skipped"]} >= {
        "torch_optimizer.Yogi",
        "pytorch_optimizer.Yogi",
        "adamlab.Yogi fused=True",
    }
    # the low-precision rows run wherever adamlab has the option (F's state_precision)
    low = {n for n in names if " bf16 " in n or " 8bit " in n}
    n = doc["model_params"]
    for r in doc["runs"]["single"]:
        assert r["steps"] == doc["config"]["steps"] == len(r["opt_s"]) == len(r["train_loss"])
        assert r["val"][-1]["loss"] < r["val"][0]["loss"] - 0.3  # it trained
        assert r["val"][-1]["wall_s"] == pytest.approx(sum(r["fwd_bwd_s"]) + sum(r["opt_s"]))
        if " bf16 " in r["optimizer"]:  # two bfloat16 moments, a step and a seed per tensor
            assert 4 * n <= r["state_bytes"] < 4 * n + 2048
        elif " 8bit " in r["optimizer"]:  # two uint8 moments and their float32 block scales
            assert 2 * n < r["state_bytes"] < 2.2 * n
        else:  # exp_avg and exp_avg_sq in float32, plus a step count per tensor in some implementations
            assert 8 * n <= r["state_bytes"] < 8 * n + 1024
    falls = [c for c in doc["checks"] if c["check"] == "loss falls"]
    assert len(falls) == len(names) and all(c["ok"] for c in falls)
    for row in doc["summary"]["single"]:
        assert 0 < row["opt_share"]["mean"] < 1 and row["tokens_s"]["mean"] > 0
        assert ("vs_fp32" in row) == (row["optimizer"] in low)
        if row["optimizer"] in low:  # a different rounding of the state, not a different optimizer
            assert abs(row["vs_fp32"]["mean"]) < 0.03, row
    # every fp32 implementation of one rule computes the same update: the curves agree
    finals = {r["optimizer"]: r["val"][-1]["loss"] for r in doc["runs"]["single"] if r["optimizer"] not in low}
    adams = [v for k, v in finals.items() if "Adam" in k]
    yogis = [v for k, v in finals.items() if "Yogi" in k]
    assert max(adams) - min(adams) < 1e-3 and max(yogis) - min(yogis) < 1e-3
    info = doc["corpus"]
    files = corpus.stdlib_files(__import__("pathlib").Path(info["root"]))[: info["files"]]
    data = b"".join(p.read_bytes() + b"\n" for p in files)[: info["bytes"]]
    assert hashlib.sha256(data).hexdigest() == info["sha256"]


def test_distributed_runs_match_the_single_process_run() -> None:
    cfg = replace(
        preset("quick"),
        modes=("single", "ddp", "fsdp2"),
        steps=8,
        eval_every=4,
        optimizers=("adamlab.Yogi foreach=True", "torch.optim.Adam fused", "adamlab.Yogi 8bit foreach"),
    )
    result = run(cfg)
    optimizers = {"adamlab.Yogi foreach=True", "torch.optim.Adam fused=True", "adamlab.Yogi 8bit foreach=True"}
    matches = [c for c in result["checks"] if c["check"] == "matches single process"]
    assert {(c["mode"], c["optimizer"]) for c in matches} == {(m, o) for m in ("ddp", "fsdp2") for o in optimizers}
    assert all(c["ok"] for c in matches), matches
    # float rounding, not a different computation; 8-bit under FSDP2 quantizes each rank's shard
    # in its own blocks, so its codes differ from the whole tensor's where a block's absmax does
    assert max(c["max_abs_diff"] for c in matches) < 1e-3
    n = result["model_params"]
    for r in result["runs"]["fsdp2"]:  # sharded: each rank holds about half of the state
        per_param = 2.0 if " 8bit " in r["optimizer"] else 8.0
        assert sum(r["state_bytes_per_rank"]) == r["state_bytes"] >= per_param * n
        assert max(r["state_bytes_per_rank"]) < 0.75 * r["state_bytes"]
    for r in result["runs"]["ddp"]:  # replicated
        assert r["state_bytes_per_rank"][0] == r["state_bytes_per_rank"][1]
    for mode in ("ddp", "fsdp2"):
        assert [rk["peak_rss_bytes"] > 50e6 for rk in result["distributed"][mode]["ranks"]] == [True, True]
        assert result["distributed"][mode]["threads_per_rank"] >= 1
        assert {row["optimizer"] for row in result["summary"][mode]} == set(result["optimizers"])


def test_peak_rss_probe_runs_each_optimizer_in_its_own_process() -> None:
    cfg = replace(preset("quick"), rss_probe_steps=1).to_dict()
    out = memory.peak_rss(cfg, ["torch.optim.Adam foreach=True"])["torch.optim.Adam foreach=True"]
    assert "error" not in out, out
    assert out["peak_rss_bytes"] > out["baseline_rss_bytes"] > 50e6


def test_ctrl_c_keeps_what_was_measured_marked_partial(tmp_path, capsys, monkeypatch) -> None:
    real = corpus.train_batch

    def interrupted(c, step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return real(c, step, *args)

    monkeypatch.setattr(corpus, "train_batch", interrupted)
    code, _out, err = _invoke(
        ["--workload", "gpt", "--quick", "--impl", "adamlab.Adam foreach=True", "--out", str(tmp_path), "--quiet"],
        capsys,
    )
    assert code == 130 and "partial" in err and err.count("\n") == 1
    doc = json.loads((tmp_path / "workload-gpt.json").read_text())
    assert doc["partial"] and [r["steps"] for r in doc["runs"]["single"]] == [5]
    assert (tmp_path / "workload-gpt.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--impl", "no-such-optimizer"], "no-such-optimizer"),
        (["--modes", "single,zero3"], "zero3"),
        (["--world-size", "4096"], "larger than this machine's"),
        (["--n-layer", "3000", "--d-model", "4096"], "too large for this machine"),
        (["--batch-size", "3", "--modes", "single,ddp"], "does not split evenly"),
        (["--modes", "ddp"], "need the single mode too"),
        (["--modes", "fsdp2,ddp"], "need the single mode too"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message) -> None:
    out_dir = tmp_path / "out"
    code, _out, err = _invoke(["--workload", "gpt", *args, "--out", str(out_dir)], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("adamlab: error:")
    assert not out_dir.exists()


def test_unknown_workload_and_workload_options_without_workload(tmp_path, capsys) -> None:
    code, _, err = _invoke(["--workload", "bert", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "bert" in err
    code, _, err = _invoke(["--quick", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--quick: only with --workload gpt" in err
    assert not (tmp_path / "o").exists()


def test_too_large_model_is_refused_with_the_estimate(monkeypatch) -> None:
    monkeypatch.setattr(config, "available_memory", lambda: 2**30)
    cfg = preset("default", d_model=1536, n_layer=12, n_head=12)
    with pytest.raises(ValueError, match=r"too large.*need about [\d.]+ GiB.*1\.0 GiB is available"):
        config.check(cfg, ["adamlab.Adam foreach=True"])
    assert config.memory_estimate(cfg, 2)["total"] > config.memory_estimate(cfg, 1)["total"]


def test_model_parameter_count_and_shapes() -> None:
    for cfg in (GPTConfig(), GPTConfig(block=16, n_layer=1, n_head=2, d_model=8)):
        model = GPT(cfg)
        assert sum(p.numel() for p in model.parameters()) == cfg.n_params()
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.randint(0, 256, (2, cfg.block), generator=gen) for _ in range(2))
        loss = model(x, y)
        assert loss.shape == () and torch.isfinite(loss)
    # GPT-2 init: near-uniform predictions at first, a loss of about ln(256) nats per byte
    assert abs(GPT(GPTConfig())(x[:, :16], y[:, :16]).item() - torch.log(torch.tensor(256.0)).item()) < 0.1
    assert 3e5 < GPTConfig().n_params() < 1e6  # the default: sized for 11 optimizers x 5 runs on 2 cores
    assert 3e6 < GPTConfig(d_model=256, n_layer=4).n_params() < 4e6  # --d-model 256 --n-layer 4
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPT(GPTConfig(d_model=10, n_head=3))


def test_corpus_rule_split_and_batches_are_fixed() -> None:
    a, b = corpus.load(1 << 21), corpus.load(1 << 21)
    assert a.info == b.info and torch.equal(a.val, b.val) and a.info["bytes"] == 1 << 21
    assert a.info["train_bytes"] + a.info["val_bytes"] == a.info["bytes"]
    assert corpus.load(1 << 21, split_seed=1).info["val_bytes"] != a.info["val_bytes"]
    files = corpus.stdlib_files(__import__("pathlib").Path(a.info["root"]))
    assert files and not any({"test", "tests", "site-packages"} & set(p.parts) for p in files)
    x1, y1 = corpus.train_batch(a, 3, 0, 4, 16)
    x2, _ = corpus.train_batch(a, 3, 0, 4, 16)
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])
    assert not torch.equal(x1, corpus.train_batch(a, 3, 1, 4, 16)[0])  # another seed, other data


def test_a_failed_rank_is_a_failed_check_and_the_single_process_results_are_written(
    tmp_path, capsys, monkeypatch
) -> None:
    from adamlab.bench.workload import launch

    def failing(mode, *args, **kwargs):
        raise RuntimeError(
            f"{mode} ranks exited with [1, 0]:\n--- rank 0\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\nValueError: boom\n--- rank 1\n'
        )

    monkeypatch.setattr(launch, "run_distributed", failing)
    monkeypatch.setattr(config, "cores", lambda: 2)
    code, _out, err = _invoke(
        [
            "--workload", "gpt", "--quick", "--impl", "adamlab.Adam foreach=True", "--modes", "single,ddp",
            "--world-size", "2", "--out", str(tmp_path), "--quiet",
        ],
        capsys,
    )  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "ranks finish" in err and "ValueError: boom" in err, err
    doc = json.loads((tmp_path / "workload-gpt.json").read_text())
    assert [r["steps"] for r in doc["runs"]["single"]] == [doc["config"]["steps"]] and doc["runs"]["ddp"] == []
    assert "ValueError: boom" in doc["distributed"]["ddp"]["error"]
    assert [c["check"] for c in doc["checks"] if not c["ok"]] == ["ranks finish"]
    assert (tmp_path / "workload-gpt.png").exists()


def _val(*losses):
    return [{"step": i + 1, "loss": x, "wall_s": float(i)} for i, x in enumerate(losses)]


def test_a_non_finite_or_missing_comparison_fails_the_match_check() -> None:
    from adamlab.bench.workload.report import checks

    cfg = preset("quick")
    single = {"optimizer": "a", "seed": 0, "val": _val(3.0, 2.0, 1.0)}
    nan_run = {"optimizer": "a", "seed": 0, "val": _val(3.0, 2.0, float("nan"))}
    unmatched = {"optimizer": "b", "seed": 0, "val": _val(3.0, 2.0, 1.0)}
    result = {"runs": {"single": [single], "ddp": [nan_run, unmatched]}, "distributed": {}, "partial": False}
    matches = [c for c in checks(result, cfg) if c["check"] == "matches single process"]
    assert [(c["optimizer"], c["ok"]) for c in matches] == [("a", False), ("b", False)]
    assert "not run" in matches[1]["detail"]


def test_a_low_precision_row_is_compared_with_its_fp32_row_seed_by_seed() -> None:
    from adamlab.bench.workload.report import vs_fp32

    def r(name, seed, loss):
        return {"optimizer": name, "seed": seed, "val": [{"step": 1, "loss": 9.0}, {"step": 2, "loss": loss}]}

    runs = [
        r("adamlab.Yogi foreach=True", 0, 3.0),
        r("adamlab.Yogi 8bit foreach=True", 0, 3.03),
        r("adamlab.Yogi foreach=True", 1, 2.0),
        r("adamlab.Yogi 8bit foreach=True", 1, 1.99),
        r("adamlab.Yogi 8bit foreach=True", 2, 5.0),  # no fp32 run with seed 2: not compared
    ]
    vs = vs_fp32(runs, "adamlab.Yogi 8bit foreach=True")
    assert vs["fp32"] == "adamlab.Yogi foreach=True"
    assert vs["relative"] == pytest.approx([0.01, -0.005])
    assert (vs["mean"], vs["min"], vs["max"]) == pytest.approx((0.0025, -0.005, 0.01))
    assert vs_fp32(runs, "adamlab.Yogi foreach=True") is None  # an fp32 row
    assert vs_fp32(runs[2:], "adamlab.Adam bf16 fused=True") is None  # its fp32 row did not run


def test_low_precision_rows_train_like_their_fp32_rows() -> None:
    names = ["adamlab.Adam foreach=True", "adamlab.Adam bf16 foreach=True", "adamlab.Yogi foreach=True"]
    names.append("adamlab.Yogi 8bit foreach=True")
    result = run(replace(preset("quick"), optimizers=tuple(names)), names=names)
    rows = {r["optimizer"]: r for r in result["summary"]["single"]}
    n = result["model_params"]
    assert 4 * n <= rows["adamlab.Adam bf16 foreach=True"]["state_bytes"] < 4 * n + 2048  # + a step, a seed per tensor
    assert 2 * n < rows["adamlab.Yogi 8bit foreach=True"]["state_bytes"] < 2.2 * n  # + float32 block scales
    for name, fp32 in (("adamlab.Adam bf16 foreach=True", names[0]), ("adamlab.Yogi 8bit foreach=True", names[2])):
        vs = rows[name]["vs_fp32"]
        assert vs["fp32"] == fp32 and len(vs["relative"]) == 1
        assert 0 < abs(vs["mean"]) < 0.03, vs  # rounded state: another curve, close to fp32's
    assert "vs_fp32" not in rows[names[0]]
