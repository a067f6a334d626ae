"""Host time of the eager fused CUDA step, measured on a machine without a GPU.

``optimizer.step()`` of ``adamlab.Yogi(fused=True)`` runs its real Python path -- the
cached gather, the dispatcher, the table checks of ``adamlab.optim.triton_fused`` -- on CPU
tensors that pretend to be CUDA tensors, with the kernel launch replaced by a no-op. What is
left is the host work per step that a GPU would wait on when the step is host-bound (many
small tensors, tiny models). Not a GPU measurement: the launch itself (about 4 µs for
Triton's C launcher on the H200 machine) is not included.

    python benchmarks/gpu/host_time_cpu.py        # median of 9 windows, microseconds per step

Both bookkeeping paths are timed in the same process, interleaved: Python (what a step does
before the host accelerator is built) and the host accelerator (``adamlab.optim._host``,
built here first if it is not cached).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

import adamlab
from adamlab.optim import _host, triton_fused


def pretend_cuda() -> None:
    """Route fused=True to the fused CUDA path on CPU tensors, launching nothing."""
    triton_fused._launch = lambda *args: None
    torch._C._cuda_getDevice = lambda: -1  # CPU tensors report device -1
    torch.Tensor.is_cuda = property(lambda self: True)
    triton_fused._kernel_module(True)
    triton_fused._modules[False] = triton_fused._modules[True]


def host_us(shapes: list[tuple[int, ...]], n: int, windows: int = 9) -> float:
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = adamlab.Yogi(params, lr=1e-3, fused=True)
    opt.step()
    opt.step()
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(n):
            opt.step()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times) * 1e6


def main() -> None:
    pretend_cuda()
    if _host.load(wait=True) is None:
        raise SystemExit(f"the host accelerator is not available: {_host.status()}")
    for name, shapes, n in [("2 tiny tensors", [(5, 1), (1,)], 20000), ("4000 tensors", [(4, 4)] * 4000, 40)]:
        results: dict[str, list[float]] = {"python": [], "host accelerator": []}
        for _ in range(3):  # interleaved rounds
            for mode in results:
                with _host.python_only() if mode == "python" else contextlib.nullcontext():
                    results[mode].append(host_us(shapes, n))
        for mode, values in results.items():
            print(f"{name}, {mode}: {statistics.median(values):.1f} us of host work per eager step "
                  f"(launch not included; rounds {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
