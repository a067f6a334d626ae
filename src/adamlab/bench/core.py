"""The benchmark: time ``optimizer.step()`` for every candidate on every parameter set.

One process. Per parameter set, every candidate steps the *same* parameters and
gradients (each with its own optimizer state), interleaved round by round in a rotating
order so that drift in the machine's speed falls on all of them alike; the first
``warmup`` rounds are dropped and the median of the rest is reported. A sample times a
batch of back-to-back steps long enough to read a clock well (many steps for a 2-tensor
model, one for a 40M-parameter list).

Reported per set and candidate: ms/step; effective GB/s at ``7 x element size`` bytes
per parameter (read θ, g, v, s; write θ, v, s: 28 B for float32 -- the fp32 traffic, also
for rows whose state is smaller, so that GB/s stays a speed relative to fp32); that as a
share of this machine's streaming bandwidth, measured in the same run with an in-place
read-modify-write kernel; the ratio to ``torch.optim.Adam(fused=True)``; the peak
memory a step allocates beyond what it started with; the state's bytes per parameter
(:func:`adamlab.bench.measure.state_bytes`); and the first step's time (it creates the
state, and for torchao compiles its kernel). Each row carries its spread (min to
max of its rounds); a row whose spread, or the baseline's, is larger than its difference
from the baseline is flagged ``within_noise``: the run did not measure a difference.
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import platform
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

import torch

from adamlab.bench.candidates import BASELINE, Candidate, select, torch_default
from adamlab.bench.measure import first_fused_step, peak_extra_bytes, state_bytes, stream_bandwidth, timed
from adamlab.bench.sets import ParamSet, param_sets

SCHEMA = 1


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    sets: tuple[str, ...] | None = None  # names from adamlab.bench.sets; None: all of the device's
    candidates: tuple[str, ...] | None = None  # name substrings; None: all (the baseline always runs)
    warmup: int = 3  # rounds dropped before the medians
    repeats: int = 10  # rounds measured
    min_sample_s: float = 0.02  # a sample batches steps until it lasts about this long
    bandwidth_mib: int = 512  # size of each of the two buffers of the bandwidth kernel
    dtype: str = "float32"
    seed: int = 0
    smoke: bool = False  # tiny sets, few rounds: seconds, for CI
    first_step: bool = True  # time the first fused step in a new process (warm caches)
    cold_start: bool = False  # ... and with empty kernel caches

    def effective(self) -> BenchConfig:
        if not self.smoke:
            return self
        return BenchConfig(**{**asdict(self), "warmup": 1, "repeats": 3, "min_sample_s": 0.001, "bandwidth_mib": 16})


def machine(device: str) -> dict[str, Any]:
    """Where the numbers come from: CPU model, cores, device name, versions."""
    from adamlab.lab.results import versions

    info: dict[str, Any] = {"versions": versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    info["cpu"] = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["cpu_count"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    if device == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    return info


def _make_params(pset: ParamSet, device: str, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in pset.shapes:
        p = torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen, dtype=dtype).to(device) * 1e-2
        params.append(p)
    return params


def _time_set(
    pset: ParamSet, candidates: list[Candidate], cfg: BenchConfig, dtype: torch.dtype
) -> list[dict[str, Any]]:
    device = cfg.device
    params = _make_params(pset, device, dtype, cfg.seed)
    optimizers = {c.name: c.make(params) for c in candidates}
    steps = {name: opt.step for name, opt in optimizers.items()}
    # first step: creates the state (timed on its own); then size each candidate's sample
    calls, first_ms = {}, {}
    for name, step in steps.items():
        first_ms[name] = timed(step, device) * 1e3
        calls[name] = max(1, min(1000, math.ceil(cfg.min_sample_s / max(timed(step, device), 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(cfg.warmup + cfg.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order each round
            t = timed(steps[name], device, calls[name])
            if r >= cfg.warmup:
                samples[name].append(t)
    n_bytes = 7 * dtype.itemsize * pset.n_params
    rows = []
    for name in names:
        t = median(samples[name])
        rows.append(
            {
                "candidate": name,
                "ms": t * 1e3,
                "samples_ms": [s * 1e3 for s in samples[name]],
                "steps_per_sample": calls[name],
                "gb_s": n_bytes / t / 1e9,
                "peak_extra_bytes": peak_extra_bytes(steps[name], device),
                "first_step_ms": first_ms[name],
                "state_bytes_per_param": state_bytes(optimizers[name]) / max(pset.n_params, 1),
            }
        )
    del optimizers, steps, params
    gc.collect()
    return rows


def run(cfg: BenchConfig, progress: Any = None) -> dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the JSON-ready result."""
    cfg = cfg.effective()
    dtype = getattr(torch, cfg.dtype)
    sets = param_sets(cfg.device, smoke=cfg.smoke, names=cfg.sets)
    chosen = select(cfg.candidates)
    skipped, ready = [], []
    for c in chosen:
        reason = c.unavailable(cfg.device)
        (skipped.append({"candidate": c.name, "reason": reason}) if reason else ready.append(c))
    if BASELINE not in [c.name for c in ready]:
        raise RuntimeError(f"the baseline {BASELINE} cannot run on {cfg.device}: {skipped}")

    say = progress or (lambda message: None)
    info = {**machine(cfg.device), "load_average_start": list(os.getloadavg())}  # a shared machine: how busy
    bytes_ = cfg.bandwidth_mib * 2**20
    say(f"streaming bandwidth ({cfg.bandwidth_mib} MiB buffers)")
    bandwidth = [stream_bandwidth(cfg.device, bytes_, 5 if cfg.smoke else 10)]
    results = []
    for pset in sets:
        say(f"{pset.name} ({pset.label}): {len(ready)} candidates x {cfg.warmup + cfg.repeats} rounds")
        rows = _time_set(pset, ready, cfg, dtype)
        results.append(
            {
                "set": pset.name,
                "label": pset.label,
                "n_tensors": pset.n_tensors,
                "n_params": pset.n_params,
                "rows": rows,
            }
        )
    bandwidth.append(stream_bandwidth(cfg.device, bytes_, 5 if cfg.smoke else 10))  # again: the machine drifts
    info["load_average_end"] = list(os.getloadavg())
    stream_gb_s = median(b["gb_s"] for b in bandwidth)
    for res in results:
        base = next(r for r in res["rows"] if r["candidate"] == BASELINE)
        for row in res["rows"]:
            row["bandwidth_share"] = row["gb_s"] / stream_gb_s
            row["ratio_to_torch_fused"] = row["ms"] / base["ms"]
            row["within_noise"] = row is not base and within_noise(row, base)
    first_step = []
    if cfg.first_step and any("fused" in c.name and c.family == "adamlab" for c in ready):
        say("first fused step in a new process")
        first_step.append(first_fused_step(cfg.device, cold=False))
        if cfg.cold_start:
            first_step.append(first_fused_step(cfg.device, cold=True))
    return {
        "schema": SCHEMA,
        "config": asdict(cfg),
        "machine": info,
        "bytes_per_param": 7 * dtype.itemsize,
        "baseline": BASELINE,
        "torch_default": torch_default(cfg.device),
        "stream_bandwidth": {"gb_s": stream_gb_s, "runs": bandwidth},
        "sets": results,
        "skipped": skipped,
        "first_fused_step": first_step,
    }


