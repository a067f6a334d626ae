"""The lab's speed record: adamlab's scratch Adam next to the book's own code, same machine, same run.

    python benchmarks/d2l_baseline.py                       # print the record
    python benchmarks/d2l_baseline.py --write               # also update benchmarks/RESULTS.md
    python benchmarks/d2l_baseline.py --d2l-site /tmp/d2l   # where `pip install --no-deps
                                                            #   --target /tmp/d2l d2l==1.0.3` put it

What runs, interleaved (book, adamlab, book, ...) so that a noisy machine hits both alike:

* **book** — the real ``d2l`` package (1.0.3): ``d2l.get_data_ch11`` (its DataLoader) and
  ``d2l.train_ch11`` (its loop, timer, evaluation and Animator), on the bundled data file.
  ``d2l`` does not ship the chapter's ``adam`` trainer function (it lives in the chapter's
  notebook), so the trainer function here is the chapter's per-parameter step calling
  :func:`adamlab.lab.frameworks.torch_chapter.adam` — in-place, with fewer temporaries than the book's
  out-of-place ``v[:] = β1 * v + ...``: if anything this baseline is *faster* than the
  book's, and the ratio below conservative. ``d2l.torch`` imports torchvision, pandas,
  requests, scipy, IPython and matplotlib_inline at module level; none of them is used by
  these functions, so any that is not installed is replaced by an empty stand-in module
  (listed in the record), and the Animator's Jupyter display calls are no-ops.
* **adamlab** — :func:`adamlab.lab.train` (scratch "adam"), the same protocol.
* the five chapter runs for seeds 0..4 (final losses), and the wall time of the whole
  ``adamlab`` command, imports included, in a fresh process.

Numbers are medians over repeats; sec/epoch is training time only, as the book measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
HERE = Path(__file__).resolve().parent
SECTION = "## Lab: chapter speed"


def import_d2l(site: str | None):
    """Import ``d2l.torch``, standing in empty modules for the unused imports that are missing."""
    if site:
        sys.path.insert(0, site)
    stubbed = []
    stubs = {
        "torchvision": {"transforms": types.ModuleType("torchvision.transforms")},
        "pandas": {},
        "requests": {},
        "scipy": {},
        "scipy.spatial": {"distance_matrix": None},
        "IPython": {"get_ipython": lambda: None, "version_info": (9, 0, 0)},
        "IPython.display": {"display": lambda *a, **k: None, "clear_output": lambda *a, **k: None},
        "matplotlib_inline": {},
        "matplotlib_inline.backend_inline": {"set_matplotlib_formats": lambda *a, **k: None},
    }
    for name, attrs in stubs.items():
        try:
            __import__(name)
            if name == "IPython.display":  # real IPython: keep display calls silent anyway
                raise ImportError
        except ImportError:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo inspects specs
            module.__dict__.update(attrs)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
            stubbed.append(name)
    if "torchvision" in stubbed:
        sys.modules["torchvision.transforms"] = sys.modules["torchvision"].transforms
    import d2l
    from d2l import torch as d2l_torch

    from adamlab.lab.data import bundled_path

    # The book downloads the file and checks its sha1; ours is the same file (sha1 checked by
    # adamlab's loader and its tests), so hand d2l the path.
    d2l_torch.download = lambda *a, **k: str(bundled_path())
    version = getattr(d2l, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("d2l")
    return d2l_torch, version, stubbed


def book_adam_run(d2l, seed: int) -> tuple[float, float]:
    """d2l.train_ch11 with the chapter's from-scratch Adam; returns (final loss, sec/epoch)."""
    import torch
    from matplotlib import pyplot as plt

    from adamlab.lab.frameworks.torch_chapter import adam

    def init_adam_states(feature_dim):
        return [(torch.zeros((feature_dim, 1)), torch.zeros((feature_dim, 1))), (torch.zeros(1), torch.zeros(1))]

    def chapter_adam(params, states, hyperparams):  # the chapter's per-parameter trainer_fn
        for p, (v, s) in zip(params, states):
            with torch.no_grad():
                adam(p, p.grad, v, s, hyperparams["t"], hyperparams["lr"])
            p.grad.data.zero_()
        hyperparams["t"] += 1

    torch.manual_seed(seed)
    data_iter, feature_dim = d2l.get_data_ch11(batch_size=10)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        times, losses = d2l.train_ch11(
            chapter_adam, init_adam_states(feature_dim), {"lr": 0.01, "t": 1}, data_iter, feature_dim
        )
    plt.close("all")
    line = printed.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"loss: [\d.]+, [\d.]+ sec/epoch", line), line
    return float(losses[-1]), times[-1] / 2


