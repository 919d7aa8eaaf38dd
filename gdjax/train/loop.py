"""The training loop: ``train_and_evaluate(config, workdir)``, which the ``gdjax`` command calls.

One run reads the dataset named by ``config.dataset``, builds the model, optimizer and
learning-rate recipe from the config, and trains with the parallel mode of
``config.parallel``. It writes to ``workdir``:

* ``checkpoints/`` — orbax checkpoints (state, data-iterator position, loop metadata) every
  ``checkpoint_every_steps`` and at the end; a run started again with the same ``workdir``
  resumes where it stopped and, on the CPU, ends bit-identical to an uninterrupted run.
  SIGTERM saves a checkpoint and exits (status 143).
* ``metrics.jsonl`` and ``tensorboard/`` — training metrics every ``log_every_steps``, test
  metrics every ``eval_every_epochs``; ``curves.png`` at the end.
* ``config.json`` — the config the run used.

A non-finite training loss stops the run with :class:`FloatingPointError` naming the step (the
last checkpoint, written before it, stays intact) unless ``optimizer.skip_nonfinite`` is set,
in which case ``optax.apply_if_finite`` skips such steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gdjax import data, optim
from gdjax.models import AlexNet
from gdjax.train.checkpoint import Checkpointer
from gdjax.train.metrics_writer import MetricsWriter, plot_curves
from gdjax.train.parallel import Parallel
from gdjax.train.steps import TrainState, _is_injected, learning_rate_of

__all__ = [
    "OPTIMIZERS",
    "evaluate",
    "evaluate_checkpoint",
    "make_optimizer",
    "train_and_evaluate",
]

OPTIMIZERS = {
    "sgd": optim.sgd,
    "momentum": optim.momentum,
    "alexnet_sgd": optim.alexnet_sgd,
    "adagrad": optim.adagrad,
    "rmsprop": optim.rmsprop,
    "adam": optim.adam,
    "adamw": optim.adamw,
}
SCHEDULES = ("constant", "plateau", "step", "cosine")
AUGMENTS = ("small", "alexnet", "none")


def _fail(field: str, value: Any, expected: str) -> None:
    raise ValueError(f"config.{field} must be {expected}, got {value!r}")


def _check_config(c: ml_collections.ConfigDict) -> None:
    if c.optimizer.name not in OPTIMIZERS:
        _fail("optimizer.name", c.optimizer.name, f"one of {sorted(OPTIMIZERS)}")
    if c.schedule.name not in SCHEDULES:
        _fail("schedule.name", c.schedule.name, f"one of {SCHEDULES}")
    if c.input.augment not in AUGMENTS:
        _fail("input.augment", c.input.augment, f"one of {AUGMENTS}")
    if c.batch_size < 1:
        _fail("batch_size", c.batch_size, "a positive int")
    if c.num_epochs <= 0 and c.num_steps <= 0:
        _fail("num_epochs", c.num_epochs, "> 0 (or num_steps > 0)")
    if c.optimizer.grad_accum_steps < 1:
        _fail("optimizer.grad_accum_steps", c.optimizer.grad_accum_steps, ">= 1")
    for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if c[field] < 1:
            _fail(field, c[field], ">= 1")
    if c.eval_every_epochs <= 0:
        _fail("eval_every_epochs", c.eval_every_epochs, "> 0")


# ---------------------------------------------------------------------------------------------
# Optimizer and learning-rate recipe


def _optimizer_kwargs(c: ml_collections.ConfigDict) -> dict[str, Any]:
    factory = OPTIMIZERS[c.optimizer.name]
    accepted = set(inspect.signature(factory).parameters) - {"learning_rate"}
    given = {k: v for k, v in c.optimizer.hparams.items() if v is not None}
    wrong = sorted(set(given) - accepted)
    if wrong:
        raise ValueError(
            f"config.optimizer.hparams {wrong} do not apply to {c.optimizer.name!r}, which "
            f"takes {sorted(accepted)}"
        )
    return given


def make_optimizer(
    c: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
    """The run's optimizer: ``inject_hyperparams`` around the named gdjax optimizer (so the
    learning rate is visible, and adjustable by the plateau recipe), then the optional
    clipping, gradient accumulation and non-finite skipping of the config."""
    lr = c.optimizer.learning_rate
    name = c.schedule.name
    updates_per_epoch = max(1, steps_per_epoch // c.optimizer.grad_accum_steps)
    total_updates = max(1, total_steps // c.optimizer.grad_accum_steps)
    if name == "step":
        drops = {round(e * updates_per_epoch): c.schedule.factor for e in c.schedule.step_epochs}
        lr = optax.piecewise_constant_schedule(lr, drops)
    elif name == "cosine":
        warmup = round(c.schedule.warmup_epochs * updates_per_epoch)
        lr = (
            optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_updates, warmup + 1))
            if warmup
            else optax.cosine_decay_schedule(lr, total_updates)
        )
    tx = optax.inject_hyperparams(OPTIMIZERS[c.optimizer.name])(
        learning_rate=lr, **_optimizer_kwargs(c)
    )
    if c.optimizer.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(c.optimizer.grad_clip_norm), tx)
    if c.optimizer.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=c.optimizer.grad_accum_steps)
    if c.optimizer.skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
    return tx


def _learning_rate(opt_state: Any) -> float:
    """The current learning rate held by the ``inject_hyperparams`` state."""
    return float(np.ravel(jax.device_get(learning_rate_of(opt_state)))[0])


def _scale_learning_rate(opt_state: Any, factor: float) -> Any:
    def scale(s: Any) -> Any:
        if not _is_injected(s):
            return s
        hyperparams = dict(s.hyperparams)
        hyperparams["learning_rate"] = hyperparams["learning_rate"] * factor
        return s._replace(hyperparams=hyperparams)

    return jax.tree.map(scale, opt_state, is_leaf=_is_injected)


@dataclasses.dataclass
class _Plateau:
    """The paper's recipe: divide the learning rate by 10 when the test error stops improving."""

    factor: float
    patience: int
    threshold: float
    min_lr: float
    best: float = math.inf
    bad: int = 0

    def update(self, error: float, lr: float) -> float | None:
        """The new learning rate after an evaluation, or None to keep it."""
        if error < self.best - self.threshold:
            self.best, self.bad = error, 0
            return None
        self.bad += 1
        if self.bad >= self.patience and lr * self.factor >= self.min_lr:
            self.bad = 0
            return lr * self.factor
        return None


