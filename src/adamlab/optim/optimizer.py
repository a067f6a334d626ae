"""``adamlab.Adam`` and ``adamlab.Yogi``: drop-in ``torch.optim.Optimizer`` subclasses.

The classes validate, gather and dispatch; they hold no math. The math is in
:mod:`adamlab._moments` (the per-step coefficients) and in the implementations that
:func:`adamlab.optim.functional.choose` picks from, each tested against the float64 oracle
:mod:`adamlab.reference`.

A step reads every parameter's gradient and state anew (as ``torch.optim.Adam`` does), so
new gradients, ``p.data = ...``, replaced or cleared state, a loaded checkpoint and new
hyperparameters take effect at the next step by construction. One thing is kept between
steps, and checked at each: where a fused CPU group's state lives
(:mod:`adamlab.optim.flat_state`: its tensors share one storage per kind and are recognised
by address), which spares the step reading every state tensor's metadata.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from adamlab.optim import flat_state
from adamlab.optim import precision as lowp
from adamlab.optim._dtensor import local_tensor
from adamlab.optim.flat_state import FlatState
from adamlab.optim.functional import adam_family_update, choose
from adamlab.validation import (
    FLAGS,
    fused_by_default,
    validate_group,
    validate_group_params,
    validate_params,
    validate_state_dict,
)

_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")
# how the update runs: this optimizer's (and this machine's) choice, never the checkpoint's
# and how the state is stored: a checkpoint in another precision is refused (convert_state_dict)
_RUN_KEYS = ("foreach", "fused", "capturable", "state_precision", "block_size")
# per-parameter state tensors that are not moments (kept in their own dtype on load)
_ABSMAX_KEYS = ("exp_avg_absmax", "exp_avg_sq_absmax")
_SEED = "rounding_seed"
# hyperparameters loaded from a checkpoint, or kept where it lacks them (an older or torch one)
_KEPT_IF_MISSING = ("stochastic_rounding", "rounding_seed")

_grad = Tensor.grad.__get__
_is_sparse = operator.attrgetter("is_sparse")
_is_not = operator.is_not
_exp_avg = operator.itemgetter("exp_avg")
_exp_avg_sq = operator.itemgetter("exp_avg_sq")
_max_exp_avg_sq = operator.itemgetter("max_exp_avg_sq")
_step = operator.itemgetter("step")
_seed = operator.itemgetter(_SEED)
_v_absmax = operator.itemgetter("exp_avg_absmax")
_s_absmax = operator.itemgetter("exp_avg_sq_absmax")
_dtype = Tensor.dtype.__get__
_is_complex = operator.attrgetter("is_complex")
_LOW_DTYPES = frozenset((torch.bfloat16, torch.uint8))  # how "bf16" and "8bit" store a moment


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
        state_precision: str | None,
        stochastic_rounding: bool,
        rounding_seed: int,
        block_size: int,
        skip_nonfinite: bool,
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
            initial_exp_avg_value=initial_exp_avg_value,
            state_precision=state_precision,
            stochastic_rounding=stochastic_rounding,
            rounding_seed=rounding_seed,
            block_size=block_size,
            skip_nonfinite=skip_nonfinite,
        )
        validate_group(defaults)  # all of it, before anything is converted or created
        for key in FLAGS:
            defaults[key] = bool(defaults[key])
        defaults["rounding_seed"], defaults["block_size"] = int(rounding_seed), int(block_size)
        for key in ("eps", "weight_decay", "initial_accumulator_value", "initial_exp_avg_value"):
            defaults[key] = float(defaults[key])
        defaults["betas"] = _kept_betas(betas)
        self._flat_states: dict[int, FlatState] = {}  # group position -> where its flat state is
        super().__init__(validate_params(params, type(self).__name__), defaults)
        if fused:
            # torch.amp.GradScaler then hands us grad_scale/found_inf (as attributes) instead
            # of unscaling p.grad itself and syncing on found_inf; fused kernels use them.
            self._step_supports_amp_scaling = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Fill in what a state_dict saved by torch.optim.Adam (or an older adamlab) lacks.
        super().__setstate__(state)
        self._flat_states = {}  # not pickled (addresses); a loaded or copied state steps the general path
        for group in self.param_groups:
            for key in FLAGS:
                group.setdefault(key, False)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("bias_correction", True)
            group.setdefault("initial_accumulator_value", self._default_initial_accumulator_value)
            group.setdefault("initial_exp_avg_value", 0.0)
            group.pop("state_dtype", None)  # replaced by state_precision
            group.setdefault("state_precision", None)
            group.setdefault("rounding_seed", 0)
            group.setdefault("block_size", 256)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_step_dtype(group))
                if p_state and (group["capturable"] or _runs_fused(group)):
                    p_state["step"] = p_state["step"].to(p.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters and hyperparameters are validated like the constructor's.

        The caller's dict is changed (its ``params`` made a list, betas kept as stored) only
        after every check has passed."""
        where = f"param_groups[{len(self.param_groups)}]"
        differentiable = bool(self.defaults.get("differentiable"))
        params = validate_group_params(param_group, where, self.param_groups, differentiable, self.defaults)
        validate_group({**self.defaults, **param_group}, where)
        param_group["params"] = params  # checked, and a generator is read only once
        if "betas" in param_group:
            param_group["betas"] = _kept_betas(param_group["betas"])
        for key in ("rounding_seed", "block_size"):  # a NumPy integer as a Python int (the hash wraps in int64)
            if key in param_group:
                param_group[key] = int(param_group[key])
        super().add_param_group(param_group)

    # ---- state ---------------------------------------------------------------------------
    def _init_state(self, p: Tensor, group: dict[str, Any], ordinal: int | None = None) -> dict[str, Tensor]:
        """The one function that creates a parameter's state (lazily, at its first step).

        Keys, shapes and dtypes follow ``torch.optim.Adam``: ``step`` is a 0-dim tensor,
        float32 with fused, else of torch's default scalar dtype (float64 under
        ``torch.set_default_dtype(torch.float64)``), on the CPU, or on the parameter's
        device when capturable or fused; ``exp_avg`` (v) is filled with
        ``initial_exp_avg_value`` (v0, default 0) like p; ``exp_avg_sq`` (s) with
        ``initial_accumulator_value`` (s0) — both parts of a complex moment, since the
        update treats a complex parameter as its real view; ``max_exp_avg_sq`` (AMSGrad)
        starts equal to s. The moments have p's dtype, or float32 with
        ``state_precision="fp32"``.

        ``state_precision="bf16"``: the moments are bfloat16 (v0 and s0 rounded to nearest);
        ``"8bit"``: ``exp_avg``/``exp_avg_sq`` are uint8 codes shaped like p and
        ``exp_avg_absmax``/``exp_avg_sq_absmax`` float32 scales, one per block of
        ``block_size`` elements of p's memory order (of its local shard for a DTensor).
        With either, or ``stochastic_rounding``, ``rounding_seed`` holds the parameter's own
        seed (a 0-dim int64 CPU tensor): ``reference.parameter_seed(group seed, ordinal)``,
        the ordinal being p's position in the state_dict's numbering.
        """
        state = self.state[p]
        on_device = group["capturable"] or _runs_fused(group)
        precision = group["state_precision"]
        state["step"] = torch.zeros((), dtype=_step_dtype(group), device=p.device if on_device else "cpu")
        for key, value, signed in (
            ("exp_avg", group["initial_exp_avg_value"], True),
            ("exp_avg_sq", group["initial_accumulator_value"], False),
        ):
            if precision in lowp.LOW_PRECISIONS:
                state[key], absmax = lowp.constant_state(p, value, precision, group["block_size"], signed)
                if absmax is not None:
                    state[key + "_absmax"] = absmax
                continue
            moment = state[key] = torch.empty_like(
                p, dtype=_moment_dtype(group, p), memory_format=torch.preserve_format
            )
            (torch.view_as_real(moment) if moment.is_complex() else moment).fill_(value)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone(memory_format=torch.preserve_format)
        if _needs_seed(group):
            state[_SEED] = self._new_seed(p, group, ordinal)
        return state

    def _ordinals(self) -> dict[int, int]:
        """id(p) -> p's position in the state_dict numbering (across groups, in order)."""
        return {id(q): i for i, q in enumerate(q for g in self.param_groups for q in g["params"])}

    def _new_seed(self, p: Tensor, group: dict[str, Any], ordinal: int | None = None) -> Tensor:
        if ordinal is None:
            ordinal = self._ordinals()[id(p)]
        return torch.tensor(lowp.parameter_seed(group["rounding_seed"], ordinal), dtype=torch.int64)

    def _gather(
        self, group: dict[str, Any], index: int
    ) -> tuple[tuple[list[Any], ...], list[Tensor], lowp.LowPrecision | None, FlatState | None]:
        """The group's parameters that have a gradient, their gradients and their state, as
        parallel lists; the parameters whose state this call created (their first step); the
        group's :class:`~adamlab.optim.precision.LowPrecision` record (None: plain state); and
        its :class:`~adamlab.optim.flat_state.FlatState` where the state tensors are that
        record's tensors (checked now, by address), else None. A state stored in another
        precision than the group's is refused before any state is created
        (:func:`_check_stored_precision`): a refused step changes nothing.

        Plain code, run every step; the per-parameter work is C-level ``map`` calls. ``index``:
        the group's position in ``param_groups``, where its flat state's record is kept."""
        params = group["params"]
        grads = list(map(_grad, params))
        if all(map(_is_not, grads, repeat(None))):
            params = list(params)
        else:
            has_grad = list(map(_is_not, grads, repeat(None)))
            params, grads = list(compress(params, has_grad)), list(compress(grads, has_grad))
        if any(map(_is_sparse, grads)):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        states = list(map(self.state.__getitem__, params))  # a defaultdict: {} where new
        new = [] if all(states) else [p for p, s in zip(params, states) if not s]
        # where the group's state was laid out flat (flat_state): a storage freed under it is
        # refused here, before anything changes. A compiled step reads the state as it is.
        record = None if torch.compiler.is_compiling() else self._flat_states.get(index)
        usable = record is not None and record.check(index)
        if record is not None and usable is None:
            del self._flat_states[index]
        flat = None
        if new:
            _check_stored_precision(group, params, states)
            if len(new) == len(params) and _flat_fits(group):  # the whole group's first step
                flat = self._new_flat_state(index, group, params, states, initial=True)
            if flat is None:
                if record is not None:
                    record.usable = False
                ordinals = self._ordinals() if _needs_seed(group) else {}
                for p in new:
                    self._init_state(p, group, ordinals.get(id(p)))
        tensors = _state_lists(group, params, grads, states)
        if not new:
            if usable and len(params) == len(record.numels):  # (some without a gradient: not this step)
                if _flat_fits(group) and record.holds(*tensors[2:]):
                    flat = record
                else:  # an entry replaced or moved: the general path from now on
                    record.usable = False
            if flat is None or flat.state_dtype in _LOW_DTYPES:
                _check_stored_precision(group, params, states)
        low_precision = self._low_precision(group, params, states) if _needs_seed(group) and params else None
        return tensors, new, low_precision, flat

    def _lay_out_flat(self) -> None:
        """Copy the state of every group with ``fused=True`` into one storage per kind
        (:mod:`adamlab.optim.flat_state`), where every parameter has a state and it fits; for
        a state this optimizer just made (loaded, or initialized from batches), which no
        caller holds yet."""
        for index, group in enumerate(self.param_groups):
            states = [self.state.get(p) for p in group["params"]]
            if _flat_fits(group) and all(states):
                self._new_flat_state(index, group, group["params"], states, initial=False)

    def _new_flat_state(
        self, index: int, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Any]], *, initial: bool
    ) -> FlatState | None:
        """Lay the state of a group with ``fused=True`` out flat (new, or the loaded one copied
        in), keeping the record; None where it does not fit (nothing changed)."""
        if torch.compiler.is_compiling():  # a compiled step keeps plain tensors
            return None
        flat = flat_state.build(
            params,
            states,
            moment_dtype=torch.float32 if group["state_precision"] == "fp32" else None,
            amsgrad=group["amsgrad"],
            initial=(group["initial_exp_avg_value"], group["initial_accumulator_value"]) if initial else None,
        )
        if flat is not None:
            self._flat_states[index] = flat
        return flat

    def _low_precision(
        self, group: dict[str, Any], params: list[Tensor], states: list[dict[str, Any]]
    ) -> lowp.LowPrecision:
        """The record an implementation needs for a group with low-precision state or
        stochastic rounding (:func:`_needs_seed`), for its parameters that have a gradient."""
        precision = group["state_precision"]
        if not all(
            map(operator.contains, states, repeat(_SEED))
        ):  # stochastic_rounding turned on later, a torch checkpoint
            ordinals = self._ordinals()
            for p, state in zip(params, states):
                if _SEED not in state:
                    state[_SEED] = self._new_seed(p, group, ordinals[id(p)])
        eight = precision == "8bit"
        return lowp.LowPrecision(
            precision=precision if precision in lowp.LOW_PRECISIONS else None,
            block_size=group["block_size"],
            stochastic_rounding=group["stochastic_rounding"],
            seeds=list(map(int, map(_seed, states))),
            exp_avg_absmax=list(map(_v_absmax, states)) if eight else [],
            exp_avg_sq_absmax=list(map(_s_absmax, states)) if eight else [],
        )

    # ---- the step ------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step (optionally re-evaluating ``closure``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # as torch: autograd records the update only with differentiable=True
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            for index, group in enumerate(self.param_groups):
                tensors, new, low_precision, flat = self._gather(group, index)
                try:
                    self._step_group(group, tensors, new, low_precision, flat)
                except BaseException:
                    # a group that cannot step (fused=True on meta tensors, ...) keeps no state
                    # created for it that never stepped: those parameters are as if this step
                    # never reached them. A parameter the implementation already updated
                    # before failing (the loop goes one by one) keeps its state.
                    for p in new:
                        if not _has_stepped(self.state.get(p)):
                            self.state.pop(p, None)
                    raise
        return loss

    def _step_group(
        self,
        group: dict[str, Any],
        tensors: tuple[Any, ...],
        new: list[Tensor],
        low_precision: lowp.LowPrecision | None = None,
        flat: FlatState | None = None,
    ) -> None:
        """One step of one group over its gathered tensors: pick the implementation, call it."""
        if not tensors[0]:
            return
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        differentiable = group["differentiable"]
        if isinstance(lr, Tensor):
            if lr.dim():  # a one-element lr of any shape is a scalar (torch's _to_scalar)
                lr = lr.squeeze()
            if not group["capturable"] and not differentiable:
                lr = lr.item()  # a host-side scalar, as torch's foreach path uses
        if not differentiable:
            # tensor betas are kept as given and read at every step, so writing into them
            # (a schedule) takes effect; differentiable=True keeps them in the graph
            if isinstance(beta1, Tensor):
                beta1 = beta1.item()
            if isinstance(beta2, Tensor):  # apart: a scheduler may have replaced only β1
                beta2 = beta2.item()
        implementation = choose(
            group["fused"], group["foreach"], tensors[0][0].device, differentiable, fused_by_default(group)
        )
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
            low_precision=low_precision,
            flat_state=flat,
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
    def _relaid_8bit(self, state_dict: dict[str, Any]) -> dict[int, dict[str, Tensor]]:
        """id(p) -> the 8-bit state of p re-encoded in p's memory layout, for each 8-bit state
        saved in another layout; raises ``ValueError`` (naming both layouts) where the
        re-encoding would change a decoded value (its blocks would group other elements)."""
        out: dict[int, dict[str, Tensor]] = {}
        saved_groups = state_dict["param_groups"]
        for group, saved_group in zip(self.param_groups, saved_groups):
            if group["state_precision"] != "8bit":
                continue
            block = group["block_size"]
            for p, key in zip(group["params"], saved_group["params"]):
                saved = state_dict["state"].get(key)
                if not saved or lowp.same_memory_order(saved["exp_avg"], p):
                    continue
                entry = {}
                for k, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                    values = lowp.decode(saved[k].to(p.device), saved[k + "_absmax"].to(p.device), block, signed)
                    codes = lowp.empty_like_layout(p, torch.uint8)
                    absmax = torch.empty(lowp.block_count(p.numel(), block), dtype=torch.float32, device=p.device)
                    mine = lowp.empty_like_layout(p, torch.float32).copy_(values)
                    lowp.encode_(codes, absmax, mine, block, lowp.STREAM_V if signed else lowp.STREAM_S, None)
                    if not torch.equal(lowp.decode(codes, absmax, block, signed), mine):
                        raise ValueError(
                            f"state_dict entry {k!r} for parameter {key}: its 8-bit codes were saved from a "
                            f"parameter of layout {_layout(saved[k])}, this parameter's layout is {_layout(p)}; the "
                            f"blocks of {block} run over memory order, and re-encoding them in this layout would "
                            "change the values. Load into a parameter of the saved layout (p.to(memory_format=...)), "
                            "or "
                            "convert the state_dict with adamlab.convert_state_dict(state_dict, 'fp32') first"
                        )
                    entry[k], entry[k + "_absmax"] = codes, absmax
                out[id(p)] = entry
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict (from adamlab or ``torch.optim.Adam``), checking it all first.

        Everything is checked by :func:`adamlab.validation.validate_state_dict` before
        anything is changed (structure, group and parameter counts, every group's
        hyperparameters by the constructor's rules, each state's keys, a step that is a
        count, finite moments shaped like their parameter, second moments >= 0): the first
        problem raises ``ValueError`` naming the group and parameter; nothing is half-loaded. A
        state stored in another ``state_precision`` (or 8-bit ``block_size``) is refused, naming
        both and :func:`adamlab.convert_state_dict`, which converts it (None and ``"fp32"``
        are both plain floating state and load into each other, recast). Unlike
        ``torch.optim.Optimizer``, the loaded state never aliases the tensors of the
        ``state_dict`` passed in (stepping does not write into the caller's dict).

        The loaded moments take the parameter's memory layout (a checkpoint saved from a
        channels_last parameter loads into a contiguous one and back): bf16 moments are copied
        (lossless); 8-bit codes, whose blocks run over memory order, are decoded in the saved
        order and re-encoded in the parameter's, which is accepted only where it is exact
        (every decoded value unchanged), else refused with ``ValueError`` naming both layouts.
        """
        validate_state_dict(self, state_dict, keep=_RUN_KEYS, required=_STATE_KEYS)
        relaid = self._relaid_8bit(state_dict)  # may refuse: before anything changes
        ours = [{k: group[k] for k in _RUN_KEYS + _KEPT_IF_MISSING} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, keep, saved_group in zip(self.param_groups, ours, state_dict["param_groups"]):
            for k in _RUN_KEYS:  # this optimizer's, whatever the checkpoint says
                group[k] = keep[k]
            for k in _KEPT_IF_MISSING:  # the checkpoint's; one without them (torch.optim.Adam's) keeps ours
                if k not in saved_group:
                    group[k] = keep[k]
            for p, key in zip(group["params"], saved_group["params"]):
                state, saved = self.state.get(p), state_dict["state"].get(key)
                if not state or saved is None:
                    continue
                step = state["step"]
                if group["capturable"] or _runs_fused(group):  # as torch: float32 on the parameter's device
                    state["step"] = step.to(device=p.device, dtype=torch.float32)
                else:  # as torch, a loaded step keeps its dtype (a count in an integer dtype becomes a float)
                    state["step"] = step.to(
                        device="cpu", dtype=step.dtype if step.is_floating_point() else _step_dtype(group)
                    )
                if group["state_precision"] is not None:
                    # torch cast every floating tensor to p's dtype: recast from the saved values,
                    # not the cast ones, by the rule that created them (a complex p keeps complex
                    # moments; 8-bit codes are not floating and kept their dtype)
                    for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                        if k in saved:  # in p's layout (a copy: exact)
                            state[k] = lowp.empty_like_layout(p, _moment_dtype(group, p)).copy_(saved[k])
                    for k in _ABSMAX_KEYS:
                        if k in saved:
                            state[k] = saved[k].to(device=local_tensor(p).device, dtype=torch.float32)
                    state.update(relaid.get(id(p), {}))
                if _SEED in saved:  # torch moved it to p's device
                    state[_SEED] = saved[_SEED].to(device="cpu", dtype=torch.int64)
                for k, value in state.items():
                    # torch's .to() returns the caller's own tensor when nothing changes: stepping
                    # would then write into the state_dict the caller passed in. Own our state.
                    if torch.is_tensor(value) and value is saved.get(k):
                        state[k] = value.clone()
        self._lay_out_flat()


def _state_lists(
    group: dict[str, Any], params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]]
) -> tuple[list[Any], ...]:
    """The parallel lists every implementation takes: θ, g, v, s, max s (with amsgrad, else
    empty) and the step counts."""
    maxes = list(map(_max_exp_avg_sq, states)) if group["amsgrad"] else []
    return params, grads, list(map(_exp_avg, states)), list(map(_exp_avg_sq, states)), maxes, list(map(_step, states))


def _flat_fits(group: dict[str, Any]) -> bool:
    """Whether the group's state is laid out flat (:mod:`adamlab.optim.flat_state`): it asks
    for the fused kernel, with plain state (no seeds), not capturable."""
    return (
        group["fused"] is True
        and not group["capturable"]
        and group["state_precision"] in (None, "fp32")
        and not group["stochastic_rounding"]
    )


def _layout(t: Tensor) -> str:
    """A tensor's memory layout in words: its shape and strides."""
    return f"shape {tuple(t.shape)} strides {t.stride()}"


