"""Export a model with :mod:`jax.export`: a serialisable artefact for serving and other runtimes.

The CPU fast path adds custom calls (the oneDNN kernels) that JAX refuses to serialise: they
have no compatibility guarantee, and no other machine or platform has them. They step aside
for export: :func:`portable` returns the same model on XLA's own operations (same parameters,
same maths; ``impl="xla"``), and :func:`export` exports its inference function with it, for
one platform or several at once (``platforms=("cpu", "tpu", "cuda")``)::

    exported = gdjax.models.export(model, variables, x, platforms=("cpu", "cuda", "tpu"))
    blob = exported.serialize()                  # bytes, to a file or a model server
    logits = jax.export.deserialize(blob).call(variables, x)

The artefact keeps the precision its products were traced with. By default that is each
platform's own default for float32 convolutions and matrix products: float32 on the CPU,
TensorFloat-32 on recent NVIDIA GPUs, bfloat16 passes on TPUs. ``precision="highest"`` pins
full float32 on every platform (slower on the accelerators), so that the artefact computes the
same logits, to float32 round-off, wherever it runs.

To export something else (a training step, a function of your own), build it from
``portable(model)`` (or ``AlexNet(..., impl="xla")``, ``config.model.impl="xla"`` in the
trainer) before calling :func:`jax.export.export`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from gdjax._checks import check_flag
from gdjax._extras import require

__all__ = ["export", "portable"]

# The names jax.default_matmul_precision takes for float32 products, fastest to most exact.
_PRECISIONS = ("bfloat16", "tensorfloat32", "float32", "default", "high", "highest")


def portable(model: nn.Module) -> nn.Module:
    """``model`` without custom calls: a clone with ``impl="xla"`` where the module has ``impl``.

    Args:
      model: a Flax module (a gdjax ``AlexNet`` or any module; one without an ``impl`` field
        is returned unchanged).

    Returns:
      A module that computes the same function with the same parameters on XLA's operations,
      exportable for any platform.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"portable: model must be a flax.linen.Module, got {type(model).__name__}")
    if "impl" in getattr(model, "__dataclass_fields__", {}):
        return model.clone(impl="xla")
    return model


def export(
    model: nn.Module,
    variables: Any,
    x: jax.Array | jax.ShapeDtypeStruct,
    *,
    platforms: Sequence[str] = ("cpu",),
    polymorphic_batch: bool = False,
    precision: str | None = None,
) -> jax.export.Exported:
    """Export ``model.apply(variables, x, train=False)`` with :func:`jax.export.export`.

    Needs the ``export`` extra (``flatbuffers``, which serialising uses).

    Args:
      model: the model (its custom calls step aside, see :func:`portable`).
      variables: its variables (``{"params": ...}``), or ``jax.ShapeDtypeStruct`` leaves of
        the same shapes; the exported function takes them as its first argument.
      x: an input batch or its ``jax.ShapeDtypeStruct`` (NHWC).
      platforms: where the artefact may run: any of ``"cpu"``, ``"cuda"``, ``"rocm"``,
        ``"tpu"`` (one name or a sequence); several give one artefact for all of them.
      polymorphic_batch: export with a symbolic batch size, so that one artefact serves any
        batch.
      precision: the precision of the float32 convolutions and matrix products, as
        :func:`jax.default_matmul_precision` names it (``"bfloat16"``, ``"tensorfloat32"``,
        ``"float32"``, ``"default"``, ``"high"``, ``"highest"``): ``None`` leaves
        each platform its default (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPUs);
        ``"highest"`` (or ``"float32"``) computes in full float32 everywhere.

    Returns:
      A :class:`jax.export.Exported`: ``.call(variables, x)`` runs it, ``.serialize()``
      gives bytes that :func:`jax.export.deserialize` reads back.
    """
    require("export", "gdjax.models.export (serialising the artefact)", "flatbuffers")
    platforms = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    known = ("cpu", "cuda", "rocm", "tpu")
    if not platforms or any(p not in known for p in platforms):
        hint = " (a GPU is 'cuda' or 'rocm')" if "gpu" in platforms else ""
        raise ValueError(
            f"export: platforms must be a non-empty subset of {known}, got {platforms}{hint}"
        )
    if isinstance(variables, Mapping) and variables and "params" not in variables:
        raise ValueError(
            "export: variables must be the model's variables, {'params': params, ...}; got a "
            f"mapping with keys {sorted(map(str, variables))[:4]} (pass {{'params': params}})"
        )
    check_flag("export: polymorphic_batch", polymorphic_batch)  # "no" exported a symbolic batch
    if precision is not None and precision not in _PRECISIONS:
        raise ValueError(
            f"export: precision must be None or one of {_PRECISIONS}, got {precision!r}"
        )
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):  # a nested list of pixels
        x = np.asarray(x, np.float32)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"export: x must be an NHWC batch (4 dimensions), got shape {x.shape}")
    shape = tuple(x.shape)
    if polymorphic_batch:
        (batch,) = jax.export.symbolic_shape("batch")
        shape = (batch, *shape[1:])
    x_spec = jax.ShapeDtypeStruct(shape, x.dtype)
    var_spec = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), variables)
    net = portable(model)

    def infer(v, images):
        return net.apply(v, images, train=False)

    pinned = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    with pinned:  # read when the products are lowered, inside jax.export.export
        return jax.export.export(jax.jit(infer), platforms=platforms)(var_spec, x_spec)
