"""The fused CPU kernel with low-precision state, called directly, against the reference.

State is built with the reference's own encoders (``adamlab.reference``, "low-precision
state"), the kernel takes one step (``fused_cpu_update(..., low_precision=...)``), and every
stored tensor is compared with ``reference.low_precision_step`` from the same decoded state:

* exact inputs (dyadic values, β = 1/2, lr = 0 or an exact decay) make the fp32 math exact, so
  the kernel's encoders -- 8-bit codes and absmax, stochastic bfloat16 bits, bf16 parameters --
  must equal the reference's **bit for bit**, rounding midpoints and ties included;
* a general step differs from the float64 reference by a few fp32 ulps, so a code or a
  stochastically rounded value that sits on a rounding boundary may land one unit away:
  at most ``BOUNDARY_FRACTION`` of them may differ, each by one unit; decoded moments and
  parameters agree within the stated tolerances.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

from adamlab import reference as R
from adamlab.optim import fused_cpu
from adamlab.optim.fused_cpu import fused_cpu_update
from adamlab.optim.precision import LowPrecision

pytestmark = pytest.mark.skipif(not fused_cpu.is_available(), reason="fused CPU kernel cannot be built here")

BOUNDARY_FRACTION = 0.005  # codes / bits allowed one unit off (a few fp32 ulps on a rounding boundary)
MOMENT_RTOL = 1e-5  # absmax and bfloat16-free values: fp32 vs float64 math
PARAM_RTOL, PARAM_ATOL = 1e-6, 1e-9  # float32 parameters (θ ~ 1, steps ~ lr = 1e-3)
STREAMS = {"v": R.STREAM_V, "s": R.STREAM_S, "s_max": R.STREAM_S_MAX}
WEIGHT_DECAY = {
    "none": {},
    "l2": dict(weight_decay=0.1),
    "decoupled": dict(weight_decay=0.1, decoupled_weight_decay=True),
}
FLAGS = [
    dict(maximize=maximize, bias_correction=bc, **WEIGHT_DECAY[wd])
    for maximize, bc, wd in itertools.product([False, True], [True, False], WEIGHT_DECAY)
]


def flag_id(flags: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in flags.items())


# ---- building state with the reference's encoders -------------------------------------------


def bits_of(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 tensor's bit patterns (uint16), in memory order of a contiguous tensor."""
    return t.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1).copy()


