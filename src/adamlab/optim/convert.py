"""Convert an optimizer state_dict between state precisions (and to/from ``torch.optim.Adam``).

A checkpoint loads only into an optimizer with the same ``state_precision`` (and 8-bit
``block_size``): the stored moments mean different things in each. This converts one
explicitly; it is the function the refusal in ``load_state_dict`` names.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adamlab.optim import precision as lowp
from adamlab.validation import validate_group

_MOMENTS = (("exp_avg", True), ("exp_avg_sq", False), ("max_exp_avg_sq", False))


def convert_state_dict(
    state_dict: Mapping[str, Any], state_precision: str | None, *, block_size: int = 256
) -> dict[str, Any]:
    """A copy of an optimizer ``state_dict`` with its moments stored in ``state_precision``.

    ``state_dict`` comes from :class:`adamlab.Adam`/:class:`adamlab.Yogi` (any precision) or
    from ``torch.optim.Adam``/``AdamW`` (plain floating moments). Each moment is decoded to
    float32 (bf16 and 8-bit exactly; float32 and float16 exactly; a float64 moment rounded
    to float32) and encoded:

    * ``None`` or ``"fp32"``: float32 tensors (a float64 moment stays float64). The result
      loads into ``torch.optim.Adam`` (which casts the moments to its parameters' dtype) and
      into an adamlab optimizer with ``state_precision=None`` or ``"fp32"``.
    * ``"bf16"``: bfloat16, rounded to nearest (a conversion is one deterministic rounding;
      the optimizer's steps round stochastically).
    * ``"8bit"``: uint8 codes and float32 absmax per block of ``block_size`` elements of
      each tensor's memory order (:func:`adamlab.reference.quantize_blockwise`), as the
      optimizer's own state.

    Every param group gets ``state_precision`` (and ``block_size``); the per-parameter
    ``rounding_seed`` is kept (an adamlab optimizer creates a missing one when it first
    needs it) except for a plain target, whose state then holds torch's keys only. Nothing
    of ``state_dict`` is changed: the result holds new tensors (``step`` copied).

    Raises ``ValueError`` for an unknown precision or block size, an AMSGrad group converted
    to ``"8bit"`` (it keeps a maximum that 8 bits cannot), a complex moment converted to
    ``"bf16"``/``"8bit"``, or a state that is not an optimizer state_dict.
    """
    validate_group(_probe(state_precision, block_size), "convert_state_dict")
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("convert_state_dict takes an optimizer state_dict: a dict with 'state' and 'param_groups'")
    groups = [dict(g) for g in state_dict["param_groups"]]
    source: dict[Any, tuple[str | None, int]] = {}
    for gi, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"convert_state_dict: param_groups[{gi}] has no 'params'")
        if state_precision == "8bit" and group.get("amsgrad", False):
            raise ValueError(
                f"convert_state_dict: param_groups[{gi}] has amsgrad=True, which state_precision='8bit' "
                "does not support (convert to 'bf16' or 'fp32')"
            )
        for key in group["params"]:
            source[key] = (group.get("state_precision"), int(group.get("block_size", 256)))
        group.pop("state_dtype", None)  # a legacy key
        group["params"] = list(group["params"])
        group["state_precision"], group["block_size"] = state_precision, block_size
    state = {}
    for key, entry in state_dict["state"].items():
        old_precision, old_block = source.get(key, (None, 256))
        state[key] = _convert_entry(key, entry, old_precision, old_block, state_precision, block_size)
    out = {k: copy.deepcopy(v) for k, v in state_dict.items() if k not in ("state", "param_groups")}
    out["state"], out["param_groups"] = state, groups
    return out


def _probe(state_precision: Any, block_size: Any) -> dict[str, Any]:
    """A group holding only the options to check (validate_group's rules and messages)."""
    return dict(lr=0.0, betas=(0.9, 0.999), eps=0.0, state_precision=state_precision, block_size=block_size)


def _convert_entry(
    key: Any, entry: Mapping[str, Any], old: str | None, old_block: int, new: str | None, block: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, value in entry.items():
        if k in ("exp_avg_absmax", "exp_avg_sq_absmax") or (k == "rounding_seed" and new not in lowp.LOW_PRECISIONS):
            continue
        if k in dict(_MOMENTS):
            continue
        out[k] = value.clone() if isinstance(value, Tensor) else copy.deepcopy(value)
    for k, signed in _MOMENTS:
        if k not in entry:
            continue
        stored = entry[k]
        if not isinstance(stored, Tensor):
            raise ValueError(f"convert_state_dict: state[{key!r}][{k!r}] is {type(stored).__name__}, not a tensor")
        if stored.dtype == torch.uint8:
            absmax = entry.get(k + "_absmax")
            if absmax is None:
                raise ValueError(
                    f"convert_state_dict: state[{key!r}][{k!r}] holds 8-bit codes without {k + '_absmax'!r}"
                )
            values = lowp.decode(stored, absmax.to(device=stored.device, dtype=torch.float32), old_block, signed)
        elif stored.is_complex() or stored.dtype == torch.float64:
            values = stored
        else:
            values = stored.to(torch.float32)
        if new not in lowp.LOW_PRECISIONS:
            out[k] = values.clone() if values is stored else values
            continue
        if values.is_complex():
            raise ValueError(
                f"convert_state_dict: state[{key!r}][{k!r}] is complex: "
                f"state_precision={new!r} takes real parameters only"
            )
        values = values.to(torch.float32)
        if new == "bf16":
            out[k] = lowp.empty_like_layout(values, torch.bfloat16)
            lowp.write_flat(out[k], lowp.round_bf16_nearest(lowp.flat(values)))
        else:
            codes, absmax = lowp.quantize_blockwise(lowp.flat(values).contiguous(), block, signed)
            out[k] = lowp.empty_like_layout(values, torch.uint8)
            lowp.write_flat(out[k], codes)
            out[k + "_absmax"] = absmax
    return out
