"""Input validation: the one place every front end checks its input.

The Keras and Gluon adapters call :func:`validate_hyperparameters`. The torch optimizers
call :func:`validate_params` (the constructor's ``params``), :func:`validate_group_params`
and :func:`validate_group` (every parameter group: the constructor's, ``add_param_group``'s
and every group of a loaded state_dict, through the same function) and
:func:`validate_state_dict` (a whole checkpoint, checked before anything is loaded).

Each bad value raises ``ValueError`` (``TypeError`` where Python or torch would) with a
message that names the group, the parameter and the value (``Invalid beta parameter at
index 0: 1.2``), in the wording ``torch.optim.Adam`` uses where it has one, and with the
exception type torch raises for the same input. Nothing here uses ``assert``. The module
imports no framework at import time (the Keras and Gluon adapters use it without torch);
the torch-only checks import torch when they run.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

BIAS_CORRECTIONS: tuple[Any, ...] = (True, False, "recursive")


def _is_tensor(x: Any) -> bool:
    # Duck-typed so that this module never imports a framework.
    return hasattr(x, "dim") and hasattr(x, "numel") and hasattr(x, "item")


def validate_hyperparameters(
    *,
    lr: Any = None,
    betas: Any = None,
    eps: Any = None,
    weight_decay: Any = None,
    initial_accumulator_value: Any = None,
    bias_correction: Any = True,
) -> None:
    """Check every hyperparameter that was given (``None`` means "not given").

    For the Keras and Gluon adapters, whose ``None`` means "no weight decay" or "a
    schedule, not a number": the values given go through :func:`validate_group`, the
    torch optimizers' check, so every front end applies the same rules and messages.
    """
    given = dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, initial_accumulator_value=initial_accumulator_value
    )
    group: dict[str, Any] = dict(lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, initial_accumulator_value=0.0)
    group.update({k: v for k, v in given.items() if v is not None}, bias_correction=bias_correction)
    validate_group(group)


def check_known_keys(where: str, given: Mapping[str, Any], known: set[str]) -> None:
    """Unknown keywords raise ``TypeError`` naming them, like a Python call would."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s): {', '.join(map(repr, unknown))}")


# ---- torch optimizers: params, groups and state_dicts -----------------------------------------
class OptionConflict(ValueError, RuntimeError):
    """Two options that cannot be set together (``fused`` and ``foreach``, ...).

    Both a ``ValueError`` (adamlab's type for bad input) and a ``RuntimeError`` (what
    ``torch.optim.Adam`` raises for the same conflicts), so code written for either catches it.
    """


