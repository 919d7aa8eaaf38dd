"""Experiment 2: optimizers on hard landscapes, drawn over the contour plot.

    python experiments/landscapes.py          # a few seconds
    python experiments/landscapes.py --quick

Trajectories of SGD, Momentum, Nesterov, AdaGrad, RMSProp and Adam from the same start on an
ill-conditioned quadratic (condition number 50) and on the Rosenbrock function. Each optimizer
uses one hand-picked learning rate per problem (listed in results.json); the point is the
shape of the paths: SGD zig-zags across the narrow valley, momentum overshoots and
oscillates along it, the adaptive methods rescale each coordinate.
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import parser, pyplot, write_results

import gdjax


def quadratic(p):
    return 0.5 * (p[0] ** 2 + 50.0 * p[1] ** 2)


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


PROBLEMS = {
    "quadratic": {
        "f": quadratic,
        "start": [-4.0, 1.5],
        "minimum": [0.0, 0.0],
        "steps": 100,
        "box": ((-5, 5), (-2, 2)),
        "lrs": {
            "SGD": 0.035,
            "Momentum": 0.01,
            "Nesterov": 0.01,
            "AdaGrad": 1.0,
            "RMSProp": 0.1,
            "Adam": 0.3,
        },
    },
    "rosenbrock": {
        "f": rosenbrock,
        "start": [-1.5, 2.0],
        "minimum": [1.0, 1.0],
        "steps": 3000,
        "box": ((-2, 2), (-1, 3)),
        "lrs": {
            "SGD": 1.5e-3,
            "Momentum": 5e-4,
            "Nesterov": 5e-4,
            "AdaGrad": 0.5,
            "RMSProp": 3e-3,
            "Adam": 0.05,
        },
    },
}

OPTIMIZERS = {
    "SGD": gdjax.sgd,
    "Momentum": lambda lr: gdjax.momentum(lr, 0.9),
    "Nesterov": lambda lr: gdjax.momentum(lr, 0.9, nesterov=True),
    "AdaGrad": gdjax.adagrad,
    "RMSProp": gdjax.rmsprop,
    "Adam": gdjax.adam,
}


def trajectory(tx, f, start, steps):
    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(f)(p), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    p0 = jnp.asarray(start, jnp.float32)
    _, path = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((p0, tx.init(p0)))
    return np.concatenate([np.asarray(p0)[None], np.asarray(path)])


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "landscapes").parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    results = {}
    for ax, (name, prob) in zip(axes, PROBLEMS.items(), strict=True):
        steps = prob["steps"] // (10 if args.quick else 1)
        (x0, x1), (y0, y1) = prob["box"]
        xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        f = prob["f"]
        zs = np.asarray(jax.vmap(jax.vmap(lambda a, b, f=f: f(jnp.stack([a, b]))))(xs, ys))
        ax.contour(xs, ys, np.log10(zs + 1e-3), levels=30, cmap="Greys", linewidths=0.6)
        results[name] = {}
        for opt_name, make in OPTIMIZERS.items():
            lr = prob["lrs"][opt_name]
            path = trajectory(make(lr), prob["f"], prob["start"], steps)
            final = float(prob["f"](jnp.asarray(path[-1])))
            results[name][opt_name] = {
                "learning_rate": lr,
                "steps": steps,
                "final_loss": final,
                "final_point": path[-1],
                "distance_to_minimum": float(
                    np.linalg.norm(path[-1] - np.asarray(prob["minimum"]))
                ),
            }
            ax.plot(path[:, 0], path[:, 1], lw=1.2, label=f"{opt_name} (lr {lr:g}): {final:.1e}")
        ax.plot(*prob["start"], "ko")
        ax.plot(*prob["minimum"], "r*", ms=12)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"{name}, {steps} steps (legend: final loss)")
        ax.legend(fontsize=8, loc="lower right" if name == "quadratic" else "upper left")
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=100)
    plt.close(fig)
    write_results(out, "landscapes", results, started)
    return results


if __name__ == "__main__":
    main()
