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

    The input is checked first, nothing converted until all of it passes: ``TypeError`` for
    a part of the wrong type (``state`` not a dict, a group or a state entry not a dict,
    ``params`` not a list); ``ValueError`` for an unknown target precision or block size, a
    source group whose options the optimizer would refuse (:func:`adamlab.validation.validate_group`:
    its ``state_precision``, ``block_size``, ...), 8-bit codes in a group without ``block_size``
    or without their absmax, an absmax of the wrong count or with a value that is not >= 0,
    a moment that is neither floating, complex nor uint8 codes, an AMSGrad group converted to
    ``"8bit"`` (it keeps a maximum that 8 bits cannot), a complex moment converted to
    ``"bf16"``/``"8bit"``. Each names the group or the state entry.
    """
    validate_group(_probe(state_precision, block_size), "convert_state_dict")
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("convert_state_dict takes an optimizer state_dict: a dict with 'state' and 'param_groups'")
    if not isinstance(state_dict["state"], Mapping):
        raise TypeError(f"convert_state_dict: 'state' is a {type(state_dict['state']).__name__}, expected a dict")
    if not isinstance(state_dict["param_groups"], (list, tuple)):
        raise TypeError(
            f"convert_state_dict: 'param_groups' is a {type(state_dict['param_groups']).__name__}, expected a list"
        )
    for gi, group in enumerate(state_dict["param_groups"]):
        where = f"convert_state_dict: param_groups[{gi}]"
        if not isinstance(group, Mapping):
            raise TypeError(f"{where} is a {type(group).__name__}, expected a dict")
        if "params" not in group:
            raise ValueError(f"{where} has no 'params'")
        if not isinstance(group["params"], (list, tuple)):
            raise TypeError(f"{where}['params'] is a {type(group['params']).__name__}, expected a list")
        validate_group({**_probe(None, 256), **group}, where)
    groups = [copy.deepcopy(dict(g)) for g in state_dict["param_groups"]]  # shares nothing with the input
    source: dict[Any, tuple[str | None, int | None]] = {}
    for key, entry in state_dict["state"].items():
        if not isinstance(entry, Mapping):
            raise TypeError(f"convert_state_dict: state[{key!r}] is a {type(entry).__name__}, expected a dict")
    for gi, group in enumerate(groups):
        if state_precision == "8bit" and group.get("amsgrad", False):
            raise ValueError(
                f"convert_state_dict: param_groups[{gi}] has amsgrad=True, which state_precision='8bit' "
                "does not support (convert to 'bf16' or 'fp32')"
            )
        for key in group["params"]:
            source[key] = (group.get("state_precision"), group.get("block_size"))
        group.pop("state_dtype", None)  # a legacy key
        group["params"] = list(group["params"])
        group["state_precision"], group["block_size"] = state_precision, block_size
    for key, entry in state_dict["state"].items():
        _check_entry(key, entry, source.get(key, (None, None))[1])
    state = {}
    for key, entry in state_dict["state"].items():
        old_precision, old_block = source.get(key, (None, None))
        state[key] = _convert_entry(key, entry, old_precision, old_block, state_precision, block_size)
    out = {k: copy.deepcopy(v) for k, v in state_dict.items() if k not in ("state", "param_groups")}
    out["state"], out["param_groups"] = state, groups
    return out


def _probe(state_precision: Any, block_size: Any) -> dict[str, Any]:
    """A group holding only the options to check (validate_group's rules and messages)."""
    return dict(lr=0.0, betas=(0.9, 0.999), eps=0.0, state_precision=state_precision, block_size=block_size)


def _check_entry(key: Any, entry: Mapping[str, Any], old_block: int | None) -> None:
    """Refuse a state entry that cannot be converted (before anything is converted)."""
    for k, _ in _MOMENTS:
        if k not in entry:
            continue
        stored, where = entry[k], f"convert_state_dict: state[{key!r}][{k!r}]"
        if not isinstance(stored, Tensor):
            raise TypeError(f"{where} is a {type(stored).__name__}, not a tensor")
        if stored.dtype != torch.uint8 and not (stored.is_floating_point() or stored.is_complex()):
            raise ValueError(f"{where} is a {stored.dtype} tensor: expected floating moments or uint8 8-bit codes")
        if stored.dtype != torch.uint8:
            continue
        if old_block is None:
            raise ValueError(f"{where} holds 8-bit codes, but its param group has no 'block_size' to decode them")
        absmax = entry.get(k + "_absmax")
        if not isinstance(absmax, Tensor) or not absmax.is_floating_point():
            raise ValueError(f"{where} holds 8-bit codes without a floating {k + '_absmax'!r} tensor")
        blocks = lowp.block_count(stored.numel(), old_block)
        if absmax.dim() != 1 or absmax.numel() != blocks:
            raise ValueError(
                f"convert_state_dict: state[{key!r}][{k + '_absmax'!r}] has shape {tuple(absmax.shape)}: "
                f"{stored.numel()} codes in blocks of {old_block} need {blocks} scales"
            )
        if not bool((absmax >= 0).all()):
            bad = absmax[~(absmax >= 0)][0].item()
            raise ValueError(
                f"convert_state_dict: state[{key!r}][{k + '_absmax'!r}] holds {bad}: a block's scale is >= 0"
            )


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
        if stored.dtype == torch.uint8:
            absmax = entry[k + "_absmax"]
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
        out[k] = lowp.empty_like_layout(values, lowp.STORED_DTYPES[new])
        absmax = None
        if new == "8bit":
            absmax = out[k + "_absmax"] = torch.empty(
                lowp.block_count(values.numel(), block), dtype=torch.float32, device=values.device
            )
        # the optimizer's own encoding, to nearest for bf16 (no key: a conversion is one rounding)
        lowp.encode_(out[k], absmax, values, block, lowp.STREAM_V if signed else lowp.STREAM_S, None)
    return out
