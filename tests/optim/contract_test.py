"""The optax contract without exceptions: ``inject_hyperparams(opt)(...)`` is ``opt(...)``.

For every optimizer and every block, over a table of argument combinations (each numeric
hyperparameter at 0 where 0 is allowed, at a typical value and as a schedule; each static
switch on and off): the plain optimizer and the one wrapped in ``optax.inject_hyperparams``
have the same state tree structure, and after 10 jitted steps the same state values and the
same updates. The structure never depends on a numeric value (optax issue 412).
"""

from __future__ import annotations

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_testing import gradient, mixed_tree

from gdjax import optim
from gdjax.optim import alias, transforms


def _kernels(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def sgd_with_momentum(learning_rate, momentum, nesterov=False):
    """``optim.sgd`` with optax's ``momentum`` keyword."""
    return optim.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


# factory -> (typical numeric hyperparameters, the ones whose 0 is refused, static variants)
SPECS = {
    optim.sgd: ({"learning_rate": 0.05}, (), [{}]),
    sgd_with_momentum: ({"learning_rate": 0.05, "momentum": 0.9}, (), [{}, {"nesterov": True}]),
    optim.momentum: (
        {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        (),
        [{}, {"nesterov": True}],
    ),
    optim.alexnet_sgd: ({"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4}, (), [{}]),
    optim.adagrad: (
        {"learning_rate": 0.1, "initial_accumulator_value": 0.1, "eps": 1e-7, "weight_decay": 1e-3},
        ("eps",),
        [{}, {"eps_in_sqrt": True}],
    ),
    optim.rmsprop: (
        {
            "learning_rate": 0.01,
            "decay": 0.9,
            "eps": 1e-8,
            "momentum": 0.5,
            "initial_scale": 0.1,
            "weight_decay": 1e-3,
        },
        ("eps",),
        [{}, {"centered": True}, {"eps_in_sqrt": True}],
    ),
    optim.adam: (
        {
            "learning_rate": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "eps_root": 1e-8,
            "weight_decay": 1e-3,
        },
        (),
        [{}, {"amsgrad": True}],
    ),
    optim.adamw: (
        {
            "learning_rate": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "eps_root": 1e-8,
            "weight_decay": 1e-2,
        },
        (),
        [{}, {"amsgrad": True}, {"mask": _kernels}],
    ),
    optim.lars: (
        {
            "learning_rate": 0.5,
            "weight_decay": 1e-3,
            "trust_coefficient": 0.02,
            "eps": 1e-9,
            "momentum": 0.9,
        },
        (),
        [{}, {"nesterov": True}, {"weight_decay_mask": _kernels, "trust_ratio_mask": _kernels}],
    ),
    optim.lamb: (
        {
            "learning_rate": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-6,
            "eps_root": 1e-8,
            "weight_decay": 1e-2,
        },
        (),
        [{}, {"mask": _kernels}],
    ),
    optim.scale_by_learning_rate: ({"learning_rate": 0.05}, (), [{}, {"flip_sign": False}]),
    optim.add_decayed_weights: ({"weight_decay": 1e-2}, (), [{}, {"mask": _kernels}]),
    optim.trace: ({"decay": 0.9}, (), [{}, {"nesterov": True}]),
    optim.scale_by_adagrad: (
        {"initial_accumulator_value": 0.1, "eps": 1e-7},
        ("eps",),
        [{}, {"eps_in_sqrt": True}],
    ),
    optim.scale_by_rms: (
        {"decay": 0.9, "eps": 1e-8, "initial_scale": 0.1},
        ("eps",),
        [{}, {"eps_in_sqrt": True}],
    ),
    optim.scale_by_stddev: ({"decay": 0.9, "eps": 1e-8, "initial_scale": 0.1}, ("eps",), [{}]),
    optim.scale_by_adam: ({"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-8}, (), [{}]),
    optim.scale_by_amsgrad: ({"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-8}, (), [{}]),
    optim.scale_by_trust_ratio: (
        {"min_norm": 1e-3, "trust_coefficient": 0.5, "eps": 1e-9},
        (),
        [{}],
    ),
}


def _cases():
    """(id, factory, kwargs): typical values under every static variant, then each numeric
    hyperparameter at 0 (where allowed) and as a schedule, the others typical."""
    for factory, (typical, no_zero, variants) in SPECS.items():
        name = factory.__name__
        for i, static in enumerate(variants):
            yield f"{name}-typical-v{i}", factory, {**typical, **static}
        for hp, value in typical.items():
            if hp not in no_zero:
                yield f"{name}-{hp}=0", factory, {**typical, hp: 0.0}
            schedule = optax.linear_schedule(value, value * 0.5, transition_steps=10)
            yield f"{name}-{hp}=schedule", factory, {**typical, hp: schedule}


CASES = list(_cases())
STEPS = 10


def _tree(seed):
    """A kernel and a bias: enough for masks and per-leaf norms, small enough to compile fast
    (the table has over a hundred cases)."""
    rng = np.random.default_rng(seed)
    return {
        "kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(4), jnp.float32),
    }


def _run(txs, params, noise):
    """Ten steps of each optimizer in one jitted scan: final params, state, last updates."""

    def body(carry, n):
        out = []
        for tx, (p, s) in zip(txs, carry, strict=True):
            u, s = tx.update(gradient(p, n), s, p)
            out.append(((optax.apply_updates(p, u), s), u))
        return [c for c, _ in out], [u for _, u in out]

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *noise)
    carry = [(params, tx.init(params)) for tx in txs]
    carry, us = jax.jit(lambda c, ns: jax.lax.scan(body, c, ns))(carry, stacked)
    return [(p, s, jax.tree.map(lambda x: x[-1], u)) for (p, s), u in zip(carry, us, strict=True)]


def _assert_close(got, want, what):
    # Equal up to float32 round-off over 10 steps of O(1) updates (measured worst 3e-7): the
    # wrapped optimizer sees float32 arrays where the plain one sees Python constants, which
    # XLA may fold differently. A missing or different block shows at 1e-4 or more.
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=what)


def _pair(case):
    """The plain optimizer of ``case`` and the same one built through ``inject_hyperparams``."""
    _, factory, kwargs = case
    static = tuple(k for k in kwargs if k.endswith("mask"))
    return factory(**kwargs), optax.inject_hyperparams(factory, static_args=static)(**kwargs)


@functools.cache
def _runs_of(factory) -> dict | None:
    """case id -> the plain and wrapped runs, for every case of ``factory`` in one jitted scan.

    XLA compiles one program per factory instead of one per case: about a third of the
    compile time (which is most of this table's time). The optimizers in one scan share no
    state, so each case's numbers are its own. None where the group fails to trace or run:
    each case then runs alone, so that an error shows in the case it belongs to."""
    cases = [c for c in CASES if c[1] is factory]
    try:
        runs = _run([tx for c in cases for tx in _pair(c)], *_inputs())
    except Exception:
        return None
    return {c[0]: (runs[2 * i], runs[2 * i + 1]) for i, c in enumerate(cases)}


def _inputs():
    return _tree(0), [_tree(t + 1) for t in range(STEPS)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_inject_hyperparams_gives_the_same_optimizer(case):
    name, factory, kwargs = case
    params = _tree(0)
    plain, wrapped = _pair(case)

    state, wrapped_state = plain.init(params), wrapped.init(params).inner_state
    assert jax.tree.structure(state) == jax.tree.structure(wrapped_state)

    grouped = _runs_of(factory)
    (p1, s1, u1), (p2, s2, u2) = grouped[name] if grouped else _run([plain, wrapped], *_inputs())
    s2 = s2.inner_state
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
    _assert_close(u2, u1, "updates")
    _assert_close(s2, s1, "state")
    _assert_close(p2, p1, "params")
    moved = max(float(jnp.max(jnp.abs(p1[k] - params[k]))) for k in params)
    if all(kwargs.get(k, 1.0) != 0.0 for k in ("learning_rate", "trust_coefficient")):
        assert moved != 0, "nothing moved; the comparison would prove nothing"


@pytest.mark.parametrize("factory", list(SPECS), ids=lambda f: f.__name__)
def test_state_structure_depends_on_no_numeric_value(factory):
    typical, no_zero, _ = SPECS[factory]
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    want = jax.tree.structure(factory(**typical).init(params))
    for hp, value in typical.items():
        for other in ([] if hp in no_zero else [0.0]) + [
            jnp.asarray(value),
            optax.constant_schedule(value),
        ]:
            got = jax.tree.structure(factory(**{**typical, hp: other}).init(params))
            assert got == want, f"{factory.__name__}({hp}={other!r}) changed the state's structure"


BLOCK_STATES = {
    optim.scale_by_rms: optim.ScaleByRmsState,
    optim.scale_by_stddev: optim.ScaleByStddevState,
    optim.scale_by_adam: optim.ScaleByAdamState,
    optim.scale_by_amsgrad: optim.ScaleByAmsgradState,
    optim.scale_by_trust_ratio: optim.ScaleByTrustRatioState,
    optim.trace: optim.TraceState,
    optim.scale_by_adagrad: optim.ScaleByAdagradState,
    optim.scale_by_learning_rate: optim.ScaleByLearningRateState,
}


@pytest.mark.parametrize("block", list(BLOCK_STATES), ids=lambda f: f.__name__)
def test_one_block_one_state_type(block):
    typical, _, variants = SPECS[block]
    params = mixed_tree(0)
    for static in variants:
        state = block(**typical, **static).init(params)
        assert type(state) is BLOCK_STATES[block]
        assert state.count.dtype == jnp.int32


def test_none_switches_a_block_off_and_zero_keeps_it():
    params = mixed_tree(0)
    kinds = lambda tx: [type(s).__name__ for s in tx.init(params)]  # noqa: E731
    assert kinds(optim.momentum(0.1)) == ["TraceState", "ScaleByLearningRateState"]
    assert kinds(optim.momentum(0.1, weight_decay=0.0))[0] == "AddDecayedWeightsState"
    assert "TraceState" not in kinds(optim.rmsprop(0.1))
    assert "TraceState" in kinds(optim.rmsprop(0.1, momentum=0.0))
    assert kinds(optim.adam(0.1, amsgrad=True))[0] == "ScaleByAmsgradState"
    assert kinds(optim.rmsprop(0.1, centered=True))[0] == "ScaleByStddevState"
    assert "AddDecayedWeightsState" not in kinds(optim.adamw(0.1, weight_decay=None))


# Injected values out of range are refused like numbers (at init, where they are concrete).
BAD_INJECTED = [
    (optim.lars, {"learning_rate": -1.0}, "learning_rate"),
    (optim.lars, {"learning_rate": 0.1, "momentum": 1.5}, "momentum"),
    (optim.lars, {"learning_rate": 0.1, "trust_coefficient": -1.0}, "trust_coefficient"),
    (optim.lamb, {"learning_rate": 0.1, "b2": 1.0}, "b2"),
    (optim.lamb, {"learning_rate": 0.1, "eps": 0.0}, "eps"),
    (optim.adam, {"learning_rate": 0.1, "eps": 0.0, "eps_root": 0.0}, "eps"),
    (optim.rmsprop, {"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
    (optim.trace, {"decay": 1.5}, "decay"),
    (optim.scale_by_amsgrad, {"b1": -0.1}, "b1"),
    (optim.scale_by_stddev, {"eps": 0.0}, "eps"),
    (optim.scale_by_trust_ratio, {"min_norm": -1.0}, "min_norm"),
]


@pytest.mark.parametrize(
    "factory, kwargs, arg", BAD_INJECTED, ids=lambda x: getattr(x, "__name__", None)
)
def test_injected_values_are_checked(factory, kwargs, arg):
    with pytest.raises(
        ValueError, match=rf"{factory.__name__}: {arg} must be .*, got {kwargs[arg]}"
    ):
        factory(**kwargs)
    with pytest.raises(
        ValueError, match=rf"{factory.__name__}: {arg} must be .*, got {kwargs[arg]}"
    ):
        optax.inject_hyperparams(factory)(**kwargs).init(mixed_tree(0))


def test_adam_accepts_an_injected_zero_eps_only_with_a_positive_eps_root():
    tx = optax.inject_hyperparams(optim.adam)(0.1, eps=0.0, eps_root=1e-8)
    tx.init(mixed_tree(0))


@pytest.mark.parametrize("module", [alias, transforms], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 or module is transforms
    assert result.failed == 0


@pytest.mark.parametrize("name", alias.__all__)
def test_every_alias_documents_args_returns_and_an_example(name):
    doc = getattr(alias, name).__doc__
    for section in ("Args:", "Returns:", "Example:", ">>> "):
        assert section in doc, f"{name}'s docstring has no {section!r}"


TYPICAL = [
    (f"{factory.__name__}-v{i}", factory, {**typical, **static})
    for factory, (typical, _, variants) in SPECS.items()
    # sgd and the learning rate alone keep no per-parameter state: they scale what they get
    if factory not in (optim.sgd, optim.scale_by_learning_rate)
    for i, static in enumerate(variants)
]
UNLIKE = {
    "missing": ({"kernel": jnp.ones((3, 4))}, r"another tree structure .*1 missing \(\['bias'\]\)"),
    "extra": (
        {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4), "scale": jnp.ones(())},
        r"another tree structure .*1 not in it \(\['scale'\]\)",
    ),
    # Integer gradients gave integer updates: a step of 0.3 rounded to 0, no training at all.
    "integer": (
        {"kernel": jnp.ones((3, 4), jnp.int32), "bias": jnp.ones(4)},  # (masks keep kernels)
        r"updates\['kernel'\] of dtype int32; gradients must be floating point",
    ),
    # Broadcastable: it used to turn the state's (4,) into (1, 4) without a word.
    "shape": (
        {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((1, 4))},
        r"updates\['bias'\] of shape \(1, 4\), where .* has shape \(4,\)",
    ),
}


@pytest.mark.parametrize("unlike", UNLIKE)
@pytest.mark.parametrize("case", TYPICAL, ids=[c[0] for c in TYPICAL])
def test_updates_unlike_the_parameters_are_refused_by_name(case, unlike):
    """Gradients of another model, or of the same model with a leaf missing, failed with a
    pytree or broadcasting error from inside jax.tree.map, or broadcast silently."""
    _, factory, kwargs = case
    grads, message = UNLIKE[unlike]
    if unlike in ("missing", "extra") and any("mask" in k for k in kwargs):
        # Where optax.masked meets the updates before our blocks do, it maps the mask over
        # them first, and jax's error names the key (jax 0.12 writes it as a key path; jax
        # 0.8 lists the two key sets, and the key is in one of them).
        key = "bias" if unlike == "missing" else "scale"
        message = (
            rf"{message}|symmetric difference on key sets is\n\s*(\[')?{key}\b"
            rf"|Dict key mismatch; expected keys: .*'{key}'"
        )
    params = _tree(0)
    tx = factory(**kwargs)
    with pytest.raises(TypeError if unlike == "integer" else ValueError, match=message):
        tx.update(grads, tx.init(params), params)


EVERY = [
    (f"{factory.__name__}-v{i}", factory, {**typical, **static})
    for factory, (typical, _, variants) in SPECS.items()
    for i, static in enumerate(variants)
]


@pytest.mark.parametrize("case", EVERY, ids=[c[0] for c in EVERY])
def test_integer_gradients_are_refused_by_every_optimizer_and_block(case):
    """Plain sgd (the learning rate alone) returned int32 updates of 0 for integer gradients,
    so nothing trained, without a word; the stateful blocks already refused them."""
    _, factory, kwargs = case
    grads, message = UNLIKE["integer"]
    params = _tree(0)
    tx = factory(**kwargs)
    with pytest.raises(TypeError, match=message):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("case", EVERY, ids=[c[0] for c in EVERY])
def test_numpy_float64_and_python_float_leaves_step_as_float32_arrays_do(case):
    """As optax's do: a Python float leaf failed (``'float' object has no attribute
    'astype'``) and a NumPy float64 one warned of a truncation to float32 on every update."""
    import warnings

    _, factory, kwargs = case
    tx = factory(**kwargs)

    def three_steps(params, grads):
        state, out = tx.init(params), []
        for _ in range(3):
            updates, state = tx.update(grads, state, params)
            out.append(updates)
        return out

    params, grads = _tree(0), _tree(1)
    want = three_steps(params, grads)
    as_f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = three_steps(as_f64(params), as_f64(grads))
    for g, w in zip(got, want, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g, w)
        if not any("mask" in k for k in kwargs):  # optax.masked hands masked leaves back as given
            assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g))
    # Scalars as Python floats: the same steps as the float32 scalars they stand for.
    as_float = lambda tree: jax.tree.map(lambda x: float(x.ravel()[0]), tree)  # noqa: E731
    as_f32 = lambda tree: jax.tree.map(lambda x: jnp.float32(x.ravel()[0]), tree)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = three_steps(as_float(params), as_float(grads))
    want = three_steps(as_f32(params), as_f32(grads))
    for g, w in zip(got, want, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), g, w)
