"""The corpus: the Python standard library's own source, read from the running interpreter.

Available offline on every machine that runs adamlab, with no download and no licence to
bundle. The rule that picks the files is data (:data:`RULE`) and is recorded with the
result together with the byte count and the sha256 of the bytes trained on:

* every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, in sorted order of its
  path relative to that folder (``/`` separators);
* skipping any file below a folder named ``site-packages``, ``dist-packages``, ``test``,
  ``tests``, ``idle_test`` or ``__pycache__`` (third-party code and the test suites);
* files are concatenated as they are, each followed by one ``\\n``, and the stream is cut
  at ``max_bytes``.

The corpus therefore *differs between Python versions* (and between builds that ship a
different stdlib): compare numbers only between runs whose sha256 agree.

Tokens are bytes (a vocabulary of 256). The train/validation split is by file: file ``i``
(in the sorted order) goes to validation when ``Random(split_seed).random() < val_fraction``
on its turn, so the split depends on the file list and ``split_seed`` only -- never on
the training seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RULE = (
    "*.py under sysconfig stdlib, sorted by relative path, excluding folders site-packages, "
    "dist-packages, test, tests, idle_test, __pycache__; each file + b'\\n'; cut at max_bytes; "
    "file to validation when Random(split_seed).random() < val_fraction"
)
_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8 byte stream (int64 when batched)
    val: torch.Tensor
    info: dict[str, Any]  # rule, root, file count, bytes, sha256: recorded with every result


def stdlib_files(root: Path) -> list[Path]:
    """The source files the rule picks, in order."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP]  # pruned: site-packages alone can be huge
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load(max_bytes: int, *, val_fraction: float = 0.1, split_seed: int = 0) -> Corpus:
    """Read the corpus (at most ``max_bytes``) and split it into train and validation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rng = random.Random(split_seed)
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    digest = hashlib.sha256()
    total = n_files = 0
    for path in stdlib_files(root):
        if total >= max_bytes:
            break
        data = path.read_bytes() + b"\n"
        data = data[: max_bytes - total]
        digest.update(data)
        total += len(data)
        n_files += 1
        parts["val" if rng.random() < val_fraction else "train"].append(data)
    train, val = (b"".join(parts[k]) for k in ("train", "val"))
    if not train or not val:
        raise ValueError(f"the corpus under {root} is too small to split ({total} bytes, {n_files} files)")
    info = {
        "name": "python-stdlib",
        "rule": RULE,
        "root": str(root),
        "python": sysconfig.get_python_version(),
        "files": n_files,
        "bytes": total,
        "sha256": digest.hexdigest(),
        "train_bytes": len(train),
        "val_bytes": len(val),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
    }
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(val), info)


def batch(data: torch.Tensor, batch_size: int, block: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block + 1`` bytes: inputs and next-byte targets."""
    starts = torch.randint(len(data) - block - 1, (batch_size,), generator=gen)
    windows = torch.stack([data[s : s + block + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def train_batch(corpus: Corpus, step: int, seed: int, batch_size: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: a function of (seed, step) alone, so every optimizer
    and every world size sees the same data in the same order."""
    gen = torch.Generator().manual_seed(1_000_003 * seed + step)
    return batch(corpus.train, batch_size, block, gen)


def val_batches(corpus: Corpus, n: int, batch_size: int, block: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: ``n`` batches drawn once from the split seed."""
    gen = torch.Generator().manual_seed(corpus.info["split_seed"] + 7)
    return [batch(corpus.val, batch_size, block, gen) for _ in range(n)]
