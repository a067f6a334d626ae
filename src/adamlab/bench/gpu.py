"""``python -m adamlab.bench.gpu``: the optimizer step on a CUDA GPU, against torch.

Times ``optimizer.step()`` for torch's Adam (fused, foreach) and adamlab's Adam and Yogi
(per-parameter loop, foreach, fused Triton kernel), eagerly and replayed from a CUDA graph,
on the parameter sets of issue 6: one 16384x16384 tensor, a GPT-like list (1.31B
parameters in 291 tensors), 4000 tensors of 256x256, and the chapter's 2-tensor model.
All float32. Each row is the median over repeats of the mean step time of back-to-back
steps between two CUDA events, after a warm-up (so compilation stays out).

Bandwidth is counted as Adam/Yogi's minimum traffic, 28 bytes per parameter per step (read
p, g, v, s; write p, v, s), and compared with a device-to-device copy measured in the same
process (bytes read + written). ``--cpu-dry-run`` runs the same code on tiny CPU sets, with
the fused rows on Triton's interpreter, to check the script without a GPU.

Rows named "Python bookkeeping" are kept for comparison with older results; since issue 13
there is one step path, so they time the same optimizer as the rows without the suffix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import adamlab

BYTES_PER_PARAM = 28


@dataclass
class Row:
    set: str
    name: str
    ms: float
    gbps: float
    copy_pct: float
    spread_pct: float  # (max - min) / median over repeats
    extra: dict[str, Any] = field(default_factory=dict)


def gpt_like_shapes(d: int = 2048, layers: int = 24, vocab: int = 50257) -> list[tuple[int, ...]]:
    """A GPT-2-style decoder without position embeddings: 291 tensors, 1.31B parameters."""
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]  # ln1, attention
        shapes += [(d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]  # ln2, MLP
    return [*shapes, (d,), (d,)]


def parameter_sets(dry: bool) -> dict[str, list[tuple[int, ...]]]:
    if dry:
        return {
            "one tensor": [(96, 64)],
            "GPT-like": gpt_like_shapes(d=16, layers=2, vocab=50),
            "many small": [(8, 8)] * 40,
            "2 tiny": [(5, 1), (1,)],
        }
    return {
        "one 16384x16384 tensor (268M)": [(16384, 16384)],
        "GPT-like, 1.31B params, 291 tensors": gpt_like_shapes(),
        "4000 tensors of 256x256 (262M)": [(256, 256)] * 4000,
        "2 tiny tensors (the chapter's model)": [(5, 1), (1,)],
    }


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any], n: int, repeats: int) -> list[float]:
        """Mean seconds per call of n back-to-back calls, once per repeat."""
        out = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(n):
                    fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3 / n)
            else:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                out.append((time.perf_counter() - t0) / n)
        return out


def copy_bandwidth(device: torch.device, dry: bool, timer: Timer) -> float:
    """Bytes read + written per second by a device-to-device copy of 2 GiB (dry: 8 MiB)."""
    n = (8 << 20) // 4 if dry else (2 << 30) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = timer(lambda: dst.copy_(src), n=5, repeats=7)
    return 2 * src.numel() * 4 / statistics.median(times)


def optimizers(device: torch.device) -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    cuda = device.type == "cuda"
    makers: dict[str, Callable[[list[torch.Tensor]], Any]] = {
        "torch Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "torch Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "adamlab Yogi loop (per param)": lambda ps: adamlab.Yogi(ps, lr=1e-3, foreach=False),
        "adamlab Yogi foreach": lambda ps: adamlab.Yogi(ps, lr=1e-3, foreach=True),
        "adamlab Adam fused": lambda ps: adamlab.Adam(ps, lr=1e-3, fused=True),
        "adamlab Yogi fused": lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True),
    }
    makers["adamlab Yogi fused, update() only"] = lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True)
    makers["torch Adam fused, fresh grads"] = lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)
    makers["adamlab Yogi fused, fresh grads"] = lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True)
    makers["adamlab Yogi fused, Python bookkeeping"] = lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True)
    if cuda:
        makers["torch Adam fused, CUDA graph"] = lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True, capturable=True)
        makers["adamlab Yogi fused, CUDA graph"] = lambda ps: adamlab.Yogi(ps, lr=1e-3, fused=True, capturable=True)
    return makers


def graphed(opt: Any) -> Callable[[], None]:
    """Capture one step (after warming up on a side stream) and return its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return graph.replay


