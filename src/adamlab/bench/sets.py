"""Parameter sets: the shapes an optimizer step is timed on, per device.

Each set is data (a name, a label, a list of shapes), so a device adds its own sizes with
one entry in :data:`PARAM_SETS`, and ``--smoke`` swaps in tiny versions of the same
structure that run in seconds. The four kinds of set are issue 5's (CPU) and issue 6's
(CUDA): one large tensor; a GPT-like list of matrices, vectors and an embedding; many
small tensors; the chapter's 2-tensor linear model, where per-step overhead is all.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSet:
    name: str
    label: str
    shapes: tuple[Shape, ...]

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_params(self) -> int:
        return sum(prod(s) for s in self.shapes)


def gpt_like(vocab: int, d: int, layers: int) -> tuple[Shape, ...]:
    """A GPT-style decoder's parameters (nanoGPT naming), tied embedding, no position table.

    Per block: ln_1 (w, b), attn.c_attn (3d x d, b), attn.c_proj (d x d, b), ln_2 (w, b),
    mlp.c_fc (4d x d, b), mlp.c_proj (d x 4d, b): 12 tensors. Plus wte and ln_f (w, b).
    """
    block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return ((vocab, d), *(block * layers), (d,), (d,))


def _set(name: str, label: str, shapes: tuple[Shape, ...] | list[Shape]) -> ParamSet:
    return ParamSet(name, label, tuple(shapes))


# The chapter's linear regression on the airfoil data: 5 features -> 1 output.
LINEAR_2 = ((1, 5), (1,))

PARAM_SETS: dict[str, list[ParamSet]] = {
    "cpu": [
        _set("one-large", "one 4096x4096 tensor (16.8M)", [(4096, 4096)]),
        _set("gpt-like", "GPT-like list (41.6M params, 99 tensors)", gpt_like(32000, 512, 8)),
        _set("many-small", "2000 tensors of 64x64 (8.2M)", [(64, 64)] * 2000),
        _set("linear-2", "the chapter's 2-tensor linear model", LINEAR_2),
    ],
    "cuda": [
        _set("one-large", "one 16384x16384 tensor (268M)", [(16384, 16384)]),
        _set("gpt-like", "GPT-like list (1.31B params, 291 tensors)", gpt_like(50304, 2048, 24)),
        _set("many-small", "4000 tensors of 256x256 (262M)", [(256, 256)] * 4000),
        _set("linear-2", "2 tiny tensors (the chapter's model)", LINEAR_2),
    ],
}

# Same structure, tiny: for CI and for trying the command out.
SMOKE_SETS: list[ParamSet] = [
    _set("one-large", "one 256x256 tensor (smoke)", [(256, 256)]),
    _set("gpt-like", "GPT-like list, tiny (smoke)", gpt_like(500, 32, 2)),
    _set("many-small", "50 tensors of 16x16 (smoke)", [(16, 16)] * 50),
    _set("linear-2", "the chapter's 2-tensor linear model", LINEAR_2),
]


def param_sets(device: str, *, smoke: bool = False, names: tuple[str, ...] | None = None) -> list[ParamSet]:
    """The sets to run on ``device`` (a device type such as "cpu" or "cuda"), optionally by name."""
    if smoke:
        sets = SMOKE_SETS
    elif device in PARAM_SETS:
        sets = PARAM_SETS[device]
    else:
        raise ValueError(f"no parameter sets for device {device!r} (have {sorted(PARAM_SETS)})")
    if names:
        unknown = sorted(set(names) - {s.name for s in sets})
        if unknown:
            raise ValueError(f"unknown parameter set(s) {unknown} (expected some of {[s.name for s in sets]})")
        sets = [s for s in sets if s.name in names]
    return list(sets)
