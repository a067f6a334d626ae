"""PyTorch optimizers: :class:`Adam` and :class:`Yogi` (imports torch)."""

from adamlab.optim.optimizer import Adam, Yogi

__all__ = ["Adam", "Yogi"]
