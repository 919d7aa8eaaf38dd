r"""Layers AlexNet needs that Flax does not ship: local response normalization, adaptive pooling,
and a ReLU whose derivative keeps one bit per element.

Layout is NHWC throughout (channels last), the layout XLA prefers on every backend.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gdjax._checks import check_finite, is_int
from gdjax.models import _onednn

__all__ = ["LocalResponseNorm", "adaptive_avg_pool", "local_response_norm", "max_pool", "relu"]

_BIT = np.arange(8, dtype=np.uint8)  # the bit of each of 8 consecutive elements in a byte


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    r""":math:`\max(x, 0)`, as ``jax.nn.relu``, whose derivative keeps 1 bit per element.

    The derivative is :math:`\mathbb{1}[x > 0]` (0 at 0, as ``jax.nn.relu``'s). The tangent
    rule packs that mask into bytes, 8 elements to a byte, and unpacks it where it is used, so
    that a reverse pass keeps the packed mask (1/32 of a float32 input) rather than the
    layer's input or output: XLA recomputed ``x > 0`` from the saved input in the backward
    pass, which kept every convolution's output alive from the forward pass to its gradient
    (387 MB of temporaries per torchvision AlexNet training step at batch 128, 174 MB with the
    packed mask). Values and derivatives (``grad``, ``jvp``, ``jax.hessian``) equal
    ``jax.nn.relu``'s. The bits are packed along the last (channel) axis; where its length is
    not a multiple of 8 the rule is ``jax.nn.relu``'s (XLA may keep the input).
    """
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    if x.ndim == 0 or x.shape[-1] % 8:
        on = x > 0
    else:  # packed along the last axis, which a mesh splits as it splits x's (into 8s)
        shape = (*x.shape[:-1], x.shape[-1] // 8, 8)
        bit = jnp.broadcast_to(_BIT, shape)
        bits = (x > 0).reshape(shape).astype(jnp.uint8) << bit
        packed = jnp.sum(bits, axis=-1, dtype=jnp.uint8)  # a reduction: XLA keeps it, not x
        on = ((packed[..., None] >> bit) & 1).astype(bool).reshape(x.shape)
    return relu(x), jnp.where(on, t, jnp.zeros_like(t))


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"local_response_norm: {name} must be a number, got {value!r}")


def local_response_norm(
    x: jax.Array,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    groups: int = 1,
    impl: str = "auto",
) -> jax.Array:
    r"""Local response normalization across channels (Krizhevsky et al., 2012, §3.3).

    .. math::
       b^i_{x,y} = a^i_{x,y} \Big/ \Big(k + \alpha \sum_{j=\max(0,\, i-\lfloor n/2 \rfloor)}
       ^{\min(N-1,\, i+\lfloor (n-1)/2 \rfloor)} (a^j_{x,y})^2\Big)^{\beta}

    over the last (channel) axis, :math:`n` = ``size``, channels outside the map counting as
    zero. :math:`\alpha` multiplies the plain sum, as in the paper (defaults are the paper's).
    PyTorch's ``nn.LocalResponseNorm`` and Caffe's ``LRN`` divide :math:`\alpha` by ``size``:
    ``torch.nn.LocalResponseNorm(size, alpha=alpha * size, beta, k)`` equals this.

    ``groups`` > 1 normalizes each group of channels on its own (the two-GPU AlexNet: each
    GPU normalized its own half). The sum is computed in at least float32.

    On the CPU, for float32 input and ``size`` 5, both passes run on oneDNN's LRN when
    ``impl`` is ``"auto"`` (and the kernels load, and oneDNN has a jit kernel for the pass on
    this CPU: on AVX2 only the forward) or ``"onednn"`` (first-order reverse mode only:
    traced under forward mode or a second derivative, ``"auto"`` takes XLA's path);
    otherwise, and on other backends, XLA computes it: the window sum as shifted slices, and
    derivatives from a hand-written tangent (a custom JVP) that JAX transposes into the
    gradient, so ``jvp``, ``jax.hessian`` and Hessian-vector products work too.
    """
    if not is_int(groups) or groups < 1:
        raise ValueError(f"local_response_norm: groups must be an int >= 1, got {groups!r}")
    if not is_int(size) or size < 1:
        raise ValueError(f"local_response_norm: size={size!r}, expected a window of >= 1 channels")
    # k > 0 and alpha >= 0 keep the base positive: k=-1 was NaN everywhere, k=0 NaN at every
    # zero activation (0 / 0**beta), which ReLU makes plenty of.
    _check_number("k", k)
    check_finite("local_response_norm: k", k, strict=True)
    _check_number("alpha", alpha)
    check_finite("local_response_norm: alpha", alpha)
    _check_number("beta", beta)
    if not math.isfinite(beta):
        raise ValueError(f"local_response_norm: beta must be a finite number, got {beta!r}")
    if x.ndim < 1 or x.shape[-1] % groups:
        raise ValueError(
            f"local_response_norm: the channel count {x.shape[-1] if x.ndim else None} must be "
            f"divisible by groups={groups}"
        )
    _onednn.check_impl("local_response_norm", impl)
    c = x.shape[-1] // groups
    alpha, beta, k = float(alpha), float(beta), float(k)
    kernels, why = _onednn_lrn_kernels(impl, x, c, size, alpha, beta, k)
    if why is None:
        b = _onednn_lrn(x.reshape(-1, c), size, alpha, beta, k, bool(kernels & 2))
        return b.reshape(x.shape)
    if impl == "onednn":
        raise RuntimeError(f"local_response_norm(impl='onednn'): cannot use oneDNN: {why}")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    a = x.astype(compute).reshape(*x.shape[:-1], groups, c)
    b = _lrn(a, size, alpha, beta, k)
    return b.reshape(x.shape).astype(x.dtype)


def _onednn_lrn_kernels(
    impl: str, x: jax.Array, c: int, size: int, alpha: float, beta: float, k: float
) -> tuple[int, str | None]:
    """(oneDNN's jit passes, as :func:`_onednn.lrn_kernels` gives them; why not oneDNN)."""
    why = _onednn.why_not(impl, x)
    if why is not None:
        return 0, why
    if x.size == 0:
        return 0, "an empty input"
    if size != 5:  # oneDNN 3.2 crashes building some other sizes' backward (size 1)
        return 0, f"size={size}: oneDNN's LRN is used for the paper's size 5 only"
    given = _lrn_attrs(size, alpha, beta, k)  # what the kernel is given: the same plan
    constants = (float(given[name]) for name in ("alpha", "beta", "k"))
    kernels = _onednn.lrn_kernels(x.size // c, c, size, *constants)
    if kernels < 0:
        return 0, f"oneDNN refuses an LRN of {c} channels, size {size}"
    if not kernels & 1:
        return 0, f"oneDNN has only its reference LRN for {c} channels on this CPU"
    return kernels, None


def _window_sum(v: jax.Array, lo: int, hi: int) -> jax.Array:
    """``out[..., i] = sum(v[..., i - lo : i + hi + 1])`` over the last axis, zeros outside."""
    c = v.shape[-1]
    padded = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(lo, hi)])
    return sum(padded[..., i : i + c] for i in range(lo + hi + 1))  # shifted slices; fuses.


def _negative_power(d: jax.Array, beta: float) -> jax.Array:
    """``d ** -beta`` for ``d > 0``; the paper's 0.75 as ``rsqrt(d) * sqrt(rsqrt(d))``."""
    if beta == 0.75:
        r = jax.lax.rsqrt(d)
        return r * jnp.sqrt(r)
    if beta == 0.5:
        return jax.lax.rsqrt(d)
    if beta == 1.0:
        return 1.0 / d
    return jnp.power(d, -beta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(a: jax.Array, size: int, alpha: float, beta: float, k: float) -> jax.Array:
    d = k + alpha * _window_sum(jnp.square(a), size // 2, (size - 1) // 2)
    return a * _negative_power(d, beta)


@_lrn.defjvp
def _lrn_jvp(size, alpha, beta, k, primals, tangents):
    # b_i = a_i d_i^-β with d_i = k + α Σ_{j ∈ W(i)} a_j², so the tangent is
    # db_i = da_i d_i^-β − 2αβ a_i d_i^(−β−1) Σ_{j ∈ W(i)} a_j da_j: linear in da and made of
    # products, pads and slices, which JAX transposes into the gradient
    # ∂L/∂a_i = g_i d_i^-β − 2αβ a_i Σ_{j : i ∈ W(j)} g_j a_j d_j^(−β−1) (the mirrored window)
    # and differentiates again, so jvp, vmap, jax.hessian and Hessian-vector products work.
    (a,), (da,) = primals, tangents
    lo, hi = size // 2, (size - 1) // 2

    d = k + alpha * _window_sum(jnp.square(a), lo, hi)
    p = _negative_power(d, beta)
    scale = (-2.0 * alpha * beta) * a * p / d
    return a * p, da * p + scale * _window_sum_by_pads(a * da, lo, hi)


def _window_sum_by_pads(v: jax.Array, lo: int, hi: int) -> jax.Array:
    """:func:`_window_sum` as a sum of shifted pads, cropped: the same linear map, written so
    that its transpose (what the gradient runs) is one pad and shifted slices, the mirrored
    :func:`_window_sum` — not a pad per shift."""
    c, n = v.shape[-1], lo + hi
    lead = [(0, 0)] * (v.ndim - 1)
    total = sum(jnp.pad(v, [*lead, (i, n - i)]) for i in range(n + 1))
    return total[..., hi : hi + c]


def _lrn_bwd(size, alpha, beta, k, a, g):
    # The gradient in one pass, for the oneDNN path where oneDNN has no jit backward (AVX2):
    # ∂L/∂a_i = g_i d_i^-β − 2αβ a_i Σ_{j : i ∈ W(j)} g_j a_j d_j^(−β−1), the mirrored
    # window; d is recomputed from a, the only residual.
    lo, hi = size // 2, (size - 1) // 2
    d = k + alpha * _window_sum(jnp.square(a), lo, hi)
    p = _negative_power(d, beta)
    t = g * a * p / d
    return (g * p - (2.0 * alpha * beta) * a * _window_sum(t, hi, lo),)


def _lrn_attrs(size: int, alpha: float, beta: float, k: float) -> dict[str, np.generic]:
    f32 = np.float32
    return dict(size=np.int64(size), alpha=f32(alpha), beta=f32(beta), k=f32(k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _onednn_lrn(
    a: jax.Array, size: int, alpha: float, beta: float, k: float, onednn_bwd: bool
) -> jax.Array:
    """LRN of ``a`` (rows, c) on oneDNN on the CPU (XLA's :func:`_lrn` on other platforms: a
    function traced on the CPU may be lowered for another)."""

    def cpu(a):
        out = jax.ShapeDtypeStruct(a.shape, a.dtype)
        return _onednn.ffi("gdjax_lrn_fwd", out, a, **_lrn_attrs(size, alpha, beta, k))

    return jax.lax.platform_dependent(a, cpu=cpu, default=lambda a: _lrn(a, size, alpha, beta, k))


def _onednn_lrn_fwd(a, size, alpha, beta, k, onednn_bwd):
    return _onednn_lrn(a, size, alpha, beta, k, onednn_bwd), a


def _onednn_lrn_bwd(size, alpha, beta, k, onednn_bwd, a, g):
    def xla(a, g):
        return _lrn_bwd(size, alpha, beta, k, a, g)[0]

    if not onednn_bwd:  # oneDNN's backward would be its reference loops here
        return (xla(a, g),)

    def cpu(a, g):
        out = jax.ShapeDtypeStruct(a.shape, a.dtype)
        return _onednn.ffi("gdjax_lrn_bwd", out, a, g, **_lrn_attrs(size, alpha, beta, k))

    return (jax.lax.platform_dependent(a, g, cpu=cpu, default=xla),)


_onednn_lrn.defvjp(_onednn_lrn_fwd, _onednn_lrn_bwd)


class LocalResponseNorm(nn.Module):
    """:func:`local_response_norm` as a (parameter-free) Flax module."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    groups: int = 1
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return local_response_norm(
            x, self.size, self.alpha, self.beta, self.k, self.groups, impl=self.impl
        )


def _averaging_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i averages inputs floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1 (PyTorch's bins)."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """Average-pool an NHWC batch to ``output_size`` with PyTorch's ``AdaptiveAvgPool2d`` bins.

    When the input already has the output size this is the identity (no work is done).
    """
    if (
        not isinstance(output_size, (tuple, list))
        or len(output_size) != 2
        or not all(is_int(n) and n >= 1 for n in output_size)
    ):
        raise ValueError(
            f"adaptive_avg_pool: output_size must be (height, width), two ints >= 1, got "
            f"{output_size!r}"
        )
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    mh = jnp.asarray(_averaging_matrix(h, oh), x.dtype)
    mw = jnp.asarray(_averaging_matrix(w, ow), x.dtype)
    return jnp.einsum("ih,...hwc,jw->...ijc", mh, x, mw)


def _windows(x: jax.Array, window: int, stride: int) -> tuple[list[jax.Array], int, int]:
    """The ``window²`` strided views of an NHWC batch, one per offset in the pooling window."""
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    views = [
        jax.lax.slice_in_dim(
            jax.lax.slice_in_dim(x, di, di + stride * (oh - 1) + 1, stride, axis=x.ndim - 3),
            dj,
            dj + stride * (ow - 1) + 1,
            stride,
            axis=x.ndim - 2,
        )
        for di in range(window)
        for dj in range(window)
    ]
    return views, oh, ow


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, impl: str = "auto") -> jax.Array:
    """VALID max-pooling of an NHWC batch, equal to ``flax.linen.max_pool`` in value and gradient.

    The gradient goes to the first maximum of each window in row-major order (as XLA's
    select-and-scatter picks it), found from the argmax kept by the forward pass. On the CPU,
    for float32 rank-4 input, both passes run on oneDNN when ``impl`` is ``"auto"`` (and the
    kernels load; see :func:`gdjax.models.conv_general_dilated`) or ``"onednn"``; otherwise,
    and on other backends, the argmax is scattered back per stride phase in plain JAX —
    several times faster on the CPU than XLA's select-and-scatter, and the same function —
    as the transpose of a custom JVP (the tangent gathered at the argmax), so forward mode
    and higher derivatives work on this path; oneDNN's has first-order reverse mode only
    (traced under forward mode or a second derivative, ``"auto"`` takes this path).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"max_pool: window={window} and stride={stride} must be >= 1")
    _onednn.check_impl("max_pool", impl)
    if x.ndim >= 3 and min(x.shape[-3:-1]) < window:
        raise ValueError(f"max_pool: window {window} larger than the input's {x.shape[-3:-1]}")
    why = "rank != 4" if x.ndim != 4 else _onednn.why_not(impl, x)
    if why is None:
        return _onednn_max_pool(x, window, stride)
    if impl == "onednn":
        raise RuntimeError(f"max_pool(impl='onednn'): cannot use oneDNN: {why}")
    return _xla_max_pool(x, window, stride)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _xla_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    views, _, _ = _windows(x, window, stride)
    return functools.reduce(jnp.maximum, views)


@_xla_max_pool.defjvp
def _xla_max_pool_jvp(window, stride, primals, tangents):
    (x,), (dx,) = primals, tangents
    out, (arg, _) = _max_pool_fwd(x, window, stride)
    return out, _max_pool_gather(arg, dx, window, stride)


def _max_pool_gather(arg: jax.Array, dx: jax.Array, window: int, stride: int) -> jax.Array:
    """The tangent of max-pooling: ``dx`` at each window's first maximum (``arg`` indexes the
    window row-major), linear in ``dx``.

    Written as the exact transpose of the per-stride-phase scatter, so that JAX's transpose of
    it, the gradient, is that scatter: ``dx`` is split into its stride² phases (input row
    ``h = p + stride*q``) by a reshape, and window offset ``di = p + stride*m`` reads phase
    ``p`` at rows ``q = o + m`` — edge slices at the output's size, never strided ones (whose
    transposes are interior pads). About window²/stride² output-sized terms instead of
    window² input-sized ones: several times faster on the CPU than XLA's select-and-scatter.
    Plain JAX, so forward mode, vmap and higher derivatives work through it.
    """
    h, w = dx.shape[-3], dx.shape[-2]
    oh, ow = arg.shape[-3], arg.shape[-2]
    hq, wq = -(-h // stride), -(-w // stride)  # rows/cols of the largest phase
    lead = dx.shape[:-3]
    pads = [(0, 0, 0)] * len(lead) + [(0, hq * stride - h, 0), (0, wq * stride - w, 0), (0, 0, 0)]
    zero = jnp.zeros((), dx.dtype)
    grid = jax.lax.pad(dx, zero, pads).reshape(*lead, hq, stride, wq, stride, dx.shape[-1])
    # Each phase is cut out once (its transpose: the phases stacked back), then read by its
    # offsets (transpose: edge pads summed at the phase's size, as in the scatter).
    rows = [r.squeeze(-4) for r in jnp.split(grid, stride, axis=-4)]  # split: transpose concat
    phases = {
        (pr, pc): part.squeeze(-2)
        for pr, row in enumerate(rows)
        for pc, part in enumerate(jnp.split(row, stride, axis=-2))
    }
    total = None
    for (pr, pc), phase in phases.items():
        for di in range(pr, window, stride):
            for dj in range(pc, window, stride):
                m, n = (di - pr) // stride, (dj - pc) // stride
                part = phase[..., m : m + oh, n : n + ow, :]
                part = jnp.where(arg == di * window + dj, part, zero)
                total = part if total is None else total + part
    return total


def _max_pool_fwd(x, window, stride):
    views, _, _ = _windows(x, window, stride)
    out = functools.reduce(jnp.maximum, views)
    # Index of the first view attaining the maximum: scan from the last so earlier views win.
    arg = jnp.zeros(out.shape, jnp.int8)
    for k in range(len(views) - 1, -1, -1):
        arg = jnp.where(views[k] == out, jnp.int8(k), arg)
    return out, (arg, x.shape)


def _max_pool_bwd(window, stride, residuals, g):
    # Input row h = p + stride*q ("phase" p) receives from window offsets di = p + stride*m,
    # output row q - m. So each of the stride² phases of the gradient is a sum of a few
    # shifted (edge-padded, never interior-padded) selects at the output's size; the phases
    # are then interleaved. About window²/stride² output-sized terms instead of window²
    # input-sized ones.
    arg, shape = residuals
    h, w = shape[-3], shape[-2]
    oh, ow = g.shape[-3], g.shape[-2]
    hq, wq = -(-h // stride), -(-w // stride)  # rows/cols of the largest phase
    zero = jnp.zeros((), g.dtype)
    lead = [(0, 0, 0)] * (g.ndim - 3)
    phases = []
    for pr in range(stride):
        row = []
        for pc in range(stride):
            total = None
            for di in range(pr, window, stride):
                for dj in range(pc, window, stride):
                    m, n = (di - pr) // stride, (dj - pc) // stride
                    part = jnp.where(arg == di * window + dj, g, zero)
                    pads = [*lead, (m, hq - oh - m, 0), (n, wq - ow - n, 0), (0, 0, 0)]
                    part = jax.lax.pad(part, zero, pads)
                    total = part if total is None else total + part
            if total is None:  # stride > window: this phase is never read
                total = jnp.zeros((*g.shape[:-3], hq, wq, g.shape[-1]), g.dtype)
            row.append(total)
        phases.append(jnp.stack(row, axis=-2))  # (..., hq, wq, stride, c)
    grid = jnp.stack(phases, axis=-4)  # (..., hq, stride, wq, stride, c)
    grid = grid.reshape(*g.shape[:-3], hq * stride, wq * stride, g.shape[-1])
    return (grid[..., :h, :w, :],)


def _pool_attrs(window: int, stride: int) -> dict[str, np.int64]:
    w, s = np.int64(window), np.int64(stride)
    return dict(window_h=w, window_w=w, stride_h=s, stride_w=s)


def _onednn_pool_fwd(x, window, stride):
    # Returns (y, argmax as uint8): oneDNN's workspace on the CPU, the plain-JAX argmax elsewhere
    # (a function traced on the CPU may be lowered for another platform).
    def cpu(x):
        out = jax.eval_shape(functools.partial(_xla_max_pool, window=window, stride=stride), x)
        shapes = (out, jax.ShapeDtypeStruct(out.shape, jnp.uint8))
        return tuple(_onednn.ffi("gdjax_max_pool_fwd", shapes, x, **_pool_attrs(window, stride)))

    def default(x):
        out, (arg, _) = _max_pool_fwd(x, window, stride)
        return out, arg.astype(jnp.uint8)

    return jax.lax.platform_dependent(x, cpu=cpu, default=default)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _onednn_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return _onednn_pool_fwd(x, window, stride)[0]


def _onednn_max_pool_fwd(x, window, stride):
    out, workspace = _onednn_pool_fwd(x, window, stride)
    return out, (workspace, x.shape)


def _onednn_max_pool_bwd(window, stride, residuals, g):
    workspace, shape = residuals
    x = jax.ShapeDtypeStruct(tuple(shape), g.dtype)

    def cpu(g, workspace):
        return _onednn.ffi("gdjax_max_pool_bwd", x, g, workspace, **_pool_attrs(window, stride))

    def default(g, workspace):
        return _max_pool_bwd(window, stride, (workspace.astype(jnp.int8), x.shape), g)[0]

    return (jax.lax.platform_dependent(g, workspace, cpu=cpu, default=default),)


_onednn_max_pool.defvjp(_onednn_max_pool_fwd, _onednn_max_pool_bwd)
