"""``fused=True`` on CUDA: Adam and Yogi as one Triton kernel launch per step.

The implementation registered as ``"fused_cuda"`` in :mod:`adamlab.optim.functional`,
with the one signature every implementation shares. The kernel is in
:mod:`adamlab.optim.triton_kernel`; this module plans and launches it and imports Triton
only on first use, so adamlab imports and runs everything else without it.

Host work per step is kept small. The first step of a parameter set validates the tensors
and builds device-side tables of addresses, sizes and chunk offsets (a *plan*). Later steps
read the address of every tensor and the size and dtype of every parameter and compare them
with the plan's (``t.data = ...`` keeps a tensor object and changes its memory, so identity
alone proves nothing); gradients that are the tensors checked last time, at the same
addresses, need nothing more. New gradient tensors (``zero_grad(set_to_none=True)``) get a
light check (dtype, size, device, contiguity, alignment) and the launch switches to the
table of their addresses, uploaded once per address set. Anything else builds a new plan.
The plan holds no tensor (gradients weakly), so it never keeps freed memory alive; it lives
as long as the first parameter's ``step`` tensor. See :func:`_still_valid`. Once the host
accelerator (:mod:`adamlab.optim._host`) is loaded, new plans are checked by its C++
``signature`` and ``grads`` instead: the same reads, one call per list.

The same code runs on CPU tensors under Triton's interpreter (:func:`interpreted_update`),
which is how the test suite checks the kernel without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import operator
import os
import threading
import weakref
from array import array
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from adamlab.optim import _host
from adamlab.optim.functional import is_dtensor, local_shards

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


@dataclass(eq=False)
class _Launch:
    """One kernel launch: the tensors of one (device, dtypes) group, as device tables."""

    index: list[int]  # positions of this launch's tensors in the lists
    meta: Tensor  # int64 [n, 8]
    grads: Tensor  # int64 [n]: gradient addresses (the current one of grad_tables)
    chunks: Tensor  # int32 [n_chunks, 2]
    counters: Tensor  # int32 [n]
    n_chunks: int
    p_dtype: torch.dtype
    g_dtype: torch.dtype
    s_dtype: torch.dtype
    aligned: bool
    direct: dict[tuple, Any] = field(default_factory=dict)  # variant -> _Direct, or None (JIT every time)

    def __post_init__(self) -> None:
        # gradient address tables by content, newest last; never written once made, so a
        # launch still in flight can keep reading the one it was given
        self.grad_tables: dict[tuple[int, ...], Tensor] = {}
        self.use_grad_table(None)

    def use_grad_table(self, column: list[int] | None) -> None:
        """Point the launch at the table of these gradient addresses (None: the current one),
        uploading it only if none of the last few tables holds them. Gradients that come back
        at addresses seen before (two buffers in turn, or the same blocks from the caching
        allocator) cost no copy."""
        if column is not None:
            key = tuple(column)
            table = self.grad_tables.pop(key, None)
            if table is None:
                table = _upload(torch.tensor(column, dtype=torch.int64), self.grads.device)
            self.grad_tables[key] = self.grads = table
            while len(self.grad_tables) > _GRAD_TABLES:
                del self.grad_tables[next(iter(self.grad_tables))]
        # what a direct launch passes for the tables: plain addresses (see _Direct)
        self.addresses = tuple(t.data_ptr() for t in (self.meta, self.grads, self.chunks, self.counters))


@dataclass(eq=False)
class _Plan:
    """The device tables of one parameter set, and what they were built from.

    The plan holds no tensor: it must not keep alive a state tensor the user replaced or a
    gradient ``zero_grad(set_to_none=True)`` dropped. It keeps the signature of what its
    tables encode (see :func:`_signature`) and weak references to the gradients it last
    checked, so that unchanged gradients skip the checks.
    """

    block: int
    launches: list[_Launch]
    signature: list[Any] | bytes  # see _signature (bytes: the host accelerator's)
    simple: bool  # every parameter real and contiguous: new gradients need only a light check
    g_dtypes: list[torch.dtype]
    numels: list[int]
    devices: list[int]
    g_addresses: list[int] = field(default_factory=list)
    grad_refs: list[weakref.ref] = field(default_factory=list)
    host: ModuleType | None = None  # the accelerator that made `signature`, if one did
    g_layout: bytes = b""  # with `host`: the gradients' layout and addresses (host.grads)
    g_address_bytes: bytes = b""


_plans: dict[int, _Plan] = {}
_GRAD_TABLES = 4  # gradient address tables kept per launch


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


def _build_plan(lists: tuple[list[Tensor], ...]) -> _Plan:
    """Validate the tensors and build the device tables, one launch per (device, dtypes)."""
    params, grads, exp_avgs, exp_avg_sqs, maxes, steps = lists
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        where = f"parameter {i} (shape {tuple(p.shape)}, {p.dtype})"
        if grads[i].layout != torch.strided:
            raise RuntimeError(f"fused_cuda does not support sparse gradients; {where} has a {grads[i].layout} one")
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
        tensors = [[_real(lst[i]) for i in index] for lst in (params, exp_avgs, exp_avg_sqs, maxes)]
        addresses = [[t.data_ptr() for t in row] for row in tensors]
        addresses.append([steps[i].data_ptr() for i in index])
        g_addresses = [_real(grads[i]).data_ptr() for i in index]
        numels = torch.tensor([t.numel() for t in tensors[0]], dtype=torch.int64)
        n_chunks = torch.clamp((numels + BLOCK - 1) // BLOCK, min=1)  # an empty tensor still counts its step
        meta = torch.cat(
            [torch.tensor(addresses, dtype=torch.int64), numels[None], n_chunks[None], torch.zeros_like(numels)[None]]
        ).T
        first = torch.cumsum(n_chunks, 0) - n_chunks
        owner = torch.repeat_interleave(torch.arange(len(index)), n_chunks)
        chunk = torch.arange(int(n_chunks.sum())) - first[owner]
        chunks = torch.stack([owner, chunk], dim=1).to(torch.int32)
        launches.append(
            _Launch(
                index=index,
                meta=_upload(meta.contiguous(), device),
                grads=_upload(torch.tensor(g_addresses, dtype=torch.int64), device),
                chunks=_upload(chunks, device),
                counters=torch.zeros(len(index), dtype=torch.int32, device=device),
                n_chunks=chunks.shape[0],
                p_dtype=p_dtype,
                g_dtype=g_dtype,
                s_dtype=s_dtype,
                aligned=all(a % 16 == 0 for row in addresses[:4] for a in row)
                and all(a % 16 == 0 for a in g_addresses),
            )
        )
        launches[-1].grad_tables[tuple(g_addresses)] = launches[-1].grads
    plan = _Plan(
        block=BLOCK,
        launches=launches,
        signature=[],
        simple=all(map(Tensor.is_contiguous, params)) and not any(map(Tensor.is_complex, params)),
        g_dtypes=list(map(_dtype, grads)),
        numels=list(map(Tensor.numel, params)),
        devices=list(map(Tensor.get_device, params)),
    )
    _adopt_host(plan, lists)
    if plan.host is None:  # the Python checks
        plan.signature = _signature(lists)
        _remember_grads(plan, grads, list(map(Tensor.data_ptr, grads)))
    return plan


def _adopt_host(plan: _Plan, lists: tuple[Any, ...]) -> None:
    """Let the host accelerator, if loaded, check ``plan`` from now on: record what it
    reads of the tensors the plan was just checked (or built) against."""
    host = _host.loaded()
    signature = host.signature(*_host_lists(lists)) if host is not None else None
    info = host.grads(lists[1]) if signature is not None else None
    if info is not None:  # else no accelerator, or tensors it does not read (a subclass)
        plan.host, plan.signature = host, signature
        plan.g_layout, plan.g_address_bytes = info
        plan.grad_refs = []


def _host_lists(lists: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of the accelerator's ``signature``: what :func:`_signature` reads."""
    params, _, exp_avgs, exp_avg_sqs, maxes, steps = lists
    return params, exp_avgs, exp_avg_sqs, () if maxes is exp_avg_sqs else maxes, steps


