"""Host time of the eager fused CUDA step, measured on a machine without a GPU.

``optimizer.step()`` of ``adamlab.Yogi(fused=True)`` runs its real Python path -- the
gather, the dispatcher, the checks and the table of ``adamlab.optim.triton_fused`` -- on CPU
tensors that pretend to be CUDA tensors, with the kernel launch replaced by a no-op. What is
left is the host work per step that a GPU would wait on when the step is host-bound (many
small tensors, tiny models). Not a GPU measurement: the launch itself (Triton's
``kernel[grid](...)``) and the table's host-to-device copy are not included.

    python benchmarks/gpu/host_time_cpu.py        # median of 9 windows, microseconds per step

Baselines, interleaved in the same process: ``torch.optim.Adam(foreach=True)`` on the same CPU
tensors (its whole step, computation included: an upper bound on its host work), and the
floor of any ``torch.optim.Optimizer`` (torch's step wrapper around a step that does nothing),
which adamlab's step pays too.
"""

from __future__ import annotations

import statistics
import time
import types

import torch

import adamlab
from adamlab.optim import optimizer, triton_fused


class _NoLaunch:
    """Stands in for the Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def pretend_cuda() -> None:
    """Route fused=True to the fused CUDA path on CPU tensors, launching nothing."""
    real = triton_fused.kernel_module(interpret=False)
    triton_fused._modules[False] = types.SimpleNamespace(adam_family_kernel=_NoLaunch(), tl=real.tl)
    torch.Tensor.is_cuda = property(lambda self: True)
    optimizer.choose = lambda fused, foreach, device, *_, **__: "fused_cuda" if fused else "foreach"


def host_us(make, shapes: list[tuple[int, ...]], n: int, windows: int = 9) -> float:
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = make(params)
    opt.step()
    opt.step()
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(n):
            opt.step()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times) * 1e6


class _NothingOptimizer(torch.optim.Optimizer):
    """The floor every ``torch.optim.Optimizer`` pays: torch's step wrapper (profiler record,
    step hooks) around a step that does nothing."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def main() -> None:
    import os

    print(f"torch {torch.__version__}, load average {os.getloadavg()}")
    pretend_cuda()
    makers = {
        "adamlab.Yogi(fused=True), launch stubbed": lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True),
        "torch.optim.Adam(foreach=True), whole CPU step": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "floor: torch.optim.Optimizer whose step does nothing": _NothingOptimizer,
    }
    for name, shapes, n in [("2 tiny tensors", [(5, 1), (1,)], 5000), ("4000 tensors", [(4, 4)] * 4000, 20)]:
        results: dict[str, list[float]] = {label: [] for label in makers}
        for _ in range(3):  # interleaved rounds
            for label, make in makers.items():
                results[label].append(host_us(make, shapes, n))
        for label, values in results.items():
            print(f"{name}, {label}: {statistics.median(values):.1f} us per step "
                  f"(rounds {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
