"""The Triton kernel with low-precision state against :mod:`adamlab.reference`, step by step.

``fused_cuda_update(..., low_precision=LowPrecision(...))``: bfloat16 moments rounded
stochastically, 8-bit blockwise moments and stochastically rounded bfloat16 parameters.
The state is built with the reference's own encoders (independent of the optimizer
classes), and every step is compared with :func:`reference.low_precision_step` from the
kernel's own state before it. The runs here use Triton's interpreter on CPU tensors;
``tests/test_triton_cuda.py`` runs the same checks on a GPU.

Two kinds of agreement (the contract of issue 14):

* **bit for bit** on exact inputs: β1 = 1/2, β2 = 3/4, ε = 0, no bias correction, dyadic
  parameters and learning rate. Then every float32 operation of the kernel is exact (v = g/2,
  s = g²/4, √s = |g|/2, v/√s = ±1), so codes, absmax, random-rounded bits and parameters
  must equal the reference's exactly; a second case starts from a nonzero state that
  decodes exactly, which checks the decoders.
* **within a stated bound** on ordinary inputs: the kernel's float32 math differs from the
  float64 reference by a few ulps, so a value on a rounding boundary may land one unit
  away. At most :data:`FRACTION` of the codes / bfloat16 bits differ, each by one unit (in
  value order); absmax agrees within :data:`ABSMAX_ULPS` of the size of the terms the new
  moment is summed from (old moment and gradient: cancellation makes a relative bound
  wrong), and decoded moments within one code step plus that.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from adamlab import reference
from adamlab.optim.precision import LowPrecision
from tests.test_triton import _hyper

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)

FRACTION = 0.01  # of the codes or bits of one tensor that may sit one unit from the reference's
ABSMAX_ULPS = 2.0**-20  # absmax within 8 float32 ulps of the terms it is computed from
P32_TOL = dict(rtol=2e-6, atol=2e-7)  # a float32 parameter (as tests/test_triton.py)
STREAMS = {"v": reference.STREAM_V, "s": reference.STREAM_S, "s_max": reference.STREAM_S_MAX}
# the smallest nonzero magnitude of each map: one code step below the normal range
SUBNORMAL_STEP = {"v": 2.0**-17, "s": 2.0**-33, "s_max": 2.0**-33}

CASES = {
    "default": {},
    "no_bias_correction": dict(bias_correction=False),
    "l2": dict(weight_decay=0.1),
    "decoupled_maximize": dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
}
# a tensor that is not a whole number of blocks, one of exactly one block, an empty one, a 2-D one
SHAPES = [(37,), (32,), (0,), (5, 13)]
START_STEPS = [0, 3, 7, 1]  # each tensor at its own step: the keys differ by t


def interpreted():
    from adamlab.optim import triton_fused

    return triton_fused.interpreted_update


def flat(t):
    """A tensor's elements in memory order: the kernel's element index (and block membership)."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return t.detach().permute(order).reshape(-1)


def in_layout(t, like):
    """``t``'s flat elements (memory order) as a tensor laid out like ``like``."""
    out = torch.empty_like(like, dtype=t.dtype)
    flat(out).copy_(t.reshape(-1))  # flat() of a dense tensor is a view: this writes its memory
    return out


def f64(t):
    return flat(t).double().cpu().numpy()


def bf16_bits(t):
    """The bit patterns (uint16, memory order) of a bfloat16 tensor."""
    return flat(t).cpu().contiguous().view(torch.int16).numpy().view(np.uint16)


def bf16_tensor(bits, shape, device):
    return (
        torch.from_numpy(np.asarray(bits, dtype=np.uint16).view(np.int16).copy())
        .view(torch.bfloat16)
        .reshape(shape)
        .to(device)
    )


def rank(codes, kind):
    """Codes or bfloat16 bits as integers in value order (sign-magnitude → signed): one unit
    apart means neighbouring values; +0 and -0 are both 0."""
    codes = np.asarray(codes, dtype=np.int64)
    if kind == "bits":
        return np.where(codes & 0x8000, -(codes & 0x7FFF), codes)
    if kind == "v":
        return np.where(codes & 0x80, -(codes & 0x7F), codes)
    return codes


def assert_mostly_equal(got, want, kind, what, fraction=FRACTION):
    """Equal except at most ``fraction`` of the elements, each one unit away in value order."""
    if kind == "bits":  # a NaN is a NaN: its sign and payload are the hardware's (x86 and CUDA differ)
        nan = lambda b: (np.asarray(b, dtype=np.int64) & 0x7FFF) > 0x7F80  # noqa: E731
        both = nan(got) & nan(want)
        got, want = np.where(both, 0, got), np.where(both, 0, want)
    got, want = rank(got, kind), rank(want, kind)
    assert got.shape == want.shape, what
    diff = got - want
    far = np.flatnonzero(np.abs(diff) > 1)
    assert far.size == 0, f"{what}: {far.size} elements more than one unit away, e.g. at {far[:5]}"
    allowed = math.floor(fraction * diff.size)
    assert np.count_nonzero(diff) <= allowed, (
        f"{what}: {np.count_nonzero(diff)} of {diff.size} differ (allowed {allowed})"
    )


