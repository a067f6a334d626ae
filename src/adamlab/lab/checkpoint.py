"""Checkpoints of a lab run: everything needed to resume bitwise, verified before use.

A checkpoint holds the model and optimizer state, the RNG states (the run's own data
generator, and Python's, NumPy's and torch's global ones), the position in the data
order (step, the current epoch's permutation), the curve so far and the training time
so far. Resuming from it continues exactly where the run was: on CPU the final loss and
parameters are bitwise those of an uninterrupted run.

File layout (written atomically, see :func:`adamlab.lab.results.atomic_write`)::

    MAGIC                 b"ADAMLAB-CHECKPOINT/2\\n" (the format's number)
    length                8 bytes, big-endian: payload size
    sha256                32 bytes: digest of the payload
    payload               torch.save of a dict of tensors and plain Python values

A file that is truncated, corrupt, not a checkpoint, or of another format raises
:class:`CheckpointError` naming the file and what is wrong; nothing in it is used. The
payload is loaded with ``weights_only=True``: a checkpoint cannot run code.

The checksum only says the bytes are the ones written. Before a payload is used,
:func:`validate` checks it against what this run expects (:class:`Expected`): exactly the
keys of :data:`PAYLOAD_KEYS`; the adamlab and torch versions that wrote it (a resumed run
made by two versions would be neither's result); the config, field by field (the data is
identified by its sha1, so another spelling of its path is the same data); the step in
[0, total steps]; the permutation a permutation of the rows; the curve's types and order;
the RNG states loadable; and the model and optimizer state of the same structure, dtypes
and shapes as a model of this config after one step, with constant hyperparameters equal,
step counters equal to the step, finite values (unless the curve shows the run had
diverged) and second moments >= 0. A payload that fails is refused with one line.
Warnings torch raises while loading a payload that is then refused are not shown.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamlab.lab.data import LabInputError
from adamlab.lab.results import atomic_write

_PREFIX = b"ADAMLAB-CHECKPOINT/"
FORMAT = 2  # 2: the payload records the versions that wrote it
MAGIC = _PREFIX + f"{FORMAT}\n".encode()
_HEADER = len(MAGIC) + 8 + 32
PAYLOAD_KEYS = frozenset(
    {"config", "data_sha1", "versions", "model", "generator", "global_rng", "step", "perm", "train_seconds",
     "epochs", "losses"}
)  # fmt: skip
# State entries that count optimizer steps, and second moments (never negative).
STEP_COUNTERS = frozenset({"step", "t"})
SECOND_MOMENTS = frozenset({"s", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "delta", "acc_delta"})


class CheckpointError(LabInputError):
    """A checkpoint that cannot be used: truncated, corrupt, foreign, or from another config."""


def writer_versions() -> dict[str, str]:
    """The versions a checkpoint records and a resume must match."""
    import adamlab

    return {"adamlab": str(adamlab.__version__), "torch": str(torch.__version__)}  # TorchVersion would not load


@dataclass(frozen=True)
class Expected:
    """What a checkpoint of one run must hold (built by the trainer from its config and data)."""

    config: dict[str, Any]  # the run's config as a dict; its "data" field is a path
    data_sha1: str
    rows: int  # rows of the data: the permutation's length
    total_steps: int
    epochs: float  # the curve's x never passes it
    model: dict[str, Any]  # state_dict of a model of this config after one step: the structure
    generator: torch.Tensor  # a state of the run's generator: its dtype and shape


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (the keys of :data:`PAYLOAD_KEYS` but ``versions``, which this adds)."""
    buffer = io.BytesIO()
    torch.save({**payload, "versions": writer_versions()}, buffer)
    body = buffer.getvalue()
    header = MAGIC + len(body).to_bytes(8, "big") + hashlib.sha256(body).digest()
    return atomic_write(path, header + body)


