"""The fused CPU kernel (``fused=True`` on CPU tensors) against the float64 reference.

Step by step for 200 steps, parameters and every state tensor:
* float64 parameters run free against the reference (the kernel does fp64 math for them),
  so every convention must agree to ~1e-10 over the whole trajectory;
* float32 / bf16 / fp16 parameters (state in the parameter's dtype or in fp32): before
  each step the reference is synced to the kernel's values, so each step is compared
  with one step of exact math at the storage dtype's rounding.
Then: against the foreach path, the awkward tensors (empty, 0-dim, non-contiguous,
complex, mixed dtypes, late joiners, large enough for the threaded path), GradScaler,
refusing bias_correction="recursive", and failing soft where the library cannot be loaded.
"""

from __future__ import annotations

import itertools
import platform
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import adamlab
from adamlab import reference
from adamlab.optim import fused_cpu

pytestmark = pytest.mark.skipif(not fused_cpu.is_available(), reason="fused CPU kernel cannot be built here")

OPTIMIZERS = {"adam": adamlab.Adam, "yogi": adamlab.Yogi}
WEIGHT_DECAY = {
    "none": {},
    "l2": dict(weight_decay=0.1),
    "decoupled": dict(weight_decay=0.1, decoupled_weight_decay=True),
}
FLAGS = [
    dict(amsgrad=amsgrad, maximize=maximize, bias_correction=bc, **WEIGHT_DECAY[wd])
    for amsgrad, maximize, bc, wd in itertools.product(
        [False, True],
        [False, True],
        [True, False],
        WEIGHT_DECAY,  # fused refuses "recursive"
    )
]
# Fewer flag combinations for the low-precision dtypes: the dtype is what is under test there.
FEW_FLAGS = [
    FLAGS[0],
    FLAGS[-1],
    dict(bias_correction=False, weight_decay=0.1),
    dict(amsgrad=True, maximize=True),
]
SHAPES = [(3, 2), (), (0,), (37,)]
STEPS = 200


def flag_id(flags: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in flags.items()) or "defaults"


def to64(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).numpy().copy()


def hyper_of(group: dict[str, Any]) -> dict[str, Any]:
    return dict(
        lr=float(group["lr"]),
        beta1=group["betas"][0],
        beta2=group["betas"][1],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        bias_correction=group["bias_correction"],
    )


def state_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> reference.State:
    st = opt.state[p]
    return reference.State(
        t=int(st["step"].item()),
        v=to64(st["exp_avg"]),
        s=to64(st["exp_avg_sq"]),
        s_max=to64(st["max_exp_avg_sq"]) if "max_exp_avg_sq" in st else None,
    )


def close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def make(rule: str, dtype: torch.dtype, shapes, seed: int, **kwargs: Any):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]
    return params, OPTIMIZERS[rule](params, fused=True, **kwargs), gen


def grad_scale_of(k: int) -> float:
    return 10.0 ** ((k % 9) - 6)  # gradients spanning 1e-6 .. 1e2


@pytest.mark.parametrize("flags", FLAGS, ids=flag_id)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_float64_trajectory_matches_reference(rule: str, flags: dict) -> None:
    params, opt, gen = make(rule, torch.float64, SHAPES, seed=1, lr=0.05, **flags)
    group = opt.param_groups[0]
    hyper = hyper_of(group)
    thetas = [to64(p) for p in params]
    states = [reference.init_state(t, s0=group["initial_accumulator_value"], amsgrad=flags["amsgrad"]) for t in thetas]
    for k in range(STEPS):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * grad_scale_of(k)
            thetas[i], states[i] = reference.step(rule, thetas[i], to64(p.grad), states[i], **hyper)
        opt.step()
    for i, p in enumerate(params):
        got = state_of(opt, p)
        assert got.t == states[i].t == STEPS
        close(to64(p), thetas[i], 1e-10, 1e-12, f"param {i}")
        close(got.v, states[i].v, 1e-10, 1e-14, f"exp_avg {i}")
        close(got.s, states[i].s, 1e-10, 1e-20, f"exp_avg_sq {i}")
        if flags["amsgrad"]:
            close(got.s_max, states[i].s_max, 1e-10, 1e-20, f"max_exp_avg_sq {i}")


