"""Real ``torch.distributed`` on the CPU: DDP, ZeroRedundancyOptimizer and FSDP2 (issue 8, §5).

Two gloo processes (``tests/distributed/worker.py``) run every scenario once for the whole
module; each test below checks one scenario's results against single-process training
computed here with the same model and data. Gloo rendezvous goes through a file store in a
temporary directory and talks over the loopback device only.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock

import adamlab

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed/gloo",
)

WORKER = Path(__file__).parent / "distributed" / "worker.py"
_spec = importlib.util.spec_from_file_location("adamlab_distributed_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

WORLD = 2
# low-precision state (issue 14): the readable path and the fused one
LOW_IMPLS = ("foreach", "fused_cpu")
LOW_SCENARIOS = ("ddp_bf16", "ddp_8bit", "fsdp2_bf16", "fsdp2_8bit", "zero_8bit")


def launch(out_dir: Path, only: list[str], timeout: float = 240.0) -> dict[str, Any]:
    """Run WORLD ranks of the worker over the scenarios ``only`` (in order)."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(WORLD), str(out_dir / "init"), str(out_dir), *only],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    logs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
            out += f"\n[killed after {timeout} s]"
        logs.append(f"--- exit code {proc.returncode}\n{out[-3000:]}")
    return {"dir": out_dir, "log": "\n".join(logs), "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One launch per test run (a scenario that kills the ranks fails itself and those after it).

    Under pytest-xdist every worker that gets a test of this module would build this
    fixture: the first one launches, the others wait on a file lock and read its results.
    """
    impls = worker.available_impls()
    todo = [f"{name}/{impl}" for impl in impls for name in ("ddp", "zero", "fsdp2", "fsdp2_skip")]
    todo += [f"{name}/{impl}" for impl in LOW_IMPLS if impl in impls for name in LOW_SCENARIOS]
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        run = launch(tmp_path_factory.mktemp("dist"), todo)
    else:
        shared = tmp_path_factory.getbasetemp().parent / f"adamlab-dist-{run_id}"
        with FileLock(str(shared) + ".lock"):
            done = shared / "done.json"
            if done.exists():
                run = json.loads(done.read_text())
                run["dir"] = shared
            else:
                shared.mkdir()
                run = launch(shared, todo)
                done.write_text(json.dumps({k: v for k, v in run.items() if k != "dir"}))
    print(f"distributed worker: {WORLD} ranks, {len(todo)} scenarios, {run['seconds']:.1f} s")
    return run


def scenario(run: dict[str, Any], name: str, impl: str) -> list[dict[str, Any]]:
    """Every rank's results for one scenario; fails (with the ranks' output) if any is missing."""
    if impl not in worker.available_impls():
        pytest.skip(f"{impl} is not available in this build")
    out = []
    for rank in range(WORLD):
        path = run["dir"] / f"rank{rank}-{name}-{impl}.pt"
        assert path.exists(), f"rank {rank} wrote no results for {name}/{impl}:\n{run['log']}"
        r = torch.load(path, weights_only=False)
        assert "error" not in r, f"rank {rank}: {r['error']}\n{r.get('traceback', '')}"
        out.append(r)
    return out


def single_process(impl: str, steps: int = worker.STEPS) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same training in one process, on the concatenated (full) batch."""
    model = worker.make_model()
    opt = adamlab.Yogi(model.parameters(), lr=worker.LR, **worker.IMPLS[impl])
    for i in range(steps):
        worker.step(model, opt, i, rank=0, world=1)
    return model, opt


