"""Checkpoints with orbax: the training state, the data iterator's position and loop metadata.

Every save goes to a temporary directory that orbax renames into place only once it is
complete, and older checkpoints are deleted only after a newer one is finalized, so a crash
or a full disk never leaves the run without a good checkpoint. A save that fails (a full disk,
a quota, a lost mount) removes its partial files and raises :class:`CheckpointWriteError`,
which names the cause and the checkpoint kept. A state whose parameters are not all finite is
never written.

On restore the newest checkpoint is tried first. Two failures are told apart:

* **unreadable** (half-written, truncated, corrupted files): a warning, and the next older one
  is tried; a later save of the same step replaces the unreadable one (it is moved aside to
  ``<directory>.unreadable/`` first, never silently kept as the newest);
* **another run's** (its arrays are readable but have other names or shapes than the state
  given, e.g. another optimizer or model): :class:`CheckpointMismatchError`, and nothing is
  written — a run must never shadow checkpoints it did not restore.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import os
import pathlib
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gdjax._checks import is_int
from gdjax.train.steps import TrainState

__all__ = [
    "CheckpointMismatchError",
    "CheckpointUnreadableError",
    "CheckpointWriteError",
    "Checkpointer",
    "NonFiniteStateError",
    "all_finite",
]


class CheckpointMismatchError(RuntimeError):
    """The directory holds checkpoints of a state with another structure."""

    def __init__(self, directory: pathlib.Path, step: int, differences: list[str]):
        self.directory, self.step, self.differences = directory, step, differences
        super().__init__(
            f"checkpoint {step} in {directory} holds another run's state "
            f"({'; '.join(differences[:3])})"
        )


class CheckpointUnreadableError(RuntimeError):
    """A checkpoint asked for by its step whose files are damaged or incomplete."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; its partial files are gone, older ones untouched."""


def _write_failure(e: BaseException) -> str:
    """The cause of a failed write in a few words: the operating system's, where tensorstore
    quotes its code (``[os_error_code='28']``: No space left on device), else the first line."""
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
        return os.strerror(int(code.group(1)))
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# Checkpoint folders where an orbax read or write failed (and was reported) in this process.
_FAILED_IN: set[str] = set()


def _names_a_failed_folder(*texts: str) -> bool:
    """True when one of ``texts`` names a folder where an orbax failure was reported."""
    return any(folder in text for folder in _FAILED_IN for text in texts)


def _a_failed_folders_log(record: logging.LogRecord) -> bool:
    """The record's message or its exception names a folder where a failure was reported."""
    error = str(record.exc_info[1]) if record.exc_info else ""
    return _names_a_failed_folder(record.getMessage(), error)


def _not_an_abandoned_orbax_task(record: logging.LogRecord) -> bool:
    """asyncio logs "Task (or Future, _GatheringFuture) exception was never retrieved" when
    one that failed is collected. After a failed orbax read or write its abandoned ones are
    collected whenever tensorstore lets go of them, possibly long after the failure was
    reported: this filter (on asyncio's logger from the first failure on) drops those, and
    only those: their error names a folder where a failure was reported."""
    if "exception was never retrieved" not in record.getMessage():
        return True
    return not _a_failed_folders_log(record)


def _not_about_a_failed_folder(record: logging.LogRecord) -> bool:
    """orbax's threads go on after a write that was given up (a second Ctrl-C) or that failed,
    and log an ERROR with a traceback when they find its folder gone ("No ArrayMetadata found
    ... in the checkpoint directory: .../79.orbax-checkpoint-tmp/...") after the failure was
    reported: this filter (on absl's logger from the first failure on) drops the errors that
    name a folder where a failure was reported, and only those."""
    return record.levelno < logging.ERROR or not _a_failed_folders_log(record)


def _a_late_wakeup(unraisable: Any) -> bool:
    """True for the error a tensorstore future prints when it completes after the event loop
    that awaited it was closed: ``RuntimeError('Event loop is closed')`` raised in
    ``loop.call_soon_threadsafe`` called from tensorstore's C++ threads (no Python caller).
    After a failed orbax write, the loop it ran on is closed while tensorstore's writes still
    finish one by one, each printing a traceback, possibly after the failure was reported."""
    tb = unraisable.exc_traceback
    return (
        type(unraisable.exc_value) is RuntimeError
        and str(unraisable.exc_value) == "Event loop is closed"
        and tb is not None
        and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"
    )


