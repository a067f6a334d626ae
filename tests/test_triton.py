"""The Triton kernel (``fused=True`` on CUDA) against the float64 reference, step by step.

Every test runs on two backends: ``interpreter`` (CPU tensors under Triton's interpreter,
in the normal suite; skipped when Triton is not installed) and ``cuda`` (the compiled
kernel; skipped without a GPU, run by ``benchmarks/gpu_check.sh``). Sizes are small: the
interpreter runs a launch in about a tenth of a second.

What the checks catch: a wrong formula or flag (parameters *and* every state tensor
compared with :func:`adamlab.reference.step` after each step, from the kernel's own state
before it), an unwritten element (every element must move), a write out of bounds (guard
zones around unaligned views), an update applied twice (the step count and the lock-step
comparison over several launches), GradScaler handling, and tensors that change between
steps (new gradients, ``.data`` moved, shrunk or transposed in place, misaligned views).
The fused kernels refuse ``bias_correction="recursive"`` (foreach and the loop keep it).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from adamlab import reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()

BACKENDS = [
    pytest.param(
        "interpreter", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
    ),
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not (HAS_TRITON and HAS_CUDA), reason="needs a CUDA GPU and triton"),
    ),
]

# a tensor that is not a whole number of chunks, an empty one, one chunk exactly, and 2-D
SHAPES = [(3, 5), (1030,), (0,), (1024,), (7, 300)]

CASES = {
    "default": {},
    "amsgrad": dict(amsgrad=True),
    "l2": dict(weight_decay=0.1),
    "decoupled_maximize": dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    "no_bias_correction": dict(bias_correction=False),
    "no_bias_correction_amsgrad_l2": dict(bias_correction=False, amsgrad=True, weight_decay=0.05),
    "lr_tensor": dict(lr_tensor=True),
}

TOLERANCE = {torch.float32: dict(rtol=2e-6, atol=2e-7), torch.bfloat16: dict(rtol=1e-2, atol=1e-5)}
TOLERANCE[torch.float16] = dict(rtol=2e-3, atol=1e-6)


def _update(backend):
    from adamlab.optim import triton_fused

    return triton_fused.interpreted_update if backend == "interpreter" else triton_fused.fused_cuda_update


def _device(backend):
    return "cpu" if backend == "interpreter" else "cuda"


def _hyper(rule, case):
    hyper = dict(
        lr=0.01 if rule == "yogi" else 0.003,
        beta1=0.9,
        beta2=0.999,
        eps=1e-3 if rule == "yogi" else 1e-8,
        weight_decay=0.0,
        decoupled_weight_decay=False,
        amsgrad=False,
        maximize=False,
        bias_correction=True,
    )
    hyper.update({k: v for k, v in case.items() if k != "lr_tensor"})
    return hyper


def _f64(t):
    return t.detach().double().cpu().numpy()


class Run:
    """Parameters, gradients and state for one test, with the reference stepped alongside."""

    def __init__(self, backend, rule, case, p_dtype=torch.float32, s_dtype=None, shapes=SHAPES, seed=0, s0=None):
        self.backend, self.rule, self.case = backend, rule, case
        self.device = _device(backend)
        self.hyper = _hyper(rule, case)
        self.gen = torch.Generator().manual_seed(seed)
        s_dtype = s_dtype or p_dtype
        self.p_dtype, self.s_dtype = p_dtype, s_dtype
        if s0 is None:
            s0 = 1e-6 if rule == "yogi" else 0.0
        self.params = [self._randn(s).to(p_dtype) for s in shapes]
        self.exp_avgs = [torch.zeros(s, dtype=s_dtype, device=self.device) for s in shapes]
        self.exp_avg_sqs = [torch.full(s, s0, dtype=s_dtype, device=self.device) for s in shapes]
        self.maxes = [t.clone() for t in self.exp_avg_sqs] if self.hyper["amsgrad"] else []
        self.steps = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in shapes]

    def _randn(self, shape, scale=1.0):
        return (torch.randn(shape, generator=self.gen, dtype=torch.float64) * scale).to(self.device)

    def grads(self, scale=1.0):
        return [self._randn(p.shape, scale).to(self.p_dtype) for p in self.params]

    def snapshot(self):
        return [
            (
                _f64(p),
                reference.State(
                    t=int(self.steps[i].item()),
                    v=_f64(self.exp_avgs[i]),
                    s=_f64(self.exp_avg_sqs[i]),
                    s_max=_f64(self.maxes[i]) if self.maxes else None,
                ),
            )
            for i, p in enumerate(self.params)
        ]

    def step(self, grads, **extra):
        hyper = dict(self.hyper)
        if self.case.get("lr_tensor"):
            hyper["lr"] = torch.tensor(hyper["lr"], device=self.device)
        _update(self.backend)(
            self.rule,
            self.params,
            grads,
            self.exp_avgs,
            self.exp_avg_sqs,
            self.maxes,
            self.steps,
            capturable=bool(self.case.get("lr_tensor")),
            **hyper,
            **extra,
        )

    def check(self, before, grads, tol=None, every_parameter_moves=True):
        """Each tensor equals one reference step from ``before``, and every element moved."""
        tol = tol or TOLERANCE[self.p_dtype]
        s_tol = TOLERANCE[self.s_dtype]
        for i, (theta, state) in enumerate(before):
            want_theta, want = reference.step(self.rule, theta, _f64(grads[i]), state, **self.hyper)
            name = f"tensor {i} {tuple(self.params[i].shape)}"
            assert int(self.steps[i].item()) == want.t, f"{name}: step count"
            got = _f64(self.params[i])
            np.testing.assert_allclose(got, want_theta, **tol, err_msg=f"{name}: parameter")
            np.testing.assert_allclose(_f64(self.exp_avgs[i]), want.v, **s_tol, err_msg=f"{name}: exp_avg")
            np.testing.assert_allclose(_f64(self.exp_avg_sqs[i]), want.s, **s_tol, err_msg=f"{name}: exp_avg_sq")
            if self.maxes:
                np.testing.assert_allclose(_f64(self.maxes[i]), want.s_max, **s_tol, err_msg=f"{name}: max_exp_avg_sq")
            if self.p_dtype == torch.float32:  # an element the kernel skipped would keep its old value
                if every_parameter_moves:
                    assert np.all(got != theta), f"{name}: some parameter elements were not written"
                assert np.all(_f64(self.exp_avgs[i]) != state.v), f"{name}: some exp_avg elements were not written"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_matches_reference_step_by_step(backend, rule, case):
    run = Run(backend, rule, CASES[case], seed=zlib.crc32(f"{rule}{case}".encode()) % 1000)
    for _ in range(3):
        before = run.snapshot()
        grads = run.grads()
        run.step(grads)
        run.check(before, grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "p_dtype,s_dtype",
    [(torch.bfloat16, None), (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float16, None)],
)
@pytest.mark.parametrize("rule", ["adam", "yogi"])
def test_low_precision_params(backend, rule, p_dtype, s_dtype):
    """bf16/fp16 parameters, state in the same dtype or float32; the math is float32."""
    run = Run(backend, rule, {}, p_dtype=p_dtype, s_dtype=s_dtype, shapes=[(5, 7), (1100,)])
    for _ in range(2):
        before = run.snapshot()
        grads = run.grads()
        run.step(grads)
        run.check(before, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scale_unscales_inside_the_kernel(backend):
    run = Run(backend, "yogi", {"amsgrad": True})
    scale = 1024.0
    for _ in range(2):
        before = run.snapshot()
        grads = run.grads()
        scaled = [g * scale for g in grads]
        kept = [g.clone() for g in scaled]
        run.step(
            scaled,
            grad_scale=torch.tensor(scale, device=run.device),
            found_inf=torch.tensor(0.0, device=run.device),
        )
        run.check(before, grads)
        for g, k in zip(scaled, kept):  # the caller's gradients are never written
            assert torch.equal(g, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_skips_everything(backend):
    run = Run(backend, "adam", {"amsgrad": True, "weight_decay": 0.1, "decoupled_weight_decay": True})
    run.step(run.grads())
    saved = [t.clone() for t in run.params + run.exp_avgs + run.exp_avg_sqs + run.maxes + run.steps]
    grads = run.grads()
    grads[1][3] = float("inf")
    run.step(grads, grad_scale=torch.tensor(2.0, device=run.device), found_inf=torch.tensor(1.0, device=run.device))
    after = run.params + run.exp_avgs + run.exp_avg_sqs + run.maxes + run.steps
    for a, b in zip(after, saved):
        assert torch.equal(a, b), "a skipped step changed parameters, state or step count"
    # and the next finite step is step 2, as if the skipped one never happened
    before = run.snapshot()
    grads = run.grads()
    run.step(grads)
    run.check(before, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaligned_views_and_guard_zones(backend):
    """Tensors at odd offsets of one buffer: the unaligned path, and nothing written outside."""
    device = _device(backend)
    sizes, guard = [5, 1029, 1, 2048], 3
    total = sum(sizes) + guard * (len(sizes) + 1)
    gen = torch.Generator().manual_seed(3)
    buffers = {k: torch.full((total,), 12345.0, dtype=torch.float32, device=device) for k in ("p", "g", "v", "s")}
    views = {k: [] for k in buffers}
    offset = guard
    for n in sizes:
        for k, buf in buffers.items():
            views[k].append(buf[offset : offset + n])
        offset += n + guard
    for p, g, v, s in zip(views["p"], views["g"], views["v"], views["s"]):
        p.copy_(torch.randn(p.shape, generator=gen))
        g.copy_(torch.randn(g.shape, generator=gen))
        v.zero_()
        s.fill_(1e-6)
    steps = [torch.zeros((), device=device) for _ in sizes]
    hyper = _hyper("yogi", {})
    expected = [
        reference.step("yogi", _f64(p), _f64(g), reference.init_state(_f64(p), s0=1e-6), **hyper)
        for p, g in zip(views["p"], views["g"])
    ]
    _update(backend)("yogi", views["p"], views["g"], views["v"], views["s"], [], steps, capturable=False, **hyper)
    for (theta, state), p, v, s in zip(expected, views["p"], views["v"], views["s"]):
        np.testing.assert_allclose(_f64(p), theta, **TOLERANCE[torch.float32])
        np.testing.assert_allclose(_f64(v), state.v, **TOLERANCE[torch.float32])
        np.testing.assert_allclose(_f64(s), state.s, **TOLERANCE[torch.float32])
    mask = torch.ones(total, dtype=torch.bool, device=device)
    offset = guard
    for n in sizes:
        mask[offset : offset + n] = False
        offset += n + guard
    for k, buf in buffers.items():
        assert torch.all(buf[mask] == 12345.0), f"the kernel wrote outside the tensors ({k})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["shrink", "retype"])
def test_tensor_changed_at_the_same_address_rebuilds_the_table(backend, change):
    """``p.data = p.data[:k]`` (or a same-size dtype view) keeps every ``data_ptr``; a table
    keyed on addresses alone would update the old numel (writing past the new view) or read
    with the old dtype. Gradients live in fixed buffers, so no address changes either."""
    dtype = torch.bfloat16 if change == "retype" else torch.float32
    run = Run(backend, "adam", {"amsgrad": True}, p_dtype=dtype, s_dtype=torch.float32, shapes=[(1500,), (7,)])
    grad_buffers = [torch.empty_like(p) for p in run.params]
    for buf, g in zip(grad_buffers, run.grads()):
        buf.copy_(g)
    before = run.snapshot()
    run.step(grad_buffers)
    run.check(before, grad_buffers)

    k = 5 if change == "shrink" else 1500
    lists = (run.params, grad_buffers, run.exp_avgs, run.exp_avg_sqs, run.maxes)
    full = [lst[0] for lst in lists]
    for lst in lists:  # what p.data = p.data[:k] does to the parameter, done to its state too
        lst[0] = lst[0][:k]
    if change == "retype":  # every parameter and gradient bf16 -> fp16: same bytes, same numel
        for lst in lists[:2]:
            lst[:] = [t.view(torch.float16) for t in lst]
        run.p_dtype = torch.float16
        for p in run.params:
            p.copy_(torch.randn(p.shape, generator=run.gen))
    assert all(lst[0].data_ptr() == buf.data_ptr() for lst, buf in zip(lists, full))
    tails = [buf[k:].clone() for buf in full]
    grads = run.grads()
    grad_buffers[0].copy_(grads[0])
    grad_buffers[1].copy_(grads[1])
    before = run.snapshot()
    run.step(grad_buffers)
    run.check(before, grad_buffers, tol=TOLERANCE[run.p_dtype] if change == "retype" else None)
    for name, buf, tail in zip(("p", "g", "v", "s", "max"), full, tails):
        assert torch.equal(buf[k:], tail), f"the kernel wrote past the shrunk view ({name})"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_in_one_call(backend):
    """fp32 and bf16 parameters in one group: one launch per dtype, both right."""
    run = Run(backend, "adam", {}, shapes=[(9,), (1025,)])
    run.params[1] = run.params[1].to(torch.bfloat16)
    before = run.snapshot()
    grads = run.grads()
    grads[1] = grads[1].to(torch.bfloat16)
    run.step(grads)
    for i, dtype in enumerate((torch.float32, torch.bfloat16)):
        assert run.params[i].dtype == dtype
        theta, want = reference.step("adam", before[i][0], _f64(grads[i]), before[i][1], **run.hyper)
        np.testing.assert_allclose(_f64(run.params[i]), theta, **TOLERANCE[dtype])
        np.testing.assert_allclose(_f64(run.exp_avg_sqs[i]), want.s, **TOLERANCE[torch.float32])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
@pytest.mark.parametrize("short", ["grads", "exp_avgs", "steps"])
def test_lists_of_another_length_than_the_parameters_are_refused(short):
    """One gradient, moment or step count missing: the step's table would shift its rows and
    the kernel would read sizes and addresses from the wrong ones (a wild write). Refused
    before anything is read or written."""
    from adamlab.optim import triton_fused

    params = [torch.randn(40), torch.randn(33)]
    before = [p.clone() for p in params]
    lists = {
        "grads": [torch.randn_like(p) for p in params],
        "exp_avgs": [torch.zeros_like(p) for p in params],
        "exp_avg_sqs": [torch.zeros_like(p) for p in params],
        "steps": [torch.zeros(()) for _ in params],
    }
    lists[short] = lists[short][:1]
    with pytest.raises(RuntimeError, match="one of each per parameter"):
        triton_fused.interpreted_update(
            "adam", params, lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"], [], lists["steps"],
            **_hyper("adam", {}), capturable=False,
        )  # fmt: skip
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(float(t) == 0.0 for t in lists["steps"])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
def test_amsgrad_running_max_keeps_a_nan_like_torch():
    """torch.maximum (and the CPU kernel) keep a NaN from either side of AMSGrad's running max:
    a NaN s (a NaN gradient) and a NaN already in the max both stay."""
    from adamlab.optim import triton_fused

    p = torch.tensor([0.5, -1.0, 2.0, 0.25])
    g = torch.tensor([0.1, 0.2, float("nan"), -0.3])
    v, s = torch.zeros(4), torch.zeros(4)
    s_max = torch.tensor([0.0, float("nan"), 0.0, 0.0])
    hyper = {**_hyper("adam", {}), "amsgrad": True}
    triton_fused.interpreted_update("adam", [p], [g], [v], [s], [s_max], [torch.zeros(())], **hyper, capturable=False)
    assert torch.isnan(s_max[1]) and torch.isnan(s_max[2]), s_max
    assert not torch.isnan(s_max[[0, 3]]).any(), s_max


def test_fused_cuda_rejects_cpu_tensors():
    from adamlab.optim import triton_fused

    p = torch.zeros(3)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        triton_fused.fused_cuda_update(
            "adam", [p], [p], [p], [p], [], [torch.zeros(())], **_hyper("adam", {}), capturable=False
        )


def test_missing_triton_gives_a_clear_error(monkeypatch):
    from adamlab.optim import triton_fused

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now raises ImportError
    monkeypatch.setattr(triton_fused, "_modules", {})
    with pytest.raises(RuntimeError, match="needs Triton"):
        triton_fused.kernel_module(interpret=True)


def test_adamlab_runs_without_triton():
    """With Triton missing, adamlab imports and steps; fused=True for CUDA tensors warns once,
    naming why, and picks foreach; asking for the kernel itself raises, naming Triton."""
    code = (
        "import sys, warnings\n"
        "sys.modules['triton'] = None  # as if not installed: import triton raises ImportError\n"
        "import torch, adamlab\n"
        "from adamlab.optim import functional\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "adamlab.Yogi([p]).step()\n"
        "cuda = torch.device('cuda')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert functional.choose(True, None, cuda) == functional.choose(True, None, cuda) == 'foreach'\n"
        "assert len(caught) == 1 and 'needs Triton' in str(caught[0].message), caught\n"
        "try:\n"
        "    functional.get_implementation('fused_cuda')\n"
        "except RuntimeError as e:\n"
        "    assert 'needs Triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error without triton')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tables_do_not_keep_gradients_alive(backend):
    """The plan remembers gradients weakly: zero_grad(set_to_none=True) must free them."""
    import gc
    import weakref

    run = Run(backend, "adam", {})
    grads = run.grads()
    run.step(grads)
    refs = [weakref.ref(g) for g in grads]
    del grads
    gc.collect()
    assert all(r() is None for r in refs)
    before = run.snapshot()
    grads = run.grads()
    run.step(grads)  # new gradients after the old ones are gone
    run.check(before, grads)


def test_a_sparse_gradient_is_refused_by_name():
    from adamlab.optim import triton_fused

    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    p = torch.zeros(4)
    g = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        triton_fused.interpreted_update(
            "adam", [p], [g], [torch.zeros(4)], [torch.zeros(4)], [], [torch.zeros(())],
            **_hyper("adam", {}), capturable=False,
        )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_shrunk_in_place_rebuilds_the_table(backend):
    """``p.data = p.data[:k]`` on the same tensor objects (parameter, gradient buffer and
    state alike): same objects, same addresses, smaller sizes. The kernel must update k
    elements, not the old numel: the memory past the views is left alone."""
    run = Run(backend, "adam", {}, shapes=[(1500,), (7,)])
    grad_buffers = [torch.empty_like(p) for p in run.params]
    for buf, g in zip(grad_buffers, run.grads()):
        buf.copy_(g)
    run.step(grad_buffers)
    k = 5
    fulls = [lst[0].data for lst in (run.params, grad_buffers, run.exp_avgs, run.exp_avg_sqs)]
    for lst in (run.params, grad_buffers, run.exp_avgs, run.exp_avg_sqs):
        lst[0].data = lst[0].data[:k]
    tails = [full[k:].clone() for full in fulls]
    grads = run.grads()
    for buf, g in zip(grad_buffers, grads):
        buf.copy_(g)
    before = run.snapshot()
    run.step(grad_buffers)
    run.check(before, grad_buffers)
    for full, tail in zip(fulls, tails):
        assert torch.equal(full[k:], tail), "the kernel wrote past the shrunk view"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["exp_avg", "exp_avg_sq", "step", "grad"])
def test_a_tensor_moved_with_data_is_followed(backend, which):
    """``t.data = t.data.clone()`` (what moving state between devices, or ``Module._apply``
    on a gradient, does): the same tensor object at new memory. The kernel must update the
    new memory, never the old."""
    run = Run(backend, "adam", {}, shapes=[(40,), (9,)])
    buffers = [torch.empty_like(p) for p in run.params]
    for buf, g in zip(buffers, run.grads()):
        buf.copy_(g)
    run.step(buffers)
    target = {"exp_avg": run.exp_avgs, "exp_avg_sq": run.exp_avg_sqs, "step": run.steps, "grad": buffers}[which][0]
    old = target.data
    target.data = target.data.clone()
    old_before = old.clone()
    for buf, g in zip(buffers, run.grads()):
        buf.copy_(g)
    before = run.snapshot()
    run.step(buffers)
    run.check(before, buffers)
    if which != "grad":
        assert torch.equal(old, old_before), "the kernel wrote to the tensor's old memory"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_tables_do_not_keep_replaced_state_alive(backend):
    import gc
    import weakref

    run = Run(backend, "yogi", {}, shapes=[(40,), (9,)])
    run.step(run.grads())
    old = weakref.ref(run.exp_avgs[1])
    run.exp_avgs[1] = run.exp_avgs[1].clone()
    gc.collect()
    assert old() is None
    before = run.snapshot()
    grads = run.grads()
    run.step(grads)
    run.check(before, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_transposed_in_place_is_not_updated_in_the_old_order(backend):
    """``p.data = p.data.t()`` on a square parameter: same address and size, other element
    order. The tables must not be reused: the state no longer matches the layout, and the
    kernel says so instead of pairing the wrong elements."""
    run = Run(backend, "adam", {}, shapes=[(4, 4)])
    run.step(run.grads())
    run.params[0].data = run.params[0].data.t()
    with pytest.raises(RuntimeError, match="laid out like the parameter"):
        run.step(run.grads())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_tensor_shrunk_at_its_address_is_refused(backend):
    """A state tensor narrowed in place (same object, same address, fewer bytes) must not be
    written numel(p) elements deep: the tables are rebuilt, and the mismatch named."""
    run = Run(backend, "adam", {}, shapes=[(40,), (9,)])
    run.step(run.grads())
    run.exp_avg_sqs[0].data = run.exp_avg_sqs[0].data[:20]
    with pytest.raises(RuntimeError, match="laid out like the parameter"):
        run.step(run.grads())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sparse_gradient_after_dense_ones_is_refused_by_name(backend):
    run = Run(backend, "adam", {}, shapes=[(40,), (9,)])
    run.step(run.grads())
    grads = run.grads()
    grads[1] = grads[1].to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        run.step(grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_new_and_misaligned_gradients_every_step(backend):
    """Nothing is remembered between launches: fresh gradient tensors every step, some of them
    views 4 bytes into a buffer (the unaligned kernel variant), are read where they are."""
    run = Run(backend, "yogi", {"amsgrad": True}, shapes=[(40,), (1030,)])
    for k in range(4):
        grads = run.grads()
        if k % 2:
            grads = [torch.cat([g.new_zeros(1), g.flatten()])[1:].view(g.shape) for g in grads]
        before = run.snapshot()
        run.step(grads)
        run.check(before, grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recursive_bias_correction_is_refused(backend):
    run = Run(backend, "adam", {})
    run.hyper["bias_correction"] = "recursive"
    with pytest.raises(ValueError, match=r"recursive.*foreach"):
        run.step(run.grads())


def test_the_table_rows_and_the_alignment_flag():
    """The step's table (host code, no Triton needed): addresses, sizes, first chunks, a zero
    counter row; ALIGNED only when every address of θ, g, v, s, max s is a multiple of 16."""
    from adamlab.optim import triton_fused

    buffer = torch.zeros(4096 + 3)
    sizes = [5, 0, 2 * triton_fused.BLOCK + 1]
    lists = [[torch.zeros(k) for k in sizes] for _ in range(5)] + [[torch.zeros(()) for _ in sizes]]
    table, chunks, aligned = triton_fused._table(tuple(lists), range(3))
    rows = np.frombuffer(table, dtype=np.int64).reshape(9, 4)
    assert aligned and chunks == 1 + 1 + 3
    assert rows[6].tolist() == [*sizes, 0] and rows[7].tolist() == [0, 1, 2, 5] and not rows[8].any()
    assert rows[1, 2] == lists[1][2].data_ptr() and rows[5, 0] == lists[5][0].data_ptr()
    lists[2][2] = buffer[1 : 1 + sizes[2]]  # 4 bytes past a 16-byte boundary
    assert not triton_fused._table(tuple(lists), range(3))[2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_dense_non_contiguous_layouts_are_updated(backend, layout):
    """channels_last and transposed parameters (dense, innermost stride not last) step like
    contiguous ones; the layout check once sorted dims by size instead of stride and refused them."""
    gen = torch.Generator().manual_seed(3)
    if layout == "channels_last":
        base = torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=torch.channels_last)
    else:
        base = torch.randn(6, 4, generator=gen).t().contiguous().t()
    assert not base.is_contiguous()
    p = base.to(_device(backend))
    g = torch.empty_strided(p.shape, p.stride(), device=p.device).copy_(torch.randn(p.shape, generator=gen))
    v, s = torch.zeros_like(p), torch.zeros_like(p)
    assert v.stride() == p.stride() == g.stride()
    hyper = _hyper("adam", {})
    theta, want = reference.step(
        "adam",
        _f64(p),
        _f64(g),
        reference.init_state(_f64(p)),
        **{k: hyper[k] for k in ("lr", "beta1", "beta2", "eps")},
    )
    _update(backend)("adam", [p], [g], [v], [s], [], [torch.zeros((), device=p.device)], **hyper, capturable=False)
    np.testing.assert_allclose(_f64(p), theta, **TOLERANCE[torch.float32])
    np.testing.assert_allclose(_f64(s), want.s, **TOLERANCE[torch.float32])


def test_a_group_across_device_kinds_is_refused_before_any_launch():
    """fused=True on a group whose parameters are on two kinds of device is refused by name in
    the table check, before any launch (no half-step). On CUDA, a CPU tensor's device index
    (-1) differs from the first parameter's, which sends the step to this check."""
    pytest.importorskip("triton")
    from adamlab.optim import triton_fused

    cpu, meta = (lambda *shape: torch.zeros(shape)), (lambda *shape: torch.zeros(shape, device="meta"))
    lists = ([cpu(3), meta(2)], [cpu(3), meta(2)], [cpu(3), meta(2)], [cpu(3), meta(2)], [cpu(3), meta(2)],
             [cpu(), meta()])  # fmt: skip
    with pytest.raises(RuntimeError, match=r"one kind of device per parameter group; parameter 1 .* is on meta"):
        triton_fused._check(lists)