def bf16_tensor(bits: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(np.asarray(bits, dtype=np.uint16).view(np.int16).copy()).view(torch.bfloat16).reshape(shape)


class Param:
    """One parameter with its gradient and state, in the kernel's tensors and the reference's
    (float64, flat, memory order) values."""

    def __init__(self, theta, g, precision, *, t: int, seed: int, block: int, p_dtype=torch.float32,
                 v0=None, s0=None, amsgrad: bool = False) -> None:  # fmt: skip
        theta32 = np.asarray(theta, dtype=np.float32).reshape(-1)
        n = theta32.size
        self.shape, self.precision, self.t, self.seed, self.block = (n,), precision, t, seed, block
        self.p = torch.from_numpy(theta32.copy()).to(p_dtype)
        self.g = torch.from_numpy(np.asarray(g, dtype=np.float32).reshape(-1).copy()).to(p_dtype)
        self.step = torch.tensor(float(t))
        v0 = np.zeros(n, np.float32) if v0 is None else np.asarray(v0, np.float32).reshape(-1)
        s0 = np.zeros(n, np.float32) if s0 is None else np.asarray(s0, np.float32).reshape(-1)
        self.stored: dict[str, dict[str, np.ndarray]] = {}
        moments = {"v": v0, "s": s0} | ({"s_max": s0} if amsgrad else {})
        for name, x in moments.items():
            if precision == "8bit":
                codes, absmax = R.quantize_blockwise(x, block, signed=name == "v")
                self.stored[name] = {"codes": codes, "absmax": absmax}
            elif precision == "bf16":
                self.stored[name] = {"bits": R.round_bf16_nearest(x)}
            else:  # moments in float32 (precision None)
                self.stored[name] = {"fp32": x.copy()}
        self.state = {name: self._tensor(enc) for name, enc in self.stored.items()}
        self.absmax = {name: torch.from_numpy(enc["absmax"].copy()) for name, enc in self.stored.items()
                       if "absmax" in enc}  # fmt: skip

    def _tensor(self, enc: dict[str, np.ndarray]) -> torch.Tensor:
        if "codes" in enc:
            return torch.from_numpy(enc["codes"].copy()).reshape(self.shape)
        if "bits" in enc:
            return bf16_tensor(enc["bits"], self.shape)
        return torch.from_numpy(enc["fp32"].copy()).reshape(self.shape)

    def decoded(self, name: str) -> np.ndarray:
        enc = self.stored[name]
        if "fp32" in enc:
            return enc["fp32"].astype(np.float64)
        return R.decode_moment(enc, STREAMS[name], block_size=self.block).astype(np.float64)

    def theta64(self) -> np.ndarray:
        return self.p.float().numpy().astype(np.float64).reshape(-1)

    def g64(self) -> np.ndarray:
        return self.g.float().numpy().astype(np.float64).reshape(-1)

    # what the kernel stored, flat in memory order
    def codes(self, name: str) -> np.ndarray:
        return self.state[name].reshape(-1).numpy()

    def bits(self, name: str) -> np.ndarray:
        return bits_of(self.state[name])


def run_kernel(rule: str, params: list[Param], *, precision, sr: bool = False, block: int = 256,
               amsgrad: bool = False, grad_scale=None, found_inf=None, grads=None, **hyper) -> None:  # fmt: skip
    record = LowPrecision(
        precision, block, sr, [q.seed for q in params],
        [q.absmax["v"] for q in params] if precision == "8bit" else [],
        [q.absmax["s"] for q in params] if precision == "8bit" else [],
    )  # fmt: skip
    fused_cpu_update(
        rule, [q.p for q in params], grads if grads is not None else [q.g for q in params],
        [q.state["v"] for q in params], [q.state["s"] for q in params],
        [q.state["s_max"] for q in params] if amsgrad else [], [q.step for q in params],
        **kernel_hyper(amsgrad=amsgrad, **hyper), grad_scale=grad_scale, found_inf=found_inf, low_precision=record,
    )  # fmt: skip


def kernel_hyper(**hyper) -> dict[str, Any]:
    out = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
               amsgrad=False, maximize=False, bias_correction=True, capturable=False)  # fmt: skip
    out.update(hyper)
    return out


def reference_step(rule: str, q: Param, *, round_param: str, **hyper):
    """The reference's step from q's decoded state (before the kernel ran)."""
    hyper = kernel_hyper(**hyper)
    hyper.pop("capturable")
    state = R.State(t=q.t, v=q.decoded("v"), s=q.decoded("s"), s_max=q.decoded("s_max") if hyper["amsgrad"] else None)
    theta, raw = R.step(rule, q.theta64(), q.g64(), state, **hyper)  # the values before any rounding
    q.raw = {"theta": theta, "v": raw.v, "s": raw.s, "s_max": raw.s_max}
    if q.precision is None:  # moments in float32: only the parameter is rounded stochastically
        theta, new = R.step(rule, q.theta64(), q.g64(), state, **hyper)
        key = R.rounding_key(q.seed, new.t, R.STREAM_PARAM)
        bits = R.round_bf16_stochastic(np.asarray(theta, np.float32), R.random_bits(key, np.arange(theta.size)))
        return R.bf16_to_float32(bits), new, {}
    return R.low_precision_step(rule, q.theta64(), q.g64(), state, precision=q.precision, seed=q.seed,
                                block_size=q.block, round_param=round_param, **hyper)  # fmt: skip


# ---- agreement ------------------------------------------------------------------------------


def signed_position(codes: np.ndarray) -> np.ndarray:
    """A signed code's place on the number line (bit 7 is the sign): neighbours differ by one."""
    codes = codes.astype(np.int64)
    return np.where(codes & 0x80, -(codes & 0x7F), codes)


def bf16_position(bits: np.ndarray) -> np.ndarray:
    """A bfloat16 pattern's place on the number line (sign-magnitude to ordered integers)."""
    bits = bits.astype(np.int64)
    return np.where(bits & 0x8000, -(bits & 0x7FFF), bits)


