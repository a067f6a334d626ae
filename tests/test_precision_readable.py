"""The readable low-precision path (issue 14, review F2): who runs it, and what it costs.

Low-precision state runs the fused kernel by default (fused and foreach unset); the readable
path (foreach/loop) walks each parameter in pieces of ``precision.CHUNK`` elements so that
its temporaries stay bounded whatever the parameter's size, with the same bits as one piece.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adamlab
from adamlab import reference
from adamlab.optim import functional, precision
from adamlab.optim import optimizer as optimizer_module

CPU = torch.device("cpu")


@pytest.mark.parametrize("available", [True, False])
def test_choose_runs_the_fused_kernel_by_default_for_low_precision(monkeypatch, available: bool) -> None:
    monkeypatch.setattr(functional, "_unavailable", {"fused_cpu": None if available else ["not built", False]})
    fused = "fused_cpu" if available else "foreach"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default choice never warns, even when it falls back
        assert functional.choose(None, None, CPU, False, True) == fused
        assert functional.choose(None, None, CPU, False, False) == "foreach"  # plain state: as before
        assert functional.choose(False, None, CPU, False, True) == "foreach"  # explicit: readable
        assert functional.choose(None, True, CPU, False, True) == "foreach"
        assert functional.choose(None, False, CPU, False, True) == "single_tensor"
        assert functional.choose(None, None, CPU, True, True) == "differentiable"
        assert functional.choose(None, None, torch.device("meta"), False, True) == "foreach"
    if not available:  # fused=True still warns once, naming why
        with pytest.warns(RuntimeWarning, match="not built"):
            assert functional.choose(True, None, CPU, False, True) == "foreach"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (dict(state_precision="bf16"), "fused_cpu"),
        (dict(state_precision="8bit"), "fused_cpu"),
        (dict(stochastic_rounding=True), "fused_cpu"),
        (dict(state_precision="bf16", fused=False), "foreach"),
        (dict(state_precision="8bit", foreach=True), "foreach"),
        (dict(state_precision="bf16", foreach=False), "single_tensor"),
        (dict(state_precision="bf16", bias_correction="recursive"), "foreach"),  # the kernels lack it
        (dict(state_precision="fp32"), "foreach"),
        (dict(), "foreach"),
    ],
)
def test_the_optimizer_dispatches_low_precision_to_the_fused_kernel(monkeypatch, options, expected) -> None:
    monkeypatch.setattr(functional, "_unavailable", {"fused_cpu": None})
    seen = []
    monkeypatch.setattr(
        optimizer_module, "adam_family_update", lambda *a, implementation, **k: seen.append(implementation)
    )
    p = torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16 if "stochastic_rounding" in options else torch.float32))
    opt = adamlab.Adam([p], **options)
    p.grad = torch.ones_like(p)
    opt.step()
    assert seen == [expected]
    # a group that runs fused keeps its step count as the kernels do: float32, on p's device
    torch.set_default_dtype(torch.float64)
    try:
        q = torch.nn.Parameter(torch.randn(4, dtype=p.dtype))
        opt = adamlab.Adam([q], **options)
        q.grad = torch.ones_like(q)
        opt.step()
        assert opt.state[q]["step"].dtype == (torch.float32 if expected.startswith("fused") else torch.float64)
    finally:
        torch.set_default_dtype(torch.float32)


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 7, 9, 11), (300,), (), (64, 33)]
    out = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen)
        out.append(torch.nn.Parameter(p.to(memory_format=torch.channels_last) if len(shape) == 4 else p))
    return out


def _run(options: dict, dtype: torch.dtype, steps: int = 3) -> tuple[list[torch.Tensor], list[dict]]:
    params = [torch.nn.Parameter(p.detach().to(dtype)) for p in _params()]
    params[0].data = params[0].data.to(memory_format=torch.channels_last)
    opt = adamlab.Yogi(params, foreach=True, lr=0.05, block_size=16, **options)
    for k in range(steps):
        gen = torch.Generator().manual_seed(k)
        for p in params:
            g = torch.randn(p.shape, generator=gen).to(dtype)
            p.grad = g.contiguous() if k == 1 else g  # a gradient in another layout than p's
        opt.step()
    return [p.detach().clone() for p in params], [dict(opt.state[p]) for p in params]


CASES = {
    "bf16": (dict(state_precision="bf16", amsgrad=True), torch.float32),
    "8bit": (dict(state_precision="8bit"), torch.float32),
    "8bit-bf16-sr": (dict(state_precision="8bit", stochastic_rounding=True), torch.bfloat16),
    "sr": (dict(stochastic_rounding=True), torch.bfloat16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pieces_give_the_bits_of_one_piece(monkeypatch, case: str) -> None:
    """Small pieces (several per parameter, several parameters per batch, a piece boundary
    inside the channels_last parameter) compute the same bits as one piece per parameter."""
    options, dtype = CASES[case]
    whole = _run(options, dtype)
    monkeypatch.setattr(precision, "CHUNK", 64)
    pieces = _run(options, dtype)
    for a, b in zip(whole[0], pieces[0]):
        assert torch.equal(a, b)
    for sa, sb in zip(whole[1], pieces[1]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
            assert sa[k].stride() == sb[k].stride(), k


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation creates (the temporaries of a step)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.largest:
                if not any(t.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for a in self.inputs):
                    self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("case", list(CASES))
def test_temporaries_are_bounded_by_the_piece(monkeypatch, case: str) -> None:
    """No temporary of a readable step is larger than a piece (int64/float32 per element),
    however large the parameter: its peak memory does not grow with the parameter."""
    options, dtype = CASES[case]
    monkeypatch.setattr(precision, "CHUNK", 1024)
    p = torch.nn.Parameter(torch.randn(40, 130).to(dtype))  # 5 pieces and a tail
    opt = adamlab.Adam([p], foreach=True, **options)
    p.grad = torch.randn_like(p)
    opt.step()  # the state exists: measure a step
    state = [t for t in opt.state[p].values() if torch.is_tensor(t)]
    mode = _LargestOutput()
    mode.inputs = [p, p.grad, *state]
    with mode:
        opt.step()
    assert 0 < mode.largest <= 8 * 1024, mode.largest


def test_random_bits_across_the_high_word() -> None:
    """Pieces past 2^32 (and one straddling it) draw the reference's bits: the high word's
    mix is a constant per piece, not mix32(0)."""
    key = 0x1234ABCD
    for offset in (2**32 - 5, 2**32, 3 * 2**32 + 7):
        want = reference.random_bits(key, np.arange(offset, offset + 10, dtype=np.int64)).astype(np.int64)
        assert np.array_equal(precision.random_bits(key, 10, "cpu", offset).numpy(), want)
