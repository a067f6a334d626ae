"""The package: numpy is the only hard dependency, frameworks load lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import adamlab


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_adamlab_needs_no_framework() -> None:
    result = _run(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "tensorflow", "keras", "jax", "mxnet", "matplotlib"}:
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        import adamlab, adamlab.reference, adamlab.validation
        import numpy as np
        st = adamlab.reference.init_state(np.zeros(3), s0=1e-6)
        theta, st = adamlab.reference.yogi_step(np.zeros(3), np.ones(3), st, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-3)
        assert st.t == 1
        try:
            adamlab.Yogi
        except ImportError as e:
            print("lazy:", e)
        print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "matplotlib"}))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "lazy: blocked torch" in result.stdout
    assert "loaded: []" in result.stdout


def test_lazy_attributes_resolve_to_the_torch_optimizers() -> None:
    from adamlab.optim import Adam, Yogi

    assert adamlab.Adam is Adam and adamlab.Yogi is Yogi
    assert "Yogi" in dir(adamlab)


def test_unknown_attribute() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Lion'"):
        adamlab.Lion  # noqa: B018


def test_data_file_ships_with_the_package() -> None:
    from importlib.resources import files

    data = files("adamlab") / "data" / "airfoil_self_noise.dat"
    assert data.is_file() and len(data.read_bytes()) == 59984
