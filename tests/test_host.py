"""The host accelerator (``adamlab.optim._host``, ``csrc/host.cpp``) against its Python twins.

Each C++ function must say what its Python twin says, on the same objects: the same lists
of the same tensor objects, None in the same cases, a signature that changes exactly when
the Python one does. The optimizer-level behaviour with the accelerator on (every change
between steps is seen) is covered by ``test_step_cache.py`` and the table tests of
``test_triton.py``, which run twice (``host_mode``). Here also: the optimizer really uses
it, and its build and loading fail soft.
"""

from __future__ import annotations

import collections
import os
import warnings
from typing import Any

import pytest
import torch

import adamlab
from adamlab import _native
from adamlab.optim import _host, fused_cpu, triton_fused

# the optimizers here are fused=True on the CPU (the accelerator serves fused groups), and
# without a compiler there is no accelerator either
pytestmark = pytest.mark.skipif(not fused_cpu.is_available(), reason="no C++ compiler: fused CPU kernel unavailable")


def _tensors(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(i + 1, 3, generator=gen, requires_grad=True) for i in range(n)]


def _stepped(amsgrad: bool = False, n: int = 5, **kwargs: Any) -> tuple[adamlab.Yogi, list[torch.Tensor]]:
    """A fused Yogi stepped twice; the last parameter has no gradient."""
    params = _tensors(n)
    opt = adamlab.Yogi(params, lr=0.1, amsgrad=amsgrad, fused=True, **kwargs)
    for p in params[:-1]:
        p.grad = torch.ones_like(p)
    opt.step()
    opt.step()  # the second step records the state's order
    return opt, params


def _both_gathers(host: Any, opt: adamlab.Yogi) -> tuple[Any, Any]:
    group = opt.param_groups[0]
    cached = opt._gathered[id(group)]
    states = list(opt.state.values())
    return cached.gather(group, states), cached.gather(group, states, host)