_dtype = Tensor.dtype.__get__
_deref = weakref.ref.__call__
_data_ptr = Tensor.data_ptr
_numel = Tensor.numel
_nbytes = Tensor.nbytes.__get__
_misaligned = (15).__and__  # an address that is not a multiple of 16 bytes


def _remember_grads(plan: _Plan, grads: list[Tensor], addresses: list[int]) -> None:
    plan.g_addresses = addresses
    plan.grad_refs = list(map(weakref.ref, grads))


def _signature(lists: tuple[Any, ...]) -> list[Any]:
    """What the tables encode apart from gradients: the address of every parameter, state
    tensor and step count, each parameter's size, dtype and layout, and each state tensor's
    size in bytes. Addresses are read anew every step: ``t.data = ...`` (moving state to
    another device, ``Module._apply``) keeps the tensor object and changes its memory."""
    params, _, exp_avgs, exp_avg_sqs, maxes, steps = lists
    if maxes is exp_avg_sqs:  # no amsgrad: the kernel never touches a max
        maxes = ()
    signature: list[Any] = list(map(_data_ptr, itertools.chain(params, exp_avgs, exp_avg_sqs, maxes, steps)))
    signature += map(_numel, params)
    signature += map(_dtype, params)
    # a state tensor freed and made again, smaller or narrower, can land at the old address
    signature += map(_nbytes, itertools.chain(exp_avgs, exp_avg_sqs, maxes))
    contiguous = list(map(Tensor.is_contiguous, params))
    signature += contiguous  # p.data = p.data.t(): same address and size, other element order
    if not all(contiguous):
        signature += map(Tensor.stride, params)
    return signature


