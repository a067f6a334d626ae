"""``adamlab.Adam`` and ``adamlab.Yogi``: drop-in ``torch.optim.Optimizer`` subclasses.

The classes validate, gather and dispatch; they hold no math. The math lives in the
implementations registered in :mod:`adamlab.optim.functional`, each tested against the
float64 oracle :mod:`adamlab.reference`.
"""

from __future__ import annotations

import functools
import inspect
import operator
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adamlab.optim import _host
from adamlab.optim.functional import IMPLEMENTATIONS, adam_family_update
from adamlab.validation import (
    check_known_keys,
    validate_group,
    validate_group_params,
    validate_params,
    validate_state_dict,
)

_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
# how the update runs: this optimizer's (and this machine's) choice, never the checkpoint's
_RUN_KEYS = ("foreach", "fused", "capturable", "state_dtype")

try:  # torch's registries of global step hooks (torch.optim.register_optimizer_step_*_hook)
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover - a torch that moved them: always take torch's wrapper
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = {0: None}


def _hooks_and_profiling(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` wrapped as ``torch.optim.Optimizer`` wraps every ``step``, minus a fixed cost.

    torch opens a ``record_function`` profiler range around every step, which costs about
    ten microseconds with no profiler running -- as much as a whole fused step of a small
    model. This wrapper runs torch's own wrapper (the range, the pre and post hooks) whenever
    there is a hook, a profiler or a compiler to serve, and otherwise calls ``step`` directly.
    """
    hooked = Optimizer.profile_hook_step(step)

    @functools.wraps(step)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or torch.autograd._profiler_enabled()
            or torch.compiler.is_compiling()
        ):
            return hooked(self, *args, **kwargs)
        out = step(self, *args, **kwargs)
        self._optimizer_step_code()
        if self._optimizer_step_post_hooks or _global_optimizer_post_hooks:  # registered by the closure
            for hook in (*self._optimizer_step_post_hooks.values(), *_global_optimizer_post_hooks.values()):
                hook(self, (self, *args), kwargs)
        return out

    wrapper.hooked = True  # type: ignore[attr-defined]  # torch's Optimizer then leaves it as is
    return wrapper


_grad = Tensor.grad.__get__
_is_sparse = operator.attrgetter("is_sparse")
_is = operator.is_
_exp_avg = operator.itemgetter("exp_avg")
_exp_avg_sq = operator.itemgetter("exp_avg_sq")
_max_exp_avg_sq = operator.itemgetter("max_exp_avg_sq")
_step = operator.itemgetter("step")


def _ids(objects: Iterable[Any]) -> bytes:
    """The ``id`` of every object, as int64 bytes."""
    return array("q", map(id, objects)).tobytes()


class _Gathered:
    """What ``_gather`` found for one group last time, to find it again cheaply.

    It remembers which parameters had a gradient and where their state dicts sit in
    ``self.state`` (positions in its order, valid while its keys are the same objects in the
    same order: checked once per step, see ``_AdamFamily._state_unchanged``). It holds no
    tensor and no group (only ``id``s): the gradients and the state tensors are read anew
    every step, so a replaced, moved or dropped tensor is never used or kept alive. A cleared
    state dict, a gradient that appears or goes, a change of the group's parameters or of
    ``amsgrad`` sends the group through the full gather. Ids, the no-gradient pattern and
    positions are kept as bytes (int64 ids and positions, one 0/1 per parameter), the form
    the host accelerator (:mod:`adamlab.optim._host`) reads when it does the same in C++.
    """

    __slots__ = ("amsgrad", "group_id", "has_grad", "no_grad", "param_ids", "positions", "with_grad_ids")

    def __init__(self, group: dict[str, Any], with_grad: list[Tensor]) -> None:
        params = group["params"]
        self.group_id = id(group)
        self.param_ids = _ids(params)
        self.no_grad = bytes(map(_is, map(_grad, params), repeat(None)))
        self.has_grad = [not x for x in self.no_grad] if any(self.no_grad) else None
        self.with_grad_ids = list(map(id, with_grad))
        self.amsgrad = bool(group["amsgrad"])
        self.positions: bytes | None = None  # set by _AdamFamily._watch_state

    def gather(self, group: dict[str, Any], states_in_order: list[dict], host: Any = None) -> tuple[Any, ...] | None:
        """The group's lists, read now; None if anything that decides them changed.

        Parameters are recognised by ``id``: a recycled id can only point at a parameter
        that is in the group now and whose state sits at that position now (the key order
        was checked), which is the right one."""
        params = group["params"]
        if id(group) != self.group_id or self.positions is None or bool(group["amsgrad"]) is not self.amsgrad:
            return None
        if host is not None and type(params) is list:
            return host.gather(params, self.param_ids, self.no_grad, states_in_order, self.positions, self.amsgrad)
        if _ids(params) != self.param_ids:
            return None
        grads = list(map(_grad, params))
        if bytes(map(_is, grads, repeat(None))) != self.no_grad:
            return None
        if self.has_grad is None:
            with_grad = list(params)
        else:
            grads = list(compress(grads, self.has_grad))
            with_grad = list(compress(params, self.has_grad))
        states = list(map(states_in_order.__getitem__, array("q", self.positions)))
        try:
            exp_avgs = list(map(_exp_avg, states))
            exp_avg_sqs = list(map(_exp_avg_sq, states))
            steps = list(map(_step, states))
            maxes = list(map(_max_exp_avg_sq, states)) if self.amsgrad else []
        except KeyError:  # a state dict cleared or cut down: the full gather deals with it
            return None
        # a gradient that turned sparse: the full gather raises the error (the fused CUDA
        # tables check every new gradient's layout themselves)
        if not (group["fused"] and with_grad and with_grad[0].is_cuda) and any(map(_is_sparse, grads)):
            return None
        return with_grad, grads, exp_avgs, exp_avg_sqs, maxes, steps


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
        initial_accumulator_value: float | None = None,
        state_dtype: torch.dtype | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        if initial_accumulator_value is None:
            initial_accumulator_value = self._default_initial_accumulator_value
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value,
            state_dtype=state_dtype,
            skip_nonfinite=skip_nonfinite,
        )
        validate_group(defaults)  # all of it, before anything is converted or created
        for key in ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay", "skip_nonfinite"):
            defaults[key] = bool(defaults[key])
        for key in ("eps", "weight_decay", "initial_accumulator_value"):
            defaults[key] = float(defaults[key])
        defaults["betas"] = _kept_betas(betas)
        super().__init__(validate_params(params, type(self).__name__), defaults)
        if fused:
            # torch.amp.GradScaler then hands us grad_scale/found_inf (as attributes) instead
            # of unscaling p.grad itself and syncing on found_inf; fused kernels use them.
            self._step_supports_amp_scaling = True

    @classmethod
    def _check_options(cls, options: dict[str, Any]) -> None:
        """Unknown keywords raise TypeError naming this class (not the private base)."""
        signature = inspect.signature(_AdamFamily.__init__).parameters.values()
        check_known_keys(f"{cls.__name__}()", options, {p.name for p in signature if p.kind is p.KEYWORD_ONLY})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Fill in what a state_dict saved by torch.optim.Adam (or an older adamlab) lacks.
        super().__setstate__(state)
        self._forget_gathered()
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
            group.setdefault("state_dtype", None)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_step_dtype(group))
                if p_state and (group["capturable"] or group["fused"]):
                    p_state["step"] = p_state["step"].to(p.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its own hyperparameters are validated like the constructor's."""
        where = f"param_groups[{len(self.param_groups)}]"
        differentiable = bool(self.defaults.get("differentiable"))
        params = validate_group_params(param_group, where, self.param_groups, differentiable)
        validate_group({**self.defaults, **param_group}, where)
        param_group["params"] = params  # checked, and a generator is read only once
        if "betas" in param_group:
            param_group["betas"] = _kept_betas(param_group["betas"])
        super().add_param_group(param_group)

    # ---- state ---------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The one function that creates a parameter's state (lazily, at its first step).

        Keys, shapes and dtypes follow ``torch.optim.Adam``: ``step`` is a 0-dim tensor,
        float32 with fused, else of torch's default scalar dtype (float64 under
        ``torch.set_default_dtype(torch.float64)``), on the CPU, or on the parameter's
        device when capturable or fused;
        ``exp_avg`` (v) is zeros like p; ``exp_avg_sq`` (s) is filled with
        ``initial_accumulator_value`` (s0), both parts of a complex s (the update treats a
        complex parameter as its real view); ``max_exp_avg_sq`` (AMSGrad) starts equal to s.
        The moments have p's dtype unless the group's ``state_dtype`` names another.
        """
        state = self.state[p]
        on_device = group["capturable"] or group["fused"]
        dtype = group["state_dtype"] or p.dtype
        if p.is_complex() and not dtype.is_complex:
            dtype = p.dtype
        state["step"] = torch.zeros((), dtype=_step_dtype(group), device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
        s = state["exp_avg_sq"]
        (torch.view_as_real(s) if s.is_complex() else s).fill_(group["initial_accumulator_value"])
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone(memory_format=torch.preserve_format)
        return state

    def _gather(self, group: dict[str, Any], states_in_order: list[dict] | None = None) -> tuple[Any, ...]:
        """The group's parameters that have a gradient, their gradients and their state
        (created here at a parameter's first step), as parallel lists.

        ``states_in_order`` (``self.state``'s values, when its keys are those of the last
        step) lets a group find its state dicts by position instead of one dict lookup per
        parameter (see :class:`_Gathered`).
        """
        if states_in_order is not None:
            cached = self._gathered.get(id(group))
            host = _host.get() if group["fused"] else None
            found = cached.gather(group, states_in_order, host) if cached is not None else None
            if found is not None:
                self.__dict__["_new_states"] = ()
                return found
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        new = self.__dict__["_new_states"] = []  # created by this gather (see _step_group)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if len(self.state[p]):
                state = self.state[p]
            else:
                state = self._init_state(p, group)
                new.append(p)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        if not torch.compiler.is_compiling():
            self._gathered[id(group)] = _Gathered(group, list(params))
            self.__dict__["_state_watch"] = None  # look at the state again after this step
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    @property
    def _gathered(self) -> dict[int, _Gathered]:
        try:
            return self.__dict__["_gathered_by_group"]
        except KeyError:
            return self.__dict__.setdefault("_gathered_by_group", {})

    def _forget_gathered(self) -> None:
        self.__dict__.pop("_gathered_by_group", None)
        self.__dict__.pop("_state_watch", None)

    def _state_unchanged(self) -> list[dict] | None:
        """``self.state``'s values in order if its keys are the same objects, in the same
        order, as at the end of the last step (then every ``_Gathered`` position holds);
        else None. Keys are compared by ``id``: nothing here keeps a parameter alive."""
        watch = self.__dict__.get("_state_watch")
        if watch is None:
            return None
        state = self.state
        host = _host.loaded()
        if host is not None and type(state) in (defaultdict, dict):  # torch's is a defaultdict
            return host.state_values(state, watch)
        if _ids(state) != watch:
            return None
        return list(state.values())

    def _watch_state(self) -> None:
        """Remember ``self.state``'s keys and place every group's state dicts in its order;
        forget groups that left the optimizer."""
        keys = list(map(id, self.state))
        self.__dict__["_state_watch"] = array("q", keys).tobytes()
        position = {k: i for i, k in enumerate(keys)}
        live = {id(group) for group in self.param_groups}
        gathered = self._gathered
        for key in [k for k in gathered if k not in live]:
            del gathered[key]
        for cached in gathered.values():
            try:
                cached.positions = array("q", [position[k] for k in cached.with_grad_ids]).tobytes()
            except KeyError:  # a parameter whose state is gone: gather it in full next time
                cached.positions = None

    # ---- dispatch ------------------------------------------------------------------------
    def _implementation(self, group: dict[str, Any], params: list[Tensor]) -> str:
        """The one place that picks an implementation for a group."""
        if group["differentiable"]:  # validation refused it with fused or foreach=True
            return "differentiable"
        if group["fused"]:
            device = "cuda" if params[0].is_cuda else params[0].device.type
            name = f"fused_{device}"
            if name not in IMPLEMENTATIONS:
                raise RuntimeError(
                    f"fused=True is not available for {device} tensors in this build of adamlab; "
                    "use foreach=True (or leave fused unset)"
                )
            return name
        if group["foreach"] is False:
            return "single_tensor"
        return "foreach"

    @_hooks_and_profiling
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step (optionally re-evaluating ``closure``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling():
            with torch.no_grad():
                for group in self.param_groups:
                    self._step_group(group, self._gather(group))
            return loss
        grad_enabled = torch.is_grad_enabled()
        # as torch: autograd records the update only with differentiable=True
        torch._C._set_grad_enabled(self.defaults["differentiable"])
        try:
            states_in_order = self._state_unchanged()
            for group in self.param_groups:
                try:
                    self._step_group(group, self._gather(group, states_in_order))
                except BaseException:
                    # a group that cannot step (fused=True on meta tensors, ...) keeps no state
                    # created for it: its parameters are as if this step never reached them
                    for p in self.__dict__.get("_new_states", ()):
                        del self.state[p]
                    self._forget_gathered()
                    raise
            if self.__dict__.get("_state_watch") is None or len(self._gathered) > len(self.param_groups):
                self._watch_state()
        finally:
            self.__dict__.pop("_new_states", None)
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    def _step_group(self, group: dict[str, Any], tensors: tuple[Any, ...]) -> None:
        """One step of one group over its gathered tensors: pick the implementation, call it."""
        if not tensors[0]:
            return
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if isinstance(lr, Tensor) and not group["capturable"] and not group["differentiable"]:
            lr = lr.item()  # host-side scalar, as torch's non-capturable paths use
        if not group["differentiable"]:
            # tensor betas are kept as given and read at every step, so writing into them
            # (a schedule) takes effect; differentiable=True keeps them in the graph
            if isinstance(beta1, Tensor):
                beta1 = beta1.item()
            if isinstance(beta2, Tensor):  # apart: a scheduler may have replaced only β1
                beta2 = beta2.item()
        implementation = self._implementation(group, tensors[0])
        # set by GradScaler on fused optimizers (instance attributes; getattr's miss is slow)
        grad_scale = self.__dict__.get("grad_scale")
        found_inf = self.__dict__.get("found_inf")
        if group["skip_nonfinite"]:
            own = _nonfinite(tensors[1])
            found_inf = own if found_inf is None else torch.maximum(found_inf, own.to(found_inf.device))
        if grad_scale is not None and not implementation.startswith("fused"):
            # a group that opted out of fused=True under GradScaler: unscale into new
            # tensors (p.grad stays as the caller left it); found_inf decides below
            tensors = (tensors[0], torch._foreach_div(tensors[1], grad_scale), *tensors[2:])
            grad_scale = None
        if found_inf is not None and (implementation != "fused_cuda" or not found_inf.is_cuda):
            # Only the CUDA kernel masks the update on the device, without synchronizing.
            # Elsewhere decide on the host (one sync; free on CPU), and a skipped step also
            # takes back the state this step created: the parameter has not stepped yet.
            if found_inf.item():
                new = self.__dict__.get("_new_states", ())
                for p in new:
                    del self.state[p]
                if new:
                    self._forget_gathered()
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
        validate_state_dict(self, state_dict, keep=_RUN_KEYS, required=_STATE_KEYS)
        ours = [{k: group[k] for k in _RUN_KEYS} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keep, saved_group in zip(self.param_groups, ours, state_dict["param_groups"]):
            group.update(keep)
            for p, key in zip(group["params"], saved_group["params"]):
                state, saved = self.state.get(p), state_dict["state"].get(key)
                if not state or saved is None:
                    continue
                step = state["step"]
                if group["capturable"] or group["fused"]:  # as torch: float32 on the parameter's device
                    state["step"] = step.to(device=p.device, dtype=torch.float32)
                else:  # as torch, a loaded step keeps its dtype (a count in an integer dtype becomes a float)
                    state["step"] = step.to(
                        device="cpu", dtype=step.dtype if step.is_floating_point() else _step_dtype(group)
                    )
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


def _step_dtype(group: dict[str, Any]) -> torch.dtype:
    """The dtype of a new step count, as torch's: float32 with fused, else the default scalar dtype."""
    return torch.float32 if group["fused"] or torch.get_default_dtype() != torch.float64 else torch.float64


def _kept_betas(betas: Any) -> tuple[Any, Any]:
    """Betas as stored in a group (validated already): numbers as floats, tensors as given
    (a 1-element tensor of any shape as a 0-dim view, torch's ``_to_scalar``), so that
    writing into a tensor beta later changes the update, as in torch."""
    return tuple((b.squeeze() if b.dim() else b) if isinstance(b, Tensor) else float(b) for b in betas)


def _nonfinite(grads: list[Tensor]) -> Tensor:
    """A 0-dim float32 tensor: 1.0 if any gradient holds inf or NaN, else 0.0 (no host sync)."""
    flags = [torch.logical_not(torch.isfinite(g).all()) for g in grads]
    return torch.stack([f.to(flags[0].device) for f in flags]).any().float()


_DOC_COMMON = """
    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate η, a float or a 0-dim tensor (default: {lr}).
        betas: (β1, β2), decay rates of v and s (default: (0.9, 0.999)): two numbers,
            or two 1-element tensors, kept as given and read at every step (writing into
            them changes the update; with ``foreach=True`` they need ``capturable=True``).
        eps: ε, added *after* the square root: η·v̂/(√ŝ + ε) (default: {eps}).
        weight_decay: λ (default: 0). Added to the gradient (L2) unless
            ``decoupled_weight_decay=True``, which shrinks θ by ηλθ first (AdamW).
        amsgrad: keep the running max of the raw s and bias-correct it (PyTorch's form).
        foreach: ``None`` (default) or ``True`` uses the multi-tensor implementation,
            ``False`` the single-tensor loop.
        maximize: ascend the objective instead of descending it.
        capturable: keep the step count on the parameter's device and compute every
            per-step scalar there (no host synchronization; needed for CUDA graphs).
            Accepted on the CPU too, where torch refuses it: the same arithmetic then
            runs, and is tested, on every machine.
        differentiable: run the update through autograd-tracked operations (the
            single-tensor implementation, with ``torch.optim.Adam``'s rules: not with
            ``fused`` or ``foreach=True``), so that gradients flow through a step to the
            initial parameters, the state and a tensor ``lr``/betas (meta-learning,
            hypergradients). Off by default: the step then runs under ``no_grad``.
        fused: use a fused kernel where this build has one for the parameters' device;
            where none exists ``fused=True`` raises ``RuntimeError`` at the first step
            (and creates no state). Complex parameters are updated as their real view,
            as on every other path (torch's fused refuses them). On the CPU the result
            is not bitwise torch's (the kernel orders the arithmetic its own way).
        decoupled_weight_decay: see ``weight_decay``.
        bias_correction: ``True`` (divide v and s by 1-β^t, t from 1), ``False``, or
            ``"recursive"`` (state holds the debiased v̂ and ŝ; see
            :func:`adamlab.reference.second_moment`).
        initial_accumulator_value: s0, the value s starts from (default: {s0}).
        state_dtype: dtype of v and s (default: the parameter's). ``torch.float32``
            for bf16/fp16 parameters keeps the moments, and the math, in fp32.
        skip_nonfinite: skip the whole step of a group (parameters, state and step
            count unchanged) when any gradient holds inf or NaN. Off by default: like
            torch, non-finite gradients then propagate into the parameters.

    State per parameter (as ``torch.optim.Adam``): ``step`` (0-dim tensor, float32, or
    float64 under a float64 default dtype unless fused; a loaded step keeps its dtype),
    ``exp_avg`` (v), ``exp_avg_sq`` (s), ``max_exp_avg_sq`` (with amsgrad).
"""


class Adam(_AdamFamily):
    """Adam (Kingma & Ba, 2015), a drop-in for ``torch.optim.Adam``.

    For t = 1, 2, ...::

        v ← β1 v + (1 - β1) g
        s ← β2 s + (1 - β2) g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults are torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, s0 = 0. With the
    defaults (and ``bias_correction=True``) it follows ``torch.optim.Adam`` to float32
    rounding, and ``decoupled_weight_decay=True`` follows ``torch.optim.AdamW``. The
    chapter's from-scratch Adam is ``Adam(params, lr=0.01, eps=1e-6)``.
    """ + _DOC_COMMON.format(lr="1e-3", eps="1e-8", s0="0")

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
        **kwargs: Any,
    ) -> None:
        self._check_options(kwargs)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)


class Yogi(_AdamFamily):
    """Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018).

    Adam with one line changed, the second moment moves additively, by at most
    (1 - β2)·g² per step, towards g²::

        v ← β1 v + (1 - β1) g
        s ← s - (1 - β2) · sgn(s - g²) · g²
        θ ← θ - η · (v / (1 - β1^t)) / (√(s / (1 - β2^t)) + ε)

    Defaults: lr 1e-2, betas (0.9, 0.999), eps 1e-3, s0 = 1e-6, bias correction on —
    the conventions of TF-Addons, optax (``optax.yogi``) and the paper author's code.
    The *Dive into Deep Learning* chapter's from-scratch Yogi starts from s = 0:
    ``Yogi(params, lr=0.01, eps=1e-3, initial_accumulator_value=0.0)``.
    """ + _DOC_COMMON.format(lr="1e-2", eps="1e-3", s0="1e-6")

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
        **kwargs: Any,
    ) -> None:
        self._check_options(kwargs)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)
