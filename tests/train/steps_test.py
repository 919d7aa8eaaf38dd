"""The pure steps: loss and metrics against numpy, the golden first step, extra arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_testing import jit_init

import gdjax
from gdjax import data
from gdjax.models import AlexNet
from gdjax.train import TrainState, cross_entropy, eval_step, l2_penalty, top_k_error, train_step


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6)
    want = -np_log_softmax(logits)[np.arange(6), labels]
    np.testing.assert_allclose(
        cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), want, rtol=1e-5
    )
    eps = 0.1
    targets = np.full((6, 5), eps / 5)
    targets[np.arange(6), labels] += 1 - eps
    want_smooth = -(targets * np_log_softmax(logits)).sum(-1)
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    np.testing.assert_allclose(got, want_smooth, rtol=1e-5)


def test_top_k_error_against_argsort():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((200, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 200)
    order = np.argsort(-logits, axis=-1)
    for k in (1, 5):
        want = np.array([lab not in row[:k] for row, lab in zip(order, labels, strict=True)])
        np.testing.assert_array_equal(
            top_k_error(jnp.asarray(logits), jnp.asarray(labels), k), want
        )


def _np_top_k_error(logits, labels, k):
    """The usual definition: a stable sort ranks the classes (ties by class index); a row
    holding a NaN is wrong."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    hit = np.array([lab in row[:k] for row, lab in zip(order, labels, strict=True)])
    return (~hit | np.isnan(logits).any(-1)).astype(np.float32)


def test_top_k_error_on_ties_nan_and_infinities():
    rng = np.random.default_rng(2)
    n, c = 400, 10
    # Few distinct values make many ties; sprinkle NaN and +-inf.
    logits = rng.integers(0, 3, (n, c)).astype(np.float32)
    special = rng.random((n, c))
    logits[special < 0.03] = np.nan
    logits[(special >= 0.03) & (special < 0.08)] = np.inf
    logits[(special >= 0.08) & (special < 0.13)] = -np.inf
    logits[:20] = 0.0  # dead network: every class tied
    logits[20:30] = np.nan  # diverged network
    labels = rng.integers(0, c, n)
    for k in (1, 5):
        got = np.asarray(top_k_error(jnp.asarray(logits), jnp.asarray(labels), k))
        np.testing.assert_array_equal(got, _np_top_k_error(logits, labels, k))
        # A constant prediction is right for exactly k of the c classes, never all of them.
        assert got[:20].sum() == np.sum(labels[:20] >= k)
        assert got[20:30].all()


