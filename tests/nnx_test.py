"""Flax NNX: gdjax's optimizers under ``nnx.Optimizer`` and AlexNet through ``nnx.bridge``.

NNX users meet gdjax through these two doors (the README shows them). Each test runs the NNX
path and the functional path (``tx.update`` / ``model.apply`` on plain pytrees under
``jax.jit``) from the same start and requires the same result.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optim_testing import all_optimizers, max_rel_diff

from gdjax.models import AlexNet

OPTIMIZERS = all_optimizers()
STEPS = 8
# The same operations compiled in two programs: rounding apart at most.
TOL = 1e-5
# The injected rate's change, 0.1 -> 0.1 * 0.25: exact in float32, as the schedule computes it.
NEW_LR = jnp.float32(0.1) * jnp.float32(0.25)


class Net(nnx.Module):
    """Dense, batch norm (running statistics: state the optimizer must not touch), dense. The
    first layer has no bias: batch norm cancels it, so its gradient would be rounding noise,
    which Adam's normalisation turns into full-size steps."""

    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(5, 8, use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


def _batches():
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((16, 5)).astype(np.float32), rng.integers(0, 3, 16))
        for _ in range(STEPS)
    ]


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _nnx_run(tx, change_lr_at=None):
    """Params and batch statistics after each step of ``nnx.Optimizer(model, tx)``."""
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(_loss)(model, x, y)
        optimizer.update(model, grads)

    out = []
    for t, (x, y) in enumerate(_batches()):
        if t == change_lr_at:
            optimizer.opt_state.hyperparams["learning_rate"][...] = NEW_LR
        step(model, optimizer, x, y)
        out.append(nnx.to_pure_dict(nnx.state(model)))
    return out


def _functional_run(tx):
    """The same training with ``tx.update`` on the split parameters under ``jax.jit``."""
    graphdef, params, stats = nnx.split(Net(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, x, y):
        def loss(params, stats):
            model = nnx.merge(graphdef, params, stats, copy=True)
            return _loss(model, x, y), nnx.state(model, nnx.BatchStat)

        grads, stats = jax.grad(loss, has_aux=True)(params, stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

    out = []
    for x, y in _batches():
        params, stats, opt_state = step(params, stats, opt_state, x, y)
        out.append(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, stats))))
    return out


def _make(name, lr=0.05):
    factory, kwargs = OPTIMIZERS[name]
    return factory(lr, **kwargs)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_nnx_optimizer_steps_like_the_functional_update(name):
    got, want = _nnx_run(_make(name)), _functional_run(_make(name))
    start = nnx.to_pure_dict(nnx.state(Net(nnx.Rngs(0))))
    assert max_rel_diff(want[-1]["hidden"], start["hidden"]) > 1e-3, "the reference did not move"
    # The running statistics change with every batch; the optimizer must leave them to the
    # forward pass (wrt=nnx.Param), so they too match the functional run.
    assert max_rel_diff(want[-1]["norm"]["mean"], start["norm"]["mean"]) > 1e-3
    assert max_rel_diff(got, want) < TOL


@pytest.mark.parametrize("name", ["adam", "alexnet_sgd", "rmsprop_centered_momentum"])
def test_an_injected_learning_rate_changes_inside_nnx_optimizer(name):
    """``optax.inject_hyperparams``: the learning rate lives in the NNX optimizer's state and
    a new value takes effect at the next step, as a schedule with that step would."""
    factory, kwargs = OPTIMIZERS[name]
    got = _nnx_run(optax.inject_hyperparams(factory)(learning_rate=0.1, **kwargs), change_lr_at=3)
    schedule = optax.piecewise_constant_schedule(0.1, {3: 0.25})
    want = _nnx_run(factory(schedule, **kwargs))
    constant = _nnx_run(factory(0.1, **kwargs))
    assert max_rel_diff(constant[-1], want[-1]) > 1e-3, "the change of rate made no difference"
    assert max_rel_diff(got, want) < TOL


def test_alexnet_through_the_nnx_bridge_trains_like_the_linen_module():
    """``nnx.bridge.ToNNX(AlexNet(...))`` trained by ``nnx.Optimizer`` and the Linen module
    trained by ``apply`` + ``tx.update`` take the same steps from the same parameters (on the
    CPU both run the oneDNN kernels). Dropout is off so that both see the same network."""
    module = AlexNet(num_classes=10, variant="small", in_channels=1, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    batches = [
        (rng.standard_normal((8, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 8))
        for _ in range(3)
    ]
    model = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0)).lazy_init(batches[0][0])
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, _make("alexnet_sgd"), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        def loss(model):
            logits = model(x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        optimizer.update(model, nnx.grad(loss)(model))

    tx = _make("alexnet_sgd")
    opt_state = tx.init(params)

    @jax.jit
    def linen_step(params, opt_state, x, y):
        def loss(params):
            logits = module.apply({"params": params}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    want = params
    for x, y in batches:
        nnx_step(model, optimizer, x, y)
        want, opt_state = linen_step(want, opt_state, x, y)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert max_rel_diff(want, params) > 1e-3, "the reference did not move"
    assert max_rel_diff(got, want) < TOL

    # With dropout on, the bridge draws its masks from the "dropout" stream: two calls differ.
    dropped = nnx.bridge.ToNNX(
        AlexNet(num_classes=10, variant="small", in_channels=1), rngs=nnx.Rngs(0, dropout=1)
    ).lazy_init(batches[0][0])
    x = batches[0][0]
    assert not np.allclose(dropped(x, train=True), dropped(x, train=True))
    np.testing.assert_array_equal(dropped(x), dropped(x))
