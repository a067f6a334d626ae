"""The fused CPU group's state in one buffer per kind (``adamlab.optim.flat_state``).

The layout must be invisible to users -- torch's keys, shapes and dtypes, the same numbers
as the general path, checkpoints, copies -- and the step must take the short path (reading
no state tensor's metadata) only while the state tensors are the layout's own. The
changes-between-steps guarantees are in test_step_cache.py, which runs over this path too.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import io
import weakref

import pytest
import torch

import adamlab
from adamlab.optim import fused_cpu

pytestmark = pytest.mark.skipif(not fused_cpu.is_available(), reason="the fused CPU kernel is not built here")

SHAPES = [(3, 2), (4,), (), (5, 1, 2)]


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _storage(t):
    """The address of the memory ``t`` lies in (its storage's)."""
    return t.untyped_storage().data_ptr()


@pytest.fixture
def general_path_refused(monkeypatch):
    """While active, the general path's state checks raise: a step that passes took the
    short path."""

    def refuse(*args, **kwargs):
        raise AssertionError("the step read the state tensors (general path)")

    monkeypatch.setattr(fused_cpu, "_check_steps", refuse)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("state_precision", [None, "fp32"])
def test_state_shares_one_storage_per_kind_with_torchs_keys_shapes_and_dtypes(amsgrad, state_precision):
    params = _params(torch.bfloat16 if state_precision else torch.float32)
    opt = adamlab.Adam(params, fused=True, amsgrad=amsgrad, state_precision=state_precision)
    theirs = [p.detach().clone().requires_grad_() for p in params]
    torch_opt = torch.optim.Adam(theirs, fused=True, amsgrad=amsgrad)
    _grads(params, 1)
    _grads(theirs, 1)
    opt.step()
    torch_opt.step()
    for key in ("exp_avg", "exp_avg_sq", "step") + (("max_exp_avg_sq",) if amsgrad else ()):
        assert len({_storage(opt.state[p][key]) for p in params}) == 1, key
        assert all(opt.state[p][key]._base is None for p in params)  # not views: their own version counters
    for p, q in zip(params, theirs):
        mine, ref = opt.state[p], torch_opt.state[q]
        assert list(mine) == list(ref)
        for key in mine:
            assert mine[key].shape == ref[key].shape, key
            assert mine[key].is_contiguous()
        assert mine["step"].dtype == torch.float32 and mine["step"].item() == 1
        assert mine["exp_avg"].dtype == (torch.float32 if state_precision else p.dtype)


def test_later_steps_read_no_state_tensor(general_path_refused):
    params = _params()
    opt = adamlab.Yogi(params, fused=True)
    for seed in range(3):
        _grads(params, seed)
        opt.step()
    assert all(opt.state[p]["step"].item() == 3 for p in params)


def test_the_short_path_equals_the_general_path_bit_for_bit():
    """Two optimizers over the same numbers; in one the state entries are replaced by copies
    after the first step (its layout no longer holds: general path from then on)."""
    pairs = [_params(torch.float64), _params(torch.float64)]
    opts = [adamlab.Yogi(ps, lr=0.05, fused=True, amsgrad=True, weight_decay=0.1) for ps in pairs]
    for step in range(5):
        for ps in pairs:
            _grads(ps, step)
        for opt in opts:
            opt.step()
        if step == 0:
            general = opts[1]
            for state in general.state.values():
                for key, value in state.items():
                    state[key] = value.clone()
    for p, q in zip(*pairs):
        assert torch.equal(p, q)
        for key in opts[0].state[p]:
            assert torch.equal(opts[0].state[p][key], opts[1].state[q][key]), key
        assert _storage(opts[1].state[q]["exp_avg"]) == opts[1].state[q]["exp_avg"].data_ptr()  # copies stayed copies


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copied_optimizer_steps_its_own_state(how):
    params = _params()
    opt = adamlab.Adam(params, lr=0.1, fused=True)
    _grads(params, 0)
    opt.step()
    if how == "deepcopy":
        params2, opt2 = copy.deepcopy((params, opt))
    else:
        buffer = io.BytesIO()
        torch.save((params, opt), buffer)
        buffer.seek(0)
        params2, opt2 = torch.load(buffer, weights_only=False)
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    theta = [p.detach().clone() for p in params]
    for _ in range(2):
        _grads(params2, 1)
        opt2.step()
    # the copy's steps wrote into its own state, never into the original's
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in before.items())
    assert all(torch.equal(p, t) for p, t in zip(params, theta))
    for _ in range(2):
        _grads(params, 1)
        opt.step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])


