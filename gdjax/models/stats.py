"""Model facts: parameter counts and forward multiply-adds, read off the traced computation.

The multiply-add count walks the jaxpr of one forward pass and adds up every convolution and
matrix product (``conv_general_dilated``, ``dot_general``), inside nested calls too. It counts
what the model computes, so it cannot drift from the model; elementwise work (activations,
LRN, pooling, bias adds) is not counted, as is the convention for MAC counts. FLOPs are taken
as 2 × multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["count_flops", "count_macs", "count_params"]


def count_params(params: Any) -> int:
    """Number of scalars in a pytree of parameters (``variables['params']`` or the variables)."""
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))


def _subjaxprs(params: dict) -> list[Any]:
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns"):
                found.append(v)
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                found.append(v.jaxpr)
    return found


def _macs(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            out = eqn.outvars[0].aval.shape
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        else:
            inner = [_macs(sub) for sub in _subjaxprs(eqn.params)]
            if name == "cond":
                total += max(inner, default=0)
            elif name == "scan":
                total += eqn.params["length"] * sum(inner)
            elif name == "while":
                raise ValueError("count_macs: a while loop has no static trip count")
            else:
                total += sum(inner)
    return total


def count_macs(fn: Callable[..., Any] | nn.Module, *args: Any, **kwargs: Any) -> int:
    """Multiply-adds of ``fn(*args, **kwargs)``; for a Flax module, of one forward pass.

    ``count_macs(AlexNet(variant="torchvision"), (1, 224, 224, 3))`` counts one image; the
    shape may also be an array or ``jax.ShapeDtypeStruct``. Nothing is computed: the model is
    only traced, its parameters only shaped (``jax.eval_shape``).
    """
    if isinstance(fn, nn.Module):
        model = fn
        (shape,) = args
        x = shape if hasattr(shape, "shape") else jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
        x = jax.ShapeDtypeStruct(x.shape, x.dtype)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        jaxpr = jax.make_jaxpr(lambda v, xs: model.apply(v, xs, **kwargs))(variables, x)
    else:
        jaxpr = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
    return _macs(jaxpr.jaxpr)


def count_flops(fn: Callable[..., Any] | nn.Module, *args: Any, **kwargs: Any) -> int:
    """Forward FLOPs, taken as 2 × :func:`count_macs` (one multiply and one add each)."""
    return 2 * count_macs(fn, *args, **kwargs)
