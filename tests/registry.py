"""The test registry: optimizer x implementation x case x dtype.

Every test of numerics runs off these tables, so a new implementation is one line in
:data:`IMPLEMENTATIONS`. An implementation that this machine cannot run (a fused kernel
that is not built here) is listed anyway and skipped with the reason.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.optim.functional import IMPLEMENTATIONS as REGISTERED

OPTIMIZERS: dict[str, type] = {"adam": adamlab.Adam, "yogi": adamlab.Yogi}


def _registered(name: str) -> Callable[[], str | None]:
    """Availability check for an optional implementation: None if usable, else the reason."""

    def check() -> str | None:
        if name not in REGISTERED:
            return f"implementation {name!r} is not registered in this build"
        try:
            from adamlab.optim.functional import get_implementation

            get_implementation(name)
        except Exception as exc:  # a kernel that cannot build here: skip, don't fail
            return f"implementation {name!r} unavailable here: {exc}"
        return None

    return check


@dataclass(frozen=True)
class Impl:
    kwargs: dict[str, Any]
    unavailable: Callable[[], str | None] = field(default=lambda: None)
    device: str = "cpu"

    @property
    def fused(self) -> bool:
        """Fused paths refuse bias_correction="recursive" (tested in test_fused_cpu.py)."""
        return bool(self.kwargs.get("fused"))


IMPLEMENTATIONS: dict[str, Impl] = {
    "single_tensor": Impl(dict(foreach=False)),
    "foreach": Impl(dict(foreach=True)),
    "single_capturable": Impl(dict(foreach=False, capturable=True)),
    "foreach_capturable": Impl(dict(foreach=True, capturable=True)),
    "fused_cpu": Impl(dict(fused=True), _registered("fused_cpu")),
}

# per-step tolerances (rtol, atol relative to the step size) when the implementation and the
# reference start a step from identical values
DTYPES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (4e-3, 4e-3),
}

# Flag cases: every combination of the conventions an implementation must honour.
WEIGHT_DECAY_MODES = {
    "none": {},
    "l2": dict(weight_decay=0.1),
    "decoupled": dict(weight_decay=0.1, decoupled_weight_decay=True),
}
FLAG_CASES: list[dict[str, Any]] = [
    dict(amsgrad=amsgrad, maximize=maximize, bias_correction=bc, **WEIGHT_DECAY_MODES[wd])
    for amsgrad, maximize, bc, wd in itertools.product(
        [False, True], [False, True], [True, False, "recursive"], WEIGHT_DECAY_MODES
    )
]


def case_id(flags: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in flags.items()) or "defaults"


# In CI (CI=true) a CPU implementation that cannot run is a failure, not a skip: the CI
# machine has a C++ compiler, so a fused_cpu that does not build there is a bug.
STRICT_IN_CI = {"fused_cpu"}


def require(impl_name: str, flags: dict[str, Any] | None = None) -> Impl:
    """The implementation, or a skip (with the reason) where it cannot run here or does not
    take ``flags`` (fused paths refuse bias_correction="recursive")."""
    impl = IMPLEMENTATIONS[impl_name]
    if impl.fused and (flags or {}).get("bias_correction") == "recursive":
        pytest.skip("fused=True refuses bias_correction='recursive' (a ValueError; see test_fused_cpu.py)")
    reason = impl.unavailable()
    if reason:
        if os.environ.get("CI") and impl_name in STRICT_IN_CI:
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return impl


def reference_hyper(group: dict[str, Any]) -> dict[str, Any]:
    """The reference's keyword arguments for an optimizer param group."""
    lr = group["lr"]
    return dict(
        lr=float(lr),
        beta1=group["betas"][0],
        beta2=group["betas"][1],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        bias_correction=group["bias_correction"],
    )


def to64(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).numpy().copy()


def state_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> reference.State:
    """An optimizer's state for ``p`` as a reference State (float64 copies)."""
    st = opt.state[p]
    return reference.State(
        t=int(st["step"].item()),
        v=to64(st["exp_avg"]),
        s=to64(st["exp_avg_sq"]),
        s_max=to64(st["max_exp_avg_sq"]) if "max_exp_avg_sq" in st else None,
    )


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# ---- low-precision state (issue 14) ------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """One way of storing the state: the optimizer's options and the parameters' dtype."""

    options: dict[str, Any]
    param_dtype: torch.dtype = torch.float32

    @property
    def precision(self) -> str | None:
        return self.options.get("state_precision")

    @property
    def stochastic_params(self) -> bool:
        return bool(self.options.get("stochastic_rounding")) and self.param_dtype == torch.bfloat16


# Every implementation in IMPLEMENTATIONS is tested with every one of these (tests/test_precision.py).
PRECISIONS: dict[str, Precision] = {
    "bf16": Precision(dict(state_precision="bf16")),
    "8bit": Precision(dict(state_precision="8bit", block_size=16)),
    "8bit-B256": Precision(dict(state_precision="8bit")),
    "bf16-fp16params": Precision(dict(state_precision="bf16"), torch.float16),
    "8bit-bf16params": Precision(dict(state_precision="8bit", block_size=32), torch.bfloat16),
    "bf16-bf16params-sr": Precision(dict(state_precision="bf16", stochastic_rounding=True), torch.bfloat16),
    "8bit-bf16params-sr": Precision(
        dict(state_precision="8bit", block_size=16, stochastic_rounding=True), torch.bfloat16
    ),
    "fp32-bf16params-sr": Precision(dict(state_precision="fp32", stochastic_rounding=True), torch.bfloat16),
    "none-bf16params-sr": Precision(dict(stochastic_rounding=True), torch.bfloat16),
}

# A spread of the flag combinations (each convention at least once with each other one).
PRECISION_FLAG_CASES: list[dict[str, Any]] = [
    {},
    dict(amsgrad=True, maximize=True),
    dict(bias_correction=False, **WEIGHT_DECAY_MODES["l2"]),
    dict(bias_correction="recursive", **WEIGHT_DECAY_MODES["decoupled"]),
    dict(maximize=True, **WEIGHT_DECAY_MODES["decoupled"]),
    dict(amsgrad=True, bias_correction="recursive", **WEIGHT_DECAY_MODES["l2"]),
]


def precision_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(precision name, rule, flags) for every case that applies: 8-bit refuses AMSGrad."""
    return [
        (name, rule, flags)
        for name, prec in PRECISIONS.items()
        for rule in OPTIMIZERS
        for flags in PRECISION_FLAG_CASES
        if not (prec.precision == "8bit" and flags.get("amsgrad"))
    ]