def test_a_loaded_state_is_copied_into_one_buffer_per_kind(general_path_refused):
    params = _params()
    opt = adamlab.Adam(params, lr=0.1, fused=True)
    saved = adamlab.Adam(_params(), lr=0.1, fused=True)
    for p in saved.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    saved.step()
    sd = copy.deepcopy(saved.state_dict())
    opt.load_state_dict(sd)
    assert len({_storage(opt.state[p]["exp_avg"]) for p in params}) == 1
    for i, p in enumerate(params):
        for key, value in sd["state"][i].items():
            assert torch.equal(opt.state[p][key], value)
            assert opt.state[p][key].data_ptr() != value.data_ptr()  # never aliases the caller's dict
    _grads(params, 2)
    opt.step()  # the short path (the general one is refused by the fixture)


def test_a_gradient_of_another_size_is_refused_not_read():
    params = _params()
    opt = adamlab.Adam(params, fused=True)
    _grads(params, 0)
    opt.step()
    params[0].grad.data = torch.zeros(100)  # changed behind autograd's back
    with pytest.raises(RuntimeError, match="gradient of parameter 0 has 100 elements"):
        opt.step()
    assert all(opt.state[p]["step"].item() == 1 for p in params)  # nothing moved


def test_a_parameter_without_gradient_keeps_the_layout_for_later_steps(monkeypatch):
    params = _params()
    opt = adamlab.Adam(params, fused=True)
    _grads(params, 0)
    opt.step()
    params[1].grad = None
    opt.step()  # the general path, this step only
    monkeypatch.setattr(fused_cpu, "_check_steps", lambda *a, **k: pytest.fail("general path"))
    _grads(params, 1)
    opt.step()
    assert [opt.state[p]["step"].item() for p in params] == [3, 2, 3, 3]


def test_the_storages_go_with_the_last_state_tensor():
    params = _params()
    opt = adamlab.Adam(params, fused=True)
    _grads(params, 0)
    opt.step()
    bases = [weakref.ref(opt.state[params[0]][k].untyped_storage()) for k in ("exp_avg", "exp_avg_sq", "step")]
    opt.state.clear()
    gc.collect()
    assert all(r() is None for r in bases)
    opt.step()  # a new layout
    assert opt.state[params[0]]["step"].item() == 1


def test_moments_initialized_from_batches_are_laid_out_flat(general_path_refused):
    params = _params()
    opt = adamlab.Yogi(params, fused=True, bias_correction=False)
    gen = torch.Generator().manual_seed(3)
    batches = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]
    opt.initialize_moments(batches)
    expected = [(b0 * b0 + b1 * b1) / 2 for b0, b1 in zip(*batches)]
    for p, s in zip(params, expected):
        assert _storage(opt.state[p]["exp_avg_sq"]) == _storage(opt.state[params[0]]["exp_avg_sq"])
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], s)
    _grads(params, 4)
    opt.step()  # the short path (the general one is refused by the fixture)


def test_compiled_steps_after_eager_ones_equal_eager_steps():
    """A layout made by eager steps, then ``torch.compile(opt.step)``: the compiled step reads
    the state as it is and matches an eager twin bit for bit."""
    params, twin = _params(), _params()
    opts = [adamlab.Yogi(ps, lr=0.05, fused=True) for ps in (params, twin)]
    steps = [torch.compile(opts[0].step, backend="aot_eager"), opts[1].step]
    for i in range(4):
        for ps in (params, twin):
            _grads(ps, i)
        for opt, step in zip(opts, steps):
            (opt.step if i == 0 else step)()
    for p, q in zip(params, twin):
        assert torch.equal(p, q)
        assert torch.equal(opts[0].state[p]["exp_avg_sq"], opts[1].state[q]["exp_avg_sq"])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("amsgrad", [False, True])
