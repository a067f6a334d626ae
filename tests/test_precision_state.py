"""Low-precision state (issue 14): its creation, checkpoints, conversion, and the paths around
the update (GradScaler, skip_nonfinite, stochastic rounding of bf16 parameters).

The update itself is tested against the reference in tests/test_precision.py.
"""

from __future__ import annotations

import copy
import io
import itertools
import math

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.optim import fused_cpu
from adamlab.optim.precision import decode, flat

IMPLS = {"single_tensor": dict(foreach=False), "foreach": dict(foreach=True), "capturable": dict(capturable=True)}
PRECISIONS = [None, "fp32", "bf16", "8bit"]


def _params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 9), (2, 3, 4, 5), (), (40,)]
    out = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(dtype)
        out.append(torch.nn.Parameter(p.to(memory_format=torch.channels_last) if len(shape) == 4 else p))
    return out


def _train(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range, seed: int = 1) -> None:
    for k in steps:
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer, pa, pb) -> None:
    for p, q in zip(pa, pb):
        assert a.state[p].keys() == b.state[q].keys()
        for k in a.state[p]:
            assert torch.equal(a.state[p][k], b.state[q][k]), k


# ---- state creation ------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_state_keys_dtypes_layouts_and_initial_values(rule: str) -> None:
    cls = adamlab.Adam if rule == "adam" else adamlab.Yogi
    a, b = _params(), _params()
    opt = cls([{"params": a[:2]}, {"params": a[2:] + b[:1], "state_precision": "bf16"}, {"params": b[1:]}],
              state_precision="8bit", block_size=32, rounding_seed=99, initial_exp_avg_value=0.25, lr=0.0)  # fmt: skip
    for p in a + b:
        p.grad = torch.zeros_like(p)
    s0 = opt.defaults["initial_accumulator_value"]
    opt.step()  # lr 0, zero gradients: the moments decay from their initial values by β only
    for ordinal, p in enumerate(a + b):
        state = opt.state[p]
        assert int(state["rounding_seed"]) == reference.parameter_seed(99, ordinal)
        assert state["rounding_seed"].dtype == torch.int64 and state["rounding_seed"].device.type == "cpu"
        precision = "bf16" if 2 <= ordinal <= 4 else "8bit"
        expected = {"exp_avg", "exp_avg_sq", "step", "rounding_seed"} | (
            {"exp_avg_absmax", "exp_avg_sq_absmax"} if precision == "8bit" else set()
        )
        assert set(state) == expected
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state[key]
            assert moment.dtype == (torch.uint8 if precision == "8bit" else torch.bfloat16)
            assert moment.shape == p.shape and moment.stride() == p.stride()  # p's layout (channels_last)
            if precision == "8bit":
                absmax = state[key + "_absmax"]
                assert absmax.dtype == torch.float32 and absmax.shape == (math.ceil(p.numel() / 32),)
        # the decay the step claims: v = v0 + (1-β1)(0 - v0), s = β2·s0 (Adam) or s0 (Yogi: g = 0
        # moves nothing), each stored as its precision rounds: 8 bits exactly (constant blocks:
        # absmax is the value, code 1.0), bf16 stochastically to one of the two neighbours
        v_want = np.float32(0.25) + np.float32(0.1) * (np.float32(0.0) - np.float32(0.25))
        s_want = np.float32(s0) * np.float32(0.999) if rule == "adam" else np.float32(s0)
        for key, want, signed in (("exp_avg", v_want, True), ("exp_avg_sq", s_want, False)):
            got = decode(state[key], state.get(key + "_absmax"), 32, signed)
            if precision == "8bit":
                assert torch.allclose(got, torch.tensor(float(want)), rtol=2e-7, atol=0), (key, got.flatten()[:3])
            else:  # within one bf16 ulp of the float32 value (2^-7 relative at most)
                assert torch.all((got - float(want)).abs() <= abs(float(want)) * 2**-7), (key, got.flatten()[:3])
    # a fresh optimizer's first state: v0 and s0 encoded (before any step moves them)
    q = torch.nn.Parameter(torch.ones(50))
    fresh = cls([q], state_precision="8bit", block_size=16, initial_exp_avg_value=0.25)
    fresh._init_state(q, fresh.param_groups[0])
    st = fresh.state[q]
    codes, absmax = reference.quantize_blockwise(np.full(50, 0.25, dtype=np.float32), 16, signed=True)
    assert np.array_equal(st["exp_avg"].numpy(), codes) and np.array_equal(st["exp_avg_absmax"].numpy(), absmax)
    codes, absmax = reference.quantize_blockwise(np.full(50, s0, dtype=np.float32), 16, signed=False)
    assert np.array_equal(st["exp_avg_sq"].numpy(), codes) and np.array_equal(st["exp_avg_sq_absmax"].numpy(), absmax)
    bf = cls([q], state_precision="bf16", initial_exp_avg_value=0.1)
    bf._init_state(q, bf.param_groups[0])
    want = reference.bf16_to_float32(reference.round_bf16_nearest(np.float32([0.1, s0])))
    assert bf.state[q]["exp_avg"][0].item() == want[0] and bf.state[q]["exp_avg_sq"][0].item() == want[1]