def update_only(opt: Any) -> Callable[[], None]:
    """The registered fused update called directly on pre-gathered lists: the step without
    ``optimizer.step()``'s own host work (gathering tensors and state, hooks)."""
    from adamlab.optim.functional import choose, get_implementation

    opt.step()  # create the state
    group = opt.param_groups[0]
    tensors, _, _, flat = opt._gather(group, 0)
    name = choose(group["fused"], group["foreach"], tensors[0][0].device)
    update = get_implementation(name)
    hyper = dict(
        lr=group["lr"],
        beta1=group["betas"][0],
        beta2=group["betas"][1],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        bias_correction=group["bias_correction"],
        capturable=group["capturable"],
    )
    if flat is not None and name.startswith("fused"):  # the state is laid out flat: as step() passes it
        hyper["flat_state"] = flat
    return lambda: update(opt._rule, *tensors, **hyper)


def fresh_gradients(opt: Any, params: list[torch.Tensor]) -> Callable[[], None]:
    """``opt.step()`` after giving every parameter a new gradient tensor, as
    ``zero_grad(set_to_none=True)`` and a backward pass do: two gradient sets, alternating,
    so every step sees new tensor objects at new addresses. The row includes the Python
    loop that assigns them (the same for every optimizer)."""
    sets = [[p.grad for p in params], [p.grad.clone() for p in params]]
    turn = [0]

    def step() -> None:
        turn[0] ^= 1
        for p, g in zip(params, sets[turn[0]]):
            p.grad = g
        opt.step()

    return step


def bench_set(name, shapes, device, makers, timer, copy_bps, dry) -> list[Row]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=gen) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-2
    n_params = sum(p.numel() for p in params)
    big = n_params > 50_000_000
    # Big sets: 10 back-to-back steps per window, so the host work before the first launch
    # of a window (not hidden behind earlier GPU work) weighs a tenth of a step.
    n, repeats, warmup = (3, 3, 2) if dry else (10, 5, 3) if big else (100, 7, 10)
    rows = []
    for opt_name, make in makers.items():
        slow = "loop" in opt_name and (big or len(shapes) > 1000)
        opt = step = None
        try:
            with contextlib.nullcontext():
                opt = make(params)
                step = graphed(opt) if "CUDA graph" in opt_name else opt.step
                if "update() only" in opt_name:
                    step = update_only(opt)
                if "fresh grads" in opt_name:
                    step = fresh_gradients(opt, params)
                for _ in range(warmup):
                    step()
                times = timer(step, n=1 if slow else n, repeats=repeats)
        except Exception as error:  # one failing row (out of memory, say) does not end the run
            print(f"  {opt_name:40s} FAILED: {type(error).__name__}: {str(error)[:300]}", flush=True)
            del opt, step
            continue
        ms = statistics.median(times) * 1e3
        gbps = BYTES_PER_PARAM * n_params / (ms / 1e3) / 1e9
        spread = (max(times) - min(times)) / statistics.median(times) * 100
        rows.append(Row(name, opt_name, ms, gbps, 100 * gbps * 1e9 / copy_bps, spread))
        print(f"  {opt_name:40s} {ms:10.4f} ms  {gbps:8.1f} GB/s  {rows[-1].copy_pct:5.1f}% of copy", flush=True)
        del opt, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def sweep(device, timer, copy_bps, dry) -> list[Row]:
    """adamlab's fused Yogi under other (BLOCK, num_warps): evidence for the fixed default."""
    from adamlab.optim import triton_fused

    default = (triton_fused.BLOCK, triton_fused.NUM_WARPS)
    sets = parameter_sets(dry)
    rows = []
    try:
        for set_name in list(sets)[:3:2]:  # the single tensor and the many small ones
            gen = torch.Generator(device=device).manual_seed(1)
            params = [torch.randn(s, device=device, generator=gen) for s in sets[set_name]]
            for p in params:
                p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-2
            n_params = sum(p.numel() for p in params)
            for block, warps in [(1024, 4), (1024, 8), (2048, 8), (512, 4)]:
                triton_fused.BLOCK, triton_fused.NUM_WARPS = block, warps
                opt = adamlab.Yogi(params, lr=1e-3, fused=True)
                for _ in range(2):
                    opt.step()
                times = timer(opt.step, n=3, repeats=5)
                ms = statistics.median(times) * 1e3
                gbps = BYTES_PER_PARAM * n_params / (ms / 1e3) / 1e9
                spread = (max(times) - min(times)) / statistics.median(times) * 100
                rows.append(
                    Row(
                        set_name,
                        f"adamlab Yogi fused BLOCK={block} warps={warps}",
                        ms,
                        gbps,
                        100 * gbps * 1e9 / copy_bps,
                        spread,
                    )
                )
                print(f"  {rows[-1].name:44s} {ms:9.4f} ms  {rows[-1].copy_pct:5.1f}% of copy", flush=True)
                del opt
            del params
    finally:
        triton_fused.BLOCK, triton_fused.NUM_WARPS = default
    return rows


