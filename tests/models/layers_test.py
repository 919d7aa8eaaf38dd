"""Local response normalization against the paper's formula and torch.nn.LocalResponseNorm;
adaptive average pooling against torch.nn.AdaptiveAvgPool2d."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testing import normal

from gdjax.models import LocalResponseNorm, adaptive_avg_pool, local_response_norm


def paper_lrn(a, n, alpha, beta, k):
    """The formula of section 3.3, one channel at a time (channels last)."""
    channels = a.shape[-1]
    b = np.empty_like(a, dtype=np.float64)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + (n - 1) // 2)
        s = np.sum(a[..., lo : hi + 1].astype(np.float64) ** 2, axis=-1)
        b[..., i] = a[..., i] / (k + alpha * s) ** beta
    return b


def lrn_formula_jax(x, size, alpha, beta, k, groups=1):
    """:func:`paper_lrn` in jax.numpy, per group of channels: the reference for JAX's own
    derivatives (first, forward-mode and second order)."""
    c = x.shape[-1] // groups
    parts = []
    for gi in range(groups):
        xg = x[..., gi * c : (gi + 1) * c]
        sums = []
        for i in range(c):
            lo, hi = max(0, i - size // 2), min(c - 1, i + (size - 1) // 2)
            sums.append(jnp.sum(xg[..., lo : hi + 1] ** 2, axis=-1))
        parts.append(xg / jnp.power(k + alpha * jnp.stack(sums, -1), beta))
    return jnp.concatenate(parts, -1)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_matches_the_papers_formula_including_channel_edges(size):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 4, 10)).astype(np.float32) * 20  # large: LRN matters
    got = local_response_norm(jnp.asarray(a), size=size, alpha=1e-3, beta=0.75, k=2.0)
    want = paper_lrn(a, size, 1e-3, 0.75, 2.0)
    assert np.max(np.abs(want - a)) > 1.0, "normalization must have an effect to be tested"
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_module_defaults_are_the_papers():
    m = LocalResponseNorm()
    assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 2.0)
    a = np.random.default_rng(1).standard_normal((1, 2, 2, 8)).astype(np.float32) * 30
    got = m.apply({}, jnp.asarray(a))
    np.testing.assert_allclose(got, paper_lrn(a, 5, 1e-4, 0.75, 2.0), rtol=2e-6)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_matches_torch_with_alpha_times_size_forward_and_gradient(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((2, 5, 5, 12)).astype(np.float32) * 10
    w = rng.standard_normal(a.shape).astype(np.float32)
    alpha, beta, k = 1e-3, 0.75, 2.0

    t_in = torch.tensor(a.transpose(0, 3, 1, 2), requires_grad=True)  # NCHW
    lrn = torch.nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)
    t_out = lrn(t_in)
    (t_out * torch.tensor(w.transpose(0, 3, 1, 2))).sum().backward()

    def f(x):
        return jnp.sum(local_response_norm(x, size, alpha, beta, k) * w)

    out = local_response_norm(jnp.asarray(a), size, alpha, beta, k)
    grad = jax.grad(f)(jnp.asarray(a))
    np.testing.assert_allclose(
        out, t_out.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(grad, t_in.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)


def test_groups_normalise_each_group_on_its_own():
    a = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3, 3, 8)) * 20, jnp.float32)
    got = local_response_norm(a, groups=2, alpha=1e-2)
    halves = [
        local_response_norm(a[..., :4], alpha=1e-2),
        local_response_norm(a[..., 4:], alpha=1e-2),
    ]
    np.testing.assert_allclose(got, jnp.concatenate(halves, axis=-1), rtol=1e-6)
    assert not np.allclose(got, local_response_norm(a, alpha=1e-2))  # edges differ


def test_bfloat16_in_bfloat16_out_close_to_float32():
    a = jnp.asarray(np.random.default_rng(4).standard_normal((1, 4, 4, 16)) * 10, jnp.float32)
    lo = local_response_norm(a.astype(jnp.bfloat16))
    assert lo.dtype == jnp.bfloat16
    np.testing.assert_allclose(lo.astype(jnp.float32), local_response_norm(a), rtol=2e-2, atol=2e-2)


def test_bad_groups_is_an_error():
    with pytest.raises(ValueError, match="divisible by groups=3"):
        local_response_norm(jnp.ones((1, 2, 2, 8)), groups=3)
    with pytest.raises(ValueError, match="groups must be an int >= 1, got 0"):
        local_response_norm(jnp.ones((1, 2, 2, 8)), groups=0)  # was a ZeroDivisionError


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        # a negative k made every output NaN; k=0 made NaN of every zero activation
        ({"k": -1.0}, ValueError, "k must be a finite number > 0, got -1.0"),
        ({"k": 0.0}, ValueError, "k must be a finite number > 0, got 0.0"),
        ({"alpha": -1e-4}, ValueError, "alpha must be a finite number >= 0, got -0.0001"),
        ({"beta": float("inf")}, ValueError, "beta must be a finite number, got inf"),
        ({"k": "2"}, TypeError, "k must be a number, got '2'"),
        ({"size": 2.5}, ValueError, "size=2.5, expected a window of >= 1 channels"),
    ],
)
def test_lrn_constants_that_make_nan_are_refused(kwargs, error, message):
    x = jnp.zeros((1, 2, 2, 8)).at[..., 0].set(1.0)  # zeros, as ReLU leaves them
    with pytest.raises(error, match=re.escape(message)):
        local_response_norm(x, **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        LocalResponseNorm(**kwargs).apply({}, x)


def test_lrn_edge_constants_that_are_fine_stay_fine():
    """alpha=0 is the identity scaled by k**-beta; a negative beta is finite too."""
    x = jnp.zeros((1, 2, 2, 8)).at[..., 0].set(3.0)
    np.testing.assert_allclose(local_response_norm(x, alpha=0.0, k=4.0, beta=0.5), x / 2.0)
    assert bool(jnp.isfinite(local_response_norm(x, beta=-0.5)).all())


@pytest.mark.parametrize("output_size", [(0, 0), (6,), 6, (2.5, 2)])
def test_adaptive_avg_pool_refuses_an_empty_or_odd_output_size(output_size):
    with pytest.raises(ValueError, match="output_size must be \\(height, width\\), two ints >= 1"):
        adaptive_avg_pool(jnp.ones((1, 8, 8, 2)), output_size)


@pytest.mark.parametrize("size", [(6, 6), (7, 5), (13, 13), (3, 9)])
def test_adaptive_avg_pool_matches_torch(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).standard_normal((2, *size, 4)).astype(np.float32)
    want = torch.nn.AdaptiveAvgPool2d((6, 6))(torch.tensor(x.transpose(0, 3, 1, 2)))
    got = adaptive_avg_pool(jnp.asarray(x), (6, 6))
    np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "window, stride, shape",
    [
        (3, 2, (2, 55, 55, 8)),
        (3, 2, (2, 13, 14, 3)),
        (2, 2, (1, 27, 27, 4)),
        (3, 3, (2, 11, 10, 2)),
        (2, 3, (1, 10, 11, 3)),  # stride > window: rows no window reads get zero gradient
        (5, 2, (1, 12, 13, 2)),
        (3, 1, (1, 6, 7, 2)),
        (3, 2, (2, 3, 9, 9, 2)),  # extra leading axis
    ],
)
@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_max_pool_equals_flax_in_value_and_gradient(window, stride, shape, impl):
    """Same values and same (first-maximum) gradient positions, ties included, on both paths
    ("auto" is oneDNN on the CPU where the kernels load, and the rank-5 case is always XLA)."""
    import flax.linen as nn

    from gdjax.models import onednn_status
    from gdjax.models.layers import max_pool

    if impl == "auto" and len(shape) == 4 and onednn_status()[0]:
        lowered = jax.jit(lambda v: max_pool(v, window, stride)).lower(jnp.zeros(shape))
        assert "gdjax_max_pool_fwd" in lowered.as_text()

    x = jnp.maximum(normal(0, shape), 0.0)  # many ties at zero
    ref = nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")
    np.testing.assert_array_equal(max_pool(x, window, stride, impl=impl), ref)
    w = normal(1, ref.shape)
    g_ref = jax.grad(
        lambda v: jnp.sum(
            nn.max_pool(v, (window, window), strides=(stride, stride), padding="VALID") * w
        )
    )(x)
    g = jax.jit(jax.grad(lambda v: jnp.sum(max_pool(v, window, stride, impl=impl) * w)))(x)
    # Same selected positions; overlapping windows may add their shares in another order.
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(g != 0, g_ref != 0)


@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 0.6])
@pytest.mark.parametrize("size, groups", [(5, 1), (4, 2), (3, 3)])
def test_lrn_gradient_equals_autodiff_of_the_formula(beta, size, groups, x64):
    """The hand-written LRN gradient against jax.grad of a direct float64 transcription."""
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.standard_normal((2, 3, 4, 12)) * 5, jnp.float64)
    w = jnp.asarray(rng.standard_normal(a.shape), jnp.float64)
    alpha, k = 1e-2, 2.0

    def formula(x):
        return lrn_formula_jax(x, size, alpha, beta, k, groups)

    def ours(x):
        return local_response_norm(x, size, alpha, beta, k, groups)

    @functools.partial(jax.jit, static_argnums=0)  # one program, not a primitive at a time
    def value_and_gradient(f, a, w):
        return f(a), jax.grad(lambda x: jnp.sum(f(x) * w))(a)

    (value, g), (value_ref, g_ref) = (value_and_gradient(f, a, w) for f in (ours, formula))
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)


def _hvp_both_ways(f, x, v):
    """H v by forward-over-reverse (jvp of grad) and by reverse-over-reverse (grad of <grad, v>)."""
    forward = jax.jvp(jax.grad(f), (x,), (v,))[1]
    reverse = jax.grad(lambda y: jnp.vdot(jax.grad(f)(y), v))(x)
    return forward, reverse


@pytest.mark.parametrize("beta", [0.75, 0.6])
@pytest.mark.parametrize("size, groups", [(5, 1), (4, 2)])
def test_lrn_forward_mode_and_second_derivatives_equal_autodiff_of_the_formula(
    beta, size, groups, x64
):
    """jvp, jax.hessian's forward-over-reverse and reverse-over-reverse Hessian-vector
    products of the XLA path against JAX's own derivatives of the float64 formula."""
    rng = np.random.default_rng(4)
    a = jnp.asarray(rng.standard_normal((2, 3, 4, 12)) * 5, jnp.float64)
    v = jnp.asarray(rng.standard_normal(a.shape), jnp.float64)
    w = jnp.asarray(rng.standard_normal(a.shape), jnp.float64)
    alpha, k = 1e-2, 2.0

    def formula(x):
        return lrn_formula_jax(x, size, alpha, beta, k, groups)

    def ours(x):
        return local_response_norm(x, size, alpha, beta, k, groups, impl="xla")

    @functools.partial(jax.jit, static_argnums=0)  # one program, not a primitive at a time
    def derivatives(f, a, v, w):
        loss = lambda x: jnp.sum(jnp.sin(f(x)) * w)  # noqa: E731  (curved: H != 0)
        small = a[:1, :1, :2]  # jax.hessian (jacfwd of jacrev) on a small input
        hessian = jax.hessian(lambda x: jnp.sum(f(x) ** 3))(small)
        return f(a), jax.jvp(f, (a,), (v,))[1], _hvp_both_ways(loss, a, v), hessian

    value, tangent, hvps, hessian = derivatives(ours, a, v, w)
    value_ref, tangent_ref, (want, _), hessian_ref = derivatives(formula, a, v, w)
    np.testing.assert_allclose(value, value_ref, rtol=1e-12)
    np.testing.assert_allclose(tangent, tangent_ref, rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(want))) > 1e-3, "the Hessian must act to be tested"
    for got in hvps:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(hessian, hessian_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("window, stride", [(3, 2), (2, 2), (3, 1)])
def test_max_pool_forward_mode_and_second_derivatives_equal_flax(window, stride, x64):
    """The XLA path's max-pooling under jvp and both Hessian-vector products, against
    ``flax.linen.max_pool`` (XLA's reduce_window and JAX's own derivatives of it)."""
    import flax.linen as nn

    from gdjax.models.layers import max_pool

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float64)  # no ties
    v = jnp.asarray(rng.standard_normal(x.shape), jnp.float64)

    def ref(y):
        return nn.max_pool(y, (window, window), strides=(stride, stride), padding="VALID")

    def ours(y):
        return max_pool(y, window, stride, impl="xla")

    w = jnp.asarray(rng.standard_normal(ref(x).shape), jnp.float64)

    @functools.partial(jax.jit, static_argnums=0)  # one program, not a primitive at a time
    def derivatives(f, x, v, w):
        return jax.jvp(f, (x,), (v,))[1], _hvp_both_ways(lambda y: jnp.sum(f(y) ** 3 * w), x, v)

    tangent, hvps = derivatives(ours, x, v, w)
    tangent_ref, (_, want) = derivatives(ref, x, v, w)
    np.testing.assert_array_equal(tangent, tangent_ref)
    assert float(jnp.max(jnp.abs(want))) > 1e-3
    for got in hvps:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_lrn_backward_of_the_onednn_path_without_onednns_backward(x64):
    """Where oneDNN has no jit LRN backward (AVX2), the oneDNN path's gradient is the formula's
    one-pass transcription: checked here on any CPU against JAX's derivative of the formula."""
    from gdjax.models import layers

    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.standard_normal((7, 12)) * 5, jnp.float64)
    g = jnp.asarray(rng.standard_normal(a.shape), jnp.float64)
    (got,) = jax.jit(functools.partial(layers._onednn_lrn_bwd, 5, 1e-2, 0.75, 2.0, False))(a, g)

    def formula_vjp(a, g):
        return jax.vjp(lambda x: lrn_formula_jax(x, 5, 1e-2, 0.75, 2.0), a)[1](g)[0]

    want = jax.jit(formula_vjp)(a, g)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "shape", [(2, 5, 5, 16), (3, 24), (4, 7), (), (0, 8)], ids=["maps", "fc", "odd", "0d", "empty"]
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_equals_jax_nn_relu_in_value_and_every_derivative(shape, dtype):
    """gdjax's relu (its tangent rule packs the mask into bits) against jax.nn.relu: values,
    gradients, forward mode, per-example gradients and Hessians agree exactly, zeros, -0.0, NaN
    and infinities included."""
    from gdjax.models import relu

    x = np.asarray(normal(0, shape), np.float32).copy()
    if x.size >= 8:
        x.reshape(-1)[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40]
    x = jnp.asarray(x, dtype)
    t = jnp.asarray(normal(1, shape), dtype)

    def same(a, b):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))

    def curved(f):
        return lambda v: jnp.sum(jnp.sin(f(v).astype(jnp.float32) * 3.0) ** 2)

    @functools.partial(jax.jit, static_argnums=0)  # one program per function: run op by op,
    def every_derivative(f, x, t):  # JAX compiled each of ~130 operations on its own
        out = [f(x), jax.grad(curved(f))(x), jax.jvp(f, (x,), (t,))[1]]
        if x.size and x.ndim:
            finite = jnp.nan_to_num(x[:1], posinf=1.0, neginf=-1.0)
            out += [jax.vmap(jax.grad(curved(f)))(x), jax.hessian(curved(f))(finite)]
        return out

    ours, theirs = every_derivative(relu, x, t), every_derivative(jax.nn.relu, x, t)
    assert len(ours) == (5 if x.size and x.ndim else 3)
    for a, b in zip(ours, theirs, strict=True):
        same(a, b)


def test_relu_keeps_a_bit_per_element_for_the_backward_pass():
    """The residual a reverse pass keeps: jax.nn.relu's (XLA recomputes x > 0 from the saved
    input) keeps the convolution's float output, gdjax's relu a mask of 1 bit per element, so the
    gradient of a small AlexNet at batch 128 needs about half the temporary memory (23.5 MB
    against 46.0 on jaxlib 0.10.2; the torchvision network's training step at batch 128: 174
    MB against 387)."""
    from gdjax.models import AlexNet, alexnet

    model = AlexNet(num_classes=10, variant="small", fused_relu=False, lrn=False)
    x = jnp.zeros((128, 32, 32, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]

    def temporaries(act):
        def loss(p):
            return jnp.sum(model.apply({"params": p}, x))

        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(alexnet.ACTIVATIONS, "relu", act)
            compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    ours, plain = temporaries(alexnet.ACTIVATIONS["relu"]), temporaries(jax.nn.relu)
    assert ours <= 0.6 * plain, (ours, plain)
