"""Runs test_keras_cases.py and test_keras_sparse_cases.py once per Keras backend, each
backend in its own Python process.

Keras binds its backend at import (``KERAS_BACKEND``), so one process cannot test three
backends. Each backend whose package is missing here is skipped with the reason; in CI
all three are installed (see noxfile.py, session ``keras``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CASES = [HERE / "test_keras_cases.py", HERE / "test_keras_sparse_cases.py"]
# run -> (KERAS_BACKEND, the package it needs, extra environment)
RUNS = {
    "tensorflow": ("tensorflow", "tensorflow", {}),
    "jax": ("jax", "jax", {"ADAMLAB_KERAS_JAX_X64": "1"}),  # x64 mode: the float64 tests too
    "jax-32bit": ("jax", "jax", {"ADAMLAB_KERAS_JAX_X64": "0"}),  # JAX's default mode, as users run it
    "torch": ("torch", "torch", {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_keras_backend(run: str) -> None:
    backend, package, extra = RUNS[run]
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed (pip install 'adamlab[keras]' and a backend; or: nox -s keras)")
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"the Keras {backend} backend needs {package}, which is not installed")
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "ADAMLAB_KERAS_CASES": "1",
        **extra,
        "CUDA_VISIBLE_DEVICES": "",  # CPU only, the same numbers on every machine
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]
    done = subprocess.run(
        [*command, *map(str, CASES)],
        env=env,
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = (done.stdout + done.stderr)[-6000:]
    print(report)
    assert done.returncode == 0, f"the Keras cases failed on the {run} backend:\n{report}"