def _has_stepped(state: dict[str, Any] | None) -> bool:
    """Whether a state's step count has left 0 (False where it cannot be read, e.g. on meta)."""
    try:
        return bool(state) and float(state["step"]) != 0.0
    except (RuntimeError, NotImplementedError, KeyError, TypeError):
        return False


def _moment_dtype(group: dict[str, Any], p: Tensor) -> torch.dtype:
    """The dtype of p's moments: bfloat16 (``"bf16"``), uint8 codes (``"8bit"``), float32
    (``"fp32"``) or p's (None); a complex p keeps its complex dtype (the update treats it as
    its real view; low precisions refuse it)."""
    dtype = lowp.STORED_DTYPES.get(group["state_precision"], p.dtype)
    return p.dtype if p.is_complex() else dtype


def _check_stored_precision(group: dict[str, Any], params: list[Tensor], states: list[dict[str, Any]]) -> None:
    """Refuse (``ValueError``, naming the parameter, its moments' dtype and the conversion) a
    state whose moments are not stored as the group's ``state_precision`` stores them
    (:func:`_moment_dtype`): the precision changed after the first step, both ways (a bf16
    state under None would otherwise run bfloat16 math). Under None/"fp32" only a moment in
    bfloat16 or uint8 that the parameter's dtype does not explain is such a state; other
    mismatches are left to the implementations' own checks.

    This runs every step, so it reads as little as it can: ``exp_avg`` alone (every moment
    of a state is created, converted and loaded in one precision together; a single replaced
    tensor is a corrupted state, which the implementations refuse), by C-level maps, and the
    expected dtypes only where a plain group holds a bfloat16 or uint8 moment at all."""
    if not all(states):  # the parameters without state yet have nothing to check
        params = list(compress(params, states))
        states = list(filter(None, states))
        if not states:
            return
    precision = group["state_precision"]
    low = precision in lowp.LOW_PRECISIONS
    got = list(map(_dtype, map(_exp_avg, states)))
    if not low and _LOW_DTYPES.isdisjoint(got):
        return
    want = list(map(_dtype, params))  # _moment_dtype for every parameter, by C-level maps
    if precision is not None:
        stored = lowp.STORED_DTYPES[precision]
        want = [d if d.is_complex else stored for d in want] if any(map(_is_complex, want)) else [stored] * len(want)
    if got == want:
        return
    # a plain precision leaves other dtypes (a corrupted state) to the implementation's checks
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b and (low or a in _LOW_DTYPES)), None)
    if i is not None:
        raise ValueError(
            f"the state of a parameter of shape {tuple(params[i].shape)} stores 'exp_avg' as "
            f"{got[i]}, not as state_precision={precision!r} stores it ({want[i]}): state_precision cannot "
            f"change after the first step; convert a state_dict with "
            f"adamlab.convert_state_dict(state_dict, {precision!r}) and load it"
        )  # fmt: skip


