"""From runs to conclusions: per-run figures, the table over seeds, the checks, the figure.

Per run (the first ``warmup`` steps dropped: they allocate state and warm caches): the
median forward+backward and optimizer-step times, the optimizer's share of the step
(``opt / (fwd_bwd + opt)``), tokens/s at the median step, and the final validation loss.
Over seeds: the mean and the spread (min to max) of each.
"""

from __future__ import annotations

import math
from statistics import mean, median
from typing import Any

WARMUP = 3


def per_run(run: dict[str, Any], tokens_per_step: int) -> dict[str, Any]:
    """One run's figures (timings over the steps after warm-up, or all steps if too few)."""
    skip = WARMUP if len(run["opt_s"]) > 2 * WARMUP else 0
    fb, opt = run["fwd_bwd_s"][skip:], run["opt_s"][skip:]
    out: dict[str, Any] = {
        "optimizer": run["optimizer"],
        "seed": run["seed"],
        "steps": run["steps"],
        "final_val_loss": run["val"][-1]["loss"] if run["val"] else None,
        "state_bytes": run["state_bytes"],
    }
    if fb:
        fb_s, opt_s = median(fb), median(opt)
        out.update(
            fwd_bwd_ms=1e3 * fb_s,
            opt_ms=1e3 * opt_s,
            opt_share=opt_s / (fb_s + opt_s),
            tokens_s=tokens_per_step / (fb_s + opt_s),
        )
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": mean(values), "min": min(values), "max": max(values)}