def _an_abandoned_read(unraisable: Any) -> bool:
    """True for the error an orbax read coroutine raises when it is closed unfinished: after a
    failed read its sibling reads are left suspended, and when they are collected (at some
    later orbax call) orbax's ``except BaseException`` turns the ``GeneratorExit`` of each into
    "Encountered error while reading array index", a 60-line traceback apiece. Only those that
    name a folder where a failure was reported."""
    error = unraisable.exc_value
    return (
        inspect.iscoroutine(unraisable.object)
        and isinstance(getattr(error, "__cause__", None), GeneratorExit)
        and _names_a_failed_folder(str(error))
    )


def _without_late_wakeups(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """``sys.unraisablehook`` that drops :func:`_a_late_wakeup` and :func:`_an_abandoned_read`
    errors and passes the rest on to ``hook``; installed (once) from the first reported orbax
    failure on."""
    if getattr(hook, "_drops_late_wakeups", False):
        return hook

    def filtered(unraisable: Any) -> None:
        if not (_a_late_wakeup(unraisable) or _an_abandoned_read(unraisable)):
            hook(unraisable)

    filtered._drops_late_wakeups = True  # type: ignore[attr-defined]
    return filtered


@contextlib.contextmanager
def _orbax_failures(directory: pathlib.Path):
    """Run an orbax read or write in ``directory``, collecting what failed instead of letting
    orbax report it.

    Yields a list; the caller appends the failure's description there (from an ``except``
    inside the block). orbax reports a failure itself, hundreds of lines: an ERROR log with a
    traceback from each of its threads, "exception ignored" tracebacks from its callbacks,
    asyncio's "exception was never retrieved" for each abandoned task when it is collected,
    and "coroutine ... was never awaited" warnings.
    All are silenced while the block runs, and after a failure, once the caller's exception
    (whose frames hold the tasks) is gone, the abandoned tasks are collected here, still
    silenced. The caller reports the failure once; the writes tensorstore finishes later,
    after orbax closed their event loop, stay silent too (:func:`_without_late_wakeups`)."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]

    def mute(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    for logger in loggers:
        logger.addFilter(mute)
    hook, sys.unraisablehook = sys.unraisablehook, lambda *_: None
    failures: list[str] = []
    try:
        with warnings.catch_warnings():
            # ... and Python's warning for each of its coroutines that a failure left unrun.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            try:
                yield failures
            finally:
                if failures:
                    gc.collect()
    finally:
        if failures:
            _FAILED_IN.add(str(directory))
            logging.getLogger("asyncio").addFilter(_not_an_abandoned_orbax_task)
            logging.getLogger("absl").addFilter(_not_about_a_failed_folder)
            hook = _without_late_wakeups(hook)
        sys.unraisablehook = hook
        for logger in loggers:
            logger.removeFilter(mute)


@contextlib.contextmanager
def _interrupt_after():
    """Hold back a Ctrl-C (SIGINT) that arrives while the block runs and raise it once the block
    has finished, so that a checkpoint being written is completed, not abandoned to orbax's
    threads half-way (which then print tracebacks as the interpreter shuts down under them). A
    second Ctrl-C interrupts at once. Only Python's own handler is replaced: an ignored SIGINT,
    another library's handler, or a thread other than the main one leave things as they are."""
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    replaced = False
    with contextlib.suppress(ValueError):  # not the main thread
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, hold)
            replaced = True
    try:
        yield
    finally:
        if replaced:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


class NonFiniteStateError(FloatingPointError):
    """A state with NaN or infinite parameters was about to be saved."""


