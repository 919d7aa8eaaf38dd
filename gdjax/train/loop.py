"""The training loop: ``train_and_evaluate(config, workdir)``, which the ``gdjax`` command calls.

One run checks the whole config (:func:`~gdjax.train.validation.check_config`), reads the
dataset named by ``config.dataset``, builds the model, optimizer and learning-rate recipe
(:func:`build`), restores the newest checkpoint of ``workdir`` if there is one, and then trains
with the parallel mode of ``config.parallel``. It writes to ``workdir``:

* ``checkpoints/`` — orbax checkpoints (state, data-iterator position, loop metadata) every
  ``checkpoint_every_steps`` and at the end; a run started again with the same ``workdir``
  resumes where it stopped and, on the CPU, ends bit-identical to an uninterrupted run.
  SIGTERM saves a checkpoint and exits (status 143). Ctrl-C stops the run (a checkpoint
  being written is completed first) with a ``KeyboardInterrupt`` that names the step reached
  and the checkpoint a rerun resumes from.
* ``metrics.jsonl`` and ``tensorboard/`` — training metrics every ``log_every_steps``, test
  metrics every ``eval_every_epochs``; ``curves.png`` at the end. A resumed run leaves out
  the rows that the run before it logged after the checkpoint it resumes from.
* ``config.json`` — the config the run used.

One run at a time trains in a workdir: a second one stops at once (:class:`WorkdirBusyError`).
Nothing is written before the restore has succeeded: a workdir whose checkpoints belong to
another config stops the run (:class:`WorkdirMismatchError`, naming the fields that differ)
unless ``restart=True`` moves them aside first. A non-finite training loss stops the run with
:class:`FloatingPointError` naming the step and the newest checkpoint (all checkpoints hold
finite parameters) unless ``optimizer.skip_nonfinite`` is set, in which case
``optax.apply_if_finite`` skips such steps.

Each step the loop does the same things in the same order, each a small piece below with one
rule for "is it due at this step" (:func:`due`): train, log, evaluate (and the plateau
recipe), checkpoint, answer SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import signal
import tempfile
import time
import warnings
from collections.abc import Mapping
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not checked
    fcntl = None

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gdjax import data
from gdjax._checks import check_flag, is_int
from gdjax.configs.base import get_field
from gdjax.models import AlexNet, _onednn, compiler_options, onednn_status
from gdjax.train.checkpoint import Checkpointer, CheckpointMismatchError, NonFiniteStateError
from gdjax.train.evaluation import evaluate
from gdjax.train.metrics_writer import MetricsWriter, plot_curves
from gdjax.train.parallel import Parallel
from gdjax.train.recipe import (
    Plateau,
    _updates,
    current_learning_rate,
    scale_learning_rate,
    shared_optimizer,
    skipped_steps,
)
from gdjax.train.steps import TrainState
from gdjax.train.validation import (
    ConfigError,
    changed_network,
    check_config,
    differing_fields,
    fail,
    field_changes,
    saved_config,
)

__all__ = [
    "DivergedError",
    "Run",
    "WorkdirBusyError",
    "WorkdirMismatchError",
    "build",
    "due",
    "evaluate_checkpoint",
    "train_and_evaluate",
]


class DivergedError(FloatingPointError):
    """A run stopped because its loss or parameters went NaN or infinite; the message names the
    step, the newest checkpoint with finite parameters and what to change."""


class WorkdirMismatchError(ConfigError):
    """The workdir holds checkpoints that this config's state cannot restore."""


def due(step: int, every: int, last: int | None = None) -> bool:
    """The one rule for periodic actions: every ``every`` steps, and at step ``last``."""
    return step == last or (every > 0 and step % every == 0)


# ---------------------------------------------------------------------------------------------
# Building a run


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


# Runs of an equal network and optimizer in one process (a notebook cell run again, a sweep
# over seeds, the experiments) share the model and the optimizer (``shared_optimizer``): jit
# keys its traces and compiled programs by the function and by the state's static fields
# (``apply_fn``, ``tx``), which compare by identity, so the second run traces, lowers and
# compiles nothing (about 2 s of a 7 s 40-step run of the default config on two cores). The
# steps are shared by :class:`Parallel`; the init is one function, the model a static argument.
@functools.lru_cache(maxsize=8)
def _shared_model(**fields: Any) -> AlexNet:
    return AlexNet(**fields)