@pytest.mark.parametrize(
    "call, error, message",
    [
        # optax's broadcasting error, deep in jnp
        (
            lambda: cross_entropy(jnp.zeros((4, 10)), jnp.zeros(5, jnp.int32)),
            ValueError,
            r"cross_entropy: labels must have the shape .* got logits \(4, 10\) and labels \(5,\)",
        ),
        # one-hot labels broadcast against the logits
        (
            lambda: top_k_error(jnp.zeros((4, 10)), jnp.zeros((4, 10), jnp.int32), 1),
            ValueError,
            r"top_k_error: labels must have the shape .* labels \(4, 10\)",
        ),
        (
            lambda: cross_entropy(jnp.zeros((4, 10)), jnp.zeros(4)),
            TypeError,
            "labels must be integer class indices, got dtype float32",
        ),
        # k=0 said every example was wrong
        (
            lambda: top_k_error(jnp.zeros((4, 10)), jnp.zeros(4, jnp.int32), 0),
            ValueError,
            "top_k_error: k must be an int >= 1, got 0",
        ),
        (
            lambda: top_k_error(jnp.zeros((2, 4, 10)), jnp.zeros((2, 4), jnp.int32), 1),
            ValueError,
            r"top_k_error: logits must be \(N, classes\), got shape \(2, 4, 10\)",
        ),
    ],
)
def test_bad_logits_or_labels_say_which(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cross_entropy_takes_any_leading_shape():
    """(..., classes) with labels (...): the same numbers as the flattened batch."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((2, 3, 7)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 7, (2, 3)))
    want = cross_entropy(logits.reshape(6, 7), labels.reshape(6)).reshape(2, 3)
    np.testing.assert_allclose(cross_entropy(logits, labels), want, rtol=1e-6)


def test_l2_penalty_counts_kernels_not_biases():
    params = {"dense": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 5.0)}}
    assert float(l2_penalty(params)) == pytest.approx(0.5 * 6 * 4.0)


@pytest.fixture(scope="module")
def mnist_setup():
    src = data.load("mnist5k")
    stats = data.compute_stats(src, max_examples=None)
    batch = next(
        iter(
            data.make_loader(
                src, batch_size=64, transform=data.SmallTrain(stats, pad=2, flip=False), seed=0
            )
        )
    )
    model = AlexNet(num_classes=10, variant="small", in_channels=1)
    variables = jit_init(model)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return model, variables, batch


def make_state(model, variables, tx=None):
    tx = tx or gdjax.momentum(0.02)
    return TrainState.create(
        apply_fn=model.apply, variables=variables, tx=tx, rng=jax.random.key(1)
    )


# Golden first-step metrics of the default recipe's first batch (mnist5k, seed 0, small AlexNet
# from key 0, dropout key fold_in(key 1, 0)). If this fails, check in order: the data order or
# augmentation (gdjax.data), the model's layout or initialisation (gdjax.models), the loss.
# A deliberate change to one of them needs a new golden value, stated in the commit message
# (2.3333/0.890625 before the per-example generator became Philox keyed by seed, epoch, index).
GOLDEN = {"loss": 2.3249, "error": 0.875}


def test_golden_first_step_and_loss_reference(mnist_setup):
    model, variables, batch = mnist_setup
    state = make_state(model, variables)
    new_state, metrics = jax.jit(train_step)(state, jax.tree.map(jnp.asarray, batch))
    # Reference: the same forward pass recomputed here, cross-entropy in numpy.
    key = jax.random.fold_in(state.rng, 0)
    logits = np.asarray(model.apply(variables, batch["image"], train=True, rngs={"dropout": key}))
    want = -np_log_softmax(logits.astype(np.float64))[np.arange(64), batch["label"]].mean()
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    assert abs(float(metrics["loss"]) - np.log(10)) < 0.5, "an untrained net should be near ln(10)"
    assert float(metrics["loss"]) == pytest.approx(GOLDEN["loss"], abs=2e-3), (
        f"first-step loss {float(metrics['loss']):.4f} differs from the golden {GOLDEN['loss']}: "
        "see the comment above GOLDEN for what to check"
    )
    assert float(metrics["error"]) == pytest.approx(GOLDEN["error"], abs=1 / 64 + 1e-6)
    assert int(new_state.step) == 1
    moved = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state.params, variables["params"]
    )
    assert max(jax.tree.leaves(moved)) > 0


def test_step_is_reproducible_and_dropout_follows_the_step(mnist_setup):
    model, variables, batch = mnist_setup
    step = jax.jit(train_step)
    batch = jax.tree.map(jnp.asarray, batch)
    _, m1 = step(make_state(model, variables), batch)
    _, m2 = step(make_state(model, variables), batch)
    assert float(m1["loss"]) == float(m2["loss"])
    later = make_state(model, variables).replace(step=jnp.asarray(7, jnp.int32))
    _, m3 = step(later, batch)
    assert float(m3["loss"]) != float(m1["loss"])  # other dropout masks


def test_extra_arguments_reach_the_optimizer(mnist_setup):
    """reduce_on_plateau needs `value`: flax's apply_gradients would drop it, train_step not."""
    model, variables, batch = mnist_setup
    plateau = optax.contrib.reduce_on_plateau(patience=1, factor=0.5, accumulation_size=1)
    state = make_state(model, variables, optax.chain(gdjax.momentum(0.01), plateau))
    step = jax.jit(train_step)
    batch = jax.tree.map(jnp.asarray, batch)
    for _ in range(4):
        state, _ = step(state, batch, value=jnp.asarray(1.0))  # a loss that never improves
    assert float(state.opt_state[1].scale) < 1.0


def test_eval_step_averages_the_softmax_of_views_and_honours_the_mask(mnist_setup):
    model, variables, batch = mnist_setup
    state = make_state(model, variables)
    views = jnp.stack([batch["image"][:8], batch["image"][8:16]], axis=1)  # (8, 2, 28, 28, 1)
    labels = jnp.asarray(batch["label"][:8])
    sums = eval_step(state, {"image": views, "label": labels})
    p = np.stack(
        [np.asarray(jax.nn.softmax(model.apply(variables, views[:, v]))) for v in range(2)]
    ).mean(0)
    want_loss = -np.log(p[np.arange(8), np.asarray(labels)]).sum()
    assert float(sums["loss"]) == pytest.approx(want_loss, rel=1e-5)
    assert float(sums["count"]) == 8
    mask = jnp.asarray([1.0] * 5 + [0.0] * 3)
    masked = eval_step(state, {"image": views, "label": labels, "mask": mask})
    assert float(masked["count"]) == 5
    assert float(masked["loss"]) == pytest.approx(
        -np.log(p[np.arange(5), np.asarray(labels[:5])]).sum(), rel=1e-5
    )


def test_masked_examples_are_left_out_of_the_training_step(mnist_setup):
    """The masked path of train_step had no test: a batch with masked (unreadable) examples
    takes the step of the batch without them, whatever their pixels and labels."""
    model, variables, batch = mnist_setup
    model = model.clone(dropout_rate=0.0)  # dropout draws masks by batch shape
    state = make_state(model, variables)
    keep = np.arange(64) % 3 != 0
    images = np.where(keep[:, None, None, None], batch["image"], 1e3).astype(np.float32)
    labels = np.where(keep, batch["label"], 7).astype(np.int32)
    step = jax.jit(train_step)
    got, metrics = step(state, {"image": images, "label": labels, "mask": keep.astype(np.float32)})
    want, without = step(state, {"image": images[keep], "label": labels[keep]})
    assert float(metrics["count"]) == keep.sum() == float(without["count"]) == 42
    for k in ("loss", "error", "top5_error"):
        assert float(metrics[k]) == pytest.approx(float(without[k]), rel=1e-5, abs=1e-7), k
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got.params, want.params)
    assert max(jax.tree.leaves(diff)) < 1e-6
    # Every example masked: no loss, no gradient, and a count of 0 for the log to see.
    none_real = {"image": images, "label": labels, "mask": np.zeros(64, np.float32)}
    same, metrics = step(state, none_real)
    assert float(metrics["count"]) == 0 and float(metrics["loss"]) == 0
    jax.tree.map(np.testing.assert_array_equal, same.params, state.params)


