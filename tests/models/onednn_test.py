"""The oneDNN path (convolutions, max-pooling, LRN): XLA's values and gradients; falls back where
it must."""

import contextlib
import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from model_testing import assert_close_to_scale, assert_equal, jit_init, normal, onednn_calls

from gdjax.models import (
    AlexNet,
    _onednn,
    conv_bias_relu,
    conv_general_dilated,
    layers,
    local_response_norm,
    max_pool,
    onednn_status,
)
from gdjax.models import alexnet as alexnet_module

NHWC = ("NHWC", "HWIO", "NHWC")


# On jaxlib older than _onednn.MIN_JAXLIB conftest deselects these (the path is refused there,
# which test_old_jaxlib_is_refused checks); elsewhere a missing oneDNN is a skip, which CI's
# GDJAX_NO_SKIPS=1 turns into a failure.
def needs_onednn(test):
    unavailable = pytest.mark.skipif(
        not onednn_status()[0], reason=f"oneDNN kernels unavailable: {onednn_status()[1]}"
    )
    return pytest.mark.onednn(unavailable(test))


# (batch, height, width, in, kernel, out, stride, padding, groups): AlexNet's shapes scaled down,
# plus asymmetric strides/pads and the string paddings.
GEOMETRIES = [
    (2, 35, 35, 3, 11, 8, (4, 4), [(0, 0), (0, 0)], 1),  # paper conv1
    (2, 36, 33, 3, 11, 8, (4, 4), [(2, 2), (2, 2)], 1),  # torchvision conv1
    (3, 9, 9, 8, 5, 12, (1, 1), [(2, 2), (2, 2)], 2),  # grouped conv2
    (2, 7, 8, 12, 3, 6, (1, 1), [(1, 1), (1, 1)], 3),  # grouped 3x3
    (2, 10, 9, 4, 3, 6, (2, 1), [(1, 2), (0, 1)], 2),  # asymmetric
    (2, 10, 9, 4, 3, 6, (2, 3), "SAME", 1),
    (2, 10, 9, 4, 3, 6, (1, 2), "VALID", 2),
    # 16+ input maps per group: the weight gradient reads blocked layouts
    (2, 9, 9, 32, 3, 16, (1, 1), [(1, 1), (1, 1)], 1),
    (2, 8, 7, 64, 3, 32, (1, 1), [(1, 1), (1, 1)], 2),  # grouped
    (2, 11, 10, 20, 5, 12, (2, 1), [(2, 1), (0, 2)], 1),  # maps not a multiple of 8
    # padded into a buffer first (a direct kernel, not GEMM); x's last row and column unread
    (2, 38, 37, 3, 11, 8, (4, 4), [(2, 1), (3, 0)], 1),
]


def _operands(geometry, seed=0):
    n, h, w, c, k, o, _, _, g = geometry
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, c // g, o)) / k, jnp.float32)
    return x, kernel


def _loss(impl, strides, padding, groups):
    def loss(x, w):
        y = conv_general_dilated(
            x, w, strides, padding, dimension_numbers=NHWC, feature_group_count=groups, impl=impl
        )
        return jnp.sum(jnp.sin(y)), y

    return loss


def _exact_conv(x, w, strides, padding, groups):
    return jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        dimension_numbers=NHWC,
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


def _reference(x, w, strides, padding, groups):
    def loss(x, w):
        y = _exact_conv(x, w, strides, padding, groups)
        return jnp.sum(jnp.sin(y)), y

    return jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, w)


def _close(a, b, rtol=2e-5):
    assert_close_to_scale(a, b, rtol)


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_values_and_gradients_match_xla(geometry):
    x, w = _operands(geometry)
    strides, padding, groups = geometry[6], geometry[7], geometry[8]
    fn = jax.jit(
        jax.value_and_grad(_loss("onednn", strides, padding, groups), (0, 1), has_aux=True)
    )
    assert "gdjax_conv_bwd_weights" in fn.lower(x, w).as_text()
    (value, y), (dx, dw) = fn(x, w)
    (value_ref, y_ref), (dx_ref, dw_ref) = _reference(x, w, strides, padding, groups)
    assert y.shape == y_ref.shape
    _close(y, y_ref)
    _close(dx, dx_ref)
    _close(dw, dw_ref)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)


