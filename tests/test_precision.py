"""Low-precision state (issue 14) on every implementation, against the float64 reference.

Every implementation of the registry (tests/registry.py) x every precision case x Adam and
Yogi x the flag cases that apply. Each step starts the reference from the optimizer's own
stored state (decoded) and parameters, with the same gradient, the same per-parameter seed
and t, and compares what the optimizer stored with what
:func:`adamlab.reference.low_precision_step` stores:

* codes (8-bit) and bit patterns (bf16 moments, bf16/fp16 parameters) are equal except
  at most :data:`MAX_OFF_FRACTION` of them, each one unit away: the optimizer's float32
  math differs from the float64 reference by a few ulps, which moves a value across a
  rounding boundary (a map midpoint, a stochastic-rounding threshold) only where it sits
  that close to one;
* the 8-bit block scales (absmax) within :data:`ABSMAX_RTOL` relative;
* float32 parameters within a few float32 ulps of θ plus 1e-5 of the step taken.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from adamlab import reference
from adamlab.optim.precision import flat
from tests.registry import IMPLEMENTATIONS, OPTIMIZERS, PRECISIONS, Precision, case_id, precision_cases, require

MAX_OFF_FRACTION = 0.01  # codes / bit patterns that may land one unit away (see the module docstring)
ABSMAX_RTOL = 1e-5
SEED = 7  # the optimizer's rounding_seed
STEPS = 3
# 0-dim, empty, a vector that fills no whole block, a matrix, a channels_last 4-D tensor
SHAPES = [(), (0,), (37,), (9, 21), (2, 3, 4, 5)]
CASES = precision_cases()


def _make(rule: str, impl: str, prec: Precision, flags: dict[str, Any]) -> tuple[list[torch.Tensor], Any]:
    gen = torch.Generator().manual_seed(11)
    params = []
    for shape in SHAPES:
        p = torch.randn(shape, generator=gen).to(prec.param_dtype)
        if len(shape) == 4:
            p = p.to(memory_format=torch.channels_last)
        params.append(torch.nn.Parameter(p))
    kwargs = dict(IMPLEMENTATIONS[impl].kwargs, **prec.options, **flags)
    opt = OPTIMIZERS[rule](params, lr=0.01 if rule == "adam" else 0.05, rounding_seed=SEED, **kwargs)
    return params, opt


def _f64(t: torch.Tensor) -> np.ndarray:
    """A tensor's values in its memory order, float64."""
    return flat(t.detach()).to(torch.float64).numpy().copy()


def _bits(t: torch.Tensor) -> np.ndarray:
    """The 16-bit patterns of a bf16/fp16 tensor in memory order (int64)."""
    return flat(t.detach()).contiguous().view(torch.int16).numpy().astype(np.int64) & 0xFFFF


def _stored(state: dict[str, torch.Tensor], key: str) -> dict[str, np.ndarray]:
    """One stored moment as the reference's dict (bits, or codes and absmax)."""
    t = state[key]
    if t.dtype == torch.uint8:
        return {"codes": flat(t).numpy().copy(), "absmax": state[key + "_absmax"].numpy().copy()}
    return {"bits": _bits(t).astype(np.uint16)}


def _decoded(state: dict[str, torch.Tensor], key: str, stream: int, block: int) -> np.ndarray:
    t = state[key]
    if t.dtype in (torch.uint8, torch.bfloat16):
        return reference.decode_moment(_stored(state, key), stream, block_size=block).astype(np.float64)
    return _f64(t)


