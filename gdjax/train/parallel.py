"""Parallelism at the edge: the same pure step under ``jit``, ``pmap`` or a sharded ``jit``.

``parallel="none"``
    ``jax.jit`` on the default device; the batch is the whole global batch.
``parallel="pmap"``
    ``jax.pmap`` over the local devices with ``axis_name="batch"``: the state is replicated
    along a leading device axis, the batch split into equal per-device parts, and gradients
    and metrics averaged with ``lax.pmean``.
``parallel="sharded"``
    ``jax.jit`` over a :class:`jax.sharding.Mesh` of every device (all hosts) with axes
    ``("data", "model")``. The batch is split along ``"data"``. With ``model_parallel=1`` (the
    default) the ``"model"`` axis has size 1 and the state is replicated: data parallelism,
    XLA inserting the gradient all-reduce. With ``model_parallel=k`` the state's parameters
    (and the optimizer state that mirrors them) are split over ``k`` devices as the model's
    Flax partitioning annotations say (``AlexNet(partitioned=True)``: logical axes
    ``"maps"`` and ``"neurons"`` go to ``"model"``, ``"batch"`` to ``"data"``), and the
    model's sharding constraints make XLA's partitioner move activations only where the
    layers read the other devices' maps; the data axis takes the other ``n / k`` devices.
    The model axis stays inside a process (``k`` divides each process's device count), so
    its traffic never crosses hosts. In multi-host runs each process passes its own slice
    of the global batch.

:class:`Parallel` holds the mode and converts states and batches to and from the layout it
needs, so that the training loop stays one code path. Buffers of the state are donated.

On the CPU a jitted step (``"none"``, ``"sharded"``) also carries a gradient buffer: XLA's CPU
runtime allocates a program's temporaries afresh on every call, so without one the weight
gradients (244 MB for the torchvision AlexNet) land on freshly mapped pages each step, which
the kernel must fault in and zero; returned into a donated buffer of the parameters' shapes,
they are written into memory that stays mapped (``gradient_buffer``; README, "Where the speed
comes from").
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gdjax import host_memory
from gdjax._checks import check_finite, check_one_of, is_int
from gdjax.models import _onednn
from gdjax.models.alexnet import BATCH, MAPS, NEURONS
from gdjax.models.xla_options import compiler_options
from gdjax.train.steps import TrainState, eval_step, train_step, train_step_and_gradients

__all__ = [
    "MESH_AXES",
    "MODES",
    "RULES",
    "Parallel",
    "gradient_buffer_by_default",
    "initialize_distributed",
]

MODES = ("none", "pmap", "sharded")
AXIS = "batch"  # pmap's axis name
MESH_AXES = ("data", "model")
# Logical axis (the model's annotations) -> mesh axis.
RULES = ((BATCH, "data"), (MAPS, "model"), (NEURONS, "model"))


# jaxlib releases whose CPU runtime returns wrong results from a jitted function called again
# after a jitted function with donated arguments has run (the trainer's evaluation between
# training steps. Measured 2026-12-05 in a 3-layer MLP run 8-16 times a release: 0.8.0 and
# 0.8.1 wrong in most runs, 0.8.2, 0.8.3, 0.9.0 and 0.10.2 right in all).
_BAD_DONATION_JAXLIBS = ((0, 8, 0), (0, 8, 1))


def _check_jaxlib() -> None:
    """Raise if this jaxlib is one whose donation corrupts other programs' results."""
    version = _onednn.jaxlib_version()
    if version in _BAD_DONATION_JAXLIBS:
        raise RuntimeError(
            f"jaxlib {'.'.join(map(str, version))} returns wrong results from a jitted function "
            "run again after one with donated buffers (the evaluation between training steps); "
            "gdjax needs jax and jaxlib >= 0.8.2: pip install -U 'jax>=0.8.2' 'jaxlib>=0.8.2'"
        )


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
    coordinator_address = coordinator_address or env.get("GDJAX_COORDINATOR") or None

    def from_env(name: str) -> int | None:
        text = env.get(name, "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None

    if num_processes is None:
        num_processes = from_env("GDJAX_NUM_PROCESSES")
    if process_id is None:
        process_id = from_env("GDJAX_PROCESS_ID")
    if coordinator_address is not None:
        host, _, port = str(coordinator_address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                "coordinator_address must be host:port (where process 0 listens, e.g. "
                f"10.0.0.1:1234), got {coordinator_address!r}"
            )
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and (
        process_id < 0 or (num_processes is not None and process_id >= num_processes)
    ):
        bound = "" if num_processes is None else f" and < num_processes ({num_processes})"
        raise ValueError(f"process_id must be >= 0{bound}, got {process_id}")
    collectives = jax.config.jax_cpu_collectives_implementation
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    except ValueError as e:
        jax.config.update("jax_cpu_collectives_implementation", collectives)
        missing = [
            name
            for name, value in (("num_processes", num_processes), ("process_id", process_id))
            if value is None
        ]
        if coordinator_address is not None and missing and "must be defined" in str(e):
            # JAX's own words ("Number of processes must be defined.") name no argument.
            raise ValueError(
                f"coordinator_address {coordinator_address!r} given without "
                f"{' and '.join(missing)}, and JAX detected no cluster to take "
                f"{'them' if len(missing) > 1 else 'it'} from: give "
                + " and ".join(f"--{m}" for m in missing)
                + " (or "
                + ", ".join(f"GDJAX_{m.upper()}" for m in missing)
                + ")"
            ) from None
        if coordinator_address is not None or "coordinator_address" not in str(e):
            raise
        raise ValueError(
            "no coordinator: JAX detected no cluster (SLURM, Open MPI, a TPU pod, ...); give "
            "--coordinator_address=host:port with --num_processes and --process_id (or "
            "GDJAX_COORDINATOR, GDJAX_NUM_PROCESSES, GDJAX_PROCESS_ID)"
        ) from None


@jax.jit
def _copy_tree(tree: Any) -> Any:
    """Fresh buffers for every leaf (the steps donate the state, not the caller's arrays), in
    one program: leaf by leaf, eager copies compiled once per distinct shape."""
    return jax.tree.map(jnp.copy, tree)


def _is_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)