def assert_units(actual: np.ndarray, expected: np.ndarray, what: str, exact: bool) -> None:
    """Equal everywhere (exact) or equal but for at most BOUNDARY_FRACTION, each one unit off."""
    off = actual != expected
    if exact:
        assert not off.any(), f"{what}: {off.sum()} of {off.size} differ, first at {np.flatnonzero(off)[:5]}"
        return
    assert off.sum() <= BOUNDARY_FRACTION * off.size, f"{what}: {off.sum()} of {off.size} differ"
    assert np.abs(actual - expected).max(initial=0) <= 1, f"{what}: some differ by more than one unit"


def assert_bf16_near(bits: np.ndarray, expected_bits: np.ndarray, value: np.ndarray, what: str, exact: bool) -> None:
    """Stochastically rounded bfloat16 against the reference's: equal bits (exact), or equal but
    for at most BOUNDARY_FRACTION, each a bfloat16 neighbour of the reference's unrounded value
    (up to fp32 noise: where v nearly cancels, fp32 and float64 may even differ in sign)."""
    off = bits != expected_bits
    if exact:
        assert not off.any(), f"{what}: {off.sum()} of {off.size} differ, first at {np.flatnonzero(off)[:5]}"
        return
    assert off.sum() <= BOUNDARY_FRACTION * off.size, f"{what}: {off.sum()} of {off.size} differ"
    value = np.asarray(value, np.float64).reshape(-1)
    slack = 2.0**-7 * np.abs(value) + 1e-6 * np.abs(value).max(initial=0)
    far = np.abs(R.bf16_to_float32(bits).astype(np.float64) - value) > slack
    assert not far.any(), f"{what}: {far.sum()} values are not a bfloat16 neighbour of the reference's"


def assert_agrees(q: Param, expected_theta, new: R.State, stored: dict, *, exact: bool = False) -> None:
    """Every stored tensor of q against the reference's step (``new`` holds the decoded moments;
    ``q.raw`` the reference's values before they were encoded)."""
    raw = q.raw
    for name, enc in stored.items():
        if "codes" in enc:
            position = signed_position if name == "v" else (lambda c: c.astype(np.int64))
            assert_units(position(q.codes(name)), position(enc["codes"]), f"{name} codes", exact)
            absmax = q.absmax[name].numpy()
            if exact:
                np.testing.assert_array_equal(absmax, enc["absmax"], err_msg=f"{name} absmax")
            else:
                np.testing.assert_allclose(absmax, enc["absmax"], rtol=MOMENT_RTOL, err_msg=f"{name} absmax")
            decoded = R.dequantize_blockwise(q.codes(name), absmax, q.block, signed=name == "v")
            step = np.repeat(enc["absmax"], q.block)[: decoded.size] / 8  # one code apart is at most absmax/8
            np.testing.assert_array_less(np.abs(decoded - getattr(new, name).reshape(-1)), step * 1.0001 + 1e-30)
        else:
            assert_bf16_near(q.bits(name), enc["bits"], raw[name], f"{name} bits", exact)
    theta = q.p.float().numpy().reshape(-1).astype(np.float64)
    if q.p.dtype == torch.bfloat16:
        expected_bits = R.round_bf16_nearest(np.asarray(expected_theta, np.float32)).reshape(-1)
        assert_bf16_near(bits_of(q.p), expected_bits, raw["theta"], "θ bits", exact)
    elif exact:
        np.testing.assert_array_equal(theta, np.asarray(expected_theta, np.float32).reshape(-1))
    else:
        np.testing.assert_allclose(theta, np.asarray(expected_theta).reshape(-1), rtol=PARAM_RTOL, atol=PARAM_ATOL)
    assert q.step.item() == new.t


def random_param(rng, n, precision, *, t, seed, block, p_dtype=torch.float32, amsgrad=False) -> Param:
    return Param(
        rng.standard_normal(n), rng.standard_normal(n) * 0.1, precision, t=t, seed=seed, block=block,
        p_dtype=p_dtype, v0=rng.standard_normal(n) * 0.01, s0=rng.uniform(0, 1e-3, n), amsgrad=amsgrad,
    )  # fmt: skip


