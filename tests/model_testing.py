"""Shared helper for the model tests: inputs drawn by numpy.

``jax.random.normal`` compiles one program per shape (threefry and the inverse error function,
about 0.5 s each on a 2-core CPU); a test's input needs no JAX program to be random."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """N(0, 1) float32 entries of ``shape``, the same for the same ``seed``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))
