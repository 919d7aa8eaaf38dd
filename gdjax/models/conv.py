"""2-D convolution that runs on oneDNN on the CPU when it can, and on XLA everywhere else.

:func:`conv_bias_relu` is the same for a convolution layer with its bias and ReLU, fused into
one oneDNN call (bias and ReLU as post-ops).

:func:`conv_general_dilated` has the signature of :func:`jax.lax.conv_general_dilated`, so it
drops into ``flax.linen.Conv(..., conv_general_dilated=...)``. It computes the same function
(and the same gradients); only the kernels differ. A call takes the oneDNN path when all hold:

* ``impl`` is ``"auto"`` (the default) or ``"onednn"``, and the default backend is the CPU;
* the kernels are available (:func:`onednn_status` says why not, if not);
* float32 operands, NHWC activations with an HWIO kernel (Flax's layout), no dilation,
  ``batch_group_count == 1`` and non-negative padding;
* the call is not traced under forward-mode differentiation or a derivative of a derivative
  (the kernels' derivatives are a ``custom_vjp``: first-order reverse mode).

Otherwise it is exactly ``lax.conv_general_dilated``. The choice is made at trace time and the
oneDNN call sits under :func:`jax.lax.platform_dependent`, so a function traced on the CPU and
lowered for a GPU or TPU still gets XLA's convolution there.

Why: XLA's CPU convolutions (Eigen, or YNNPACK) ran AlexNet's layers 1.3–85× slower than
oneDNN's here, grouped ones worst of all (see the README's benchmark tables).
The forward, data-gradient and weight-gradient kernels each run oneDNN's primitive on XLA's own
buffers (no copies); the kernel is reordered to oneDNN's blocked layout inside the call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gdjax.models import _onednn

__all__ = ["CONV_IMPLS", "conv_bias_relu", "conv_general_dilated", "onednn_status"]

CONV_IMPLS = _onednn.IMPLS
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def onednn_status() -> tuple[bool, str]:
    """``(available, detail)``: whether the oneDNN kernels load here, and what or why not.

    The first call builds the kernels if needed (a few seconds, once per machine and version).
    """
    return _onednn.status()


def _unit(v: Sequence[int] | None) -> bool:
    return v is None or all(int(d) == 1 for d in v)


def _plain_pads(
    padding: str | Sequence[tuple[int, int]], lhs: jax.Array, rhs: jax.Array, strides
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[0:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
        return None
    return pads  # type: ignore[return-value]


def _attrs(strides, pads, groups) -> dict[str, np.int64]:
    (pt, pb), (pl, pr) = pads
    return dict(
        stride_h=np.int64(strides[0]),
        stride_w=np.int64(strides[1]),
        pad_top=np.int64(pt),
        pad_bottom=np.int64(pb),
        pad_left=np.int64(pl),
        pad_right=np.int64(pr),
        groups=np.int64(groups),
    )


def _xla(x, w, strides, pads, groups, precision=None):
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        pads,
        dimension_numbers=_NHWC,
        feature_group_count=groups,
        precision=precision,
    )


def _call(target, out_shape, a, b, strides, pads, groups):
    out = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return _onednn.ffi(target, out, a, b, **_attrs(strides, pads, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _onednn_conv(x, w, strides, pads, groups, precision):
    out = jax.eval_shape(
        functools.partial(_xla, strides=strides, pads=pads, groups=groups), x, w
    ).shape
    return lax.platform_dependent(
        x,
        w,
        cpu=lambda x, w: _call("gdjax_conv_fwd", out, x, w, strides, pads, groups),
        default=lambda x, w: _xla(x, w, strides, pads, groups, precision),
    )


def _fwd(x, w, strides, pads, groups, precision):
    return _onednn_conv(x, w, strides, pads, groups, precision), (x, w)


def _bwd(strides, pads, groups, precision, residuals, dy):
    x, w = residuals

    def xla_grads(x, w, dy):
        conv = functools.partial(
            _xla, strides=strides, pads=pads, groups=groups, precision=precision
        )
        return jax.vjp(conv, x, w)[1](dy)

    def onednn_grads(x, w, dy):
        dx = _call("gdjax_conv_bwd_data", x.shape, dy, w, strides, pads, groups)
        dw = _call("gdjax_conv_bwd_weights", w.shape, x, dy, strides, pads, groups)
        return _onednn.cotangent_like(dx, x), _onednn.cotangent_like(dw, w)

    return lax.platform_dependent(x, w, dy, cpu=onednn_grads, default=xla_grads)


_onednn_conv.defvjp(_fwd, _bwd)


def _xla_bias_relu(x, w, b, strides, pads, groups):
    return jax.nn.relu(_xla(x, w, strides, pads, groups) + b.reshape(1, 1, 1, -1))


def _fused_call(x, w, b, strides, pads, groups):
    out = jax.eval_shape(
        functools.partial(_xla, strides=strides, pads=pads, groups=groups), x, w
    ).shape
    y = jax.ShapeDtypeStruct(out, jnp.float32)
    return _onednn.ffi("gdjax_conv_bias_relu_fwd", y, x, w, b, **_attrs(strides, pads, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _onednn_conv_bias_relu(x, w, b, strides, pads, groups):
    return lax.platform_dependent(
        x,
        w,
        b,
        cpu=functools.partial(_fused_call, strides=strides, pads=pads, groups=groups),
        default=functools.partial(_xla_bias_relu, strides=strides, pads=pads, groups=groups),
    )


def _fused_fwd(x, w, b, strides, pads, groups):
    y = _onednn_conv_bias_relu(x, w, b, strides, pads, groups)
    return y, (x, w, b, y)


def _fused_bwd(strides, pads, groups, residuals, dy):
    x, w, b, y = residuals
    # ReLU's mask, read off its output (y > 0 exactly where conv + b > 0), and the bias's
    # gradient: one loop of XLA's. (Doing both inside oneDNN — its ReLU backward, then the
    # weight gradient with the bias's — measured slower: oneDNN 3.2's weight gradient with a
    # bias is up to 40% slower on AVX2; the README's "Where the speed comes from".)
    dz = jnp.where(y > 0, dy, jnp.zeros_like(dy))
    db = _onednn.cotangent_like(dz.sum((0, 1, 2)), b)
    dx, dw = _bwd(strides, pads, groups, None, (x, w), dz)
    return dx, dw, db


_onednn_conv_bias_relu.defvjp(_fused_fwd, _fused_bwd)


def conv_bias_relu(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    feature_group_count: int = 1,
    *,
    impl: str = "auto",
) -> jax.Array:
    """``relu(conv(x, w) + b)``: NHWC ``x``, HWIO ``w`` (a grouped kernel is ``HW(I/g)O``),
    ``b`` of one entry per output map — a convolution layer and its ReLU in one call.

    On the oneDNN path (the conditions of :func:`conv_general_dilated`, and float32 ``b``) the
    bias and the ReLU are post-ops of oneDNN's convolution, so ``y`` is written once and no
    pre-activation is kept; the backward reads ReLU's mask off ``y``: ``dz = dy * [y > 0]``,
    ``db = sum(dz)`` (one XLA loop), then ``dx`` and ``dw`` are the convolution's gradients
    of ``dz`` on oneDNN. Elsewhere it is exactly
    ``jax.nn.relu(lax.conv_general_dilated(x, w, ...) + b)``, with the same gradients (ReLU's
    derivative at 0 is 0 on both paths).
    """
    _onednn.check_impl("conv_bias_relu", impl)
    if x.ndim != 4 or w.ndim != 4 or b.shape != (w.shape[-1],):
        raise ValueError(
            f"conv_bias_relu: expected NHWC x, HWIO w and one bias per output map, got shapes "
            f"x {x.shape}, w {w.shape}, b {b.shape}"
        )
    groups = int(feature_group_count)
    if groups < 1 or x.shape[-1] != w.shape[2] * groups or w.shape[-1] % groups:
        raise ValueError(
            f"conv_bias_relu: feature_group_count={feature_group_count} does not fit x's "
            f"{x.shape[-1]} maps and w {w.shape} (x's maps must be w.shape[2] * groups, and "
            f"groups must divide w's {w.shape[-1]} output maps)"
        )
    strides = tuple(int(s) for s in window_strides)
    pads = _plain_pads(padding, x, w, strides)
    if impl == "xla":
        why = "impl='xla'"
    elif pads is None:
        why = f"padding={padding!r}"
    else:
        why = _onednn.why_not(impl, x, w, b)
    if why is None:
        return _onednn_conv_bias_relu(x, w, b, strides, pads, groups)
    if impl == "onednn":
        raise RuntimeError(f"conv_bias_relu(impl='onednn'): cannot use oneDNN: {why}")
    return _xla_bias_relu(x, w, b, strides, padding, groups)


def _dimension_numbers_are_nhwc(dimension_numbers: Any, ndim: int) -> bool:
    if dimension_numbers is None or ndim != 4:
        return False
    try:
        dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    except (TypeError, ValueError):
        return False
    return tuple(dn) == tuple(_NHWC)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    impl: str = "auto",
) -> jax.Array:
    """:func:`jax.lax.conv_general_dilated`, on oneDNN where possible (see the module doc).

    ``impl``: ``"auto"`` picks oneDNN when the conditions above hold; ``"xla"`` never does;
    ``"onednn"`` insists and raises ``RuntimeError`` (with the reason) when it cannot.
    On the oneDNN path the arithmetic is full float32 whatever ``precision`` says.
    """
    _onednn.check_impl("conv_general_dilated", impl)
    if isinstance(precision, list):  # hashable: it is a static argument of the custom VJP
        precision = tuple(precision)
    pads = strides = None
    if impl == "xla":
        why = "impl='xla'"
    elif not (_dimension_numbers_are_nhwc(dimension_numbers, lhs.ndim)):
        why = "the layout is not NHWC/HWIO/NHWC"
    elif preferred_element_type not in (None, jnp.float32, np.float32):
        why = f"preferred_element_type={preferred_element_type}"
    elif not (_unit(lhs_dilation) and _unit(rhs_dilation)) or batch_group_count != 1:
        why = "dilation or batch_group_count"
    else:
        strides = tuple(int(s) for s in window_strides)
        pads = _plain_pads(padding, lhs, rhs, strides)
        why = f"padding={padding!r}" if pads is None else _onednn.why_not(impl, lhs, rhs)
    if why is None:
        return _onednn_conv(lhs, rhs, strides, pads, int(feature_group_count), precision)
    if impl == "onednn":
        raise RuntimeError(f"conv_general_dilated(impl='onednn'): cannot use oneDNN: {why}")
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        precision,
        preferred_element_type,
    )
