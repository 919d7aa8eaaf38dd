"""AlexNet variants: shapes, parameter counts, init, grouping, dropout, dtypes, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testing import jit_init, normal

from gdjax.models import AlexNet, count_params

CASES = [  # (variant, kwargs, input shape, num_classes)
    ("paper", {}, (2, 227, 227, 3), 1000),
    ("paper", {"groups": 1}, (2, 227, 227, 3), 1000),
    ("paper", {"overlapping_pool": False}, (1, 227, 227, 3), 10),
    ("torchvision", {}, (2, 224, 224, 3), 1000),
    ("torchvision", {}, (1, 256, 200, 3), 7),
    ("small", {"in_channels": 1}, (4, 28, 28, 1), 10),
    ("small", {}, (4, 32, 32, 3), 100),
    ("small", {"groups": 2, "activation": "tanh"}, (2, 32, 32, 3), 10),
]


def init(model, shape, seed=0):
    """The model's variables, initialised under jit as the trainer does (one compiled program,
    which the session's XLA cache serves to every later test; eager init compiles each of its
    ~80 operations in every process). The variables do not depend on the batch size, so the
    program is traced on a batch of one, which tests of other batch sizes share."""
    return jit_init(model)(jax.random.key(seed), jnp.zeros((1, *shape[1:])))


def shapes(model, shape):
    """The variables' shapes and dtypes, traced without running (or compiling) anything."""
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("variant, kwargs, shape, classes", CASES)
def test_output_shapes(variant, kwargs, shape, classes):
    model = AlexNet(num_classes=classes, variant=variant, **kwargs)
    variables = init(model, shape)
    x = normal(1, shape)
    logits = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    assert logits.shape == (shape[0], classes)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_parameter_counts():
    paper = shapes(AlexNet(variant="paper"), (1, 227, 227, 3))
    assert count_params(paper["params"]) == 60_965_224
    tv = shapes(AlexNet(variant="torchvision"), (1, 224, 224, 3))
    assert count_params(tv["params"]) == 61_100_840
    # Without the two-GPU split, conv2/4/5 see all input channels: more parameters.
    one_tower = shapes(AlexNet(variant="paper", groups=1), (1, 227, 227, 3))
    extra = (5 * 5 * 48 * 256) + (3 * 3 * 192 * 384) + (3 * 3 * 192 * 256)
    assert count_params(one_tower["params"]) == 60_965_224 + extra
    small = shapes(AlexNet(variant="small", num_classes=10, in_channels=1), (1, 28, 28, 1))
    assert count_params(small["params"]) < 500_000


def test_paper_initialisation():
    params = init(AlexNet(variant="paper"), (1, 227, 227, 3))["params"]
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(params[name]["bias"], 1.0)
    for name in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    w = np.concatenate([np.ravel(params[n]["kernel"]) for n in ("conv3", "fc7")])
    assert abs(w.mean()) < 1e-4
    assert w.std() == pytest.approx(0.01, rel=0.01)


def test_torchvision_initialisation_is_pytorchs_uniform():
    params = init(AlexNet(variant="torchvision"), (1, 224, 224, 3))["params"]
    for name, fan_in in [("conv1", 11 * 11 * 3), ("conv3", 3 * 3 * 192), ("fc6", 9216)]:
        bound = fan_in**-0.5
        for leaf in (params[name]["kernel"], params[name]["bias"]):
            assert float(jnp.max(jnp.abs(leaf))) <= bound * (1 + 1e-6)  # float32 rounding
        assert float(jnp.std(params[name]["kernel"])) == pytest.approx(bound / 3**0.5, rel=0.05)


def test_init_and_apply_are_deterministic_given_the_key():
    model = AlexNet(variant="small", num_classes=10)
    a, c = (init(model, (2, 32, 32, 3), seed) for seed in (0, 1))
    jax.tree.map(np.testing.assert_array_equal, a, init(model, (2, 32, 32, 3), 0))
    # Eager init draws the same bits; its normal draws round differently (<= 1 float32 ulp).
    eager = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-7, atol=1e-8), a, eager)
    assert not np.array_equal(a["params"]["conv1"]["kernel"], c["params"]["conv1"]["kernel"])
    x = normal(2, (2, 32, 32, 3))
    run = lambda key: model.apply(a, x, train=True, rngs={"dropout": key})  # noqa: E731
    np.testing.assert_array_equal(run(jax.random.key(3)), run(jax.random.key(3)))
    assert not np.array_equal(run(jax.random.key(3)), run(jax.random.key(4)))