def _needs_seed(group: dict[str, Any]) -> bool:
    """Whether the group's states hold a ``rounding_seed``: low-precision moments, or
    stochastic rounding of bfloat16 parameters."""
    return group["state_precision"] in lowp.LOW_PRECISIONS or bool(group["stochastic_rounding"])


def _runs_fused(group: dict[str, Any]) -> bool:
    """Whether the group asks for a fused kernel, explicitly or by default (its step counts
    then live as the kernel wants them: float32, on the parameter's device)."""
    return bool(group["fused"]) or fused_by_default(group)


def _step_dtype(group: dict[str, Any]) -> torch.dtype:
    """The dtype of a new step count, as torch's: float32 with fused, else the default scalar dtype."""
    return torch.float32 if _runs_fused(group) or torch.get_default_dtype() != torch.float64 else torch.float64


def _kept_betas(betas: Any) -> tuple[Any, Any]:
    """Betas as stored in a group (validated already): numbers as floats, tensors as given
    (a 1-element tensor of any shape as a 0-dim view, torch's ``_to_scalar``), so that
    writing into a tensor beta later changes the update, as in torch."""
    return tuple((b.squeeze() if b.dim() else b) if isinstance(b, Tensor) else float(b) for b in betas)


def _nonfinite(grads: list[Tensor]) -> Tensor:
    """A 0-dim float32 tensor: 1.0 if any gradient holds inf or NaN, else 0.0 (no host sync)."""
    flags = [torch.logical_not(torch.isfinite(g).all()) for g in grads]
    return torch.stack([f.to(flags[0].device) for f in flags]).any().float()


