"""Parallelism at the edge: the same pure step under ``jit``, ``pmap`` or a sharded ``jit``.

``parallel="none"``
    ``jax.jit`` on the default device; the batch is the whole global batch.
``parallel="pmap"``
    ``jax.pmap`` over the local devices with ``axis_name="batch"``: the state is replicated
    along a leading device axis, the batch split into equal per-device parts, and gradients
    and metrics averaged with ``lax.pmean``.
``parallel="sharded"``
    ``jax.jit`` over a one-axis :class:`jax.sharding.Mesh` of every device (all hosts): the
    state is replicated, the batch sharded along ``"data"``; XLA inserts the gradient
    all-reduce. In multi-host runs each process passes its own slice of the global batch.

:class:`Parallel` holds the mode and converts states and batches to and from the layout it
needs, so that the training loop stays one code path. Buffers of the state are donated.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax.train.steps import TrainState, eval_step, train_step

__all__ = ["MODES", "Parallel", "initialize_distributed"]

MODES = ("none", "pmap", "sharded")
AXIS = "batch"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start JAX's multi-controller runtime (``jax.distributed.initialize``) when asked.

    Arguments left ``None`` come from ``GDJAX_COORDINATOR``, ``GDJAX_NUM_PROCESSES`` and
    ``GDJAX_PROCESS_ID``, or are detected by JAX from the cluster (SLURM, TPU pods, ...).
    On the CPU, collectives across processes use gloo.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("GDJAX_COORDINATOR")
    if num_processes is None and "GDJAX_NUM_PROCESSES" in env:
        num_processes = int(env["GDJAX_NUM_PROCESSES"])
    if process_id is None and "GDJAX_PROCESS_ID" in env:
        process_id = int(env["GDJAX_PROCESS_ID"])
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


class Parallel:
    """One parallel mode: compiled steps and the state/batch layouts they expect.

    Args:
      mode: ``"none"``, ``"pmap"`` or ``"sharded"``.
      label_smoothing, l2: passed to :func:`~gdjax.train.steps.train_step`.
    """

    def __init__(self, mode: str = "none", *, label_smoothing: float = 0.0, l2: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"parallel must be one of {MODES}, got {mode!r}")
        self.mode = mode
        step = functools.partial(train_step, label_smoothing=label_smoothing, l2=l2)
        if mode == "none":
            self.num_devices = 1
            self._train = jax.jit(step, donate_argnums=0)
            self._eval = jax.jit(eval_step)
        elif mode == "pmap":
            self.num_devices = jax.device_count()
            self._train = jax.pmap(
                functools.partial(step, axis_name=AXIS), axis_name=AXIS, donate_argnums=0
            )
            self._eval = jax.pmap(functools.partial(eval_step, axis_name=AXIS), axis_name=AXIS)
        else:
            self.num_devices = jax.device_count()
            self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
            self.replicated = NamedSharding(self.mesh, P())
            self.data_sharding = NamedSharding(self.mesh, P("data"))
            self._train = jax.jit(step, donate_argnums=0, out_shardings=self.replicated)
            self._eval = jax.jit(eval_step, out_shardings=self.replicated)

    # -- layout ---------------------------------------------------------------------------------

    def check_batch_size(self, global_batch_size: int) -> None:
        """Raise before any compile if the global batch cannot be split over the devices."""
        if global_batch_size % self.num_devices:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by the "
                f"{self.num_devices} devices of parallel={self.mode!r}; use a multiple of "
                f"{self.num_devices}"
            )

    def put_state(self, state: TrainState) -> TrainState:
        """A copy of ``state`` placed where the steps expect it (the steps donate their input
        state, so the caller's arrays are never consumed)."""
        state = jax.tree.map(jnp.copy, state)
        if self.mode == "pmap":
            n = jax.local_device_count()
            stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state)
            return jax.pmap(lambda s: s, axis_name=AXIS)(stacked)  # one copy per device
        if self.mode == "sharded":
            return jax.tree.map(self._replicate, state)
        return state

    def _replicate(self, x: jax.Array) -> jax.Array:
        """A copy of ``x`` on every device of every process (each process holds the value)."""
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = self._replicate(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])

    def get_state(self, state: TrainState) -> TrainState:
        """The state as one copy (the first device's under pmap), for saving or inspection."""
        return self._first(state)

    def put_batch(self, batch: dict[str, np.ndarray]) -> Any:
        """This process's part of the global batch, laid out for the steps."""
        if self.mode == "pmap":
            n = jax.local_device_count()

            def split(x):
                if x.shape[0] % n:
                    raise ValueError(
                        f"per-process batch {x.shape[0]} is not divisible by {n} local devices"
                    )
                return x.reshape(n, x.shape[0] // n, *x.shape[1:])

            return jax.tree.map(split, batch)
        if self.mode == "sharded":
            return jax.tree.map(
                lambda x: jax.make_array_from_process_local_data(self.data_sharding, x), batch
            )
        return jax.device_put(batch)

    # -- steps ----------------------------------------------------------------------------------

    def train_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        state, metrics = self._train(state, batch)
        return state, self._first(metrics)

    def eval_step(self, state: TrainState, batch: Any) -> dict:
        return self._first(self._eval(state, batch))

    def _first(self, tree: Any) -> Any:
        """Under pmap, the first device's copy of a replicated pytree; else the pytree."""
        return jax.tree.map(lambda x: x[0], tree) if self.mode == "pmap" else tree