@needs_onednn
def test_auto_uses_onednn_on_cpu_and_xla_opts_out():
    x, w = _operands(GEOMETRIES[2])

    def hlo(impl):
        f = _loss(impl, (1, 1), "SAME", 2)
        return jax.jit(jax.grad(lambda x, w: f(x, w)[0], (0, 1))).lower(x, w).as_text()

    auto = hlo("auto")
    assert all(t in auto for t in ("gdjax_conv_fwd", "gdjax_conv_bwd_data", "gdjax_conv_bwd_"))
    assert "gdjax_conv" not in hlo("xla")


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@needs_onednn
def test_auto_differentiates_to_any_order_taking_xla_where_it_must():
    """With impl='auto' (the default), a layer traced under forward mode (jvp, jax.hessian, a
    forward-over-reverse Hessian-vector product) or under a derivative of a derivative takes
    XLA's path by itself and gives what the network on XLA gives; first-order reverse mode
    stays on oneDNN; impl='onednn' there is an error that says why."""
    kw = dict(variant="small", num_classes=10, in_channels=1)
    nets = {impl: AlexNet(**kw, impl=impl) for impl in ("auto", "xla", "onednn")}
    x = normal(0, (2, 28, 28, 1))
    params = jit_init(nets["xla"])(jax.random.key(1), x)["params"]
    rng = np.random.default_rng(2)  # numpy's draws: no program to compile per leaf shape
    t = jax.tree.map(lambda p: rng.standard_normal(p.shape, np.float32) * np.std(p), params)
    assert nets["auto"].lrn and nets["auto"].fused_relu is not False  # every kernel is in it

    def loss(impl):
        return lambda p: jnp.sum(jnp.sin(3.0 * nets[impl].apply({"params": p}, x)))

    def derivatives(impl):  # of the whole network: its layers are traced under a derivative
        f = loss(impl)
        return {
            "jvp": jax.jvp(f, (params,), (t,))[1],
            "forward-over-reverse": jax.jvp(jax.grad(f), (params,), (t,))[1],
            "reverse-over-reverse": jax.grad(lambda q: _tree_vdot(jax.grad(f)(q), t))(params),
        }

    def bias_hessian(impl):  # the layers before the last are constants here: oneDNN may run them
        last = sorted(params)[-1]
        f = loss(impl)
        return jax.hessian(lambda b: f({**params, last: {**params[last], "bias": b}}))(
            params[last]["bias"]
        )

    # XLA's path alone, so the very program the XLA network's is (the second compilation is
    # read from the test session's cache).
    staged = jax.jit(lambda: derivatives("auto")).lower()
    assert not onednn_calls(staged.as_text())
    ours, xla = staged.compile()(), jax.jit(lambda: derivatives("xla"))()
    ours["hessian"] = jax.jit(lambda: bias_hessian("auto"))()
    xla["hessian"] = jax.jit(lambda: bias_hessian("xla"))()
    for name in ours:
        for a, b in zip(jax.tree.leaves(ours[name]), jax.tree.leaves(xla[name]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))
    assert float(jnp.abs(ours["hessian"]).max()) > 0
    first_order = jax.jit(jax.grad(loss("auto"))).lower(params).as_text()
    for target in ("gdjax_conv_bwd_data", "gdjax_conv_bias_relu_fwd", "gdjax_max_pool_bwd"):
        assert target in first_order, target
    with pytest.raises(RuntimeError, match=r"forward-mode differentiation .* first-order reverse"):
        jax.jvp(loss("onednn"), (params,), (t,))
    with pytest.raises(RuntimeError, match=r"a derivative of a derivative .* first-order reverse"):
        jax.grad(lambda q: _tree_vdot(jax.grad(loss("onednn"))(q), t))(params)