def assert_close_params(got: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        # float32 rounding of the gradient average, carried through a few Yogi steps
        torch.testing.assert_close(got[name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)


def assert_equal_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


IMPL_NAMES = list(worker.IMPLS)


@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_ddp_equals_single_process_on_the_full_batch(runs, impl: str) -> None:
    r0, r1 = scenario(runs, "ddp", impl)
    assert_equal_params(r0["params"], r1["params"])  # replicas stay identical
    model, _ = single_process(impl)
    assert_close_params(r0["params"], model)


@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_zero_redundancy_matches_unsharded_and_its_state_loads_into_yogi(runs, impl: str) -> None:
    r0, r1 = scenario(runs, "zero", impl)
    ddp0, _ = scenario(runs, "ddp", impl)
    total = sum(p.numel() for p in worker.make_model().parameters())
    assert 0 < r0["local_numel"] < total and r0["local_numel"] + r1["local_numel"] == total  # really sharded
    # same gradients, same per-tensor update: the sharded run equals the unsharded one bitwise
    assert_equal_params(r0["params"], ddp0["params"])
    assert_equal_params(r1["params"], ddp0["params"])

    # the consolidated state_dict loads into a plain adamlab.Yogi and carries on like the
    # single-process optimizer it replaces
    model, opt = single_process(impl)
    fresh = worker.make_model()
    fresh.load_state_dict({k: v for k, v in r0["params"].items()})
    plain = adamlab.Yogi(fresh.parameters(), lr=worker.LR, **worker.IMPLS[impl])
    plain.load_state_dict(r0["state_dict"])
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert plain.state[q]["step"].item() == worker.STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(plain.state[q][key], opt.state[p][key], rtol=1e-5, atol=1e-7)
    worker.step(fresh, plain, worker.STEPS, rank=0, world=1)
    worker.step(model, opt, worker.STEPS, rank=0, world=1)
    assert_close_params(dict(fresh.named_parameters()), model)


def _check_fsdp2(r0: dict[str, Any], r1: dict[str, Any], impl: str) -> None:
    assert r0["param_is_dtensor"] and r1["param_is_dtensor"]
    assert r0["state_types"] == ["DTensor", "Tensor"]  # sharded moments, a plain step count
    assert r0["local_shapes"] == [(8, 6), (8,), (2, 16), (2,)]  # dim 0 split over 2 ranks
    assert_equal_params(r0["params"], r1["params"])
    model, _ = single_process(impl)
    assert_close_params(r0["params"], model)
    # torch.distributed.checkpoint round trip of the sharded optimizer state: bitwise resume
    assert r0["steps_after_load"] == [float(worker.RESUME_AT)]
    assert_equal_params(r0["resumed_params"], r0["params"])


@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_fsdp2_dtensor_params_and_distributed_checkpoint(runs, impl: str) -> None:
    _check_fsdp2(*scenario(runs, "fsdp2", impl), impl)


@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_fsdp2_skip_nonfinite_skips_on_every_rank(runs, impl: str) -> None:
    """A NaN in one rank's gradient shard: the check reduces over the DTensor, so every rank
    skips that step -- step counts and parameters stay identical across ranks."""
    r0, r1 = scenario(runs, "fsdp2_skip", impl)
    assert r0["steps"] == r1["steps"] == [float(worker.RESUME_AT - 1)] * 4
    assert_equal_params(r0["params"], r1["params"])
    assert all(torch.isfinite(p).all() for p in r0["params"].values())


# ---- low-precision state (issue 14) ------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("impl", LOW_IMPLS)
def test_ddp_replicas_with_low_precision_state_stay_identical(runs, impl: str, precision: str) -> None:
    """Same seeds on every rank: parameters and every stored state tensor equal bit for bit,
    and the run follows the single-process one within the state's precision."""
    r0, r1 = scenario(runs, f"ddp_{precision}", impl)
    assert_equal_params(r0["params"], r1["params"])
    assert_equal_params(r0["state"], r1["state"])
    dtype = {"bf16": torch.bfloat16, "8bit": torch.uint8}[precision]
    assert r0["state"]["0.exp_avg"].dtype == dtype
    model, _ = single_process(impl)
    for name, p in model.named_parameters():  # fp32 state vs low precision: a few % of 6 steps of ~lr
        torch.testing.assert_close(r0["params"][name], p.detach(), rtol=0, atol=0.2 * worker.LR, msg=name)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("impl", LOW_IMPLS)
def test_fsdp2_low_precision_state_is_per_local_shard(runs, impl: str, precision: str) -> None:
    r0, r1 = scenario(runs, f"fsdp2_{precision}", impl)
    assert_equal_params(r0["params"], r1["params"])
    block = worker.LOW_PRECISION[precision].get("block_size")
    for r in (r0, r1):
        for i, numel in enumerate(r["local_numels"]):
            kind, dtype, shape = r["layout"][f"{i}.exp_avg"]
            assert kind == "DTensor" and dtype == ("torch.bfloat16" if precision == "bf16" else "torch.uint8")
            assert math.prod(shape) == numel  # the state's local shard is the parameter's
            if precision == "8bit":  # blocks over the local shard only: they never straddle two ranks
                assert r["layout"][f"{i}.exp_avg_absmax"] == ("Tensor", "torch.float32", (-(-numel // block),))
            assert r["layout"][f"{i}.rounding_seed"] == ("Tensor", "torch.int64", ())
    model, _ = single_process(impl)
    for name, p in model.named_parameters():
        torch.testing.assert_close(r0["params"][name], p.detach(), rtol=0, atol=0.2 * worker.LR, msg=name)


@pytest.mark.parametrize("impl", LOW_IMPLS)
def test_zero_redundancy_with_8bit_state_matches_ddp_and_its_state_loads(runs, impl: str) -> None:
    """ZeroRedundancyOptimizer (each rank steps its own parameters) with 8-bit state: the same
    parameters as the DDP run bit for bit (same gradients, blocks within each tensor), and
    the consolidated state_dict loads into a plain 8-bit Yogi holding the DDP run's codes
    and scales."""
    r0, r1 = scenario(runs, "zero_8bit", impl)
    ddp0, _ = scenario(runs, "ddp_8bit", impl)
    assert_equal_params(r0["params"], ddp0["params"])
    assert_equal_params(r1["params"], ddp0["params"])
    fresh = worker.make_model()
    fresh.load_state_dict(dict(r0["params"]))
    options = dict(rounding_seed=5, **worker.LOW_PRECISION["8bit"], **worker.IMPLS[impl])
    plain = adamlab.Yogi(fresh.parameters(), lr=worker.LR, **options)
    plain.load_state_dict(r0["state_dict"])
    for i, q in enumerate(fresh.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax"):
            assert torch.equal(plain.state[q][key], ddp0["state"][f"{i}.{key}"]), (i, key)
