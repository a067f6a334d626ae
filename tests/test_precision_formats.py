"""The torch formats (adamlab.optim.precision) equal the reference's bit for bit.

Same float32 inputs, same outputs: the hash, the keys (from an int, and from a step tensor
without a host sync), parameter seeds, stochastic and nearest bfloat16 rounding (non-finite
values included), the two minifloat encoders, and blockwise quantize/dequantize (short last
blocks, all-zero and non-finite blocks, -0.0), and memory order for dense non-contiguous
tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from adamlab import reference as R
from adamlab.optim import precision as P

any32 = st.floats(width=32)  # NaN and ±inf included
unit32 = st.floats(min_value=0.0, max_value=1.0, width=32)


def _u16(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy().astype(np.int64) & 0xFFFF


@given(seed=st.integers(0, 2**32 - 1), t=st.integers(1, 2**40), stream=st.integers(0, 3))
@example(seed=2**32 - 1, t=2**32, stream=3)  # past 2^32, whatever the profile draws
@example(seed=12345, t=2**32 + 5, stream=2)
def test_keys_and_seeds(seed: int, t: int, stream: int) -> None:
    key = R.rounding_key(seed, t, stream)
    assert P.rounding_key(seed, t, stream) == key
    if t < 2**24:  # a float32 step tensor holds counts exactly up to 2^24
        assert int(P.rounding_key(seed, torch.tensor(float(t)), stream)) == key
        assert int(P.rounding_key(seed, torch.tensor(float(t), dtype=torch.float64), stream)) == key
    assert P.parameter_seed(seed, t % 2**32) == R.parameter_seed(seed, t % 2**32)


@given(key=st.integers(0, 2**32 - 1), n=st.integers(0, 3000))
def test_random_bits(key: int, n: int) -> None:
    want = R.random_bits(key, np.arange(n)).astype(np.int64)
    assert np.array_equal(P.random_bits(key, n, "cpu").numpy(), want)
    assert np.array_equal(P.random_bits(torch.tensor(key), n, "cpu").numpy(), want)


@given(x=hnp.arrays(np.float32, st.integers(0, 200), elements=any32), key=st.integers(0, 2**32 - 1))
def test_bf16_rounding(x: np.ndarray, key: int) -> None:
    bits = R.random_bits(key, np.arange(x.size))
    got = P.round_bf16_stochastic(torch.from_numpy(x), torch.from_numpy(bits.astype(np.int64)))
    assert np.array_equal(_u16(got), R.round_bf16_stochastic(x, bits).astype(np.int64))
    assert np.array_equal(_u16(P.round_bf16_nearest(torch.from_numpy(x))), R.round_bf16_nearest(x).astype(np.int64))


@pytest.mark.parametrize("fmt", [R.SIGNED_FORMAT, R.UNSIGNED_FORMAT], ids=["signed", "unsigned"])
@given(m=hnp.arrays(np.float32, st.integers(1, 200), elements=st.one_of(unit32, st.just(np.nan))))
def test_encode_minifloat(fmt: tuple[int, int, int], m: np.ndarray) -> None:
    assert np.array_equal(P.encode_minifloat(torch.from_numpy(m), *fmt).numpy(), R.encode_minifloat(m, *fmt))


@pytest.mark.parametrize("fmt", [R.SIGNED_FORMAT, R.UNSIGNED_FORMAT], ids=["signed", "unsigned"])
def test_encode_minifloat_at_every_midpoint(fmt: tuple[int, int, int]) -> None:
    table = R.decode_minifloat(np.arange(256 if fmt == R.UNSIGNED_FORMAT else 128), *fmt).astype(np.float64)
    table = table[table <= 1.0]
    mid = ((table[:-1] + table[1:]) / 2).astype(np.float32)
    edges = np.array([0.0, 1e-45, 1e-38, 1.0], dtype=np.float32)
    m = np.concatenate([mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(2)), table, edges])
    m = m.astype(np.float32)
    assert np.array_equal(P.encode_minifloat(torch.from_numpy(m), *fmt).numpy(), R.encode_minifloat(m, *fmt))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@given(
    x=hnp.arrays(
        np.float32, st.integers(0, 300), elements=st.one_of(st.floats(-(2.0**100), 2.0**100, width=32), st.just(-0.0))
    ),
    block_size=st.sampled_from([16, 32, 256]),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
def test_quantize_dequantize(signed: bool, x: np.ndarray, block_size: int, special) -> None:
    if special is not None and x.size:
        x = x.copy()
        x[x.size // 2] = special
    if not signed:
        x = np.abs(x)
    codes, absmax = R.quantize_blockwise(x, block_size, signed)
    got_codes, got_absmax = P.quantize_blockwise(torch.from_numpy(x), block_size, signed)
    assert np.array_equal(got_codes.numpy(), codes)
    assert np.array_equal(got_absmax.numpy(), absmax, equal_nan=True)
    back = P.dequantize_blockwise(got_codes, got_absmax, block_size, signed)
    assert np.array_equal(back.numpy(), R.dequantize_blockwise(codes, absmax, block_size, signed), equal_nan=True)


def test_the_map_tensor_is_the_reference_map() -> None:
    for signed in (True, False):
        assert np.array_equal(P.dynamic_map(signed, "cpu").numpy(), R.dynamic_map(signed))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        lambda: torch.randn(6, 7).t(),
        lambda: torch.randn(3, 4, 5).permute(2, 0, 1),
        lambda: torch.randn(5),
        lambda: torch.randn(()),
        lambda: torch.randn(4, 1, 3).transpose(0, 2),  # a size-1 dim with any stride
    ],
    ids=["channels_last", "transpose", "permute", "vector", "0-dim", "size-1"],
)
def test_flat_is_memory_order_and_a_view(make) -> None:
    t = make()
    view = P.flat(t)
    assert view.data_ptr() == t.data_ptr() and view.numel() == t.numel()
    storage = torch.tensor(t.untyped_storage().tolist(), dtype=torch.uint8).view(torch.float32)
    assert torch.equal(view, storage[t.storage_offset() : t.storage_offset() + t.numel()])
    P.write_flat(t, torch.arange(t.numel(), dtype=torch.float32))
    assert torch.equal(P.flat(t), torch.arange(t.numel(), dtype=torch.float32))


def test_flat_of_a_tensor_with_gaps_is_its_logical_order() -> None:
    t = torch.randn(4, 6)[:, ::2]
    assert torch.equal(P.flat(t), t.reshape(-1))
    P.write_flat(t, torch.arange(12, dtype=torch.float32))
    assert torch.equal(t.reshape(-1), torch.arange(12, dtype=torch.float32))


@pytest.mark.parametrize("t", [2**32, 2**32 + 5, 2**40 + 3])
def test_rounding_key_takes_the_low_32_bits_of_an_int_step(t: int) -> None:
    """Review F6: a Python int t past 2^32 is masked as the reference masks it (and as a
    0-dim tensor t is); unmasked, the key would differ from every other backend's."""
    for stream in range(4):
        want = R.rounding_key(7, t, stream)
        assert P.rounding_key(7, t, stream) == want
        assert int(P.rounding_key(7, torch.tensor(t), stream)) == want