FLAGS = (  # the boolean options of a group (stored as bool)
    "amsgrad",
    "maximize",
    "capturable",
    "differentiable",
    "decoupled_weight_decay",
    "skip_nonfinite",
    "stochastic_rounding",
)
# the values of state_precision (adamlab.optim.precision takes them from here)
STATE_PRECISIONS: tuple[Any, ...] = (None, "fp32", "bf16", "8bit")
LOW_PRECISIONS = ("bf16", "8bit")
LOW_PRECISION_DTYPES = ("torch.float32", "torch.bfloat16", "torch.float16")
LOW_PRECISION_DEVICES = ("cpu", "cuda", "meta")
BLOCK_SIZES = (16, 8192)  # 8bit: a power of two in this range
SEED_LIMIT = 2**32
_NONNEGATIVE = (
    ("eps", "epsilon value"),
    ("weight_decay", "weight_decay value"),
    ("initial_accumulator_value", "initial_accumulator_value (s0)"),
    ("initial_exp_avg_value", "initial_exp_avg_value (v0)"),
)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _show(value: Any) -> str:
    """A value for a message: tensors as their number (or shape), the rest as repr."""
    if _is_tensor(value):
        if value.numel() == 1:
            return repr(float(value.detach().cpu().item())) if hasattr(value, "detach") else repr(value.item())
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def _one_element(name: str, value: Any, where: str) -> float:
    """A 1-element real tensor's value (torch's rule for tensor hyperparameters)."""
    if value.numel() != 1:
        raise ValueError(f"{_prefix(where)}Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
    if getattr(value, "is_complex", lambda: False)() or str(getattr(value, "dtype", "")) == "torch.bool":
        raise ValueError(f"{_prefix(where)}Invalid {name}: a tensor of dtype {value.dtype}")
    return float(value.detach().cpu().item())


def _number(at: str, label: str, value: Any) -> float:
    """A Python/NumPy real as a float (NaN included: the range checks refuse it, naming it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{at}Invalid {label}: {value!r} (expected a real number)")
    return float(value)


def _flag(where: str, name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    try:
        ok = not isinstance(value, (str, bytes)) and value in (True, False)
    except Exception:  # an array's ambiguous truth value, an __eq__ that raises
        ok = False
    if not ok:
        expected = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"{_prefix(where)}Invalid {name}: {value!r} (expected {expected})")


def validate_group(group: Mapping[str, Any], where: str = "") -> None:
    """Check every hyperparameter of one parameter group (the defaults merged in).

    The same function checks the constructor's defaults, each group given to the
    constructor or to ``add_param_group``, and each group of a state_dict about to be
    loaded. ``where`` names the group in messages (``"param_groups[1]"``; empty for the
    constructor's own arguments, whose messages then read exactly like torch's).

    Rules beyond plain ranges are torch's, with torch's exception types: a tensor ``lr`` or
    tensor betas must be 1-element; betas are both numbers or both tensors; a tensor
    ``lr`` or tensor betas with ``foreach=True`` need ``capturable=True``; ``fused`` does
    not go with ``foreach`` or ``differentiable`` (:class:`OptionConflict`).
    """
    at = _prefix(where)
    capturable, foreach = group.get("capturable", False), group.get("foreach")
    for name in FLAGS:
        _flag(where, name, group.get(name, False))
    _flag(where, "foreach", foreach, allow_none=True)
    _flag(where, "fused", group.get("fused"), allow_none=True)

    lr = group.get("lr")
    if _is_tensor(lr):
        if foreach and not capturable:
            raise ValueError(f"{at}lr as a Tensor is not supported for capturable=False and foreach=True")
        value = _one_element("lr", lr, where)
    else:
        value = _number(at, "learning rate", lr)
    if not 0.0 <= value < math.inf:
        raise ValueError(f"{at}Invalid learning rate: {_show(lr) if _is_tensor(lr) else lr}")

    betas = group.get("betas")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{at}Invalid betas: {_show(betas)} (expected a pair (beta1, beta2))")
    if _is_tensor(betas[0]) != _is_tensor(betas[1]):
        raise ValueError(
            f"{at}betas must be either both floats or both Tensors, got ({_show(betas[0])}, {_show(betas[1])})"
        )
    for i, beta in enumerate(betas):
        if _is_tensor(beta):
            if foreach and not capturable:
                raise ValueError(f"{at}betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            value = _one_element(f"betas[{i}]", beta, where)
        else:
            value = _number(at, f"beta parameter at index {i}", beta)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{at}Invalid beta parameter at index {i}: {_show(beta) if _is_tensor(beta) else beta}")

    for key, label in _NONNEGATIVE:
        raw = group.get(key, 0.0)
        if not 0.0 <= _number(at, label, raw) < math.inf:
            raise ValueError(f"{at}Invalid {label}: {raw}")
    bias_correction = group.get("bias_correction", True)
    if not any(bias_correction is c or (isinstance(c, str) and bias_correction == c) for c in BIAS_CORRECTIONS):
        raise ValueError(f"{at}Invalid bias_correction: {bias_correction!r} (expected True, False or 'recursive')")
    _low_precision_options(group, at)

    fused, differentiable = group.get("fused"), group.get("differentiable", False)
    if fused and foreach:
        raise OptionConflict(f"{at}`fused` and `foreach` cannot be `True` together (fused=True and foreach=True)")
    if fused and bias_correction == "recursive":
        raise OptionConflict(
            f"{at}bias_correction='recursive' is not supported with fused=True (the fused kernels do not "
            "implement it); use foreach=True or foreach=False"
        )
    if fused and differentiable:
        raise OptionConflict(f"{at}`fused` does not support `differentiable` (fused=True and differentiable=True)")
    if differentiable and foreach:
        raise OptionConflict(
            f"{at}differentiable=True runs the single-tensor implementation; foreach=True cannot be set with it "
            "(torch.optim.Adam fails at its first step: _foreach ops don't support autograd)"
        )


def _low_precision_options(group: Mapping[str, Any], at: str) -> None:
    """state_precision, block_size, rounding_seed and the options they cannot go with."""
    if "state_dtype" in group:
        raise ValueError(
            f"{at}state_dtype was replaced by state_precision: use state_precision='fp32' for "
            f"state_dtype=torch.float32, or None (got state_dtype={group['state_dtype']!r})"
        )
    precision = group.get("state_precision")
    if not any(precision is p or (isinstance(precision, str) and precision == p) for p in STATE_PRECISIONS):
        raise ValueError(f"{at}Invalid state_precision: {precision!r} (expected None, 'fp32', 'bf16' or '8bit')")
    block_size = group.get("block_size", 256)
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or not BLOCK_SIZES[0] <= block_size <= BLOCK_SIZES[1]
        or block_size & (block_size - 1)
    ):
        raise ValueError(
            f"{at}Invalid block_size: {block_size!r} "
            f"(expected a power of two from {BLOCK_SIZES[0]} to {BLOCK_SIZES[1]})"
        )
    seed = group.get("rounding_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{at}Invalid rounding_seed: {seed!r} (expected an integer with 0 <= seed < 2**32)")
    if precision == "8bit" and group.get("amsgrad", False):
        raise ValueError(
            f"{at}state_precision='8bit' does not support amsgrad=True (a running maximum of s re-quantized "
            "blockwise can fall below a value it held); use state_precision='bf16' or 'fp32' with amsgrad"
        )
    if group.get("differentiable", False):
        if precision in LOW_PRECISIONS:
            raise ValueError(
                f"{at}state_precision={precision!r} does not support differentiable=True (rounding the stored "
                "state has no gradient); use state_precision=None or 'fp32'"
            )
        if group.get("stochastic_rounding", False):
            raise ValueError(
                f"{at}stochastic_rounding=True does not support differentiable=True (rounding has no gradient)"
            )


def validate_params(params: Any, where: str) -> list[Any]:
    """The constructor's ``params`` as a list, or ``TypeError``/``ValueError`` as torch.

    A bare tensor raises ``TypeError`` (torch's message: an optimizer takes an iterable of
    tensors or of group dicts); so does a set (its order, hence the state_dict's, changes
    between runs) and a non-iterable. An empty list raises ``ValueError``. Each group is
    then checked by :func:`validate_group_params` as it is added.
    """
    import torch

    if isinstance(params, torch.Tensor):
        raise TypeError(
            "params argument given to the optimizer should be an iterable of Tensors or dicts, "
            f"but got {torch.typename(params)} ({where} takes [tensor], not tensor)"
        )
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where}: optimizer parameters need to be organized in ordered collections, but the ordering "
            "of tensors in sets will change between runs. Please use a list instead."
        )
    try:
        listed = list(params)
    except TypeError:
        raise TypeError(
            f"params argument given to the optimizer should be an iterable of Tensors or dicts, "
            f"but got {type(params).__name__}"
        ) from None
    if not listed:
        raise ValueError(f"{where} got an empty parameter list")
    return listed


def validate_group_params(
    group: Any,
    where: str,
    existing: list[Mapping[str, Any]],
    differentiable: bool,
    defaults: Mapping[str, Any] | None = None,
) -> list[Any]:
    """A new group's ``params`` as a list, checked; nothing of ``group`` is changed here.

    Each entry is a tensor or a ``(name, tensor)`` pair; a tensor listed twice in the group,
    or already in one of the ``existing`` groups, raises ``ValueError`` naming both places.
    torch only warns about a duplicate within a group, but a duplicate is updated twice per
    step (and, in a multithreaded fused kernel, by two threads at once: a data race), so
    adamlab refuses it on every path. Non-leaf tensors are refused unless ``differentiable``.

    A group that runs fused (its ``fused``, else the ``defaults``' one, is True; or both
    ``fused`` and ``foreach`` are unset and its state is low-precision, which runs the fused
    kernel by default) also refuses two distinct tensors whose memory overlaps (two
    Parameters over one storage): the fused kernel updates a group's tensors at once, on
    several threads. The loop and foreach paths update them one after another, as torch
    does, and accept them.
    """
    import torch

    if not isinstance(group, Mapping):
        raise TypeError(f"param_group must be a dict, but got {type(group).__name__}")
    if "params" not in group:
        raise ValueError(f"{where} has no 'params' (a parameter group is a dict with a 'params' list)")
    params = group["params"]
    if isinstance(params, torch.Tensor):
        listed = [params]
    elif isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where}: optimizer parameters need to be organized in ordered collections, but the ordering "
            "of tensors in sets will change between runs. Please use a list instead."
        )
    elif isinstance(params, (str, bytes, Mapping)):
        raise TypeError(f"{where}['params'] must be a tensor or a list of tensors, got {type(params).__name__}")
    else:
        try:
            listed = list(params)
        except TypeError:
            raise TypeError(
                f"{where}['params'] must be a tensor or a list of tensors, got {type(params).__name__}"
            ) from None
    seen: dict[int, str] = {}
    for gi, other in enumerate(existing):
        for pi, p in enumerate(other["params"]):
            seen[id(p)] = f"param_groups[{gi}]['params'][{pi}]"
    mine: dict[int, int] = {}
    for i, entry in enumerate(listed):
        tensor = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"optimizer can only optimize Tensors, but one of the params is {torch.typename(tensor)} "
                f"({where}['params'][{i}])"
            )
        if not differentiable and not (tensor.is_leaf or tensor.retains_grad):
            raise ValueError(f"can't optimize a non-leaf Tensor ({where}['params'][{i}])")
        if id(tensor) in mine:
            raise ValueError(
                f"{where}['params'][{i}] is the same tensor as {where}['params'][{mine[id(tensor)]}]: "
                "adamlab refuses a parameter group with duplicate parameters (torch.optim warns; "
                "the tensor would be updated twice per step)"
            )
        if id(tensor) in seen:
            raise ValueError(
                f"some parameters appear in more than one parameter group: {where}['params'][{i}] is {seen[id(tensor)]}"
            )
        mine[id(tensor)] = i
    precision = group.get("state_precision", None if defaults is None else defaults.get("state_precision"))
    if isinstance(precision, str) and precision in LOW_PRECISIONS:
        for i, entry in enumerate(listed):
            tensor = entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry
            if str(tensor.dtype) not in LOW_PRECISION_DTYPES:
                raise ValueError(
                    f"{where}['params'][{i}] has dtype {tensor.dtype}: state_precision={precision!r} takes "
                    "float32, bfloat16 and float16 parameters (float64 and complex ones keep full-precision "
                    "state: use state_precision=None or 'fp32' for their group)"
                )
            if tensor.device.type not in LOW_PRECISION_DEVICES:
                raise ValueError(
                    f"{where}['params'][{i}] is on {tensor.device.type}: state_precision={precision!r} runs on "
                    f"{' and '.join(LOW_PRECISION_DEVICES[:2])} tensors"
                )

    settings = {**(defaults or {}), **group}
    fused = settings.get("fused")
    by_default = fused_by_default(settings)
    if _is_true(fused) or by_default:
        why = (
            "with fused=True"
            if _is_true(fused)
            else "with low-precision state (which runs the fused kernel by default)"
        )
        _refuse_overlaps(
            where, [entry[1] if isinstance(entry, tuple) and len(entry) == 2 else entry for entry in listed], why
        )
    return listed


def fused_by_default(group: Mapping[str, Any]) -> bool:
    """Whether a group runs the fused kernel without asking for it: ``fused`` and ``foreach``
    both unset, and an update the kernels run and whose readable path is slow -- low-precision
    state or stochastic rounding -- not ``differentiable`` nor ``bias_correction="recursive"``
    (:func:`adamlab.optim.functional.choose` then picks the fused kernel where this machine
    has it). The one rule, for the step, the state's creation and the checks here."""
    precision = group.get("state_precision")
    bias_correction = group.get("bias_correction")
    return (
        group.get("fused") is None
        and group.get("foreach") is None
        and not _is_true(group.get("differentiable"))
        and ((isinstance(precision, str) and precision in LOW_PRECISIONS) or _is_true(group.get("stochastic_rounding")))
        and not (isinstance(bias_correction, str) and bias_correction == "recursive")
    )


def _is_true(value: Any) -> bool:
    try:
        return not isinstance(value, (str, bytes)) and value in (True,)
    except Exception:  # an array's ambiguous truth value: validate_group refuses it by name
        return False


def _refuse_overlaps(where: str, tensors: list[Any], why: str = "with fused=True") -> None:
    """``ValueError`` naming the first two of ``tensors`` whose byte ranges overlap (on one
    device). Empty tensors, and tensors without storage (meta, wrapper subclasses), are skipped."""
    spans = []
    for i, t in enumerate(tensors):
        try:
            if t.numel() == 0 or t.device.type == "meta":
                continue
            start = t.data_ptr()
        except Exception:  # no storage to share
            continue
        if start == 0:
            continue
        extent = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
        spans.append((str(t.device), start, start + extent * t.element_size(), i))
    spans.sort()
    reach: dict[str, tuple[int, int]] = {}  # device -> (the furthest end so far, whose)
    for device, start, end, i in spans:
        far, j = reach.get(device, (0, -1))
        if start < far:
            first, second = sorted((i, j))
            raise ValueError(
                f"{where}['params'][{second}] shares memory with {where}['params'][{first}]: {why} "
                "adamlab refuses a parameter group whose parameters overlap (the fused kernel would write the "
                "shared elements from two threads at once); give each its own storage (clone it), or use "
                "foreach=True"
            )
        if end > far:
            reach[device] = (end, i)


def _state_tensor(name: str, key: str, value: Any, p: Any) -> None:
    """One moment tensor of a loaded state: a tensor shaped like p, real/complex like p, finite."""
    import torch

    what = f"state_dict entry {key!r} for {name}"
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} has shape {type(value).__name__}: expected a tensor shaped like the parameter")
    if value.shape != p.shape:
        raise ValueError(f"{what} has shape {tuple(value.shape)}")
    if value.is_complex() != p.is_complex() or not (value.is_floating_point() or value.is_complex()):
        raise ValueError(
            f"{what} has dtype {value.dtype}: expected a {'complex' if p.is_complex() else 'floating'} dtype"
        )
    if value.device.type == "meta":
        return
    real = torch.view_as_real(value) if value.is_complex() else value
    if not bool(torch.isfinite(real).all()):
        raise ValueError(f"{what} holds inf or NaN (first bad value {real[~torch.isfinite(real)][0].item()!r})")
    if key != "exp_avg" and bool((real < 0).any()):
        raise ValueError(f"{what} holds a negative value ({real.min().item()!r}): a second moment is >= 0")