# ---- a general step ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["adam", "yogi"])
@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_a_step_matches_the_reference(rule: str, flags: dict, precision: str) -> None:
    """Three tensors at different steps (keys and coefficients differ), one of a size that is not
    a multiple of the block, fp32 parameters."""
    rng = np.random.default_rng(1)
    block = 64
    params = [
        random_param(rng, n, precision, t=t, seed=seed, block=block)
        for n, t, seed in ((1000, 0, 11), (64 * 7, 4, 2**32 - 1), (5, 9, 0), (0, 2, 3))
    ]
    expected = [reference_step(rule, q, round_param="float32", **flags) for q in params]
    run_kernel(rule, params, precision=precision, block=block, **flags)
    for q, (theta, new, stored) in zip(params, expected):
        assert_agrees(q, theta, new, stored)


@pytest.mark.parametrize("block", [16, 256, 4096, 8192])
def test_block_sizes_and_the_threaded_path(block: int) -> None:
    """More elements than the kernel runs serially (2^17): work split across threads in whole
    chunks, the random bits and the blocks indexed across chunk boundaries; a short last block."""
    rng = np.random.default_rng(block)
    for precision in ("8bit", "bf16"):
        q = random_param(rng, 3 * 2**16 + 77, precision, t=3, seed=5, block=block)
        theta, new, stored = reference_step("yogi", q, round_param="float32")
        run_kernel("yogi", [q], precision=precision, block=block)
        assert_agrees(q, theta, new, stored)


@pytest.mark.parametrize("rule", ["adam", "yogi"])
@pytest.mark.parametrize("precision", ["bf16", "8bit", None])
def test_bfloat16_parameters_rounded_stochastically_or_to_nearest(rule: str, precision) -> None:
    rng = np.random.default_rng(2)
    for sr in (True, False) if precision else (True,):
        params = [random_param(rng, n, precision, t=t, seed=7 + t, block=32, p_dtype=torch.bfloat16)
                  for n, t in ((300, 0), (33, 6))]  # fmt: skip
        mode = "bf16_stochastic" if sr else "bf16_nearest"
        expected = [reference_step(rule, q, round_param=mode, lr=1e-2) for q in params]
        run_kernel(rule, params, precision=precision, sr=sr, block=32, lr=1e-2)
        for q, (theta, new, stored) in zip(params, expected):
            if precision is None:  # fp32 moments, θ's bits from stream 2
                assert_bf16_near(bits_of(q.p), R.round_bf16_nearest(theta), q.raw["theta"], "θ", False)
                np.testing.assert_allclose(q.state["v"].numpy(), new.v, rtol=MOMENT_RTOL, atol=1e-12)
                np.testing.assert_allclose(q.state["s"].numpy(), new.s, rtol=MOMENT_RTOL, atol=1e-15)
            else:
                assert_agrees(q, theta, new, stored)


def test_stochastic_parameters_with_moments_in_their_own_dtype_leave_other_parameters_alone() -> None:
    """precision None: bfloat16 parameters round stochastically; a float32 parameter in the same
    call takes the fp32 path, bit for bit what a call without the record computes."""
    rng = np.random.default_rng(3)
    bf = random_param(rng, 500, None, t=2, seed=9, block=256, p_dtype=torch.bfloat16)
    f32 = random_param(rng, 500, None, t=2, seed=10, block=256)
    twin = [f32.p.clone(), f32.state["v"].clone(), f32.state["s"].clone(), f32.step.clone()]
    theta, _, _ = reference_step("adam", bf, round_param="bf16_stochastic")
    run_kernel("adam", [f32, bf], precision=None, sr=True)
    fused_cpu_update("adam", [twin[0]], [f32.g], [twin[1]], [twin[2]], [], [twin[3]], **kernel_hyper())
    for a, b in zip((f32.p, f32.state["v"], f32.state["s"], f32.step), twin):
        assert torch.equal(a, b)
    assert_bf16_near(bits_of(bf.p), R.round_bf16_nearest(theta), bf.raw["theta"], "θ", False)