def test_no_seed_without_stochastic_rounding() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = adamlab.Adam([p], state_precision="fp32")
    p.grad = torch.ones(3)
    opt.step()
    assert "rounding_seed" not in opt.state[p]
    opt.param_groups[0]["stochastic_rounding"] = True  # turned on later: the seed comes when needed
    opt.step()
    assert int(opt.state[p]["rounding_seed"]) == reference.parameter_seed(0, 0)


# ---- checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_resume_is_bit_for_bit(impl: str, precision: str | None) -> None:
    """Save after 3 steps, load into a fresh optimizer (through torch.save), continue: every
    parameter and state tensor equals the uninterrupted run's, stochastic rounding included."""
    dtype = torch.bfloat16 if precision in (None, "fp32") else torch.float32
    options = dict(state_precision=precision, stochastic_rounding=True, rounding_seed=3, block_size=16, **IMPLS[impl])
    straight = _params(dtype)
    opt = adamlab.Yogi(straight, lr=0.01, **options)
    _train(opt, straight, range(6))

    resumed = _params(dtype)
    first = adamlab.Yogi(resumed, lr=0.01, **options)
    _train(first, resumed, range(3))
    saved = _roundtrip({"opt": first.state_dict(), "params": [p.detach().clone() for p in resumed]})
    resumed = [torch.nn.Parameter(p) for p in saved["params"]]
    second = adamlab.Yogi(resumed, lr=0.01, **options)
    second.load_state_dict(saved["opt"])
    _train(second, resumed, range(3, 6))
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)
    _same_state(opt, second, straight, resumed)


@pytest.mark.parametrize("precision", ["bf16", None])
def test_a_checkpoint_brings_its_rounding_options(precision: str | None) -> None:
    """``stochastic_rounding`` and ``rounding_seed`` are hyperparameters of the run (as lr is):
    loaded from the checkpoint into an optimizer built with the defaults, the resumed run
    equals the uninterrupted one bit for bit."""
    options = dict(state_precision=precision, stochastic_rounding=True, rounding_seed=5)
    straight = _params(torch.bfloat16)
    _train(adamlab.Yogi(straight, lr=0.01, **options), straight, range(6))
    resumed = _params(torch.bfloat16)
    first = adamlab.Yogi(resumed, lr=0.01, **options)
    _train(first, resumed, range(3))
    second = adamlab.Yogi(resumed, lr=0.5, state_precision=precision)  # SR off, seed 0, another lr
    second.load_state_dict(_roundtrip(first.state_dict()))
    assert [second.param_groups[0][k] for k in ("stochastic_rounding", "rounding_seed", "lr")] == [True, 5, 0.01]
    _train(second, resumed, range(3, 6))
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "saved_as,loaded_as", [("bf16", "8bit"), ("8bit", "bf16"), ("8bit", None), (None, "bf16"), ("fp32", "8bit")]
)
def test_load_across_precisions_is_refused_naming_both_and_the_conversion(saved_as, loaded_as) -> None:
    a = _params()
    opt = adamlab.Adam(a, state_precision=saved_as)
    _train(opt, a, range(2))
    b = _params()
    target = adamlab.Adam(b, state_precision=loaded_as)
    _train(target, b, range(1))
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError) as info:
        target.load_state_dict(opt.state_dict())
    message = str(info.value)
    assert f"state_precision={saved_as!r}" in message and f"state_precision={loaded_as!r}" in message
    assert f"adamlab.convert_state_dict(state_dict, {loaded_as!r}" in message
    after = target.state_dict()  # nothing changed
    assert after["param_groups"] == before["param_groups"]
    for key, st in before["state"].items():
        assert all(torch.equal(v, after["state"][key][k]) for k, v in st.items())


