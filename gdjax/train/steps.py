r"""The training state and the pure step functions.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step(state, batch) -> metrics``
know nothing about devices: :mod:`gdjax.train.parallel` applies ``jit``, ``pmap`` or a sharded
``jit`` around them. Under ``pmap`` pass ``axis_name``: the loss is the mean over the real
(unmasked) examples of every device's batch, as on one device, and gradients and metrics are
combined with ``lax.pmean``.

The loss is softmax cross-entropy, optionally with label smoothing :math:`\epsilon` (targets
:math:`(1-\epsilon)\,\mathrm{onehot} + \epsilon / K`), plus an optional L2 penalty
:math:`\tfrac{\lambda}{2}\lVert w\rVert^2` over the kernels (for recipes that decay weights
through the loss rather than the optimizer). Metrics: loss, top-1 and top-5 error (the
paper reports both). The dropout key of step :math:`t` is ``fold_in(state.rng, t)``, so a step
is reproducible from the state alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import optax

from gdjax._checks import is_int

__all__ = [
    "TrainState",
    "cross_entropy",
    "eval_step",
    "is_injected",
    "l2_penalty",
    "learning_rate_of",
    "top_k_error",
    "train_step",
    "train_step_and_gradients",
]


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step (a pytree).

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: the model's ``params`` collection.
      model_state: the model's other collections (e.g. ``batch_stats``), ``{}`` for AlexNet.
      opt_state: the optimizer's state.
      rng: base PRNG key; step ``t`` uses ``fold_in(rng, t)``.
      apply_fn, tx: the model's ``apply`` and the optax transformation (static, not saved).
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable,
        variables: Any,
        tx: optax.GradientTransformation,
        rng: jax.Array,
    ) -> TrainState:
        """A fresh state from initialised model ``variables`` (``{"params": ..., ...}``)."""
        variables = dict(variables)
        params = variables.pop("params")
        return cls(
            step=jnp.zeros([], jnp.int32),
            params=params,
            model_state=variables,
            opt_state=jax.jit(tx.init)(params),  # one program, not one per leaf shape
            rng=rng,
            apply_fn=apply_fn,
            tx=tx,
        )


def _logits_and_labels(fn: str, logits: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    """Logits ``(..., classes)`` and integer labels of the same leading shape, as arrays, or a
    ValueError naming both shapes (optax's and jnp's were a broadcasting error, or a silent
    broadcast)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: labels must have the shape of logits without its last (class) axis, got "
            f"logits {logits.shape} and labels {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer class indices, got dtype {labels.dtype}")
    return logits, labels


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy (computed in float32) with optional label smoothing.

    ``logits`` is ``(..., classes)``; ``labels`` holds integer class indices of shape ``(...)``.
    """
    logits, labels = _logits_and_labels("cross_entropy", logits, labels)
    logits = logits.astype(jnp.float32)
    if label_smoothing:
        k = logits.shape[-1]
        targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def top_k_error(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 where ``labels`` is not among the ``k`` top-ranked classes, else 0.0.

    Classes are ranked by logit, ties broken by class index (as ``lax.top_k`` and a stable
    sort do), so a constant or tied prediction is right for at most ``k`` of the classes, not
    all of them. A row with a NaN logit (a diverged model) is always an error. ``logits`` is
    ``(N, classes)``, ``labels`` ``(N,)`` integers, ``k >= 1`` (above the class count, every
    row is right unless it holds a NaN). A label outside ``[0, classes)`` is always an error.
    """
    logits, labels = _logits_and_labels("top_k_error", logits, labels)
    if logits.ndim != 2:
        raise ValueError(f"top_k_error: logits must be (N, classes), got shape {logits.shape}")
    if not is_int(k) or k < 1:
        raise ValueError(f"top_k_error: k must be an int >= 1, got {k!r}")
    num_classes = logits.shape[-1]
    k = min(k, num_classes)
    # A label outside [0, classes) matches no class: wrong, never (as the gather's fill made
    # it) a label logit of NaN that no class ranks ahead of, i.e. right.
    outside = (labels < 0) | (labels >= num_classes)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1, mode="clip")
    classes = jnp.arange(num_classes)[None, :]
    ahead = (logits > label_logit) | ((logits == label_logit) & (classes < labels[:, None]))
    rank = jnp.sum(ahead, axis=-1)
    return ((rank >= k) | jnp.any(jnp.isnan(logits), axis=-1) | outside).astype(jnp.float32)


def l2_penalty(params: Any) -> jax.Array:
    r""":math:`\tfrac12 \sum w^2` over the weight matrices and kernels (biases excluded)."""
    leaves = [x for x in jax.tree.leaves(params) if x.ndim > 1]
    return 0.5 * sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves), jnp.zeros([]))