def _step_value(name: str, value: Any) -> None:
    import torch

    ok = False
    if isinstance(value, torch.Tensor):
        if (
            value.dim() == 0
            and not value.is_complex()
            and value.dtype is not torch.bool
            and value.device.type != "meta"
        ):
            number = value.item()
            ok = True
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number, ok = value, True
    if ok:
        ok = math.isfinite(number) and number >= 0 and float(number).is_integer()
    if not ok:
        shown = (
            f"a tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor) and value.dim()
            else _show(value)
        )
        raise ValueError(
            f"state_dict entry 'step' for {name} is {shown}: expected a step count (an integer >= 0, "
            "as a number or a 0-dim tensor)"
        )


def validate_state_dict(
    optimizer: Any, state_dict: Any, keep: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> None:
    """Check a whole state_dict against ``optimizer`` before anything is loaded.

    Structure (a dict with a ``state`` dict and a ``param_groups`` list, the group and
    parameter counts, each group a dict with a ``params`` list of distinct ids), every
    group's hyperparameters through :func:`validate_group` (as loaded: the saved values over
    the optimizer's, with the ``keep`` keys the optimizer's own), and every parameter's state:
    the ``required`` keys (plus ``max_exp_avg_sq`` with amsgrad) present, ``step`` a count
    (integer >= 0), each moment a finite tensor shaped like its parameter, real or complex like
    it, the second moments >= 0. The first problem raises ``ValueError`` naming the group,
    the parameter and the value.
    """
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("optimizer state_dict must be a dict with keys 'state' and 'param_groups'")
    state, saved_groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(state, Mapping):
        raise ValueError(f"state_dict['state'] must be a dict (parameter id -> state), got {type(state).__name__}")
    if not isinstance(saved_groups, (list, tuple)):
        raise ValueError(f"state_dict['param_groups'] must be a list of dicts, got {type(saved_groups).__name__}")
    groups = optimizer.param_groups
    if len(saved_groups) != len(groups):
        raise ValueError(f"state_dict has {len(saved_groups)} parameter group(s), the optimizer has {len(groups)}")
    ids: dict[Any, str] = {}
    for gi, (group, saved) in enumerate(zip(groups, saved_groups)):
        where = f"state_dict param_groups[{gi}]"
        if not isinstance(saved, Mapping):
            raise ValueError(f"{where} must be a dict with a 'params' list, got {_show(saved)[:80]}")
        if "params" not in saved:
            raise ValueError(f"{where} has no 'params' (its keys: {sorted(map(str, saved))})")
        keys = saved["params"]
        if not isinstance(keys, (list, tuple)):
            raise ValueError(f"{where}['params'] must be a list of parameter ids, got {_show(keys)[:80]}")
        if len(keys) != len(group["params"]):
            raise ValueError(
                f"parameter group {gi}: state_dict has {len(keys)} parameter(s), "
                f"the optimizer has {len(group['params'])}"
            )
        for pi, key in enumerate(keys):
            try:
                hash(key)
            except TypeError:
                raise ValueError(f"{where}['params'][{pi}] is {_show(key)[:80]}, not a parameter id") from None
            if key in ids:
                raise ValueError(f"{where}['params'][{pi}] repeats parameter id {key!r} of {ids[key]}")
            ids[key] = f"param_groups[{gi}]['params'][{pi}]"
        ignored = ("params", "param_names", "state_dtype")  # state_dtype: a legacy key, dropped on load
        loaded = {
            **{k: v for k, v in group.items() if k not in ignored},
            **{k: v for k, v in saved.items() if k not in ignored},
        }
        validate_group(loaded, where)
        if keep:
            validate_group(
                {**loaded, **{k: group[k] for k in keep if k in group}},
                where + " (with this optimizer's " + ", ".join(keep) + ")",
            )
        precision, block_size = _same_precision(where, group, saved)
        needed = tuple(required) + (("max_exp_avg_sq",) if loaded.get("amsgrad") else ())
        if precision == "8bit":
            needed += ("exp_avg_absmax", "exp_avg_sq_absmax")
        for pi, (p, key) in enumerate(zip(group["params"], keys)):
            entry = state.get(key)
            if not entry:
                continue  # a parameter that has not stepped yet (None, or the {} a lookup leaves)
            name = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
            if not isinstance(entry, Mapping):
                raise ValueError(f"state_dict entry for {name} must be a dict, got {_show(entry)[:80]}")
            missing = [k for k in needed if k not in entry]
            if missing:
                raise ValueError(f"state_dict entry for {name} is missing {missing}")
            if "step" in entry:
                _step_value(name, entry["step"])
            if "rounding_seed" in entry:
                _seed_value(name, entry["rounding_seed"])
            if precision == "8bit":
                _state_8bit(name, entry, p, block_size)
                continue
            for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if k in entry:
                    _state_tensor(name, k, entry[k], p)


def _same_precision(where: str, group: Mapping[str, Any], saved: Mapping[str, Any]) -> tuple[Any, int]:
    """The optimizer group's (state_precision, block_size), or ``ValueError`` when the saved
    group's state is stored in another precision (None and "fp32" are both plain floating
    state: the moments are recast on load, as ``torch.optim`` does)."""
    mine, block = group.get("state_precision"), group.get("block_size", 256)
    theirs, their_block = saved.get("state_precision"), saved.get("block_size", 256)
    plain = (None, "fp32")
    if (mine in plain and theirs in plain) or (mine == theirs and (mine != "8bit" or block == their_block)):
        return mine, block
    size = f", block_size={block}" if mine == "8bit" else ""
    held = f"state_precision={theirs!r}" + (f" (block_size={their_block})" if theirs == "8bit" else "")
    raise ValueError(
        f"{where} holds optimizer state in {held}, but this optimizer's group has "
        f"state_precision={mine!r}{f' (block_size={block})' if mine == '8bit' else ''}: convert it first with "
        f"adamlab.convert_state_dict(state_dict, {mine!r}{size})"
    )


def _seed_value(name: str, value: Any) -> None:
    import torch

    ok = (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and not value.is_floating_point()
        and not value.is_complex()
    )
    ok = ok and value.dtype is not torch.bool and value.device.type != "meta" and 0 <= int(value) < SEED_LIMIT
    if not ok:
        raise ValueError(
            f"state_dict entry 'rounding_seed' for {name} is {_show(value)}: expected a 0-dim integer tensor "
            "with 0 <= seed < 2**32"
        )


def _state_8bit(name: str, entry: Mapping[str, Any], p: Any, block_size: int) -> None:
    """An 8-bit state: uint8 codes shaped like p, float32 absmax per block, finite and >= 0."""
    import torch

    from adamlab.optim._dtensor import local_tensor
    from adamlab.optim.precision import block_count

    blocks = block_count(local_tensor(p).numel(), block_size)
    for k in ("exp_avg", "exp_avg_sq"):
        value = entry[k]
        what = f"state_dict entry {k!r} for {name}"
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.shape != p.shape:
            shown = (
                f"a {value.dtype} tensor of shape {tuple(value.shape)}"
                if isinstance(value, torch.Tensor)
                else _show(value)
            )
            raise ValueError(
                f"{what} is {shown}: state_precision='8bit' stores uint8 codes shaped like the parameter "
                "(a state in another precision converts with adamlab.convert_state_dict)"
            )
        scale = entry[k + "_absmax"]
        what = f"state_dict entry {k + '_absmax'!r} for {name}"
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or tuple(scale.shape) != (blocks,):
            shown = (
                f"a {scale.dtype} tensor of shape {tuple(scale.shape)}"
                if isinstance(scale, torch.Tensor)
                else _show(scale)
            )
            raise ValueError(f"{what} is {shown}: expected float32 of shape ({blocks},), one per block of {block_size}")
        if scale.device.type != "meta" and not bool((torch.isfinite(scale) & (scale >= 0)).all()):
            raise ValueError(f"{what} holds a negative, inf or NaN scale: expected finite values >= 0")
