"""DTensors (FSDP2, tensor parallel) -> the local shards every implementation updates in place.

The one place that unwraps them (called by :func:`adamlab.optim.functional.adam_family_update`).
The update is elementwise, so each rank updating its own shard is the whole update, and no
op is dispatched through DTensor (torch 2.11 has no sharding strategy for
``_foreach_sign_``, which Yogi's foreach path uses).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import Parameter

_PLAIN_TYPES = (Tensor, Parameter)


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor; cheap for plain tensors."""
    return type(t) not in _PLAIN_TYPES and hasattr(t, "_local_tensor")


def local_tensor(t: Tensor) -> Tensor:
    """A DTensor's local shard (its state is per shard: blocks and indices are local), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def local_shards(*lists: list[Tensor]) -> tuple[list[Tensor], ...]:
    """Each list with its DTensors replaced by their local shards. The first list holds the
    parameters: a gradient or state tensor whose placement differs from its parameter's is
    redistributed to the parameter's first."""
    from torch.distributed.tensor import DTensor

    def local(t: Tensor, like: Tensor) -> Tensor:
        if not isinstance(t, DTensor):
            return t
        if isinstance(like, DTensor) and t.placements != like.placements:
            t = t.redistribute(like.device_mesh, like.placements)
        return t.to_local()

    params = lists[0]
    return tuple([local(t, p) for t, p in zip(tensors, params)] for tensors in lists)
