"""MXNet Gluon optimizers (legacy support): ``adamlab.gluon.Adam`` and ``adamlab.gluon.Yogi``.

Needs ``mxnet==1.9.1`` (the final release; MXNet is in the Apache Attic since 2023), which
on Python 3.11 installs only beside ``numpy<1.24``: use its own environment
(``nox -s mxnet``). Importing this module registers the Gluon names ``"yogi"``,
``"adamlab_yogi"`` and ``"adamlab_adam"``; see :mod:`adamlab.gluon.optimizers`.
"""

try:
    import mxnet as _mxnet  # noqa: F401
except ImportError as exc:  # say what to install, not just what is missing
    raise ImportError(
        f"adamlab.gluon needs MXNet 1.9.1 ({exc}): in its own environment, "
        "pip install 'mxnet==1.9.1' 'numpy<1.24' (or run: nox -s mxnet)"
    ) from exc

from adamlab.gluon.optimizers import NAMES, Adam, Yogi

__all__ = ["NAMES", "Adam", "Yogi"]