def _same(a: Any, b: Any) -> bool:
    """The same lists of the same objects (or both None)."""
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(len(x) == len(y) and all(map(lambda u, v: u is v, x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_gather_returns_the_objects_the_python_gather_returns(host, amsgrad):
    opt, params = _stepped(amsgrad)
    python, cpp = _both_gathers(host, opt)
    assert python is not None and _same(python, cpp)
    params[2].grad = torch.zeros_like(params[2])  # a new gradient object is read anew
    python, cpp = _both_gathers(host, opt)
    assert cpp[1][2] is params[2].grad and _same(python, cpp)


def _give_grad(t: torch.Tensor) -> torch.Tensor:
    t.grad = torch.ones_like(t)
    return t


CHANGES = {
    "a gradient gone": lambda opt, ps: setattr(ps[1], "grad", None),
    "a state key gone": lambda opt, ps: opt.state[ps[3]].pop("exp_avg_sq"),
    "a state dict cleared": lambda opt, ps: opt.state[ps[0]].clear(),
    "a parameter appended": lambda opt, ps: opt.param_groups[0]["params"].append(torch.ones(2, requires_grad=True)),
    "a parameter replaced": lambda opt, ps: opt.param_groups[0]["params"].__setitem__(1, torch.ones(2)),
    "a sparse gradient": lambda opt, ps: setattr(ps[3], "grad", torch.ones_like(ps[3]).to_sparse()),
    # as many gradients as before, so only the order or the identity tells
    "a gradient moved to another parameter": lambda opt, ps: (setattr(ps[1], "grad", None), _give_grad(ps[4])),
    "a parameter replaced by one with a gradient": lambda opt, ps: opt.param_groups[0]["params"].__setitem__(
        1, _give_grad(torch.ones(2, 3, requires_grad=True))
    ),
    "a state dict replaced by a non-dict": lambda opt, ps: opt.state.__setitem__(ps[2], collections.UserDict()),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_gather_gives_up_where_the_python_gather_does(host, change):
    opt, params = _stepped()
    CHANGES[change](opt, params)
    python, cpp = _both_gathers(host, opt)
    assert python is None and cpp is None


def test_gather_refuses_tensor_subclasses(host):
    class Sub(torch.Tensor):
        pass

    opt, params = _stepped()
    group = opt.param_groups[0]
    cached = opt._gathered[id(group)]
    sub = params[0].as_subclass(Sub)
    group["params"][0] = sub
    cached.param_ids = _ids([sub, *params[1:]])  # as if it had always been there
    assert cached.gather(group, list(opt.state.values()), host) is None


def _ids(objects: list[Any]) -> bytes:
    from array import array

    return array("q", map(id, objects)).tobytes()


def test_state_values_follows_the_key_order(host):
    a, b, c = _tensors(3)
    state = collections.defaultdict(dict, {a: {"x": 1}, b: {"y": 2}})
    assert host.state_values(state, _ids([a, b])) == list(state.values())
    assert host.state_values(state, _ids([b, a])) is None
    assert host.state_values(state, _ids([a])) is None
    state[c] = {}
    assert host.state_values(state, _ids([a, b])) is None
    assert host.state_values(state, _ids([a, b, c])) == list(state.values())


def _signature_lists(ts: list[torch.Tensor]) -> tuple[Any, ...]:
    return (ts, [t.grad for t in ts], [t * 1 for t in ts], [t * 1 for t in ts], [t * 1 for t in ts],
            [torch.zeros(()) for _ in ts])  # fmt: skip


MOVES = {
    "nothing": lambda lists: None,
    "a parameter moved with .data": lambda lists: setattr(lists[0][1], "data", lists[0][1].data.clone()),
    "a parameter transposed in place": lambda lists: setattr(lists[0][2], "data", lists[0][2].data.t()),
    "a parameter retyped": lambda lists: setattr(lists[0][0], "data", lists[0][0].data.double()),
    "exp_avg moved": lambda lists: setattr(lists[2][0], "data", lists[2][0].data.clone()),
    "exp_avg_sq shrunk at its address": lambda lists: setattr(lists[3][1], "data", lists[3][1].data[:1]),
    "max moved": lambda lists: setattr(lists[4][2], "data", lists[4][2].data.clone()),
    "a step replaced": lambda lists: lists[5].__setitem__(0, torch.zeros(())),
}


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("move", list(MOVES))
def test_signature_changes_exactly_when_the_python_one_does(host, move, amsgrad):
    ts = _tensors(3)
    for t in ts:
        t.grad = torch.ones_like(t)
    lists = list(_signature_lists(ts))
    if not amsgrad:
        lists[4] = lists[3]
    before = triton_fused._signature(tuple(lists)), host.signature(*triton_fused._host_lists(tuple(lists)))
    with torch.no_grad():
        MOVES[move](lists)
    after = triton_fused._signature(tuple(lists)), host.signature(*triton_fused._host_lists(tuple(lists)))
    # (without amsgrad the "max" is the exp_avg_sq: moving it moves an exp_avg_sq)
    assert (before[0] != after[0]) == (move != "nothing")
    assert (before[1] != after[1]) == (move != "nothing")


def test_grads_reports_layout_and_addresses(host):
    ts = _tensors(2)
    grads = [torch.ones_like(t) for t in ts]
    layout, addresses = host.grads(grads)
    assert addresses == _as_bytes([g.data_ptr() for g in grads])
    assert host.grads([g.clone() for g in grads])[0] == layout  # new tensors, same layout
    assert host.grads([grads[0].double(), grads[1]])[0] != layout
    assert host.grads([grads[0], torch.ones(5, 4).t()])[0] != layout  # size and contiguity
    assert host.grads([grads[0], torch.ones(3, 3)])[0] != layout  # size alone
    assert host.grads([grads[0], torch.ones(3, 2)])[0] != layout  # shape alone (same size)
    assert host.grads([grads[0].to_sparse()]) is None
    assert host.grads([grads[0], 3.0]) is None


def _as_bytes(values: list[int]) -> bytes:
    from array import array

    return array("q", values).tobytes()


def test_the_optimizer_uses_it(host, monkeypatch):
    class Spy:
        def __init__(self) -> None:
            self.calls = collections.Counter()
            self.results = collections.defaultdict(list)

        def __getattr__(self, name: str) -> Any:
            def call(*args: Any) -> Any:
                self.calls[name] += 1
                self.results[name].append(getattr(host, name)(*args))
                return self.results[name][-1]

            return call

    spy = Spy()
    monkeypatch.setattr(_host, "_module", spy)
    opt, params = _stepped()
    before = [p.detach().clone() for p in params]
    for _ in range(3):
        opt.step()
    assert spy.calls["state_values"] >= 3 and spy.calls["gather"] >= 3
    assert None not in spy.results["state_values"] and None not in spy.results["gather"]  # it did the work
    assert all(not torch.equal(p, q) for p, q in zip(params[:-1], before))
    assert torch.equal(params[-1], before[-1])  # no gradient: not stepped


def test_a_failed_background_build_fails_soft(monkeypatch, tmp_path):
    """No working compiler: the build process fails, the status says so, steps go on."""
    fused_cpu.load()  # the fused CPU kernel itself is built with a working compiler
    monkeypatch.setenv("ADAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.delenv(_host.ENV, raising=False)
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_child", None)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    opt, _ = _stepped()
    assert _host.status() == "building"
    _host._child.wait(timeout=120)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    opt.step()
    assert _host.status().startswith("failed: the build exited with status 1"), _host.status()
    assert list((tmp_path / "cache").glob("host-*.failed")), "the compiler was not what failed"
    assert _host.get() is None and _host.loaded() is None
    opt.step()


def test_a_known_failure_starts_no_new_build(monkeypatch, tmp_path):
    """A build that failed before (its marker in the cache) is not retried by every process."""
    fused_cpu.load()
    monkeypatch.setenv("ADAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv(_host.ENV, "wait")
    monkeypatch.setattr(_host, "_status", "not requested")
    assert _host.load(wait=True) is None  # records the failure
    monkeypatch.delenv(_host.ENV)
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_child", None)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    assert _host.get() is None
    assert _host._child is None and _host.status().startswith("failed: could not compile host"), _host.status()


def test_an_unknown_setting_warns_and_keeps_it_off(monkeypatch):
    monkeypatch.setenv(_host.ENV, "off")
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    with pytest.warns(RuntimeWarning, match="ADAMLAB_HOST_EXT='off'"):
        _stepped()
    assert _host.status().startswith("failed: ADAMLAB_HOST_EXT='off'") and _host._child is None


def test_it_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(_host.ENV, "0")
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    _stepped()
    assert _host.status() == "disabled (ADAMLAB_HOST_EXT=0)"
    assert _host.loaded() is None


def test_a_cached_build_is_loaded_at_the_first_request(host, monkeypatch):
    """Built by an earlier process (here: the fixture): loaded at once, no build process."""
    if not _native.trusted_dir(_native.cache_dir()):
        pytest.skip("the cache directory is not private: the fixture built the accelerator privately")
    monkeypatch.delenv(_host.ENV, raising=False)
    monkeypatch.setattr(_host, "_module", None)
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_child", None)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    assert _host.get() is not None
    assert _host.status() == "ready" and _host._child is None
    assert os.path.samefile(_host.loaded().__file__, host.__file__)


@pytest.mark.slow
def test_a_background_build_is_picked_up_by_the_steps(monkeypatch, tmp_path):
    """The default: the first fused step starts the build in another process, steps go on
    in Python, and a later step switches to the accelerator (about 20 s of compiling)."""
    monkeypatch.setenv("ADAMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(_host.ENV, raising=False)
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_child", None)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    opt, params = _stepped()
    assert _host.status() == "building" and _host.loaded() is None
    assert _host._child.wait(timeout=300) == 0
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    opt.step()
    assert _host.status() == "ready" and _host.loaded() is not None
    assert list((tmp_path / "cache").glob("host-*.so"))
    before = [p.detach().clone() for p in params[:-1]]
    opt.step()  # now through the accelerator
    assert all(not torch.equal(p, q) for p, q in zip(params, before))


def test_a_forked_process_waits_for_the_parents_build(monkeypatch):
    """After fork the build process belongs to the parent: the child starts none of its own
    and picks the result up from the cache."""

    class Running:  # the parent's build process, as the child inherits it
        def poll(self) -> None:
            raise AssertionError("a forked process must not wait on its parent's child")

    monkeypatch.delenv(_host.ENV, raising=False)
    monkeypatch.setattr(_host, "_status", "building")
    monkeypatch.setattr(_host, "_child", Running())
    monkeypatch.setattr(_host, "_child_owner", os.getpid() + 1)
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    looked = []
    monkeypatch.setattr(_host, "load", lambda wait: looked.append(wait))
    monkeypatch.setattr(_host, "_start_build", lambda: pytest.fail("started a second build"))
    assert _host.get() is None
    assert looked == [False] and _host._child is None and _host.status() == "building"


def test_the_status_is_set_even_when_the_warning_raises(monkeypatch):
    monkeypatch.setenv(_host.ENV, "off")
    monkeypatch.setattr(_host, "_status", "not requested")
    monkeypatch.setattr(_host, "_next_poll", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _host.get() is None  # the RuntimeWarning is caught: the step goes on
    assert _host.status().startswith("failed")
