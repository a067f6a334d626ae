"""Where the host time of one fused step goes, for the chapter's 2-tensor model on a GPU.

Times (median of 7 x 2000 calls, synchronized only at the ends) the registered update,
its pieces, and torch's fused Adam for comparison; then prints a cProfile of the update.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time

import torch

import adamlab
from adamlab.optim import triton_fused


def per_call_us(fn, n=2000, repeats=7):
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def main():
    torch.manual_seed(0)
    ps = [torch.randn(5, 1, device="cuda"), torch.randn(1, device="cuda")]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = adamlab.Yogi(ps, lr=1e-3, fused=True)
    opt.step()
    group = opt.param_groups[0]
    tensors = opt._gather(group)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-3, weight_decay=0.0, decoupled_weight_decay=False,
                 amsgrad=False, maximize=False, bias_correction=True, capturable=False)  # fmt: skip
    update = lambda: triton_fused.fused_cuda_update("yogi", *tensors, **hyper)  # noqa: E731
    update()
    plan = triton_fused._plans[id(tensors[5][0])]
    launch = plan.launches[0]
    kernel, constants = next(iter(launch.compiled.values()))
    dummy = launch.counters
    args = (launch.meta, launch.chunks, launch.counters, 1e-3, dummy, dummy, dummy, 0.1, 0.001, 1e-3, 0.0)
    stream = torch._C._cuda_getCurrentRawStream(0)
    lists = (tensors[0], tensors[1], tensors[2], tensors[3], tensors[3], tensors[5])
    torch_opt = torch.optim.Adam([p.clone() for p in ps], lr=1e-3, fused=True)
    for p, q in zip(torch_opt.param_groups[0]["params"], ps):
        p.grad = q.grad.clone()
    rows = {
        "optimizer.step() (adamlab Yogi fused)": opt.step,
        "torch.optim.Adam(fused=True).step()": torch_opt.step,
        "fused_cuda_update(...)": update,
        "_plan_for (pointer check)": lambda: triton_fused._plan_for(lists, False),
        "kernel.run (compiled kernel, direct)": lambda: kernel.run(
            launch.n_chunks, 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None, *args, *constants
        ),
        "Triton JIT launch (kernel[grid](...))": lambda: triton_fused._kernel_module(False).adam_family_kernel[
            (launch.n_chunks,)
        ](*args, **triton_fused._flags(triton_fused._kernel_module(False), launch, next(iter(launch.compiled)))),
        "torch.cuda.current_device()": torch.cuda.current_device,
        "optimizer._gather(group)": lambda: opt._gather(group),
    }
    for name, fn in rows.items():
        print(f"{name:44s} {per_call_us(fn):8.2f} us/call", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(3000):
        update()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