def summarize(result: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """``summary`` (per mode, per optimizer: mean and spread over seeds) and ``checks``."""
    tokens = result["tokens_per_step"]
    summary: dict[str, list[dict[str, Any]]] = {}
    for mode, runs in result["runs"].items():
        rows = []
        for name in result["optimizers"]:
            mine = [per_run(r, tokens) for r in runs if r["optimizer"] == name and r["steps"]]
            if not mine:
                continue
            row: dict[str, Any] = {
                "optimizer": name,
                "seeds": [r["seed"] for r in mine],
                "state_bytes": mine[0]["state_bytes"],
            }
            for key in ("tokens_s", "fwd_bwd_ms", "opt_ms", "opt_share", "final_val_loss"):
                values = [r[key] for r in mine if r.get(key) is not None]
                if values:
                    row[key] = _spread(values)
            vs = vs_fp32(runs, name)
            if vs:
                row["vs_fp32"] = vs
            rss = result["peak_rss"].get(name, {}) if mode == "single" else {}
            if "peak_rss_bytes" in rss:
                row["peak_rss_bytes"] = rss["peak_rss_bytes"]
                row["rss_added_bytes"] = rss["peak_rss_bytes"] - rss["baseline_rss_bytes"]
            rows.append(row)
        summary[mode] = rows
    return {"summary": summary, "checks": checks(result, cfg)}


def vs_fp32(runs: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """A low-precision row's quality: (final val loss - its fp32 row's) / the fp32 row's, per
    seed the two share (same model, batches and order), with the mean and spread over seeds.
    None for an fp32 row, or when its fp32 row did not run."""
    from adamlab.bench.candidates import CANDIDATES

    fp32 = next((c.fp32 for c in CANDIDATES if c.name == name), None)
    if fp32 is None:
        return None
    final = {
        (r["optimizer"], r["seed"]): r["val"][-1]["loss"] for r in runs if r["optimizer"] in (name, fp32) and r["val"]
    }
    rel = [
        (final[(name, seed)] - final[(fp32, seed)]) / final[(fp32, seed)]
        for (opt, seed) in sorted(final)
        if opt == name and (fp32, seed) in final
    ]
    return {"fp32": fp32, "relative": rel, **_spread(rel)} if rel else None


def checks(result: dict[str, Any], cfg: Any) -> list[dict[str, Any]]:
    """Every run's loss fell; every distributed curve matches the single-process one."""
    out = []
    for mode, runs in result["runs"].items():
        for r in runs:
            if len(r["val"]) < 2:
                continue
            first, last = r["val"][0]["loss"], r["val"][-1]["loss"]
            out.append(
                {
                    "check": "loss falls",
                    "mode": mode,
                    "optimizer": r["optimizer"],
                    "seed": r["seed"],
                    "ok": last < first - cfg.min_loss_drop,
                    "detail": f"val loss {first:.3f} -> {last:.3f} (must fall by {cfg.min_loss_drop})",
                }
            )
    for mode, info in result.get("distributed", {}).items():
        if "error" in info:
            out.append(
                {
                    "check": "ranks finish",
                    "mode": mode,
                    "optimizer": "all",
                    "seed": list(cfg.dist_seeds),
                    "ok": False,
                    "detail": info.get("error_line") or info["error"].splitlines()[0],
                }
            )
    single = {(r["optimizer"], r["seed"]): r for r in result["runs"].get("single", [])}
    for mode in ("ddp", "fsdp2"):
        for r in result["runs"].get(mode, []):
            ref = single.get((r["optimizer"], r["seed"]))
            if ref is None:
                if not result.get("partial"):
                    out.append(
                        {
                            "check": "matches single process",
                            "mode": mode,
                            "optimizer": r["optimizer"],
                            "seed": r["seed"],
                            "ok": False,
                            "detail": "not run: no single-process run with this optimizer and seed",
                        }
                    )
                continue
            ref_val = {v["step"]: v["loss"] for v in ref["val"]}
            diffs = [abs(v["loss"] - ref_val[v["step"]]) for v in r["val"] if v["step"] in ref_val]
            if not diffs:
                continue
            # max() skips a NaN when it is not first; any non-finite difference is a failure
            worst = max(diffs) if all(math.isfinite(d) for d in diffs) else math.nan
            out.append(
                {
                    "check": "matches single process",
                    "mode": mode,
                    "optimizer": r["optimizer"],
                    "seed": r["seed"],
                    "ok": math.isfinite(worst) and worst <= cfg.loss_tolerance,
                    "max_abs_diff": worst,
                    "detail": f"max |val loss - single| {worst:.2g} over {len(diffs)} evaluations "
                    f"(tolerance {cfg.loss_tolerance})",
                }
            )
    return out


def _fmt(stat: dict[str, float] | None, fmt: str, scale: float = 1.0) -> str:
    if not stat:
        return "n/a"
    m, lo, hi = (stat[k] * scale for k in ("mean", "min", "max"))
    if hi == lo:
        return format(m, fmt)
    return f"{m:{fmt}} ({lo:{fmt}}–{hi:{fmt}})"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def table(result: dict[str, Any]) -> str:
    """The summary as Markdown: one table per mode, mean (min–max) over seeds."""
    m, c = result["machine"], result["corpus"]
    cfg = result["config"]
    lines = [
        f"machine: {m['cpu']} ({m['cores']} cores), load average {m['load_average_start'][0]:.2f} at start, "
        f"{m['load_average_end'][0]:.2f} at end",
        f"versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; date {result['date'][:19]}Z",
        f"model: {result['model_params'] / 1e6:.2f}M params ({cfg['model']}), {result['tokens_per_step']} tokens/step, "
        f"{cfg['steps']} steps",
        f"corpus: {c['name']} (Python {c['python']}), {c['files']} files, {c['bytes']} bytes, "
        f"sha256 {c['sha256'][:16]}…",
        f"learning rates: {cfg['lrs']}",
        "vs fp32: a low-precision row's final val loss relative to its fp32 row's (same seed), "
        "mean (min–max) over seeds; state B/param: summed over ranks, per model parameter",
    ]
    if result["partial"]:
        lines.append("PARTIAL: interrupted; the runs below are what finished")
    for mode, rows in result["summary"].items():
        if not rows:
            continue
        seeds = sorted({s for r in rows for s in r["seeds"]})
        where = "1 process" if mode == "single" else f"{cfg['world_size']} processes, gloo"
        lines += [
            "",
            f"**{mode}** ({where}; mean (min–max) over seeds {seeds})",
            "",
            "| optimizer | tokens/s | fwd+bwd ms | optimizer ms | optimizer share | final val loss "
            "| vs fp32 | state MiB (all ranks) | state B/param | peak RSS MiB (+ training) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            rss = f"{_mib(r['peak_rss_bytes'])} (+{_mib(r['rss_added_bytes'])})" if "peak_rss_bytes" in r else "n/a"
            if mode != "single":
                ranks = result["distributed"].get(mode, {}).get("ranks", [])
                rss = (
                    "per rank, all optimizers: " + ", ".join(_mib(x["peak_rss_bytes"]) for x in ranks) if ranks else rss
                )
            lines.append(
                f"| {r['optimizer']} | {_fmt(r.get('tokens_s'), '.0f')} | {_fmt(r.get('fwd_bwd_ms'), '.1f')} | "
                f"{_fmt(r.get('opt_ms'), '.2f')} | {_fmt(r.get('opt_share'), '.1f', 100)}% | "
                f"{_fmt(r.get('final_val_loss'), '.3f')} | {_fmt(r.get('vs_fp32'), '+.2f', 100)}"
                f"{'%' if 'vs_fp32' in r else ''} | {_mib(r['state_bytes'])} | "
                f"{r['state_bytes'] / result['model_params']:.2f} | {rss} |"
            )
    failed = [ch for ch in result["checks"] if not ch["ok"]]
    lines.append("")
    lines.append(f"checks: {len(result['checks']) - len(failed)}/{len(result['checks'])} passed")
    for ch in failed:
        lines.append(f"FAILED {ch['check']}: {ch['mode']} {ch['optimizer']} seed {ch['seed']}: {ch['detail']}")
    for s in result["skipped"]:
        lines.append(f"skipped {s['optimizer']}: {s['reason']}")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Any) -> None:
    """Validation loss vs step and vs the run's own wall time; one row per mode, first seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m, runs in result["runs"].items() if runs]
    fig, axes = plt.subplots(max(1, len(modes)), 2, figsize=(11, 3.4 * max(1, len(modes))), squeeze=False)
    colours = plt.get_cmap("tab20")
    order = {name: i for i, name in enumerate(result["optimizers"])}
    for row, mode in zip(axes, modes):
        runs = result["runs"][mode]
        seed = min(r["seed"] for r in runs)
        for r in (r for r in runs if r["seed"] == seed and r["val"]):
            colour = colours(order.get(r["optimizer"], 0) % 20)
            ls = "--" if "yogi" in r["optimizer"].lower() else "-"
            train = r["train_loss"]
            smooth = [sum(train[max(0, i - 4) : i + 1]) / len(train[max(0, i - 4) : i + 1]) for i in range(len(train))]
            row[0].plot(range(1, len(train) + 1), smooth, color=colour, ls=ls, lw=1.0, alpha=0.8)
            val_steps, val_loss = [v["step"] for v in r["val"]], [v["loss"] for v in r["val"]]
            row[0].plot(val_steps, val_loss, color=colour, ls="none", marker="o", ms=3)
            row[1].plot(
                [v["wall_s"] for v in r["val"]],
                val_loss,
                color=colour,
                ls=ls,
                marker="o",
                ms=3,
                lw=1.2,
                label=r["optimizer"],
            )
        where = "1 process" if mode == "single" else f"{result['config']['world_size']} processes"
        row[0].set(
            title=f"{mode} ({where}), seed {seed}: training loss (mean of 5 steps), validation (dots)",
            xlabel="step",
            ylabel="loss (nats/byte)",
        )
        row[1].set(title=f"{mode}: loss vs the run's own training time", xlabel="seconds (sum of its steps)")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.title.set_fontsize(9)
    axes[0, 1].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"small GPT ({result['model_params'] / 1e6:.2f}M params) on {result['corpus']['name']}"
        + (" (PARTIAL)" if result["partial"] else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