@pytest.mark.parametrize(
    "batch, got",
    [
        ({"images": 0, "label": 0}, r"got keys \['images', 'label'\]"),
        ({"image": 0, "labels": 0}, r"got keys \['image', 'labels'\]"),
        ((0, 0), "got tuple"),
    ],
)
def test_a_batch_without_image_or_label_says_what_a_batch_is(mnist_setup, batch, got):
    """A misspelt key was a bare KeyError('label'); a tuple, "'tuple' object has no attribute
    'get'"."""
    model, variables, _ = mnist_setup
    state = make_state(model, variables)
    for step, name in ((train_step, "train_step"), (eval_step, "eval_step")):
        with pytest.raises(ValueError, match=rf"{name}: batch must be a mapping with 'image' and "):
            step(state, batch)
        with pytest.raises(ValueError, match=got):
            step(state, batch)


def test_a_label_outside_the_classes_is_an_error_never_right(mnist_setup):
    """A label of 12 among 10 classes gathered a NaN logit that no class ranked ahead of: the
    example counted as right, top-1 and top-5, and an evaluation on mislabelled data scored
    0% error."""
    logits = np.random.default_rng(4).standard_normal((6, 10)).astype(np.float32)
    labels = np.array([0, 3, 12, -1, 10, 9])
    for k in (1, 5, 10, 20):
        got = np.asarray(top_k_error(jnp.asarray(logits), jnp.asarray(labels), k))
        np.testing.assert_array_equal(got, _np_top_k_error(logits, labels, k))
        assert got[2:5].all(), k
    model, variables, batch = mnist_setup
    images = jnp.asarray(batch["image"][:4])
    sums = eval_step(make_state(model, variables), {"image": images, "label": jnp.full(4, 12)})
    assert float(sums["error"]) == 4 and float(sums["top5_error"]) == 4
