"""Where the host time of one eager fused step goes, on a GPU machine.

For the chapter's 2-tensor model and for 4000 tensors of 256x256: times (median of 7
windows, synchronized only at the ends) ``optimizer.step()`` and its pieces -- the state
check, the cached gather, the registered update, the table check, the direct launch and
Triton's own JIT launch -- then torch's fused Adam for comparison, and prints a cProfile of
the small step. Host time per call; the GPU runs behind it. Everything runs twice: with the
step's bookkeeping in Python, and with the host accelerator (``adamlab.optim._host``, built
first if it is not cached).
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import statistics
import time

import torch

import adamlab
from adamlab.optim import _host, triton_fused
from adamlab.optim.functional import get_implementation


def per_call_us(fn, n, repeats=7):
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def pieces(shapes, n):
    torch.manual_seed(0)
    ps = [torch.randn(s, device="cuda") for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = adamlab.Yogi(ps, lr=1e-3, fused=True)
    opt.step()
    opt.step()
    group = opt.param_groups[0]
    tensors = opt._gather(group, opt._state_unchanged())
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-3, weight_decay=0.0, decoupled_weight_decay=False,
                 amsgrad=False, maximize=False, bias_correction=True, capturable=False)  # fmt: skip
    update = get_implementation("fused_cuda")
    lists = (tensors[0], tensors[1], tensors[2], tensors[3], tensors[3], tensors[5])
    plan = triton_fused._plan_for(lists)
    launch = plan.launches[0]
    variant, direct = next(iter(launch.direct.items()))
    module = triton_fused._kernel_module(False)
    scalars = (1e-3, None, None, None, 0.1, 0.001, 1e-3, 0.0)
    torch_opt = torch.optim.Adam([p.clone() for p in ps], lr=1e-3, fused=True)
    for p, q in zip(torch_opt.param_groups[0]["params"], ps):
        p.grad = q.grad.clone()
    rows = {
        "optimizer.step() (adamlab Yogi fused)": opt.step,
        "torch.optim.Adam(fused=True).step()": torch_opt.step,
        "  optimizer._state_unchanged()": opt._state_unchanged,
        "  _gather(group), cached, with the state check": lambda: opt._gather(group, opt._state_unchanged()),
        "  fused_cuda_update(...)": lambda: update("yogi", *tensors, **hyper),
        "    _plan_for (table check)": lambda: triton_fused._plan_for(lists),
        "    _launch (direct)": lambda: triton_fused._launch(module, launch, variant, scalars, 0),
        "    Triton JIT launch (kernel[grid](...))": lambda: module.adam_family_kernel[(launch.n_chunks,)](
            *triton_fused._args(launch, scalars), **triton_fused._flags(module, launch, variant)
        ),
    }
    print(f"{len(shapes)} tensors, {sum(p.numel() for p in ps)} parameters; direct launch: {direct is not None}")
    for name, fn in rows.items():
        print(f"{name:46s} {per_call_us(fn, n):10.2f} us/call", flush=True)
    return update, tensors, hyper


def main():
    _host.load(wait=True)
    print(f"host accelerator: {_host.status()}")
    for mode in ("Python bookkeeping", "host accelerator"):
        print(f"== {mode}")
        with _host.python_only() if mode == "Python bookkeeping" else contextlib.nullcontext():
            update, tensors, hyper = pieces([(5, 1), (1,)], n=2000)
            pieces([(256, 256)] * 4000, n=20)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(3000):
        update("yogi", *tensors, **hyper)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