def _still_valid(plan: _Plan, lists: tuple[Any, ...]) -> bool:
    """Whether ``plan``'s tables describe these tensors: the same signature, and gradients
    that are the tensors last checked at the addresses last seen. Other gradients (new
    tensors after ``zero_grad(set_to_none=True)``, or moved ones) are checked for dtype,
    size, device, contiguity and 16-byte alignment, and the launch switches to the table of
    their addresses (see :meth:`_Launch.use_grad_table`)."""
    if plan.block != BLOCK:
        return False
    grads = lists[1]
    if plan.host is not None:
        return _still_valid_host(plan, lists)
    if _signature(lists) != plan.signature:
        return False
    try:
        addresses = list(map(_data_ptr, grads))
    except RuntimeError:  # a gradient without storage (sparse): rebuilding names the problem
        return False
    if addresses == plan.g_addresses and all(map(operator.is_, grads, map(_deref, plan.grad_refs))):
        return True
    if not (
        plan.simple
        and list(map(_dtype, grads)) == plan.g_dtypes
        and all(map(Tensor.is_contiguous, grads))
        and list(map(Tensor.numel, grads)) == plan.numels
        and list(map(Tensor.get_device, grads)) == plan.devices
    ):
        return False
    if addresses != plan.g_addresses:
        if not _use_grad_addresses(plan, addresses):
            return False
    _remember_grads(plan, grads, addresses)
    return True


def _still_valid_host(plan: _Plan, lists: tuple[Any, ...]) -> bool:
    """:func:`_still_valid` by the host accelerator: the same signature, the gradients'
    layout as when the plan was built (checked then), and their addresses."""
    host = plan.host
    assert host is not None
    if host.signature(*_host_lists(lists)) != plan.signature:
        return False
    info = host.grads(lists[1])
    if info is None or info[0] != plan.g_layout:
        return False
    if info[1] != plan.g_address_bytes:
        if not plan.simple or not _use_grad_addresses(plan, array("q", info[1]).tolist()):
            return False
        plan.g_address_bytes = info[1]
    return True