def test_amsgrad_with_bf16_moments_rounds_max_exp_avg_sq_on_its_own_stream() -> None:
    rng = np.random.default_rng(4)
    params = [random_param(rng, n, "bf16", t=t, seed=3, block=256, amsgrad=True) for n, t in ((700, 0), (70, 5))]
    expected = [reference_step("yogi", q, round_param="float32", amsgrad=True) for q in params]
    run_kernel("yogi", params, precision="bf16", amsgrad=True)
    for q, (theta, new, stored) in zip(params, expected):
        assert set(stored) == {"v", "s", "s_max"}
        assert_agrees(q, theta, new, stored)


def test_grad_scale_unscales_and_found_inf_skips_everything() -> None:
    rng = np.random.default_rng(5)
    for precision in ("bf16", "8bit"):
        q = random_param(rng, 300, precision, t=1, seed=1, block=64)
        before = [x.clone() for x in (q.p, q.step, *q.state.values(), *q.absmax.values())]
        run_kernel("adam", [q], precision=precision, block=64, grads=[q.g * 1024], found_inf=torch.tensor(1.0))
        after = (q.p, q.step, *q.state.values(), *q.absmax.values())
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        theta, new, stored = reference_step("adam", q, round_param="float32")
        run_kernel("adam", [q], precision=precision, block=64, grads=[q.g * 1024], grad_scale=torch.tensor(1024.0),
                   found_inf=torch.tensor(0.0))  # fmt: skip
        assert_agrees(q, theta, new, stored)


def test_a_dense_channels_last_parameter_is_walked_in_memory_order() -> None:
    """θ, g and the state in channels_last: the element index (random bits, blocks) is the
    position in memory. A gradient in another layout is read in θ's order."""
    rng = np.random.default_rng(6)
    shape = (2, 5, 3, 7)  # memory order of channels_last: N, H, W, C
    for precision, grad_layout in (("8bit", torch.channels_last), ("bf16", torch.contiguous_format)):
        flat = random_param(rng, math.prod(shape), precision, t=2, seed=4, block=32)
        theta, new, stored = reference_step("adam", flat, round_param="float32")

        def in_layout(x: torch.Tensor, layout=torch.channels_last) -> torch.Tensor:
            nhwc = x.reshape(shape[0], shape[2], shape[3], shape[1])  # the flat values in memory order
            return nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)

        p = in_layout(flat.p)
        state = {name: in_layout(x) for name, x in flat.state.items()}
        assert p.stride() != p.contiguous().stride() and state["v"].is_contiguous(memory_format=torch.channels_last)
        fused_cpu_update(
            "adam", [p], [in_layout(flat.g, grad_layout)], [state["v"]], [state["s"]], [], [flat.step],
            **kernel_hyper(), low_precision=LowPrecision(precision, 32, False, [4],
            [flat.absmax["v"]] if precision == "8bit" else [], [flat.absmax["s"]] if precision == "8bit" else []),
        )  # fmt: skip
        memory = lambda x: x.permute(0, 2, 3, 1).reshape(-1)  # noqa: E731
        flat.p, flat.state = memory(p), {name: memory(x) for name, x in state.items()}
        assert_agrees(flat, theta, new, stored)


# ---- the encoders, bit for bit ---------------------------------------------------------------