_ARGS = """
    Args:
        params: iterable of parameters or of dicts defining parameter groups.
        lr: learning rate η, a float or a 0-dim tensor (default: {lr}).
        betas: (β1, β2), decay rates of v and s (default: (0.9, 0.999)): two numbers,
            or two 1-element tensors, kept as given and read at every step (writing into
            them changes the update; with ``foreach=True`` they need ``capturable=True``).
        eps: ε, added *after* the square root: η·v̂/(√ŝ + ε) (default: {eps}).
        weight_decay: λ (default: 0.0). Added to the gradient (L2) unless
            ``decoupled_weight_decay=True``, which shrinks θ by ηλθ first (AdamW).
        amsgrad: keep the running max of the raw s and bias-correct it (PyTorch's form)
            (default: False).
        foreach: ``None`` (default) or ``True`` uses the multi-tensor implementation,
            ``False`` the single-tensor loop (``None`` with low-precision state: see ``fused``).
        maximize: ascend the objective instead of descending it (default: False).
        capturable: keep the step count on the parameter's device and compute every
            per-step scalar there (no host synchronization; needed for CUDA graphs).
            Accepted on the CPU too, where torch refuses it: the same arithmetic then
            runs, and is tested, on every machine (default: False).
        differentiable: run the update through autograd-tracked operations (the
            single-tensor implementation, with ``torch.optim.Adam``'s rules: not with
            ``fused`` or ``foreach=True``), so that gradients flow through a step to the
            initial parameters, the state and a tensor ``lr``/betas (meta-learning,
            hypergradients). Off by default: the step then runs under ``no_grad``
            (default: False).
        fused: ``True`` runs one fused kernel per step (C++ on CPU, Triton on CUDA). Where
            this machine lacks the kernel (no compiled library, no Triton), the first step
            warns once, saying why, and runs the foreach implementation (default: None).
            Unset (None, with ``foreach`` unset too) means the fused kernel for low-precision
            state: a group with ``state_precision="bf16"``/``"8bit"`` or
            ``stochastic_rounding`` runs the fused kernel where this machine has it (foreach
            otherwise, without a warning); ``fused=False`` or ``foreach=True`` keep the
            readable path, which is several times slower (docs/precision.md).
        decoupled_weight_decay: see ``weight_decay`` (default: False).
        bias_correction: ``True`` (default: divide v and s by 1-β^t, t from 1), ``False``,
            or ``"recursive"`` (the state holds the debiased v̂ and ŝ; see
            :func:`adamlab.reference.second_moment`). ``"recursive"`` runs on the foreach
            and single-tensor paths only: with ``fused=True`` it raises ``ValueError``.
        initial_accumulator_value: s0, the value s starts from (default: {s0}).
        initial_exp_avg_value: v0, the value v starts from (default: 0.0; optax's and
            TF-Addons' Yogi start both moments at 1e-6). A finite number >= 0.
        state_precision: how v and s are stored (default: None). ``None``: in the
            parameter's dtype; ``"fp32"``: float32, the math in float32 too (for bf16/fp16
            parameters); ``"bf16"``: bfloat16 (4 B per parameter), rounded stochastically at
            every step so that the stored moments stay unbiased; ``"8bit"``: 8-bit codes in
            blocks of ``block_size`` elements, each block scaled by its absmax (2 + 8/B B per
            parameter: 2.03 B at B = 256), a signed map for v and an unsigned one for s. With
            ``"bf16"``/``"8bit"`` the update runs in float32 on the decoded moments, for
            float32, bfloat16 and float16 parameters (float64 and complex ones are refused),
            not with ``differentiable=True``; ``"8bit"`` not with ``amsgrad=True``. The
            formats: :mod:`adamlab.reference` and docs/precision.md.
        stochastic_rounding: write bfloat16 *parameters* back with stochastic rounding
            (the update in float32; no fp32 master copy needed): a change smaller than
            half a bfloat16 ulp still moves the parameter on average. Parameters of other
            dtypes are unaffected (default: False).
        rounding_seed: seed of the counter-based random bits of stochastic rounding,
            0 <= seed < 2**32 (default: 0). Parameter i (state_dict numbering) draws with
            ``reference.parameter_seed(rounding_seed, i)``, kept in its state as
            ``rounding_seed``: the same on every DDP rank, and a resumed run continues bit
            for bit.
        block_size: elements per 8-bit block, a power of two from 16 to 8192 (default:
            256); blocks run over each parameter's memory order (its local shard's under
            FSDP2) and never straddle two parameters.
        skip_nonfinite: skip the whole step of a group (parameters, state and step
            count unchanged) when any gradient holds inf or NaN (default: False: like
            torch, non-finite gradients then propagate into the parameters).

    Conventions: ε is added after the square root; t counts steps from 1; with bias
    correction the update is η·(v/(1-β1^t))/(√(s/(1-β2^t)) + ε).

    State per parameter (as ``torch.optim.Adam``): ``step`` (0-dim tensor, float32, or
    float64 under a float64 default dtype unless fused; a loaded step keeps its dtype),
    ``exp_avg`` (v), ``exp_avg_sq`` (s), ``max_exp_avg_sq`` (with amsgrad); with
    ``state_precision="8bit"`` v and s are uint8 codes and ``exp_avg_absmax``,
    ``exp_avg_sq_absmax`` their float32 block scales; with ``"bf16"``/``"8bit"`` or
    ``stochastic_rounding``, ``rounding_seed`` (0-dim int64). A checkpoint loads only into
    the same precision: :func:`adamlab.convert_state_dict` converts between precisions and
    to and from ``torch.optim.Adam``'s fp32 state.
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
        state_precision: str | None = None,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
        block_size: int = 256,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value, initial_exp_avg_value=initial_exp_avg_value,
            state_precision=state_precision, stochastic_rounding=stochastic_rounding,
            rounding_seed=rounding_seed, block_size=block_size, skip_nonfinite=skip_nonfinite,
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
        state_precision: str | None = None,
        stochastic_rounding: bool = False,
        rounding_seed: int = 0,
        block_size: int = 256,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, bias_correction=bias_correction,
            initial_accumulator_value=initial_accumulator_value, initial_exp_avg_value=initial_exp_avg_value,
            state_precision=state_precision, stochastic_rounding=stochastic_rounding,
            rounding_seed=rounding_seed, block_size=block_size, skip_nonfinite=skip_nonfinite,
        )  # fmt: skip