@needs_onednn
def test_other_platforms_get_xlas_convolution_and_pooling():
    """Traced on the CPU, lowered for a GPU: the oneDNN branches are not in the module."""
    model = AlexNet(num_classes=10, variant="small", fused_relu=False)
    fused = AlexNet(num_classes=10, variant="small", fused_relu=True)
    x = jnp.ones((2, 32, 32, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(p, x):  # both models (the same parameters): every kernel is in the program
        return jnp.sum(model.apply(p, x) ** 2) + jnp.sum(fused.apply(p, x) ** 2)

    grad = jax.jit(jax.grad(loss))
    ours = [jax_export.DisabledSafetyCheck.custom_call(t) for t in _onednn.TARGETS]
    both = jax_export.export(grad, platforms=("cpu", "cuda"), disabled_checks=ours)(params, x)
    cuda = jax_export.export(grad, platforms=("cuda",), disabled_checks=ours)(params, x)
    both, cuda = both.mlir_module(), cuda.mlir_module()
    for target in _onednn.TARGETS:  # LRN's backward stays XLA's where oneDNN has no jit one
        if target != "gdjax_lrn_bwd" or _lrn_passes_on_onednn() & 2:
            assert target in onednn_calls(both), target
    assert "convolution" in both
    assert not onednn_calls(cuda) and "convolution" in cuda


def _bias_relu_loss(impl, strides, padding, groups):
    def loss(x, w, b):
        y = conv_bias_relu(x, w, b, strides, padding, groups, impl=impl)
        return jnp.sum(jnp.sin(y)), y

    return loss


def _bias_relu_reference(x, w, b, strides, padding, groups):
    def loss(x, w, b):
        y = jax.nn.relu(_exact_conv(x, w, strides, padding, groups) + b.reshape(1, 1, 1, -1))
        return jnp.sum(jnp.sin(y)), y

    return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, w, b)


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_fused_bias_relu_matches_xla(geometry):
    """relu(conv + b) in one oneDNN call: XLA's values and gradients (about half the outputs
    are cut by the ReLU)."""
    x, w = _operands(geometry)
    b = jnp.asarray(np.random.default_rng(1).standard_normal(w.shape[-1]) * 0.5, jnp.float32)
    strides, padding, groups = geometry[6], geometry[7], geometry[8]
    fn = jax.jit(
        jax.value_and_grad(
            _bias_relu_loss("onednn", strides, padding, groups), (0, 1, 2), has_aux=True
        )
    )
    hlo = fn.lower(x, w, b).as_text()
    assert "gdjax_conv_bias_relu_fwd" in hlo and "gdjax_conv_fwd" not in hlo
    assert "gdjax_conv_bwd_data" in hlo and "gdjax_conv_bwd_weights" in hlo
    (value, y), grads = fn(x, w, b)
    (value_ref, y_ref), grads_ref = _bias_relu_reference(x, w, b, strides, padding, groups)
    assert 0.2 < float(jnp.mean(y_ref == 0)) < 0.8
    _close(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.shape == g_ref.shape
        _close(g, g_ref)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    # impl="xla" is the same function with the same gradients
    (_, y_xla), grads_xla = jax.jit(
        jax.value_and_grad(_bias_relu_loss("xla", strides, padding, groups), (0, 1, 2), True)
    )(x, w, b)
    _close(y_xla, y_ref)
    for g, g_ref in zip(grads_xla, grads_ref, strict=True):
        _close(g, g_ref)


@needs_onednn
def test_fused_bias_relu_gradient_at_zero_is_relus():
    """Where conv + b is exactly 0 the gradient is 0, as jax.nn.relu's: the mask read off the
    output (y > 0) is ReLU's derivative."""
    x = jnp.zeros((2, 6, 6, 4))
    w = jnp.ones((3, 3, 4, 5))
    b = jnp.zeros((5,))
    for impl in ("onednn", "xla"):

        def total(x, w, b, impl=impl):
            return conv_bias_relu(x, w, b, (1, 1), "SAME", impl=impl).sum()

        value, grads = jax.jit(jax.value_and_grad(total, (0, 1, 2)))(x, w, b)
        assert float(value) == 0.0
        for g in grads:
            np.testing.assert_array_equal(g, 0.0)


def test_fused_bias_relu_checks_its_inputs():
    x, w = _operands(GEOMETRIES[3])  # 3 groups, 6 maps
    b = jnp.zeros((6,))
    with pytest.raises(ValueError, match=r"one bias per output map.*b \(5,\)"):
        conv_bias_relu(x, w, jnp.zeros((5,)), (1, 1), "SAME", 3)
    with pytest.raises(ValueError, match="feature_group_count=2 does not fit x's 12 maps"):
        conv_bias_relu(x, w, b, (1, 1), "SAME", 2)
    with pytest.raises(ValueError, match="conv_bias_relu: impl='fast'"):
        conv_bias_relu(x, w, b, (1, 1), "SAME", 3, impl="fast")
    # bfloat16: XLA's convolution (the same function), or an error naming why with "onednn"
    xb, wb, bb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    assert (
        "gdjax_"
        not in jax.jit(lambda: conv_bias_relu(xb, wb, bb, (1, 1), "SAME", 3)).lower().as_text()
    )
    expected = jax.nn.relu(
        jax.lax.conv_general_dilated(
            xb, wb, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=3
        )
        + bb.reshape(1, 1, 1, -1)
    )
    np.testing.assert_array_equal(conv_bias_relu(xb, wb, bb, (1, 1), "SAME", 3), expected)
    if onednn_status()[0]:
        with pytest.raises(RuntimeError, match="bfloat16"):
            conv_bias_relu(xb, wb, bb, (1, 1), "SAME", 3, impl="onednn")
    with pytest.raises(ValueError, match="fused_relu=True needs activation='relu', got 'tanh'"):
        AlexNet(variant="small", activation="tanh", fused_relu=True).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )


@needs_onednn
@pytest.mark.parametrize(
    "kwargs, fused",
    [
        ({"variant": "small"}, True),
        ({"variant": "paper"}, True),
        ({"variant": "torchvision"}, False),
        ({"variant": "small", "fused_relu": False}, False),
        ({"variant": "torchvision", "fused_relu": True}, True),
        ({"variant": "small", "activation": "tanh"}, False),
    ],
    ids=str,
)
def test_fused_relu_defaults_to_the_variants_with_lrn(kwargs, fused):
    """fused_relu=None: the bias and ReLU are post-ops in the paper and small variants (with
    ReLU), not in torchvision's; True and False force it."""
    model = AlexNet(num_classes=10, **kwargs)
    side = 227 if kwargs["variant"] == "paper" else 64
    x = jnp.ones((1, side, side, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    hlo = jax.jit(model.apply).lower(params, x).as_text()
    assert ("gdjax_conv_bias_relu_fwd" in hlo) == fused
    assert "gdjax_conv_fwd" in hlo or fused  # the unfused layers are still oneDNN's
    with pytest.raises(ValueError, match="fused_relu must be None, True or False, got 'yes'"):
        AlexNet(variant="small", fused_relu="yes").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))


@needs_onednn
@pytest.mark.parametrize("variant, size", [("small", 32), ("torchvision", 64)])
def test_alexnet_with_fused_relu_is_the_same_network(variant, size):
    """Same parameter tree and initialisation, same outputs and gradients (dropout on)."""
    plain = AlexNet(num_classes=10, variant=variant, fused_relu=False)
    fused = AlexNet(num_classes=10, variant=variant, fused_relu=True)
    x = normal(0, (4, size, size, 3))
    params = jit_init(plain)(jax.random.key(1), x)
    fused_params = jit_init(fused)(jax.random.key(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(fused_params)
    jax.tree.map(assert_equal, params, fused_params)

    def loss(model):
        def f(p):
            out = model.apply(p, x, train=True, rngs={"dropout": jax.random.key(2)})
            return jnp.sum(jnp.sin(out)), out

        return jax.jit(jax.value_and_grad(f, has_aux=True))

    hlo = loss(fused).lower(params).as_text()
    assert "gdjax_conv_bias_relu_fwd" in hlo and "gdjax_conv_fwd" not in hlo
    (_, out), grads = loss(fused)(params)
    (_, out_ref), grads_ref = loss(plain)(params)
    _close(out, out_ref)
    jax.tree.map(_close, grads, grads_ref)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(dtype=jnp.bfloat16), "bfloat16"),
        (dict(rhs_dilation=(2, 2)), "dilation"),
        (dict(padding=[(-1, 0), (0, 0)]), "padding"),
        (dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), "layout"),
    ],
    ids=["bf16", "dilation", "negative-pad", "nchw"],
)
def test_unsupported_calls_fall_back_to_xla_or_raise(kwargs, reason):
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", jnp.float32)
    x, w = _operands(GEOMETRIES[3])
    x, w = x.astype(dtype), w.astype(dtype)
    call = dict(padding=[(1, 1), (1, 1)], dimension_numbers=NHWC, feature_group_count=3)
    call.update(kwargs)
    if call["dimension_numbers"][0] == "NCHW":
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    padding = call.pop("padding")

    def run(impl):
        return conv_general_dilated(x, w, (1, 1), padding, **call, impl=impl)

    lowered = jax.jit(lambda: run("auto")).lower().as_text()
    assert "gdjax_conv" not in lowered
    expected = jax.lax.conv_general_dilated(x, w, (1, 1), padding, **call)
    np.testing.assert_array_equal(run("auto"), expected)
    with pytest.raises(RuntimeError, match=reason):
        run("onednn")