FIRST_CALL = """
import time, torch, adamlab
torch.manual_seed(0)
model = torch.nn.Linear(5, 1).to("{device}")
x, y = torch.randn(64, 5, device="{device}"), torch.randn(64, 1, device="{device}")
torch.nn.functional.mse_loss(model(x), y).backward()
opt = adamlab.{rule}(model.parameters(), fused=True)
{sync}
t0 = time.perf_counter()
opt.step()
{sync}
print(time.perf_counter() - t0)
"""


def first_call(device: torch.device, dry: bool) -> dict[str, float]:
    """Seconds for the first fused step in a new process: Triton's cache empty, then warm."""
    sync = "torch.cuda.synchronize()" if device.type == "cuda" else ""
    prelude = ""
    if dry:  # route fused=True on CPU to the interpreted kernel, as the dry run does
        prelude = (
            "from adamlab.optim import fused_cpu, triton_fused\n"
            "fused_cpu.load = lambda: None\n"
            "fused_cpu.fused_cpu_update = triton_fused.interpreted_update\n"
        )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        for label in ("cold cache", "warm cache"):
            code = prelude + FIRST_CALL.format(device=device.type, rule="Yogi", sync=sync)
            result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stderr[-2000:])
                out[label] = float("nan")
            else:
                out[label] = float(result.stdout.strip().splitlines()[-1])
    return out


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host load average (1, 5, 15 min)": os.getloadavg(),
        "host cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["card"] = torch.cuda.get_device_name(device)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        except OSError:
            info["driver"] = None
    else:
        info["card"] = f"CPU ({platform.processor() or platform.machine()}), dry run"
    return info


def table(rows: list[Row], copy_bps: float, info: dict[str, Any], first: dict[str, float]) -> str:
    lines = [
        f"{info['card']} | driver {info.get('driver')} | torch {info['torch']} | triton {info['triton']}"
        f" | {info['date']}",
        f"copy bandwidth (read + write): {copy_bps / 1e12:.3f} TB/s; fp32, {BYTES_PER_PARAM} B/param/step",
        f"host: {info['host cpus']} CPUs, load average {info['host load average (1, 5, 15 min)']} at the start",
        "",
        f"| {'parameter set':38s} | {'optimizer':40s} | {'ms/step':>10s} | {'% copy':>6s} |",
        f"|{'-' * 40}|{'-' * 42}|{'-' * 12}|{'-' * 8}|",
    ]
    for r in rows:
        ms = f"{r.ms * 1e3:.1f} us" if r.ms < 1 else f"{r.ms:.3f}"
        lines.append(f"| {r.set:38s} | {r.name:40s} | {ms:>10s} | {r.copy_pct:6.1f} |")
    lines.append("")
    if first:
        lines.append("first fused step in a new process: " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny CPU sets, fused rows on the interpreter")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="only sets whose name contains this (repeatable)")
    parser.add_argument("--no-first-call", action="store_true", help="skip timing the first step in a new process")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    if dry:
        from adamlab.optim import fused_cpu, triton_fused

        fused_cpu.load = lambda: None  # route fused=True on CPU to the interpreted kernel
        fused_cpu.fused_cpu_update = triton_fused.interpreted_update
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU (use --cpu-dry-run to check the script on a CPU)")
        device = torch.device("cuda")
    timer = Timer(device)
    info = machine(device)
    copy_bps = copy_bandwidth(device, dry, timer)
    print(f"copy bandwidth: {copy_bps / 1e12:.3f} TB/s", flush=True)
    rows: list[Row] = []
    for name, shapes in parameter_sets(dry).items():
        if args.set and not any(s in name for s in args.set):
            continue
        print(name, flush=True)
        rows += bench_set(name, shapes, device, optimizers(device), timer, copy_bps, dry)
    sweep_rows = [] if args.no_sweep else sweep(device, timer, copy_bps, dry)
    first = {} if args.no_first_call else first_call(device, dry)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "copy_bytes_per_s": copy_bps,
                    "rows": [asdict(r) for r in rows],
                    "sweep": [asdict(r) for r in sweep_rows],
                    "first_call_s": first,
                },
                f,
                indent=1,
            )
    print()
    print(table(rows, copy_bps, info, first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
