"""Checkpoints of a lab run: everything needed to resume bitwise, verified before use.

A checkpoint holds the model and optimizer state, the RNG states (the run's own data
generator, and Python's, NumPy's and torch's global ones), the position in the data
order (step, the current epoch's permutation), the curve so far and the training time
so far. Resuming from it continues exactly where the run was: on CPU the final loss and
parameters are bitwise those of an uninterrupted run.

File layout (written atomically, see :func:`adamlab.lab.results.atomic_write`)::

    MAGIC                 b"ADAMLAB-CHECKPOINT/1\\n"
    length                8 bytes, big-endian: payload size
    sha256                32 bytes: digest of the payload
    payload               torch.save of a dict of tensors and plain Python values

A file that is truncated, corrupt, or not a checkpoint raises :class:`CheckpointError`
naming the file and what is wrong; nothing in it is used. The payload is loaded with
``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamlab.lab.data import LabInputError
from adamlab.lab.results import atomic_write

MAGIC = b"ADAMLAB-CHECKPOINT/1\n"
_HEADER = len(MAGIC) + 8 + 32


class CheckpointError(LabInputError):
    """A checkpoint that cannot be used: truncated, corrupt, foreign, or from another config."""


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = MAGIC + len(body).to_bytes(8, "big") + hashlib.sha256(body).digest()
    return atomic_write(path, header + body)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
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
    try:
        return torch.load(io.BytesIO(body), weights_only=True)
    except Exception as e:  # a valid digest over an unloadable payload: written by something else
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(e).__name__}") from None


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
