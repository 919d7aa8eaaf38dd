"""Checkpoints with orbax: the training state, the data iterator's position and loop metadata.

Every save goes to a temporary directory that orbax renames into place only once it is
complete, and older checkpoints are deleted only after a newer one is finalized, so a crash
or a full disk never leaves the run without a good checkpoint. On restore the newest
checkpoint is tried first; one that cannot be read (half-written, corrupted) is reported with
a warning and the next older one is used.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from gdjax.train.steps import TrainState

__all__ = ["Checkpointer"]


def _saveable(state: TrainState) -> dict[str, Any]:
    """The state's arrays, with the typed PRNG key as its raw uint32 data."""
    return {
        "step": state.step,
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "rng": jax.random.key_data(state.rng),
    }


class Checkpointer:
    """Save and restore ``(state, data_state, meta)`` under ``directory``.

    Args:
      directory: where the numbered checkpoints live (created if missing).
      max_to_keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: Any, meta: dict) -> None:
        """Write checkpoint ``step`` (a no-op if it exists already)."""
        if step in self._manager.all_steps():
            return
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

    def restore_latest(self, template: TrainState) -> tuple[TrainState, Any, dict] | None:
        """The newest readable checkpoint as ``(state, data_state, meta)``, or ``None``.

        ``template`` gives the structure, shapes, dtypes and shardings to restore into.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _saveable(template))
        for step in reversed(self.all_steps()):
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
                state = template.replace(
                    step=arrays["step"],
                    params=arrays["params"],
                    model_state=arrays["model_state"],
                    opt_state=arrays["opt_state"],
                    rng=jax.random.wrap_key_data(
                        arrays["rng"], impl=jax.random.key_impl(template.rng)
                    ),
                )
                if int(state.step) != step:
                    raise ValueError(f"holds step {int(state.step)}")
                return state, restored["data"], dict(restored["meta"])
            except Exception as e:  # any unreadable checkpoint: fall back to an older one
                warnings.warn(
                    f"checkpoint {step} in {self.directory} cannot be restored "
                    f"({type(e).__name__}: {str(e)[:200]}); trying an older one",
                    stacklevel=2,
                )
        return None

    def close(self) -> None:
        self._manager.close()
