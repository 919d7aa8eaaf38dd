"""Shared helpers for the model tests: inputs drawn by numpy, and a model's init compiled as
the trainer compiles it.

``jax.random.normal`` compiles one program per shape (threefry and the inverse error function,
about 0.5 s each on a 2-core CPU); a test's input needs no JAX program to be random."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gdjax.models import compiler_options


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """N(0, 1) float32 entries of ``shape``, the same for the same ``seed``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def jit_init(model) -> jax.stages.Wrapped:
    """``model.init`` under ``jax.jit`` with the "init" compiler options, as ``gdjax.train``
    compiles it: the same parameters, bit for bit, in 40-65% of the compile time."""
    return jax.jit(model.init, compiler_options=compiler_options("init"))
