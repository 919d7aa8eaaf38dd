"""The paper preset at pod scale, on paper: bytes each device sends per training step in each
parallel mode (read from the compiled HLO on 8 fake CPU devices), and a projected step time
at 8, 64 and 256 chips.

    python experiments/scale_model.py            # prints the tables, writes results/scale_model

Measured (from the compiled program): the collectives of one training step of AlexNet
(``paper``, 1000 classes, float32 parameters) with 128 images per data-parallel group, for
data parallelism (mesh 8x1) and data x model (mesh 4x2, the paper's two-GPU split), and the
step's floating-point operations (XLA's cost analysis).

Modelled (not measured): ring collectives (an all-reduce over ``k`` devices sends
``2 (k-1)/k`` of its bytes from each device, an all-gather ``(k-1)/k``), hierarchical past one
fast domain (a ring inside each 8-GPU node, then each GPU's 1/8 across nodes), no overlap of
communication with computation, and computation at an assumed 40% of the chip's peak bf16
rate. Sources of the hardware figures (vendor specifications):

- TPU v5e: 197 TFLOP/s bf16 per chip; 400 GB/s bidirectional ICI per chip (so 200 GB/s
  out of each chip), 2-D torus, 256 chips per pod. https://cloud.google.com/tpu/docs/v5e
- H100 SXM5: 989 TFLOP/s bf16 dense; NVLink 900 GB/s bidirectional per GPU inside an 8-GPU
  node (450 GB/s out); across nodes one 400 Gb/s InfiniBand NDR port per GPU (50 GB/s).
  https://www.nvidia.com/en-us/data-center/h100/
"""

from __future__ import annotations

import os
import pathlib
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import jax.numpy as jnp
import numpy as np
from common import parser, write_results

import gdjax
from gdjax.models import AlexNet
from gdjax.train import Parallel, TrainState, collectives

PER_GROUP = 128  # images per data-parallel group per step (the paper's batch)
MFU = 0.40  # assumed fraction of peak the step's arithmetic reaches
CHIPS = {
    # name: (peak bf16 FLOP/s, bytes/s out of a chip inside its fast domain, domain size,
    #        bytes/s out of a chip across domains)
    "TPU v5e": (197e12, 200e9, 256, 200e9),
    "H100 SXM5": (989e12, 450e9, 8, 50e9),
}


def boxed_state(model: AlexNet, image_shape: tuple[int, ...], tx) -> TrainState:
    """``model``'s training state as shapes (``jax.eval_shape``, nothing allocated), with the
    parameters and the optimizer state that mirrors them still in their partitioning boxes."""
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))
    return jax.eval_shape(
        lambda v: TrainState.create(
            apply_fn=model.apply, variables=v, tx=tx, rng=jax.random.key(1)
        ),
        variables,
    )


def compile_step(
    model: AlexNet, image_shape: tuple[int, ...], batch: int, model_parallel: int, tx
) -> tuple[Parallel, TrainState, object]:
    """``model``'s sharded training step for a global ``batch`` of images, compiled from shapes
    alone: ``(parallel, the state's shapes with their shardings, the compiled step)``."""
    par = Parallel("sharded", model_parallel=model_parallel)
    state = par.abstract_state(boxed_state(model, image_shape, tx))
    where = par.data_sharding
    images = {
        "image": jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32, sharding=where),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=where),
    }
    return par, state, par.compile_train_step(state, images)


def per_device_bytes(tree) -> int:
    """Bytes of ``tree`` (shapes with shardings) that the first device holds."""
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree.leaves(tree)
    )


