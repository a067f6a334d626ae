"""Environments for the chapter's other two frameworks, each built from scratch.

    nox -s keras     Keras 3 on TensorFlow, JAX and PyTorch: adamlab.keras against the
                     float64 reference on each backend, the chapter in TensorFlow, and the
                     compatibility matrix's optax and Keras rows (tests/test_peers.py)
    nox -s mxnet     MXNet 1.9.1 (legacy): adamlab.gluon against the reference, gluon.Trainer,
                     the chapter in MXNet, and the matrix's MXNet row

Why separate environments: Keras picks one backend per process and TensorFlow's CPU wheel
is large (about 2 GB installed with JAX), so the main ``.venv`` stays lean; MXNet 1.9.1,
the final release (the project is in the Apache Attic since 2023), installs on Python
3.11 only beside ``numpy<1.24``, which the main environment cannot have. adamlab itself
needs only NumPy, so neither environment gets torch from adamlab; the ``keras`` session
adds ``ADAMLAB_TORCH`` (default ``torch==2.13.0``, the pin ``scripts/bootstrap`` uses) for
Keras's torch backend.

Sessions use the interpreter that runs nox and the standard library's venv, except that
``mxnet`` on Python 3.12 or newer runs on ``python3.11`` from PATH, and fails saying so
when there is none (it never skips). Extra arguments go to pytest: ``nox -s keras -- -x``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["keras", "mxnet"]
nox.options.error_on_missing_interpreters = True

TEST_TOOLS = ("pytest>=8", "hypothesis>=6.100")
# Keras 3 and two of its backends, CPU builds. The floor keras 3.3: the adapter needs
# add_variable_from_reference(initializer=) and the base class's gradient accumulation,
# both in 3.3.3 and neither in 3.0.0 (read from the wheels; 3.1/3.2 not checked). Only
# the newest release is tested here (keras 3.15.1, tensorflow-cpu 2.21.0, jax 0.10.2).
KERAS_STACK = ("keras>=3.3", "tensorflow-cpu>=2.16", "jax[cpu]>=0.4.30", "optax>=0.2")
MXNET_STACK = ("mxnet==1.9.1", "numpy<1.24")


def _python311_on_path() -> bool:
    """Whether ``python3.11`` on PATH runs and is 3.11 (a pyenv shim may not run)."""
    exe = shutil.which("python3.11")
    if exe is None:
        return False
    check = "import sys; print(sys.version_info[:2] == (3, 11))"
    try:
        done = subprocess.run([exe, "-c", check], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "True"


# numpy<1.24 has no wheels for Python 3.12+, so neither has MXNet 1.9.1 a working install
# there. None: the interpreter that runs nox; False: no venv, the session only fails.
if sys.version_info < (3, 12):
    MXNET_PYTHON: str | bool | None = None
else:
    MXNET_PYTHON = "3.11" if _python311_on_path() else False


@nox.session
def keras(session: nox.Session) -> None:
    """adamlab.keras on the TensorFlow, JAX and torch backends; the chapter in TensorFlow."""
    session.install(*KERAS_STACK, *TEST_TOOLS)
    session.install(os.environ.get("ADAMLAB_TORCH", "torch==2.13.0"))  # Keras's torch backend only
    session.install("-e", ".[keras,lab-core]")  # lab-core: `adamlab --framework tensorflow` starts here
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_keras.py",
        "tests/test_peers.py",
        "tests/test_frameworks.py",
        "tests/test_frameworks_book_bugs.py",
        *session.posargs,
        env={"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )


@nox.session(python=MXNET_PYTHON)
def mxnet(session: nox.Session) -> None:
    """adamlab.gluon in MXNet 1.9.1 (legacy support); the chapter in MXNet."""
    if MXNET_PYTHON is False:
        running = ".".join(map(str, sys.version_info[:2]))
        session.error(
            f"MXNet 1.9.1 needs Python 3.11 (numpy<1.24), nox runs on {running} and python3.11 is not on PATH"
        )
    session.install(*MXNET_STACK, *TEST_TOOLS)
    session.install("-e", ".[mxnet,lab-core]")  # lab-core: `adamlab --framework mxnet` starts here
    session.run("python", "-c", "import numpy, mxnet; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__)")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_gluon.py",
        "tests/test_peers.py",
        "tests/test_frameworks.py",
        *session.posargs,
    )
