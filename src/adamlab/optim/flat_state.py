"""A fused group's state in one buffer per kind: less host work per step, by layout.

When a group with ``fused=True`` creates its state all at once (its first step, a loaded
checkpoint, :meth:`initialize_moments`), every parameter's ``exp_avg``, ``exp_avg_sq``
(``max_exp_avg_sq``) and ``step`` become tensors over one storage per kind, each at its own
offset, with ``torch.optim.Adam``'s keys, shapes and dtypes: the state dict looks as it always
did. Each is its own tensor (``set_`` on the storage, not a view: its own autograd version
counter, as torch's separate tensors have). :class:`FlatState` records where they are -- their
addresses -- with their sizes and dtypes, and holds the storages only weakly.

At a step the kernel needs the state's addresses anyway. Where they equal the recorded ones
(:meth:`FlatState.holds`) and the storages are alive and unmoved (:meth:`FlatState.check`),
each state entry is a dense region of the recorded size and dtype inside a live storage, so
the step reads nothing else of the state tensors: no dtype, size, device or layout per tensor
(the parameters and gradients are still checked, tensor by tensor, in C-level maps). Anything
else -- an entry replaced, data moved with ``.data =``, a state deleted or created later, a
parameter without a gradient this step, ``amsgrad`` turned on -- changes an address or the
list, and the step takes the general path, which reads everything, as before. A storage whose
memory was freed or shrunk (``untyped_storage().resize_``) while the record lives is refused
with ``RuntimeError`` before anything changes: its tensors' addresses are offsets from
nothing. The record holds no tensor: a state the user drops is freed as before.

Where it applies: groups with ``fused=True`` (not capturable, state stored as None or
``"fp32"`` says, no stochastic rounding) whose parameters are plain dense tensors of one dtype
on one device -- others keep one storage per entry. The trade: one parameter's state is freed
only with its whole storage (all parameters' entries of that kind), and ``torch.save`` of a
single state tensor (or of one parameter's state) writes the whole storage (torch saves a
tensor's storage); a whole ``state_dict()`` is the same size as before. A state entry
replaced by another tensor at the same address (a ``.view(dtype)`` of it, or one resized in
place) is stepped as the record says, its recorded dtype and size, where the general path
would refuse it; the kernel's writes stay inside the storage either way.
"""

from __future__ import annotations

import weakref
from array import array
from itertools import accumulate
from operator import call

import torch
from torch import Tensor
from torch.nn import Parameter

_PLAIN = (Tensor, Parameter)
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_data_ptr = Tensor.data_ptr
_dtype = Tensor.dtype.__get__
_numel = Tensor.numel
_get_device = Tensor.get_device  # -1 on the CPU
_is_contiguous = Tensor.is_contiguous
_storage_data_ptr = torch.UntypedStorage.data_ptr


class FlatState:
    """Where a group's state lives: the addresses of v, s (and max s) -- the fused kernels'
    table rows, in that order -- and of the step counts, the parameters' sizes and dtypes.

    ``usable`` turns False, for good, once the state is found elsewhere (an entry replaced,
    a storage moved); the record is then kept only to refuse a step over freed memory."""

    __slots__ = (
        "_bases", "_devices", "_dtypes", "_nbytes", "_storages", "amsgrad", "device", "numels", "param_dtype", "rows",
        "state_dtype", "steps", "usable",
    )  # fmt: skip

    def __init__(
        self, param_dtype: torch.dtype, buffers: list[Tensor], entries: list[list[Tensor]], steps: list[Tensor]
    ) -> None:
        self.numels = list(map(_numel, entries[0]))
        self.param_dtype = param_dtype
        self._dtypes = {param_dtype}
        self.state_dtype = buffers[0].dtype
        self.device = buffers[0].device
        self._devices = {_device_index(self.device)}  # what get_device() says of its tensors
        self.amsgrad = len(entries) == 3
        self.rows = array("q")
        for kind in entries:
            self.rows.extend(map(_data_ptr, kind))
        self.steps = array("q", map(_data_ptr, steps))
        storages = [b.untyped_storage() for b in buffers]
        self._storages = [weakref.ref(s) for s in storages]
        self._bases = [s.data_ptr() for s in storages]
        self._nbytes = [s.nbytes() for s in storages]
        self.usable = True

    def check(self, group_index: int) -> bool | None:
        """Whether the record may be read this step: True (usable, every storage alive where
        it was), False (for good: a storage moved or went; kept to guard the others), None
        (no storage is referred to any more: forget it). ``RuntimeError`` (naming the group)
        where a storage still referred to has lost memory its tensors span."""
        try:  # the usual case in C-level maps: every storage alive where it was
            if list(map(_storage_data_ptr, map(call, self._storages))) == self._bases:
                return self.usable
        except TypeError:  # a storage gone (None has no data_ptr)
            pass
        gone = 0
        for ref, base, nbytes in zip(self._storages, self._bases, self._nbytes):
            storage = ref()
            if storage is None:
                gone += 1
                self.usable = False
            elif storage.data_ptr() != base:
                if storage.nbytes() < nbytes:
                    raise RuntimeError(
                        f"the optimizer state of param_groups[{group_index}] lost its memory: with fused=True its "
                        f"tensors share one storage per kind, and one was resized to {storage.nbytes()} of its "
                        f"{nbytes} bytes (untyped_storage().resize_); restore its size, or load a state_dict, "
                        "before stepping"
                    )
                self.usable = False  # reallocated at least as large: its tensors followed it, the record did not
        return None if gone == len(self._storages) else self.usable

    def holds(
        self, exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], maxes: list[Tensor], steps: list[Tensor]
    ) -> bool:
        """Whether these state tensors are this record's, by address (:meth:`check` first);
        lists of other lengths (amsgrad turned on or off, other parameters) never match."""
        rows = array("q", map(_data_ptr, exp_avgs))
        rows.extend(map(_data_ptr, exp_avg_sqs))
        rows.extend(map(_data_ptr, maxes))
        return rows == self.rows and array("q", map(_data_ptr, steps)) == self.steps

    def fits(self, params: list[Tensor], grads: list[Tensor]) -> bool:
        """Whether θ and g fit the record: dense, on its device, of its sizes and parameter
        dtype (then every address a kernel walks is checked). C-level maps over both lists."""
        both = params + grads
        numels = self.numels
        return (
            len(params) == len(numels)
            and list(map(_numel, params)) == numels
            and list(map(_numel, grads)) == numels
            and set(map(_dtype, both)) == self._dtypes
            and set(map(_get_device, both)) == self._devices
            and all(map(_is_contiguous, both))
        )


