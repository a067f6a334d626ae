"""Keras 3 optimizers: ``adamlab.keras.Adam`` and ``adamlab.keras.Yogi``.

Needs ``keras>=3`` and one backend (TensorFlow, JAX or PyTorch); never torch itself
unless Keras runs on the torch backend. Importing this module registers both classes for
``.keras`` serialization and the names ``"yogi"``, ``"adamlab_yogi"`` and ``"adamlab_adam"``
(``"adam"`` stays Keras's own). See :mod:`adamlab.keras.optimizers` for the conventions
(ε after the square root, unlike ``keras.optimizers.Adam``'s ε-hat, which
``epsilon_hat=True`` gives; sparse gradients; decoupled weight decay).

    import keras, adamlab.keras
    model.compile(optimizer=adamlab.keras.Yogi(), loss="mse")
    model.compile(optimizer="yogi", loss="mse")   # the same, by name
"""

try:
    import keras as _keras
except ImportError as exc:  # say what to install, not just what is missing
    raise ImportError(
        f"adamlab.keras needs Keras 3 and a backend ({exc}): pip install 'adamlab[keras]' and one of "
        "tensorflow, jax or torch"
    ) from exc
if int(_keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"adamlab.keras needs Keras 3, found keras {_keras.__version__} (Keras 2 is not supported)")

from adamlab.keras.optimizers import Adam, Yogi

__all__ = ["Adam", "Yogi"]
