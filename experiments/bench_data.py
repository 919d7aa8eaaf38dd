"""Images per second of the folder pipeline (JPEG decode, resize, AlexNet augmentation) with 0, 1
and 2 worker processes, printed beside the training step's images per second.

    python experiments/bench_data.py                       # 384 generated 500x375 JPEGs
    python experiments/bench_data.py --images 96 --json out.json

The folder is generated in a temporary directory (real JPEG files of ImageNet's typical size).
The training step is torchvision-layout AlexNet at 224×224: forward, backward and a momentum
update under ``jax.jit``; the pipeline keeps up when its rate exceeds the step's.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import nonnegative_int, positive_int

import gdjax
from gdjax import data
from gdjax.models import AlexNet, compiler_options


def write_jpegs(root: pathlib.Path, count: int, classes: int = 8, size=(375, 500)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = size
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    for i in range(count):
        d = root / "train" / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        (d / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def pipeline_rate(src, stats, batch: int, workers: int, batches: int) -> float:
    loader = data.make_loader(
        src,
        batch_size=batch,
        transform=data.AlexNetTrain(stats, crop=224),
        num_epochs=None,
        worker_count=workers,
        read_threads=2,
    )
    it = iter(loader)
    try:
        next(it)  # start-up (worker processes, first reads) is not throughput
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - t0)
    finally:
        it.close()  # stop the read-ahead threads before the folder goes away


def step_rate(batch: int, steps: int) -> float:
    model = AlexNet(num_classes=1000, variant="torchvision")
    params = jax.jit(model.init, compiler_options=compiler_options("init"))(
        jax.random.key(0), jnp.zeros((1, 224, 224, 3))
    )["params"]
    tx = gdjax.momentum(0.01)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    x = jnp.zeros((batch, 224, 224, 3))
    y = jnp.zeros((batch,), jnp.int32)
    params, opt_state = step(params, opt_state, x, y, jax.random.key(1))
    jax.block_until_ready(params)
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state = step(params, opt_state, x, y, jax.random.key(i))
    jax.block_until_ready(params)
    return steps * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=384, help="JPEGs to generate")
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--workers", type=nonnegative_int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=nonnegative_int, default=3, help="training steps to time (0: skip)"
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if args.images < 2 * args.batch:
        parser.error(f"--images must be at least twice --batch, got {args.images}")

    results: dict = {"batch": args.batch, "pipeline_images_per_s": {}}
    tmp = tempfile.TemporaryDirectory()
    root = pathlib.Path(tmp.name)
    t0 = time.perf_counter()
    write_jpegs(root, args.images)
    print(f"wrote {args.images} JPEGs (500x375) in {time.perf_counter() - t0:.1f} s")
    src = data.load(f"folder:{root}", "train")
    stats = data.compute_stats(src, max_examples=64)
    batches = max(1, args.images // args.batch - 1)
    for workers in args.workers:
        rate = pipeline_rate(src, stats, args.batch, workers, batches)
        results["pipeline_images_per_s"][workers] = rate
        print(f"folder pipeline, {workers} worker(s): {rate:8.1f} images/s")
    if args.steps:
        rate = step_rate(args.batch, args.steps)
        results["train_step_images_per_s"] = rate
        print(
            f"training step (torchvision AlexNet, 224 px, batch {args.batch}): {rate:8.1f} images/s"
        )
        best = max(results["pipeline_images_per_s"].values())
        print(f"best pipeline / step: {best / rate:.2f}x (>= 1: the input pipeline keeps up)")
    time.sleep(1.0)  # grain's close() does not wait for reads already in flight
    tmp.cleanup()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