def build(
    params: list[Tensor],
    states: list[dict],
    *,
    moment_dtype: torch.dtype | None,
    amsgrad: bool,
    initial: tuple[float, float] | None,
) -> FlatState | None:
    """Put the state of ``params`` into one storage per kind and return its record; None (and
    nothing changed) where the parameters do not fit the layout: plain dense tensors on one
    device, of one real dtype the kernels take, none empty.

    ``initial`` (v0, s0): new state, filled so (``step`` 0, max s = s); None: the states hold
    a loaded state, whose values are copied in (None, nothing changed, unless every state has
    every entry, shaped like its parameter, in the moment dtype, and a float32 step, all on
    the parameter's device).
    ``moment_dtype``: float32 (``state_precision="fp32"``) or None (the parameters' dtype)."""
    if not params or not all(type(p) in _PLAIN for p in params):
        return None
    dtypes = set(map(_dtype, params))
    numels = list(map(_numel, params))
    if len(dtypes) != 1 or len(set(map(_get_device, params))) != 1:
        return None
    if not all(map(_is_contiguous, params)) or 0 in numels:
        return None
    (param_dtype,) = dtypes
    if param_dtype not in _KERNEL_DTYPES:
        return None
    dtype = moment_dtype or param_dtype
    keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[: 3 if amsgrad else 2]
    if initial is None and not all(_loaded_fits(p, s, keys, dtype) for p, s in zip(params, states)):
        return None
    device = params[0].device
    buffers = [torch.empty(sum(numels), dtype=dtype, device=device) for _ in keys]
    step_buffer = torch.zeros(len(params), dtype=torch.float32, device=device)
    starts = list(accumulate(numels, initial=0))
    entries = [[_at(b, start, p.shape) for p, start in zip(params, starts)] for b in buffers]
    steps = [_at(step_buffer, i, ()) for i in range(len(params))]
    if initial is None:
        with torch.no_grad():
            for key, kind in zip(keys, entries):
                torch._foreach_copy_(kind, [s[key] for s in states])
            torch.stack([s["step"] for s in states], out=step_buffer)
    else:
        buffers[0].fill_(initial[0])
        buffers[1].fill_(initial[1])
        if amsgrad:
            buffers[2].fill_(initial[1])
    for i, state in enumerate(states):
        state["step"] = steps[i]
        for key, kind in zip(keys, entries):
            state[key] = kind[i]
    return FlatState(param_dtype, [*buffers, step_buffer], entries, steps)


def _at(buffer: Tensor, offset: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A new tensor over ``buffer``'s storage at element ``offset``, contiguous, of ``shape``:
    it shares the memory, not the autograd version counter (not a view)."""
    return torch.empty(0, dtype=buffer.dtype, device=buffer.device).set_(buffer.untyped_storage(), offset, shape)


def _loaded_fits(p: Tensor, state: dict, keys: tuple[str, ...], dtype: torch.dtype) -> bool:
    step = state.get("step")
    if not (isinstance(step, Tensor) and step.dtype == torch.float32 and step.device == p.device and step.dim() == 0):
        return False
    for key in keys:
        t = state.get(key)
        if not (type(t) in _PLAIN and t.dtype == dtype and t.device == p.device and t.shape == p.shape):
            return False
    return True


def _device_index(device: torch.device) -> int:
    """What ``Tensor.get_device()`` says of a tensor on ``device``: -1 on the CPU."""
    return -1 if device.type == "cpu" else (device.index or 0)