def test_dropout_only_in_train_mode():
    model = AlexNet(variant="small", num_classes=10)
    variables = init(model, (8, 32, 32, 3))
    x = normal(2, (8, 32, 32, 3))
    eval1 = model.apply(variables, x)
    eval2 = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval1, eval2)
    trained = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(trained, eval1)
    no_dropout = AlexNet(variant="small", num_classes=10, dropout_rate=0.0)
    np.testing.assert_allclose(
        no_dropout.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)}),
        eval1,
        rtol=1e-6,
    )


def test_grouping_really_splits_channels():
    """conv2's first tower must not see the second tower's input channels."""
    model = AlexNet(variant="paper", num_classes=10)
    variables = init(model, (1, 227, 227, 3))
    assert variables["params"]["conv2"]["kernel"].shape == (5, 5, 48, 256)
    x = normal(1, (1, 227, 227, 3))

    def conv2_output(perturb):
        """Run the model, perturbing conv2's input with `perturb`; return conv2's output."""
        seen = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.module.name == "conv2" and context.method_name == "__call__":
                seen["out"] = next_fun(perturb(args[0]))
                return seen["out"]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            model.apply(variables, x)
        return seen["out"]

    base = conv2_output(lambda h: h)
    first = conv2_output(lambda h: h.at[..., :48].add(1.0))
    second = conv2_output(lambda h: h.at[..., 48:].add(1.0))
    np.testing.assert_array_equal(second[..., :128], base[..., :128])
    np.testing.assert_array_equal(first[..., 128:], base[..., 128:])
    assert not np.allclose(second[..., 128:], base[..., 128:])
    assert not np.allclose(first[..., :128], base[..., :128])


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_activation_is_selectable(activation):
    model = AlexNet(variant="small", num_classes=10, activation=activation)
    variables = init(model, (2, 28, 28, 3))
    x = normal(1, (2, 28, 28, 3))
    relu = AlexNet(variant="small", num_classes=10).apply(variables, x)
    out = model.apply(variables, x)
    assert (activation == "relu") == bool(np.allclose(out, relu))


def test_lrn_can_be_switched_off():
    model = AlexNet(variant="small", num_classes=10)
    variables = init(model, (2, 32, 32, 3))
    x = normal(1, (2, 32, 32, 3)) * 50
    without = AlexNet(variant="small", num_classes=10, lrn=False).apply(variables, x)
    assert not np.allclose(model.apply(variables, x), without)


@pytest.mark.parametrize(
    "variant, shape", [("small", (4, 32, 32, 3)), ("torchvision", (2, 224, 224, 3))]
)
def test_bfloat16_compute_with_float32_params(variant, shape):
    f32 = AlexNet(variant=variant, num_classes=10)
    bf16 = AlexNet(variant=variant, num_classes=10, dtype=jnp.bfloat16)
    variables = init(bf16, shape)
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    x = normal(1, shape)
    lo, hi = jax.jit(bf16.apply)(variables, x), jax.jit(f32.apply)(variables, x)
    assert lo.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(hi)))
    assert float(jnp.max(jnp.abs(lo.astype(jnp.float32) - hi))) < 0.05 * scale + 1e-3


BAD_INPUTS = [
    ("paper", {}, (227, 227, 3), r"expected a batch of NHWC images of shape \(N, 227, 227, 3\)"),
    (
        "paper",
        {},
        (1, 224, 224, 3),
        r"expected images of shape \(N, 227, 227, 3\), got spatial size 224x224",
    ),
    ("paper", {}, (1, 227, 227, 1), r"expected 3 channels"),
    ("torchvision", {}, (1, 32, 32, 3), r"H, W >= 63"),
    ("small", {"in_channels": 1}, (1, 28, 28, 3), r"expected 1 channels \(shape \(N, H, W, 1\)"),
    ("small", {}, (1, 12, 12, 3), r"H, W >= 15"),
    (
        "paper",
        {},
        (2, 3, 227, 227),
        r"looks channels-first \(NCHW\): pass x\.transpose\(0, 2, 3, 1\)",
    ),
    ("small", {"in_channels": 1}, (4, 1, 28, 28), r"channels-first \(NCHW\)"),
]