def spread_ms(row: dict[str, Any]) -> float:
    """The spread of a row's rounds: max minus min of its samples (ms)."""
    return max(row["samples_ms"]) - min(row["samples_ms"])


def within_noise(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """True when the row's or the baseline's spread exceeds the difference between them."""
    return max(spread_ms(row), spread_ms(base)) > abs(row["ms"] - base["ms"])


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt_state(b: float | None) -> str:
    return "n/a" if b is None else f"{b:.2f}" if b < 100 else f"{b:.0f}"


def _load(values: list[float] | None) -> str:
    return "n/a" if not values else " ".join(f"{v:.2f}" for v in values)


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table, one row per set and candidate, with its context."""
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads)"
        + (f", {m['device_name']}" if m.get("device_name") else ""),
        f"versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; date {m['date'][:19]}Z",
        f"streaming bandwidth (a.add_(b) in place, 12 B/element): {result['stream_bandwidth']['gb_s']:.1f} GB/s; "
        f"{result['bytes_per_param']} B/param per step; torch.optim.Adam() default here: {result['torch_default']}",
        f"load average at the start {_load(m.get('load_average_start'))}, "
        f"at the end {_load(m.get('load_average_end'))}",
        "",
        "Sets by their --set name. ms/step: median of the rounds; spread: min–max of the rounds. "
        "'≈' marks a ratio within noise: the row's or the baseline's spread exceeds the difference. "
        "state B/param: the optimizer's state tensors after the first step, per parameter; "
        "first step: the step that creates the state.",
        "",
        "| --set | implementation | ms/step | spread (min–max) | GB/s | share of stream | x torch fused "
        "| peak extra mem | state B/param | first step ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in result["sets"]:
        for row in res["rows"]:
            samples = row["samples_ms"]
            noise = " ≈" if row.get("within_noise") else ""
            lines.append(
                f"| {res['set']} | {row['candidate']} | {_fmt_ms(row['ms'])} | "
                f"{_fmt_ms(min(samples))}–{_fmt_ms(max(samples))} | {row['gb_s']:.1f} | "
                f"{100 * row['bandwidth_share']:.0f}% | {row['ratio_to_torch_fused']:.2f}{noise} | "
                f"{_fmt_bytes(row['peak_extra_bytes'])} | {_fmt_state(row.get('state_bytes_per_param'))} | "
                f"{_fmt_ms(row['first_step_ms']) if 'first_step_ms' in row else 'n/a'} |"
            )
    lines.append("\n" + "; ".join(f"{res['set']}: {res['label']}" for res in result["sets"]))
    for s in result["skipped"]:
        lines.append(f"\nskipped {s['candidate']}: {s['reason']}")
    for f in result["first_fused_step"]:
        kind = "cold caches (includes the build)" if f["cold"] else "warm caches"
        if "error" in f:
            lines.append(f"first fused step in a new process, {kind}: failed: {f['error']}")
        else:
            lines.append(
                f"first fused step in a new process, {kind}: {f['first_step_s']:.3f} s "
                f"(import {f['import_s']:.2f} s, next step {1e3 * f['second_step_s']:.2f} ms)"
            )
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Any) -> None:
    """Bar chart: per set, each candidate's step time relative to torch's fused Adam."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"torch": "#4c72b0", "adamlab": "#dd8452", "third-party": "#8c8c8c"}
    from adamlab.bench.candidates import CANDIDATES

    family = {c.name: c.family for c in CANDIDATES}
    sets = result["sets"]
    fig, axes = plt.subplots(len(sets), 1, figsize=(9, 2.2 + 0.32 * sum(len(s["rows"]) for s in sets)), squeeze=False)
    for ax, res in zip(axes[:, 0], sets):
        rows = res["rows"]
        y = range(len(rows))
        ratios = [r["ratio_to_torch_fused"] for r in rows]
        ax.barh(y, ratios, color=[colours.get(family.get(r["candidate"], ""), "#55a868") for r in rows])
        ax.set_yticks(list(y), [r["candidate"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for i, r in enumerate(rows):
            ax.text(ratios[i], i, f" {r['ms']:.3g} ms", va="center", fontsize=7)
        ax.set_title(f"--set {res['set']}: {res['label']}", fontsize=9)
    axes[-1, 0].set_xlabel("step time relative to torch.optim.Adam(fused=True) (log scale; lower is faster)")
    fig.suptitle(f"optimizer.step() on {result['machine']['cpu']} ({result['config']['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
