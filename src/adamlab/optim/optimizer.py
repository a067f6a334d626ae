"""``adamlab.Adam`` and ``adamlab.Yogi``: drop-in ``torch.optim.Optimizer`` subclasses.

The classes validate, gather and dispatch; they hold no math. The math is in
:mod:`adamlab._moments` (the per-step coefficients) and in the implementations that
:func:`adamlab.optim.functional.choose` picks from, each tested against the float64 oracle
:mod:`adamlab.reference`.

A step remembers nothing from the last one: it reads every parameter's gradient and state
anew (as ``torch.optim.Adam`` does), so new gradients, ``p.data = ...``, replaced or cleared
state, a loaded checkpoint and new hyperparameters take effect at the next step by
construction.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adamlab.optim.functional import adam_family_update, choose
from adamlab.validation import validate_betas, validate_hyperparameters, validate_state_dtype

_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
# how the update runs: this optimizer's (and this machine's) choice, never the checkpoint's
_RUN_KEYS = ("foreach", "fused", "capturable", "state_dtype")

_grad = Tensor.grad.__get__
_is_sparse = operator.attrgetter("is_sparse")
_is_not = operator.is_not
_exp_avg = operator.itemgetter("exp_avg")
_exp_avg_sq = operator.itemgetter("exp_avg_sq")
_max_exp_avg_sq = operator.itemgetter("max_exp_avg_sq")
_step = operator.itemgetter("step")


def _check_group_options(options: dict[str, Any]) -> None:
    """What validation.py does not check (yet): v0, and the fused kernels' variant matrix."""
    if "initial_exp_avg_value" in options:
        value = options["initial_exp_avg_value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
            raise ValueError(f"Invalid initial_exp_avg_value (v0): {value!r} (expected a finite number >= 0)")
    if options.get("fused") and options.get("bias_correction", True) == "recursive":
        raise ValueError(
            "bias_correction='recursive' is not supported with fused=True (the fused kernels do not "
            "implement it); use foreach=True or foreach=False"
        )


class _AdamFamily(Optimizer):
    """Shared machinery of :class:`Adam` and :class:`Yogi`; ``_rule`` names the update."""

    _rule: ClassVar[str]
    _default_initial_accumulator_value: ClassVar[float]

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        *,
        foreach: bool | None,
        maximize: bool,
        capturable: bool,
        differentiable: bool,
        fused: bool | None,
        decoupled_weight_decay: bool,
        bias_correction: bool | str,
        initial_accumulator_value: float | None,
        initial_exp_avg_value: float,
        state_dtype: torch.dtype | None,
        skip_nonfinite: bool,
    ) -> None:
        validate_state_dtype(state_dtype)
        if initial_accumulator_value is None:
            initial_accumulator_value = self._default_initial_accumulator_value
        validate_hyperparameters(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction,
        )
        _check_group_options(
            dict(initial_exp_avg_value=initial_exp_avg_value, fused=fused, bias_correction=bias_correction)
        )
        if differentiable:
            raise ValueError(
                f"{type(self).__name__} does not support differentiable=True "
                "(no implementation keeps the autograd graph through the update)"
            )
        if fused and foreach:
            raise ValueError("fused=True and foreach=True cannot be set together")
        defaults = dict(
            lr=lr,
            betas=validate_betas(betas),
            eps=float(eps),
            weight_decay=float(weight_decay),
            amsgrad=bool(amsgrad),
            maximize=bool(maximize),
            foreach=foreach,
            capturable=bool(capturable),
            differentiable=False,
            fused=fused,
            decoupled_weight_decay=bool(decoupled_weight_decay),
            bias_correction=bias_correction,
            initial_accumulator_value=float(initial_accumulator_value),
            initial_exp_avg_value=float(initial_exp_avg_value),
            state_dtype=state_dtype,
            skip_nonfinite=bool(skip_nonfinite),
        )
        params = list(params) if not isinstance(params, Tensor) else [params]
        if len(params) == 0:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        super().__init__(params, defaults)
        if fused:
            # torch.amp.GradScaler then hands us grad_scale/found_inf (as attributes) instead
            # of unscaling p.grad itself and syncing on found_inf; fused kernels use them.
            self._step_supports_amp_scaling = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Fill in what a state_dict saved by torch.optim.Adam (or an older adamlab) lacks.
        super().__setstate__(state)
        for group in self.param_groups:
            for key in (
                "amsgrad",
                "maximize",
                "capturable",
                "differentiable",
                "decoupled_weight_decay",
                "skip_nonfinite",
            ):
                group.setdefault(key, False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("bias_correction", True)
            group.setdefault("initial_accumulator_value", self._default_initial_accumulator_value)
            group.setdefault("initial_exp_avg_value", 0.0)
            group.setdefault("state_dtype", None)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)
                if p_state and (group["capturable"] or group["fused"]):
                    p_state["step"] = p_state["step"].to(p.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its own hyperparameters are validated like the constructor's."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        keys = ("lr", "betas", "eps", "weight_decay", "initial_accumulator_value", "bias_correction")
        validate_hyperparameters(**{k: param_group[k] for k in keys if k in param_group})
        validate_state_dtype(param_group.get("state_dtype"))
        _check_group_options({**self.defaults, **param_group})
        if "betas" in param_group:
            param_group["betas"] = validate_betas(param_group["betas"])
        super().add_param_group(param_group)

    # ---- state ---------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The one function that creates a parameter's state (lazily, at its first step).

        Keys, shapes and dtypes follow ``torch.optim.Adam``: ``step`` is a 0-dim float32
        tensor (on the CPU, or on the parameter's device when capturable or fused);
        ``exp_avg`` (v) is filled with ``initial_exp_avg_value`` (v0, default 0) like p;
        ``exp_avg_sq`` (s) with ``initial_accumulator_value`` (s0); ``max_exp_avg_sq``
        (AMSGrad) starts equal to s. The moments have p's dtype unless the group's
        ``state_dtype`` names another.
        """
        state = self.state[p]
        on_device = group["capturable"] or group["fused"]
        dtype = group["state_dtype"] or p.dtype
        if p.is_complex() and not dtype.is_complex:
            dtype = p.dtype
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.full_like(
            p, group["initial_exp_avg_value"], dtype=dtype, memory_format=torch.preserve_format
        )
        state["exp_avg_sq"] = torch.full_like(
            p, group["initial_accumulator_value"], dtype=dtype, memory_format=torch.preserve_format
        )
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone(memory_format=torch.preserve_format)
        return state

    def _gather(self, group: dict[str, Any]) -> tuple[tuple[list[Any], ...], list[Tensor]]:
        """The group's parameters that have a gradient, their gradients and their state, as
        parallel lists; and the parameters whose state this call created (their first step).

        Plain code, run every step; the per-parameter work is C-level ``map`` calls."""
        params = group["params"]
        grads = list(map(_grad, params))
        has_grad = list(map(_is_not, grads, repeat(None)))
        if all(has_grad):
            params = list(params)
        else:
            params, grads = list(compress(params, has_grad)), list(compress(grads, has_grad))
        if any(map(_is_sparse, grads)):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        states = list(map(self.state.__getitem__, params))  # a defaultdict: {} where new
        new = [] if all(states) else [p for p, s in zip(params, states) if not s]
        for p in new:
            self._init_state(p, group)
        exp_avgs = list(map(_exp_avg, states))
        exp_avg_sqs = list(map(_exp_avg_sq, states))
        maxes = list(map(_max_exp_avg_sq, states)) if group["amsgrad"] else []
        return (params, grads, exp_avgs, exp_avg_sqs, maxes, list(map(_step, states))), new

    # ---- the step ------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step (optionally re-evaluating ``closure``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group, *self._gather(group))
        return loss

    def _step_group(self, group: dict[str, Any], tensors: tuple[Any, ...], new: list[Tensor]) -> None:
        """One step of one group over its gathered tensors: pick the implementation, call it."""
        if not tensors[0]:
            return
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if isinstance(lr, Tensor) and not group["capturable"]:
            lr = lr.item()  # host-side scalar, as torch's non-capturable paths use
        implementation = choose(group["fused"], group["foreach"], tensors[0][0].device)
        # set by GradScaler on fused optimizers (instance attributes)
        grad_scale = self.__dict__.get("grad_scale")
        found_inf = self.__dict__.get("found_inf")
        if group["skip_nonfinite"]:
            own = _nonfinite(tensors[1])
            found_inf = own if found_inf is None else torch.maximum(found_inf, own.to(found_inf.device))
        if grad_scale is not None and not implementation.startswith("fused"):
            # a group that opted out of fused=True under GradScaler (or whose fused kernel is
            # missing here): unscale into new tensors (p.grad stays as the caller left it)
            tensors = (tensors[0], torch._foreach_div(tensors[1], grad_scale), *tensors[2:])
            grad_scale = None
        if found_inf is not None and (implementation != "fused_cuda" or not found_inf.is_cuda):
            # Only the CUDA kernel masks the update on the device, without synchronizing.
            # Elsewhere decide on the host (one sync; free on CPU), and a skipped step also
            # takes back the state this step created: the parameter has not stepped yet.
            if found_inf.item():
                for p in new:
                    del self.state[p]
                return
            found_inf = None
        adam_family_update(
            self._rule,
            *tensors,
            implementation=implementation,
            grad_scale=grad_scale,
            found_inf=found_inf,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"],
            maximize=group["maximize"],
            bias_correction=group["bias_correction"],
            capturable=group["capturable"],
        )

    def initialize_moments(self, batches: Iterable[Any], *, first_moment: bool = False) -> int:
        """Start s (and, with ``first_moment``, v) from k minibatches' gradients.

        Yogi's "larger initial batch" (Zaheer et al., 2018): call once before training with
        an iterable of gradient lists or loss closures; no parameter moves. Returns k. See
        :func:`adamlab.optim.init_moments.initialize_moments` for the conventions.
        """
        from adamlab.optim.init_moments import initialize_moments

        return initialize_moments(self, batches, first_moment=first_moment)

    # ---- checkpoints ---------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict (from adamlab or ``torch.optim.Adam``), checking it all first.

        Wrong group or parameter counts, a parameter's state with missing keys, or a state
        tensor whose shape differs from its parameter's raise ``ValueError`` naming the
        parameter, before anything is changed: nothing is half-loaded. Unlike
        ``torch.optim.Optimizer``, the loaded state never aliases the tensors of the
        ``state_dict`` passed in (stepping does not write into the caller's dict).
        """
        _check_state_dict(self, state_dict)
        ours = [{k: group[k] for k in _RUN_KEYS} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keep, saved_group in zip(self.param_groups, ours, state_dict["param_groups"]):
            group.update(keep)
            for p, key in zip(group["params"], saved_group["params"]):
                state, saved = self.state.get(p), state_dict["state"].get(key)
                if not state or saved is None:
                    continue
                on_device = group["capturable"] or group["fused"]
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=torch.float32)
                if group["state_dtype"] is not None:
                    # torch cast the moments to p's dtype: recast from the saved values, not the cast ones
                    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                        if k in saved:
                            state[k] = saved[k].to(device=p.device, dtype=group["state_dtype"])
                for k, value in state.items():
                    # torch's .to() returns the caller's own tensor when nothing changes: stepping
                    # would then write into the state_dict the caller passed in. Own our state.
                    if torch.is_tensor(value) and value is saved.get(k):
                        state[k] = value.clone()


def _nonfinite(grads: list[Tensor]) -> Tensor:
    """A 0-dim float32 tensor: 1.0 if any gradient holds inf or NaN, else 0.0 (no host sync)."""
    flags = [torch.logical_not(torch.isfinite(g).all()) for g in grads]
    return torch.stack([f.to(flags[0].device) for f in flags]).any().float()


def _check_state_dict(opt: Optimizer, state_dict: Any) -> None:
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("optimizer state_dict must be a dict with keys 'state' and 'param_groups'")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(
            f"state_dict has {len(saved_groups)} parameter group(s), the optimizer has {len(opt.param_groups)}"
        )
    for gi, (group, saved) in enumerate(zip(opt.param_groups, saved_groups)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"parameter group {gi}: state_dict has {len(saved['params'])} parameter(s), "
                f"the optimizer has {len(group['params'])}"
            )
        amsgrad = saved.get("amsgrad", False)
        for pi, (p, key) in enumerate(zip(group["params"], saved["params"])):
            p_state = state_dict["state"].get(key)
            if not p_state:
                continue  # a parameter that has not stepped yet (None, or the {} a lookup leaves)
            name = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
            needed = _STATE_KEYS + (("max_exp_avg_sq",) if amsgrad else ())
            missing = [k for k in needed if k not in p_state]
            if missing:
                raise ValueError(f"state_dict entry for {name} is missing {missing}")
            for k in needed[1:]:
                value = p_state[k]
                if not torch.is_tensor(value) or value.shape != p.shape:
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"state_dict entry {k!r} for {name} has shape {got}")


_ARGS = """
    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate η, a float or a 0-dim tensor (default: {lr}).
        betas: (β1, β2), decay rates of v and s (default: (0.9, 0.999)).
        eps: ε, added *after* the square root: η·v̂/(√ŝ + ε) (default: {eps}).
        weight_decay: λ (default: 0.0). Added to the gradient (L2) unless
            ``decoupled_weight_decay=True``, which shrinks θ by ηλθ first (AdamW).
        amsgrad: keep the running max of the raw s and bias-correct it (PyTorch's form)
            (default: False).
        foreach: ``None`` (default) or ``True`` uses the multi-tensor implementation,
            ``False`` the single-tensor loop.
        maximize: ascend the objective instead of descending it (default: False).
        capturable: keep the step count on the parameter's device and compute every
            per-step scalar there (no host synchronization; needed for CUDA graphs)
            (default: False).
        differentiable: not supported; ``True`` raises ``ValueError`` (default: False).
        fused: ``True`` runs one fused kernel per step (C++ on CPU, Triton on CUDA). Where
            this machine lacks the kernel (no compiled library, no Triton), the first step
            warns once, saying why, and runs the foreach implementation (default: None).
        decoupled_weight_decay: see ``weight_decay`` (default: False).
        bias_correction: ``True`` (default: divide v and s by 1-β^t, t from 1), ``False``,
            or ``"recursive"`` (the state holds the debiased v̂ and ŝ; see
            :func:`adamlab.reference.second_moment`). ``"recursive"`` runs on the foreach
            and single-tensor paths only: with ``fused=True`` it raises ``ValueError``.
        initial_accumulator_value: s0, the value s starts from (default: {s0}).
        initial_exp_avg_value: v0, the value v starts from (default: 0.0; optax's and
            TF-Addons' Yogi start both moments at 1e-6). A finite number >= 0.
        state_dtype: dtype of v and s (default: None, the parameter's). ``torch.float32``
            for bf16/fp16 parameters keeps the moments, and the math, in fp32.
        skip_nonfinite: skip the whole step of a group (parameters, state and step
            count unchanged) when any gradient holds inf or NaN (default: False: like
            torch, non-finite gradients then propagate into the parameters).

    Conventions: ε is added after the square root; t counts steps from 1; with bias
    correction the update is η·(v/(1-β1^t))/(√(s/(1-β2^t)) + ε).

    State per parameter (as ``torch.optim.Adam``): ``step`` (0-dim float32 tensor),
    ``exp_avg`` (v), ``exp_avg_sq`` (s), ``max_exp_avg_sq`` (with amsgrad).
"""


class Adam(_AdamFamily):
    __doc__ = """Adam (Kingma & Ba, 2015), a drop-in for ``torch.optim.Adam``.

    For t = 1, 2, ...::

        v ← β1 v + (1 - β1) g
        s ← β2 s + (1 - β2) g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults are torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, s0 = v0 = 0. With the
    defaults (and ``bias_correction=True``) it follows ``torch.optim.Adam`` to float32
    rounding, and ``decoupled_weight_decay=True`` follows ``torch.optim.AdamW``. The
    chapter's from-scratch Adam is ``Adam(params, lr=0.01, eps=1e-6)``.
""" + _ARGS.format(lr="1e-3", eps="1e-8", s0="0.0")

    _rule = "adam"
    _default_initial_accumulator_value = 0.0

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 0.0,
        initial_exp_avg_value: float = 0.0,
        state_dtype: torch.dtype | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value, initial_exp_avg_value=initial_exp_avg_value,
            state_dtype=state_dtype, skip_nonfinite=skip_nonfinite,
        )  # fmt: skip


