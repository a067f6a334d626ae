"""Review findings on the sweep: a SIGKILLed sweep frees --out and leaves no workers; a dead
worker keeps the runs that finished; the best lr is a stable one; batch sizes are checked
against the data before --out is touched.

Every child runs in its own process group, killed whole at the end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
from click.testing import CliRunner

from adamlab.lab import sweep as sweep_module
from adamlab.lab.cli import cli
from adamlab.lab.results import Outputs
from adamlab.lab.sweep import SweepConfig, SweepResult

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for a process's children")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_sweep(out: Path, *extra: str) -> subprocess.Popen:
    args = ["sweep", "--points", "13", "--seeds", "2", "--jobs", "2", "--quiet", "--out", str(out), *extra]
    code = f"from adamlab.lab.cli import main\nmain({args!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_workers(proc: subprocess.Popen, count: int = 2) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) >= count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"the sweep never started {count} workers (rc {proc.poll()})")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@LINUX
def test_a_sigkilled_sweep_leaves_no_workers_and_frees_its_folder(tmp_path):
    out = tmp_path / "K"
    proc = _start_sweep(out)
    try:
        _wait_for_workers(proc)
        proc.kill()  # SIGKILL the main process only, as the OOM killer or kill -9 would
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(proc.pid), "the workers outlived their killed parent"
        with Outputs(out, {"results": "x.json"}):  # the lock is free: no refusal naming a dead pid
            pass
    finally:
        _kill_group(proc)


@LINUX
def test_a_killed_worker_keeps_what_finished_or_says_one_line(tmp_path):
    out = tmp_path / "W"
    proc = _start_sweep(out)
    try:
        workers = _wait_for_workers(proc)
        time.sleep(1.0)  # let some runs finish (either outcome below is checked)
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        _kill_group(proc)
    assert "Traceback" not in err, err[-3000:]
    assert err.count("\n") == 1, err[-3000:]
    if proc.returncode == 1:  # nothing had finished
        assert "worker process died" in err and not (out / "sweep.json").exists()
    else:
        assert proc.returncode == 130, (proc.returncode, err)
        doc = json.loads((out / "sweep.json").read_text())
        assert doc["status"] == "partial" and doc["results"]["runs"]
        assert any("worker process died" in line for line in doc["conclusions"])


def test_a_broken_pool_after_some_runs_gives_a_partial_result(monkeypatch):
    def two_then_die(tasks, config, jobs, on_result):
        for index in range(2):
            on_result(index, sweep_module._train(tasks[index], config.epochs, config.data))
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(sweep_module, "_run_tasks", two_then_die)
    config = SweepConfig(optimizers=("adam",), batch_optimizers=("adam",), points=2, seeds=1, batch_sizes=(100,),
                         batch_size=100)  # fmt: skip
    result = sweep_module.sweep(config, jobs=2)
    assert result.status == "partial" and len(result.runs) == 2
    assert "worker process died" in result.conclusions()[0]


def test_a_broken_pool_before_any_run_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    def die(*args, **kwargs):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(sweep_module, "_run_tasks", die)
    out = tmp_path / "s"
    result = CliRunner().invoke(
        cli, ["sweep", "--points", "2", "--seeds", "1", "--optimizer", "adam", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("adamlab: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "worker process died" in result.stderr and not (out / "sweep.json").exists()


def _result(runs: list[dict]) -> SweepResult:
    config = SweepConfig(optimizers=("adam",), batch_optimizers=("adam",), points=2, seeds=2, batch_sizes=())
    return SweepResult(config, runs, 0.04, {"source": "test"}, 1)


def test_the_best_lr_is_one_where_no_seed_diverged():
    low, high = SweepConfig(points=2).lrs()
    run = {"optimizer": "adam", "batch_size": 10}
    runs = [
        run | {"lr": low, "status": "ok", "final_loss": 0.10},
        run | {"lr": low, "status": "ok", "final_loss": 0.10},
        run | {"lr": high, "status": "ok", "final_loss": 0.05},  # better, but the other seed diverged
        run | {"lr": high, "status": "diverged", "final_loss": math.inf},
    ]
    ranges = _result(runs).ranges("adam", 10)
    assert ranges["stable"] == [low, low]
    assert ranges["best_lr"] == low and ranges["best_loss"] == pytest.approx(0.10)


def test_no_best_lr_when_no_point_is_stable():
    low, high = SweepConfig(points=2).lrs()
    run = {"optimizer": "adam", "batch_size": 10}
    runs = [
        run | {"lr": lr, "status": status, "final_loss": loss}
        for lr in (low, high)
        for status, loss in (("ok", 0.1), ("diverged", math.inf))
    ]
    result = _result(runs)
    assert result.ranges("adam", 10)["best_lr"] is None
    assert "diverged at every learning rate" in result.conclusions()[0]
    assert result.table().splitlines()[1].rstrip().endswith("-")


def test_batch_sizes_larger_than_the_data_are_refused_before_out_is_touched(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the batch sizes were checked")

    monkeypatch.setattr(sweep_module, "_train", refuse)
    out = tmp_path / "s1"
    args = ["sweep", "--batch-sizes", "50,100000", "--points", "2", "--seeds", "1", "--optimizer", "adam"]
    result = CliRunner().invoke(cli, [*args, "--jobs", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("adamlab: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "100000" in result.stderr and "rows" in result.stderr
    assert not out.exists()


def test_the_python_sweep_checks_batch_sizes_before_training(monkeypatch):
    monkeypatch.setattr(sweep_module, "_train", lambda *a, **k: pytest.fail("trained"))
    config = SweepConfig(optimizers=("adam",), batch_optimizers=("adam",), points=2, seeds=1, batch_size=100000)
    with pytest.raises(sweep_module.LabInputError, match="100000"):
        sweep_module.sweep(config, jobs=1)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.skipif(os.name != "posix", reason="flock and fork are POSIX")
def test_pool_workers_do_not_hold_the_lock_on_out(tmp_path):
    from adamlab.lab import pool

    with Outputs(tmp_path / "o", {"results": "x.json"}) as outputs:
        fd = outputs._lock_fd
        assert fd is not None and _is_open(fd)
        assert list(pool.ordered_map(_is_open, [fd] * 4, jobs=2)) == [False] * 4
        assert _is_open(fd)  # the parent keeps its lock


@LINUX
def test_a_worker_whose_parent_died_before_it_started_ends_at_once():
    # The pool owner's pid is read before the fork: a worker that starts after its parent was
    # killed (its ppid is then the reaper) must end, not wait for tasks forever.
    code = (
        "import os, subprocess, sys\n"
        "from adamlab.lab.pool import _start_worker\n"
        "gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()\n"
        "_start_worker(None, gone.pid)\n"
        "print('still running')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "still running" not in proc.stdout, (proc.returncode, proc.stdout)
    assert not proc.stderr, proc.stderr
