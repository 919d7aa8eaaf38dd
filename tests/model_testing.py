"""Shared helpers for the model tests: inputs drawn by numpy, and a model's init compiled as
the trainer compiles it.

``jax.random.normal`` compiles one program per shape (threefry and the inverse error function,
about 0.5 s each on a 2-core CPU); a test's input needs no JAX program to be random."""

from __future__ import annotations

import re

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


# Past this many elements a comparison of two jax arrays runs as jnp ops on the device:
# numpy's assert_allclose makes several full-size temporaries and took ~1 s over fc6's 37.7 M.
_LARGE = 1 << 20


def _both_large(a, d) -> bool:
    return (
        isinstance(a, jax.Array)
        and isinstance(d, jax.Array)
        and a.shape == d.shape
        and a.size >= _LARGE
    )


def assert_close_to_scale(actual, desired, tol: float) -> None:
    """``|actual - desired| <= tol * max(max|desired|, 1e-6)`` everywhere: numpy's
    ``assert_allclose`` (which also matches NaNs and says where), unless the device's own
    check of two large jax arrays passes first."""
    if _both_large(actual, desired):
        scale = max(float(jnp.max(jnp.abs(desired))), 1e-6)
        if float(jnp.max(jnp.abs(actual - desired))) <= tol * scale:
            return
    a, d = np.asarray(actual), np.asarray(desired)
    scale = max(np.max(np.abs(d)), 1e-6)
    np.testing.assert_allclose(a / scale, d / scale, atol=tol, rtol=0)


def assert_equal(actual, desired) -> None:
    """``np.testing.assert_array_equal``, checked on the device first for two large jax
    arrays."""
    same_dtype = _both_large(actual, desired) and actual.dtype == desired.dtype
    if same_dtype and bool(jnp.array_equal(actual, desired)):
        return
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(desired))


def onednn_calls(module_text: str) -> set[str]:
    """The gdjax (oneDNN) custom-call targets a StableHLO module's text calls. Read off the
    calls, not the whole text: an exported module's locations name Python functions, and a
    trace cached by an earlier test can name one of ours (``_gdjax_case``). Both of MLIR's
    spellings count: ``custom_call @name`` and the generic ``call_target_name = "name"``."""
    calls = re.findall(r'custom_call @([\w.]+)|call_target_name = "([\w.]+)"', module_text)
    return {t for pair in calls for t in pair if t.startswith("gdjax_")}
