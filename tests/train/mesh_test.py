"""Data x model parallelism on 8 fake CPU devices: the paper's two-GPU split as a mesh axis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testing import jit_init
from scale_model import compile_step, per_device_bytes
from train.parallel_test import batches, max_diff

import gdjax
from gdjax.models import AlexNet
from gdjax.train import Parallel, TrainState, collectives


def run(mode, model_parallel=1, impl="auto", **model_fields):
    """Three training steps with dropout on, then one evaluation; params, metrics, evaluation.

    Momentum, not Adam: Adam divides tiny gradients by their own size and so turns float32
    round-off into visible differences.
    """
    model = AlexNet(
        num_classes=10,
        variant="small",
        in_channels=1,
        dropout_rate=0.5,
        partitioned=True,
        impl=impl,
        **model_fields,
    )
    variables = jit_init(model)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    state = TrainState.create(
        apply_fn=model.apply, variables=variables, tx=gdjax.momentum(0.05), rng=jax.random.key(1)
    )
    par = Parallel(mode, model_parallel=model_parallel)
    state = par.put_state(state)
    history = []
    for b in batches():
        state, metrics = par.train_step(state, par.put_batch(b))
        history.append(jax.device_get(metrics))
    evals = jax.device_get(par.eval_step(state, par.put_batch(batches(1, 16, 9)[0])))
    state = par.get_state(state)
    return par.to_host((state.params, state.opt_state)), history, evals


@pytest.mark.parametrize(
    "fields, impl",
    [
        ({"groups": 2}, "onednn"),
        ({"groups": 2}, "xla"),
        ({}, "onednn"),
        ({"groups": 2, "fused_relu": True}, "onednn"),
    ],
    ids=[
        "towers (the paper's split), oneDNN",
        "towers, XLA",
        "fc layers only, oneDNN",
        "towers, bias and ReLU fused into oneDNN's convolution",
    ],
)
def test_a_4x2_mesh_trains_like_one_device(fields, impl):
    if impl == "onednn" and not gdjax.models.onednn_status()[0]:
        pytest.skip(f"oneDNN kernels unavailable: {gdjax.models.onednn_status()[1]}")
    ref_state, ref_hist, ref_eval = run("none", impl=impl, **fields)
    state, hist, evals = run("sharded", model_parallel=2, impl=impl, **fields)
    assert max_diff(state, ref_state) < 1e-5  # parameters and optimizer state
    for h, r in zip(hist, ref_hist, strict=True):
        for k in r:
            assert float(h[k]) == pytest.approx(float(r[k]), rel=1e-5, abs=1e-6), k
    for k in ref_eval:
        assert float(evals[k]) == pytest.approx(float(ref_eval[k]), rel=1e-5), k


def abstract_step(variant, size, model_parallel, batch=8, classes=1000):
    """The sharded training step of a variant, compiled from shapes alone (no arrays), and
    its collectives."""
    channels = 1 if variant == "small" else 3
    model = AlexNet(num_classes=classes, variant=variant, in_channels=channels, partitioned=True)
    tx = gdjax.momentum(0.01)
    par, state, compiled = compile_step(model, (size, size, channels), batch, model_parallel, tx)
    return par, state, collectives(compiled.as_text(), par.mesh)


def total_bytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_paper_network_on_a_4x2_mesh_talks_where_the_paper_says():
    """AlexNet §3.2 / Figure 2: conv3 and the fully connected layers read both GPUs' maps;
    conv2, conv4 and conv5 only their own GPU's. So the only collectives over the "model"
    axis are the gathers of conv3's and fc6-fc8's inputs and, in the backward pass, the sums
    of their gradients; the "data" axis carries the gradient all-reduce and nothing else."""
    _, state, found = abstract_step("paper", 227, model_parallel=2)
    b = 8 // 4  # examples per data group
    boundary = {  # the inputs of the layers that read both towers, without the batch axis
        "conv3": (13, 13, 256),
        "fc6": (6, 6, 256),
        "fc6 (flat)": (9216,),
        "fc7 / fc8": (4096,),
    }
    model = [c for c in found if c.axes == ("model",)]
    data = [c for c in found if c.axes == ("data",)]
    both = [c for c in found if c.axes == ("data", "model")]
    assert model and data
    seen = set()
    for c in model:
        assert c.kind in ("all-gather", "all-reduce"), c
        for shape in c.shapes:
            assert shape[0] == b and shape[1:] in boundary.values(), c
            seen.add(shape[1:])
    # Forward: all four boundaries gathered; backward: their gradients summed.
    gathered = {s[1:] for c in model if c.kind == "all-gather" for s in c.shapes}
    assert {(13, 13, 256), (4096,)} <= gathered and gathered & {(6, 6, 256), (9216,)}
    summed = {s[1:] for c in model if c.kind == "all-reduce" for s in c.shapes}
    assert (13, 13, 256) in summed and (4096,) in summed
    # Data axis: one all-reduce of each device's share of the gradients (+ scalar metrics).
    assert {c.kind for c in data} == {"all-reduce"}
    params_here = per_device_bytes(state.params)
    reduced = sum(c.bytes for c in data)
    assert params_here <= reduced <= params_here + 1024
    assert all(np.prod(s) <= 1 for c in both for s in c.shapes), both
    # Each device holds about half of the parameters and optimizer state (fc8 is whole).
    for part in (state.params, state.opt_state):
        share = per_device_bytes(part) / total_bytes(part)
        assert 0.5 <= share < 0.55, share


def test_torchvision_on_a_4x2_mesh_splits_only_its_fully_connected_layers():
    _, state, found = abstract_step("torchvision", 63, model_parallel=2)
    for name, layer in state.params.items():
        spec = layer["kernel"].sharding.spec
        if name in ("fc6", "fc7"):
            assert spec == jax.sharding.PartitionSpec(None, "model"), name
        else:
            assert all(axis is None for axis in spec), name
    model = [c for c in found if c.axes == ("model",)]
    assert model and all(s[1:] in {(9216,), (6, 6, 256), (4096,)} for c in model for s in c.shapes)


@pytest.mark.parametrize(
    "mode, model_parallel, message",
    [
        ("pmap", 2, "model_parallel=2 needs parallel='sharded'"),
        ("sharded", 3, "model_parallel=3 does not divide the 8 devices of each process"),
        ("sharded", 0, "model_parallel must be an int >= 1, got 0"),
        ("sharded", 2.0, "model_parallel must be an int >= 1, got 2.0"),
    ],
)
def test_bad_model_parallel_is_named(mode, model_parallel, message):
    with pytest.raises(ValueError, match=message):
        Parallel(mode, model_parallel=model_parallel)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l2": -5e-4}, "l2 must be a finite number >= 0, got -0.0005"),  # was taken: wd < 0
        ({"l2": float("nan")}, "l2 must be a finite number >= 0, got nan"),
        ({"label_smoothing": 1.5}, r"label_smoothing must be in \[0, 1\), got 1.5"),
        ({"label_smoothing": "0.1"}, r"label_smoothing must be in \[0, 1\), got '0.1'"),
    ],
)
def test_bad_loss_terms_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Parallel("none", **kwargs)
    Parallel("none", l2=np.float32(5e-4), label_smoothing=np.float32(0.1))  # numbers of numpy


def test_indivisible_batch_names_the_data_groups():
    with pytest.raises(ValueError, match="not divisible by the 4 data-parallel groups"):
        Parallel("sharded", model_parallel=2).check_batch_size(6)
    Parallel("sharded", model_parallel=2).check_batch_size(4)


# ---------------------------------------------------------------------------------------------
# Four real processes on localhost, two CPU devices each: one 4x2 mesh, the model axis inside
# each process, the data axis across them.

MESH_WORKER = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
import numpy as np
from gdjax.train import initialize_distributed

address, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
initialize_distributed(address, num_processes=4, process_id=pid)
assert jax.process_count() == 4 and jax.device_count() == 8
sys.path.insert(0, os.environ["GDJAX_TESTS"])
from train.mesh_test import train_on_mesh

params = train_on_mesh("sharded", model_parallel=2)
if pid == 0:
    np.savez(out, **params)
print("done", pid, flush=True)
"""