def test_max_pool_falls_back_or_raises():
    x = normal(0, (2, 9, 9, 4))
    ref = max_pool(x, 3, 2, impl="xla")
    for y, reason in ((x.astype(jnp.bfloat16), "bfloat16"), (x[None], "rank")):
        assert not onednn_calls(jax.jit(lambda v: max_pool(v, 3, 2)).lower(y).as_text())
        with pytest.raises(RuntimeError, match=reason):
            max_pool(y, 3, 2, impl="onednn")
    np.testing.assert_array_equal(max_pool(x[None], 3, 2)[0], ref)
    with pytest.raises(ValueError, match="window 11 larger"):
        max_pool(x, 11, 2)
    with pytest.raises(ValueError, match="impl='fast'"):
        max_pool(x, 3, 2, impl="fast")
    with pytest.raises(ValueError, match="max_pool: impl='fast'"):  # whatever the rank
        max_pool(x[None], 3, 2, impl="fast")


def test_bad_impl_is_rejected():
    x, w = _operands(GEOMETRIES[3])
    with pytest.raises(ValueError, match="impl='fast'"):
        conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, impl="fast")
    with pytest.raises(ValueError, match=r"impl='oneDNN', .* \(did you mean 'onednn'\?\)$"):
        conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, impl="oneDNN")
    with pytest.raises(ValueError, match="impl must be one of"):
        AlexNet(variant="small", impl="fast").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@needs_onednn
