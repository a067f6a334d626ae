"""Low-precision optimizer state: what an update needs besides the fp32 tensor lists.

See :mod:`adamlab.reference` ("low-precision state") for the formats, the maps and the
counter-based random bits; every backend implements exactly those.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

PRECISIONS = ("fp32", "bf16", "8bit")  # the values of state_precision besides None


class LowPrecision(NamedTuple):
    """Passed to an update as ``low_precision=`` (``None``: every tensor in its own dtype).

    ``precision`` is ``"bf16"``, ``"8bit"`` or ``None`` (moments stored in their own dtype:
    only the parameters are rounded stochastically). The lists run parallel to ``params``."""

    precision: str | None
    block_size: int  # 8bit: elements per block (a power of two)
    stochastic_rounding: bool  # bfloat16 parameters are rounded stochastically (stream 2)
    seeds: list[int]  # each parameter's seed (reference.parameter_seed), 0 <= seed < 2**32
    exp_avg_absmax: list[Tensor]  # 8bit: float32, one per block; else []
    exp_avg_sq_absmax: list[Tensor]