def test_array_likes_are_arrays():
    """A nested list failed with "AttributeError: 'list' object has no attribute 'ndim'"; it
    is an array like any other now, a numpy array too."""
    model = AlexNet(variant="small", num_classes=10, in_channels=1)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype(np.float32)
    params = init(model, x.shape)
    want = model.apply(params, jnp.asarray(x))
    np.testing.assert_array_equal(model.apply(params, x.tolist()), want)
    np.testing.assert_array_equal(model.apply(params, x), want)
    with pytest.raises(ValueError, match=r"got an array of shape \(1, 1\) \(rank 2\)"):
        model.apply(params, [[0.0]])


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int32, jnp.bool_])
def test_integer_images_are_refused_not_promoted(dtype):
    """Raw uint8 pixels were promoted by flax's Conv and ran through the network as 0..255
    values: a confident answer on unnormalised input. Integer images are a TypeError now."""
    model = AlexNet(variant="small", num_classes=10)
    params = init(model, (1, 32, 32, 3))
    message = rf"expected floating-point images, .* got dtype {jnp.dtype(dtype).name}"
    with pytest.raises(TypeError, match=message):
        model.apply(params, jnp.zeros((2, 32, 32, 3), dtype))
    with pytest.raises(TypeError, match=message):
        model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), dtype))
    assert jax.jit(model.apply)(params, np.zeros((2, 32, 32, 3), np.float16)).shape == (2, 10)


def test_train_takes_only_true_or_false():
    """train="no" (a non-empty string) ran the network with dropout."""
    model = AlexNet(variant="small", num_classes=10)
    params = init(model, (1, 32, 32, 3))
    x, key = jnp.ones((2, 32, 32, 3)), {"dropout": jax.random.key(1)}
    for train in ("no", "False", 0, None):
        with pytest.raises(TypeError, match=f"train must be True or False, got {train!r}"):
            model.apply(params, x, train=train, rngs=key)
    np.testing.assert_array_equal(
        model.apply(params, x, train=np.bool_(False)), model.apply(params, x, train=False)
    )


@pytest.mark.parametrize("variant, kwargs, shape, message", BAD_INPUTS)
def test_bad_input_names_the_expected_shape(variant, kwargs, shape, message):
    model = AlexNet(variant=variant, **kwargs)
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.key(0), jnp.zeros(shape))


def test_spatial_sizes_names_the_variants():
    from gdjax.models import spatial_sizes

    with pytest.raises(TypeError, match=r"overlapping_pool must be True or False, got 'no'"):
        spatial_sizes("small", 32, overlapping_pool="no")  # was counted as overlapping
    assert spatial_sizes("small", 32, False) != spatial_sizes("small", 32, True)

    with pytest.raises(
        ValueError, match=r"variant must be one of \['paper', 'small', 'torchvision'\], got 'huge'"
    ):
        spatial_sizes("huge", 224)  # was KeyError: 'huge'
    assert spatial_sizes("paper", 227) == [27, 13, 13, 13, 6]
    assert spatial_sizes("paper", 10)[-1] == 0  # too small for the network: 0, not negative