def _use_grad_addresses(plan: _Plan, addresses: list[int]) -> bool:
    """Point every launch at the table of these gradient addresses; False (rebuild) if one
    is misaligned for a kernel specialized for 16-byte alignment."""
    columns = [addresses if len(launch.index) == len(addresses) else [addresses[i] for i in launch.index]
               for launch in plan.launches]  # fmt: skip
    if any(launch.aligned and any(map(_misaligned, column)) for launch, column in zip(plan.launches, columns)):
        return False  # the kernel was specialized for 16-byte aligned addresses
    for launch, column in zip(plan.launches, columns):
        launch.use_grad_table(column)
    return True


def _plan_for(lists: tuple[list[Tensor], ...]) -> _Plan:
    key = id(lists[5][0])
    plan = _plans.get(key)
    if plan is not None and _still_valid(plan, lists):
        if plan.host is None and _host.loaded() is not None:
            _adopt_host(plan, lists)  # the accelerator was loaded since this plan was made
        return plan
    if plan is None:  # forget the plan (and free its tables) with the step tensor it hangs on
        weakref.finalize(lists[5][0], _plans.pop, key, None)
    plan = _plans[key] = _build_plan(lists)
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
    if interpret:
        if params[0].is_cuda:
            raise RuntimeError(f"interpreted_update runs on CPU tensors; got {params[0].device}")
    elif not params[0].is_cuda:
        raise RuntimeError(f"fused_cuda updates CUDA tensors; got {params[0].device} (use foreach=True)")
    elif torch.compiler.is_compiling():
        # Under torch.compile the update runs eagerly: the device tables and the direct
        # launch are host code (dynamo would guard on every address).
        return _update_eagerly(
            interpret, rule, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, amsgrad=amsgrad, maximize=maximize,
            bias_correction=bias_correction, capturable=capturable, grad_scale=grad_scale, found_inf=found_inf,
        )  # fmt: skip
    module = _modules.get(interpret) or _kernel_module(interpret)
    if is_dtensor(params[0]):  # FSDP2, called directly: this rank's shards
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = local_shards(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        )
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else exp_avg_sqs, state_steps)
    plan = _plan_for(lists)
    lr_on_device = isinstance(lr, Tensor)
    if lr_on_device and lr.device != params[0].device:
        lr = lr.to(device=params[0].device, dtype=torch.float32)
    variant = (
        rule, bias_correction, amsgrad, maximize, decoupled_weight_decay, weight_decay != 0, lr_on_device,
        grad_scale is not None, found_inf is not None, NUM_WARPS,
    )  # fmt: skip
    # lr, grad_scale and found_inf: tensors (pointers) or None; the rest plain numbers
    scalars = (
        0.0 if lr_on_device else float(lr),
        lr if lr_on_device else None,
        grad_scale,
        found_inf,
        1.0 - beta1,  # computed in float64, then rounded: 1-β2 keeps its 7 digits
        1.0 - beta2,
        eps,
        weight_decay,
    )
    if interpret:
        for launch in plan.launches:
            module.adam_family_kernel[(launch.n_chunks,)](*_args(launch, scalars), **_flags(module, launch, variant))
        return
    index = params[0].get_device()
    if index != torch._C._cuda_getDevice():  # Triton launches on the current device
        with torch.cuda.device(index):
            for launch in plan.launches:
                _launch(module, launch, variant, scalars, index)
    else:
        for launch in plan.launches:
            _launch(module, launch, variant, scalars, index)


def _args(launch: _Launch, scalars: tuple) -> tuple:
    """The kernel's runtime arguments for a JIT launch (pointers as tensors)."""
    lr, lr_tensor, grad_scale, found_inf, *rest = scalars
    pointers = [launch.counters if t is None else t for t in (lr_tensor, grad_scale, found_inf)]
    return (launch.meta, launch.grads, launch.chunks, launch.counters, lr, *pointers, *rest)


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


