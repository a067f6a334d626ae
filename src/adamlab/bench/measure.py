"""Measurements: step timing, streaming bandwidth, peak extra memory, first-step cost,
the bytes of an optimizer's state.

Everything takes a device type and synchronizes with it before reading a clock (a no-op
on the CPU; ``torch.cuda.synchronize`` on CUDA), so GPU work plugs in unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from statistics import median
from typing import Any

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device != "cpu" and hasattr(torch, device) and hasattr(getattr(torch, device), "synchronize"):
        getattr(torch, device).synchronize()


def timed(fn: Callable[[], Any], device: str, calls: int = 1) -> float:
    """Seconds per call of ``fn``, over ``calls`` back-to-back calls between two syncs."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def stream_bandwidth(device: str, n_bytes: int, repeats: int) -> dict[str, Any]:
    """This machine's streaming bandwidth with an in-place read-modify-write kernel.

    ``a += b`` over two buffers of ``n_bytes`` each: reads a and b, writes a in place, so
    12 bytes move per float32 element -- write-allocate traffic counted the same way as
    the optimizer's in-place updates of θ, v and s. The median over ``repeats``.
    """
    n = max(1, n_bytes // 4)
    a = torch.ones(n, device=device)
    b = torch.full((n,), 1e-7, device=device)
    a.add_(b)  # touch every page first
    times = [timed(lambda: a.add_(b), device) for _ in range(repeats)]
    t = median(times)
    return {
        "kernel": "a.add_(b) in place, float32",
        "bytes_per_element": 12,
        "elements": n,
        "seconds": t,
        "gb_s": 12 * n / t / 1e9,
    }


def peak_extra_bytes(step: Callable[[], Any], device: str) -> int | None:
    """Peak memory one ``step()`` allocates beyond what was allocated before it.

    CUDA: the caching allocator's peak statistic. CPU: torch's allocations and frees as
    recorded by ``torch.profiler`` (memory a kernel gets from ``malloc`` directly, such as
    a fused kernel's small pointer tables, is not seen).
    """
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    if device != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _leaf_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The plain tensors that hold ``value``'s bytes: a DTensor's local shard, a wrapper
    subclass's inner tensors (torchao's 8-bit state: codes, scales, map), else the tensor."""
    if not isinstance(value, torch.Tensor):
        return
    if hasattr(value, "to_local"):  # DTensor: this process holds its shard only
        yield from _leaf_tensors(value.to_local())
    elif type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
        names, _ = value.__tensor_flatten__()
        for name in names:
            yield from _leaf_tensors(getattr(value, name))
    else:
        yield value


def state_bytes(optimizer: Any) -> int:
    """Bytes of the tensors in ``optimizer.state``, each counted once.

    Every tensor value of every parameter's state (moments, scales, step counts, seeds),
    subclasses unwrapped into the tensors that hold their bytes; a tensor two parameters
    share (bitsandbytes' quantization maps) is counted once. Python numbers are not counted.
    """
    seen: set[tuple[str, int, int]] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            for t in _leaf_tensors(value):
                n = t.numel() * t.element_size()
                key = (str(t.device), t.data_ptr(), n)
                if n and key not in seen:
                    seen.add(key)
                    total += n
    return total


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ side logs each start and stop there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_FIRST_STEP = """
import json, sys, time
t0 = time.perf_counter()
import torch, adamlab
t1 = time.perf_counter()
device = sys.argv[1]
params = [torch.randn(1, 5, device=device, requires_grad=True), torch.zeros(1, device=device, requires_grad=True)]
for p in params:
    p.grad = torch.randn_like(p)
opt = adamlab.Yogi(params, fused=True)
t2 = time.perf_counter()
opt.step()
if device == "cuda":
    torch.cuda.synchronize()
t3 = time.perf_counter()
opt.step()
if device == "cuda":
    torch.cuda.synchronize()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_step_s": t3 - t2, "second_step_s": t4 - t3}))
"""


FIRST_STEP_TIMEOUT_S = 600


def first_fused_step(device: str, *, cold: bool) -> dict[str, Any]:
    """The first ``adamlab.Yogi(fused=True).step()`` in a new Python process.

    ``cold``: with an empty Triton cache (pointed at a new temporary folder), so on CUDA the
    time includes Triton compiling the kernel; adamlab's own CPU kernel is compiled at install
    time, so on CPU cold and warm differ only by the operating system's file cache. Otherwise
    Triton's cache is the user's own, warmed by this run's earlier steps.
    """
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="adamlab-cold-") as tmp:
        if cold:
            env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _FIRST_STEP, device],
                capture_output=True,
                text=True,
                env=env,
                timeout=FIRST_STEP_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return {"cold": cold, "error": f"timed out after {FIRST_STEP_TIMEOUT_S} s"}
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"cold": cold, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(cold=cold, process_wall_s=wall)
    return result