class Yogi(_AdamFamily):
    __doc__ = """Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018).

    Adam with one line changed, the second moment moves additively, by at most
    (1 - β2)·g² per step, towards g²::

        v ← β1 v + (1 - β1) g
        s ← s - (1 - β2) · sgn(s - g²) · g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults: lr 1e-2, betas (0.9, 0.999), eps 1e-3, s0 = 1e-6, bias correction on —
    the conventions of TF-Addons, optax (``optax.yogi``) and the paper author's code
    (which also start v at 1e-6: ``initial_exp_avg_value=1e-6``; the default here is 0).
    The *Dive into Deep Learning* chapter's from-scratch Yogi starts from s = 0:
    ``Yogi(params, lr=0.01, eps=1e-3, initial_accumulator_value=0.0)``.
""" + _ARGS.format(lr="1e-2", eps="1e-3", s0="1e-6")

    _rule = "yogi"
    _default_initial_accumulator_value = 1e-6

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        bias_correction: bool | str = True,
        initial_accumulator_value: float = 1e-6,
        initial_exp_avg_value: float = 0.0,
        state_dtype: torch.dtype | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value, initial_exp_avg_value=initial_exp_avg_value,
            state_dtype=state_dtype, skip_nonfinite=skip_nonfinite,
        )  # fmt: skip