def exact_inputs(rng, n: int, scale: float) -> np.ndarray:
    """Dyadic values with few significant bits: every product and sum of the step below is
    exact in float32, so float32 and float64 agree and only the encoders decide."""
    return rng.integers(-2047, 2048, n) * scale


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_8bit_codes_and_absmax_equal_the_reference_bit_for_bit(rule: str) -> None:
    """β1 = β2 = 1/2 from v0 = s0 = 0: v = g/2, s = g²/2 exactly. The values include rounding
    midpoints of both maps (ties to even), a block whose absmax is not a power of two (the
    kernel's reciprocal is inexact there, and midpoints need its exact fallback), values for which
    the reciprocal's product would round to another code than the IEEE quotient, an all-zero
    block, a block with a lone tiny value (subnormal codes), and lr = 0 so θ is unchanged. s = g²/2
    is rounded once, to float32, in the kernel and in the reference alike."""
    rng = np.random.default_rng(7)
    block = 32
    g = exact_inputs(rng, 8 * block, 2.0**-10)
    g[:block] = 0.0  # an all-zero block
    midpoints = np.array([17, 19, 21, 23, 25, 27, 29, 31]) / 32  # halfway between v-map neighbours in [1/2, 1)
    g[block : 2 * block] = np.resize(np.concatenate([midpoints, -midpoints, [1.0]]) * 2, block)  # absmax 1
    g[2 * block : 3 * block] = np.resize(np.concatenate([midpoints * 3, [3.0], -midpoints * 3]) * 2, block)  # absmax 3
    g[3 * block : 4 * block] = 0.0
    g[3 * block] = 2.0**-20  # one tiny value: every other element 0, and the v map's subnormals
    g[3 * block + 1] = 1.0
    # absmax a = 1.04097...: for values near a·(midpoint), |x|·fl(1/a) rounds to another code than
    # the IEEE quotient |x|/a does; the kernel must notice and divide
    a = np.float32(1.0409735441207886)
    near = (a * midpoints.astype(np.float32)).astype(np.float32)
    near = np.concatenate([near, np.nextafter(near, np.float32(0)), np.nextafter(near, np.float32(2)), [a]])
    g[4 * block : 5 * block] = np.resize(near.astype(np.float64) * 2, block)
    by_product = R.encode_minifloat((near * (np.float32(1) / a)).astype(np.float32), *R.SIGNED_FORMAT)
    assert (by_product != R.encode_minifloat((near / a).astype(np.float32), *R.SIGNED_FORMAT)).any()
    hyper = dict(lr=0.0, beta1=0.5, beta2=0.5, eps=1e-8, bias_correction=False)
    q = Param(rng.standard_normal(g.size), g, "8bit", t=0, seed=1, block=block)
    theta, new, stored = reference_step(rule, q, round_param="float32", **hyper)
    assert np.array_equal(q.raw["v"], g / 2) and np.array_equal(q.raw["s"], g * g / 2)  # float32: one rounding of s
    run_kernel(rule, [q], precision="8bit", block=block, **hyper)
    assert_agrees(q, theta, new, stored, exact=True)
    ties = q.codes("v")[block : block + 8]  # m = 17/32, 19/32, ...: each halfway, each to the even mantissa
    assert list(ties) == list(R.encode_minifloat(midpoints.astype(np.float32), *R.SIGNED_FORMAT))
    assert list(ties) == [112, 114, 114, 116, 116, 118, 118, 120]


