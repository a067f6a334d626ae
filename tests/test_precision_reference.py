"""Properties of the reference's low-precision formats (adamlab.reference, "low-precision state").

The reference is the oracle every backend is tested against; these tests check that what it
computes is what the docs claim: stochastic rounding is unbiased and stays between the two
neighbours, the 8-bit maps round to the nearest entry, blockwise quantization is within half
a map step of the input, the random bits are a deterministic function of (seed, t, stream,
index), parameter seeds are distinct, and Yogi's second moment never goes negative.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamlab import reference as R

FORMATS = {"signed (v)": R.SIGNED_FORMAT, "unsigned (s)": R.UNSIGNED_FORMAT}
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
unit32 = st.floats(min_value=0.0, max_value=1.0, width=32)


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bfloat16 values just below and above |x| (toward zero, away from zero), with x's sign."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    down = (u >> np.uint64(16)).astype(np.uint16)
    up = np.where((u & np.uint64(0xFFFF)) != 0, down + np.uint16(1), down).astype(np.uint16)
    return R.bf16_to_float32(down), R.bf16_to_float32(up)


# ---- stochastic rounding ------------------------------------------------------------------
@given(x=finite32.filter(lambda v: abs(v) < 3.3e38))
def test_stochastic_rounding_is_exactly_unbiased_over_all_16_bit_draws(x: float) -> None:
    """Over the 65536 values of the low 16 random bits, the mean of the rounded value is x
    itself (the round-up probability is exactly the distance to the lower neighbour in ulps)."""
    x32 = np.float32(x)
    rounded = R.bf16_to_float32(R.round_bf16_stochastic(np.full(65536, x32), np.arange(65536, dtype=np.uint32)))
    assert rounded.astype(np.float64).mean() == float(x32)


def test_stochastic_rounding_is_unbiased_with_the_hash_bits() -> None:
    """With the counter-based bits of one key, the mean over 200,000 elements is within 5 standard errors."""
    x = np.float32(1.0 + 0.3 * 2.0**-7)  # 30 % of a bf16 ulp above 1
    n = 200_000
    bits = R.random_bits(R.rounding_key(3, 1, R.STREAM_V), np.arange(n))
    rounded = R.bf16_to_float32(R.round_bf16_stochastic(np.full(n, x), bits)).astype(np.float64)
    ulp = 2.0**-7
    assert set(np.unique(rounded)) == {1.0, 1.0 + ulp}
    p_up = (rounded > 1.0).mean()
    assert abs(p_up - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)


@given(x=hnp.arrays(np.float32, 64, elements=finite32), bits=hnp.arrays(np.uint32, 64))
def test_stochastic_rounding_never_leaves_the_two_neighbours(x: np.ndarray, bits: np.ndarray) -> None:
    got = R.bf16_to_float32(R.round_bf16_stochastic(x, bits))
    down, up = _neighbours(x)
    assert ((got == down) | (got == up)).all()
    assert (np.signbit(got) == np.signbit(x)).all()  # s >= 0 stays >= 0


def test_stochastic_rounding_keeps_non_finite_values() -> None:
    x = np.array([np.nan, np.inf, -np.inf, -np.nan], dtype=np.float32)
    got = R.bf16_to_float32(R.round_bf16_stochastic(x, np.full(4, 0xFFFF, dtype=np.uint32)))
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf and np.isnan(got[3])


@given(x=hnp.arrays(np.float32, 64, elements=finite32))
def test_nearest_rounding_is_round_half_to_even(x: np.ndarray) -> None:
    got = R.bf16_to_float32(R.round_bf16_nearest(x)).astype(np.float64)
    down, up = (v.astype(np.float64) for v in _neighbours(x))
    x64 = x.astype(np.float64)
    nearer = np.where(np.abs(x64 - down) < np.abs(up - x64), down, up)
    tie = np.abs(x64 - down) == np.abs(up - x64)
    even = np.where((down.astype(np.float32).view(np.uint32) >> 16) & 1 == 0, down, up)
    finite = np.isfinite(got)  # values beyond bf16's range round to inf
    assert np.array_equal(got[finite], np.where(tie, even, nearer)[finite])


# ---- the 8-bit maps ------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_map_is_sorted_and_spans_zero_to_one(signed: bool) -> None:
    table = R.dynamic_map(signed)
    magnitudes = table[:128] if signed else table
    assert magnitudes[0] == 0.0 and (np.diff(magnitudes) > 0).all()
    fmt = R.SIGNED_FORMAT if signed else R.UNSIGNED_FORMAT
    one = R.encode_minifloat(np.float32(1.0), *fmt)
    assert magnitudes[one] == 1.0 and len(magnitudes) - 1 - one == 7  # 7 codes above 1.0, never produced
    smallest = magnitudes[1]
    assert smallest == 2.0 ** (1 - fmt[2] - fmt[1])  # the smallest subnormal: 2^-17 (v), 2^-33 (s)
    if signed:
        assert np.array_equal(table[128:], -table[:128])


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
@settings(max_examples=200)
@given(m=unit32)
def test_encode_is_the_nearest_map_entry_ties_to_even(fmt: tuple[int, int, int], m: float) -> None:
    """Brute force over the map: the code's value is the nearest (the even code on a tie)."""
    check_nearest(np.array([m], dtype=np.float32), fmt)


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_encode_is_nearest_at_every_midpoint_and_its_neighbours(fmt: tuple[int, int, int]) -> None:
    """The hard cases: every midpoint between two map entries, and the float32 values next to it."""
    table = R.decode_minifloat(np.arange(1 << (fmt[0] + fmt[1])), *fmt).astype(np.float64)
    table = table[table <= 1.0]
    mid = ((table[:-1] + table[1:]) / 2).astype(np.float32)
    m = np.concatenate(
        [mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(2)), table.astype(np.float32)]
    )
    check_nearest(m, fmt)


