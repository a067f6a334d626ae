"""What is timed: every optimizer a user could pick for the step, as data.

A :class:`Candidate` is a name, a constructor from a parameter list, and an availability
check that returns ``None`` or the reason it cannot run here (a package not installed, a
kernel that does not build). New implementations plug in with one entry in
:data:`CANDIDATES`; a candidate for one device type only names it in ``devices``.
``torch.optim.Adam fused=True`` is the baseline every ratio is taken against.

adamlab's low-precision rows (issue 14) are generated from :data:`PRECISIONS` x rule x
path, named like ``adamlab.Yogi 8bit fused=True`` (``--impl 8bit`` picks every 8-bit row,
bitsandbytes' and torchao's included). Candidates with ``default=False`` run only when a
pattern names them, so the default run stays minutes long: the third-party 8-bit Adams (on
this CPU a step of theirs is some 30x torch's, and torchao's first step compiles for
seconds) and the low-precision foreach rows (seconds per step on the large sets).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASELINE = "torch.optim.Adam fused=True"


@dataclass(frozen=True)
class Candidate:
    name: str
    make: Callable[[list[Any]], Any]  # params -> optimizer
    family: str  # "torch", "adamlab" or "third-party": colours the chart
    requires: str | None = None  # an importable module this candidate needs
    devices: tuple[str, ...] | None = None  # device types it runs on; None: any
    fused_on: bool = False  # an adamlab fused path: checked with one tiny step on the device
    default: bool = True  # part of a run that names no candidates; else only when a pattern matches
    fp32: str | None = None  # a low-precision row: the fp32 candidate its training loss is compared with

    def unavailable(self, device: str) -> str | None:
        """None if this candidate can run on ``device``, else the reason it cannot."""
        if self.devices is not None and device not in self.devices:
            return f"not for {device} (runs on {', '.join(self.devices)})"
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install 'adamlab[bench]')"
        try:
            import torch

            p = torch.zeros(4, device=device, requires_grad=True)
            p.grad = torch.ones_like(p)
            self.make([p]).step()  # builds a kernel where one is needed: a failure here is the reason
        except Exception as exc:
            return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return None


def _torch_adam(**kwargs: Any) -> Callable[[list[Any]], Any]:
    def make(params: list[Any]) -> Any:
        import torch

        return torch.optim.Adam(params, **kwargs)

    return make


def _adamlab(rule: str, **kwargs: Any) -> Callable[[list[Any]], Any]:
    def make(params: list[Any]) -> Any:
        import adamlab

        return getattr(adamlab, rule)(params, **kwargs)

    return make


def _third_party(module: str, attr: str, **kwargs: Any) -> Callable[[list[Any]], Any]:
    def make(params: list[Any]) -> Any:
        return getattr(importlib.import_module(module), attr)(params, **kwargs)

    return make


# adamlab's state precisions besides fp32 (the option ``state_precision``), and the paths each
# is timed on (path: its keywords, and whether a run that names no candidates includes it):
# every combination is one candidate. The foreach path decodes and encodes with separate
# tensor operations and their temporaries (readable, some 100x slower than fused here: seconds
# per step on the CPU sets), so it runs only when named, e.g. ``--impl "8bit foreach"``.
PRECISIONS = ("bf16", "8bit")
PRECISION_PATHS = {"foreach=True": ({"foreach": True}, False), "fused=True": ({"fused": True}, True)}


def _precision_rows() -> list[Candidate]:
    return [
        Candidate(
            f"adamlab.{rule} {precision} {path}",
            _adamlab(rule, state_precision=precision, **kw),
            "adamlab",
            default=default,
            fp32=f"adamlab.{rule} {path}",
        )
        for rule in ("Adam", "Yogi")
        for precision in PRECISIONS
        for path, (kw, default) in PRECISION_PATHS.items()
    ]


CANDIDATES: list[Candidate] = [
    Candidate("torch.optim.Adam foreach=False", _torch_adam(foreach=False), "torch"),
    Candidate("torch.optim.Adam foreach=True", _torch_adam(foreach=True), "torch"),
    Candidate(BASELINE, _torch_adam(fused=True), "torch"),
    Candidate("torch_optimizer.Yogi", _third_party("torch_optimizer", "Yogi"), "third-party", "torch_optimizer"),
    Candidate("pytorch_optimizer.Yogi", _third_party("pytorch_optimizer", "Yogi"), "third-party", "pytorch_optimizer"),
    Candidate("adamlab.Adam foreach=False", _adamlab("Adam", foreach=False), "adamlab"),
    Candidate("adamlab.Adam foreach=True", _adamlab("Adam", foreach=True), "adamlab"),
    Candidate("adamlab.Adam fused=True", _adamlab("Adam", fused=True), "adamlab"),
    Candidate("adamlab.Yogi foreach=False", _adamlab("Yogi", foreach=False), "adamlab"),
    Candidate("adamlab.Yogi foreach=True", _adamlab("Yogi", foreach=True), "adamlab"),
    Candidate("adamlab.Yogi fused=True", _adamlab("Yogi", fused=True), "adamlab"),
    *_precision_rows(),
    # 8-bit Adams of other libraries, with their own defaults except torchao's weight decay (its
    # AdamW's default is 0.01; 0 makes it the same Adam as the baseline, for the loss comparison)
    Candidate(
        "bitsandbytes Adam8bit",
        _third_party("bitsandbytes.optim", "Adam8bit"),
        "third-party",
        "bitsandbytes",
        default=False,
        fp32=BASELINE,
    ),
    Candidate(
        "torchao AdamW8bit weight_decay=0",
        _third_party("torchao.optim", "AdamW8bit", weight_decay=0.0),
        "third-party",
        "torchao",
        default=False,
        fp32=BASELINE,
    ),
]


def select(patterns: tuple[str, ...] | None) -> list[Candidate]:
    """Candidates whose name contains any of ``patterns`` (case-insensitive), plus the baseline;
    no patterns: every ``default`` candidate."""
    if not patterns:
        return [c for c in CANDIDATES if c.default]
    chosen = [c for c in CANDIDATES if c.name == BASELINE or any(p.lower() in c.name.lower() for p in patterns)]
    if len(chosen) == 1 and not any(p.lower() in BASELINE.lower() for p in patterns):
        raise ValueError(f"no candidate matches {list(patterns)} (have {[c.name for c in CANDIDATES]})")
    return chosen


def torch_default(device: str) -> str:
    """The implementation ``torch.optim.Adam()`` picks for float32 tensors on ``device``."""
    import torch

    try:  # a private helper of torch.optim: the one place torch makes this choice
        from torch.optim.optimizer import _default_to_fused_or_foreach

        p = torch.zeros(1, device=device)
        _, foreach = _default_to_fused_or_foreach([p], differentiable=False, use_fused=False)
    except (ImportError, TypeError):
        return "unknown (torch.optim.optimizer._default_to_fused_or_foreach changed)"
    return "torch.optim.Adam foreach=True" if foreach else "torch.optim.Adam foreach=False"
