"""Keras 3 optimizers: ``adamlab.keras.Adam`` and ``adamlab.keras.Yogi``.

Needs ``keras>=3`` and one backend (TensorFlow, JAX or PyTorch); never torch itself
unless Keras runs on the torch backend. Importing this module registers both classes for
``.keras`` serialization. See :mod:`adamlab.keras.optimizers` for the conventions (ε after
the square root, unlike ``keras.optimizers.Adam``'s ε-hat; decoupled weight decay).

    import keras, adamlab.keras
    model.compile(optimizer=adamlab.keras.Yogi(), loss="mse")
"""

from adamlab.keras.optimizers import Adam, Yogi

__all__ = ["Adam", "Yogi"]