def check_nearest(m: np.ndarray, fmt: tuple[int, int, int]) -> None:
    codes = R.encode_minifloat(m, *fmt)
    table = R.decode_minifloat(np.arange(1 << (fmt[0] + fmt[1])), *fmt).astype(np.float64)
    dist = np.abs(table[None, :] - m.astype(np.float64)[:, None])
    best = dist.min(axis=1)
    assert np.array_equal(dist[np.arange(m.size), codes], best)
    ties = (dist == best[:, None]).sum(axis=1) > 1
    assert (codes[ties] % 2 == 0).all()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@given(data=st.data(), block_size=st.sampled_from([16, 64, 256]))
def test_quantize_round_trip_is_within_half_a_map_step(signed: bool, data: st.DataObject, block_size: int) -> None:
    n = data.draw(st.integers(1, 700))
    scale = data.draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e30]))
    elements = st.floats(-1.0 if signed else 0.0, 1.0, width=32)
    x = (data.draw(hnp.arrays(np.float32, n, elements=elements)) * np.float32(scale)).astype(np.float32)
    codes, absmax = R.quantize_blockwise(x, block_size, signed)
    back = R.dequantize_blockwise(codes, absmax, block_size, signed).astype(np.float64)
    fmt = R.SIGNED_FORMAT if signed else R.UNSIGNED_FORMAT
    a = np.repeat(absmax.astype(np.float64), block_size)[:n]
    # padded blocks: each block's absmax is exactly its max |x|
    assert np.array_equal(
        absmax,
        np.array([np.abs(b).max() for b in np.array_split(x, range(block_size, n, block_size))], dtype=np.float32),
    )
    # normal range: half a step of a 3-bit mantissa (1/16 relative); below it half a subnormal step
    bound = np.abs(x) / 16 + a * 2.0 ** (1 - fmt[2] - fmt[1] - 1) + a * 2.0**-22  # + the rounding of m and of map·a
    assert (np.abs(back - x) <= bound).all()
    assert (np.sign(back) * np.sign(x) >= 0).all()
    if not signed:
        assert (back >= 0).all()
    largest = np.abs(x) == a
    assert (back[largest] == np.abs(x[largest]) * np.where(signed, np.sign(x[largest]), 1)).all()  # the max is exact


