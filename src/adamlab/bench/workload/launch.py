"""Several processes: the workload under DDP or FSDP2, gloo backend, on the CPU.

:func:`run_distributed` starts ``world_size`` copies of this module (``python -m
adamlab.bench.workload.launch SPEC RANK``), which join one gloo process group through a
file store (no port to pick; traffic on the loopback device) and run
:func:`adamlab.bench.workload.train.train` with the model wrapped as the mode says:

* ``ddp``: ``DistributedDataParallel(model)`` -- every rank holds everything, gradients
  are all-reduced during backward;
* ``fsdp2``: ``fully_shard`` on every block, then on the whole model (the tied embedding
  lives in the root unit) -- parameters, gradients and optimizer state are DTensors
  sharded over the ranks, and each optimizer steps its own shard.

Nothing of adamlab's sits between the model and torch.distributed: the optimizers are
the same objects a single process uses. The cores are split evenly between the ranks
(``OMP_NUM_THREADS``), so a distributed run has the same CPU as a single-process one.
Rank 0 writes the result (every rank's peak RSS and state bytes gathered to it) and
prints one JSON line per evaluation, which the parent turns into progress.

The ranks run in their own session: Ctrl-C at the terminal reaches only the parent,
which stops them and keeps the runs that finished.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import adamlab


def _wrap(mode: str) -> Callable[[Any], Any]:
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        def shard(model: Any) -> Any:
            for block in model.blocks:
                fully_shard(block)
            return fully_shard(model)

        return shard
    raise ValueError(f"unknown distributed mode {mode!r}")


def run_distributed(
    mode: str, spec: dict[str, Any], world: int, threads: int, on_line: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run ``spec`` (see :func:`worker`) on ``world`` ranks; returns rank 0's result.

    Raises ``RuntimeError`` with the ranks' output if a rank fails; on Ctrl-C the ranks
    are stopped and ``KeyboardInterrupt`` propagates.
    """
    src = str(Path(adamlab.__file__).resolve().parent.parent)  # this adamlab, not another installed one
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix=f"adamlab-{mode}-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "mode": mode, "world": world, "dir": tmp}))
        logs = [open(Path(tmp) / f"rank{r}.log", "w+") for r in range(1, world)]
        cmd = [sys.executable, "-m", "adamlab.bench.workload.launch", str(spec_path)]
        procs = [
            subprocess.Popen(
                [*cmd, str(r)],
                env=env,
                start_new_session=True,
                text=True,
                stdout=subprocess.PIPE if r == 0 else logs[r - 1],
                stderr=subprocess.STDOUT,
            )
            for r in range(world)
        ]
        tail: list[str] = []
        try:
            for line in procs[0].stdout:  # type: ignore[union-attr]
                if line.startswith("{"):
                    if on_line:
                        on_line(json.loads(line))
                else:
                    tail = ([*tail, line.rstrip()])[-40:]
            codes = [p.wait() for p in procs]
        except BaseException:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            raise
        finally:
            for f in logs:
                f.flush()
        result_path = Path(tmp) / "result.json"
        if any(codes) or not result_path.exists():
            others = "\n".join(
                f"--- rank {r}\n{(Path(tmp) / f'rank{r}.log').read_text()[-2000:]}" for r in range(1, world)
            )
            raise RuntimeError(f"{mode} ranks exited with {codes}:\n--- rank 0\n" + "\n".join(tail) + "\n" + others)
        return json.loads(result_path.read_text())


def worker(spec_path: str, rank: int) -> None:
    """One rank: train every seed of the spec, then rank 0 writes ``result.json``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    import torch
    import torch.distributed as dist

    from adamlab.bench.workload import corpus as corpus_mod
    from adamlab.bench.workload.model import GPTConfig
    from adamlab.bench.workload.run import optimizer_factories
    from adamlab.bench.workload.train import train

    spec = json.loads(Path(spec_path).read_text())
    world = spec["world"]
    dist.init_process_group(
        "gloo", init_method=f"file://{spec['dir']}/store", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    cfg = spec["config"]
    corpus = corpus_mod.load(cfg["corpus_bytes"], split_seed=cfg["split_seed"])
    model_cfg = GPTConfig(**cfg["model"])
    runs = []
    for seed in spec["seeds"]:

        def on_eval(step: int, current: list[Any], seed: int = seed) -> None:
            if rank == 0:
                print(
                    json.dumps({"seed": seed, "step": step, "val": {r.optimizer: r.val[-1]["loss"] for r in current}}),
                    flush=True,
                )

        done, _ = train(
            model_cfg=model_cfg,
            corpus=corpus,
            optimizers=optimizer_factories(spec["optimizers"], cfg["lrs"]),
            seed=seed,
            steps=cfg["steps"],
            batch_size=cfg["batch_size"],
            eval_every=cfg["eval_every"],
            eval_batches=cfg["eval_batches"],
            rank=rank,
            world=world,
            wrap=_wrap(spec["mode"]),
            on_eval=on_eval,
        )
        runs.extend(r.record() for r in done)
    state = [r["state_bytes"] for r in runs]
    per_rank: list[Any] = [None] * world
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    dist.all_gather_object(per_rank, {"peak_rss_bytes": rss, "state_bytes": state, "threads": torch.get_num_threads()})
    if rank == 0:
        for i, run in enumerate(runs):
            run["state_bytes_per_rank"] = [r["state_bytes"][i] for r in per_rank]
            run["state_bytes"] = sum(run["state_bytes_per_rank"])
        out = {
            "runs": runs,
            "ranks": [{"peak_rss_bytes": r["peak_rss_bytes"], "threads": r["threads"]} for r in per_rank],
        }
        (Path(spec["dir"]) / "result.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1], int(sys.argv[2]))
    # The work is done and written. Leave without the interpreter's teardown: gloo's background
    # threads can abort it ("terminate called without an active exception", SIGABRT), which
    # turned a finished rank into a failed one about once in ten runs here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