def assert_units(
    got: np.ndarray,
    want: np.ndarray,
    what: str,
    signed_codes: bool = False,
    values: np.ndarray | None = None,
    exempt: np.ndarray | None = None,
) -> None:
    """Equal except at most MAX_OFF_FRACTION, each one unit away with the same sign -- or, for
    bit patterns, both values below 1e-6 of the largest (``values``, the expected ones): a
    value that cancels to ~0 in float64 keeps a float32 residue of a few ulps of its inputs."""
    got, want = got.astype(np.int64), want.astype(np.int64)
    sign = 0x80 if signed_codes else 0x8000
    off = got != want
    if exempt is not None and exempt.size == off.size:
        off &= ~exempt
    if not off.any():
        return
    magnitude_g, magnitude_w = got & (sign - 1), want & (sign - 1)
    same_sign = (got & sign) == (want & sign)
    near = (same_sign & (np.abs(magnitude_g - magnitude_w) == 1)) | ((magnitude_g <= 1) & (magnitude_w <= 1))
    if values is not None and not signed_codes:
        as_float = reference.bf16_to_float32(got.astype(np.uint16)).astype(np.float64)
        floor = 1e-6 * np.nanmax(np.abs(values), initial=0.0)
        near |= (np.abs(as_float) <= floor) & (np.abs(values) <= floor)
    assert near[off].all(), f"{what}: {got[off & ~near][:5]} vs {want[off & ~near][:5]} (more than one unit apart)"
    assert off.mean() <= MAX_OFF_FRACTION or off.sum() <= 1, f"{what}: {off.sum()} of {off.size} differ by one unit"


def _expected(
    rule: str, prec: Precision, theta: np.ndarray, g: np.ndarray, st: reference.State, seed: int, hyper: dict[str, Any]
) -> tuple[np.ndarray, reference.State, dict[str, Any], np.ndarray | None]:
    """The reference's step: (θ as float64 or None, new state, stored moments, θ's bit patterns
    for a 16-bit parameter)."""
    block = prec.options.get("block_size", 256)
    if prec.precision in ("bf16", "8bit"):
        round_param = "bf16_stochastic" if prec.stochastic_params else "float32"
        theta_new, new, stored = reference.low_precision_step(
            rule, theta, g, st, precision=prec.precision, seed=seed, block_size=block, round_param=round_param, **hyper
        )
    else:  # moments in their own dtype (float32, or bf16 to nearest); only θ rounds stochastically
        theta_new, new = reference.step(rule, theta, g, st, **hyper)
        stored = {}
        if prec.precision is None and prec.param_dtype == torch.bfloat16:
            stored = {
                "v": {"bits": reference.round_bf16_nearest(new.v)},
                "s": {"bits": reference.round_bf16_nearest(new.s)},
            }
            if new.s_max is not None:
                stored["s_max"] = {"bits": reference.round_bf16_nearest(new.s_max)}
        if prec.stochastic_params:
            key = reference.rounding_key(seed, new.t, reference.STREAM_PARAM)
            theta32 = np.asarray(theta_new, dtype=np.float32)
            bits = reference.round_bf16_stochastic(theta32, reference.random_bits(key, np.arange(theta32.size)))
            theta_new = reference.bf16_to_float32(bits).astype(np.float64)
    p_bits = None
    if prec.param_dtype == torch.bfloat16:  # to nearest (exact where θ was rounded stochastically)
        p_bits = reference.round_bf16_nearest(np.asarray(theta_new, dtype=np.float32)).astype(np.int64)
    elif prec.param_dtype == torch.float16:
        p_bits = np.asarray(np.asarray(theta_new, dtype=np.float32), dtype=np.float16).view(np.uint16).astype(np.int64)
    return theta_new, new, stored, p_bits


def _initial(value: float, prec: Precision) -> float:
    """The value a moment starts from as stored: bf16 to nearest, else float32 (8-bit: the
    block's absmax times the code of 1.0)."""
    x = np.float32(value)
    if prec.precision == "bf16" or (prec.precision is None and prec.param_dtype == torch.bfloat16):
        return float(reference.bf16_to_float32(reference.round_bf16_nearest(np.array([x])))[0])
    return float(x)