def _launch(module: ModuleType, launch: _Launch, variant: tuple, scalars: tuple, device_index: int) -> None:
    """Launch on the current stream. The first launch of a variant goes through Triton's
    JIT (compiling if needed) and keeps a direct way into the compiled kernel's launcher;
    later launches take it, with plain addresses for the pointers (see :class:`_Direct`)."""
    direct = launch.direct.get(variant)
    hooks = module.triton.knobs.runtime  # a profiler's launch hooks need the JIT path
    if direct is not None and _no_hook(hooks.launch_enter_hook) and _no_hook(hooks.launch_exit_hook):
        lr, lr_tensor, grad_scale, found_inf, *rest = scalars
        dummy = launch.addresses[3]  # stands in for absent pointers; never read
        grid, after_stream = direct.head
        direct.c_launch(
            *grid, torch._C._cuda_getCurrentRawStream(device_index), *after_stream,
            *launch.addresses, lr,
            dummy if lr_tensor is None else lr_tensor.data_ptr(),
            dummy if grad_scale is None else grad_scale.data_ptr(),
            dummy if found_inf is None else found_inf.data_ptr(),
            *rest, *direct.tail,
        )  # fmt: skip
        return
    flags = _flags(module, launch, variant)
    args = _args(launch, scalars)
    kernel = module.adam_family_kernel[(launch.n_chunks,)](*args, **flags, num_warps=NUM_WARPS)
    launch.direct[variant] = _Direct.of(module, kernel, launch.n_chunks, flags, len(args))


class _Direct:
    """A compiled kernel's C launcher, called without Triton's Python layers.

    Triton's JIT launch binds arguments, looks up its cache and, for every tensor, calls
    ``data_ptr()`` and asks CUDA about the pointer: 22 microseconds per launch on the H200
    machine's host, against 4 for the C launcher it ends in (benchmarks/RESULTS.md). This
    calls that C function with the same arguments, pointers passed as integers. Its argument list is Triton's
    own business, so this is used only on the Triton versions it was checked against (see
    ``_DIRECT_TRITON``), only while no launch hooks (profilers) are registered, and never
    for a kernel that needs scratch memory; everything else goes through the JIT.
    """

    __slots__ = ("c_launch", "head", "tail")

    def __init__(self, c_launch: Any, head: tuple, tail: tuple) -> None:
        self.c_launch, self.head, self.tail = c_launch, head, tail

    @classmethod
    def of(cls, module: ModuleType, kernel: Any, n_chunks: int, flags: dict, n_args: int) -> _Direct | None:
        """The direct way into ``kernel``'s launcher, or None where it is not known to be safe."""
        run = kernel.run
        known = module.triton.__version__.startswith(_DIRECT_TRITON)
        if not known or run.global_scratch_size or run.profile_scratch_size:
            return None
        after_stream = (kernel.function, run.launch_cooperative_grid, run.launch_pdl, None, None)
        after_stream += (kernel.packed_metadata, None, None, None)  # launch metadata, enter/exit hooks
        constants = tuple(flags[name] for name in module.adam_family_kernel.arg_names[n_args:])
        return cls(run.launch, ((n_chunks, 1, 1), after_stream), constants)


_DIRECT_TRITON = ("3.6.",)  # launcher argument lists checked against (GPU run in benchmarks/RESULTS.md)


def _no_hook(hook: Any) -> bool:
    return hook is None or not getattr(hook, "calls", True)  # Triton 3.6: an empty HookChain


_update_eagerly = torch.compiler.disable(_update)

fused_cuda_update = functools.partial(_update, False)
fused_cuda_update.__doc__ = "One step of ``rule`` on CUDA tensors; the signature of every implementation."

interpreted_update = functools.partial(_update, True)
interpreted_update.__doc__ = "The same kernel on CPU tensors under Triton's interpreter (slow; for tests)."
