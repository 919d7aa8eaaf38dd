"""Shared helpers for the optimizer tests: a mixed-shape pytree and a trajectory runner."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (5, 3), "bias": (3,)},
    "scalar": (),
}


def mixed_tree(seed: int = 0, dtype: Any = np.float32) -> dict:
    """A pytree of mixed shapes (4-D, 2-D, 1-D and scalar leaves) with N(0, 1) entries; for a
    complex ``dtype`` the imaginary parts are N(0, 1) too (those of ``seed + 7``)."""
    if np.issubdtype(dtype, np.complexfloating):
        re, im = mixed_tree(seed), mixed_tree(seed + 7)
        return jax.tree.map(lambda r, i: (r + 1j * i).astype(dtype), re, im)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: rng.standard_normal(shape).astype(dtype),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def noises(steps: int, seed: int = 1, dtype: Any = np.float32) -> list[dict]:
    """Per-step gradient noise, one mixed tree per step."""
    return [mixed_tree(seed + 1000 * t, dtype) for t in range(steps)]


def gradient(params: Any, noise: Any) -> Any:
    """The test's gradient: noise plus a pull towards zero, so it depends on the params."""
    return jax.tree.map(lambda p, n: n + 0.5 * p, params, noise)


def trajectory(tx: optax.GradientTransformation, params: Any, noise_list: list) -> list:
    """Params after each step of ``tx`` on :func:`gradient`, as numpy trees."""
    return trajectories([tx], params, noise_list)[0]


def trajectories(txs: list, params: Any, noise_list: list) -> list[list]:
    """:func:`trajectory` of each of ``txs``, all stepped by one jitted function: XLA compiles
    one program for all of them, in a fraction of the time of one program each. They share
    nothing but the starting point and the noise, so each trajectory is its own."""

    @jax.jit
    def step(carry, noise):
        out = []
        for tx, (p, s) in zip(txs, carry, strict=True):
            updates, s = tx.update(gradient(p, noise), s, p)
            out.append((optax.apply_updates(p, updates), s))
        return out

    params = jax.tree.map(jnp.asarray, params)
    carry = [(params, tx.init(params)) for tx in txs]
    out: list[list] = [[] for _ in txs]
    for noise in noise_list:
        carry = step(carry, noise)
        for path, (p, _) in zip(out, carry, strict=True):
            path.append(jax.tree.map(np.asarray, p))
    return out


def max_rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / (1 + |b|) over all leaves of two trees (or lists of trees); moduli for
    complex leaves."""

    def leaf(x, y):
        wide = np.complex128 if np.iscomplexobj(x) or np.iscomplexobj(y) else np.float64
        x, y = np.asarray(x, wide), np.asarray(y, wide)
        return float(np.max(np.abs(x - y) / (1 + np.abs(y)), initial=0))

    diffs = jax.tree.map(leaf, a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def all_optimizers() -> dict:
    """name -> (factory, kwargs besides learning_rate): every optimizer, main variants included."""
    import gdjax

    return {
        "sgd": (gdjax.sgd, {}),
        "momentum": (gdjax.momentum, {"momentum": 0.9}),
        "nesterov_wd": (gdjax.momentum, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        "alexnet_sgd": (gdjax.alexnet_sgd, {}),
        "adagrad": (gdjax.adagrad, {}),
        "rmsprop": (gdjax.rmsprop, {}),
        "rmsprop_centered_momentum": (gdjax.rmsprop, {"centered": True, "momentum": 0.9}),
        "adam": (gdjax.adam, {}),
        "adam_amsgrad": (gdjax.adam, {"amsgrad": True}),
        "adamw": (gdjax.adamw, {}),
        "lars": (gdjax.lars, {"weight_decay": 1e-3, "trust_coefficient": 0.5}),
        "lamb": (gdjax.lamb, {"weight_decay": 1e-2}),
    }