# storage dtype -> relative tolerance of one step (a few units in the last place)
RTOL = {torch.float32: 4e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
# (the float64 trajectories above cover every flag combination; here the dtype is under test)
LOW_PRECISION_CASES = [(torch.float32, None, f) for f in FLAGS[::6]] + [
    (dtype, state_precision, f)
    for dtype in (torch.bfloat16, torch.float16)
    for state_precision in (None, "fp32")
    for f in FEW_FLAGS
]


@pytest.mark.parametrize(
    "dtype,state_precision,flags",
    LOW_PRECISION_CASES,
    ids=[f"{str(d)[6:]}-state={s}-{flag_id(f)}" for d, s, f in LOW_PRECISION_CASES],
)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_each_step_matches_reference(rule: str, dtype: torch.dtype, state_precision, flags: dict) -> None:
    """Each step from the kernel's own values equals one exact step, to the storage dtype's rounding."""
    params, opt, gen = make(rule, dtype, SHAPES, seed=2, lr=0.01, state_precision=state_precision, **flags)
    moment_dtype = torch.float32 if state_precision == "fp32" else None
    group = opt.param_groups[0]
    hyper = hyper_of(group)
    p_rtol = RTOL[dtype]
    s_rtol = RTOL[moment_dtype or dtype]
    # below the smallest normal number a value keeps only absolute precision
    p_tiny, s_tiny = (torch.finfo(d).tiny * torch.finfo(d).eps for d in (dtype, moment_dtype or dtype))
    for k in range(STEPS):
        before = []
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * grad_scale_of(k) * 1e-2).to(dtype)
            st = state_of(opt, p) if opt.state[p] else None
            if st is None:
                st = reference.init_state(to64(p), s0=group["initial_accumulator_value"], amsgrad=group["amsgrad"])
            before.append((to64(p), st))
        opt.step()
        for i, p in enumerate(params):
            theta, st = before[i]
            g = to64(p.grad)
            theta, want = reference.step(rule, theta, g, st, **hyper)
            got = state_of(opt, p)
            where = f"param {i}, step {k + 1}"
            assert got.t == want.t == k + 1
            # Rounding is relative to the operands, not the result (v ← v + w(g - v) can
            # cancel): the absolute slack scales with the largest input of each update.
            g_max = np.abs(g).max(initial=0.0) * (1 + hyper["weight_decay"])
            v_scale = np.abs(st.v).max(initial=0.0) + g_max
            s_scale = np.abs(st.s).max(initial=0.0) + g_max**2
            close(to64(p), theta, p_rtol, hyper["lr"] * p_rtol + p_tiny, where)
            close(got.v, want.v, s_rtol, s_rtol * v_scale + s_tiny, f"exp_avg, {where}")
            close(got.s, want.s, s_rtol, s_rtol * s_scale + s_tiny, f"exp_avg_sq, {where}")
            if group["amsgrad"]:
                close(got.s_max, want.s_max, s_rtol, s_rtol * s_scale + s_tiny, f"max_exp_avg_sq, {where}")


def _run_pair(rule: str, shapes, steps: int, **kwargs: Any):
    """The fused and the foreach optimizer on identical parameters and gradients."""
    gen = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=gen) for s in shapes]
    fused = [t.clone().requires_grad_() for t in init]
    foreach = [t.clone().requires_grad_() for t in init]
    opt_f = OPTIMIZERS[rule](fused, fused=True, **kwargs)
    opt_e = OPTIMIZERS[rule](foreach, foreach=True, **kwargs)
    for _ in range(steps):
        for a, b in zip(fused, foreach):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_f.step()
        opt_e.step()
    return fused, foreach, opt_f, opt_e


def _assert_same_state(fused, foreach, opt_f, opt_e, rtol: float, atol: float) -> None:
    for i, (a, b) in enumerate(zip(fused, foreach)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"param {i}: {m}")
        for key, value in opt_e.state[b].items():
            torch.testing.assert_close(
                opt_f.state[a][key], value, rtol=rtol, atol=atol, msg=lambda m, k=key, i=i: f"{k} of param {i}: {m}"
            )


@pytest.mark.parametrize("flags", FEW_FLAGS[:2], ids=flag_id)
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_matches_foreach_on_large_tensors(rule: str, flags: dict) -> None:
    """Tensors large enough for the threaded, chunked path (chunks span tensor boundaries)."""
    shapes = [(70_001,), (3, 5), (40_000,), (1,)]
    fused, foreach, opt_f, opt_e = _run_pair(rule, shapes, 20, lr=1e-3, **flags)
    _assert_same_state(fused, foreach, opt_f, opt_e, rtol=1e-4, atol=1e-6)