# ---------------------------------------------------------------------------------------------
# Data


def _transforms(c: ml_collections.ConfigDict, stats: data.DatasetStats) -> tuple[Any, Any]:
    if c.input.augment == "small":
        return data.SmallTrain(stats, pad=c.input.pad, flip=c.input.flip), data.SmallEval(stats)
    if c.input.augment == "alexnet":
        # The paper feeds mean-subtracted 0-255 pixels to its N(0, 0.01) init; other variants
        # get unit-scale inputs.
        scale = 1.0 if c.model.variant == "paper" else float(1.0 / np.mean(stats.std))
        shared = {"crop": c.input.crop, "per_pixel_mean": c.input.per_pixel_mean, "scale": scale}
        return (
            data.AlexNetTrain(stats, pca_std=c.input.pca_std, **shared),
            data.AlexNetEval(stats, ten_crop=c.input.ten_crop, **shared),
        )
    identity = data.SmallEval(
        dataclasses.replace(stats, mean=np.zeros_like(stats.mean), std=np.ones_like(stats.std))
    )
    return identity, identity


def _eval_batches(source: Any, transform: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The whole split once, in order, in equal batches: the last one padded and masked."""
    n = len(source)
    per_process = batch_size // jax.process_count()
    index = jax.process_index()
    loader = data.make_loader(
        source,
        batch_size=batch_size,
        transform=transform,
        shuffle=False,
        drop_remainder=False,
        process_index=index,
        process_count=jax.process_count(),
    )
    seen = 0
    for batch in loader:
        b = len(batch["label"])
        mask = np.ones(per_process, np.float32)
        if b < per_process:
            mask[b:] = 0
            batch = {
                k: np.concatenate([v, np.repeat(v[-1:], per_process - b, 0)])
                for k, v in batch.items()
            }
        seen += b
        yield {**batch, "mask": mask}
    if jax.process_count() == 1 and seen != n:
        raise RuntimeError(f"evaluation saw {seen} of {n} examples")


def evaluate(
    parallel: Parallel, state: TrainState, source: Any, transform: Any, batch_size: int
) -> dict[str, float]:
    """Mean loss, error and top-5 error over a whole split."""
    totals: dict[str, float] = {}
    for batch in _eval_batches(source, transform, batch_size):
        sums = jax.device_get(parallel.eval_step(state, parallel.put_batch(batch)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------


class _Terminate:
    """Remember a SIGTERM so the loop can save a checkpoint and stop cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread: no handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@dataclasses.dataclass
class _Run:
    train_src: Any
    test_src: Any
    train_tf: Any
    eval_tf: Any
    parallel: Parallel
    state: TrainState
    steps_per_epoch: int
    total_steps: int


def _build(c: ml_collections.ConfigDict) -> _Run:
    """Data, model, optimizer and a fresh state for config ``c`` (durations converted here)."""
    train_src = data.load(c.dataset, "train")
    test_src = data.load(c.dataset, c.eval_split)
    stats = data.load_or_compute_stats(train_src)
    train_tf, eval_tf = _transforms(c, stats)
    image_shape = eval_tf(test_src[0])["image"].shape[-3:]

    parallel = Parallel(c.parallel, label_smoothing=c.label_smoothing, l2=c.l2)
    parallel.check_batch_size(c.batch_size)
    if c.eval_batch_size % parallel.num_devices:
        _fail("eval_batch_size", c.eval_batch_size, f"a multiple of {parallel.num_devices}")
    steps_per_epoch = len(train_src) // c.batch_size
    if steps_per_epoch < 1:
        _fail("batch_size", c.batch_size, f"at most the {len(train_src)} training examples")
    total_steps = c.num_steps if c.num_steps > 0 else round(c.num_epochs * steps_per_epoch)
    if c.max_steps > 0:
        total_steps = min(total_steps, c.max_steps)

    impl = c.model.impl
    if impl == "auto" and c.parallel == "sharded" and parallel.num_devices > 1:
        # XLA's SPMD partitioner does not know the oneDNN calls: it would all-gather the batch
        # and run each one whole on every device. pmap and one device run them per device.
        impl = "xla"
    model = AlexNet(
        num_classes=train_src.num_classes,
        variant=c.model.variant,
        dropout_rate=c.model.dropout_rate,
        activation=c.model.activation,
        groups=c.model.groups or None,
        lrn=c.model.lrn,
        overlapping_pool=c.model.overlapping_pool,
        in_channels=image_shape[-1],
        dtype=jnp.bfloat16 if c.mixed_precision else None,
        impl=impl,
    )
    init_key, state_key = jax.random.split(jax.random.key(c.seed))
    variables = jax.jit(model.init)(init_key, jnp.zeros((1, *image_shape), jnp.float32))
    tx = make_optimizer(c, steps_per_epoch, total_steps)
    state = TrainState.create(apply_fn=model.apply, variables=variables, tx=tx, rng=state_key)
    return _Run(
        train_src, test_src, train_tf, eval_tf, parallel, state, steps_per_epoch, total_steps
    )


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Test metrics of the latest readable checkpoint in ``workdir`` (ten crops when the
    config's input pipeline is AlexNet's)."""
    c = ml_collections.ConfigDict(config)
    _check_config(c)
    if c.input.augment == "alexnet":
        c.input.ten_crop = True
    run = _build(c)
    checkpointer = Checkpointer(pathlib.Path(workdir) / "checkpoints", c.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(run.state)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {pathlib.Path(workdir) / 'checkpoints'}")
    state = run.parallel.put_state(restored[0])
    result = evaluate(run.parallel, state, run.test_src, run.eval_tf, c.eval_batch_size)
    return {**result, "accuracy": 1.0 - result["error"], "step": int(restored[0].step)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train and evaluate as ``config`` says, writing checkpoints and logs to ``workdir``.

    Returns the final test metrics with ``steps``, ``epochs``, ``wall_seconds`` and
    ``train_images_per_second``.
    """
    c = ml_collections.ConfigDict(config)
    _check_config(c)
    workdir = pathlib.Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))

    run = _build(c)
    train_src, test_src, train_tf, eval_tf = run.train_src, run.test_src, run.train_tf, run.eval_tf
    parallel, state, steps_per_epoch = run.parallel, run.state, run.steps_per_epoch
    total_steps = run.total_steps
    eval_every = max(1, round(c.eval_every_epochs * steps_per_epoch))

    loader = data.make_loader(
        train_src,
        batch_size=c.batch_size,
        transform=train_tf,
        seed=c.seed,
        num_epochs=None,
        worker_count=c.input.worker_count,
        read_threads=c.input.read_threads,
    )
    batches = iter(loader)
    plateau = _Plateau(
        c.schedule.factor, c.schedule.patience, c.schedule.threshold, c.schedule.min_learning_rate
    )
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=c.keep_checkpoints)
    restored = checkpointer.restore_latest(state)
    if restored is not None:
        state, data_state, meta = restored
        batches.set_state(data_state)
        plateau.best, plateau.bad = meta["plateau_best"], meta["plateau_bad"]
        print(f"resumed from step {int(state.step)} in {checkpointer.directory}", flush=True)
    state = parallel.put_state(state)
    writer = MetricsWriter(workdir, enabled=is_main)

    def save(step: int) -> None:
        meta = {
            "plateau_best": plateau.best,
            "plateau_bad": plateau.bad,
            "epoch": step / steps_per_epoch,
        }
        checkpointer.save(step, parallel.get_state(state), batches.get_state(), meta)

    step = int(jax.device_get(parallel.get_state(state).step))
    pending: list[tuple[int, dict]] = []
    interval_start = time.perf_counter()
    log_due = False  # a log step has passed; its metrics are fetched after the next dispatch
    wall_start = time.perf_counter()
    images_per_s = 0.0
    last_eval: dict[str, float] = {}
    bar = None

    def flush(keep_last: bool = False) -> dict[str, float] | None:
        """Fetch the metrics of the steps since the last flush; stop at a non-finite loss.

        ``keep_last`` leaves the newest step's metrics for the next flush, so that logging
        waits for the step before it and the device always has the newest step queued.
        """
        nonlocal pending, interval_start, images_per_s, log_due
        ready = pending[:-1] if keep_last else pending
        log_due = False
        if not ready:
            return None
        pending = pending[len(ready) :]
        rows = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(ready)]
        for s, m in rows:
            if not math.isfinite(m["loss"]) and not c.optimizer.skip_nonfinite:
                raise FloatingPointError(
                    f"non-finite training loss ({m['loss']}) at step {s}; the last checkpoint "
                    f"(step {max(checkpointer.all_steps(), default=0)}) is intact. Lower the "
                    "learning rate, or set optimizer.skip_nonfinite=True to skip such steps."
                )
        now = time.perf_counter()  # the steps fetched now, over the time since the last fetch
        images_per_s = len(rows) * c.batch_size / max(now - interval_start, 1e-9)
        interval_start = now
        finite = [m for _, m in rows if math.isfinite(m["loss"])] or [rows[-1][1]]
        summary = _mean(finite)
        if "learning_rate" in rows[-1][1]:  # the newest, not the mean
            summary["learning_rate"] = rows[-1][1]["learning_rate"]
        summary["images_per_second"] = images_per_s
        writer.write(rows[-1][0], "train", summary)
        return summary

    try:
        with _Terminate() as term:
            while step < total_steps:
                epoch = step // steps_per_epoch
                if bar is None and c.progress and is_main:
                    from tqdm.auto import tqdm

                    bar = tqdm(
                        total=min(steps_per_epoch, total_steps - epoch * steps_per_epoch),
                        initial=step % steps_per_epoch,
                        desc=f"epoch {epoch + 1}",
                        unit="step",
                        leave=False,
                        dynamic_ncols=True,
                    )
                state, metrics = parallel.train_step(state, parallel.put_batch(next(batches)))
                pending.append((step + 1, metrics))
                step += 1
                if bar is not None:
                    bar.update(1)
                if log_due:  # the previous step's log, fetched now that this step is queued
                    summary = flush(keep_last=True)
                    if bar is not None and summary:
                        bar.set_postfix(
                            loss=f"{summary['loss']:.3f}",
                            err=f"{summary['error']:.3f}",
                            img_s=f"{images_per_s:.0f}",
                        )
                if step % c.log_every_steps == 0 or step % steps_per_epoch == 0:
                    log_due = True
                if step % eval_every == 0 or step == total_steps:
                    flush()
                    last_eval = evaluate(parallel, state, test_src, eval_tf, c.eval_batch_size)
                    lr = _learning_rate(parallel.get_state(state).opt_state)
                    writer.write(step, "test", last_eval)
                    if c.schedule.name == "plateau":
                        new_lr = plateau.update(last_eval["error"], lr)
                        if new_lr is not None:
                            state = state.replace(
                                opt_state=_scale_learning_rate(state.opt_state, new_lr / lr)
                            )
                            print(
                                f"step {step}: test error stopped improving; "
                                f"learning rate {lr:g} -> {new_lr:g}",
                                flush=True,
                            )
                    if bar is not None:
                        bar.close()
                        bar = None
                    if is_main:
                        print(
                            f"epoch {step / steps_per_epoch:6.2f}  step {step:6d}  lr {lr:.3g}  "
                            f"test loss {last_eval['loss']:.4f}  error {last_eval['error']:.4f}  "
                            f"top-5 {last_eval['top5_error']:.4f}  ({images_per_s:.0f} img/s)",
                            flush=True,
                        )
                elif bar is not None and step % steps_per_epoch == 0:
                    bar.close()
                    bar = None
                if step % c.checkpoint_every_steps == 0:
                    flush()
                    save(step)
                if term.requested:
                    flush()
                    save(step)
                    print(
                        f"SIGTERM: saved step {step} to {checkpointer.directory}; exiting",
                        flush=True,
                    )
                    raise SystemExit(143)
            flush()
            save(step)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        checkpointer.close()

    if not last_eval:  # resumed at the very end: evaluate the restored state
        last_eval = evaluate(parallel, state, test_src, eval_tf, c.eval_batch_size)
    result = {
        **last_eval,
        "accuracy": 1.0 - last_eval["error"],
        "steps": step,
        "epochs": step / steps_per_epoch,
        "wall_seconds": time.perf_counter() - wall_start,
        "train_images_per_second": images_per_s,
    }
    if is_main:
        plot_curves(workdir)
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result