def _init(model: AlexNet, key: jax.Array, images: jax.Array) -> Any:
    return model.init(key, images)


@dataclasses.dataclass
class Run:
    """Everything :func:`build` makes from a config: data, transforms, mode and a fresh state."""

    train_src: Any
    test_src: Any
    train_tf: Any
    eval_tf: Any
    parallel: Parallel
    state: TrainState
    shardings: Any  # parallel="sharded": the state's NamedShardings on the mesh; else None
    steps_per_epoch: int
    total_steps: int
    eval_batch_size: int


def _check_lengths(c: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> None:
    """The run's accumulation and schedule against its length (``total_steps``, before
    ``max_steps``): a :class:`ConfigError` where nothing would work, a warning where a
    setting never takes full effect."""
    accumulate = c.optimizer.grad_accum_steps
    if accumulate > total_steps:  # the run would end before its first update, without a word
        fail(
            "optimizer.grad_accum_steps",
            accumulate,
            f"at most the run's {total_steps} steps (the optimizer updates once every "
            f"grad_accum_steps steps: it would never update)",
        )
    # The schedule's boundaries are update counts, compared with the optimizer's int32 count:
    # a larger one stopped the first step with an OverflowError from inside jit.
    per_epoch, _ = _updates(c, steps_per_epoch, total_steps)  # the schedule's own count
    epochs = [("schedule.warmup_epochs", c.schedule.warmup_epochs)]
    if c.schedule.name == "step":
        epochs.append(("schedule.step_epochs", max(c.schedule.step_epochs, default=0)))
    for field, value in epochs:
        if round(value * per_epoch) > 2**31 - 1:
            fail(
                field,
                get_field(c, field),
                f"within {(2**31 - 1) // per_epoch:,} epochs here (2**31 - 1 optimizer updates, "
                f"its step count being an int32, at {per_epoch} updates an epoch)",
            )
    warmup = c.schedule.warmup_epochs
    if warmup and round(warmup * steps_per_epoch) >= total_steps:  # legal, but likely a slip
        warnings.warn(
            f"schedule.warmup_epochs={warmup:g} is as long as the run ({total_steps} steps, "
            f"{total_steps / steps_per_epoch:.3g} epochs) or longer: the learning rate never "
            "reaches its peak",
            stacklevel=3,
        )


def build(c: ml_collections.ConfigDict) -> Run:
    """Data, model, optimizer and a fresh state for config ``c`` (durations converted here).

    Builds of configs with an equal network (or optimizer) get the same model (or optimizer)
    object, so that their runs share traced and compiled programs (see ``_shared_model``)."""
    if c.model.impl == "onednn" and jax.default_backend() == "cpu":
        ok, why = onednn_status()  # refused before the data is read, not at the first layer
        if not ok:
            raise ConfigError(
                f"config.model.impl='onednn' needs the oneDNN kernels, which are unavailable "
                f"here: {why}; use 'auto' (oneDNN where it can) or 'xla'"
            )
    size = {"image_size": c.input.image_size} if c.input.image_size else {}
    train_src = data.load(c.dataset, "train", **size)
    test_src = data.load(c.dataset, c.eval_split, **size)
    stats = data.load_or_compute_stats(train_src)
    train_tf, eval_tf = _transforms(c, stats)
    image_shape = eval_tf(test_src[0])["image"].shape[-3:]

    parallel = Parallel(
        c.parallel, model_parallel=c.model_parallel, label_smoothing=c.label_smoothing, l2=c.l2
    )
    parallel.check_batch_size(c.batch_size)
    # Evaluation pads its batches anyway: round up to the devices instead of refusing, and no
    # batch is larger than the split (a batch of 100,000 for 1,000 images compiled and ran a
    # step 100 times the size). num_devices counts every process's devices, so it divides by
    # the processes too.
    eval_batch = min(c.eval_batch_size, len(test_src))
    eval_batch_size = -(-eval_batch // parallel.num_devices) * parallel.num_devices
    steps_per_epoch = len(train_src) // c.batch_size
    if steps_per_epoch < 1:
        fail("batch_size", c.batch_size, f"at most the {len(train_src)} training examples")
    total_steps = c.num_steps if c.num_steps > 0 else round(c.num_epochs * steps_per_epoch)
    if total_steps < 1:  # a fraction of an epoch shorter than one step
        fail(
            "num_epochs",
            c.num_epochs,
            f"at least 1/{steps_per_epoch} (one step: an epoch is {steps_per_epoch} steps of "
            f"{c.batch_size} examples), or num_steps >= 1",
        )
    _check_lengths(c, steps_per_epoch, total_steps)
    if c.max_steps > 0:
        total_steps = min(total_steps, c.max_steps)

    # Under parallel="sharded" the model runs its convolutions and poolings per device
    # (shard_map), so oneDNN's calls stay on the fast path there too.
    model = _shared_model(
        num_classes=train_src.num_classes,
        variant=c.model.variant,
        dropout_rate=c.model.dropout_rate,
        activation=c.model.activation,
        groups=c.model.groups or None,
        lrn=c.model.lrn,
        overlapping_pool=c.model.overlapping_pool,
        in_channels=image_shape[-1],
        dtype=jnp.bfloat16 if c.mixed_precision else None,
        impl=c.model.impl,
        fused_relu=c.model.fused_relu,
        partitioned=c.parallel == "sharded",
    )
    init_key, state_key = jax.random.split(jax.random.key(c.seed))
    init = jax.jit(_init, static_argnums=0, compiler_options=compiler_options("init"))
    variables = init(model, init_key, jnp.zeros((1, *image_shape), jnp.float32))
    tx = shared_optimizer(c, steps_per_epoch, total_steps)
    state = TrainState.create(apply_fn=model.apply, variables=variables, tx=tx, rng=state_key)
    # The partitioning boxes (sharded runs) say where each leaf goes; the state drops them.
    shardings = parallel.state_shardings(state) if c.parallel == "sharded" else None
    return Run(
        train_src,
        test_src,
        train_tf,
        eval_tf,
        parallel,
        nn.unbox(state),
        shardings,
        steps_per_epoch,
        total_steps,
        eval_batch_size,
    )


# ---------------------------------------------------------------------------------------------
# The workdir: checked, then restored, before anything is written


def _eval_label(split: str) -> str:
    """The ``split`` of evaluation rows in ``metrics.jsonl`` and their TensorBoard tags: the
    split evaluated (``test``, ``val``), or ``train_eval`` for the training split, whose
    ``train`` rows are the running training metrics."""
    return "train_eval" if split == "train" else split


def _workdir(workdir: Any) -> pathlib.Path:
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir):
        raise ConfigError(f"workdir must be a folder's path (str or os.PathLike), got {workdir!r}")
    return pathlib.Path(workdir)


def _check_workdir(workdir: pathlib.Path) -> None:
    """Refuse, before any data is read or anything compiled, a workdir the run could not write:
    a file, a path under a file, or a folder (or its nearest existing parent) where no folder
    can be made. Tried by making and removing an empty folder there, which also answers for
    read-only mounts and for root."""
    existing = next(p for p in (workdir, *workdir.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == workdir else f" is under {existing}, which"
        raise ConfigError(f"--workdir {workdir}{where} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".gdjax-write-check-").cleanup()
    except OSError as e:
        raise ConfigError(
            f"--workdir {workdir}: cannot write in {existing} ({e.strerror or e})"
        ) from None


class WorkdirBusyError(RuntimeError):
    """Another run is training in the workdir."""


@contextlib.contextmanager
def _workdir_lock(workdir: pathlib.Path, enabled: bool = True):
    """Hold ``workdir`` for one run: an exclusive ``flock`` on the folder itself, so nothing is
    written for it and the kernel lets go however the process ends (even SIGKILL). A second
    run in the same workdir used to train beside the first, each overwriting the other's
    checkpoints, until one read a checkpoint folder the other had just replaced ("No such file
    or directory"); now it stops at once. Taken by process 0 only (the processes of one run
    share the workdir); where the filesystem has no locks (some network mounts, Windows), runs
    are not checked."""
    if not enabled or fcntl is None:
        yield
        return
    made = [p for p in (workdir, *workdir.parents) if not p.exists()]  # the folder first
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"{workdir} is in use by another run (a gdjax process training there holds "
                "it); wait for that run to end, stop it, or choose another workdir"
            ) from None
        except OSError:  # no locks on this filesystem
            pass
        yield
    except BaseException:
        for folder in made:  # a run stopped before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # (only if still empty)
        raise
    finally:
        os.close(fd)


def _mismatch(
    workdir: pathlib.Path,
    c: ml_collections.ConfigDict,
    e: CheckpointMismatchError,
    evaluating: bool = False,
) -> WorkdirMismatchError:
    previous = saved_config(workdir)
    fields = differing_fields(previous, c) if previous is not None else []
    changed = f" (changed: {', '.join(fields)})" if fields else ""
    if evaluating:  # neither a new workdir nor --restart means anything to gdjax eval
        advice = (
            "Evaluate with the config the run trained with, its config.json (gdjax eval "
            "reads it when --config is left out), without overrides of the changed fields."
        )
    else:
        advice = (
            "Rerun with the workdir's own config, choose a new --workdir, or pass --restart to "
            "move the old checkpoints aside and start over."
        )
    return WorkdirMismatchError(
        f"{workdir} holds checkpoints of another config{changed}, which this "
        f"{'config' if evaluating else 'run'}'s state cannot restore ({e.differences[0]}). "
        + advice
    )


def _changes_since(workdir: pathlib.Path, c: ml_collections.ConfigDict) -> str:
    """'; changed since that run: FIELD OLD -> NEW, ...' against the workdir's config.json
    (empty when nothing changed or it is unreadable). A resume may change the recipe (train
    longer, another learning rate); saying what changed keeps a typo from passing unseen."""
    saved = saved_config(workdir)
    changes = field_changes(saved, c) if saved is not None else []
    if not changes:
        return ""
    listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)
    caveat = (
        " (the loader goes on from the batch count reached, in batches of the new size: the "
        "rest of this epoch is not the examples the run would have read)"
        if any(k == "batch_size" for k, _, _ in changes)
        else ""
    )
    return f"; changed since that run: {listed}{caveat}"


def _restore(
    workdir: pathlib.Path,
    c: ml_collections.ConfigDict,
    state: TrainState,
    shardings: Any,
    restart: bool,
) -> tuple[Checkpointer | None, tuple | None]:
    """Open the workdir's checkpoints and restore the newest readable one (None if none)."""
    directory = workdir / "checkpoints"
    if restart:  # process 0 moves them (a shared disk); the others wait until it has
        if jax.process_index() == 0:
            stamp = _free_stamp(workdir)
            if directory.is_dir() and any(directory.iterdir()):
                aside = directory.with_name(_aside("checkpoints", stamp))
                directory.rename(aside)
                print(f"--restart: moved the old checkpoints to {aside}", flush=True)
            _move_logs_aside(workdir, stamp)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gdjax: checkpoints moved aside")
    if not directory.is_dir():
        return None, None
    changed = changed_network(workdir, c) if any(directory.iterdir()) else []
    if changed:
        raise WorkdirMismatchError(
            f"{workdir} holds checkpoints of another network (changed: {'; '.join(changed)}): "
            "resuming would go on training their weights as a different network. Rerun with "
            "the workdir's own model settings, choose a new --workdir, or pass --restart to move "
            "the old checkpoints aside and start over."
        )
    checkpointer = Checkpointer(directory, max_to_keep=c.keep_checkpoints)
    try:
        return checkpointer, checkpointer.restore_latest(state, shardings)
    except CheckpointMismatchError as e:
        checkpointer.close()
        raise _mismatch(workdir, c, e) from None


# What an earlier run logged in the workdir; --restart moves it aside with its checkpoints, so
# that the new run's curves do not run on from the old ones.
_RUN_LOGS = ("metrics.jsonl", "tensorboard", "curves.png", "result.json")


def _aside(name: str, stamp: str) -> str:
    stem, dot, suffix = name.partition(".")
    return f"{stem}.before-restart-{stamp}{dot}{suffix}"


def _free_stamp(workdir: pathlib.Path) -> str:
    """The time, made unique among the workdir's earlier ``*.before-restart-*`` (a rename onto
    one of them would replace a file, or fail on a folder)."""
    stamp = base = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while any((workdir / _aside(name, stamp)).exists() for name in ("checkpoints", *_RUN_LOGS)):
        n += 1
        stamp = f"{base}-{n}"
    return stamp


def _move_logs_aside(workdir: pathlib.Path, stamp: str) -> None:
    moved = []
    for name in _RUN_LOGS:
        path = workdir / name
        if path.exists():
            path.rename(workdir / _aside(name, stamp))
            moved.append(name)
    if moved:
        print(
            f"--restart: moved the old run's {', '.join(moved)} to "
            f"{workdir}/*.before-restart-{stamp}*",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# The periodic pieces


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


def _kernels_off(c: ml_collections.ConfigDict) -> str | None:
    """Why the oneDNN kernels are off where ``impl="auto"`` would have used them (float32 on a
    Linux x86-64 CPU; the main job trains about 1.9x slower without them), else ``None``."""
    if c.model.impl != "auto" or c.mixed_precision or jax.default_backend() != "cpu":
        return None
    if not _onednn.host_supported():
        return None
    ok, why = onednn_status()
    return None if ok else why


def _where_interrupted(step: int, checkpointer: Checkpointer, workdir: pathlib.Path) -> str:
    """What a Ctrl-C during training leaves: the step reached and the checkpoint a rerun
    resumes from."""
    newest = checkpointer.newest_good()
    if newest is None:
        return f"at step {step}, before any checkpoint was written"
    return (
        f"at step {step}; checkpoint {newest} is kept in {checkpointer.directory}, and a run "
        f"with the same workdir ({workdir}) resumes from it"
    )


class _NonFiniteLossError(Exception):
    def __init__(self, step: int, loss: float):
        self.step, self.loss = step, loss


def _nonfinite_stop(checkpointer: Checkpointer, what: str, first_bad: int) -> DivergedError:
    """The error that stops a diverged run, after setting aside the checkpoints from step
    ``first_bad`` on (their parameters are the ones that diverged): it names only a checkpoint
    that exists and holds parameters with a finite loss."""
    moved = checkpointer.set_aside(first_bad)
    good = checkpointer.newest_good()
    where = (
        f"the newest checkpoint, step {good} in {checkpointer.directory}, is finite"
        if good is not None
        else "no checkpoint with finite parameters was written"
    )
    if moved:
        where += f" (steps {moved} set aside in {checkpointer.directory}.nonfinite)"
    return DivergedError(
        f"{what}; {where}. Lower the learning rate, or set optimizer.skip_nonfinite=True to "
        "skip such steps."
    )


def _mean_over_examples(steps: list[dict[str, float]]) -> dict[str, float]:
    """The steps' metrics averaged over their real examples (each step weighted by its
    ``count``; a step whose examples were all masked counts for nothing). When no step had
    one, the loss alone (the penalty) and a warning: an error of 0 would read as perfect."""
    weights = np.asarray([m.get("count", 1.0) for m in steps], np.float64)
    names = [k for k in steps[0] if k not in ("count", "learning_rate")]
    if weights.sum() > 0:
        return {k: float(np.dot(weights, [m[k] for m in steps]) / weights.sum()) for k in names}
    warnings.warn(
        "every training example of a logging interval was masked (unreadable images): its "
        "metrics.jsonl row has the loss (the penalty alone) but no error",
        stacklevel=3,
    )
    return {"loss": float(np.mean([m["loss"] for m in steps]))}


class _TrainLog:
    """Training metrics: kept on the device until a log is due, then fetched one step late
    (after the next step is dispatched, so the device never waits for the host).

    Throughput counts steady training only: the clock restarts after the first step (which
    compiles) and after every evaluation and checkpoint. A row whose interval has no timed step
    (the first with ``log_every_steps=1``) has no ``images_per_second``, rather than a 0.
    """

    def __init__(self, writer: MetricsWriter, batch_size: int, stop_on_nonfinite: bool):
        self.writer, self.batch_size = writer, batch_size
        self.stop_on_nonfinite = stop_on_nonfinite
        self.pending: list[tuple[int, dict]] = []
        self.due = False
        self.clock: float | None = None
        self.untimed = 0  # steps dispatched before the clock started
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self.interval_rate = 0.0

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def restart_clock(self) -> None:
        """Time from now on; the steps dispatched so far are not timed."""
        self.clock = time.perf_counter()
        self.untimed = len(self.pending)

    def flush(self, keep_last: bool = False) -> dict[str, float] | None:
        """Fetch the pending steps' metrics (all but the newest if ``keep_last``), write their
        mean, and stop at a non-finite loss."""
        ready = self.pending[:-1] if keep_last else self.pending
        self.due = False
        if not ready:
            return None
        self.pending = self.pending[len(ready) :]
        rows = [(s, {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(ready)]
        for s, m in rows:
            if not math.isfinite(m["loss"]) and self.stop_on_nonfinite:
                raise _NonFiniteLossError(s, m["loss"])
        rate = None  # no timed step in the interval (only the compiling one): no rate
        if self.clock is not None:
            timed = len(rows) - min(self.untimed, len(rows))
            self.untimed = max(0, self.untimed - len(rows))
            now = time.perf_counter()
            if timed:
                self.timed_steps += timed
                self.timed_seconds += now - self.clock
                rate = self.interval_rate = timed * self.batch_size / max(now - self.clock, 1e-9)
            self.clock = now
        finite = [m for _, m in rows if math.isfinite(m["loss"])] or [rows[-1][1]]
        summary = _mean_over_examples(finite)
        if "learning_rate" in rows[-1][1]:  # the newest, not the mean
            summary["learning_rate"] = rows[-1][1]["learning_rate"]
        if rate is not None:
            summary["images_per_second"] = rate
        self.writer.write(rows[-1][0], "train", summary)
        return summary

    @property
    def images_per_second(self) -> float:
        """Steady training throughput over the whole run."""
        return self.timed_steps * self.batch_size / max(self.timed_seconds, 1e-9)


class _Progress:
    """A tqdm bar per epoch (main process, ``config.progress``)."""

    def __init__(self, enabled: bool, steps_per_epoch: int, total_steps: int):
        self.enabled, self.steps_per_epoch, self.total = enabled, steps_per_epoch, total_steps
        self.bar = None

    def step(self, step: int, summary: dict[str, float] | None, rate: float) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            epoch = (step - 1) // self.steps_per_epoch
            self.bar = tqdm(
                total=min(self.steps_per_epoch, self.total - epoch * self.steps_per_epoch),
                initial=(step - 1) % self.steps_per_epoch,
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
            )
        self.bar.update(1)
        if summary:
            shown = {"loss": f"{summary['loss']:.3f}"}
            if "error" in summary:
                shown["err"] = f"{summary['error']:.3f}"
            if rate > 0:  # none yet while only the compiling step has run
                shown["img_s"] = f"{rate:.0f}"
            self.bar.set_postfix(**shown)
        if step % self.steps_per_epoch == 0:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclasses.dataclass
class _Evaluator:
    """Test metrics when due, and the plateau recipe that reads them."""

    run: Run
    config: ml_collections.ConfigDict
    writer: MetricsWriter
    plateau: Plateau
    verbose: bool
    last: dict[str, float] = dataclasses.field(default_factory=dict)

    def __call__(self, state: TrainState, step: int) -> TrainState:
        c, run = self.config, self.run
        self.last = evaluate(
            run.parallel, state, run.test_src, run.eval_tf, run.eval_batch_size, c.eval_split
        )
        lr = current_learning_rate(run.parallel.get_state(state).opt_state)
        self.writer.write(step, _eval_label(c.eval_split), self.last)
        if c.schedule.name == "plateau":
            new_lr = self.plateau.update(self.last["error"], lr)
            if new_lr is not None:
                state = state.replace(opt_state=scale_learning_rate(state.opt_state, new_lr / lr))
                self._print(
                    f"step {step}: {c.eval_split} error stopped improving; lr {lr:g} -> {new_lr:g}"
                )
        self._print(
            f"epoch {step / run.steps_per_epoch:6.2f}  step {step:6d}  lr {lr:.3g}  "
            f"{c.eval_split} loss {self.last['loss']:.4f}  error {self.last['error']:.4f}"
            + (f"  top-5 {self.last['top5_error']:.4f}" if run.train_src.num_classes > 5 else "")
        )
        return state

    def _print(self, line: str) -> None:
        if self.verbose:
            print(line, flush=True)


# ---------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> ml_collections.ConfigDict:
    """A copy of ``config`` (a ConfigDict, or a mapping of the same fields) as a ConfigDict."""
    if not isinstance(config, (ml_collections.ConfigDict, Mapping)):
        raise ConfigError(
            f"config must be an ml_collections.ConfigDict, got {type(config).__name__} "
            f"{config!r:.60}: start from a preset, gdjax.configs.get_config('default')"
        )
    return ml_collections.ConfigDict(config)


BATCHES_CLOSE_SECONDS = 10.0


def _close_batches(batches: Any, timeout: float = BATCHES_CLOSE_SECONDS) -> None:
    """``batches.close()`` (grain's: stops its prefetch thread, then the worker processes),
    given ``timeout`` seconds. A Ctrl-C that lands inside grain's iterator can leave its
    prefetch thread blocked on a full buffer that nothing drains, and grain's close joined that
    thread forever: a run hung after its interrupted line (seen twice in CI; the thread stack
    read off the live process). Past the timeout the thread is left to the process's exit."""
    import threading

    closer = threading.Thread(target=batches.close, name="gdjax-close-batches", daemon=True)
    closer.start()
    closer.join(timeout)
    if closer.is_alive():
        warnings.warn(
            f"the input pipeline did not stop within {timeout:.0f} s (grain's prefetch thread "
            "is blocked); it is left to the process's exit",
            stacklevel=2,
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, restart: bool = False
) -> dict[str, Any]:
    """Train and evaluate as ``config`` says, writing checkpoints and logs to ``workdir``.

    ``restart=True`` moves existing checkpoints aside (``checkpoints.before-restart-*``, the
    old run's logs to ``*.before-restart-*``) and starts from step 0. Returns the final test
    metrics with ``accuracy``, ``steps``, ``steps_this_run`` (0 when the checkpoint already
    had every step), ``epochs``, ``wall_seconds`` (the whole call), ``train_images_per_second``
    (steady training, without compilation, evaluation and checkpoints; 0.0 when no step was
    timed), ``num_classes`` (with 5 or fewer, the top-5 error is 0 by definition) and
    ``skipped_nonfinite_steps`` (``optimizer.skip_nonfinite``: the updates skipped as
    non-finite).
    Raises :class:`WorkdirBusyError` when another run is training in ``workdir``.
    """
    wall_start = time.perf_counter()
    check_flag("train_and_evaluate: restart", restart)  # "no" moved the checkpoints aside
    c = _config_dict(config)
    check_config(c, jax.process_count())
    workdir = _workdir(workdir)
    _check_workdir(workdir)
    is_main = jax.process_index() == 0

    with _workdir_lock(workdir, enabled=is_main):
        return _train(c, build(c), workdir, restart, is_main, wall_start)


def _train(
    c: ml_collections.ConfigDict,
    run: Run,
    workdir: pathlib.Path,
    restart: bool,
    is_main: bool,
    wall_start: float,
) -> dict[str, Any]:
    """The body of :func:`train_and_evaluate`, run while this process holds the workdir."""
    loader = data.make_loader(
        run.train_src,
        batch_size=c.batch_size,
        transform=run.train_tf,
        seed=c.seed,
        num_epochs=None,
        worker_count=c.input.worker_count,
        read_threads=c.input.read_threads,
    )
    batches = iter(loader)
    plateau = Plateau(
        c.schedule.factor, c.schedule.patience, c.schedule.threshold, c.schedule.min_learning_rate
    )
    state = run.state
    checkpointer, restored = _restore(workdir, c, state, run.shardings, restart)
    if restored is not None:
        state, data_state, meta = restored
        batches.set_state(data_state)
        plateau.best, plateau.bad = meta["plateau_best"], meta["plateau_bad"]
        print(
            f"resumed from step {int(state.step)} in {checkpointer.directory}"
            f"{_changes_since(workdir, c)}",
            flush=True,
        )
    # Restored (or nothing to restore): only now is anything written.
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(c.to_json_best_effort(indent=2))
        if (why := _kernels_off(c)) is not None:
            print(f"convolutions, max-pooling and LRN run on XLA, not oneDNN: {why}", flush=True)
    if checkpointer is None:
        checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=c.keep_checkpoints)
    parallel, total = run.parallel, run.total_steps
    state = parallel.put_state(state, run.shardings)
    step = int(jax.device_get(parallel.get_state(state).step))
    writer = MetricsWriter(workdir, enabled=is_main, start_step=step)
    rows, lines = writer.left_out["rows_after_start"], writer.left_out["unreadable_lines"]
    if rows or lines:
        parts = [f"{rows} row(s) after step {step}, logged past its last checkpoint"] * bool(rows)
        parts += [f"{lines} unreadable line(s), cut short when it stopped"] * bool(lines)
        print(f"metrics.jsonl: left out the earlier run's {' and '.join(parts)}", flush=True)
    log = _TrainLog(writer, c.batch_size, stop_on_nonfinite=not c.optimizer.skip_nonfinite)
    progress = _Progress(c.progress and is_main, run.steps_per_epoch, total)
    evaluator = _Evaluator(run, c, writer, plateau, verbose=is_main)
    eval_every = max(1, round(c.eval_every_epochs * run.steps_per_epoch))

    def save(step: int) -> None:
        meta = {
            "plateau_best": plateau.best,
            "plateau_bad": plateau.bad,
            "epoch": step / run.steps_per_epoch,
        }
        try:
            checkpointer.save(step, parallel.get_state(state), batches.get_state(), meta)
        except NonFiniteStateError:
            what = f"the parameters became NaN or inf by step {step} (not saved)"
            raise _nonfinite_stop(checkpointer, what, step) from None

    first_step = step
    save_on_exit = step < total
    try:
        with _Terminate() as term:
            while step < total:
                state, metrics = parallel.train_step(state, parallel.put_batch(next(batches)))
                step += 1
                log.add(step, metrics)
                if log.clock is None:  # the first step compiled: time from here on
                    log.restart_clock()
                summary = log.flush(keep_last=True) if log.due else None
                progress.step(step, summary, log.interval_rate)
                if due(step, c.log_every_steps) or step % run.steps_per_epoch == 0:
                    log.due = True
                paused = False
                if due(step, eval_every, total):
                    log.flush()
                    progress.close()
                    state = evaluator(state, step)
                    paused = True
                if due(step, c.checkpoint_every_steps) or term.requested:
                    log.flush()
                    save(step)
                    paused = True
                if term.requested:
                    print(
                        f"SIGTERM: saved step {step} to {checkpointer.directory}; exiting",
                        flush=True,
                    )
                    raise SystemExit(143)
                if paused:
                    log.restart_clock()
            log.flush()
            if save_on_exit:
                save(step)
    except _NonFiniteLossError as e:
        # The loss of step s is measured on the parameters of step s - 1.
        what = f"non-finite training loss ({e.loss}) at step {e.step}"
        raise _nonfinite_stop(checkpointer, what, e.step - 1) from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_where_interrupted(step, checkpointer, workdir)) from None
    finally:
        progress.close()
        writer.close()
        checkpointer.close()
        _close_batches(batches)  # stops the loader's worker processes, if any

    if not evaluator.last:  # resumed at the very end: evaluate the restored state
        evaluator(state, step)
    result = {
        **evaluator.last,
        "steps": step,
        "steps_this_run": step - first_step,
        "epochs": step / run.steps_per_epoch,
        "wall_seconds": time.perf_counter() - wall_start,
        "train_images_per_second": log.images_per_second,
        "num_classes": run.train_src.num_classes,
        "skipped_nonfinite_steps": skipped_steps(run.parallel.get_state(state).opt_state),
    }
    if is_main:
        plot_curves(workdir)
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, float | int | str]:
    """Metrics of the latest readable checkpoint in ``workdir`` (or of checkpoint ``step``,
    one of those the workdir keeps) on ``config.eval_split`` (ten crops when the config's
    input pipeline is AlexNet's): loss, error, top-5 error, accuracy, the checkpoint's
    ``step``, the ``split`` and the number of ``examples`` scored. Writes nothing."""
    if step is not None and (not is_int(step) or step < 0):
        raise ValueError(f"step must be a checkpoint's step, an integer >= 0, got {step!r}")
    c = _config_dict(config)
    check_config(c, jax.process_count())
    directory = _workdir(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {directory}")
    changed = changed_network(workdir, c)
    if changed:
        raise ConfigError(
            f"{workdir} holds checkpoints of another network (changed: {'; '.join(changed)}); "
            "gdjax eval would score their weights in a different network. Evaluate with the "
            "workdir's own model settings."
        )
    if c.input.augment == "alexnet":
        c.input.ten_crop = True
    run = build(c)
    checkpointer = Checkpointer(directory, c.keep_checkpoints, create=False)
    try:
        if step is None:
            restored = checkpointer.restore_latest(run.state, run.shardings)
        else:
            restored = checkpointer.restore_step(run.state, int(step), run.shardings)
    except CheckpointMismatchError as e:
        raise _mismatch(pathlib.Path(workdir), c, e, evaluating=True) from None
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}")
    state = run.parallel.put_state(restored[0], run.shardings)
    result = evaluate(
        run.parallel, state, run.test_src, run.eval_tf, run.eval_batch_size, c.eval_split
    )
    return {
        **result,
        "step": int(restored[0].step),
        "split": c.eval_split,
        "examples": len(run.test_src) - int(result.get("skipped", 0)),
    }