def test_quantize_special_blocks() -> None:
    x = np.zeros(48, dtype=np.float32)
    x[16] = np.nan
    x[33] = -np.inf
    x[40:] = -0.0
    codes, absmax = R.quantize_blockwise(x, 16, signed=True)
    assert absmax[0] == 0 and np.isnan(absmax[1]) and np.isnan(absmax[2])
    assert (codes == 0).all()  # an all-zero block, and non-finite blocks: codes 0 (-0.0 encodes as +0)
    back = R.dequantize_blockwise(codes, absmax, 16, signed=True)
    assert (back[:16] == 0).all() and np.isnan(back[16:]).all()


# ---- the random bits ---------------------------------------------------------------------------
def test_hash_is_deterministic_and_a_bijection_on_a_range() -> None:
    x = np.arange(1 << 17, dtype=np.uint64) * np.uint64(2654435761) & np.uint64(R.MASK32)
    a, b = R.mix32(x), R.mix32(x.copy())
    assert np.array_equal(a, b) and a.dtype == np.uint32
    assert np.unique(a).size == np.unique(x).size  # no collisions: a bijection
    keys = {R.rounding_key(seed, t, stream) for seed in (0, 1, 2**32 - 1) for t in (1, 2, 10**6) for stream in range(4)}
    assert len(keys) == 36
    key = R.rounding_key(5, 3, R.STREAM_S)
    assert key == R.rounding_key(5, 3, R.STREAM_S)
    assert np.array_equal(R.random_bits(key, np.arange(1000)), R.random_bits(key, np.arange(1000)))
    # index >= 2^32 (its high half is mixed in): distinct from the low-half index
    assert R.random_bits(key, np.array([2**32 + 5]))[0] != R.random_bits(key, np.array([5]))[0]


def test_random_bits_look_uniform() -> None:
    bits = R.random_bits(R.rounding_key(0, 1, R.STREAM_V), np.arange(1 << 16)).astype(np.uint64)
    for shift in (0, 8, 16, 24):  # each byte: a chi-square over 256 cells, far from its 99.99 % quantile
        counts = np.bincount(((bits >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.int64), minlength=256)
        expected = bits.size / 256
        assert ((counts - expected) ** 2 / expected).sum() < 380


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_parameter_seeds_are_distinct(seed: int) -> None:
    seeds = [R.parameter_seed(seed, i) for i in range(10_000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**32 for s in seeds)
    assert R.parameter_seed(seed, 3) == R.parameter_seed(seed, 3)


# ---- Yogi's second moment stays >= 0 in every precision ------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("bias_correction", [True, False, "recursive"], ids=["bc", "nobc", "recursive"])
@pytest.mark.parametrize("s0", [0.0, 1e-6])
@settings(max_examples=10)
@given(seed=st.integers(0, 2**16))
def test_yogi_second_moment_never_goes_negative(precision: str, bias_correction, s0: float, seed: int) -> None:
    """Yogi moves s by at most (1-β2)·g² towards g² (docs/precision.md): from s >= 0 it stays
    >= 0 -- checked here over 40 steps of gradients whose scale jumps by up to 10^6 between
    steps (s far above, then far below, g²), with s stored in bf16 or 8 bits."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(300)
    state = R.init_state(theta, s0=s0)
    for t in range(40):
        g = rng.standard_normal(300) * 10.0 ** rng.integers(-6, 3)
        g[rng.random(300) < 0.2] = 0.0
        theta, state, stored = R.low_precision_step(
            "yogi", theta, g, state, precision=precision, seed=9, block_size=64,
            lr=0.01, beta1=0.9, beta2=0.999, eps=1e-3, bias_correction=bias_correction,
        )  # fmt: skip
        assert (state.s >= 0).all(), f"step {t + 1}"
        if precision == "bf16":  # the stored bit patterns carry no sign either
            assert (stored["s"]["bits"] & 0x8000 == 0).all()
        assert np.isfinite(theta).all()