def test_awkward_tensors_match_foreach() -> None:
    """Non-contiguous, complex, mixed dtypes in one group, a late joiner, a step without some grads."""
    gen = torch.Generator().manual_seed(4)

    def make_params():
        g = torch.Generator().manual_seed(5)
        return [
            torch.randn(6, 4, generator=g).t().requires_grad_(),  # non-contiguous
            torch.randn(3, dtype=torch.complex64, generator=g).requires_grad_(),
            torch.randn(5, dtype=torch.float64, generator=g).requires_grad_(),
            torch.randn(2, 2, generator=g).requires_grad_(),  # joins late
            torch.randn(0, generator=g).requires_grad_(),
        ]

    fused, foreach = make_params(), make_params()
    opt_f = adamlab.Yogi(fused, fused=True, amsgrad=True, weight_decay=0.01)
    opt_e = adamlab.Yogi(foreach, foreach=True, amsgrad=True, weight_decay=0.01)
    for k in range(20):
        for i, (a, b) in enumerate(zip(fused, foreach)):
            if (i == 3 and k < 7) or (i == 2 and k % 5 == 0):
                a.grad = b.grad = None
                continue
            a.grad = torch.randn(a.shape, dtype=a.dtype, generator=gen)
            if i == 0:
                a.grad = a.grad.t().contiguous().t()  # a non-contiguous gradient too
            b.grad = a.grad.clone()
        opt_f.step()
        opt_e.step()
    assert opt_f.state[fused[3]]["step"].item() == 13
    _assert_same_state(fused, foreach, opt_f, opt_e, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_amsgrad_keeps_a_nan_in_max_exp_avg_sq_like_foreach(rule: str, dtype: torch.dtype) -> None:
    """torch.maximum keeps a NaN from either side: one already in max_exp_avg_sq, or a NaN s."""
    init = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75], dtype=dtype)
    params = {impl: init.clone().requires_grad_() for impl in ("fused", "foreach", "loop")}
    opts = {
        impl: OPTIMIZERS[rule]([p], amsgrad=True, lr=0.1, **{impl: True} if impl != "loop" else {"foreach": False})
        for impl, p in params.items()
    }
    gen = torch.Generator().manual_seed(11)
    for k in range(4):
        g = torch.randn(init.shape, generator=gen, dtype=dtype)
        if k == 2:
            g[3] = float("nan")  # a NaN s (element 3) from here on
        for impl, p in params.items():
            p.grad = g.clone()
            opts[impl].step()
            if k == 0:  # a NaN already in the running max (element 1), as after a bad step
                opts[impl].state[p]["max_exp_avg_sq"][1] = float("nan")
    fused = opts["fused"].state[params["fused"]]
    assert fused["max_exp_avg_sq"][1].isnan() and fused["max_exp_avg_sq"][3].isnan()
    assert params["fused"][1].isnan() and not params["fused"][[0, 2, 4]].isnan().any()
    for impl in ("foreach", "loop"):
        other = opts[impl].state[params[impl]]
        torch.testing.assert_close(params["fused"], params[impl], equal_nan=True, msg=lambda m, i=impl: f"{i}: {m}")
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            torch.testing.assert_close(fused[key], other[key], equal_nan=True, msg=lambda m, k=key: f"{k}: {m}")


def test_never_writes_the_gradient_and_takes_a_tensor_lr() -> None:
    p = torch.randn(100, requires_grad=True)
    p.grad = torch.randn(100)
    grad = p.grad.clone()
    opt = adamlab.Adam([p], lr=torch.tensor(0.01), fused=True, maximize=True, weight_decay=0.1)
    opt.step()
    assert torch.equal(p.grad, grad)
    assert opt.state[p]["step"].dtype == torch.float32 and opt.state[p]["step"].item() == 1