def test_none_and_fp32_load_into_each_other_and_a_block_size_change_is_refused() -> None:
    a = _params(torch.bfloat16)
    opt = adamlab.Adam(a, state_precision="fp32")
    _train(opt, a, range(2))
    plain = adamlab.Adam(_params(torch.bfloat16))
    plain.load_state_dict(opt.state_dict())  # fp32 moments recast to the parameters' bf16
    assert plain.state[plain.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.bfloat16
    eight = adamlab.Adam(a, state_precision="8bit", block_size=32)
    _train(eight, a, range(1))
    other = adamlab.Adam(_params(torch.bfloat16), state_precision="8bit", block_size=64)
    with pytest.raises(
        ValueError, match=r"block_size=32.*block_size=64.*convert_state_dict\(state_dict, '8bit', block_size=64\)"
    ):
        other.load_state_dict(eight.state_dict())


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (
            lambda st: st.update(exp_avg_absmax=st["exp_avg_absmax"][:-1]),
            r"'exp_avg_absmax'.*expected float32 of shape \(3,\)",
        ),
        (lambda st: st.pop("exp_avg_sq_absmax"), r"missing \['exp_avg_sq_absmax'\]"),
        (lambda st: st.update(exp_avg=st["exp_avg"].float()), r"'exp_avg'.*is a torch.float32 tensor.*uint8 codes"),
        (lambda st: st.update(exp_avg_sq=st["exp_avg_sq"][:5]), r"'exp_avg_sq'.*shape \(5,\)"),
        (lambda st: st["exp_avg_sq_absmax"].fill_(-1.0), r"negative, inf or NaN scale"),
        (lambda st: st["exp_avg_absmax"].fill_(math.nan), r"negative, inf or NaN scale"),
        (lambda st: st.update(rounding_seed=torch.tensor(-1)), r"'rounding_seed'.*0 <= seed < 2\*\*32"),
        (lambda st: st.update(rounding_seed=torch.tensor(1.5)), r"'rounding_seed'"),
    ],
)
def test_bad_8bit_state_is_refused_and_nothing_loads(corrupt, message: str) -> None:
    p = torch.nn.Parameter(torch.randn(40))
    opt = adamlab.Adam([p], state_precision="8bit", block_size=16)
    _train(opt, [p], range(1))
    sd = copy.deepcopy(opt.state_dict())
    corrupt(sd["state"][0])
    q = torch.nn.Parameter(torch.randn(40))
    target = adamlab.Adam([q], state_precision="8bit", block_size=16)
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(sd)
    assert not target.state


# ---- convert_state_dict ------------------------------------------------------------------------
def _decoded(state: dict, key: str, block: int) -> torch.Tensor:
    t = state[key]
    if t.dtype == torch.uint8:
        flat_values = reference.dequantize_blockwise(
            flat(t).numpy(), state[key + "_absmax"].numpy(), block, key == "exp_avg"
        )
        out = torch.empty_like(t, dtype=torch.float32)
        flat(out).copy_(torch.from_numpy(flat_values))
        return out
    return t.float()