def test_8bit_encoding_of_a_non_finite_block() -> None:
    """A block holding inf or NaN stores absmax NaN and codes 0 (it decodes to NaN, as fp32 state
    would hold NaN); the other blocks are unaffected."""
    rng = np.random.default_rng(8)
    g = exact_inputs(rng, 96, 2.0**-10)
    g[40] = np.inf
    hyper = dict(lr=0.0, beta1=0.5, beta2=0.5, bias_correction=False)
    q = Param(np.zeros(96), g, "8bit", t=0, seed=1, block=32)
    _, _, stored = reference_step("adam", q, round_param="float32", **hyper)
    run_kernel("adam", [q], precision="8bit", block=32, **hyper)
    for name in ("v", "s"):
        absmax = q.absmax[name].numpy()
        assert np.isnan(absmax[1]) and np.isfinite(absmax[[0, 2]]).all()
        assert not q.codes(name)[32:64].any()
        np.testing.assert_array_equal(q.codes(name), stored[name]["codes"])
        np.testing.assert_array_equal(absmax, stored[name]["absmax"])


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_stochastic_bf16_bits_equal_the_reference_bit_for_bit(rule: str) -> None:
    """β1 = β2 = 1/2 and exact dyadic values with more bits than bfloat16 holds: the random bits
    alone decide each rounding. θ in bfloat16 shrinks by an exact decoupled decay (η = λ = 1/2,
    g = 0 where the update would not be exact) and rounds stochastically on stream 2. Includes
    the non-finite rule: inf stays inf, NaN becomes the quiet NaN with its sign."""
    rng = np.random.default_rng(9)
    n = 2000
    g = exact_inputs(rng, n, 2.0**-14)
    v0 = exact_inputs(rng, n, 2.0**-6)
    hyper = dict(lr=0.5, weight_decay=0.5, decoupled_weight_decay=True, beta1=0.5, beta2=0.5, bias_correction=False)
    theta0 = R.bf16_to_float32(R.round_bf16_nearest(rng.standard_normal(n).astype(np.float32)))
    theta0[-2:] = [np.inf, -np.inf]
    moments = Param(theta0, g, "bf16", t=6, seed=12345, block=256, v0=v0)
    # v0 = bf16(v0): v = (v0 + g)/2 is exact; s = g²/2 (Adam) or s0 ± g²/2 (Yogi) exact
    theta_m, new_m, stored_m = reference_step(rule, moments, round_param="float32", **hyper | dict(lr=0.0))
    run_kernel(rule, [moments], precision="bf16", **hyper | dict(lr=0.0))
    assert_agrees(moments, theta_m, new_m, stored_m, exact=True)
    # the parameter: g = v0 = 0, so θ ← θ(1 - ηλ) = 0.75 θ exactly before rounding
    param = Param(theta0, np.zeros(n), "bf16", t=6, seed=777, block=256, p_dtype=torch.bfloat16)
    theta_p, new_p, stored_p = reference_step(rule, param, round_param="bf16_stochastic", **hyper)
    run_kernel(rule, [param], precision="bf16", sr=True, **hyper)
    assert_agrees(param, theta_p, new_p, stored_p, exact=True)
    assert np.isinf(param.p[-2:].float().numpy()).all()
    # a NaN becomes the quiet NaN (its sign is whatever the arithmetic left; never an infinity)
    nan = Param(np.array([np.nan, -np.nan, 1.0], np.float32), np.zeros(3), "bf16", t=0, seed=1, block=256,
                p_dtype=torch.bfloat16)  # fmt: skip
    run_kernel(rule, [nan], precision="bf16", sr=True, **hyper)
    assert [b & 0x7FFF for b in bits_of(nan.p)[:2]] == [0x7FC0, 0x7FC0]


# ---- refusals --------------------------------------------------------------------------------


def _refused(match: str, **changes) -> None:
    rng = np.random.default_rng(10)
    q = random_param(rng, 100, "8bit", t=1, seed=1, block=64)
    before = [x.clone() for x in (q.p, q.step, *q.state.values(), *q.absmax.values())]
    record = dict(precision="8bit", block_size=64, stochastic_rounding=False, seeds=[1],
                  exp_avg_absmax=[q.absmax["v"]], exp_avg_sq_absmax=[q.absmax["s"]])  # fmt: skip
    tensors = dict(params=[q.p], exp_avgs=[q.state["v"]], amsgrad=False)
    for key, value in changes.items():
        (record if key in record else tensors)[key] = value
    with pytest.raises((ValueError, RuntimeError), match=match):
        fused_cpu_update(
            "adam", tensors["params"], [q.g], tensors["exp_avgs"], [q.state["s"]],
            [q.state["s"]] if tensors["amsgrad"] else [], [q.step],
            **kernel_hyper() | dict(amsgrad=tensors["amsgrad"]), low_precision=LowPrecision(**record),
        )  # fmt: skip
    after = (q.p, q.step, *q.state.values(), *q.absmax.values())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a refused step changed something"


@pytest.mark.parametrize(
    ("match", "changes"),
    [
        ("amsgrad", dict(amsgrad=True)),
        ("block size: 48", dict(block_size=48)),
        ("block size: 8", dict(block_size=8)),
        ("block size: 16384", dict(block_size=16384)),
        ("precision: 'fp8'", dict(precision="fp8")),
        ("seed: -1", dict(seeds=[-1])),
        ("seed: 4294967296", dict(seeds=[2**32])),
        ("1 parameters", dict(seeds=[1, 2])),
        ("exp_avg_absmax", dict(exp_avg_absmax=[torch.zeros(1)])),
        ("torch.float64", dict(params=[torch.zeros(100, dtype=torch.float64)])),
        ("torch.bfloat16", dict(exp_avgs=[torch.zeros(100, dtype=torch.bfloat16)])),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_input_is_refused_and_changes_nothing(match: str, changes: dict) -> None:
    _refused(match, **changes)
