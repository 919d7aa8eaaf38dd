"""Every gdjax optimizer composes with optax's wrappers exactly as optax's own do."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_testing import (
    all_optimizers,
    gradient,
    max_rel_diff,
    mixed_tree,
    noises,
    trajectories,
    trajectory,
)

OPTIMIZERS = all_optimizers()
NAMES = sorted(OPTIMIZERS)
LR = 0.05


def make(name, lr=LR):
    factory, kwargs = OPTIMIZERS[name]
    return factory(lr, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_after_clip_by_global_norm(name):
    params, noise = mixed_tree(0), noises(20)
    got = trajectory(optax.chain(optax.clip_by_global_norm(1.0), make(name)), params, noise)

    # Reference: clip by hand (g * min(1, 1/||g||)), then the optimizer alone.
    tx, p, want = make(name), jax.tree.map(jnp.asarray, params), []
    state = tx.init(p)

    @jax.jit
    def step(g, state, p):
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    for n in noise:
        g = jax.tree.map(np.asarray, gradient(p, n))
        norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(g)))
        assert norm > 1.0, "the clip must be active for the test to mean anything"
        p, state = step(jax.tree.map(lambda x: x / norm, g), state, p)
        want.append(p)
    assert max_rel_diff(got, want) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_changes_lr_without_recompiling(name):
    factory, kwargs = OPTIMIZERS[name]
    tx = optax.inject_hyperparams(factory)(learning_rate=0.1, **kwargs)
    params, noise = mixed_tree(0), noises(6)

    @jax.jit
    def step(params, state, noise):
        updates, state = tx.update(gradient(params, noise), state, params)
        return optax.apply_updates(params, updates), state

    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    got = []
    for t, n in enumerate(noise):
        if t == 3:
            state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
        p, state = step(p, state, n)
        got.append(p)
    assert step._cache_size() == 1, "changing a hyperparameter recompiled the step"
    schedule = optax.piecewise_constant_schedule(0.1, {3: 0.1})
    want = trajectory(factory(schedule, **kwargs), params, noise)
    assert max_rel_diff(got, want) < 1e-6


LABELS = {
    "conv": {"kernel": "train", "bias": "train"},
    "dense": {"kernel": "freeze", "bias": "freeze"},
    "scalar": "train",
}


@pytest.mark.parametrize("name", NAMES)
def test_multi_transform_freezes_layers_bit_identically(name):
    params, noise = mixed_tree(0), noises(10)
    tx = optax.multi_transform({"train": make(name), "freeze": optax.set_to_zero()}, LABELS)
    got = trajectory(tx, params, noise)
    frozen_now, frozen_then = jax.tree.leaves(got[-1]["dense"]), jax.tree.leaves(params["dense"])
    for leaf_now, leaf_then in zip(frozen_now, frozen_then, strict=True):
        np.testing.assert_array_equal(leaf_now, leaf_then)
    assert max_rel_diff(got[-1]["conv"], params["conv"]) > 1e-2  # the trained part moved


@pytest.mark.parametrize("name", NAMES)
def test_masked_applies_only_to_masked_leaves(name):
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    grads = jax.tree.map(jnp.asarray, mixed_tree(5))
    mask = jax.tree.map(lambda label: label == "train", LABELS)
    tx = optax.masked(make(name), mask)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # Unmasked leaves pass through untouched (optax.masked's contract) ...
    for u, g in zip(
        jax.tree.leaves(updates["dense"]), jax.tree.leaves(grads["dense"]), strict=True
    ):
        np.testing.assert_array_equal(u, g)
    # ... masked ones get exactly what the optimizer gives on that subtree alone.
    sub = {"conv": params["conv"], "scalar": params["scalar"]}
    sub_g = {"conv": grads["conv"], "scalar": grads["scalar"]}
    alone, _ = make(name).update(sub_g, make(name).init(sub), sub)
    assert max_rel_diff({"conv": updates["conv"], "scalar": updates["scalar"]}, alone) < 1e-7


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_equals_one_big_batch(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = (x @ rng.standard_normal(5) + 0.3).astype(np.float32)

    def loss(params, xb, yb):
        return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)

    params0 = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    k = 4
    micro = optax.MultiSteps(make(name), every_k_schedule=k)
    big = make(name)
    p_micro, s_micro = params0, micro.init(params0)
    p_big, s_big = params0, big.init(params0)
    micro_update, big_update = jax.jit(micro.update), jax.jit(big.update)
    for _ in range(3):
        for i in range(k):
            sl = slice(16 * i, 16 * (i + 1))
            u, s_micro = micro_update(jax.grad(loss)(p_micro, x[sl], y[sl]), s_micro, p_micro)
            p_micro = optax.apply_updates(p_micro, u)
        u, s_big = big_update(jax.grad(loss)(p_big, x, y), s_big, p_big)
        p_big = optax.apply_updates(p_big, u)
        assert max_rel_diff(p_micro, p_big) < 1e-5
    assert max_rel_diff(p_big, params0) > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_a_nan_step(name):
    tx = optax.apply_if_finite(make(name), max_consecutive_errors=5)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    update = jax.jit(tx.update)
    state = tx.init(params)
    u, state = update(jax.tree.map(jnp.asarray, mixed_tree(1)), state, params)
    params = optax.apply_updates(params, u)
    bad = jax.tree.map(jnp.asarray, mixed_tree(2))
    bad["conv"]["bias"] = bad["conv"]["bias"].at[0].set(jnp.nan)
    u, new_state = update(bad, state, params)
    new_params = optax.apply_updates(params, u)
    jax.tree.map(np.testing.assert_array_equal, new_params, params)
    jax.tree.map(np.testing.assert_array_equal, new_state.inner_state, state.inner_state)
    assert int(new_state.notfinite_count) == 1


@pytest.mark.parametrize("name", NAMES)
def test_before_reduce_on_plateau(name):
    plateau = optax.contrib.reduce_on_plateau(patience=2, factor=0.1, accumulation_size=1)
    tx = optax.chain(make(name), plateau)
    alone = make(name)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    update = jax.jit(tx.update)
    state, alone_state = tx.init(params), alone.init(params)
    for t in range(6):
        g = jax.tree.map(jnp.asarray, mixed_tree(10 + t))
        u, state = update(g, state, params, value=jnp.asarray(1.0))  # the loss never improves
        u_alone, alone_state = alone.update(g, alone_state, params)
    scale = float(state[1].scale)
    assert scale < 1.0, "the plateau was never detected"
    expected = jax.tree.map(lambda x: scale * x, u_alone)
    assert max_rel_diff(u, expected) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params_reaches_every_parameter_shaped_buffer(name):
    tx = make(name)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    state = tx.init(params)
    mapped = optax.tree_map_params(tx, lambda p: p + 1.0, state)
    float_before = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    float_after = [x for x in jax.tree.leaves(mapped) if jnp.issubdtype(x.dtype, jnp.floating)]
    for before, after in zip(float_before, float_after, strict=True):
        np.testing.assert_array_equal(after, before + 1.0)
    ints_before = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
    ints_after = [x for x in jax.tree.leaves(mapped) if x.dtype == jnp.int32]
    assert ints_before and len(ints_before) == len(ints_after)
    for before, after in zip(ints_before, ints_after, strict=True):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("name", NAMES)
def test_update_ignores_unknown_keyword_arguments(name):
    tx = make(name)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    state = tx.init(params)
    u1, _ = tx.update(params, state, params)
    u2, _ = tx.update(params, state, params, value=jnp.asarray(3.0), some_future_arg="x")
    jax.tree.map(np.testing.assert_array_equal, u1, u2)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_is_no_way_around_the_checks(name):
    """inject_hyperparams hands the factory concrete arrays at init: they are checked like
    numbers (a negative learning rate, a momentum of 1.5), naming the argument and value."""
    factory, kwargs = OPTIMIZERS[name]
    params = mixed_tree()
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got -1\.0"):
        optax.inject_hyperparams(factory)(-1.0, **kwargs).init(params)
    for field, bad in (("momentum", 1.5), ("b1", 1.0), ("decay", -0.5), ("weight_decay", -1.0)):
        if field in kwargs or field in _defaults(factory):
            with pytest.raises(ValueError, match=rf"{field} must be .*, got {bad}"):
                optax.inject_hyperparams(factory)(LR, **{**kwargs, field: bad}).init(params)
    # Good values still pass, and the jitted update (traced values) is unchecked and works.
    tx = optax.inject_hyperparams(factory)(LR, **kwargs)
    state = tx.init(params)
    jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)


def _defaults(factory):
    import inspect

    return {k for k, p in inspect.signature(factory).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_on_complex_parameters(name):
    """inject_hyperparams hands the hyperparameters over in the parameters' dtype, complex64
    here: they are checked by their real part (a negative one still refused), used without a
    complex-to-real warning, and the steps equal the plain optimizer's."""
    import warnings

    factory, kwargs = OPTIMIZERS[name]
    params, noise = mixed_tree(0, np.complex64), noises(10, dtype=np.complex64)
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got -1\.0"):
        optax.inject_hyperparams(factory)(-1.0, **kwargs).init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        wrapped = optax.inject_hyperparams(factory)(LR, **kwargs)
        got, want = trajectories([wrapped, make(name)], params, noise)
    assert max_rel_diff(want[-1], params) > 1e-3, "the reference did not move"
    assert max_rel_diff(got, want) < 1e-6