@pytest.mark.parametrize("source", PRECISIONS)
@pytest.mark.parametrize("target", PRECISIONS)
def test_convert_between_every_pair_of_precisions(source, target) -> None:
    a = _params()
    opt = adamlab.Yogi(a, state_precision=source, block_size=16)
    _train(opt, a, range(3))
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    converted = adamlab.convert_state_dict(sd, target, block_size=32)
    # the caller's dict is unchanged (structure and every tensor)
    assert sd["param_groups"] == kept["param_groups"] and sd["state"].keys() == kept["state"].keys()
    for key, st in kept["state"].items():
        assert st.keys() == sd["state"][key].keys()
        assert all(torch.equal(v, sd["state"][key][k]) for k, v in st.items())
    assert converted["param_groups"][0]["state_precision"] == target
    # the values survive within the coarser format's rounding
    for key, st in sd["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            before, after = _decoded(st, name, 16), _decoded(converted["state"][key], name, 32)
            scale = before.abs().max()
            rtol = 1 / 8 if "8bit" in (source, target) else 2**-8 if "bf16" in (source, target) else 0
            torch.testing.assert_close(after, before, rtol=rtol, atol=float(scale) * 2**-14)
    # it loads into an optimizer of the target precision, which steps
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    loaded = adamlab.Yogi(b, state_precision=target, block_size=32)
    loaded.load_state_dict(converted)
    _train(loaded, b, range(3, 4))
    assert int(loaded.state[b[0]]["step"]) == 4


@pytest.mark.parametrize("source", ["bf16", "8bit"])
def test_convert_to_and_from_torch_optim_adam(source: str) -> None:
    a = _params()
    opt = adamlab.Adam(a, lr=0.01, state_precision=source)
    _train(opt, a, range(3))
    plain = adamlab.convert_state_dict(opt.state_dict(), None)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    theirs = torch.optim.Adam(b, lr=0.01)
    theirs.load_state_dict(plain)
    for p, q in zip(a, b):
        assert set(theirs.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
        assert theirs.state[q]["exp_avg"].dtype == torch.float32
        assert torch.equal(theirs.state[q]["exp_avg_sq"], _decoded(opt.state[p], "exp_avg_sq", 256))
    _train(theirs, b, range(3, 5))
    assert int(theirs.state[b[0]]["step"]) == 5
    # and back: torch's fp32 state into low precision, which steps on
    back = adamlab.convert_state_dict(_roundtrip(theirs.state_dict()), source)
    ours = adamlab.Adam(b, lr=0.01, state_precision=source)
    ours.load_state_dict(back)
    _train(ours, b, range(5, 6))
    assert int(ours.state[b[0]]["step"]) == 6
    assert ours.state[b[0]]["exp_avg"].dtype == (torch.bfloat16 if source == "bf16" else torch.uint8)


def test_convert_refuses_bad_requests() -> None:
    p = torch.nn.Parameter(torch.randn(4))
    opt = adamlab.Adam([p], amsgrad=True)
    _train(opt, [p], range(1))
    with pytest.raises(ValueError, match="Invalid state_precision: 'int4'"):
        adamlab.convert_state_dict(opt.state_dict(), "int4")
    with pytest.raises(ValueError, match="Invalid block_size: 100"):
        adamlab.convert_state_dict(opt.state_dict(), "8bit", block_size=100)
    with pytest.raises(ValueError, match="amsgrad=True, which state_precision='8bit' does not support"):
        adamlab.convert_state_dict(opt.state_dict(), "8bit")
    with pytest.raises(ValueError, match="takes an optimizer state_dict"):
        adamlab.convert_state_dict({"state": {}}, "bf16")
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    copt = adamlab.Adam([z])
    _train(copt, [z], range(1))
    with pytest.raises(ValueError, match="is complex"):
        adamlab.convert_state_dict(copt.state_dict(), "bf16")


# ---- around the update --------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_grad_scaler_unscales_and_skips_like_an_unscaled_run(impl: str, precision: str) -> None:
    """A GradScaler run (scale 2^10, one batch with an inf) equals, bit for bit, a run without
    the scaler that never saw that batch: the step is skipped, state and step counts untouched."""
    options = dict(state_precision=precision, block_size=16, **IMPLS[impl])
    a, b = _params(), _params()
    scaled, plain = adamlab.Adam(a, lr=0.01, **options), adamlab.Adam(b, lr=0.01, **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    for k in range(4):
        gen = torch.Generator().manual_seed(k)
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        scaler.scale(torch.ones(()))  # as scaler.scale(loss) would: the scale exists from here
        for p, g in zip(a, grads):
            p.grad = (g * scaler.get_scale()).to(memory_format=torch.contiguous_format)
        if k == 2:
            a[0].grad[0, 0] = math.inf
        scaler.step(scaled)
        scaler.update()
        if k != 2:
            for p, g in zip(b, grads):
                p.grad = g
            plain.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    _same_state(scaled, plain, a, b)
    assert int(scaled.state[a[0]]["step"]) == 3


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_skip_nonfinite_leaves_low_precision_state_untouched(precision: str) -> None:
    a = _params()
    opt = adamlab.Yogi(a, state_precision=precision, skip_nonfinite=True)
    _train(opt, a, range(2))
    before = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in a]
    for p in a:
        p.grad = torch.randn(p.shape)
    a[1].grad.view(-1)[3] = math.nan
    opt.step()
    assert all(torch.equal(p, v) for p, v in zip(a, values))
    for key, st in before["state"].items():
        assert all(torch.equal(v, opt.state_dict()["state"][key][k]) for k, v in st.items())


def test_bf16_state_keeps_decaying_where_bf16_round_to_nearest_stalls() -> None:
    """docs/training.md trap 1: after one large gradient, 1000 small ones. An all-bf16 s never
    decays (0.999·s rounds back to s); bf16 state rounded stochastically decays like fp32 on average."""
    result = {}
    for precision in (None, "bf16", "fp32"):
        p = torch.nn.Parameter(torch.ones(1024, dtype=torch.bfloat16))
        opt = adamlab.Adam([p], lr=1e-4, state_precision=precision, foreach=True)
        p.grad = torch.ones_like(p)
        opt.step()
        s1 = opt.state[p]["exp_avg_sq"].float().clone()
        p.grad = torch.full_like(p, 0.01)
        for _ in range(1000):
            opt.step()
        result[precision] = (opt.state[p]["exp_avg_sq"].float() / s1).mean().item()
    assert result[None] == 1.0
    assert result["bf16"] == pytest.approx(result["fp32"], rel=0.02)


def test_stochastic_rounding_moves_bf16_parameters_by_updates_below_half_an_ulp() -> None:
    """Adam's first steps move θ by ≈ lr; with lr a tenth of a bf16 ulp at 1.0, round to
    nearest never moves a bf16 parameter, stochastic rounding moves it by lr on average."""
    lr = 0.1 * 2.0**-7
    moved = {}
    for sr in (False, True):
        p = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
        opt = adamlab.Adam([p], lr=lr, state_precision="fp32", stochastic_rounding=sr)
        for _ in range(10):
            p.grad = torch.ones_like(p)
            opt.step()
        moved[sr] = (1.0 - p.double()).mean().item()
    assert moved[False] == 0.0
    assert moved[True] == pytest.approx(10 * lr, rel=0.03)


def test_initialize_moments_encodes_into_low_precision_state() -> None:
    for precision in ("bf16", "8bit"):
        p = torch.nn.Parameter(torch.zeros(40))
        opt = adamlab.Yogi([p], state_precision=precision, block_size=16, bias_correction=False)
        grads = [[torch.full((40,), 2.0)], [torch.full((40,), 4.0)]]
        assert opt.initialize_moments(grads, first_moment=True) == 2
        st = opt.state[p]
        assert torch.equal(_decoded(st, "exp_avg_sq", 16), torch.full((40,), 10.0))  # (4 + 16) / 2
        assert torch.equal(_decoded(st, "exp_avg", 16), torch.full((40,), 3.0))
        p.grad = torch.ones(40)
        opt.step()


@pytest.mark.parametrize("precision", [None, "fp32"])
def test_stochastic_rounding_leaves_parameters_of_other_dtypes_alone(precision) -> None:
    """Only bfloat16 parameters are rounded stochastically: fp32 and fp16 ones step exactly as without it."""
    # the same path for both (left unset, stochastic_rounding alone would pick the fused kernel)
    for dtype, path in itertools.product((torch.float32, torch.float16), ({"foreach": True}, {"fused": True})):
        a, b = _params(dtype), _params(dtype)
        with_sr = adamlab.Adam(a, state_precision=precision, stochastic_rounding=True, **path)
        without = adamlab.Adam(b, state_precision=precision, **path)
        _train(with_sr, a, range(3))
        _train(without, b, range(3))
        assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_group_options_take_numpy_integers() -> None:
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = adamlab.Adam([p], state_precision="bf16")
    opt.add_param_group({"params": [q], "rounding_seed": np.int64(2**32 - 1), "block_size": np.int32(64)})
    assert type(opt.param_groups[1]["rounding_seed"]) is int and type(opt.param_groups[1]["block_size"]) is int
    _train(opt, [p, q], range(1))
    assert int(opt.state[q]["rounding_seed"]) == reference.parameter_seed(2**32 - 1, 1)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_complex_and_float64_parameters_are_refused_by_name(precision: str) -> None:
    for dtype in (torch.complex64, torch.float64):
        p = torch.zeros(3, dtype=dtype, requires_grad=True)
        with pytest.raises(ValueError, match=rf"has dtype {dtype}: state_precision='{precision}' takes float32"):
            adamlab.Yogi([torch.zeros(2, requires_grad=True), p], state_precision=precision)


def test_a_torch_optim_adam_checkpoint_is_refused_by_low_precision_until_converted() -> None:
    a = _params()
    theirs = torch.optim.Adam(a)
    _train(theirs, a, range(2))
    ours = adamlab.Adam(a, state_precision="8bit", rounding_seed=4)
    with pytest.raises(ValueError, match=r"state_precision=None.*state_precision='8bit'.*convert_state_dict"):
        ours.load_state_dict(theirs.state_dict())
    ours.load_state_dict(adamlab.convert_state_dict(theirs.state_dict(), "8bit"))
    assert ours.param_groups[0]["rounding_seed"] == 4  # a checkpoint without it keeps the optimizer's
    _train(ours, a, range(2, 3))
    assert int(ours.state[a[1]]["rounding_seed"]) == reference.parameter_seed(4, 1)


@pytest.mark.parametrize(
    ("before", "after"), [(None, "8bit"), ("bf16", None), ("8bit", "bf16"), ("bf16", "fp32"), ("fp32", "bf16")]
)
def test_a_precision_change_is_refused_before_any_state_is_created(before, after) -> None:
    """Review F3: the check runs before new state is made (a parameter without state stays
    without), and compares each moment's dtype (bf16 -> None no longer runs bfloat16 math)."""
    a, b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
    opt = adamlab.Adam([a, b], state_precision=before)
    a.grad = torch.randn(8)
    opt.step()
    kept = {k: v.clone() for k, v in opt.state[a].items()}
    opt.param_groups[0]["state_precision"] = after
    a.grad, b.grad = torch.randn(8), torch.randn(8)
    a_before, b_before = a.detach().clone(), b.detach().clone()
    with pytest.raises(ValueError, match="convert_state_dict") as info:
        opt.step()
    assert str(after) in str(info.value) and "exp_avg" in str(info.value)
    assert not opt.state.get(b), "state created for a parameter, then the step refused"
    assert torch.equal(a, a_before) and torch.equal(b, b_before)
    assert opt.state[a].keys() == kept.keys() and all(torch.equal(opt.state[a][k], v) for k, v in kept.items())


def _trained_channels_last(precision: str, grad: float | None = None) -> tuple[torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(torch.randn(2, 16, 3, 3, generator=gen).to(memory_format=torch.channels_last))
    opt = adamlab.Adam([p], state_precision=precision, block_size=16, foreach=True)
    for _ in range(2):
        p.grad = torch.full_like(p, grad) if grad is not None else torch.randn(p.shape, generator=gen)
        opt.step()
    return p, opt.state_dict()


def _fresh(p: torch.Tensor, precision: str, layout=torch.contiguous_format):
    q = torch.nn.Parameter(p.detach().clone().contiguous().to(memory_format=layout))
    return q, adamlab.Adam([q], state_precision=precision, block_size=16, foreach=True)


def test_loaded_bf16_state_takes_the_parameters_layout() -> None:
    """Review F4: a channels_last checkpoint loaded for a contiguous parameter (and back)."""
    p, sd = _trained_channels_last("bf16")
    q, opt = _fresh(p, "bf16")
    opt.load_state_dict(sd)
    for k in ("exp_avg", "exp_avg_sq"):
        assert opt.state[q][k].stride() == q.stride() and torch.equal(opt.state[q][k], sd["state"][0][k])


def test_loaded_8bit_state_is_re_encoded_in_the_parameters_layout_where_exact() -> None:
    p, sd = _trained_channels_last("8bit", grad=1.0)  # constant blocks: any blocking is exact
    q, opt = _fresh(p, "8bit")
    opt.load_state_dict(sd)
    for k, signed in (("exp_avg", True), ("exp_avg_sq", False)):
        got = opt.state[q]
        assert got[k].stride() == q.stride()
        want = precision_decode(sd["state"][0][k], sd["state"][0][k + "_absmax"], signed)
        assert torch.equal(precision_decode(got[k], got[k + "_absmax"], signed), want)


def test_loaded_8bit_state_in_another_layout_is_refused_where_re_encoding_is_not_exact() -> None:
    p, sd = _trained_channels_last("8bit")
    _, opt = _fresh(p, "8bit")
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(
        ValueError, match=r"layout shape \(2, 16, 3, 3\) strides \(144, 1, 48, 16\).*strides \(144, 9, 3, 1\)"
    ):
        opt.load_state_dict(sd)
    assert opt.state_dict()["state"] == before["state"] == {}
    q2, opt2 = _fresh(p, "8bit", torch.channels_last)  # the saved layout loads as it is
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[q2]["exp_avg"], sd["state"][0]["exp_avg"])


def precision_decode(codes: torch.Tensor, absmax: torch.Tensor, signed: bool) -> torch.Tensor:
    from adamlab.optim import precision

    return precision.decode(codes, absmax, 16, signed)


def test_initialize_moments_numbers_the_parameters_once(monkeypatch) -> None:
    """Review F8: the state_dict ordinals (for the seeds) are computed once per call, not
    once per parameter (4000 parameters took 4.9 s); the seeds are those of a first step."""
    from adamlab.optim.optimizer import _AdamFamily

    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(50)]
    opt = adamlab.Adam(params, state_precision="bf16", rounding_seed=9)
    calls = []
    original = _AdamFamily._ordinals
    monkeypatch.setattr(_AdamFamily, "_ordinals", lambda self: calls.append(1) or original(self))
    opt.initialize_moments([[torch.ones(2)] * len(params)])
    assert len(calls) == 1
    for i, p in enumerate(params):
        assert int(opt.state[p]["rounding_seed"]) == reference.parameter_seed(9, i)


def test_absmax_is_float32_under_a_float64_default_dtype() -> None:
    """Review F7: the block scales are float32 whatever torch's default dtype."""
    torch.set_default_dtype(torch.float64)
    try:
        p = torch.nn.Parameter(torch.randn(300, dtype=torch.float32))
        opt = adamlab.Adam([p], state_precision="8bit", foreach=True)
        p.grad = torch.randn(300, dtype=torch.float32)
        opt.step()
        assert opt.state[p]["exp_avg_absmax"].dtype == opt.state[p]["exp_avg_sq_absmax"].dtype == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)


