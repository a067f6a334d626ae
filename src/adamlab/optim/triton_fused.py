"""``fused=True`` on CUDA: Adam and Yogi as one Triton kernel launch per step.

The implementation registered as ``"fused_cuda"`` in :mod:`adamlab.optim.functional`,
with the one signature every implementation shares. The kernel is in
:mod:`adamlab.optim.triton_kernel`; this module plans and launches it and imports Triton
only on first use, so adamlab imports and runs everything else without it.

Host work per step is kept small. The first step of a parameter set builds a device-side
table of addresses, sizes and chunk offsets (a *plan*); later steps only read the
``data_ptr`` of every tensor and the ``numel`` and ``dtype`` of every parameter, and compare
them with the plan's (a new gradient buffer, ``p.data = ...`` or a loaded state_dict changes
them, and then the plan is rebuilt and the tensors validated again). Sizes count as well as
addresses: ``p.data = p.data[:k]`` keeps the address, and a stale size would write past the
view. A plan lives as long as the first parameter's ``step`` tensor.

The same code runs on CPU tensors under Triton's interpreter (:func:`interpreted_update`),
which is how the test suite checks the kernel without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import weakref
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from adamlab.optim.functional import local_shards

# One program per BLOCK elements; 4 warps move 16 bytes per load per thread in float32.
# Fixed on purpose: an autotuner would re-run this in-place kernel and apply the update
# several times (see STYLE.md, lion-pytorch).
BLOCK = 1024
NUM_WARPS = 4

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_BIAS_CORRECTION = {False: 0, True: 1, "recursive": 2}

_modules: dict[bool, ModuleType] = {}
_lock = threading.Lock()


def _kernel_module(interpret: bool) -> ModuleType:
    """:mod:`adamlab.optim.triton_kernel`, compiled (interpret=False) or interpreted."""
    module = _modules.get(interpret)
    if module is not None:
        return module
    try:
        import triton  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "fused=True on CUDA tensors needs Triton, which is not installed (pip install triton, or use foreach=True)"
        ) from error
    with _lock:
        if not interpret:
            from adamlab.optim import triton_kernel as module
        else:
            # A second copy of the same source, decorated while TRITON_INTERPRET=1 (Triton
            # reads it when @triton.jit runs), so compiled and interpreted kernels coexist.
            spec = importlib.util.find_spec("adamlab.optim.triton_kernel")
            assert spec is not None and spec.origin is not None
            spec = importlib.util.spec_from_file_location("adamlab.optim._triton_kernel_interpreted", spec.origin)
            module = importlib.util.module_from_spec(spec)
            previous = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1"
            try:
                spec.loader.exec_module(module)
            finally:
                if previous is None:
                    del os.environ["TRITON_INTERPRET"]
                else:
                    os.environ["TRITON_INTERPRET"] = previous
        _modules[interpret] = module
    return module


def _tl_dtype(module: ModuleType, dtype: torch.dtype) -> Any:
    return getattr(module.tl, str(dtype).removeprefix("torch."))


@dataclass
class _Launch:
    """One kernel launch: the tensors of one (device, dtypes) group, as device tables."""

    meta: Tensor  # int64 [n, 8]
    chunks: Tensor  # int32 [n_chunks, 2]
    counters: Tensor  # int32 [n]
    n_tensors: int
    n_chunks: int
    p_dtype: torch.dtype
    g_dtype: torch.dtype
    s_dtype: torch.dtype
    aligned: bool
    compiled: dict[tuple, tuple] = field(default_factory=dict)  # variant -> (kernel, constexpr values)


@dataclass
class _Plan:
    signature: list[Any]
    block: int
    launches: list[_Launch]


_plans: dict[int, _Plan] = {}


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _same_dense_layout(tensors: list[Tensor]) -> bool:
    """True when all tensors have p's shape and strides and p's elements fill a dense block."""
    p = tensors[0]
    if any(t.shape != p.shape or t.stride() != p.stride() for t in tensors[1:]):
        return False
    if p.is_contiguous():
        return True
    expected = 1  # dense in some dimension order: sorted strides are running products
    for size, stride in sorted((s, st) for s, st in zip(p.shape, p.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _upload(table: Tensor, device: torch.device) -> Tensor:
    """Copy a host table to the device without a host sync (pinned memory, async copy)."""
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def _build_plan(lists: tuple[list[Tensor], ...], signature: list[Any]) -> _Plan:
    """Validate the tensors and build the device tables, one launch per (device, dtypes)."""
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps = lists
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        where = f"parameter {i} (shape {tuple(p.shape)}, {p.dtype})"
        p, g, v, s, m = (_real(t) for t in (p, grads[i], exp_avgs[i], exp_avg_sqs[i], maxes[i]))
        if p.dtype not in _SUPPORTED or g.dtype not in _SUPPORTED or v.dtype not in _SUPPORTED:
            raise RuntimeError(
                f"fused_cuda supports float32, bfloat16 and float16 parameters, gradients and state; "
                f"{where} has gradient {g.dtype} and state {v.dtype} (use foreach=True)"
            )
        if not (v.dtype == s.dtype == m.dtype):
            raise RuntimeError(f"fused_cuda: the state of {where} mixes dtypes {v.dtype}, {s.dtype}, {m.dtype}")
        if any(t.device != p.device for t in (g, v, s, m, steps[i])):
            raise RuntimeError(f"fused_cuda: the gradient, state and step of {where} must be on {p.device}")
        if steps[i].dtype != torch.float32 or steps[i].numel() != 1:
            raise RuntimeError(f"fused_cuda: the step of {where} must be a one-element float32 tensor")
        if not _same_dense_layout([p, g, v, s, m]):
            raise RuntimeError(
                f"fused_cuda needs the gradient and state of {where} laid out like the parameter "
                f"(dense, strides {p.stride()}); got gradient strides {g.stride()}, state strides {v.stride()}"
            )
        groups.setdefault((p.device, p.dtype, g.dtype, v.dtype), []).append(i)

    launches = []
    for (device, p_dtype, g_dtype, s_dtype), index in groups.items():
        tensors = [[_real(lst[i]) for i in index] for lst in (params, grads, exp_avgs, exp_avg_sqs, maxes)]
        addresses = [[t.data_ptr() for t in row] for row in tensors]
        addresses.append([steps[i].data_ptr() for i in index])
        numels = torch.tensor([t.numel() for t in tensors[0]], dtype=torch.int64)
        n_chunks = torch.clamp((numels + BLOCK - 1) // BLOCK, min=1)  # an empty tensor still counts its step
        meta = torch.cat([torch.tensor(addresses, dtype=torch.int64), numels[None], n_chunks[None]]).T
        first = torch.cumsum(n_chunks, 0) - n_chunks
        owner = torch.repeat_interleave(torch.arange(len(index)), n_chunks)
        chunk = torch.arange(int(n_chunks.sum())) - first[owner]
        chunks = torch.stack([owner, chunk], dim=1).to(torch.int32)
        launches.append(
            _Launch(
                meta=_upload(meta.contiguous(), device),
                chunks=_upload(chunks, device),
                counters=torch.zeros(len(index), dtype=torch.int32, device=device),
                n_tensors=len(index),
                n_chunks=chunks.shape[0],
                p_dtype=p_dtype,
                g_dtype=g_dtype,
                s_dtype=s_dtype,
                aligned=all(a % 16 == 0 for row in addresses[:5] for a in row),
            )
        )
    return _Plan(signature, BLOCK, launches)


_dtype = Tensor.dtype.__get__


def _plan_for(lists: tuple[list[Tensor], ...], amsgrad: bool) -> _Plan:
    checked = lists if amsgrad else lists[:4] + lists[5:]  # without amsgrad, lists[4] is lists[3]
    # The only O(n) host work per step: what the tables encode. Every address, and the size
    # (numel: the chunk count and the mask) and dtype (the launch) of every parameter; the
    # gradient and state are checked against their parameter whenever the plan is built.
    params = lists[0]
    signature: list[Any] = [a for lst in checked for a in map(Tensor.data_ptr, lst)]
    signature += map(Tensor.numel, params)
    signature += map(_dtype, params)
    key = id(lists[5][0])
    plan = _plans.get(key)
    if plan is None or plan.signature != signature or plan.block != BLOCK:
        if plan is None:  # forget the plan (and free its tables) with the step tensor it hangs on
            weakref.finalize(lists[5][0], _plans.pop, key, None)
        plan = _plans[key] = _build_plan(lists, signature)
    return plan


def _update(
    interpret: bool,
    rule: str,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: Any,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    bias_correction: Any,
    capturable: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    if not params:
        return
    module = _kernel_module(interpret)
    if hasattr(params[0], "_local_tensor"):  # DTensor (FSDP2), called directly: this rank's shards
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = local_shards(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        )
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else exp_avg_sqs, state_steps)
    plan = _plan_for(lists, amsgrad)
    device = params[0].device
    lr_on_device = isinstance(lr, Tensor)
    if lr_on_device and lr.device != device:
        lr = lr.to(device=device, dtype=torch.float32)
    variant = (
        rule, bias_correction, amsgrad, maximize, decoupled_weight_decay, weight_decay != 0, lr_on_device,
        grad_scale is not None, found_inf is not None, NUM_WARPS,
    )  # fmt: skip
    for launch in plan.launches:
        dummy = launch.counters  # stands in for absent pointers; never read
        args = (
            launch.meta,
            launch.chunks,
            launch.counters,
            0.0 if lr_on_device else float(lr),
            lr if lr_on_device else dummy,
            dummy if grad_scale is None else grad_scale,
            dummy if found_inf is None else found_inf,
            1.0 - beta1,  # computed in float64, then rounded: 1-β2 keeps its 7 digits
            1.0 - beta2,
            eps,
            weight_decay,
        )
        if interpret:
            module.adam_family_kernel[(launch.n_chunks,)](*args, **_flags(module, launch, variant))
            continue
        if device.index != torch.cuda.current_device():  # Triton launches on the current device
            with torch.cuda.device(device):
                _launch(module, launch, variant, args, device.index)
        else:
            _launch(module, launch, variant, args, device.index)


def _flags(module: ModuleType, launch: _Launch, variant: tuple) -> dict[str, Any]:
    rule, bias_correction, amsgrad, maximize, decoupled, has_wd, lr_on_device, has_scale, has_inf, _ = variant
    return dict(
        RULE=0 if rule == "adam" else 1,
        BIAS_CORRECTION=_BIAS_CORRECTION[bias_correction],
        AMSGRAD=bool(amsgrad),
        MAXIMIZE=bool(maximize),
        DECOUPLED=bool(decoupled),
        HAS_WEIGHT_DECAY=bool(has_wd),
        LR_ON_DEVICE=lr_on_device,
        HAS_GRAD_SCALE=has_scale,
        HAS_FOUND_INF=has_inf,
        P_DTYPE=_tl_dtype(module, launch.p_dtype),
        G_DTYPE=_tl_dtype(module, launch.g_dtype),
        S_DTYPE=_tl_dtype(module, launch.s_dtype),
        ALIGNED=launch.aligned,
        BLOCK=BLOCK,
    )


def _no_launch_hooks() -> bool:
    """True unless a profiler registered Triton launch hooks (then the JIT path calls them)."""
    from triton import knobs

    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return all(h is None or not getattr(h, "calls", True) for h in hooks)  # Triton 3.6: empty HookChain


def _current_stream(device_index: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device_index)


def _launch(module: ModuleType, launch: _Launch, variant: tuple, args: tuple, device_index: int) -> None:
    """Launch on the current stream. The first launch of a variant goes through Triton's
    JIT (compiling if needed); later ones call the compiled kernel directly, which skips
    about ten microseconds of argument binding and cache lookup per step."""
    compiled = launch.compiled.get(variant)
    if compiled is not None and _no_launch_hooks():
        kernel, constants = compiled
        stream = _current_stream(device_index)
        kernel.run(
            launch.n_chunks, 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None, *args, *constants
        )
        return
    flags = _flags(module, launch, variant)
    kernel = module.adam_family_kernel[(launch.n_chunks,)](*args, **flags, num_warps=NUM_WARPS)
    names = module.adam_family_kernel.arg_names[len(args) :]
    launch.compiled[variant] = (kernel, tuple(flags[name] for name in names))


@torch.compiler.disable  # under torch.compile: run eagerly (the device tables and direct launch are host code)
def fused_cuda_update(rule: str, params: list[Tensor], *args: Any, **kwargs: Any) -> None:
    """One step of ``rule`` on CUDA tensors; the signature of every implementation."""
    if params and params[0].device.type != "cuda":
        raise RuntimeError(f"fused_cuda updates CUDA tensors; got {params[0].device} (use foreach=True)")
    _update(False, rule, params, *args, **kwargs)


def interpreted_update(rule: str, params: list[Tensor], *args: Any, **kwargs: Any) -> None:
    """The same kernel on CPU tensors under Triton's interpreter (slow; for tests)."""
    if params and params[0].device.type != "cpu":
        raise RuntimeError(f"interpreted_update runs on CPU tensors; got {params[0].device}")
    _update(True, rule, params, *args, **kwargs)