class Run:
    """Parameters, gradients and a low-precision state for one test, on ``device``, stepped by
    ``update`` (the interpreter or the compiled kernel)."""

    def __init__(
        self,
        rule,
        precision,
        *,
        case=None,
        shapes=SHAPES,
        block_size=32,
        p_dtype=torch.float32,
        stochastic_rounding=False,
        seed=0,
        start_steps=START_STEPS,
        update=None,
        device="cpu",
        hyper=None,
        memory_format=torch.contiguous_format,
    ):
        self.rule, self.precision, self.block_size = rule, precision, block_size
        self.update, self.device, self.p_dtype = update or interpreted(), device, p_dtype
        self.stochastic_rounding = stochastic_rounding
        self.hyper = hyper or _hyper(rule, case or {})
        self.gen = torch.Generator().manual_seed(seed)
        self.seeds = [reference.parameter_seed(1000 + seed, i) for i in range(len(shapes))]
        self.shapes = shapes
        # the layouts: every tensor of parameter i is laid out like layouts[i]
        self.layouts = [
            torch.empty(s, device=device, memory_format=memory_format if len(s) == 4 else torch.contiguous_format)
            for s in shapes
        ]
        self.params = [in_layout(self.randn(s).to(p_dtype).to(device), like) for s, like in zip(shapes, self.layouts)]
        self.steps = [torch.tensor(float(start_steps[i % len(start_steps)]), device=device) for i in range(len(shapes))]
        self.exp_avgs, self.exp_avg_sqs, self.maxes = [], [], []
        self.v_absmax, self.s_absmax = [], []
        for shape in shapes:  # (values in memory order: the state is encoded as it is stored)
            v = self.randn(shape).numpy() * 0.1
            s = np.abs(self.randn(shape).numpy()) * 0.01
            self.set_state(shape, v, s, np.maximum(s, np.abs(self.randn(shape).numpy()) * 0.01))

    def randn(self, shape, scale=1.0):
        return torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale

    def set_state(self, shape, v, s, s_max=None):
        """Append one tensor's state, stored as the reference encodes the float32 values."""
        stored = {
            name: reference.encode_moment(x, STREAMS[name], self.precision, t=5, seed=77, block_size=self.block_size)
            for name, x in (("v", v), ("s", s), ("s_max", s_max))
            if x is not None
        }
        if self.precision == "bf16":
            as_tensor = {name: bf16_tensor(enc["bits"], shape, self.device) for name, enc in stored.items()}
        else:
            as_tensor = {
                name: torch.from_numpy(enc["codes"].copy()).reshape(shape).to(self.device)
                for name, enc in stored.items()
            }
            self.v_absmax.append(torch.from_numpy(stored["v"]["absmax"].copy()).to(self.device))
            self.s_absmax.append(torch.from_numpy(stored["s"]["absmax"].copy()).to(self.device))
        like = self.layouts[len(self.exp_avgs)]
        as_tensor = {name: in_layout(t, like) for name, t in as_tensor.items()}
        self.exp_avgs.append(as_tensor["v"])
        self.exp_avg_sqs.append(as_tensor["s"])
        if self.hyper["amsgrad"]:
            self.maxes.append(as_tensor["s_max"])

    def grads(self, scale=1.0):
        return [in_layout(self.randn(p.shape, scale).to(self.p_dtype).to(self.device), p) for p in self.params]

    def stored(self, i):
        """Tensor i's state as the reference stores it: {"v": {...}, "s": {...}[, "s_max"]}."""
        names = [("v", self.exp_avgs), ("s", self.exp_avg_sqs)] + ([("s_max", self.maxes)] if self.maxes else [])
        out = {}
        for name, tensors in names:
            if self.precision == "bf16":
                out[name] = {"bits": bf16_bits(tensors[i])}
            else:
                absmax = (self.v_absmax if name == "v" else self.s_absmax)[i]
                out[name] = {
                    "codes": flat(tensors[i]).cpu().numpy().copy(),
                    "absmax": absmax.cpu().numpy().copy(),
                }
        return out

    def snapshot(self):
        """(θ, the decoded reference State) of each tensor, from the kernel's own state."""
        snap = []
        for i, p in enumerate(self.params):
            stored = self.stored(i)
            decoded = {
                name: reference.decode_moment(enc, STREAMS[name], block_size=self.block_size)
                for name, enc in stored.items()
            }
            state = reference.State(
                t=int(self.steps[i].item()),
                v=decoded["v"].astype(np.float64),
                s=decoded["s"].astype(np.float64),
                s_max=decoded["s_max"].astype(np.float64) if "s_max" in decoded else None,
            )
            snap.append((f64(p), state))
        return snap

    def low_precision(self):
        return LowPrecision(
            self.precision, self.block_size, self.stochastic_rounding, list(self.seeds),
            self.v_absmax if self.precision == "8bit" else [], self.s_absmax if self.precision == "8bit" else [],
        )  # fmt: skip

    def step(self, grads, **extra):
        self.update(
            self.rule, self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.maxes, self.steps,
            capturable=False, low_precision=self.low_precision(), **self.hyper, **extra,
        )  # fmt: skip

    def round_param(self):
        if self.p_dtype != torch.bfloat16:
            return "float32"
        return "bf16_stochastic" if self.stochastic_rounding else "bf16_nearest"

    def expected(self, before, grads):
        """reference.low_precision_step of every tensor: [(θ, State, stored)]."""
        return [
            reference.low_precision_step(
                self.rule,
                theta,
                f64(grads[i]),
                state,
                precision=self.precision,
                seed=self.seeds[i],
                block_size=self.block_size,
                round_param=self.round_param(),
                **self.hyper,
            )
            for i, (theta, state) in enumerate(before)
        ]

    def check(self, before, grads, fraction=FRACTION, exact_parameters=None):
        """Each tensor against one reference step from ``before``: at most ``fraction`` of the
        codes/bits one unit off (0: bit for bit), decoded moments within one code step.
        ``exact_parameters`` (default: ``fraction == 0``) compares parameters bit for bit; on a
        GPU Triton's √ and ``/`` are approximate, so only the moments of exact inputs are exact
        there (they need only products and sums)."""
        if exact_parameters is None:
            exact_parameters = fraction == 0
        for i, (want_theta, want, want_stored) in enumerate(self.expected(before, grads)):
            name = f"tensor {i} {tuple(self.params[i].shape)}"
            theta, old = before[i]
            g = np.abs(f64(grads[i])) + abs(self.hyper["weight_decay"]) * np.abs(theta)
            terms = {"v": np.abs(old.v.reshape(-1)) + g, "s": np.abs(old.s.reshape(-1)) + g * g}
            assert int(self.steps[i].item()) == want.t, f"{name}: step count"
            got_stored = self.stored(i)
            for moment, enc in want_stored.items():
                got = got_stored[moment]
                what = f"{name}: {moment}"
                if self.precision == "bf16":
                    assert_mostly_equal(got["bits"], enc["bits"], "bits", what, fraction)
                    step = 2.0**-7 * np.abs(reference.bf16_to_float32(enc["bits"])) + 2.0**-133
                else:
                    kind = "v" if moment == "v" else "s"
                    assert_mostly_equal(got["codes"], enc["codes"], kind, what + " codes", fraction)
                    n = enc["codes"].size
                    padded = np.zeros(enc["absmax"].size * self.block_size)
                    padded[:n] = terms[moment]
                    tol = ABSMAX_ULPS * padded.reshape(-1, self.block_size).max(axis=1) * (fraction > 0)
                    with np.errstate(invalid="ignore"):
                        close = (np.abs(got["absmax"] - enc["absmax"]) <= tol) | (
                            np.isnan(got["absmax"]) & np.isnan(enc["absmax"])
                        )
                    assert close.all(), (
                        f"{what}: absmax {got['absmax']} vs the reference's {enc['absmax']} (bound {tol})"
                    )
                    scale = np.repeat(enc["absmax"], self.block_size)[:n]
                    value = reference.decode_moment(enc, STREAMS[moment], block_size=self.block_size)
                    step = (
                        2.0**-3 * np.abs(value) + SUBNORMAL_STEP[moment] * scale + np.repeat(tol, self.block_size)[:n]
                    )
                got_value = reference.decode_moment(got, STREAMS[moment], block_size=self.block_size)
                want_value = reference.decode_moment(enc, STREAMS[moment], block_size=self.block_size)
                if fraction == 0:
                    np.testing.assert_array_equal(got_value, want_value, err_msg=what)
                else:
                    with np.errstate(invalid="ignore"):
                        close = (got_value == want_value) | (np.abs(got_value - want_value) <= step)
                        close |= np.isnan(got_value) & np.isnan(want_value)
                    assert close.all(), f"{what}: decoded values more than one step from the reference's"
            got_theta = f64(self.params[i])
            if self.p_dtype == torch.bfloat16:
                want_bits = reference.round_bf16_nearest(np.asarray(want_theta, dtype=np.float32).reshape(-1))
                allowed = 0 if exact_parameters else FRACTION
                assert_mostly_equal(bf16_bits(self.params[i]), want_bits, "bits", f"{name}: parameter", allowed)
            elif exact_parameters:
                np.testing.assert_array_equal(
                    got_theta, np.asarray(want_theta, dtype=np.float32).reshape(-1), err_msg=name
                )
            else:
                np.testing.assert_allclose(
                    got_theta, np.reshape(want_theta, -1), **P32_TOL, err_msg=f"{name}: parameter"
                )