def _fields(state: TrainState) -> dict[str, Any]:
    """The state's saved fields by name (also for a tree like the state, e.g. its shardings)."""
    return {
        "step": state.step,
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


def _saveable(state: TrainState) -> dict[str, Any]:
    """The state's arrays, with the typed PRNG key as its raw uint32 data."""
    return {**_fields(state), "rng": jax.random.key_data(state.rng)}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _layout(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params.conv1.kernel": (shape, dtype), ...}``: the names orbax stores arrays under."""
    return {
        ".".join(_key_name(k) for k in path): (tuple(np.shape(x)), str(np.dtype(x.dtype)))
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def _differences(saved: dict, wanted: dict) -> list[str]:
    out = [f"{name} is not in this run's state" for name in sorted(saved.keys() - wanted.keys())]
    out += [f"{name} is missing" for name in sorted(wanted.keys() - saved.keys())]
    out += [
        f"{name} has shape {saved[name][0]} {saved[name][1]}, this run {wanted[name][0]} "
        f"{wanted[name][1]}"
        for name in sorted(saved.keys() & wanted.keys())
        if saved[name] != wanted[name]
    ]
    return out


def all_finite(tree: Any) -> bool:
    """Whether every floating-point leaf of ``tree`` is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, np.inexact)]
    return not leaves or bool(_all_finite(leaves))


@jax.jit
def _all_finite(leaves: list[Any]) -> jax.Array:
    # One program for the whole tree: op by op, every leaf shape compiled two of its own.
    return jax.numpy.all(jax.numpy.stack([jax.numpy.isfinite(x).all() for x in leaves]))


def _restore_target(template: TrainState, shardings: Any) -> tuple[Any, Any]:
    """What a restore reads into: the abstract arrays of ``template``'s saved fields (placed by
    ``shardings`` when given, else where the template's arrays are) and their layout, which a
    checkpoint's metadata is compared with."""
    saveable = _saveable(template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saveable)
    if shardings is not None:  # the key's raw data lies where the key did
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            _fields(shardings),
        )
    return abstract, _layout(saveable)


class Checkpointer:
    """Save and restore ``(state, data_state, meta)`` under ``directory``.

    Args:
      directory: where the numbered checkpoints live.
      max_to_keep: how many of the newest checkpoints to keep.
      create: create ``directory`` if it is missing (``False`` for read-only uses).
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, create: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = pathlib.Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            # orbax logged "Not a directory" from a thread of its own and went on
            raise NotADirectoryError(f"checkpoints: {self.directory} is a file, not a folder")
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        # A writer first removes the temporary folders of writes that never finished (a crash,
        # a second Ctrl-C); a reader (create=False: gdjax eval) changes nothing.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=create,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=create,
        )
        # Handlers named up front, so that a checkpoint's metadata reads before any restore.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )
        self.unreadable: set[int] = set()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: Any, meta: dict) -> bool:
        """Write checkpoint ``step``; returns False when a readable one exists already.

        Raises :class:`NonFiniteStateError` (writing nothing) when a parameter is not finite,
        and :class:`CheckpointWriteError` when the files cannot be written (the partial ones
        are removed). An existing step that :meth:`restore_latest` found unreadable is
        replaced. A Ctrl-C during the write raises ``KeyboardInterrupt`` once the checkpoint is
        complete; a second one abandons it (what orbax's threads go on writing is removed when
        the directory is next opened for writing).
        """
        if not all_finite(state.params):
            raise NonFiniteStateError(f"step {step}: the parameters hold NaN or inf; not saved")
        if step in self._manager.all_steps():
            if step not in self.unreadable:
                return False
            self._move_aside(step)
        # A Ctrl-C during the write takes effect once the checkpoint is complete, or once a
        # failed write has been cleaned up and reported (the write's error is then raised).
        with _interrupt_after():
            with _orbax_failures(self.directory) as failed:
                try:
                    self._manager.save(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardSave(_saveable(state)),
                            data=ocp.args.JsonSave(data_state),
                            meta=ocp.args.JsonSave(meta),
                        ),
                        force=True,
                    )
                    self._manager.wait_until_finished()
                except KeyboardInterrupt:  # a second Ctrl-C: this checkpoint is given up
                    failed.append("interrupted")
                    self._remove_partial(step)
                    raise
                except Exception as e:
                    failed.append(_write_failure(e))
            if failed:
                self._remove_partial(step)
                newest = self.newest_good()
                kept = (
                    f"checkpoint {newest} is kept"
                    if newest is not None
                    else "there is no older one"
                )
                raise CheckpointWriteError(
                    f"checkpoint {step} could not be written in {self.directory} "
                    f"({failed[0]}); its partial files were removed and {kept}"
                )
            self.unreadable.discard(step)
        return True

    def set_aside(self, first_step: int, why: str = "nonfinite") -> list[int]:
        """Move checkpoints from ``first_step`` on to ``<directory>.<why>/`` (e.g. those whose
        parameters gave a non-finite loss); returns their steps."""
        steps = [s for s in self.all_steps() if s >= first_step]
        for step in steps:
            self._move_aside(step, why)
        return steps

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed or abandoned write of ``step`` left: orbax's temporary folder
        (``<step>.orbax-checkpoint-tmp...``), never a finalized checkpoint."""
        for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        self._manager.reload()

    def newest_good(self) -> int | None:
        """The newest step that is neither set aside nor known to be unreadable."""
        good = [s for s in self.all_steps() if s not in self.unreadable]
        return good[-1] if good else None

    def _move_aside(self, step: int, why: str = "unreadable") -> None:
        aside = self.directory.with_name(f"{self.directory.name}.{why}")
        aside.mkdir(exist_ok=True)
        target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.directory / str(step), target)
        self._manager.reload()
        warnings.warn(f"{why} checkpoint {step} moved to {target}", stacklevel=3)

    def restore_latest(
        self, template: TrainState, shardings: Any = None
    ) -> tuple[TrainState, Any, dict] | None:
        """The newest readable checkpoint as ``(state, data_state, meta)``, or ``None``.

        ``template`` gives the structure, shapes, dtypes and, unless ``shardings`` (a tree
        like the state, of :class:`jax.sharding.Sharding`) is given, the shardings to restore
        into. Each device reads its own part, whatever topology wrote the checkpoint. Raises
        :class:`CheckpointMismatchError` when the newest readable checkpoint holds another
        structure.
        """
        target = _restore_target(template, shardings)
        steps = self.all_steps()
        for step in reversed(steps):
            read = self._read(step, template, *target)
            if isinstance(read, tuple):
                return read
            left = "trying an older one" if step != steps[0] else "none is left"
            warnings.warn(f"{self._unreadable(step, read)}; {left}", stacklevel=2)
        return None

    def restore_step(
        self, template: TrainState, step: int, shardings: Any = None
    ) -> tuple[TrainState, Any, dict]:
        """Checkpoint ``step`` as ``(state, data_state, meta)``, as :meth:`restore_latest`
        restores it, with no fallback: raises :class:`FileNotFoundError` when the directory
        keeps no checkpoint of that step (naming those it keeps) and
        :class:`CheckpointUnreadableError` when its files are damaged."""
        if not is_int(step) or step < 0:  # True == 1 and 2.0 == 2 would find a step
            raise ValueError(f"restore_step: step must be an integer >= 0, got {step!r}")
        kept = self.all_steps()
        if step not in kept:
            which = ", ".join(map(str, kept)) if kept else "none"
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory} (it keeps steps: {which})"
            )
        restored = self._read(step, template, *_restore_target(template, shardings))
        if not isinstance(restored, tuple):
            raise CheckpointUnreadableError(self._unreadable(step, restored))
        return restored

    def _unreadable(self, step: int, failure: str) -> str:
        return (
            f"checkpoint {step} in {self.directory} is unreadable (damaged or incomplete "
            f"files: {failure})"
        )

    def _read(
        self, step: int, template: TrainState, abstract: Any, wanted: Any
    ) -> tuple[TrainState, Any, dict] | str:
        """Checkpoint ``step`` restored into ``abstract`` (:func:`_restore_target`), or, when
        its files cannot be read, the name of the failure (the step is then remembered as
        unreadable)."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception:  # orbax raises many kinds on damaged metadata
            metadata = None
        if metadata is not None:
            saved = _layout(getattr(metadata, "tree", metadata))
            differences = _differences(saved, wanted)
            if differences:
                raise CheckpointMismatchError(self.directory, step, differences)
        with _orbax_failures(self.directory) as failed:
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract),
                        data=ocp.args.JsonRestore(),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                arrays = restored["state"]
                if int(arrays["step"]) != step:
                    raise ValueError(f"it holds step {int(arrays['step'])}")
            except Exception as e:  # any unreadable checkpoint
                failed.append(type(e).__name__)
        if failed:
            self.unreadable.add(step)
            return failed[0]
        state = template.replace(
            step=arrays["step"],
            params=arrays["params"],
            model_state=arrays["model_state"],
            opt_state=arrays["opt_state"],
            rng=jax.random.wrap_key_data(arrays["rng"], impl=jax.random.key_impl(template.rng)),
        )
        return state, restored["data"], dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()