def _same(tree: Any) -> Any:
    return tree  # one function for every _replicate, so that pmap compiles it once per layout


def _replicate(tree: Any) -> Any:
    """One copy of every leaf per local device, stacked on a new leading axis as ``pmap``
    lays out its arguments. Each leaf goes through the host once (a broadcast view there, so
    each device gets its copy without ``n`` copies on one device first), which also accepts
    leaves committed to one device, as a restored checkpoint's are: ``pmap`` refuses those."""
    n = jax.local_device_count()

    def host(x: Any) -> np.ndarray:
        value = np.asarray(jax.random.key_data(x) if _is_key(x) else x)
        return np.broadcast_to(value, (n, *value.shape))

    placed = jax.pmap(_same, axis_name=AXIS)(jax.tree.map(host, tree))

    def rekey(p: jax.Array, x: Any) -> Any:
        return jax.random.wrap_key_data(p, impl=jax.random.key_impl(x)) if _is_key(x) else p

    return jax.tree.map(rekey, placed, tree)


@jax.jit
def _first_copy(tree: Any) -> Any:
    """The first device's copy of every leaf of a pmap-replicated pytree, in one program."""
    return jax.tree.map(lambda x: x[0], tree)


def gradient_buffer_by_default(mode: str = "none") -> bool:
    """:class:`Parallel`'s ``gradient_buffer=None``: whether a step of ``mode`` keeps its
    gradients in a donated buffer here (a jitted mode, every device a CPU, and the process's
    malloc not already keeping freed memory mapped, :func:`gdjax.host_memory.retained`)."""
    return (
        mode != "pmap"
        and all(d.platform == "cpu" for d in jax.devices())
        and not host_memory.retained()
    )


