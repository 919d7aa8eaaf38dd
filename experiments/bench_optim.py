"""Time one jitted optimizer update, gdjax vs its optax counterpart, on an AlexNet-sized pytree.

    python experiments/bench_optim.py                     # 61.1 M float32 parameters
    python experiments/bench_optim.py --scale 0.01        # a quick look
    python experiments/bench_optim.py --json out.json

Each step is ``params, state = step(params, state, grads)`` under ``jax.jit`` with the params
and the optimizer state donated (updated in place). The two contenders are timed in
alternating rounds so that the machine's drift hits both; the table shows the median step
time of each, the ratio gdjax/optax, and the implied memory traffic (bytes of params, grads
and state read plus params and state written, per second).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import positive_float, positive_int

import gdjax

# torchvision AlexNet in Flax layout (HWIO kernels, (in, out) dense): 61,100,840 parameters.
ALEXNET_SHAPES = {
    "conv1": {"kernel": (11, 11, 3, 64), "bias": (64,)},
    "conv2": {"kernel": (5, 5, 64, 192), "bias": (192,)},
    "conv3": {"kernel": (3, 3, 192, 384), "bias": (384,)},
    "conv4": {"kernel": (3, 3, 384, 256), "bias": (256,)},
    "conv5": {"kernel": (3, 3, 256, 256), "bias": (256,)},
    "fc6": {"kernel": (9216, 4096), "bias": (4096,)},
    "fc7": {"kernel": (4096, 4096), "bias": (4096,)},
    "fc8": {"kernel": (4096, 1000), "bias": (1000,)},
}

LR = 1e-3

# name -> (gdjax optimizer, the optax optimizer computing the same update)
PAIRS: dict[str, tuple[Callable[[], optax.GradientTransformation], ...]] = {
    "sgd": (lambda: gdjax.sgd(LR), lambda: optax.sgd(LR)),
    "momentum": (lambda: gdjax.momentum(LR), lambda: optax.sgd(LR, momentum=0.9)),
    "nesterov": (
        lambda: gdjax.momentum(LR, nesterov=True),
        lambda: optax.sgd(LR, momentum=0.9, nesterov=True),
    ),
    "alexnet_sgd": (
        lambda: gdjax.alexnet_sgd(LR),
        lambda: optax.chain(
            optax.add_decayed_weights(5e-4), optax.scale_by_learning_rate(LR), optax.trace(0.9)
        ),
    ),
    "adagrad": (
        lambda: gdjax.adagrad(LR, initial_accumulator_value=0.1, eps=1e-7, eps_in_sqrt=True),
        lambda: optax.adagrad(LR),
    ),
    "rmsprop": (lambda: gdjax.rmsprop(LR, eps_in_sqrt=True), lambda: optax.rmsprop(LR)),
    "rmsprop_centered": (
        lambda: gdjax.rmsprop(LR, centered=True, eps_in_sqrt=True),
        lambda: optax.rmsprop(LR, centered=True),
    ),
    "adam": (lambda: gdjax.adam(LR), lambda: optax.adam(LR)),
    "adamw": (lambda: gdjax.adamw(LR, weight_decay=1e-4), lambda: optax.adamw(LR)),
    "lars": (lambda: gdjax.lars(LR, weight_decay=1e-4), lambda: optax.lars(LR, weight_decay=1e-4)),
    "lamb": (lambda: gdjax.lamb(LR, weight_decay=1e-4), lambda: optax.lamb(LR, weight_decay=1e-4)),
}


def alexnet_tree(scale: float = 1.0) -> dict:
    """Parameters shaped like torchvision's AlexNet; ``scale`` < 1 shrinks the fc layers."""

    def shrink(shape: tuple[int, ...]) -> tuple[int, ...]:
        if scale >= 1.0 or len(shape) != 2:
            return shape
        return tuple(max(1, int(d * scale**0.5)) for d in shape)

    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(shrink(s), dtype=np.float32) * 0.01),
        ALEXNET_SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


