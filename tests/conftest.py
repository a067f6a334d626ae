"""Shared test configuration: hypothesis profiles, the host accelerator's switch.

``HYPOTHESIS_PROFILE=thorough`` runs many more examples than the CI default.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---- the host accelerator (adamlab.optim._host) ------------------------------------------
# Off in every test unless the test asks for it (the `host` fixture, or `host_mode`, which
# runs the test twice: Python bookkeeping and C++), so each path is chosen, never raced:
# left alone, a fused=True step would start a background build and switch when it is done.

_HOST_MODULE: list[Any] = []  # built once per test process
os.environ["ADAMLAB_HOST_EXT"] = "0"  # and in the processes tests start


_HAS_TORCH = importlib.util.find_spec("torch") is not None  # the MXNet environment has none


@pytest.fixture(autouse=True)
def _host_accelerator_off(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _HAS_TORCH:
        return
    from adamlab.optim import _host

    monkeypatch.setattr(_host, "_module", None)
    monkeypatch.setattr(_host, "_status", "disabled (tests)")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The host accelerator, built (or taken from the cache) and switched on for this test."""
    from adamlab import _native
    from adamlab.optim import _host

    if _native.find_compiler("c++") is None:
        pytest.skip("no C++ compiler: the host accelerator cannot be built")
    if not _HOST_MODULE:
        monkeypatch.setattr(_host, "_status", "not requested")
        monkeypatch.delenv(_host.ENV, raising=False)
        module = _host.load(wait=True)
        assert module is not None, f"the host accelerator did not build: {_host.status()}"
        _HOST_MODULE.append(module)
    monkeypatch.setattr(_host, "_module", _HOST_MODULE[0])
    monkeypatch.setattr(_host, "_status", "ready")
    return _HOST_MODULE[0]


@pytest.fixture(params=["python", "host"])
def host_mode(request: pytest.FixtureRequest) -> str:
    """Run the test with the Python bookkeeping and again with the host accelerator."""
    if request.param == "host":
        request.getfixturevalue("host")
    return request.param