def run_steps(run, steps=2, grad_scale=None):
    for _ in range(steps):
        before = run.snapshot()
        grads = run.grads()
        extra = {}
        if grad_scale is not None:
            extra = dict(
                grad_scale=torch.tensor(grad_scale, device=run.device), found_inf=torch.tensor(0.0, device=run.device)
            )
            scaled = [g * grad_scale for g in grads]  # a power of two: unscaling is exact
            run.step(scaled, **extra)
        else:
            run.step(grads)
        run.check(before, grads)


# ---- ordinary inputs: within the stated bound --------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_matches_reference_step_by_step(rule, precision, case):
    run_steps(Run(rule, precision, case=CASES[case], seed=len(case)))


@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_bf16_amsgrad_keeps_its_max_in_stream_3(rule):
    run_steps(Run(rule, "bf16", case=dict(amsgrad=True), seed=4))


@pytest.mark.parametrize("block_size", [16, 64, 256])
def test_block_sizes(block_size):
    """One program per block: tensors shorter than, equal to and not a multiple of the block."""
    shapes = [(300,), (block_size,), (3, 7)]
    run_steps(Run("yogi", "8bit", shapes=shapes, block_size=block_size, seed=block_size), steps=1)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_channels_last_parameters_in_memory_order(precision):
    """A channels_last parameter and its state: element index and blocks follow memory order."""
    shapes = [(2, 3, 4, 5), (3, 2, 3, 3)]
    run = Run("adam", precision, shapes=shapes, block_size=16, memory_format=torch.channels_last, seed=9)
    assert not run.params[0].is_contiguous() and run.exp_avgs[0].stride() == run.params[0].stride()
    run_steps(run)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_bf16_parameters_rounded_stochastically(rule, precision):
    run_steps(Run(rule, precision, p_dtype=torch.bfloat16, stochastic_rounding=True, seed=11))