def train_on_mesh(mode, model_parallel=1, steps=3, batch_size=16):
    """Three steps of the two-tower small AlexNet with dropout, each process reading its own
    share of the loader's global batches; the parameters on every process, flattened."""
    from train.parallel_test import global_source

    from gdjax import data

    stats = data.compute_stats(global_source(), max_examples=None)
    loader = data.make_loader(
        global_source(), batch_size=batch_size, transform=data.SmallEval(stats), seed=5
    )
    model = AlexNet(
        num_classes=10, variant="small", in_channels=1, groups=2, dropout_rate=0.5,
        partitioned=True,
    )  # fmt: skip
    variables = jit_init(model)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    state = TrainState.create(
        apply_fn=model.apply, variables=variables, tx=gdjax.momentum(0.05), rng=jax.random.key(1)
    )
    par = Parallel(mode, model_parallel=model_parallel)
    state = par.put_state(state)
    it = iter(loader)
    for _ in range(steps):
        state, _ = par.train_step(state, par.put_batch(next(it)))
    params = par.to_host(par.get_state(state).params)
    return {
        "/".join(k.key for k in path): np.asarray(v)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_four_processes_on_a_4x2_mesh_match_one(tmp_path):
    from processes import run_workers

    out = tmp_path / "params.npz"
    logs = run_workers(4, MESH_WORKER, [str(out)], timeout=400)
    assert all(f"done {pid}" in log for pid, log in enumerate(logs))
    got, want = dict(np.load(out)), train_on_mesh("none")
    assert got.keys() == want.keys()
    for k in want:
        # float32 round-off: the processes sum the gradients in another order.
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-5, err_msg=k)