def _scaled_run(params, opt, scaler, grads):
    for g_list in grads:
        opt.zero_grad()
        loss = sum((p * g).sum() for p, g in zip(params, g_list))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_grad_scaler_unscales_in_the_kernel_and_skips_on_inf(rule: str) -> None:
    gen = torch.Generator().manual_seed(6)
    grads = [[torch.randn(7, generator=gen), torch.randn(3, 3, generator=gen)] for _ in range(6)]
    grads[3][1][1, 1] = float("inf")  # step 4 must be skipped entirely
    init = [torch.randn(7, generator=gen), torch.randn(3, 3, generator=gen)]

    scaled = [t.clone().requires_grad_() for t in init]
    opt = OPTIMIZERS[rule](scaled, fused=True)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    _scaled_run(scaled, opt, scaler, grads)
    assert scaler.get_scale() < 2.0**10  # the inf was seen and the scale backed off

    plain = [t.clone().requires_grad_() for t in init]
    ref = OPTIMIZERS[rule](plain, foreach=True)
    for i, g_list in enumerate(grads):
        if i == 3:
            continue  # the skipped step: no update, no step count
        for p, g in zip(plain, g_list):
            p.grad = g.clone()
        ref.step()
    for a, b in zip(scaled, plain):
        assert opt.state[a]["step"].item() == ref.state[b]["step"].item() == 5
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"], rtol=2e-6, atol=1e-12)


def test_grad_scale_and_found_inf_passed_directly() -> None:
    from adamlab.optim.fused_cpu import fused_cpu_update

    p, g = torch.randn(50), torch.randn(50)
    v, s, t = torch.zeros(50), torch.zeros(50), torch.zeros(())
    hyper = dict(
        lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
        amsgrad=False, maximize=False, bias_correction=True, capturable=False,
    )  # fmt: skip
    before = p.clone()
    fused_cpu_update("adam", [p], [g * 8], [v], [s], [], [t], **hyper, found_inf=torch.tensor(1.0))
    assert torch.equal(p, before) and t.item() == 0 and not v.any()
    fused_cpu_update("adam", [p], [g * 8], [v], [s], [], [t], **hyper, grad_scale=torch.tensor(8.0))
    q, v2, s2, t2 = before.clone(), torch.zeros(50), torch.zeros(50), torch.zeros(())
    fused_cpu_update("adam", [q], [g], [v2], [s2], [], [t2], **hyper, found_inf=torch.tensor(0.0))
    assert torch.equal(p, q) and torch.equal(v, v2) and torch.equal(s, s2) and t.item() == t2.item() == 1


