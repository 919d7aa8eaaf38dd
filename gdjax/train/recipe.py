"""The optimizer recipe of a run: the named optimizer, its learning-rate schedule and the
paper's divide-by-10-on-plateau rule.

The optimizer is wrapped in ``optax.inject_hyperparams`` so that its learning rate lives in the
state: the loop logs it with the step's metrics and the plateau rule rescales it without
recompiling.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from gdjax import optim
from gdjax._checks import check_finite, is_int
from gdjax.train.steps import is_injected, learning_rate_of

__all__ = [
    "AUGMENTS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Plateau",
    "current_learning_rate",
    "learning_rate_schedule",
    "make_optimizer",
    "matrices_only",
    "scale_learning_rate",
    "shared_optimizer",
    "skipped_steps",
]

OPTIMIZERS = {
    "sgd": optim.sgd,
    "momentum": optim.momentum,
    "alexnet_sgd": optim.alexnet_sgd,
    "adagrad": optim.adagrad,
    "rmsprop": optim.rmsprop,
    "adam": optim.adam,
    "adamw": optim.adamw,
    "lars": optim.lars,
    "lamb": optim.lamb,
}
SCHEDULES = ("constant", "plateau", "step", "cosine")
AUGMENTS = ("small", "alexnet", "none")
LR_SCALINGS = ("linear", "sqrt")
# The large-batch optimizers' masks, as the papers' recipes use them: LARS gives biases and
# other 1-D parameters neither weight decay nor a trust ratio (a plain momentum step), LAMB
# no weight decay.
LAYER_MASKS = {"lars": ("weight_decay_mask", "trust_ratio_mask"), "lamb": ("mask",)}


def matrices_only(params: Any) -> Any:
    """``True`` for the leaves with two or more axes (kernels), ``False`` for biases."""
    return jax.tree.map(lambda p: np.ndim(p) > 1, params)


def scaled_learning_rate(c: ml_collections.ConfigDict) -> float:
    """``optimizer.learning_rate`` scaled from ``optimizer.reference_batch_size`` to the run's
    global ``batch_size`` (times the accumulation steps): linearly (Goyal et al., 2017) or by
    the square root (You et al., 2020, for LAMB). Unchanged when the reference is 0."""
    reference = c.optimizer.reference_batch_size
    if not reference:
        return c.optimizer.learning_rate
    ratio = c.batch_size * c.optimizer.grad_accum_steps / reference
    return c.optimizer.learning_rate * (ratio if c.optimizer.lr_scaling == "linear" else ratio**0.5)


def learning_rate_schedule(
    c: ml_collections.ConfigDict, updates_per_epoch: int, total_updates: int
) -> float | optax.Schedule:
    """The run's learning rate: the scaled peak (:func:`scaled_learning_rate`), a linear
    warm-up from 0 over ``schedule.warmup_epochs``, then the schedule of ``schedule.name``
    (steps of ``step`` counted from the start of the run, cosine decaying after the warm-up).
    ``plateau`` and ``constant`` keep the peak (plateau drops it by rescaling the state)."""
    peak = scaled_learning_rate(c)
    warmup = round(c.schedule.warmup_epochs * updates_per_epoch)
    name = c.schedule.name
    if name == "cosine":
        if warmup:
            return optax.warmup_cosine_decay_schedule(
                0.0, peak, warmup, max(total_updates, warmup + 1)
            )
        return optax.cosine_decay_schedule(peak, total_updates)
    if name == "step":
        drops = {round(e * updates_per_epoch): c.schedule.factor for e in c.schedule.step_epochs}
        main: Any = optax.piecewise_constant_schedule(peak, drops)
    else:
        main = peak
    if not warmup:
        return main
    ramp = optax.linear_schedule(0.0, peak, warmup)
    after = main if callable(main) else optax.constant_schedule(main)
    # join_schedules restarts the second schedule's count at the boundary: shift it back.
    return optax.join_schedules([ramp, lambda n: after(n + warmup)], [warmup])


def _updates(c: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> tuple:
    """Optimizer updates per epoch and in all: steps divided by ``grad_accum_steps``."""
    accumulate = c.optimizer.grad_accum_steps
    return max(1, steps_per_epoch // accumulate), max(1, total_steps // accumulate)


_SHARED: collections.OrderedDict[tuple, optax.GradientTransformation] = collections.OrderedDict()


def shared_optimizer(
    c: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """:func:`make_optimizer`, the same object for configs that give the same optimizer (so
    that runs of it in one process share their compiled steps; the last eight are kept): the
    same factory, ``optimizer`` and ``schedule`` sections and scaled rate, and the same update
    counts where :func:`learning_rate_schedule` reads them (an epoch's for a warm-up or
    ``step``, all of them for ``cosine``)."""
    per_epoch, total = _updates(c, steps_per_epoch, total_steps)
    s = c.schedule
    key = (
        OPTIMIZERS[c.optimizer.name],
        json.dumps(c.optimizer.to_dict(), sort_keys=True, default=repr),
        json.dumps(s.to_dict(), sort_keys=True, default=repr),
        scaled_learning_rate(c),
        per_epoch if s.warmup_epochs or s.name == "step" else 0,
        total if s.name == "cosine" else 0,
    )
    if key in _SHARED:
        _SHARED.move_to_end(key)
    else:
        _SHARED[key] = make_optimizer(c, steps_per_epoch, total_steps)
        while len(_SHARED) > 8:
            _SHARED.popitem(last=False)
    return _SHARED[key]


def make_optimizer(
    c: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """The run's optimizer: ``inject_hyperparams`` around the named gdjax optimizer, with the
    schedule of ``config.schedule``, then the optional clipping, gradient accumulation and
    non-finite skipping of the config. Schedules count optimizer updates (steps divided by
    ``grad_accum_steps``). LARS exempts biases (1-D leaves) from weight decay and the trust
    ratio, LAMB from weight decay, as their papers' recipes do."""
    from gdjax.train.validation import optimizer_kwargs

    lr = learning_rate_schedule(c, *_updates(c, steps_per_epoch, total_steps))
    masks = {k: matrices_only for k in LAYER_MASKS.get(c.optimizer.name, ())}
    tx = optax.inject_hyperparams(OPTIMIZERS[c.optimizer.name], static_args=tuple(masks))(
        learning_rate=lr, **optimizer_kwargs(c), **masks
    )
    if c.optimizer.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(c.optimizer.grad_clip_norm), tx)
    if c.optimizer.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=c.optimizer.grad_accum_steps)
    if c.optimizer.skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
    return tx