def test_the_triton_kernel_steps_a_flat_state_as_it_steps_plain_tensors(amsgrad, monkeypatch):
    """The Triton kernel (under its interpreter) with a flat state's record reads only θ and
    g and gives the same numbers, bit for bit, as with the same state as plain tensors."""
    from adamlab.optim import flat_state, triton_fused

    hyper = dict(
        lr=0.05, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.0, decoupled_weight_decay=False,
        amsgrad=amsgrad, maximize=False, bias_correction=True, capturable=False,
    )  # fmt: skip
    runs = []
    for flat in (True, False):
        params = [p.detach().clone() for p in _params()]
        states = [{} for _ in params]
        record = flat_state.build(params, states, moment_dtype=None, amsgrad=amsgrad, initial=(0.0, 1e-6))
        assert record is not None
        if not flat:  # the same values as separate tensors
            states = [{k: v.clone() for k, v in s.items()} for s in states]
            record = None
        lists = [
            [s[k] for s in states]
            for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")
            if amsgrad or k != "max_exp_avg_sq"
        ]
        exp_avgs, exp_avg_sqs, *maxes, steps = lists
        with monkeypatch.context() as m:
            if flat:
                m.setattr(triton_fused, "_groups", lambda *a, **k: pytest.fail("the state tensors were read"))
            for seed in range(3):
                gen = torch.Generator().manual_seed(seed)
                grads = [torch.randn(p.shape, generator=gen) for p in params]
                triton_fused.interpreted_update(
                    "yogi", params, grads, exp_avgs, exp_avg_sqs, maxes[0] if maxes else [], steps, **hyper,
                    flat_state=record,
                )  # fmt: skip
        runs.append((params, states))
    (p1, s1), (p2, s2) = runs
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    for a, b in zip(s1, s2):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert a["step"].item() == 3


def test_a_state_storage_freed_under_the_layout_is_refused_before_anything_changes():
    """Offloading a moment by freeing its storage (``untyped_storage().resize_(0)``): the
    tensors of the other parameters share that storage, at offsets, so their addresses point
    at nothing. torch refuses such a step; so does adamlab, naming it, and nothing moves.
    Restored to its size, the state steps again."""
    params = _params()
    opt = adamlab.Adam(params, lr=0.1, fused=True)
    _grads(params, 0)
    opt.step()
    storage = opt.state[params[1]]["exp_avg"].untyped_storage()
    nbytes = storage.nbytes()
    theta = [p.detach().clone() for p in params]
    storage.resize_(0)
    params[0].grad = None  # the parameter at offset 0 (address 0) does not step
    with pytest.raises(RuntimeError, match="lost its memory"):
        opt.step()
    assert all(torch.equal(p, t) for p, t in zip(params, theta))
    assert all(opt.state[p]["step"].item() == 1 for p in params)
    storage.resize_(nbytes)
    for p in params:
        opt.state[p]["exp_avg"].zero_()
    opt.step()
    assert [opt.state[p]["step"].item() for p in params] == [1, 2, 2, 2]


def test_state_tensors_keep_their_own_autograd_version_counters():
    """As torch's separate state tensors: a graph that saved one parameter's s still
    back-propagates after another parameter's s is changed in place (EWC-style penalties)."""
    params = _params()
    opt = adamlab.Adam(params, fused=True)
    _grads(params, 0)
    opt.step()
    penalty = (opt.state[params[0]]["exp_avg_sq"] * params[0] ** 2).sum()
    opt.state[params[1]]["exp_avg_sq"].zero_()
    penalty.backward()
    assert params[0].grad is not None


def test_the_benchmarks_update_only_row_steps_the_flat_state():
    from adamlab.bench.gpu import update_only

    params = _params()
    opt = adamlab.Yogi(params, fused=True)
    _grads(params, 0)
    step = update_only(opt)  # one opt.step(), then the update alone
    step()
    assert all(opt.state[p]["step"].item() == 2 for p in params)