def _eight_bit_state_dict() -> dict:
    p = torch.nn.Parameter(torch.randn(40))
    opt = adamlab.Adam([p], state_precision="8bit", block_size=16, foreach=True)
    p.grad = torch.randn(40)
    opt.step()
    return opt.state_dict()


def _set(path, value):
    def corrupt(sd):
        target = sd
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value(target[path[-1]]) if callable(value) else value

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "error", "message"),
    [
        (_set(("state", 0, "exp_avg_absmax"), lambda a: a[:1]), ValueError, r"has shape \(1,\).*need 3 scales"),
        (_set(("state", 0, "exp_avg_absmax"), lambda a: torch.cat([a] * 3)), ValueError, r"shape \(9,\).*need 3"),
        (_set(("state", 0, "exp_avg_sq_absmax"), lambda a: -a), ValueError, r"exp_avg_sq_absmax.*>= 0"),
        (_set(("state", 0, "exp_avg"), lambda a: a.to(torch.int64)), ValueError, r"torch.int64 tensor"),
        (_set(("param_groups", 0, "block_size"), 100), ValueError, r"block_size: 100"),
        (_set(("param_groups", 0, "state_precision"), "BF16"), ValueError, r"'BF16'"),
        (_set(("param_groups", 0, "lr"), -1.0), ValueError, r"learning rate: -1.0"),
        (lambda sd: sd["param_groups"][0].pop("block_size"), ValueError, r"no 'block_size'"),
        (_set(("state", 0), [1, 2]), TypeError, r"state\[0\] is a list"),
        (_set(("state",), [1]), TypeError, r"'state' is a list"),
        (_set(("param_groups",), [5]), TypeError, r"param_groups\[0\] is a int"),
        (_set(("param_groups", 0, "params"), 3), TypeError, r"\['params'\] is a int"),
    ],
)
def test_convert_validates_its_input_and_changes_nothing(corrupt, error, message) -> None:
    """Review F5: every malformed input is refused by name (none decodes into wrong values)."""
    sd = _eight_bit_state_dict()
    corrupt(sd)
    kept = copy.deepcopy(sd)
    with pytest.raises(error, match=message):
        adamlab.convert_state_dict(sd, "fp32")
    assert repr(kept) == repr(sd)


