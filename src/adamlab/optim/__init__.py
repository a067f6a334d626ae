"""PyTorch optimizers: :class:`Adam` and :class:`Yogi` (imports torch), and
:func:`convert_state_dict` (a checkpoint from one state precision to another)."""

from adamlab.optim.convert import convert_state_dict
from adamlab.optim.optimizer import Adam, Yogi

__all__ = ["Adam", "Yogi", "convert_state_dict"]