@pytest.mark.parametrize("which", ["gradient", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
def test_a_smaller_state_or_gradient_is_refused_not_overrun(which: str) -> None:
    """The kernel walks numel(p) elements of every tensor: a 4-element view where 5 are
    needed would be written past its end. It raises, naming the tensor, and writes nothing."""
    from adamlab.optim.fused_cpu import fused_cpu_update

    buffer = torch.zeros(8)
    tensors = {name: torch.zeros(5) for name in ("gradient", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    tensors[which] = buffer[:4]
    p = torch.randn(5)
    hyper = dict(
        lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
        amsgrad=True, maximize=False, bias_correction=True, capturable=False,
    )  # fmt: skip
    before = p.clone()
    lists = [[tensors[k]] for k in ("gradient", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
    with pytest.raises(RuntimeError, match=f"the {which} of parameter 0 has 4 elements, the parameter 5"):
        fused_cpu_update("adam", [p], *lists, [torch.zeros(())], **hyper)
    assert torch.equal(p, before) and not buffer.any()


@pytest.mark.parametrize("which", ["exp_avg_sq", "max_exp_avg_sq"])
def test_a_state_tensor_narrower_than_exp_avg_is_refused_not_overrun(which: str) -> None:
    """The kernel reads every state tensor in exp_avg's dtype: a float16 s beside a float32 v
    would be read and written as float32, past its end. It raises, naming it; nothing moves."""
    p = torch.randn(5, requires_grad=True)
    p.grad = torch.randn(5)
    opt = adamlab.Adam([p], amsgrad=True, fused=True)
    opt.step()
    state = opt.state[p]
    state[which] = state[which].half()
    before = {k: v.clone() for k, v in state.items()}, p.detach().clone()
    with pytest.raises(
        RuntimeError, match=f"parameter 0 mixes dtypes torch.float32 \\(exp_avg\\) and torch.float16 \\({which}\\)"
    ):
        opt.step()
    assert torch.equal(p.detach(), before[1])
    assert all(torch.equal(state[k].float(), v.float()) for k, v in before[0].items())


def _one_fused_step(*shapes_and_dtypes: tuple[tuple[int, ...], torch.dtype]) -> tuple[adamlab.Adam, list]:
    params = []
    for shape, dtype in shapes_and_dtypes:
        p = torch.randn(shape, dtype=dtype, requires_grad=True)
        p.grad = torch.randn(shape, dtype=dtype)
        params.append(p)
    opt = adamlab.Adam(params, fused=True)
    opt.step()
    return opt, params


def _snapshot(opt: adamlab.Adam, params: list) -> list:
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]


def _unchanged(opt: adamlab.Adam, params: list, before: list) -> bool:
    return all(
        torch.equal(p.detach(), p0) and opt.state[p].keys() == s0.keys()
        and all(torch.equal(opt.state[p][k], v) for k, v in s0.items())
        for p, (p0, s0) in zip(params, before)
    )  # fmt: skip


def _real_state_for_a_complex_parameter(opt, params) -> None:
    st = opt.state[params[-1]]
    for key in ("exp_avg", "exp_avg_sq"):
        st[key] = torch.view_as_real(st[key]).flatten()[: params[-1].numel()].clone()


def _integer_state(opt, params) -> None:
    st = opt.state[params[-1]]
    for key in ("exp_avg", "exp_avg_sq"):
        st[key] = torch.zeros(params[-1].shape, dtype=torch.int32)


REFUSED = {
    # (parameters, how the state is spoiled after one good step, message)
    "complex parameter, real state (one call)": (
        [((6,), torch.complex64)],
        _real_state_for_a_complex_parameter,
        "needs complex state for torch.complex64",
    ),
    "complex parameter, real state (mixed group)": (
        [((5,), torch.float32), ((6,), torch.complex64)],
        _real_state_for_a_complex_parameter,
        "needs complex state for torch.complex64",
    ),
    "integer state (one call)": ([((6,), torch.float32)], _integer_state, "does not support torch.float32 parameters"),
    "integer state (mixed group)": (
        [((5,), torch.float64), ((6,), torch.float32)],
        _integer_state,
        "does not support torch.float32 parameters",
    ),
    "non-contiguous parameter, complex with real state": (
        [((5,), torch.float32), ((4, 3), torch.complex64)],
        lambda opt, params: (
            opt.state[params[-1]].update(exp_avg=torch.zeros(4, 3), exp_avg_sq=torch.zeros(4, 3)),
            setattr(params[-1], "grad", params[-1].grad.t().contiguous().t()),  # the odd path
        ),
        "needs complex state for torch.complex64",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_step_changes_nothing(case: str) -> None:
    """Review finding 3: every check (dtype codes, real views, sizes) runs before any step
    count moves; a step that raises leaves parameters, state and step counts as they were."""
    shapes, spoil, message = REFUSED[case]
    opt, params = _one_fused_step(*shapes)
    spoil(opt, params)
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    assert _unchanged(opt, params, before)
    assert all(opt.state[p]["step"].item() == 1.0 for p in params)


@pytest.mark.parametrize("bad_step", [torch.zeros(3), torch.zeros(1, 2), torch.zeros((), dtype=torch.bool)])
def test_a_step_count_that_is_not_one_number_is_refused(bad_step: torch.Tensor) -> None:
    """Review finding 1: the kernel adds 1 through the step's address; a 3-element step was
    silently accepted (only its first element counted). It raises RuntimeError naming the
    parameter, as the loop and foreach paths do, and nothing moves."""
    opt, params = _one_fused_step(((5,), torch.float32), ((4,), torch.float32))
    opt.state[params[1]]["step"] = bad_step
    before = _snapshot(opt, params)
    with pytest.raises(RuntimeError, match=r"the step count of parameter 1 \(shape \(4,\)\)"):
        opt.step()
    assert _unchanged(opt, params, before)


def test_an_empty_step_count_raises_instead_of_crashing() -> None:
    """Review finding 1: an empty step tensor has no element to add 1 to (its address is 0):
    the kernel dereferenced it and the process died of SIGSEGV. Run in a child process, so
    that a regression cannot take the test run down with it."""
    child = """
import torch, adamlab
p = torch.nn.Parameter(torch.randn(4)); p.grad = torch.ones(4)
opt = adamlab.Adam([p], fused=True); opt.step()
opt.state[p]["step"] = torch.zeros(0)
before = p.detach().clone()
try:
    opt.step()
except RuntimeError as err:
    assert torch.equal(p.detach(), before)
    print("refused:", err)
else:
    print("stepped")
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "refused: fused CPU update: the step count of parameter 0 (shape (4,))" in done.stdout, done.stdout


def test_a_negative_step_count_is_put_back_when_its_coefficients_fail() -> None:
    """A step count of -1 becomes 0, whose bias correction divides by zero: the error
    propagates and the count is put back (through the C path and the plain torch path)."""
    for dtype in (torch.float32, torch.float64):
        opt, params = _one_fused_step(((5,), torch.float32))
        opt.state[params[0]]["step"] = torch.tensor(-1.0, dtype=dtype)
        before = _snapshot(opt, params)
        with pytest.raises(ZeroDivisionError):
            opt.step()
        assert _unchanged(opt, params, before)


def test_fails_soft_where_the_library_cannot_be_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that cannot be loaded: fused=True warns once, naming why, and runs the
    foreach path (same numbers); every other path is untouched."""
    from adamlab.optim import functional

    def broken() -> None:
        raise RuntimeError("libadamlab_fused_cpu.so: cannot open shared object file")

    monkeypatch.setattr(fused_cpu, "load", broken)
    monkeypatch.setattr(functional, "_unavailable", {})
    init = torch.randn(4)
    results = []
    for kwargs in (dict(fused=True), dict(foreach=True)):
        p = init.clone().requires_grad_()
        opt = adamlab.Yogi([p], **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(3):
                p.grad = torch.full_like(p, k + 1.0)
                opt.step()
        messages = [str(w.message) for w in caught]
        if kwargs.get("fused"):
            assert len(messages) == 1, messages  # once, not once per step
            assert "runs the foreach implementation instead" in messages[0] and "cannot open shared" in messages[0]
        else:
            assert messages == []
        results.append(p.detach().clone())
    assert torch.equal(*results)


@pytest.mark.parametrize("where", ["constructor", "add_param_group", "group edited"])
def test_recursive_bias_correction_is_refused_by_name(where: str) -> None:
    p, q = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"bias_correction='recursive' is not supported with fused=True.*foreach"):
        if where == "constructor":
            adamlab.Adam([p], fused=True, bias_correction="recursive")
        elif where == "add_param_group":
            adamlab.Adam([p], fused=True).add_param_group({"params": [q], "bias_correction": "recursive"})
        else:
            opt = adamlab.Adam([p], fused=True)
            opt.param_groups[0]["bias_correction"] = "recursive"
            p.grad = torch.ones_like(p)
            opt.step()
    adamlab.Adam([p], foreach=True, bias_correction="recursive")  # the non-fused paths take it


def test_the_portable_build_has_no_march_native() -> None:
    """setup.py builds without -march=native; the element loop carries its own per-CPU clones,
    and the installed library holds them (the CPU picks one when the library loads)."""
    root = Path(__file__).resolve().parents[1]
    flags = re.findall(r'"(-[^"]+)"', (root / "setup.py").read_text())
    assert "-O3" in flags and not any("native" in flag for flag in flags), flags
    source = (root / "src/adamlab/optim/csrc/fused_cpu.cpp").read_text()
    assert 'target_clones("arch=x86-64-v4", "avx2", "default")' in source
    assert "ADAMLAB_CLONES void update_range" in source
    nm = shutil.which("nm")
    if nm is None or platform.machine() != "x86_64":
        pytest.skip("needs nm on x86-64 to list the clones")
    symbols = subprocess.run([nm, str(fused_cpu.load()._name)], capture_output=True, text=True, check=True).stdout
    clones = {line.rsplit(".", 1)[-1] for line in symbols.splitlines() if "update_range" in line and "." in line}
    assert {"avx2", "arch_x86_64_v4", "default"} <= clones, clones


def test_dtensor_parameters_update_their_local_shards(tmp_path) -> None:
    """FSDP2-style DTensor parameters: the kernel runs on the local shards, like foreach."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        gen = torch.Generator().manual_seed(7)
        init = [torch.randn(8, 3, generator=gen), torch.randn(5, generator=gen)]
        grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(5)]
        results = []
        for kwargs in (dict(fused=True), dict(foreach=True)):
            params = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in init]
            opt = adamlab.Yogi(params, amsgrad=True, **kwargs)
            for g_list in grads:
                for p, g in zip(params, g_list):
                    p.grad = distribute_tensor(g, mesh, [Shard(0)])
                opt.step()
            states = [opt.state[p][k].full_tensor() for p in params for k in ("exp_avg_sq", "max_exp_avg_sq")]
            assert all(opt.state[p]["step"].item() == len(grads) for p in params)
            results.append([p.full_tensor() for p in params] + states)
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()