def _into_buffer(step_and_gradients: Any) -> Any:
    """``step(state, batch) -> (state, metrics, grads)`` as ``(state, buffer, batch) -> (state,
    metrics, grads)``, for a jit that donates ``buffer`` (and keeps it, unused): XLA then writes
    the gradients into the buffer's memory."""

    def step(state: TrainState, buffer: Any, batch: Any) -> Any:
        del buffer  # only its memory is used: the gradients' output aliases it
        return step_and_gradients(state, batch)

    return step


@functools.lru_cache(maxsize=8)
def _steps(label_smoothing: float, l2: float) -> tuple[Any, Any, Any]:
    """The pure training steps for one loss (plain, into a gradient buffer, and pmap's), the
    same objects for every :class:`Parallel` of that loss in the process.

    jit and pmap key their traces and compiled programs by the function (and by the state's
    static fields, which :func:`gdjax.train.build` shares too): a second run of an equal
    network and optimizer in one process (a notebook cell run again, a sweep over seeds)
    then traces, lowers and compiles nothing. The last eight losses are kept."""
    step = functools.partial(train_step, label_smoothing=label_smoothing, l2=l2)
    buffered = _into_buffer(
        functools.partial(train_step_and_gradients, label_smoothing=label_smoothing, l2=l2)
    )
    return step, buffered, functools.partial(step, axis_name=AXIS)


_PMAP_EVAL = functools.partial(eval_step, axis_name=AXIS)


def _zeros_like(tree: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, tree)