@pytest.mark.parametrize("prec_name,rule,flags", CASES, ids=[f"{n}-{r}-{case_id(f)}" for n, r, f in CASES])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_each_step_matches_the_reference(impl: str, prec_name: str, rule: str, flags: dict[str, Any]) -> None:
    require(impl, flags)
    prec = PRECISIONS[prec_name]
    params, opt = _make(rule, impl, prec, flags)
    group = opt.param_groups[0]
    block = group["block_size"]
    hyper = dict(
        lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
        weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=group["amsgrad"], maximize=group["maximize"], bias_correction=group["bias_correction"],
    )  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    for k in range(STEPS):
        before = []
        for p in params:
            g = (torch.randn(p.shape, generator=gen) * 10.0 ** (k - 1)).to(prec.param_dtype)
            p.grad = g.to(memory_format=torch.channels_last) if p.dim() == 4 else g
            state = opt.state[p]
            if state:
                st = reference.State(
                    t=int(state["step"]),
                    v=_decoded(state, "exp_avg", reference.STREAM_V, block),
                    s=_decoded(state, "exp_avg_sq", reference.STREAM_S, block),
                    s_max=_decoded(state, "max_exp_avg_sq", reference.STREAM_S_MAX, block)
                    if group["amsgrad"]
                    else None,
                )
            else:
                v0, s0 = (_initial(group[k], prec) for k in ("initial_exp_avg_value", "initial_accumulator_value"))
                st = reference.init_state(np.zeros(p.numel()), s0=s0, v0=v0, amsgrad=group["amsgrad"])
            before.append((_f64(p), _f64(p.grad), st))
        opt.step()
        for i, p in enumerate(params):
            theta, g, st = before[i]
            where = f"param {i} {tuple(p.shape)}, step {k + 1}"
            seed = reference.parameter_seed(SEED, i)
            state = opt.state[p]
            if prec.precision in ("bf16", "8bit") or prec.stochastic_params:
                assert int(state["rounding_seed"]) == seed, where
            theta_new, new, stored, p_bits = _expected(rule, prec, theta, g, st, seed, hyper)
            # L2 weight decay: where g + λθ cancels to 0 in float64, float32 keeps a residue of a
            # few ulps of g, and near ε that residue moves θ (as in every float32 optimizer)
            g_eff = g + (0.0 if hyper["decoupled_weight_decay"] else hyper["weight_decay"] * theta)
            exempt = np.abs(g_eff) <= 2.0**-20 * (np.abs(g) + hyper["weight_decay"] * np.abs(theta))
            assert int(state["step"]) == new.t == k + 1
            for name, key, signed in (
                ("v", "exp_avg", True),
                ("s", "exp_avg_sq", False),
                ("s_max", "max_exp_avg_sq", False),
            ):
                if name not in stored:
                    continue
                got = _stored(state, key)
                if "codes" in got:
                    assert_units(got["codes"], stored[name]["codes"], f"{key} codes, {where}", signed, exempt=exempt)
                    np.testing.assert_allclose(
                        got["absmax"], stored[name]["absmax"], rtol=ABSMAX_RTOL, err_msg=f"{key} absmax, {where}"
                    )
                else:
                    want = reference.bf16_to_float32(stored[name]["bits"]).astype(np.float64)
                    assert_units(got["bits"], stored[name]["bits"], f"{key} bits, {where}", values=want, exempt=exempt)
            if prec.precision == "fp32":  # a few float32 ulps of the inputs of each moment
                g_in = np.abs(g) + hyper["weight_decay"] * np.abs(theta)
                tol_v = 1e-6 * (np.abs(st.v) + g_in)
                tol_s = 1e-6 * (np.abs(st.s) + g_in**2)
                np.testing.assert_array_less(np.abs(_f64(state["exp_avg"]) - new.v), tol_v + 1e-30, err_msg=where)
                np.testing.assert_array_less(np.abs(_f64(state["exp_avg_sq"]) - new.s), tol_s + 1e-30, err_msg=where)
            if p_bits is not None:
                assert_units(_bits(p), p_bits, f"parameter bits, {where}", exempt=exempt)
            else:
                tol = 4e-7 * np.abs(theta) + 1e-5 * np.abs(theta_new - theta) + 1e-9
                err = np.where(exempt, 0.0, np.abs(_f64(p) - theta_new))
                np.testing.assert_array_less(err, tol + 1e-30, err_msg=f"parameter, {where}")