def measure(model_parallel: int) -> dict:
    """Collectives and FLOPs of the paper preset's step on an 8-device mesh."""
    # XLA's kernels (what a TPU or GPU runs): the CPU's oneDNN calls hide their FLOPs from the
    # cost analysis.
    model = AlexNet(num_classes=1000, variant="paper", partitioned=True, impl="xla")
    groups = jax.device_count() // model_parallel
    par, state, compiled = compile_step(
        model, (227, 227, 3), PER_GROUP * groups, model_parallel, gdjax.alexnet_sgd(0.01)
    )
    found = collectives(compiled.as_text(), par.mesh)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    by_axis: dict[str, dict[str, float]] = {}
    for c in found:
        axis = "+".join(c.axes) or "none"
        row = by_axis.setdefault(axis, {"count": 0, "bytes": 0.0, "sent": 0.0})
        row["count"] += 1
        row["bytes"] += c.bytes
        row["sent"] += c.sent
    return {
        "mesh": f"{groups}x{model_parallel}",
        "collectives": [
            {
                "kind": c.kind,
                "axes": list(c.axes),
                "shapes": [list(s) for s in c.shapes],
                "bytes": c.bytes,
                "sent": c.sent,
                "op": c.op_name,
            }
            for c in found
        ],
        "by_axis": by_axis,
        "param_bytes_per_device": per_device_bytes(state.params),
        "flops_per_device": float(cost.get("flops", 0.0)),
    }


def project(measured: dict, model_parallel: int, chips: int, hardware: tuple) -> dict:
    """Step time (model) at ``chips`` chips, 128 images per data-parallel group."""
    peak, fast, domain, slow = hardware
    groups = chips // model_parallel
    compute = measured["flops_per_device"] / (peak * MFU)
    grads = measured["param_bytes_per_device"]
    # The gradient all-reduce over the data axis, hierarchical past one fast domain (as NCCL
    # does): a ring inside each domain, then each chip's 1/k of it across the domains.
    local = min(groups, domain // model_parallel)
    domains = groups // local
    inside = 2 * (local - 1) / local * grads / fast
    across = 2 * (domains - 1) / domains * grads / local / slow if domains > 1 else 0.0
    # The model axis (2 chips side by side) always lies inside the fast domain.
    model_sent = measured["by_axis"].get("model", {}).get("sent", 0.0)
    communicate = inside + across + model_sent / fast
    return {
        "chips": chips,
        "compute_ms": 1e3 * compute,
        "communicate_ms": 1e3 * communicate,
        "step_ms": 1e3 * (compute + communicate),
        "images_per_second": PER_GROUP * groups / (compute + communicate),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[0], "scale_model").parse_args(argv)
    started = time.perf_counter()
    if jax.device_count() < 8:
        raise SystemExit("needs 8 devices: run it as its own process (it sets XLA_FLAGS)")
    results: dict = {"per_group_batch": PER_GROUP, "mfu_assumed": MFU, "modes": {}}
    for mp, name in ((1, "data parallel (8x1)"), (2, "data x model (4x2)")):
        m = measure(mp)
        results["modes"][name] = m
        print(f"\n{name}: {m['param_bytes_per_device'] / 1e6:.1f} MB of parameters per device, "
              f"{m['flops_per_device'] / 1e9:.0f} GFLOP per device per step")  # fmt: skip
        for axis, row in sorted(m["by_axis"].items()):
            print(f"  {axis:>6}: {row['count']:2d} collectives, {row['bytes'] / 1e6:8.2f} MB "
                  f"collected, {row['sent'] / 1e6:8.2f} MB sent per device")  # fmt: skip
        m["projection"] = {}
        for hw, spec in CHIPS.items():
            rows = [project(m, mp, n, spec) for n in (8, 64, 256)]
            m["projection"][hw] = rows
            for r in rows:
                print(f"  {hw:>10} x{r['chips']:<4d} step {r['step_ms']:7.1f} ms "
                      f"(compute {r['compute_ms']:6.1f}, communication {r['communicate_ms']:6.1f}),"
                      f" {r['images_per_second']:9.0f} img/s")  # fmt: skip
    path = write_results(pathlib.Path(args.out), "scale_model", results, started)
    print(f"\nwritten to {path}")
    return results


if __name__ == "__main__":
    main()
