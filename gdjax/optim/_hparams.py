"""Hyperparameter plumbing shared by the optimizer blocks.

A numeric hyperparameter is a Python/NumPy number, a JAX array (possibly traced, as under
``optax.inject_hyperparams``) or a schedule ``step -> value``. Python and NumPy numbers are
validated eagerly, so a bad value fails where the optimizer is built; so are concrete scalar JAX
arrays, which is what ``optax.inject_hyperparams`` passes when its ``init`` runs outside
``jit`` (an injected ``learning_rate=-1`` is refused like a plain one). Traced values (inside
``jit``) and schedules are taken as given: they cannot be checked without running them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax's own alias (float | jax.Array | Schedule), so signatures read the same as optax's.
ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule


def value_at(hyperparam: ScalarOrSchedule, count: jax.Array) -> jax.typing.ArrayLike:
    """The hyperparameter's value at step ``count`` (0 for the first update).

    A schedule must return a scalar (a shape is static, so this holds under ``jit`` too):
    an array would broadcast against each leaf, or fail there with a shape error.
    """
    if not callable(hyperparam):
        return hyperparam
    value = hyperparam(count)
    if jnp.ndim(value) != 0:
        name = getattr(hyperparam, "__name__", type(hyperparam).__name__)
        raise ValueError(
            f"the schedule {name} returned an array of shape {jnp.shape(value)}; a "
            "hyperparameter's schedule must return a scalar"
        )
    return value


def _as_python_number(owner: str, name: str, value: Any) -> float | None:
    """The value as a float when it is a number or a concrete scalar array; None when it is
    traced or a schedule."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(
            f"{owner}: {name} must be a number, a JAX array or a schedule (step -> value), "
            f"got {value!r} of type {type(value).__name__}"
        )
    if isinstance(value, (jax.Array, np.ndarray)):
        if value.ndim != 0:
            raise ValueError(
                f"{owner}: {name} must be a scalar, got an array of shape {value.shape}"
            )
        if np.iscomplexobj(value):  # inject_hyperparams casts to complex parameters' dtype
            z = complex(value)
            if z.imag:
                raise ValueError(f"{owner}: {name} must be real, got {z:g}")
            return z.real
    return float(value)


def check_range(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float,
    low_inclusive: bool = True,
    high: float | None = None,
) -> None:
    """Raise ``ValueError`` unless ``low <= value`` (``<`` if exclusive), ``value < high`` and
    ``value`` is finite (an infinite rate or decay is never meant, and turns into NaN).

    Numbers and concrete arrays are checked; traced values and schedules pass through.
    """
    number = _as_python_number(owner, name, value)
    if number is None:
        return
    ok_low = number >= low if low_inclusive else number > low
    ok_high = high is None or number < high
    finite = math.isfinite(number)
    if not (ok_low and ok_high and finite):  # NaN fails every comparison
        left = "[" if low_inclusive else "("
        expected = (
            f"in {left}{low:g}, {high:g})"
            if high is not None
            else (f"{'>=' if low_inclusive else '>'} {low:g}")
        )
        shown = number if isinstance(value, jax.Array) else value  # not "Array(-1., ...)"
        if not finite:
            expected = f"a finite number {expected}"
        raise ValueError(f"{owner}: {name} must be {expected}, got {shown!r}")


def known_zero(value: Any) -> bool:
    """True when the value is a number or concrete scalar array equal to zero.

    For checks only (``eps`` may be 0 when ``eps_root`` is known positive): an optimizer's
    structure never depends on a numeric value, which ``inject_hyperparams`` turns into an
    array (and, under ``jit``, a tracer).
    """
    if value is None or callable(value) or isinstance(value, jax.core.Tracer):
        return False
    number = _as_python_number("", "", value)
    return number is not None and number == 0


def compute_dtype(*dtypes: Any) -> jnp.dtype:
    """The dtype a leaf's update is computed in: the inputs' promotion, at least float32.

    Low-precision leaves (bfloat16, float16) are computed in float32 and cast back, so
    updates keep the gradients' dtype and state keeps its own without losing the arithmetic.
    """
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def check_dtype(owner: str, name: str, dtype: Any) -> None:
    """``dtype`` is None or a floating-point (or complex) dtype; checked where the optimizer
    is built (an integer one was reported as an integer *parameter* at ``init``)."""
    if dtype is None:
        return
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{owner}: {name} must be a dtype (e.g. jnp.bfloat16) or None, got {dtype!r}"
        ) from None
    if not jnp.issubdtype(dt, jnp.inexact):
        raise TypeError(
            f"{owner}: {name} must be a floating-point dtype (or None for the parameters' "
            f"own), got {dt}: an integer state would round every step"
        )
