"""A fused CPU group's state in one buffer per kind: less host work per step, by layout.

When a group that runs the fused CPU kernel creates its state (its first step, or a loaded
checkpoint), every parameter's ``exp_avg``, ``exp_avg_sq`` (``max_exp_avg_sq``) and ``step``
become views into one buffer per kind, with ``torch.optim.Adam``'s keys, shapes and dtypes:
the state dict looks as it always did. :class:`FlatState` records where those views are --
their addresses -- with their sizes and dtypes, and holds the buffers only weakly.

At a step the kernel needs the state's addresses anyway. Where they equal the recorded ones
(:meth:`FlatState.holds`) and the buffers are alive, each state entry is known to be a dense
CPU region of the recorded size and dtype inside a live buffer, so the step reads nothing
else of the state tensors: no dtype, size, device or layout per tensor (the parameters and
gradients are still checked, tensor by tensor, in C-level maps). Anything else -- an entry
replaced, data moved with ``.data =``, a state deleted or created later, a parameter without
a gradient this step, ``amsgrad`` turned on -- changes an address or the list, and the step
takes the general path, which reads everything, as before. The record holds no tensor: a
state the user drops is freed as before.

The trade: one parameter's state is freed only with the whole buffer (all of its views).
"""

from __future__ import annotations

import weakref
from array import array
from itertools import accumulate

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


class FlatState:
    """Where a group's state lives: the addresses of v, s (and max s) -- the fused kernel's
    table rows, in that order -- and of the step counts, the parameters' sizes and dtypes."""

    __slots__ = ("_buffers", "_dtypes", "amsgrad", "device", "numels", "param_dtype", "rows", "state_dtype", "steps")

    def __init__(
        self, param_dtype: torch.dtype, buffers: list[Tensor], views: list[list[Tensor]], steps: list[Tensor]
    ) -> None:
        self.numels = list(map(_numel, views[0]))
        self.param_dtype = param_dtype
        self._dtypes = {param_dtype}
        self.state_dtype = buffers[0].dtype
        self.device = buffers[0].device
        self.amsgrad = len(views) == 3
        self.rows = array("q")
        for kind in views:
            self.rows.extend(map(_data_ptr, kind))
        self.steps = array("q", map(_data_ptr, steps))
        self._buffers = [weakref.ref(b) for b in buffers]

    def holds(
        self, exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], maxes: list[Tensor], steps: list[Tensor]
    ) -> bool:
        """Whether these state tensors are this record's views, by address (and its buffers alive)."""
        if len(steps) != len(self.numels) or len(maxes) != (len(steps) if self.amsgrad else 0):
            return False
        if any(ref() is None for ref in self._buffers):
            return False
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
            and set(map(_get_device, both)) == {_device_index(self.device)}
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
    """Put the state of ``params`` into one buffer per kind and return its record; None (and
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
    total = sum(numels)
    device = params[0].device
    buffers = [torch.empty(total, dtype=dtype, device=device) for _ in keys]
    step_buffer = torch.zeros(len(params), dtype=torch.float32, device=device)
    ends = list(accumulate(numels))
    views = [[b[end - n : end].view(p.shape) for p, n, end in zip(params, numels, ends)] for b in buffers]
    steps = list(step_buffer.unbind())
    if initial is None:
        with torch.no_grad():
            for key, kind in zip(keys, views):
                torch._foreach_copy_(kind, [s[key] for s in states])
            torch.stack([s["step"] for s in states], out=step_buffer)
    else:
        buffers[0].fill_(initial[0])
        buffers[1].fill_(initial[1])
        if amsgrad:
            buffers[2].fill_(initial[1])
    for i, state in enumerate(states):
        state["step"] = steps[i]
        for key, kind in zip(keys, views):
            state[key] = kind[i]
    return FlatState(param_dtype, [*buffers, step_buffer], views, steps)


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