@pytest.mark.parametrize(
    "variant, overlapping_pool, sides",
    [
        ("paper", True, (226, 227)),
        ("paper", False, (198, 199, 227)),
        ("torchvision", True, (62, 63)),
        ("small", True, (14, 15)),
        ("small", False, (7, 8, 9)),
    ],
)
def test_takes_side_is_the_rule_the_model_checks(variant, overlapping_pool, sides):
    from gdjax.models.alexnet import takes_side

    model = AlexNet(variant=variant, num_classes=10, overlapping_pool=overlapping_pool)
    answers = []
    for side in sides:
        shape = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
        try:
            jax.eval_shape(model.init, jax.random.key(0), shape)
            accepted = True
        except ValueError:
            accepted = False
        assert takes_side(variant, side, overlapping_pool) == accepted, side
        answers.append(accepted)
    assert True in answers and False in answers  # the sides straddle the boundary


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "vgg"}, "variant must be one of"),
        ({"activation": "gelu"}, "activation must be one of"),
        # a misspelt choice names the one meant
        ({"variant": "Small"}, r"one of \['paper', 'small', 'torchvision'\], got 'Small' \(did "),
        ({"activation": "Relu"}, r"got 'Relu' \(did you mean 'relu'\?\)"),
        ({"impl": "onedn"}, r"impl must be one of .*, got 'onedn' \(did you mean 'onednn'\?\)"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\)"),
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"groups": 3}, "groups=3 does not divide"),
        # 64 divides conv2's 64 outputs but not its 32 inputs: it failed inside flax.
        ({"groups": 64}, r"groups=64 does not divide conv2's 32 input channels .* 16, 32\)"),
        # torchvision's AlexNet has no grouped convolution: groups=2 was silently ignored.
        ({"variant": "torchvision", "groups": 2}, "has no grouped convolutions"),
        ({"groups": 0}, r"groups must be None \(the variant's own\) or an int >= 1, got 0"),
        ({"groups": -1}, r"groups must be None .* got -1"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"num_classes": 2.5}, "num_classes must be an int, got 2.5"),
        ({"num_classes": True}, "num_classes must be an int, got True"),
        ({"in_channels": 3.0}, "in_channels must be an int, got 3.0"),
        ({"lrn": "yes"}, "lrn must be a bool, got 'yes'"),
        ({"overlapping_pool": 1}, "overlapping_pool must be a bool, got 1"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    # Each was a shape error deep in flax or jax (or, for the bools, silently taken as truthy).
    with pytest.raises((ValueError, TypeError), match=message):
        AlexNet(**{"variant": "small", **kwargs}).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_parameters_applied_to_images_of_another_size_say_so(impl):
    """The small variant takes any side >= 15, so its fc6 width follows the images it was
    initialised with; other images used to fail in flax's parameter-shape check of fc6."""
    model = AlexNet(variant="small", num_classes=10, in_channels=1, impl=impl)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    apply = jax.jit(model.apply)  # the check is made as the network is traced
    assert apply(params, jnp.zeros((2, 30, 30, 1))).shape == (2, 10)  # same last map
    with pytest.raises(
        ValueError,
        match=r"made for images of 23 to 30 px a side \(fc6 takes 256 inputs\), got 32x32 "
        r"images \(576\)",
    ):
        apply(params, jnp.zeros((2, 32, 32, 1)))


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _tree_norm(a):
    return jnp.sqrt(_tree_vdot(a, a))


@pytest.mark.parametrize(
    "variant, shape",
    [("small", (2, 28, 28, 1)), ("paper", (1, 227, 227, 3))],  # torchvision: small's ops
)
def test_every_autodiff_mode_on_the_xla_path(variant, shape):
    """Forward mode through the whole network on the XLA path, checked against reverse mode:
    <J v, u> = <v, Jᵀ u>. For the small network also both Hessian-vector products
    (forward-over-reverse = reverse-over-reverse) and per-example gradients (vmap of grad).
    The layers' derivatives are checked exactly in layers_test.py."""
    model = AlexNet(num_classes=5, variant=variant, in_channels=shape[-1], impl="xla")
    x = normal(0, shape)
    params = init(model, shape)["params"]
    rng = np.random.default_rng(1)  # numpy's draws: no program to compile per leaf shape
    v = jax.tree.map(lambda p: rng.standard_normal(p.shape, np.float32) * np.std(p), params)
    u = rng.standard_normal((shape[0], 5), np.float32)

    def logits(p):
        return model.apply({"params": p}, x)

    @jax.jit
    def both_ways(p, t, c):
        jv = jax.jvp(logits, (p,), (t,))[1]
        (jtc,) = jax.vjp(logits, p)[1](c)
        return jnp.vdot(jv, c), _tree_vdot(t, jtc), _tree_norm(jtc)

    lhs, rhs, jtu_norm = (float(r) for r in both_ways(params, v, u))
    assert abs(lhs) > 1e-3, "the directional derivative must be non-trivial to be tested"
    assert abs(lhs - rhs) <= 1e-4 * (abs(lhs) + float(_tree_norm(v)) * jtu_norm)
    if variant != "small":
        return

    def loss(p):
        return jnp.sum(jnp.sin(logits(p) * 3.0))  # curved, so H v is not 0

    @jax.jit
    def checks(p, t):
        forward = jax.jvp(jax.grad(loss), (p,), (t,))[1]
        reverse = jax.grad(lambda q: _tree_vdot(jax.grad(loss)(q), t))(p)
        per_example = jax.vmap(
            lambda xi: jax.grad(lambda q: jnp.sum(model.apply({"params": q}, xi[None])))(p)
        )(x)
        whole = jax.grad(lambda q: jnp.sum(logits(q)))(p)
        summed = jax.tree.map(lambda g: g.sum(0), per_example)
        return (
            _tree_norm(forward),
            _tree_norm(jax.tree.map(jnp.subtract, forward, reverse)),
            _tree_norm(whole),
            _tree_norm(jax.tree.map(jnp.subtract, summed, whole)),
        )

    hv, hv_diff, g, g_diff = (float(r) for r in checks(params, v))
    assert hv > 1e-3 and hv_diff <= 1e-4 * hv
    assert g > 1e-3 and g_diff <= 1e-4 * g


@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_an_empty_batch_gives_empty_logits_and_a_gradient(impl):
    """A batch of 0 images (an empty last batch, a filtered one) flows through like any other
    (it used to raise ZeroDivisionError in the flatten before the fc layers)."""
    model = AlexNet(num_classes=7, variant="small", in_channels=1, impl=impl)
    params = init(model, (1, 28, 28, 1))["params"]
    empty = jnp.zeros((0, 28, 28, 1))
    assert jax.jit(model.apply)({"params": params}, empty).shape == (0, 7)
    # The gradient is traced, not compiled: the fault was at trace time.
    grads = jax.eval_shape(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, empty))), params)
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)