class Parallel:
    """One parallel mode: compiled steps and the state/batch layouts they expect.

    Args:
      mode: ``"none"``, ``"pmap"`` or ``"sharded"``.
      model_parallel: ``"sharded"`` only: size of the mesh's ``"model"`` axis (devices that
        split each layer between them); must divide every process's device count.
      label_smoothing, l2: passed to :func:`~gdjax.train.steps.train_step`.
      gradient_buffer: whether :meth:`train_step` keeps the gradients in a buffer of the
        parameters' shapes that each step donates and returns (module docstring): more memory
        held between steps (the size of the parameters), less faulted in during each. ``None``
        (the default): on the CPU in modes ``"none"`` and ``"sharded"``, unless
        :func:`gdjax.host_memory.retain_host_memory` already keeps the step's memory mapped
        (the ``gdjax`` command). Not for ``"pmap"``.
    """

    def __init__(
        self,
        mode: str = "none",
        *,
        model_parallel: int = 1,
        label_smoothing: float = 0.0,
        l2: float = 0.0,
        gradient_buffer: bool | None = None,
    ):
        check_one_of("parallel", mode, MODES)
        if gradient_buffer is not None and not isinstance(gradient_buffer, bool):
            raise ValueError(
                f"gradient_buffer must be True, False or None (automatic), got {gradient_buffer!r}"
            )
        if gradient_buffer and mode == "pmap":
            raise ValueError(
                "gradient_buffer=True is for parallel='none' or 'sharded' (jit), not 'pmap'"
            )
        if not is_int(model_parallel):
            raise ValueError(f"model_parallel must be an int >= 1, got {model_parallel!r}")
        if model_parallel < 1:
            raise ValueError(f"model_parallel must be an int >= 1, got {model_parallel!r}")
        # the config's checks, for the Python API (a negative l2 rewarded large weights)
        if not isinstance(label_smoothing, numbers.Real) or not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        check_finite("l2", l2)
        _check_jaxlib()
        if model_parallel > 1 and mode != "sharded":
            raise ValueError(
                f"model_parallel={model_parallel} needs parallel='sharded' (a device mesh), "
                f"not {mode!r}"
            )
        local = jax.local_device_count()
        if local % model_parallel:
            raise ValueError(
                f"model_parallel={model_parallel} does not divide the {local} devices of each "
                f"process (the model axis stays inside a process); use a divisor of {local}"
            )
        if gradient_buffer is None:
            gradient_buffer = gradient_buffer_by_default(mode)
        self.gradient_buffer = gradient_buffer
        self.mode = mode
        self.model_parallel = int(model_parallel)
        self._state_shardings: Any = None
        self._train_for: Any = None  # the state shardings the sharded step was jitted for
        self._gradients: Any = None  # the last step's gradients (gradient_buffer)
        self._eval_programs: dict[Any, Any] = {}  # jit/sharded eval steps, by compiler options
        step, self._buffered_step, pmap_step = _steps(float(label_smoothing), float(l2))
        self.train_step_function = step  # the pure step these compile (e.g. to export it)
        if mode == "none":
            self.num_devices = 1
            self._train = self._jit_train()
        elif mode == "pmap":
            self.num_devices = jax.device_count()
            self._train = jax.pmap(pmap_step, axis_name=AXIS, donate_argnums=0)
            self._eval = jax.pmap(_PMAP_EVAL, axis_name=AXIS)
        else:
            n = jax.device_count()
            self.num_devices = n // self.model_parallel  # the batch is split this many ways
            devices = mesh_utils.create_device_mesh(
                (n // self.model_parallel, self.model_parallel), jax.devices()
            )
            self.mesh = Mesh(devices, MESH_AXES)
            # Rules onto axes of one device would only add no-op collectives: leave them out.
            self.rules = tuple((name, axis) for name, axis in RULES if self.mesh.shape[axis] > 1)
            self.replicated = NamedSharding(self.mesh, P())
            self.data_sharding = NamedSharding(self.mesh, P("data"))

    # -- layout ---------------------------------------------------------------------------------

    def check_batch_size(self, global_batch_size: int) -> None:
        """Raise before any compile if the global batch cannot be split over the devices."""
        if global_batch_size % self.num_devices:
            where = (
                f"{self.num_devices} data-parallel groups of parallel='sharded' with "
                f"model_parallel={self.model_parallel}"
                if self.model_parallel > 1
                else f"{self.num_devices} devices of parallel={self.mode!r}"
            )
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by the {where}; use a "
                f"multiple of {self.num_devices}"
            )

    def state_shardings(self, state: TrainState) -> Any:
        """``"sharded"``: the :class:`~jax.sharding.NamedSharding` of every leaf of ``state``.

        Leaves boxed by Flax's partitioning annotations (``nn.LogicallyPartitioned``, also in
        the optimizer state, which ``tx.init`` builds leaf by leaf from the boxed parameters)
        are split as their logical axis names say (:data:`RULES`, for the axes of more than one
        device); a dimension the mesh axis does not divide stays whole; every other leaf is
        replicated.
        """
        if self.mode != "sharded":
            raise ValueError(f"state_shardings is for parallel='sharded', not {self.mode!r}")
        logical = nn.get_partition_spec(state)
        plain = nn.unbox(state)

        def sharding(spec: P, leaf: Any) -> NamedSharding:
            axes = nn.logical_to_mesh_axes(spec, self.rules) if spec else P()
            shape = np.shape(leaf)
            fitted = [
                axis if axis is None or shape[i] % self.mesh.shape[axis] == 0 else None
                for i, axis in enumerate(axes)
            ]
            return NamedSharding(self.mesh, P(*fitted))

        return jax.tree.map(sharding, logical, plain, is_leaf=lambda x: isinstance(x, P))

    def abstract_state(self, state: TrainState) -> TrainState:
        """``state`` (arrays, or shapes from ``jax.eval_shape``; boxed or not) as
        ``jax.ShapeDtypeStruct`` leaves laid out as the steps expect (``"sharded"``: with the
        mesh's shardings): to compile (:meth:`compile_train_step`) or export a step for a
        topology without allocating its arrays. Not for ``"pmap"`` (a leading device axis)."""
        if self.mode == "pmap":
            raise ValueError("abstract_state is for parallel='none' or 'sharded', not 'pmap'")
        plain = nn.unbox(state)
        if self.mode == "none":
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), plain)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=s),
            plain,
            self.state_shardings(state),
        )

    def put_state(self, state: TrainState, shardings: Any = None) -> TrainState:
        """A copy of ``state`` placed where the steps expect it (the steps donate their input
        state, so the caller's arrays are never consumed). Flax's partitioning boxes are
        removed; under ``"sharded"`` they say how to split the leaves, unless ``shardings``
        (from :meth:`state_shardings` of the boxed state) is given."""
        if self.mode == "sharded":
            if shardings is None:
                shardings = self.state_shardings(state)
            self._state_shardings = shardings
            return jax.tree.map(self._place, nn.unbox(state), shardings)
        if self.mode == "pmap":
            return _replicate(nn.unbox(state))
        return _copy_tree(nn.unbox(state))

    def _place(self, x: Any, sharding: NamedSharding) -> jax.Array:
        """A copy of ``x`` laid out as ``sharding`` over every process's devices (each process
        holds the whole value, or ``x`` is already a global array)."""
        if _is_key(x):
            data = self._place(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(jnp.copy, out_shardings=sharding)(x)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def get_state(self, state: TrainState) -> TrainState:
        """The state as one copy (the first device's under pmap), for saving or inspection
        (under ``"sharded"`` global arrays, possibly split between devices and processes; under
        ``"pmap"`` in a run of several processes, global arrays replicated over every process's
        devices, which is what orbax writes: each process's own copy is local to it)."""
        first = self._first(state)
        if self.mode == "pmap" and jax.process_count() > 1:
            everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), (AXIS,)), P())
            return jax.tree.map(lambda x: self._place(x, everywhere), first)
        return first

    def to_host(self, tree: Any) -> Any:
        """``tree`` (e.g. ``get_state(state).params``) as numpy arrays on every process; split
        arrays are gathered from the devices (and processes) that hold them."""

        def fetch(x: Any) -> Any:
            if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
                return np.asarray(multihost_utils.process_allgather(x, tiled=True))
            return np.asarray(jax.device_get(x))

        return jax.tree.map(fetch, tree)

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

    def compiled_train_step(self) -> Any:
        """The jitted (or pmapped) program :meth:`train_step` runs: ``(state, batch) -> (state,
        metrics)``, or with ``gradient_buffer`` ``(state, gradients, batch) -> (state, metrics,
        gradients)``, both donated. Under ``"sharded"`` call it inside :meth:`context`
        (``put_state`` must have run: its output fixes the state's layout)."""
        if self.mode != "sharded":
            return self._train
        if self._state_shardings is None:
            raise RuntimeError("Parallel('sharded'): put_state(state) before the first step")
        if self._train_for is not self._state_shardings:
            self._train = self._jit_train((self._state_shardings, self.replicated))
            self._train_for = self._state_shardings
        return self._train

    def _jit_train(self, out_shardings: tuple | None = None) -> Any:
        """The jitted training step, its state donated (with ``gradient_buffer`` the gradient
        buffer too, kept though unused, and the gradients laid out like the parameters);
        ``out_shardings``: the state's and the metrics' (``"sharded"``)."""
        kwargs: dict[str, Any] = {"compiler_options": compiler_options("train")}
        step, donate = self.train_step_function, 0
        if self.gradient_buffer:
            step, donate, kwargs["keep_unused"] = self._buffered_step, (0, 1), True
            if out_shardings is not None:
                out_shardings = (*out_shardings, out_shardings[0].params)
        if out_shardings is not None:
            kwargs["out_shardings"] = out_shardings
        return jax.jit(step, donate_argnums=donate, **kwargs)

    def compile_train_step(self, state: TrainState, batch: Any) -> Any:
        """The training step :meth:`train_step` runs, compiled for ``state`` and ``batch``
        (laid out by :meth:`put_state` and :meth:`put_batch`, or ``jax.ShapeDtypeStruct``
        leaves carrying those shardings), to read its HLO (:func:`gdjax.train.collectives`) or
        cost."""
        if self.mode == "sharded" and self._state_shardings is None:
            self._state_shardings = jax.tree.map(lambda x: x.sharding, state)
        args = (state, batch)
        if self.gradient_buffer:
            gradients = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(
                    jnp.shape(x), x.dtype, sharding=getattr(x, "sharding", None)
                ),
                state.params,
            )
            args = (state, gradients, batch)
        with self.context():
            return self.compiled_train_step().lower(*args).compile()

    def context(self) -> contextlib.AbstractContextManager:
        """Where the steps trace: under ``"sharded"`` this mesh and the logical-axis rules
        (so that the model's sharding constraints apply); elsewhere nothing."""
        if self.mode != "sharded":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def train_step(self, state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        """One compiled step on ``state`` (donated: use the returned one) and ``batch`` (laid
        out by :meth:`put_batch`); the metrics as one copy."""
        with self.context():
            if not self.gradient_buffer:
                state, metrics = self.compiled_train_step()(state, batch)
            else:
                step = self.compiled_train_step()
                state, metrics, self._gradients = step(state, self._buffer_for(state), batch)
        return state, self._first(metrics)

    def _buffer_for(self, state: TrainState) -> Any:
        """The last step's gradients if they fit ``state``'s parameters (same leaves, shapes,
        dtypes and layouts), else zeros that do; handed over (the step donates them)."""
        gradients, self._gradients = self._gradients, None

        def fits(g: Any, p: Any) -> bool:
            return (
                isinstance(g, jax.Array)
                and not g.is_deleted()
                and g.shape == p.shape
                and g.dtype == p.dtype
                and g.sharding == getattr(p, "sharding", None)
            )

        params = state.params
        if (
            gradients is not None
            and jax.tree.structure(gradients) == jax.tree.structure(params)
            and all(map(fits, jax.tree.leaves(gradients), jax.tree.leaves(params)))
        ):
            return gradients
        if self.mode == "sharded":
            return jax.jit(_zeros_like, out_shardings=self._state_shardings.params)(params)
        return jax.jit(_zeros_like)(params)

    def eval_step(self, state: TrainState, batch: Any) -> dict:
        # The optimizer is neither read nor passed: the eval program (keyed by the state's
        # static fields, the optimizer among them) is one per network and batch, shared by
        # runs of other optimizers in the process (a sweep traces and compiles it once).
        state = state.replace(opt_state=None, tx=None)
        with self.context():
            return self._first(self._eval_for(batch)(state, batch))

    def _eval_for(self, batch: Any) -> Any:
        """The eval step for this batch: under jit, compiled with the inference options for its
        rows per device (``compiler_options("infer", batch_size=...)``: on an x86 CPU without
        AVX-512 a large batch keeps YNNPACK's dots), one program per choice."""
        if self.mode == "pmap":
            return self._eval
        rows = max(1, jax.tree.leaves(batch)[0].shape[0] // self.num_devices)
        options = compiler_options("infer", batch_size=rows)
        key = tuple(sorted((options or {}).items()))
        if key not in self._eval_programs:
            kwargs: dict[str, Any] = {"compiler_options": options}
            if self.mode == "sharded":
                kwargs["out_shardings"] = self.replicated
            self._eval_programs[key] = jax.jit(eval_step, **kwargs)
        return self._eval_programs[key]

    def _first(self, tree: Any) -> Any:
        """Under pmap, the first device's copy of a replicated pytree; else the pytree."""
        return _first_copy(tree) if self.mode == "pmap" else tree
