"""One workload run, top to bottom: check, read the corpus, train, measure, compare.

1. Resolve the optimizers (the names of :data:`adamlab.bench.candidates.CANDIDATES`) and
   refuse what cannot run here (:func:`adamlab.bench.workload.config.check`).
2. Single process: for every seed, every optimizer trains its copy of the model in lock
   step (:func:`adamlab.bench.workload.train.train`).
3. Peak RSS per optimizer, each in a process of its own (:mod:`.memory`).
4. DDP and FSDP2 on ``world_size`` gloo processes (:mod:`.launch`), same seeds (the
   first ``dist_seeds``), same data.
5. Summaries, and the checks: every run's validation loss fell by ``min_loss_drop``; every
   distributed run's validation curve is within ``loss_tolerance`` of the single-process
   run with the same optimizer and seed.

Ctrl-C stops the run where it is; what was measured is returned with ``partial: true``.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

from adamlab.bench.workload.config import WorkloadConfig, check, cores, rule_of

SCHEMA = 1
Progress = Callable[[str, int, int], None]  # (message, training steps done, steps in all)


def optimizer_factories(names: list[str], lrs: dict[str, float]) -> list[tuple[str, float, Callable[[Any], Any]]]:
    """``(name, lr, make)`` for each optimizer name (exact names of the step benchmark)."""
    from adamlab.bench.candidates import CANDIDATES

    by_name = {c.name: c for c in CANDIDATES}
    return [(name, lrs[rule_of(name)], by_name[name].make) for name in names]


def resolve(patterns: tuple[str, ...] | None, device: str) -> tuple[list[str], list[dict[str, str]]]:
    """The optimizers to run (ValueError for a pattern that matches none) and those skipped here."""
    from adamlab.bench.candidates import BASELINE, CANDIDATES, select

    chosen = select(patterns)
    if patterns and not any(p.lower() in BASELINE.lower() for p in patterns):
        chosen = [c for c in chosen if c.name != BASELINE]  # the workload needs no baseline ratio
    for p in patterns or ():
        if not any(p.lower() in c.name.lower() for c in CANDIDATES):
            raise ValueError(f"unknown optimizer {p!r} (have {[c.name for c in CANDIDATES]})")
    ready, skipped = [], []
    for c in chosen:
        reason = c.unavailable(device)
        (skipped.append({"optimizer": c.name, "reason": reason}) if reason else ready.append(c.name))
    return ready, skipped


def _one_line(e: BaseException) -> str:
    """A failed launch in one line: its first line and the last exception line the ranks printed."""
    import re

    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    raised = [x for x in lines[1:] if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", x)]
    return lines[0].rstrip(":") + (f": {raised[-1]}" if raised else "")


def _machine() -> dict[str, Any]:
    import os

    from adamlab.bench.core import machine

    info = machine("cpu")
    info["cores"] = cores()
    info["load_average_start"] = list(os.getloadavg())
    return info


def run(cfg: WorkloadConfig, progress: Progress | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Run the workload; returns the JSON-ready result (``partial`` if stopped by Ctrl-C).

    ``names``: the optimizers, already resolved with :func:`resolve` (the CLI resolves and
    checks before writing anything); by default resolved here from ``cfg.optimizers``.
    """
    import os

    import torch

    from adamlab.bench.workload import corpus as corpus_mod
    from adamlab.bench.workload.launch import run_distributed
    from adamlab.bench.workload.memory import peak_rss
    from adamlab.bench.workload.report import summarize
    from adamlab.bench.workload.train import train

    skipped: list[dict[str, str]] = []
    if names is None:
        names, skipped = resolve(cfg.optimizers, cfg.device)
    estimate = check(cfg, names)
    n_dist = len([m for m in cfg.modes if m != "single"])
    total = cfg.steps * (len(cfg.seeds) * ("single" in cfg.modes) + len(cfg.dist_seeds) * n_dist)
    finished = 0  # training steps of the phases already done

    def say(message: str, step: int = 0) -> None:
        if progress:
            progress(message, finished + step, total)

    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "workload": "gpt",
        "config": cfg.to_dict(),
        "machine": _machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model_params": cfg.model.n_params(),
        "tokens_per_step": cfg.batch_size * cfg.model.block,
        "memory_estimate_bytes": estimate,
        "optimizers": names,
        "skipped": skipped,
        "runs": {mode: [] for mode in cfg.modes},
        "peak_rss": {},
        "distributed": {},
        "partial": False,
    }
    corpus = corpus_mod.load(cfg.corpus_bytes, split_seed=cfg.split_seed)
    result["corpus"] = corpus.info
    factories = optimizer_factories(names, cfg.lrs)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if "single" in cfg.modes:
            for seed in cfg.seeds:

                def on_eval(step: int, runs: list[Any], seed: int = seed) -> None:
                    best = min(runs, key=lambda run_: run_.val[-1]["loss"])
                    say(
                        f"single seed {seed}: step {step}/{cfg.steps}, best val loss {best.val[-1]['loss']:.3f} "
                        f"({best.optimizer})",
                        step,
                    )

                runs, complete = train(
                    model_cfg=cfg.model,
                    corpus=corpus,
                    optimizers=factories,
                    seed=seed,
                    steps=cfg.steps,
                    batch_size=cfg.batch_size,
                    eval_every=cfg.eval_every,
                    eval_batches=cfg.eval_batches,
                    device=cfg.device,
                    on_eval=on_eval,
                )
                result["runs"]["single"].extend(r.record() for r in runs)
                if not complete:
                    raise KeyboardInterrupt
                finished += cfg.steps
            result["machine"]["torch_threads_single"] = torch.get_num_threads()
            if cfg.rss_probe_steps and cfg.device == "cpu":
                say(f"peak RSS: {len(names)} probes of {cfg.rss_probe_steps} steps, one process each")
                result["peak_rss"] = peak_rss(cfg.to_dict(), names)
        spec = {"config": cfg.to_dict(), "optimizers": names, "seeds": list(cfg.dist_seeds)}
        for mode in [m for m in cfg.modes if m != "single"]:
            say(f"{mode}: {cfg.world_size} processes (gloo), seeds {list(cfg.dist_seeds)}")

            def on_line(event: dict[str, Any], mode: str = mode) -> None:
                best = min(event["val"].values())
                index = list(cfg.dist_seeds).index(event["seed"])
                say(
                    f"{mode} seed {event['seed']}: step {event['step']}/{cfg.steps}, best val loss {best:.3f}",
                    index * cfg.steps + event["step"],
                )

            threads = max(1, cores() // cfg.world_size)
            try:
                out = run_distributed(mode, spec, cfg.world_size, threads, on_line)
            except (RuntimeError, OSError) as e:  # a rank failed: keep the rest, record it
                result["distributed"][mode] = {
                    "world_size": cfg.world_size,
                    "threads_per_rank": threads,
                    "error": str(e),
                    "error_line": _one_line(e),
                }
                finished += cfg.steps * len(cfg.dist_seeds)
                continue
            result["runs"][mode] = out["runs"]
            result["distributed"][mode] = {
                "world_size": cfg.world_size,
                "threads_per_rank": threads,
                "ranks": out["ranks"],
            }
            finished += cfg.steps * len(cfg.dist_seeds)
    except KeyboardInterrupt:
        result["partial"] = True
        say("interrupted: keeping what was measured")
    finally:
        torch.set_num_threads(threads_before)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["seconds"] = time.perf_counter() - started
    result.update(summarize(result, cfg))
    return result