def skipped_steps(opt_state: Any) -> int:
    """The updates ``optax.apply_if_finite`` skipped as non-finite in the whole run
    (``optimizer.skip_nonfinite``; 0 without it), on the host."""
    is_guard = lambda s: isinstance(s, optax.ApplyIfFiniteState)  # noqa: E731
    guards = [s for s in jax.tree.leaves(opt_state, is_leaf=is_guard) if is_guard(s)]
    return sum(int(np.ravel(jax.device_get(s.total_notfinite))[0]) for s in guards)


def current_learning_rate(opt_state: Any) -> float:
    """The learning rate held by the (first) ``inject_hyperparams`` state, on the host."""
    return float(np.ravel(jax.device_get(learning_rate_of(opt_state)))[0])


def scale_learning_rate(opt_state: Any, factor: float) -> Any:
    """``opt_state`` with every injected learning rate multiplied by ``factor``."""

    def scale(s: Any) -> Any:
        if not is_injected(s):
            return s
        hyperparams = dict(s.hyperparams)
        hyperparams["learning_rate"] = hyperparams["learning_rate"] * factor
        return s._replace(hyperparams=hyperparams)

    return jax.tree.map(scale, opt_state, is_leaf=is_injected)


@dataclasses.dataclass
class Plateau:
    """The paper's recipe: divide the learning rate by 10 when the test error stops improving.

    ``update(error, lr)`` after each evaluation returns the new rate, or None to keep it: an
    error that is not ``threshold`` below the best so far is a bad evaluation, and after
    ``patience`` of them the rate drops by ``factor`` (not below ``min_lr``).
    """

    factor: float
    patience: int
    threshold: float
    min_lr: float
    best: float = math.inf
    bad: int = 0

    def __post_init__(self) -> None:
        # the config's checks (schedule.*), for the Python API: factor=2 raised the rate
        if not 0 < self.factor <= 1:
            raise ValueError(f"Plateau: factor must be in (0, 1], got {self.factor!r}")
        if not is_int(self.patience) or self.patience < 1:
            raise ValueError(f"Plateau: patience must be an int >= 1, got {self.patience!r}")
        check_finite("Plateau: threshold", self.threshold)
        check_finite("Plateau: min_lr", self.min_lr)

    def update(self, error: float, lr: float) -> float | None:
        if error < self.best - self.threshold:
            self.best, self.bad = error, 0
            return None
        self.bad += 1
        if self.bad >= self.patience and lr * self.factor >= self.min_lr:
            self.bad = 0
            return lr * self.factor
        return None