def test_bf16_parameters_rounded_to_nearest_without_the_option():
    run_steps(Run("adam", "bf16", p_dtype=torch.bfloat16, stochastic_rounding=False, seed=12), steps=1)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_grad_scale_unscales_inside_the_kernel(precision):
    run_steps(Run("adam", precision, seed=13), grad_scale=1024.0)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_found_inf_skips_everything(precision):
    run = Run("yogi", precision, p_dtype=torch.bfloat16, stochastic_rounding=True, seed=14)
    saved = [t.clone() for t in run.params + run.exp_avgs + run.exp_avg_sqs + run.v_absmax + run.s_absmax + run.steps]
    grads = run.grads()
    grads[0][3] = float("inf")
    run.step(grads, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    after = run.params + run.exp_avgs + run.exp_avg_sqs + run.v_absmax + run.s_absmax + run.steps
    for a, b in zip(after, saved):
        assert torch.equal(a, b), "a skipped step changed parameters, state or step count"
    run_steps(run, steps=1)  # and the next step goes on from the old count


def test_non_finite_gradient_poisons_only_its_block():
    """A block holding inf/NaN stores absmax NaN and codes 0 (the reference's rule); the
    other blocks and tensors are unaffected. bfloat16 moments keep the NaN."""
    for precision in ("8bit", "bf16"):
        run = Run("adam", precision, shapes=[(70,), (9,)], seed=15)
        before = run.snapshot()
        grads = run.grads()
        grads[0][40] = float("nan")
        grads[1][2] = float("inf")
        run.step(grads)
        with np.errstate(invalid="ignore", over="ignore"):
            run.check(before, grads)
        if precision == "8bit":
            assert np.isnan(run.v_absmax[0][1].item()) and not torch.isnan(run.v_absmax[0][[0, 2]]).any()
            assert torch.all(run.exp_avgs[0][32:64] == 0)


def test_fp32_parameters_ignore_stochastic_rounding():
    """stochastic_rounding touches bfloat16 parameters only: a float32 one is stored as always."""
    a = Run("adam", "bf16", stochastic_rounding=True, seed=16)
    b = Run("adam", "bf16", stochastic_rounding=False, seed=16)
    grads = a.grads()
    a.step(grads)
    b.step(grads)
    for x, y in zip(a.params + a.exp_avgs, b.params + b.exp_avgs):
        assert torch.equal(x, y)


def test_parameter_rounding_without_low_precision_moments():
    """LowPrecision(None, ...): float32 moments as today, bfloat16 parameters rounded
    stochastically with stream 2 (the key from the device step)."""
    gen = torch.Generator().manual_seed(17)
    shapes, start = [(37,), (5, 6)], [2, 9]
    params = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    exp_avgs = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
    exp_avg_sqs = [torch.rand(s, generator=gen) * 0.01 for s in shapes]
    steps = [torch.tensor(float(t)) for t in start]
    seeds = [reference.parameter_seed(5, i) for i in range(len(shapes))]
    hyper = _hyper("adam", {})
    before = [
        (f64(p), reference.State(t=t, v=f64(v), s=f64(s))) for p, v, s, t in zip(params, exp_avgs, exp_avg_sqs, start)
    ]
    interpreted()(
        "adam", params, grads, exp_avgs, exp_avg_sqs, [], steps, capturable=False,
        low_precision=LowPrecision(None, 256, True, seeds, [], []), **hyper,
    )  # fmt: skip
    for i, (theta, state) in enumerate(before):
        want_theta, want = reference.step("adam", theta, f64(grads[i]), state, **hyper)
        np.testing.assert_allclose(f64(exp_avgs[i]), want.v, **P32_TOL)
        np.testing.assert_allclose(f64(exp_avg_sqs[i]), want.s, **P32_TOL)
        key = reference.rounding_key(seeds[i], want.t, reference.STREAM_PARAM)
        theta32 = np.asarray(want_theta, dtype=np.float32)
        want_bits = reference.round_bf16_stochastic(theta32, reference.random_bits(key, np.arange(theta32.size)))
        assert_mostly_equal(bf16_bits(params[i]), want_bits, "bits", f"parameter {i}")
        assert not np.array_equal(want_bits, reference.round_bf16_nearest(theta32)), (
            "the test needs rounding that differs"
        )


# ---- exact inputs: bit for bit -----------------------------------------------------------

EXACT_HYPER = dict(
    lr=2.0**-10, beta1=0.5, beta2=0.75, eps=0.0, weight_decay=0.0, decoupled_weight_decay=False,
    amsgrad=False, maximize=False, bias_correction=False,
)  # fmt: skip


def exact_run(rule, precision, p_dtype, seed, backend=None, **hyper):
    """A run whose float32 math is exact: from v = s = 0 every step is θ ∓ lr (see the module
    docstring). Parameters are multiples of 2^-12 (bfloat16 ones round first). ``backend``:
    Run's ``update`` and ``device`` (default: the interpreter on the CPU)."""
    h = dict(EXACT_HYPER, **hyper)
    run = Run(
        rule,
        precision,
        p_dtype=p_dtype,
        stochastic_rounding=p_dtype == torch.bfloat16,
        seed=seed,
        hyper=h,
        **(backend or {}),
    )
    run.params = [(torch.round(p.double() * 4096) / 4096).to(p_dtype) for p in run.params]
    run.exp_avgs, run.exp_avg_sqs, run.v_absmax, run.s_absmax = [], [], [], []
    for shape in run.shapes:
        zero = np.zeros(shape)
        run.set_state(shape, zero, zero)
    return run


def exact_inputs(rule, precision, p_dtype, backend=None, exact_parameters=None):
    run = exact_run(rule, precision, p_dtype, seed=21, backend=backend)
    before = run.snapshot()
    grads = run.grads()
    run.step(grads)
    run.check(before, grads, fraction=0, exact_parameters=exact_parameters)


def exact_with_grad_scale_and_maximize(precision, backend=None, exact_parameters=None):
    run = exact_run("yogi", precision, torch.bfloat16, seed=22, backend=backend, maximize=True)
    before = run.snapshot()
    grads = run.grads()
    run.step([g * 8 for g in grads], grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    run.check(before, grads, fraction=0, exact_parameters=exact_parameters)


def exact_from_a_decoded_state(rule, precision, backend=None, exact_parameters=None):
    """A nonzero stored state that the maps hold exactly: v = ±{1, 1.5}·2^e (a ±1 in every
    block, so absmax = 1), s = v², g = v. Then v and s come out unchanged and θ moves by
    ∓lr, exactly, so a decoder off by one bit anywhere changes a code or a parameter."""
    run = exact_run(rule, precision, torch.float32, seed=23, backend=backend)
    gen = np.random.default_rng(23)
    run.exp_avgs, run.exp_avg_sqs, run.v_absmax, run.s_absmax = [], [], [], []
    values = []
    for shape in run.shapes:
        n = int(np.prod(shape))
        v = gen.choice([-1.5, -1.0, 1.0, 1.5], n) * np.exp2(gen.integers(-12, 0, n))
        v[:: run.block_size] = gen.choice([-1.0, 1.0], v[:: run.block_size].size)
        run.set_state(shape, v.reshape(shape), (v * v).reshape(shape))
        values.append(v)
    before = run.snapshot()
    for (_, state), v in zip(before, values):
        np.testing.assert_array_equal(state.v.reshape(-1), v)  # the state holds v exactly
    grads = [
        torch.from_numpy(v.astype(np.float32)).reshape(shape).to(run.device) for v, shape in zip(values, run.shapes)
    ]
    run.step(grads)
    run.check(before, grads, fraction=0, exact_parameters=exact_parameters)


@pytest.mark.parametrize("p_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_bit_for_bit_on_exact_inputs(rule, precision, p_dtype):
    exact_inputs(rule, precision, p_dtype)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
def test_bit_for_bit_with_grad_scale_and_maximize(precision):
    exact_with_grad_scale_and_maximize(precision)


@pytest.mark.parametrize("precision", ["bf16", "8bit"])
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_bit_for_bit_from_a_decoded_state(rule, precision):
    exact_from_a_decoded_state(rule, precision)


# ---- refused, with nothing changed -------------------------------------------------------


def refused(run, error, match, **changes):
    saved = [t.clone() for t in run.params + run.exp_avgs + run.exp_avg_sqs + run.steps]
    lp = run.low_precision()._replace(**{k: v for k, v in changes.items() if k in LowPrecision._fields})
    hyper = dict(run.hyper, **{k: v for k, v in changes.items() if k in run.hyper})
    with pytest.raises(error, match=match):
        run.update(
            run.rule, run.params, run.grads(), changes.get("exp_avgs", run.exp_avgs), run.exp_avg_sqs,
            changes.get("maxes", run.maxes), run.steps, capturable=False, low_precision=lp, **hyper,
        )  # fmt: skip
    for a, b in zip(run.params + run.exp_avgs + run.exp_avg_sqs + run.steps, saved):
        assert torch.equal(a, b)


def test_refusals_change_nothing():
    run = Run("adam", "8bit", shapes=[(40,), (7,)])
    refused(run, ValueError, "amsgrad", amsgrad=True, maxes=[s.clone() for s in run.exp_avg_sqs])
    refused(run, ValueError, "block_size: 48", block_size=48)
    refused(run, ValueError, "block_size: 8 ", block_size=8)
    refused(run, ValueError, "block_size: 16384", block_size=16384)
    refused(run, ValueError, "precision: '4bit'", precision="4bit")
    refused(run, ValueError, "seed: 4294967296", seeds=[0, 2**32])
    refused(run, ValueError, "1 seeds for 2", seeds=[0])
    refused(run, RuntimeError, "absmax of parameter 1", exp_avg_sq_absmax=[run.s_absmax[0], run.s_absmax[0]])
    refused(run, RuntimeError, "uint8 state", exp_avgs=[torch.zeros(40), torch.zeros(7)])
    bf = Run("adam", "bf16", shapes=[(40,)])
    refused(bf, RuntimeError, "bfloat16 state", exp_avgs=[torch.zeros(40)])


# ---- the kernel's functions, one by one, bit for bit on the same float32 inputs -----------


K = None  # the interpreted kernel module, set by the fixture below


@pytest.fixture(scope="module")
def kernels():
    """Small test kernels calling the interpreted kernel module's functions (decorated while
    TRITON_INTERPRET=1, as :func:`triton_fused.kernel_module` does, so they run on CPU tensors)."""
    import os

    import triton
    import triton.language as tl

    from adamlab.optim import triton_fused

    global K  # the interpreter runs a kernel's source in this module's globals
    K = triton_fused.kernel_module(interpret=True)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:

        @triton.jit
        def minifloat(m_ptr, out_ptr, n, MANTISSA: tl.constexpr, BIAS: tl.constexpr, N: tl.constexpr):
            offs = tl.arange(0, N)
            mask = offs < n
            code = K.encode_minifloat(tl.load(m_ptr + offs, mask=mask, other=0.0), MANTISSA, BIAS)
            tl.store(out_ptr + offs, code, mask=mask)
            tl.store(out_ptr + N + offs, K.decode_minifloat(offs, MANTISSA, BIAS).to(tl.int32, bitcast=True))

        @triton.jit
        def rounding(x_ptr, bits_ptr, out_ptr, n, N: tl.constexpr):
            offs = tl.arange(0, N)
            mask = offs < n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            bits = tl.load(bits_ptr + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
            sr = K.round_bf16_stochastic(x, bits).to(tl.int16, bitcast=True)
            rn = K.round_bf16_nearest(x).to(tl.int16, bitcast=True)
            tl.store(out_ptr + offs, sr, mask=mask)
            tl.store(out_ptr + N + offs, rn, mask=mask)

        @triton.jit
        def hashes(seed_ptr, t_ptr, index_ptr, out_ptr, n, N: tl.constexpr):
            """keys of the 4 streams for (seed, t) pairs, and random_bits(key of stream 0, index)."""
            offs = tl.arange(0, N)
            mask = offs < n
            seed = tl.load(seed_ptr + offs, mask=mask, other=0).to(tl.uint32)
            t = tl.load(t_ptr + offs, mask=mask, other=0.0)
            seed_t = K.mix32(K.mix32(seed) ^ t.to(tl.uint32))
            keys = (K.stream_key(seed_t, K.SALT_V), K.stream_key(seed_t, K.SALT_S),
                    K.stream_key(seed_t, K.SALT_PARAM), K.stream_key(seed_t, K.SALT_S_MAX))  # fmt: skip
            for j in tl.static_range(4):
                tl.store(out_ptr + j * N + offs, keys[j].to(tl.int32, bitcast=True), mask=mask)
            index = tl.load(index_ptr + offs, mask=mask, other=0)
            hi, lo = K.index_words(index, index)  # one index per "block" here
            bits = K.random_bits(keys[0], hi, lo)
            tl.store(out_ptr + 4 * N + offs, bits.to(tl.int32, bitcast=True), mask=mask)

        @triton.jit
        def blocks(x_ptr, codes_ptr, absmax_ptr, decoded_ptr, n, SIGNED: tl.constexpr, B: tl.constexpr):
            pid = tl.program_id(0)
            offs = pid * B + tl.arange(0, B)
            mask = offs < n
            codes, absmax = K.quantize_block(tl.load(x_ptr + offs, mask=mask, other=0.0), mask, SIGNED)
            tl.store(codes_ptr + offs, codes, mask=mask)
            tl.store(absmax_ptr + pid, absmax)
            tl.store(decoded_ptr + offs, K.dequantize_block(codes, absmax, SIGNED), mask=mask)

    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return dict(minifloat=minifloat, rounding=rounding, hashes=hashes, blocks=blocks)


def f32(values):
    return np.asarray(values, dtype=np.float32)


def u32_as_i32(values):
    return torch.from_numpy(np.asarray(values, dtype=np.uint32).view(np.int32).copy())


@pytest.mark.parametrize("fmt", [reference.SIGNED_FORMAT, reference.UNSIGNED_FORMAT], ids=["signed", "unsigned"])
def test_minifloat_encode_and_decode_bit_for_bit(kernels, fmt):
    """Every map value, every midpoint between neighbours (ties: to even), the float32 values
    next to them, subnormal codes, float32 subnormals and random m in [0, 1]."""
    e_bits, mantissa, bias = fmt
    values = reference.decode_minifloat(np.arange(2 ** (e_bits + mantissa)), *fmt)
    values = values[values <= 1.0]
    mids = f32((values[1:].astype(np.float64) + values[:-1]) / 2)  # exact in float32
    rng = np.random.default_rng(31)
    m = np.concatenate([
        values, mids, np.nextafter(mids, f32(0)), np.nextafter(mids, f32(1)),
        f32([0.0, 1e-45, 1e-40, 2.0**-126, values[1] / 2, values[1] / 4]),
        rng.random(2000, dtype=np.float32), rng.random(300, dtype=np.float32) * f32(values[8]),
    ]).astype(np.float32)  # fmt: skip
    m = m[m <= 1.0]
    n, big = m.size, 1 << (max(m.size, 256) - 1).bit_length()
    out = torch.empty(2 * big, dtype=torch.int32)
    kernels["minifloat"][(1,)](torch.from_numpy(m), out, n, MANTISSA=mantissa, BIAS=bias, N=big)
    np.testing.assert_array_equal(out[:n].numpy(), reference.encode_minifloat(m, *fmt))
    codes = np.arange(2 ** (e_bits + mantissa))
    got = out[big : big + codes.size].numpy().view(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), reference.decode_minifloat(codes, *fmt).view(np.uint32))


def test_bf16_rounding_bit_for_bit(kernels):
    rng = np.random.default_rng(32)
    specials = f32([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.4e38, -3.4e38, 1e-40, -1e-40, 1.0, 1.00390625])
    payloads = np.asarray([0x7F800001, 0xFF800001, 0x7FBFFFFF, 0xFFFF0000], dtype=np.uint32).view(np.float32)
    specials = np.concatenate([specials, payloads])  # NaNs whose top half would read as inf or keep a payload
    x = np.concatenate([specials, (rng.standard_normal(900) * np.exp2(rng.integers(-60, 60, 900))).astype(np.float32)])
    # ties for round-to-nearest: bfloat16 values plus exactly half a bfloat16 ulp
    ties = ((x[20:120].view(np.uint32) & np.uint32(0xFFFF0000)) | np.uint32(0x8000)).view(np.float32)
    x = np.concatenate([x, ties])
    bits = rng.integers(0, 2**32, x.size, dtype=np.uint64).astype(np.uint32)
    bits[: specials.size] = 0xFFFF  # the largest increment on the specials
    n, big = x.size, 1 << (x.size - 1).bit_length()
    out = torch.empty(2 * big, dtype=torch.int16)
    kernels["rounding"][(1,)](torch.from_numpy(x), u32_as_i32(bits), out, n, N=big)
    got = out.numpy().view(np.uint16)
    np.testing.assert_array_equal(got[:n], reference.round_bf16_stochastic(x, bits))
    np.testing.assert_array_equal(got[big : big + n], reference.round_bf16_nearest(x))


def test_keys_and_random_bits_bit_for_bit(kernels):
    """rounding_key for each stream from (seed, t) as the kernel gets them (t a float32 step
    count), and random_bits at indices past 2^32 (the high word's own mix)."""
    rng = np.random.default_rng(33)
    n = 200
    seeds = rng.integers(0, 2**32, n, dtype=np.uint64)
    seeds[:3] = [0, 2**32 - 1, 1]
    t = rng.integers(1, 2**24, n).astype(np.float32)  # exact in float32 up to 2^24
    t[:3] = [1, 2**24, 7]
    index = rng.integers(0, 2**40, n, dtype=np.int64)
    index[:4] = [0, 2**32 - 1, 2**32, 2**33 + 5]
    out = torch.empty(5 * 256, dtype=torch.int32)
    kernels["hashes"][(1,)](
        torch.from_numpy(seeds.astype(np.int64)), torch.from_numpy(t), torch.from_numpy(index), out, n, N=256
    )
    got = out.numpy().view(np.uint32).reshape(5, 256)[:, :n]
    for stream in range(4):
        want = [reference.rounding_key(int(s), int(tt), stream) for s, tt in zip(seeds, t)]
        np.testing.assert_array_equal(got[stream], np.asarray(want, dtype=np.uint32), err_msg=f"stream {stream}")
    want_bits = [reference.random_bits(int(key), np.asarray([i]))[0] for key, i in zip(got[0], index)]
    np.testing.assert_array_equal(got[4], np.asarray(want_bits, dtype=np.uint32))


def reciprocal_traps(rng, n, signed):
    """n float32 values, the first the block's absmax, where encoding |x|·(1/absmax) and
    |x|/absmax gives different codes (found by search near the map's midpoints)."""
    fmt = reference.SIGNED_FORMAT if signed else reference.UNSIGNED_FORMAT
    values = reference.decode_minifloat(np.arange(120), *fmt)
    mids = (values[1:].astype(np.float64) + values[:-1]) / 2
    while True:
        absmax = np.float32(rng.uniform(0.5, 1.0))
        x = (mids[rng.integers(40, 110, 4000)] * absmax).astype(np.float32)
        x = np.nextafter(x, np.where(rng.random(x.size) < 0.5, np.float32(0), np.float32(1)))
        exact = reference.encode_minifloat(x / absmax, *fmt)
        approximate = reference.encode_minifloat(x * (np.float32(1) / absmax), *fmt)
        traps = x[exact != approximate]
        if traps.size >= n - 1:
            return np.concatenate([[absmax], traps[: n - 1]]).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantize_blockwise_bit_for_bit(kernels, signed):
    """Blocks: ordinary, all zero, holding inf or NaN, tiny (float32 subnormal) values, a tie
    value, and a short last block."""
    rng = np.random.default_rng(34)
    b = 32
    x = (rng.standard_normal(6 * b + 11) * 0.01).astype(np.float32)
    if not signed:
        x = np.abs(x)
    x[b : 2 * b] = 0.0
    x[2 * b + 3] = np.inf
    x[3 * b + 5] = np.nan
    x[4 * b : 5 * b] = (rng.random(b) * 1e-38).astype(np.float32)
    x[5 * b] = 1.0
    x[5 * b + 1] = 1.0625 / 2  # halfway between two map entries of the block's scale: ties to even
    # the last block: values whose code differs when m = |x|/absmax is computed as |x|·(1/absmax)
    # (what an approximate division may do): the encoder must divide exactly
    x[6 * b :] = reciprocal_traps(rng, 11, signed)
    blocks = -(-x.size // b)
    codes, absmax, decoded = torch.empty(x.size, dtype=torch.uint8), torch.empty(blocks), torch.empty(x.size)
    kernels["blocks"][(blocks,)](torch.from_numpy(x), codes, absmax, decoded, x.size, SIGNED=signed, B=b)
    want_codes, want_absmax = reference.quantize_blockwise(x, b, signed)
    np.testing.assert_array_equal(codes.numpy(), want_codes)
    np.testing.assert_array_equal(absmax.numpy(), want_absmax)  # NaN where the reference has NaN
    want_decoded = reference.dequantize_blockwise(want_codes, want_absmax, b, signed)
    np.testing.assert_array_equal(decoded.numpy(), want_decoded)


# ---- the compiled kernel: code generation for the GPU, checked without one ----------------


def _has_nvidia_backend():
    try:
        from triton.backends import backends

        return "nvidia" in backends
    except ImportError:
        return False


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton without its CUDA backend")
@pytest.mark.parametrize(
    "moments,param_sr,s_dtype,amsgrad,block",
    [
        (1, True, "bfloat16", True, 1024),
        (2, False, "uint8", False, 16),
        (2, True, "uint8", False, 8192),
        (0, True, "float32", False, 1024),
    ],
    ids=["bf16-sr-amsgrad", "8bit-16", "8bit-8192-sr", "fp32-param-sr"],
)
def test_low_precision_kernels_compile_for_sm90(moments, param_sr, s_dtype, amsgrad, block):
    """The interpreter runs Python, not Triton's compiler: compile each kind of specialisation
    to PTX for an H100/H200 (no GPU needed) so a type error in compiled code shows here, and
    the 8-bit encoder divides with IEEE rounding (div.rn), never the approximate division."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from adamlab.optim import triton_fused, triton_kernel

    pointers = ("table_ptr", "lr_ptr", "grad_scale_ptr", "found_inf_ptr")
    arguments = ("table_ptr", "n", "lr", "lr_ptr", "grad_scale_ptr", "found_inf_ptr", "w1", "w2", "eps", "weight_decay")
    signature = {
        a: "*i64" if a == "table_ptr" else "*fp32" if a in pointers else "i32" if a == "n" else "fp32"
        for a in arguments
    }
    constants = dict(
        YOGI=True, BIAS_CORRECTION=True, AMSGRAD=amsgrad, MAXIMIZE=True, DECOUPLED=False, HAS_WEIGHT_DECAY=True,
        LR_ON_DEVICE=True, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True, P_DTYPE=tl.bfloat16, G_DTYPE=tl.float32,
        S_DTYPE=getattr(tl, s_dtype), ALIGNED=True, BLOCK=block, MOMENTS=moments, PARAM_SR=param_sr,
        BF16_BY_BITS=False,
    )  # fmt: skip
    signature.update(dict.fromkeys(constants, "constexpr"))
    names = list(signature)
    source = ASTSource(
        triton_kernel.adam_family_kernel, signature, constexprs={(names.index(c),): v for c, v in constants.items()}
    )
    ptx = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=triton_fused._warps(block))
    ).asm["ptx"]
    assert ("div.rn.f32" in ptx) == (moments == 2)


# ---- the registry's precision cases (tests/test_precision.py) through this kernel ----------


def _registry_cases():
    """The registry's precision cases for the Triton path: every precision, both rules, the
    default flags, and Yogi with maximize and decoupled weight decay for three of them (a
    spread: all of them take ~4x as long under the interpreter)."""
    try:
        from tests import test_precision
        from tests.registry import PRECISION_FLAG_CASES
    except ImportError:
        return None, []
    spread = PRECISION_FLAG_CASES[4]
    spread_names = ("bf16", "8bit", "bf16-bf16params-sr")
    cases = [
        (n, r, f) for n, r, f in test_precision.CASES if not f or (r, f, n in spread_names) == ("yogi", spread, True)
    ]
    return test_precision, cases


_REGISTRY, REGISTRY_CASES = _registry_cases()


@pytest.mark.skipif(_REGISTRY is None, reason="the registry has no precision cases (tests/test_precision.py)")
@pytest.mark.parametrize(
    "prec_name,rule,flags", REGISTRY_CASES, ids=[f"{n}-{r}-{'-'.join(f) or 'defaults'}" for n, r, f in REGISTRY_CASES]
)
def test_registry_cases_through_the_interpreted_kernel(monkeypatch, prec_name, rule, flags):
    """adamlab.Adam/Yogi(fused=True, state_precision=...) step by step against the reference,
    with the fused update of these CPU parameters routed to this kernel under the interpreter
    (the optimizer itself would call fused_cpu): the whole path -- the optimizer's state
    (channels_last, 0-dim and empty parameters included), its LowPrecision record, the kernel."""
    from adamlab.optim import functional, triton_fused

    original = functional.get_implementation
    monkeypatch.setattr(
        functional,
        "get_implementation",
        lambda name: triton_fused.interpreted_update if name == "fused_cpu" else original(name),
    )
    _REGISTRY.test_each_step_matches_the_reference("fused_cpu", prec_name, rule, flags)
