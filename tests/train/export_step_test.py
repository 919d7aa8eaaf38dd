"""The training step of every parallel mode, exported for TPU and GPU from a CPU (8 fake
devices): nothing CPU-only inside, and the meshes' shardings in the artefact."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scale_model
from jax import export as jax_export
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from model_testing import onednn_calls

import gdjax
from gdjax.models import AlexNet
from gdjax.train import Parallel, train_step

PLATFORMS = ("tpu", "cuda")
BATCH = 16


def boxed_state():
    model = AlexNet(num_classes=10, variant="small", in_channels=1, groups=2, partitioned=True)
    return scale_model.boxed_state(model, (28, 28, 1), gdjax.momentum(0.05))


def batch(sharding=None):
    return {
        "image": jax.ShapeDtypeStruct((BATCH, 28, 28, 1), jnp.float32, sharding=sharding),
        "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=sharding),
    }


def flat(step, state):
    """``step(state, batch)`` as a function of the state's leaves: an exported artefact's
    arguments must be arrays and pytrees that jax.export can serialise (TrainState holds the
    model's apply function and the optimizer)."""
    treedef = jax.tree.structure(state)

    def on_leaves(leaves, batch):
        new, metrics = step(treedef.unflatten(leaves), batch)
        return jax.tree.leaves(new), metrics

    return on_leaves


def export_step(mode):
    """The artefact of ``mode``'s training step, traced on the CPU for TPU and GPU."""
    state = nn.unbox(boxed_state())
    if mode == "none":
        step = jax.jit(flat(train_step, state))
        shapes = Parallel("none").abstract_state(state)
        return jax_export.export(step, platforms=PLATFORMS)(jax.tree.leaves(shapes), batch())
    if mode == "pmap":
        # jax.export takes jit, not pmap: the pmap mode's step (collectives over its named
        # axis) is exported as the same program under shard_map over a one-axis mesh.
        mesh = Mesh(np.asarray(jax.devices()), ("batch",))
        per_device = jax.shard_map(
            functools.partial(train_step, axis_name="batch"),
            mesh=mesh,
            in_specs=(P(), P("batch")),
            out_specs=(P(), P()),
        )
        whole = jax.tree.leaves(jax.tree.map(lambda _: NamedSharding(mesh, P()), state))
        split = NamedSharding(mesh, P("batch"))
        step = jax.jit(flat(per_device, state), in_shardings=(whole, split))
        args = jax.tree.leaves(Parallel("none").abstract_state(state)), batch()
        return jax_export.export(step, platforms=PLATFORMS)(*args)
    par = Parallel("sharded", model_parallel=2 if mode == "data x model mesh" else 1)
    leaves = [x.sharding for x in jax.tree.leaves(par.abstract_state(boxed_state()))]
    step = jax.jit(
        flat(par.train_step_function, state),
        in_shardings=(leaves, par.data_sharding),
        out_shardings=(leaves, par.replicated),
    )
    args = jax.tree.leaves(Parallel("none").abstract_state(state)), batch()
    with par.context():
        return jax_export.export(step, platforms=PLATFORMS)(*args)


@pytest.mark.parametrize("mode", ["none", "pmap", "data mesh", "data x model mesh"])
def test_every_parallel_mode_exports_its_training_step_for_tpu_and_gpu(mode):
    exported = export_step(mode)
    assert exported.platforms == PLATFORMS
    text = exported.mlir_module()
    assert not onednn_calls(text)  # no oneDNN call: lowered for TPU and GPU, XLA's kernels
    assert "stablehlo.custom_call @cpu" not in text
    # A serialised artefact round-trips (what a TPU or GPU host would load).
    again = jax_export.deserialize(exported.serialize())
    assert again.platforms == PLATFORMS
    # Shapes and dtypes (jax 0.9 round-trips an aval's other attributes differently).
    assert [(a.shape, a.dtype) for a in again.in_avals] == [
        (a.shape, a.dtype) for a in exported.in_avals
    ]
    if mode == "none":
        assert exported.nr_devices == 1
        return
    assert exported.nr_devices == 8
    # The shardings are in the artefact (Shardy annotations on its arguments) and come back
    # as the mesh's NamedShardings.
    module = again.mlir_module()
    if mode == "pmap":
        mesh, batch_axis = Mesh(np.asarray(jax.devices()), ("batch",)), "batch"
    else:
        ways = 2 if "model" in mode else 1
        devices = np.asarray(jax.devices()).reshape(8 // ways, ways)
        mesh, batch_axis = Mesh(devices, ("data", "model")), "data"
    names = ", ".join(f'"{n}"={k}' for n, k in mesh.shape.items() if k > 1 or mode != "data mesh")
    assert f"sdy.mesh @mesh = <[{names}" in module, module[:400]
    specs = [s.spec for s in again.in_shardings_jax(mesh)]
    state_specs, batch_specs = specs[:-2], specs[-2:]
    assert all(spec[0] == batch_axis for spec in batch_specs), batch_specs
    kernels = [
        spec
        for spec, aval in zip(state_specs, again.in_avals[: len(state_specs)], strict=True)
        if aval.ndim == 4
    ]
    assert kernels
    if mode == "data x model mesh":  # the towers' kernels: output maps over "model"
        assert all(spec == P(None, None, None, "model") for spec in kernels), kernels
    else:  # replicated
        assert all(all(a is None for a in spec) for spec in kernels), kernels