def load(path: str | Path, expect: Expected | None = None) -> dict[str, Any]:
    """The payload of the checkpoint at ``path``, verified; with ``expect``, validated too."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if raw.startswith(_PREFIX) and not raw.startswith(MAGIC):
        found = raw[len(_PREFIX) : raw.find(b"\n", len(_PREFIX), len(_PREFIX) + 20)].decode("ascii", "replace")
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}, this adamlab reads format {FORMAT} "
            "(written by another adamlab version): run without --resume"
        )
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an adamlab checkpoint (bad header)")
    if len(raw) < _HEADER:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(raw)} bytes, header incomplete)")
    length = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 8], "big")
    digest = raw[len(MAGIC) + 8 : _HEADER]
    body = raw[_HEADER:]
    if len(body) != length:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(body)} payload bytes, expected {length})")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt (sha256 mismatch)")
    with warnings.catch_warnings(record=True) as caught:  # shown only if the payload is used
        warnings.simplefilter("always")
        try:
            payload = torch.load(io.BytesIO(body), weights_only=True)
        except Exception as e:  # a valid digest over an unloadable payload: written by something else
            raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(e).__name__}") from None
        if expect is not None:
            try:
                problem = validate(payload, expect)
            except Exception as e:  # a shape of wrong the checks above did not foresee: still one line
                problem = f"has a malformed payload ({type(e).__name__}: {' '.join(str(e).split())[:100]})"
            if problem:
                raise CheckpointError(f"checkpoint {path} {problem}")
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return payload


def validate(payload: Any, expect: Expected) -> str | None:
    """None if ``payload`` can resume the run ``expect`` describes, else what is wrong (a phrase)."""
    if not isinstance(payload, dict):
        return f"holds a {type(payload).__name__}, not a checkpoint's dict"
    missing, extra = sorted(PAYLOAD_KEYS - payload.keys(), key=str), sorted(payload.keys() - PAYLOAD_KEYS, key=str)
    if missing or extra:
        what = "; ".join(filter(None, [missing and f"missing {missing}", extra and f"unexpected {extra}"]))
        return f"has the wrong structure ({what}): written by another adamlab version?"
    if not _equal(payload["versions"], writer_versions()):
        return f"was written by {_versions(payload['versions'])}; this is {_versions(writer_versions())}"
    if not _equal(payload["data_sha1"], expect.data_sha1):
        return f"was made on other data (sha1 {payload['data_sha1']!r}, this data {expect.data_sha1})"
    problem = _config_difference(payload["config"], expect.config)
    if problem:
        return f"belongs to another configuration: {problem}"
    step = payload["step"]
    if type(step) is not int or not 0 <= step <= expect.total_steps:
        return f"has step {step!r}, not an integer in [0, {expect.total_steps}]"
    problem = (
        _check_perm(payload["perm"], step, expect.rows)
        or _check_curve(payload, step, expect.epochs)
        or _check_rng(payload["generator"], payload["global_rng"], expect.generator)
    )
    if problem:
        return problem
    diverged = not all(math.isfinite(x) for x in payload["losses"])
    return _check_state(payload["model"], expect.model, "model", step=step, finite=not diverged)


def _versions(v: Any) -> str:
    if not isinstance(v, dict):
        return repr(v)
    return ", ".join(f"{k} {v.get(k)}" for k in ("adamlab", "torch"))


def _config_difference(saved: Any, current: dict[str, Any]) -> str | None:
    if not isinstance(saved, dict):
        return f"config {saved!r}"
    diffs = []
    for key in sorted(saved.keys() | current.keys(), key=str):
        if key == "data":  # the data is compared by its sha1: another spelling of its path is the same data
            continue
        if key not in saved or key not in current or not _equal(saved[key], current[key]):
            diffs.append(f"{key} {saved.get(key, '(none)')!r} there, {current.get(key, '(none)')!r} here")
    return "; ".join(diffs) or None


def _check_perm(perm: Any, step: int, rows: int) -> str | None:
    if perm is None:
        return None if step == 0 else f"has no data order (perm) at step {step}"
    if not isinstance(perm, torch.Tensor) or perm.dtype != torch.int64 or perm.shape != (rows,):
        return f"has a data order (perm) that is not {rows} int64 indices"
    if not torch.equal(torch.sort(perm).values, torch.arange(rows)):
        return f"has a data order (perm) that is not a permutation of the {rows} rows"
    return None


def _check_curve(payload: dict[str, Any], step: int, epochs: float) -> str | None:
    xs, ys, seconds = payload["epochs"], payload["losses"], payload["train_seconds"]
    if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys) <= step):
        return f"has a curve that is not two lists of equal length (at most {step} points)"
    if not all(type(x) is float and type(y) is float for x, y in zip(xs, ys)):
        return "has a curve with values that are not floats"
    if not all(a < b for a, b in zip([0.0, *xs], xs)) or (xs and not xs[-1] <= epochs):
        return f"has a curve whose epochs are not increasing in (0, {epochs}]"
    if type(seconds) not in (int, float) or not (math.isfinite(seconds) and seconds >= 0):
        return f"has a training time of {seconds!r}, not a finite number >= 0"
    return None


def _check_rng(generator: Any, global_rng: Any, template: torch.Tensor) -> str | None:
    if not _same_tensor_kind(generator, template):
        return "has a generator state of the wrong type or size"
    try:
        torch.Generator().set_state(generator)
        random.Random().setstate(global_rng["python"])
        kind, keys, pos, has_gauss, cached = global_rng["numpy"]
        np.random.RandomState().set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        if not _same_tensor_kind(global_rng["torch"], torch.get_rng_state()):
            raise ValueError
        torch.Generator().set_state(global_rng["torch"])
    except Exception:  # any shape of wrong: the trial objects are thrown away
        return "has global RNG states (python, numpy, torch) that cannot be restored"
    return None


def _same_tensor_kind(a: Any, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and a.layout == b.layout


def _check_state(value: Any, template: Any, where: str, *, step: int, finite: bool) -> str | None:
    """``value`` has ``template``'s structure; counters equal ``step``; constants equal; tensors sane."""
    name = where.rsplit(".", 1)[-1]
    if isinstance(template, dict):
        if not isinstance(value, dict) or value.keys() != template.keys():
            keys = sorted(value.keys(), key=str) if isinstance(value, dict) else type(value).__name__
            return f"has {where} = {keys}, expected keys {sorted(template.keys(), key=str)}"
        for key in template:
            problem = _check_state(value[key], template[key], f"{where}.{key}", step=step, finite=finite)
            if problem:
                return problem
        return None
    if isinstance(template, (list, tuple)):
        if type(value) is not type(template) or len(value) != len(template):
            return f"has {where} of the wrong type or length"
        for i, (v, t) in enumerate(zip(value, template)):
            problem = _check_state(v, t, f"{where}.{i}", step=step, finite=finite)
            if problem:
                return problem
        return None
    if name in STEP_COUNTERS:
        if isinstance(template, torch.Tensor) and not _same_tensor_kind(value, template):
            return f"has {where} of the wrong type, dtype or shape"
        if type(value) is not type(template) or (value.item() if isinstance(value, torch.Tensor) else value) != step:
            return f"has {where} = {_short(value)}, not the step {step}"
        return None
    if isinstance(template, torch.Tensor) and ".param_groups." not in where:
        if not _same_tensor_kind(value, template):
            kind = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            return f"has {where} of {kind}, expected {template.dtype} {tuple(template.shape)}"
        if value.is_floating_point():
            if finite and not torch.isfinite(value).all():
                return f"has non-finite values in {where} (the run's curve shows no divergence)"
            if name in SECOND_MOMENTS and (value < 0).any():
                return f"has negative values in {where} (a second moment)"
        return None
    # A constant (a hyperparameter, the params' indices): equal to this config's.
    if not _equal(value, template):
        return f"has {where} = {_short(value)}, this run's is {_short(template)}"
    return None


def _equal(a: Any, b: Any) -> bool:
    """Equal values of the same types, tensors and containers included (never a tensor's ``==``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return _same_tensor_kind(a, b) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _short(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, torch.Tensor) and value.numel() <= 4 else value)
    return text if len(text) <= 60 else text[:57] + "..."


def global_rng_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's global RNG states, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }


def set_global_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