class Contender:
    """One optimizer with its donated params/state and a jitted step."""

    def __init__(self, tx: optax.GradientTransformation, params, grads):
        self.grads = grads
        self.params = jax.tree.map(jnp.copy, params)
        self.state = tx.init(self.params)

        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        self.step = jax.jit(step, donate_argnums=(0, 1))
        # XLA's own count of the bytes the compiled update reads and writes: a noise-free
        # companion to the timings (equal counts mean equal memory traffic).
        t0 = time.perf_counter()
        cost = self.step.lower(self.params, self.state, grads).compile().cost_analysis()
        self.compile_s = time.perf_counter() - t0
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.xla_bytes = float((cost or {}).get("bytes accessed", float("nan")))
        self.run(1)
        param_bytes = _nbytes(params)
        state_bytes = _nbytes(self.state)
        # read params + grads + state, write params + state
        self.traffic = 3 * param_bytes + 2 * state_bytes

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - t0) / steps


def bench(names: list[str], scale: float, rounds: int, steps: int) -> list[dict]:
    params = alexnet_tree(scale)
    grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params)
    rows = []
    for name in names:
        ours_factory, theirs_factory = PAIRS[name]
        ours = Contender(ours_factory(), params, grads)
        theirs = Contender(theirs_factory(), params, grads)
        ours.run(steps)  # warm both caches once more after compiling
        theirs.run(steps)
        t_ours, t_theirs = [], []
        for r in range(rounds):  # alternate, and alternate who goes first
            first, second = (ours, theirs) if r % 2 == 0 else (theirs, ours)
            a, b = first.run(steps), second.run(steps)
            (t_ours, t_theirs)[first is theirs].append(a)
            (t_ours, t_theirs)[second is theirs].append(b)
        mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
        rows.append(
            {
                "optimizer": name,
                "gdjax_ms": mo * 1e3,
                "optax_ms": mt * 1e3,
                "ratio": mo / mt,
                "gdjax_GBps": ours.traffic / mo / 1e9,
                "optax_GBps": theirs.traffic / mt / 1e9,
                "xla_bytes_ratio": ours.xla_bytes / theirs.xla_bytes,
                "gdjax_compile_s": ours.compile_s,
                "optax_compile_s": theirs.compile_s,
            }
        )
        print(_format_row(rows[-1]), flush=True)
        del ours, theirs
    return rows


HEADER = (
    f"{'optimizer':<18}{'gdjax ms':>10}{'optax ms':>10}{'ratio':>8}"
    f"{'gdjax GB/s':>12}{'optax GB/s':>12}{'XLA bytes ratio':>17}{'compile s (gdjax/optax)':>26}"
)


def _format_row(r: dict) -> str:
    return (
        f"{r['optimizer']:<18}{r['gdjax_ms']:>10.2f}{r['optax_ms']:>10.2f}{r['ratio']:>8.3f}"
        f"{r['gdjax_GBps']:>12.1f}{r['optax_GBps']:>12.1f}{r['xla_bytes_ratio']:>17.3f}"
        f"{r['gdjax_compile_s']:>15.2f} / {r['optax_compile_s']:.2f}"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=positive_float, default=1.0, help="fraction of the fc layers"
    )
    parser.add_argument("--rounds", type=positive_int, default=7, help="alternating timing rounds")
    parser.add_argument("--steps", type=positive_int, default=3, help="steps per round")
    parser.add_argument("--only", nargs="*", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--json", help="write the rows (and the machine) to this file")
    args = parser.parse_args(argv)

    n = sum(x.size for x in jax.tree.leaves(alexnet_tree(args.scale)))
    device = jax.devices()[0]
    print(
        f"{n:,} float32 parameters on {device.platform} ({device.device_kind}); "
        f"jax {jax.__version__}, optax {optax.__version__}; median of {args.rounds} rounds"
    )
    print(HEADER)
    rows = bench(args.only, args.scale, args.rounds, args.steps)
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio gdjax/optax: {worst:.3f}")
    if args.json:
        meta = {
            "parameters": n,
            "device": f"{device.platform} {device.device_kind}",
            "machine": platform.platform(),
            "jax": jax.__version__,
            "optax": optax.__version__,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