def test_vmap_pmap_and_sharded_jit_match_xla():
    """Under vmap (sequential calls), pmap and a batch-sharded jit the results are XLA's."""
    geometry = (8, 9, 9, 4, 3, 6, (1, 1), [(1, 1), (1, 1)], 2)
    x, w = _operands(geometry)
    strides, padding, groups = geometry[6], geometry[7], geometry[8]
    (_, y_ref), (dx_ref, dw_ref) = _reference(x, w, strides, padding, groups)
    loss = _loss("onednn", strides, padding, groups)

    # vmap over a leading axis of single images (the kernel sees batches of one).
    per_image = jax.vmap(lambda xi: loss(xi[None], w)[1][0])(x)
    _close(per_image, y_ref)

    # pmap: each of the 8 (fake) devices convolves its own image; gradients are summed.
    def shard_grad(xs, w):
        (_, y), (dx, dw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(xs, w)
        return y, dx, jax.lax.psum(dw, "d")

    y, dx, dw = jax.pmap(shard_grad, "d", in_axes=(0, None))(x[:, None], w)
    _close(y[:, 0], y_ref)
    _close(dx[:, 0], dx_ref)
    _close(dw[0], dw_ref)

    # jit over a batch-sharded mesh.
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
    (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(xs, w)
    _close(y, y_ref)
    _close(dx, dx_ref)
    _close(dw, dw_ref)

    # Max-pooling, the same three ways.
    def pool_loss(impl):
        return lambda v: jnp.sum(jnp.sin(max_pool(v, 3, 2, impl=impl)))

    g_ref = jax.grad(pool_loss("xla"))(x)
    for g in _three_ways(jax.grad(pool_loss("onednn")), x):
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def _three_ways(f, *batches):
    """``f`` (arrays whose leading axis is a batch of 8 -> one such array) run per example under
    vmap, per fake device under pmap, and under a jit over a batch-sharded mesh."""

    def one(*parts):
        return f(*(p[None] for p in parts))[0]

    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    sharded = [jax.device_put(b, NamedSharding(mesh, PartitionSpec("batch"))) for b in batches]
    return jax.vmap(one)(*batches), jax.pmap(one)(*batches), jax.jit(f)(*sharded)


def _well_conditioned(shapes, seed=5):
    """He-normal kernels and N(0, 0.1) biases in the network's own shapes (``shapes``: the
    parameter tree, arrays or ``jax.ShapeDtypeStruct``), drawn by numpy.

    The paper's initialisation (N(0, 0.01) kernels, unit biases) makes every activation a
    small signal on a large constant, so any float32 path loses ~2% of conv1's gradient to
    cancellation, and by how much depends on the CPU's instruction set (AVX2 vs AVX-512 change
    the accumulation order). With these parameters float64 truth is reached to a few float32
    ulps by both paths on any CPU, so a fixed bound tests the kernels, not rounding luck.
    """
    rng = np.random.default_rng(seed)

    def draw(path, a):
        z = rng.standard_normal(a.shape, np.float32)
        scale = np.sqrt(2 / np.prod(a.shape[:-1])) if path[-1].key == "kernel" else 0.1
        return jnp.asarray(z * np.float32(scale), a.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _windows(z, window, stride):
    """The VALID max-pooling windows of an NHWC batch, stacked on a new last axis (row-major
    offsets, the order in which pooling breaks ties)."""
    return jnp.stack(layers._windows(z, window, stride)[0], axis=-1)


def _pieces(monkeypatch, model, params, x):
    """The linear piece ``model`` computes at ``x``: every ReLU's mask and every max-pool window's
    argmax (first maximum, as XLA and oneDNN break ties), in call order, from the jitted
    forward pass of ``model`` itself."""

    def forward(p, x):
        found = []

        def relu(z):
            found.append(z > 0)
            return jax.nn.relu(z)

        def pool(z, window=3, stride=2, impl="auto"):
            found.append(jnp.argmax(_windows(z, window, stride), axis=-1))
            return max_pool(z, window, stride, impl=impl)

        with monkeypatch.context() as m:
            m.setitem(alexnet_module.ACTIVATIONS, "relu", relu)
            m.setattr(alexnet_module, "max_pool", pool)
            model.apply({"params": p}, x)
        return found

    return jax.jit(forward)(params, x)


@contextlib.contextmanager
def _on_piece(monkeypatch, pieces):
    """Context in which AlexNet's ReLUs and max-pools follow ``pieces`` instead of their inputs:
    ReLU is ``z * mask``, a max-pool takes each window's recorded element (its gradient goes
    there, as max-pooling's does)."""
    found = iter(pieces)

    def relu(z):
        return z * next(found).astype(z.dtype)

    def pool(z, window=3, stride=2, impl="auto"):
        chosen = next(found)
        return jnp.take_along_axis(_windows(z, window, stride), chosen[..., None], -1)[..., 0]

    with monkeypatch.context() as m:
        m.setitem(alexnet_module.ACTIVATIONS, "relu", relu)
        m.setattr(alexnet_module, "max_pool", pool)
        yield


@needs_onednn
@pytest.mark.parametrize("variant, size", [("paper", 227), ("torchvision", 224), ("small", 32)])
def test_alexnet_on_onednn_matches_float64_truth(variant, size, x64, monkeypatch):
    """Logits and every layer's gradients of both float32 paths against float64 truth.

    ReLU and max-pooling make the network piecewise linear, and the pieces meet at near-ties:
    in every input tried, some max-pool windows of these networks hold two values within 1e-7
    of the layer's scale, below float32 round-off. There float32 and float64 may take different
    pieces, and the gradient then moves by ~1% for reasons that have nothing to do with the
    kernels (oneDNN 3.2 on an AVX2 CPU picked the other element of one pool5 window, and conv5's
    kernel gradient was 1.6% off, while every oneDNN call was right on its own operands). So the
    truth is float64 on the piece each float32 path took: its ReLU masks and max-pool choices,
    recorded from its own jitted forward pass. Measured relative errors are then 0.1-6e-6; the
    bound, 1e-4 (about 840 float32 ulps), is far below what a wrong kernel gives (order 1).
    """
    x = normal(0, (2, size, size, 3))
    labels = jnp.array([1, 2])
    shapes = jax.eval_shape(AlexNet(num_classes=10, variant=variant).init, jax.random.key(1), x)
    params = _well_conditioned(shapes["params"])
    truth_model = AlexNet(
        num_classes=10, variant=variant, dtype=jnp.float64, param_dtype=jnp.float64
    )
    params64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)

    def grads(model, p, x):
        def loss(p):
            logits = model.apply({"params": p}, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits

        return jax.value_and_grad(loss, has_aux=True)(p)

    @jax.jit
    def truth_on(p, x, pieces):  # one program for both paths' pieces (same shapes)
        with _on_piece(monkeypatch, pieces):
            return grads(truth_model, p, x)

    @jax.jit  # on the device, in one program: numpy's passes over fc6 took seconds
    def relative(ours, truth):
        def one(a, b):
            return jnp.max(jnp.abs(a.astype(b.dtype) - b)) / jnp.max(jnp.abs(b))

        return jax.tree.map(one, ours, truth)

    for impl in ("onednn", "xla"):
        model = AlexNet(num_classes=10, variant=variant, impl=impl)
        pieces = _pieces(monkeypatch, model, params, x)
        truth = truth_on(params64, np.asarray(x, np.float64), pieces)
        ours = jax.jit(functools.partial(grads, model))(params, x)
        (_, logits), g = jax.tree.map(float, relative(ours, truth))
        errors = {"logits": logits}
        for layer in g:
            for name in g[layer]:
                errors[f"{layer}/{name}"] = g[layer][name]
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 1e-4, (impl, worst, errors)


def test_flax_conv_takes_it_as_a_drop_in():
    layer = nn.Conv(6, (3, 3), feature_group_count=2, conv_general_dilated=conv_general_dilated)
    plain = nn.Conv(6, (3, 3), feature_group_count=2)
    x = normal(0, (2, 8, 8, 4))
    variables = plain.init(jax.random.key(1), x)
    _close(layer.apply(variables, x), plain.apply(variables, x))


def test_old_jaxlib_is_refused(monkeypatch):
    import jaxlib

    monkeypatch.setattr(jaxlib, "__version__", "0.6.2")
    with pytest.raises(RuntimeError, match=r"jaxlib 0\.6\.2 is older than 0\.7\.0"):
        _onednn._load()


def test_missing_onednn_or_compiler_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("GDJAX_ONEDNN_ROOT", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"pip install 'gdjax\[onednn\]'") as e:
        _onednn._find_onednn()
    # the variable the user set is the one named (it said "or set GDJAX_ONEDNN_ROOT", set)
    assert str(e.value).startswith(f"GDJAX_ONEDNN_ROOT={tmp_path} holds no oneDNN: expected ")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with (
        pytest.raises(RuntimeError, match="no C\\+\\+ compiler"),
        _onednn._built(tmp_path, tmp_path),
    ):
        pass


def _stand_in_compiler(folder: pathlib.Path, output: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A compiler that logs each call and writes what the shell command ``output`` prints as
    the library it is asked for: the caching and the atomic writes are _built's, whatever
    compiles. The kernels themselves are compiled with the real compiler once for the session
    (every oneDNN test runs on them); a second real build here took 10-25 s for nothing more."""
    calls, compiler = folder / "calls", folder / "c++"
    compiler.write_text(
        f'#!/bin/sh\necho called >> "{calls}"\n'
        f'for a in "$@"; do out="$a"; done\n{output} > "$out"\n'
    )
    compiler.chmod(0o755)
    return compiler, calls


def _session_library() -> pathlib.Path:
    """The kernels the session compiled (with the real compiler, into the session's cache)."""
    with _onednn._built(*_onednn._find_onednn()) as library:
        return library


@needs_onednn
def test_build_is_cached_and_atomic(monkeypatch, tmp_path):
    compiler, calls = _stand_in_compiler(tmp_path, "echo library")
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("GDJAX_CACHE_DIR", str(tmp_path / "cache"))
    include, lib = _onednn._find_onednn()
    with _onednn._built(include, lib) as first:
        assert first.is_file() and tmp_path / "cache" in first.parents
    assert first.read_text() == "library\n"  # the cache's library stays
    stamp = first.stat().st_mtime_ns
    with _onednn._built(include, lib) as again:
        assert again == first
    assert first.stat().st_mtime_ns == stamp and calls.read_text() == "called\n"  # not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left behind


@needs_onednn
def test_a_cache_that_cannot_be_written_still_gets_the_kernels(tmp_path):
    """A read-only home or a file where the cache should be: the kernels compile for the
    process alone (a warning says how to keep them) and the temporary folder is gone once
    they are loaded."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "tmp").mkdir()
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from gdjax.models import conv_general_dilated, onednn_status
        ok, why = onednn_status()
        assert ok, why
        x, w = jnp.ones((1, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
        args = dict(window_strides=(1, 1), padding="SAME",
                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
        fast = jax.jit(lambda x, w: conv_general_dilated(x, w, impl="onednn", **args))
        assert "gdjax_conv_fwd" in fast.lower(x, w).as_text()
        slow = conv_general_dilated(x, w, impl="xla", **args)
        assert float(jnp.max(jnp.abs(fast(x, w) - slow))) < 1e-5
        print("onednn-ok")
        """
    )
    cache = tmp_path / "a-file" / "cache"
    # The compiler hands over the session's kernels, so the process loads real ones.
    compiler, calls = _stand_in_compiler(tmp_path, f"cat '{_session_library()}'")
    env = dict(os.environ, GDJAX_CACHE_DIR=str(cache), TMPDIR=str(tmp_path / "tmp"),
               JAX_PLATFORMS="cpu", CXX=str(compiler))  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "onednn-ok" in done.stdout and calls.read_text() == "called\n"
    assert f"cannot write the kernel cache {cache}" in done.stderr, done.stderr[-3000:]
    assert "set GDJAX_CACHE_DIR to a writable folder" in done.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


@needs_onednn
def test_processes_that_start_together_compile_once(tmp_path):
    """The processes of a multi-process run start at once on a cold cache: one compiles the
    kernels, the others wait for its library (a stand-in compiler logs each call)."""
    from processes import run_together, worker_env

    compiler, calls = _stand_in_compiler(tmp_path, "sleep 3; echo library")
    include, lib = _onednn._find_onednn()
    script = (
        "import pathlib, sys\nfrom gdjax.models import _onednn\n"
        "with _onednn._built(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])) as p:\n"
        "    print(p)\n"
    )
    env = worker_env(CXX=str(compiler), GDJAX_CACHE_DIR=str(tmp_path / "cache"))
    argv = [sys.executable, "-c", script, str(include), str(lib)]
    built = {log.strip().splitlines()[-1] for log in run_together([(argv, env)] * 4, timeout=120)}
    assert calls.read_text().splitlines() == ["called"]
    (target,) = built
    assert pathlib.Path(target).read_text() == "library\n"


def test_without_onednn_everything_runs_on_xla(tmp_path):
    """A process that cannot find oneDNN says why and trains on XLA's convolutions."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from gdjax.models import AlexNet, onednn_status
        ok, why = onednn_status()
        assert not ok, why
        model = AlexNet(num_classes=10, variant="small")
        x = jnp.ones((2, 32, 32, 3))
        params = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes: enough to lower
        hlo = jax.jit(jax.grad(lambda p: model.apply(p, x).sum())).lower(params).as_text()
        assert "gdjax_conv" not in hlo and "convolution" in hlo
        print("xla-ok")
        """
    )
    env = dict(os.environ, GDJAX_ONEDNN_ROOT=str(tmp_path), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "xla-ok" in done.stdout


@needs_onednn
@pytest.mark.parametrize("isa", ["AVX2", None], ids=["avx2", "native"])
def test_a_padded_first_layer_runs_on_a_direct_kernel_fused_or_not(isa):
    """On AVX2 oneDNN 3.2 runs a padded convolution of 3 input maps (torchvision's conv1) as
    im2col + GEMM; the kernels copy x into a zero-bordered buffer and run it unpadded on a
    direct kernel instead, for the plain forward and for the bias + ReLU one alike (oneDNN's
    own verbose log names the kernel each call ran; ONEDNN_MAX_CPU_ISA=AVX2 gives AVX2's
    kernels on a newer CPU)."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from gdjax.models import conv_bias_relu, conv_general_dilated
        x = jnp.ones((2, 36, 33, 3)); w = jnp.ones((11, 11, 3, 8)); b = jnp.ones((8,))
        pad = [(2, 2), (2, 2)]
        nhwc = ("NHWC", "HWIO", "NHWC")
        plain = jax.jit(lambda x, w: conv_general_dilated(
            x, w, (4, 4), pad, dimension_numbers=nhwc, impl="onednn"))
        fused = jax.jit(lambda x, w, b: conv_bias_relu(x, w, b, (4, 4), pad, impl="onednn"))
        jax.block_until_ready(plain(x, w)); print("MARK", flush=True)
        jax.block_until_ready(fused(x, w, b)); print("MARK", flush=True)
        """
    )
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1", JAX_PLATFORMS="cpu")
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = done.stdout.split("MARK")[:2]
    for name, log in zip(("plain", "fused"), calls, strict=True):
        runs = [
            line.split(",")
            for line in log.splitlines()
            if ",exec," in line and ",convolution," in line
        ]
        assert runs, (name, log[-2000:])
        for fields in runs:
            kernel = fields[fields.index("convolution") + 1]
            assert "gemm" not in kernel, (name, ",".join(fields))
        assert any("post-ops:eltwise_relu" in ",".join(f) for f in runs) == (name == "fused")


def _lrn_passes_on_onednn(c=32, alpha=1e-4, beta=0.75, k=2.0):
    """Which LRN passes oneDNN runs here on a jit kernel (bit 0 forward, bit 1 backward).
    oneDNN 3.2 on AVX2: the forward for beta 0.75 and maps a multiple of 8, no backward (it
    stays XLA's formula); on AVX-512 both, for any maps."""
    x = jnp.zeros((2, 3, 3, c), jnp.float32)
    kernels, why = layers._onednn_lrn_kernels("auto", x, c, 5, alpha, beta, k)
    assert why is None or "reference LRN" in why, why
    return kernels


@needs_onednn
@pytest.mark.parametrize(
    "shape, groups, alpha, beta, k",
    [
        ((4, 9, 9, 32), 1, 1e-4, 0.75, 2.0),  # the paper's constants (small's conv1)
        ((3, 7, 6, 96), 2, 2e-2, 0.75, 2.0),  # two towers, LRN halving the activations
        ((2, 5, 5, 48), 3, 1.0, 1.0, 1.0),  # 16 maps per group, beta 1
        ((2, 4, 3, 40), 1, 5e-2, 0.75, 0.5),  # 40 maps: not a multiple of 16
    ],
)
def test_lrn_on_onednn_matches_float64_truth(shape, groups, alpha, beta, k, x64):
    """oneDNN's LRN (where it has a jit kernel for the pass on this CPU; XLA's otherwise)
    against the formula in float64 (XLA's path, itself checked against the paper's formula in
    layers_test)."""
    c = shape[-1] // groups
    passes = _lrn_passes_on_onednn(c, alpha, beta, k)
    if beta == 0.75 and c % 8 == 0:  # AlexNet's LRNs: the forward is oneDNN's on any x86-64
        assert passes & 1
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32) * 4
    w = rng.standard_normal(shape).astype(np.float32)
    kw = dict(size=5, alpha=alpha, beta=beta, k=k, groups=groups)

    def loss(x, impl):
        y = local_response_norm(x, impl=impl, **kw)
        return jnp.sum(y * w), y

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g, y = grad(jnp.asarray(x), "auto")
    g64, y64 = grad(jnp.asarray(x, jnp.float64), "xla")
    assert float(jnp.max(jnp.abs(y64 - x))) > 0.1 * float(jnp.max(jnp.abs(x))), "LRN must act"
    _close(y, y64, rtol=2e-6)
    _close(g, g64, rtol=5e-6)
    hlo = grad.lower(jnp.asarray(x), "auto").as_text()
    assert ("gdjax_lrn_fwd" in hlo) == bool(passes & 1)
    assert ("gdjax_lrn_bwd" in hlo) == bool(passes & 2)
    if passes & 2:
        assert passes & 1


@needs_onednn
def test_lrn_falls_back_or_raises():
    x = normal(0, (2, 5, 5, 32))
    ref = local_response_norm(x, impl="xla")
    cases = [
        (dict(x=x.astype(jnp.bfloat16)), "bfloat16"),
        (dict(x=x, size=3), "size=3: oneDNN's LRN is used for the paper's size 5 only"),
        (dict(x=x[:0]), "empty input"),
    ]
    for kwargs, reason in cases:
        f = functools.partial(local_response_norm, **kwargs)
        assert not onednn_calls(jax.jit(lambda: f()).lower().as_text())
        with pytest.raises(RuntimeError, match=reason):
            f(impl="onednn")
    np.testing.assert_allclose(local_response_norm(x), ref, rtol=2e-6, atol=1e-7)
    with pytest.raises(ValueError, match="local_response_norm: impl='fast'"):
        local_response_norm(x, impl="fast")
    with pytest.raises(ValueError, match="size=0, expected a window of >= 1"):
        local_response_norm(x, size=0)


@needs_onednn
def test_lrn_under_vmap_pmap_and_a_sharded_jit_matches_xla():
    x = normal(0, (8, 5, 5, 32)) * 4
    w = normal(1, x.shape)

    def grad(impl):
        return jax.grad(lambda v, w: jnp.sum(local_response_norm(v, alpha=1e-2, impl=impl) * w))

    g_ref = grad("xla")(x, w)
    for g in _three_ways(grad("onednn"), x, w):
        _close(g, g_ref, rtol=2e-6)