def adamlab_run(seed: int) -> tuple[float, float]:
    from adamlab.lab.loop import RunConfig, train

    result = train(RunConfig("scratch", "adam", seed=seed))
    return result.final_loss, result.sec_per_epoch


def cli_times(repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + sys) seconds of the whole ``adamlab`` command in a fresh process."""
    import resource

    walls, cpus = [], []
    exe = [sys.executable, "-m", "adamlab.lab.cli", "--quiet"]
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([*exe, "--out", out], check=True)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(Exception):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu).group(1).strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": model, "cores": str(os.cpu_count()), "load_avg_1_5_15": " ".join(f"{x:.2f}" for x in load)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d2l-site", help="folder holding the d2l package (pip install --target)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each seed (default 3)")
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--distribution", type=int, default=30, help="seeds for the final-loss distribution")
    parser.add_argument("--write", action="store_true", help="update the lab section of benchmarks/RESULTS.md")
    args = parser.parse_args()

    import numpy
    import torch

    import adamlab
    from adamlab.lab.chapter import run_chapter
    from adamlab.lab.data import least_squares_floor, load

    try:
        d2l, d2l_version, stubbed = import_d2l(args.d2l_site)
    except ImportError as e:
        d2l, d2l_version, stubbed = None, f"not importable ({e})", []
        print(f"d2l could not be imported: {e}; recording adamlab only", file=sys.stderr)

    seeds = range(5)
    book: dict[int, list[tuple[float, float]]] = {s: [] for s in seeds}
    ours: dict[int, list[tuple[float, float]]] = {s: [] for s in seeds}
    if d2l is not None:
        book_adam_run(d2l, 99)  # burn in: first-call costs of either side are not the subject
    adamlab_run(99)
    for _ in range(args.repeats):
        for seed in seeds:
            if d2l is not None:
                book[seed].append(book_adam_run(d2l, seed))
            ours[seed].append(adamlab_run(seed))

    spread_seeds = range(100, 100 + args.distribution)
    spread = {
        "book": [book_adam_run(d2l, s)[0] for s in spread_seeds] if d2l is not None else [],
        "adamlab": [adamlab_run(s)[0] for s in spread_seeds],
    }

    floor = least_squares_floor(load())
    chapters = {seed: run_chapter(seed=seed) for seed in seeds}
    walls, cpus = cli_times(args.cli_repeats)

    book_spe = [spe for runs in book.values() for _, spe in runs]
    our_spe = [spe for runs in ours.values() for _, spe in runs]
    record = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "adamlab": adamlab.__version__,
            "d2l": d2l_version,
            "torch_threads": torch.get_num_threads(),
        },
        "d2l_stand_ins": stubbed,
        "repeats": args.repeats,
        "book_sec_per_epoch_median": statistics.median(book_spe) if book_spe else None,
        "adamlab_sec_per_epoch_median": statistics.median(our_spe),
        "book_final_loss": {s: book[s][0][0] for s in seeds if book[s]},
        "adamlab_final_loss": {s: ours[s][0][0] for s in seeds},
        "chapter_final_losses": {s: {r.name: r.final_loss for r in c.runs} for s, c in chapters.items()},
        "chapter_sec_per_epoch": {s: {r.name: r.sec_per_epoch for r in c.runs} for s, c in chapters.items()},
        "final_loss_distribution": {
            name: {
                "seeds": f"{spread_seeds.start}..{spread_seeds.stop - 1}",
                "mean": statistics.mean(xs),
                "sd": statistics.stdev(xs),
                "min": min(xs),
                "max": max(xs),
            }
            for name, xs in spread.items()
            if len(xs) > 1
        },
        "floor": floor,
        "cli_wall_seconds": walls,
        "cli_cpu_seconds": cpus,
    }
    text = render(record)
    print(text)
    (HERE / "d2l_baseline.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.write:
        write_section(HERE / "RESULTS.md", text)


def render(r: dict) -> str:
    b, a = r["book_sec_per_epoch_median"], r["adamlab_sec_per_epoch_median"]
    ratio = f"{b / a:.1f}x" if b else "n/a (d2l not importable)"
    lines = [
        SECTION,
        "",
        f"Measured {r['date']} on {r['machine']['cpu']}, {r['machine']['cores']} cores "
        f"(load average at the end {r['machine']['load_avg_1_5_15']}: the machine was shared); "
        f"python {r['versions']['python']}, torch {r['versions']['torch']} "
        f"({r['versions']['torch_threads']} threads), numpy {r['versions']['numpy']}, "
        f"adamlab {r['versions']['adamlab']}, d2l {r['versions']['d2l']}.",
        "Re-run: `python benchmarks/d2l_baseline.py --d2l-site DIR --write` (see its docstring).",
        "",
        "Scratch Adam, lr 0.01, batch 10, 2 epochs; training time only (the book's timer); "
        f"median of {r['repeats']} repeats x 5 seeds, book and adamlab interleaved in one process.",
        "",
        "| code | sec/epoch (median) | final loss, seeds 0..4 |",
        "| --- | ---: | --- |",
    ]
    if b:
        losses = ", ".join(f"{x:.4f}" for x in r["book_final_loss"].values())
        lines.append(f"| book: `d2l.train_ch11` (d2l {r['versions']['d2l']}) | {b:.4f} | {losses} |")
    losses = ", ".join(f"{x:.4f}" for x in r["adamlab_final_loss"].values())
    lines += [
        f"| adamlab: `adamlab.lab.train(RunConfig('scratch', 'adam'))` | {a:.4f} | {losses} |",
        "",
        f"Speed-up of adamlab's scratch Adam over the book's code: **{ratio}** per epoch (target: >= 4x).",
    ]
    dist = r["final_loss_distribution"]
    if dist:
        seeds = next(iter(dist.values()))["seeds"]
        lines += ["", f"Final loss of the scratch Adam over seeds {seeds} (same losses, not the same draws):", ""]
        lines += ["| code | mean | sd | min | max |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, d in dist.items():
            lines.append(f"| {name} | {d['mean']:.4f} | {d['sd']:.4f} | {d['min']:.4f} | {d['max']:.4f} |")
    if r["d2l_stand_ins"]:
        lines += ["", f"Empty stand-ins for d2l's unused imports: {', '.join(r['d2l_stand_ins'])}."]
    names = list(next(iter(r["chapter_final_losses"].values())))
    lines += [
        "",
        f"The chapter's five runs (`adamlab.lab.run_chapter(seed=s)`), final ½-MSE; floor {r['floor']:.4f} "
        "(least squares, float64):",
        "",
        "| seed | " + " | ".join(names) + " |",
        "| ---: |" + " ---: |" * len(names),
    ]
    for seed, runs in r["chapter_final_losses"].items():
        lines.append(f"| {seed} | " + " | ".join(f"{runs[n]:.4f}" for n in names) + " |")
    walls, cpus = r["cli_wall_seconds"], r["cli_cpu_seconds"]
    lines += [
        "",
        f"`adamlab` (all five runs, fresh process, imports included), {len(walls)} runs (target: < 15 s wall): "
        f"median {statistics.median(walls):.1f} s wall ({', '.join(f'{w:.1f}' for w in walls)}), "
        f"median {statistics.median(cpus):.1f} s CPU (user + sys; wall minus CPU is time spent waiting for a core).",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) the lab section, leaving every other section as it is."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = old.find("\n## ", start + len(SECTION))
        rest = old[end + 1 :] if end >= 0 else ""
        new = old[:start] + text.rstrip("\n") + ("\n\n" + rest if rest else "\n")
    path.write_text(new)


if __name__ == "__main__":
    main()
