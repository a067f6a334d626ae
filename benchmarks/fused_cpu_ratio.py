"""The fused CPU step against ``torch.optim.Adam(fused=True)``, as time ratios (issue 13).

    python benchmarks/fused_cpu_ratio.py            # every set, Adam and Yogi
    python benchmarks/fused_cpu_ratio.py --quick    # fewer rounds

For each parameter set and rule, ``adamlab.<Rule>(fused=True)`` and the baseline step their
own copies of the same parameters and gradients, interleaved round by round in this process;
the ratio is median(adamlab time) / median(baseline time) per step (below 1: adamlab is
faster). Prints the load average, which matters on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import adamlab
from adamlab.bench.sets import gpt_like

SETS = {
    "GPT-like list (41.6M params, 99 tensors)": gpt_like(32000, 512, 8),
    "2000 tensors of 64x64": [(64, 64)] * 2000,
    "4000 tensors of 4x4": [(4, 4)] * 4000,
    "2-tensor model (1x5, 1)": [(1, 5), (1,)],
}


def _optimizer(make, shapes):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = make(params)
    for _ in range(3):
        opt.step()
    return opt


def _per_step(opt, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        opt.step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="only sets whose label contains this")
    args = parser.parse_args()
    rounds = 5 if args.quick else 11
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    for label, shapes in SETS.items():
        if args.set and not any(part in label for part in args.set):
            continue
        numel = sum(torch.Size(s).numel() for s in shapes)
        n = max(1, min(2000, int(2e7 // (numel * 10 + len(shapes) * 2000 + 20000))))
        for rule in ("Adam", "Yogi"):
            ours = _optimizer(lambda ps, rule=rule: getattr(adamlab, rule)(ps, lr=1e-3, fused=True), shapes)
            base = _optimizer(lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), shapes)
            times = {"ours": [], "base": []}
            for _ in range(rounds):
                times["ours"].append(_per_step(ours, n))
                times["base"].append(_per_step(base, n))
            ratio = statistics.median(times["ours"]) / statistics.median(times["base"])
            print(
                f"{label:42s} {rule}: {ratio:.2f}x  (adamlab {statistics.median(times['ours']) * 1e6:.1f} us, "
                f"torch fused {statistics.median(times['base']) * 1e6:.1f} us per step, {n} steps x {rounds} rounds)",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