@pytest.mark.parametrize("precision", [None, "bf16", "8bit"])
@pytest.mark.parametrize("bias_correction", [True, "recursive"])
@pytest.mark.parametrize("s0", [0.0, 1e-6])
def test_yogi_second_moment_stays_non_negative_in_float32_arithmetic(precision, bias_correction, s0) -> None:
    """docs/precision.md: s >= 0 holds in float32 arithmetic too (the reference's check runs
    in float64): the torch update on float32 tensors, gradients whose scale jumps by up to
    10^6 between steps (s far above, then far below, g²), a fifth of them 0."""
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(torch.randn(300, generator=gen))
    opt = adamlab.Yogi([p], foreach=True, state_precision=precision, block_size=64,
                       bias_correction=bias_correction, initial_accumulator_value=s0)  # fmt: skip
    for t in range(40):
        scale = 10.0 ** int(torch.randint(-6, 3, (), generator=gen))
        g = torch.randn(300, generator=gen) * scale
        g[torch.rand(300, generator=gen) < 0.2] = 0.0
        p.grad = g
        opt.step()
        state = opt.state[p]
        s = decode(state["exp_avg_sq"], state.get("exp_avg_sq_absmax"), 64, signed=False)
        assert s.dtype == torch.float32 and bool((s >= 0).all()), f"step {t + 1}"
        assert bool(torch.isfinite(p).all())


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict(fused=True)], ids=str)
def test_a_new_block_size_after_the_first_step_is_refused_and_changes_nothing(flags) -> None:
    """The 8-bit codes were quantized in blocks of the old size: decoding them with another
    would silently use the wrong scales. Every path refuses, naming the scales; nothing moves."""
    if flags.get("fused") and not fused_cpu.is_available():
        pytest.skip("the fused CPU kernel is not built here")
    params = _params()
    opt = adamlab.Adam(params, lr=0.01, state_precision="8bit", block_size=16, **flags)
    _train(opt, params, range(1))
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"])
    opt.param_groups[0]["block_size"] = 64
    with pytest.raises(ValueError, match="exp_avg_absmax"):
        _train(opt, params, range(1, 2))
    assert all(torch.equal(p, q) for p, q in zip(params, before[0]))
    for key, saved in before[1].items():
        for name, value in saved.items():
            assert torch.equal(opt.state_dict()["state"][key][name], value), name


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict()], ids=str)
@pytest.mark.parametrize("case", ["gaps", "layout changed"])
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_a_parameter_laid_out_unlike_its_state_steps_in_the_state_order(precision, case, flags) -> None:
    """A parameter with gaps (a strided slice), or one converted to channels_last after its
    state was made: every path pairs each element of θ with its own g, v and s, in the state's
    memory order (8-bit blocks run over it) -- the same values as a dense parameter laid out
    as that state. (The readable paths paired elements of different orders here.)"""
    gen = torch.Generator().manual_seed(3)
    if case == "gaps":
        odd = torch.nn.Parameter(torch.randn(64, 8, generator=gen).t()[:, ::2])  # strides (1, 16)
        plain = torch.nn.Parameter(torch.empty_like(odd).copy_(odd))  # dense, laid out as its state will be
        assert plain.stride() != odd.stride()
    else:
        plain = torch.nn.Parameter(torch.randn(2, 8, 3, 3, generator=gen))
        odd = torch.nn.Parameter(plain.detach().clone())
    results = []
    for p in (plain, odd):
        opt = adamlab.Adam([p], lr=0.01, state_precision=precision, block_size=16, **flags)
        grads = torch.Generator().manual_seed(4)
        for k in range(3):
            if case == "layout changed" and k == 1 and p is odd:
                p.data = p.data.to(memory_format=torch.channels_last)  # the state stays contiguous
            p.grad = torch.randn(p.shape, generator=grads)
            opt.step()
        state = opt.state[p]
        moments = [decode(state[k], state.get(k + "_absmax"), 16, k == "exp_avg") for k in ("exp_avg", "exp_avg_sq")]
        results.append((p.detach().clone(), moments))
    (p_plain, m_plain), (p_odd, m_odd) = results
    assert torch.equal(p_plain, p_odd)
    for a, b in zip(m_plain, m_odd):
        assert torch.equal(a, b)
