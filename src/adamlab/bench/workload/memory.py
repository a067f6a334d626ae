"""Peak RSS per optimizer: each measured in a process of its own.

In the lock-step loop every optimizer's model lives in one process, so that process's
peak resident set says nothing about any one of them. Each optimizer therefore also runs
a few steps (state allocated, activations at their peak) in a fresh child forked from a
``forkserver`` that has imported torch and nothing else, and reports its peak RSS
(``VmHWM``) and the RSS it started from. The start is taken after the model is built and
one forward+backward has run without an optimizer, with the high-water mark then reset
(``echo 5 > /proc/self/clear_refs``). A throwaway ``torch.optim.SGD`` step runs first too:
the first step of any torch optimizer imports ``torch._dynamo`` (some 150 MB of RSS here).
Torch's one-time costs are thus in the start, and the difference is what this optimizer
adds: its own import, its state and its step's temporaries.
"""

from __future__ import annotations

import multiprocessing
from typing import Any


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _probe(conn: Any, cfg: dict[str, Any], name: str) -> None:
    try:
        import torch

        from adamlab.bench.workload import corpus as corpus_mod
        from adamlab.bench.workload.model import GPT, GPTConfig
        from adamlab.bench.workload.run import optimizer_factories

        torch.set_num_threads(1)
        corpus = corpus_mod.load(cfg["corpus_bytes"], split_seed=cfg["split_seed"])
        model_cfg = GPTConfig(**cfg["model"])
        torch.manual_seed(0)
        model = GPT(model_cfg)
        model(*corpus_mod.train_batch(corpus, 0, 0, cfg["batch_size"], model_cfg.block)).backward()
        model.zero_grad(set_to_none=True)
        torch.optim.SGD([torch.zeros(1, requires_grad=True)]).step()  # torch.optim's first-use imports
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS (Linux >= 4.0)
            f.write("5")
        baseline = _status_bytes("VmRSS")
        [(_, _lr, make)] = optimizer_factories([name], cfg["lrs"])
        opt = make(model.parameters())
        for step in range(cfg["rss_probe_steps"]):
            opt.zero_grad(set_to_none=True)
            model(*corpus_mod.train_batch(corpus, step, 0, cfg["batch_size"], model_cfg.block)).backward()
            opt.step()
        conn.send({"peak_rss_bytes": _status_bytes("VmHWM"), "baseline_rss_bytes": baseline})
    except Exception as exc:  # reported, not raised: a probe that fails costs one number
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def peak_rss(cfg: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """``{optimizer: {"peak_rss_bytes", "baseline_rss_bytes"}}`` (or ``{"error"}``), one child each."""
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch"])
    except ValueError:  # no forkserver on this platform
        return {name: {"error": "no forkserver on this platform"} for name in names}
    out = {}
    for name in names:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_probe, args=(child, cfg, name), daemon=True)
        proc.start()
        child.close()
        try:
            out[name] = parent.recv() if parent.poll(600) else {"error": "timed out"}
        except EOFError:
            out[name] = {"error": f"the probe exited with code {proc.exitcode}"}
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return out