def _check_batch(fn: str, batch: Any) -> None:
    """A mapping with ``image`` and ``label`` (a misspelt key was a bare KeyError)."""
    if not hasattr(batch, "keys") or not {"image", "label"} <= set(batch.keys()):
        got = f"keys {sorted(batch.keys())}" if hasattr(batch, "keys") else type(batch).__name__
        raise ValueError(
            f"{fn}: batch must be a mapping with 'image' and 'label' (and an optional 'mask'), "
            f"got {got}"
        )


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    l2: float = 0.0,
    axis_name: str | None = None,
    **extra_args: Any,
) -> tuple[TrainState, dict[str, jax.Array]]:
    r"""One optimizer step on ``batch = {"image": (B, H, W, C), "label": (B,)}``.

    An optional ``batch["mask"]`` (1 for real examples, 0 for unreadable ones) leaves the
    masked examples out of the loss and the metrics: the loss is
    :math:`\sum_i m_i \ell_i / \sum_i m_i` (0 when every example is masked), over the whole
    batch under ``pmap`` too (each device's sum is divided by the whole batch's count).

    ``extra_args`` go to ``tx.update`` (e.g. ``value=`` for ``optax.contrib.reduce_on_plateau``),
    which flax's ``TrainState.apply_gradients`` would drop. Returns the new state and the
    batch's metrics, measured before the update: ``loss`` (cross-entropy plus penalty), top-1
    ``error`` and ``top5_error`` (means over the real examples), ``count`` (the number of real
    examples) and, for an ``inject_hyperparams`` optimizer, ``learning_rate``.
    """
    state, metrics, _ = train_step_and_gradients(
        state,
        batch,
        label_smoothing=label_smoothing,
        l2=l2,
        axis_name=axis_name,
        **extra_args,
    )
    return state, metrics


def train_step_and_gradients(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    label_smoothing: float = 0.0,
    l2: float = 0.0,
    axis_name: str | None = None,
    **extra_args: Any,
) -> tuple[TrainState, dict[str, jax.Array], Any]:
    """:func:`train_step`, also returning the gradients the optimizer was given (after the
    ``pmean`` under ``pmap``).

    A compiled step that returns them into a donated buffer of the parameters' shapes has XLA
    write the backward's weight gradients there, in memory that stays mapped between steps,
    instead of in the step's temporaries, which XLA's CPU runtime allocates afresh on every
    call (:class:`~gdjax.train.parallel.Parallel`'s ``gradient_buffer``).
    """
    _check_batch("train_step", batch)
    dropout_key = jax.random.fold_in(state.rng, state.step)
    mask = batch.get("mask")
    mask = jnp.ones(batch["label"].shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = jnp.sum(mask)
    if axis_name is None:
        per = jnp.maximum(count, 1.0)
    else:  # pmean below divides by the number of devices: the count per device, on average
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        count = jax.lax.psum(count, axis_name)
        per = jnp.maximum(count, 1.0) / jax.lax.psum(1.0, axis_name)

    def loss_fn(params):
        variables = {"params": params, **state.model_state}
        logits = state.apply_fn(
            variables, batch["image"], train=True, rngs={"dropout": dropout_key}
        )
        losses = cross_entropy(logits, batch["label"], label_smoothing)
        loss = jnp.sum(losses * mask) / per
        if l2:
            loss = loss + l2 * l2_penalty(params)
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss,
        "error": jnp.sum(top_k_error(logits, batch["label"], 1) * mask) / per,
        "top5_error": jnp.sum(top_k_error(logits, batch["label"], 5) * mask) / per,
    }
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    metrics["count"] = count
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra_args)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    lr = learning_rate_of(opt_state)
    if lr is not None:  # read with the other metrics: no extra device round trip to log it
        metrics["learning_rate"] = jnp.ravel(lr)[0].astype(jnp.float32)
    return new_state, metrics, grads


def is_injected(x: Any) -> bool:
    """Whether ``x`` is an ``optax.inject_hyperparams`` state."""
    return hasattr(x, "hyperparams") and hasattr(x, "inner_state")


def learning_rate_of(opt_state: Any) -> jax.Array | None:
    """The learning rate an ``optax.inject_hyperparams`` state holds (its first), else None."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_injected) if is_injected(s)]
    if not found or "learning_rate" not in found[0].hyperparams:
        return None
    return found[0].hyperparams["learning_rate"]


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """Summed loss and errors without dropout, and the number of examples counted.

    Images of shape ``(B, V, H, W, C)`` are ``V`` views of each example (the paper's ten
    crops): their softmax outputs are averaged. An optional ``batch["mask"]`` (1 for real
    examples, 0 for padding) lets a last, padded batch keep the compiled shape. Divide the
    sums by ``count`` (after adding them up over batches) for means.
    """
    _check_batch("eval_step", batch)
    variables = {"params": state.params, **state.model_state}
    images, labels = batch["image"], batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
    if images.ndim == 5:
        b, v = images.shape[:2]
        logits = state.apply_fn(variables, images.reshape(b * v, *images.shape[2:]))
        probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(b, v, -1).mean(axis=1)
        logits = jnp.log(probs)
        losses = -jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    else:
        logits = state.apply_fn(variables, images)
        losses = cross_entropy(logits, labels)
    sums = {
        "loss": jnp.sum(losses * mask),
        "error": jnp.sum(top_k_error(logits, labels, 1) * mask),
        "top5_error": jnp.sum(top_k_error(logits, labels, 5) * mask),
        "count": jnp.sum(mask),
    }
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
