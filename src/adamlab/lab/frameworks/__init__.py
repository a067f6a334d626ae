"""The chapter in each of its three frameworks: ``adamlab --framework torch|tensorflow|mxnet``.

The book shows every listing three times. :func:`run_chapter` runs the chapter's five runs
in one framework, on the same data and with the same protocol as the torch lab, and
returns the same :class:`~adamlab.lab.chapter.ChapterResult` (book lines, table, plot,
results JSON)::

    torch        the lab itself (adamlab.lab.chapter.chapter)
    tensorflow   scratch Adam, keras.optimizers.Adam, adamlab.keras.Adam, scratch Yogi, adamlab.keras.Yogi
    mxnet        scratch Adam, gluon 'adam', adamlab.gluon.Adam, scratch Yogi, adamlab.gluon.Yogi

TensorFlow needs ``tensorflow`` and ``keras>=3``; MXNet needs its own environment (MXNet
1.9.1 with ``numpy<1.24``, legacy). Each framework is imported only when its chapter runs.
:mod:`adamlab.lab.frameworks.book_bugs` shows what the book's TensorFlow-listing bugs change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from adamlab.lab.data import LabData, LabInputError, least_squares_floor, load
from adamlab.lab.frameworks.protocol import DEFAULT_EPOCHS, FrameworkConfig, FrameworkRun, train

__all__ = ["FRAMEWORKS", "FrameworkConfig", "FrameworkRun", "chapter_configs", "run_chapter"]

FRAMEWORKS = ("torch", "tensorflow", "mxnet")
_MODULES = {"tensorflow": "adamlab.lab.frameworks.tensorflow_chapter", "mxnet": "adamlab.lab.frameworks.mxnet_chapter"}
_INSTALL = {
    "tensorflow": "pip install 'adamlab[keras]' tensorflow",
    "mxnet": "MXNet 1.9.1 needs its own environment with numpy<1.24: nox -s mxnet",
}
CHAPTER_RUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "tensorflow": (
        ("scratch", "adam"),
        ("concise", "keras.optimizers.Adam"),
        ("concise", "adamlab.keras.Adam"),
        ("scratch", "yogi"),
        ("concise", "adamlab.keras.Yogi"),
    ),
    "mxnet": (
        ("scratch", "adam"),
        ("concise", "gluon 'adam'"),
        ("concise", "adamlab.gluon.Adam"),
        ("scratch", "yogi"),
        ("concise", "adamlab.gluon.Yogi"),
    ),
}


def _framework_module(framework: str) -> tuple[Any, dict[str, str]]:
    """The chapter module of ``framework`` and the versions of what it runs on (imported here)."""
    if framework not in _MODULES:
        raise LabInputError(f"unknown framework {framework!r} (expected one of {', '.join(FRAMEWORKS)})")
    try:
        module = import_module(_MODULES[framework])
        return module, module.framework_versions()
    except ImportError as exc:
        raise LabInputError(f"--framework {framework} is not available here ({exc}); {_INSTALL[framework]}") from None


def chapter_configs(
    framework: str,
    *,
    optimizers: Sequence[str] | None = None,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    seed: int = 0,
    data: str | None = None,
) -> list[FrameworkConfig]:
    """The chapter's runs in ``framework``; ``optimizers`` ("adam", "yogi" or run names) picks some."""
    if framework not in CHAPTER_RUNS:
        raise LabInputError(f"unknown framework {framework!r} (expected one of {', '.join(FRAMEWORKS)})")
    runs = CHAPTER_RUNS[framework]
    if optimizers:
        wanted = {name.lower() for name in optimizers}
        runs = tuple(r for r in runs if r[1].lower() in wanted or _family(r[1]) in wanted)
        if not runs:
            known = ", ".join(["adam", "yogi", *(r[1] for r in CHAPTER_RUNS[framework])])
            raise LabInputError(f"no run of the {framework} chapter matches {list(optimizers)} (known: {known})")
    return [
        FrameworkConfig(framework, trainer, name, lr, batch_size, epochs or DEFAULT_EPOCHS[trainer], seed, data)
        for trainer, name in runs
    ]


def _family(name: str) -> str:
    return "yogi" if "yogi" in name.lower() else "adam"


def run_chapter(
    framework: str = "torch",
    *,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 10,
    epochs: int | None = None,
    optimizers: Sequence[str] | None = None,
    data: LabData | str | Path | None = None,
    out: str | Path | None = None,
    plot_format: str = "png",
    on_start: Callable[[Any, int], Callable[[int, int], None] | None] | None = None,
    **torch_only: Any,
) -> Any:
    """The chapter in ``framework``, with the keyword arguments of :func:`adamlab.lab.chapter.chapter`.

    ``framework="torch"`` *is* that function. Options only the torch lab has (checkpoints,
    ``configs``) raise :class:`LabInputError` for the other frameworks. Everything is
    validated before anything is trained or written.
    """
    from adamlab.lab.chapter import ChapterResult, write_outputs

    options = dict(seed=seed, lr=lr, batch_size=batch_size, epochs=epochs, optimizers=optimizers, data=data)
    if framework == "torch":
        from adamlab.lab.chapter import chapter

        return chapter(out=out, plot_format=plot_format, on_start=on_start, **options, **torch_only)
    used = sorted(k for k, v in torch_only.items() if v not in (None, False, 0))
    if used:
        raise LabInputError(f"{', '.join(used)}: only --framework torch supports this")
    module, versions = _framework_module(framework)

    from adamlab.lab.plots import FORMATS
    from adamlab.lab.results import check_output_dir

    lab_data = data if isinstance(data, LabData) else load(data)
    source = None if lab_data.source.startswith("bundled:") else lab_data.source
    configs = chapter_configs(framework, **{**options, "data": source})
    for config in configs:
        config.validate(lab_data)
    if plot_format not in FORMATS:
        raise LabInputError(f"plot format must be one of {', '.join(FORMATS)}, got {plot_format!r}")
    if out is not None:
        check_output_dir(out)

    floor = least_squares_floor(lab_data)
    runs = []
    for index, config in enumerate(configs):
        progress = on_start(config, index) if on_start else None
        model = module.make_model(config, lab_data.features)
        runs.append(train(model, config, lab_data, framework_versions=versions, progress=progress))
    result = ChapterResult(runs=runs, floor=floor, data=lab_data.describe(), seed=seed, kind="chapter")
    result.versions.update(versions)
    if out is not None:
        write_outputs(result, Path(out), plot_format)
    return result
