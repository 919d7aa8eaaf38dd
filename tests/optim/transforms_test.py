"""JAX hygiene of every optimizer and block: one compile, dtypes, empty and None pytrees,
state that passes through lax.cond, accumulator dtypes, and clear errors for bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_testing import all_optimizers, mixed_tree

import gdjax
from gdjax import optim

OPTIMIZERS = all_optimizers()
NAMES = sorted(OPTIMIZERS)


def make(name, lr=0.05):
    factory, kwargs = OPTIMIZERS[name]
    return factory(lr, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_update_compiles_once(name):
    tx = make(name, optax.linear_schedule(0.1, 0.01, 10))
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    update = jax.jit(tx.update)
    state = tx.init(params)
    for t in range(5):
        updates, state = update(jax.tree.map(jnp.asarray, mixed_tree(t)), state, params)
        params = optax.apply_updates(params, updates)
    assert update._cache_size() == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes_are_kept(name, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    dtype = jnp.dtype(dtype)
    tx = make(name)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), mixed_tree(0))
    state0 = tx.init(params)
    update = jax.jit(tx.update)
    state = state0
    for t in range(3):
        grads = jax.tree.map(lambda x: jnp.asarray(x, dtype), mixed_tree(t + 1))
        updates, state = update(grads, state, params)
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype
            assert bool(jnp.all(jnp.isfinite(u)))
        params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    for leaf in jax.tree.leaves(state):
        assert leaf.dtype in (dtype, jnp.int32)


@pytest.mark.parametrize("name", NAMES)
def test_empty_pytree(name):
    tx = make(name)
    state = tx.init({})
    updates, state = jax.jit(tx.update)({}, state, {})
    assert updates == {}


@pytest.mark.parametrize("name", NAMES)
def test_none_leaves_pass_through(name):
    tx = make(name)
    params = {"w": jnp.ones((3,)), "frozen": None}
    grads = {"w": jnp.full((3,), 0.5), "frozen": None}
    state = tx.init(params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    assert updates["frozen"] is None
    assert updates["w"].shape == (3,)
    assert bool(jnp.all(updates["w"] < 0))  # a descent step


@pytest.mark.parametrize("name", NAMES)
def test_integer_parameters_with_state_are_refused_and_masking_them_out_works(name):
    tx = make(name)
    w = jnp.array([1.0, -2.0, 3.0])
    keeps_state = any(jnp.shape(x) == (3,) for x in jax.tree.leaves(tx.init({"w": w})))
    params = {"w": w, "steps": jnp.arange(3, dtype=jnp.int32)}
    if keeps_state:
        # int32 state would round each accumulated step (a velocity of 0.5 kept as 0)
        with pytest.raises(TypeError, match=r"params\['steps'\] has dtype int32.*optax\.masked"):
            tx.init(params)
    # the way out the message names: leave the integer leaf out
    masked = optax.masked(tx, {"w": True, "steps": False})
    grads = {"w": jnp.array([0.5, -1.0, 2.0]), "steps": jnp.zeros(3, jnp.int32)}
    ref_state, state = tx.init({"w": w}), masked.init(params)
    for _ in range(3):
        ref, ref_state = tx.update({"w": grads["w"]}, ref_state, {"w": w})
        updates, state = masked.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], ref["w"], rtol=1e-6)
        np.testing.assert_array_equal(updates["steps"], grads["steps"])


@pytest.mark.parametrize("name", NAMES)
def test_python_float_parameters_step_as_arrays_do(name):
    tx = make(name)
    as_arrays = {"a": jnp.float32(1.5), "b": jnp.float32(-0.5)}
    as_floats = {"a": 1.5, "b": -0.5}
    grads = {"a": jnp.float32(0.25), "b": jnp.float32(-2.0)}
    s_arr, s_flt = tx.init(as_arrays), tx.init(as_floats)
    for _ in range(3):
        u_arr, s_arr = tx.update(grads, s_arr, as_arrays)
        u_flt, s_flt = tx.update(grads, s_flt, as_floats)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), u_flt, u_arr)


@pytest.mark.parametrize("name", NAMES)
def test_state_passes_through_lax_cond(name):
    tx = make(name)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    grads = jax.tree.map(jnp.asarray, mixed_tree(1))

    @jax.jit
    def maybe_step(pred, state):
        return jax.lax.cond(pred, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)

    state = tx.init(params)
    stepped = maybe_step(True, state)
    kept = maybe_step(False, state)
    assert int(jax.tree.leaves(stepped)[0]) == 1
    jax.tree.map(np.testing.assert_array_equal, kept, state)


@pytest.mark.parametrize(
    "tx, field",
    [
        (gdjax.momentum(0.1, accumulator_dtype=jnp.bfloat16), "trace"),
        (gdjax.alexnet_sgd(0.1, accumulator_dtype=jnp.bfloat16), "trace"),
        (gdjax.rmsprop(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16), "trace"),
        (gdjax.adam(0.1, mu_dtype=jnp.bfloat16), "mu"),
        (gdjax.adamw(0.1, mu_dtype=jnp.bfloat16), "mu"),
    ],
)
def test_accumulator_dtype_is_the_users_choice(tx, field):
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    state = tx.init(params)
    for t in range(2):
        updates, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, mixed_tree(t)), state, params)
        for u in jax.tree.leaves(updates):
            assert u.dtype == jnp.float32
    found = [getattr(s, field) for s in state if hasattr(s, field)]
    assert found, f"no {field} buffer in the state"
    for leaf in jax.tree.leaves(found):
        assert leaf.dtype == jnp.bfloat16
    others = [s.nu for s in state if hasattr(s, "nu")]
    for leaf in jax.tree.leaves(others):
        assert leaf.dtype == jnp.float32  # only the named accumulator changes dtype


@pytest.mark.parametrize(
    "make, message",
    [
        # reported at init() as "parameter params['b'] has dtype int32"
        (lambda: gdjax.adam(0.1, mu_dtype=jnp.int32), "adam: mu_dtype must be a floating-point"),
        (lambda: gdjax.adamw(0.1, mu_dtype=bool), "adamw: mu_dtype must be a floating-point"),
        (lambda: gdjax.adam(0.1, mu_dtype="floaty"), "adam: mu_dtype must be a dtype"),
        (
            lambda: gdjax.momentum(0.1, accumulator_dtype="int8"),
            "momentum: accumulator_dtype must be a floating-point dtype",
        ),
        (
            lambda: gdjax.sgd(0.1, 0.9, accumulator_dtype=jnp.int32),
            "sgd: accumulator_dtype must be a floating-point dtype",
        ),
        (
            lambda: gdjax.alexnet_sgd(0.1, accumulator_dtype=jnp.uint8),
            "alexnet_sgd: accumulator_dtype must be a floating-point dtype",
        ),
        (
            lambda: optim.scale_by_amsgrad(mu_dtype=jnp.int32),
            "scale_by_amsgrad: mu_dtype must be a floating-point dtype",
        ),
        (
            lambda: optim.trace(0.9, accumulator_dtype=jnp.int32),
            "trace: accumulator_dtype must be a floating-point dtype",
        ),
    ],
)
def test_an_integer_state_dtype_is_refused_where_the_optimizer_is_built(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_rmsprop_without_momentum_refuses_a_momentum_dtype():
    """rmsprop(accumulator_dtype=...) without momentum dropped the dtype without a word; sgd
    already refused the same."""
    with pytest.raises(ValueError, match="rmsprop: accumulator_dtype is the momentum buffer"):
        gdjax.rmsprop(0.1, accumulator_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="sgd: accumulator_dtype needs momentum"):
        gdjax.sgd(0.1, accumulator_dtype=jnp.bfloat16)


# ---------------------------------------------------------------------------------------------
# Bad hyperparameters: a ValueError naming the argument and the value, at construction.

BAD = [
    (gdjax.sgd, {"learning_rate": -0.1}, "learning_rate"),
    (gdjax.momentum, {"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
    (gdjax.momentum, {"learning_rate": 0.1, "momentum": -0.5}, "momentum"),
    (gdjax.momentum, {"learning_rate": 0.1, "weight_decay": -1e-4}, "weight_decay"),
    (gdjax.alexnet_sgd, {"learning_rate": float("nan")}, "learning_rate"),
    (gdjax.alexnet_sgd, {"learning_rate": 0.1, "momentum": 1.5}, "momentum"),
    (gdjax.adagrad, {"learning_rate": 0.1, "eps": 0.0}, "eps"),
    (
        gdjax.adagrad,
        {"learning_rate": 0.1, "initial_accumulator_value": -1.0},
        "initial_accumulator_value",
    ),
    (gdjax.rmsprop, {"learning_rate": 0.1, "decay": 1.0}, "decay"),
    (gdjax.rmsprop, {"learning_rate": 0.1, "eps": -1e-8}, "eps"),
    (gdjax.rmsprop, {"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
    (gdjax.sgd, {"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
    (gdjax.sgd, {"learning_rate": 0.1, "nesterov": True}, "nesterov"),  # needs momentum
    (gdjax.adam, {"learning_rate": -1e-3}, "learning_rate"),
    (gdjax.adam, {"learning_rate": 1e-3, "b1": 1.0}, "b1"),
    (gdjax.adam, {"learning_rate": 1e-3, "b2": -0.1}, "b2"),
    (gdjax.adam, {"learning_rate": 1e-3, "eps": 0.0}, "eps"),
    (gdjax.adam, {"learning_rate": 1e-3, "eps_root": -1.0}, "eps_root"),
    (gdjax.adamw, {"learning_rate": 1e-3, "weight_decay": -0.01}, "weight_decay"),
    (gdjax.adamw, {"learning_rate": 1e-3, "b2": np.float32(1.2)}, "b2"),
    (optim.trace, {"decay": 1.0}, "decay"),
    (optim.scale_by_adam, {"b1": 2.0}, "b1"),
    (optim.scale_by_learning_rate, {"learning_rate": -1.0}, "learning_rate"),
    (optim.add_decayed_weights, {"weight_decay": -1.0}, "weight_decay"),
    # Infinite values pass every ">= 0" but are never meant (a warm-up from 0 makes them NaN).
    (gdjax.sgd, {"learning_rate": float("inf")}, "learning_rate"),
    (gdjax.adamw, {"learning_rate": 1e-3, "weight_decay": float("inf")}, "weight_decay"),
    (gdjax.lars, {"learning_rate": 0.1, "trust_coefficient": float("inf")}, "trust_coefficient"),
    (optim.scale_by_adam, {"eps": np.float32("inf")}, "eps"),
]


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_hyperparameter_says_finite(value):
    with pytest.raises(
        ValueError, match=r"learning_rate must be a finite number >= 0, got (inf|nan)"
    ):
        gdjax.momentum(value)
    with pytest.raises(ValueError, match=r"b2 must be a finite number in \[0, 1\)"):
        optax.inject_hyperparams(gdjax.adam)(learning_rate=0.1, b2=value).init({"w": jnp.ones(2)})


@pytest.mark.parametrize("factory, kwargs, arg", BAD, ids=lambda x: getattr(x, "__name__", None))
def test_bad_hyperparameter_names_argument_and_value(factory, kwargs, arg):
    with pytest.raises(ValueError) as excinfo:
        factory(**kwargs)
    message = str(excinfo.value)
    assert arg in message
    assert repr(kwargs[arg]) in message
    assert factory.__name__ in message


ALIASES = ["sgd", "momentum", "alexnet_sgd", "adagrad", "rmsprop", "adam", "adamw", "lars", "lamb"]
# The arguments documented as taking None: "off" for a number, "every leaf" for a mask.
TAKES_NONE = {"weight_decay", "mask", "weight_decay_mask", "trust_ratio_mask", "mu_dtype",
              "accumulator_dtype", "momentum:rmsprop", "momentum:sgd"}  # fmt: skip


def _none_cases():
    import inspect

    for name in ALIASES:
        for arg in inspect.signature(getattr(gdjax, name)).parameters:
            yield name, arg


@pytest.mark.parametrize("name, arg", list(_none_cases()))
def test_none_is_off_where_documented_and_else_names_the_optimizers_argument(name, arg):
    """``momentum(0.1, momentum=None)`` said "trace: decay must be a number"; the name the
    user wrote, not a block's, is in the message now. ``lars(trust_ratio_mask=None)`` was a
    pytree-structure error; it means every leaf, as ``mask=None`` does elsewhere."""
    factory = getattr(gdjax, name)
    kwargs = {"learning_rate": 0.1, arg: None}
    params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 0.25])}
    if arg in TAKES_NONE or f"{arg}:{name}" in TAKES_NONE:
        tx = factory(**kwargs)
        updates, _ = tx.update(grads, tx.init(params), params)
        assert bool(jnp.all(updates["w"] * grads["w"] < 0))  # still a descent step
        if arg.endswith("mask"):  # None is every leaf: the default's updates
            default, _ = factory(0.1).update(grads, factory(0.1).init(params), params)
            np.testing.assert_array_equal(updates["w"], default["w"])
        return
    with pytest.raises(TypeError, match=rf"^{name}: {arg} must be .*got None"):
        factory(**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_a_schedule_that_returns_an_array_is_refused(name):
    """A number given as an array of shape (2,) is refused when the optimizer is built; a
    schedule's value is seen only in update (under jit too: shapes are static). It failed with
    "mul got incompatible shapes", or broadcast a (1,) value into a scalar leaf's update."""
    factory, kwargs = OPTIMIZERS[name]
    params = {"w": jnp.ones(3), "s": jnp.float32(1.0)}
    for bad in (lambda c: jnp.full((2,), 0.1), lambda c: jnp.full((1,), 0.1)):
        tx = factory(bad, **kwargs)
        with pytest.raises(ValueError, match=r"returned an array of shape \([12],\); .* scalar"):
            jax.jit(tx.update)(params, tx.init(params), params)


def test_non_numeric_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="learning_rate"):
        gdjax.adam("0.001")
    with pytest.raises(TypeError, match="nesterov"):
        optim.trace(0.9, nesterov="yes")


def test_adam_accepts_eps_zero_when_eps_root_is_positive():
    tx = gdjax.adam(1e-3, eps=0.0, eps_root=1e-8)
    params = {"w": jnp.ones(2)}
    updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    assert bool(jnp.all(jnp.isfinite(updates["w"])))


def test_traced_hyperparameters_are_not_checked_eagerly():
    params = {"w": jnp.ones(2)}

    @jax.jit
    def step(lr, b1):
        tx = gdjax.adam(lr, b1=b1)
        return tx.update({"w": jnp.ones(2)}, tx.init(params), params)[0]

    updates = step(jnp.asarray(0.1), jnp.asarray(0.9))
    np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-5)


def test_add_decayed_weights_without_params_says_so():
    tx = optim.add_decayed_weights(1e-2)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
    # Through an optimizer with weight decay the message names where the block comes from,
    # and weight_decay=None takes it out.
    for make in (gdjax.adamw, gdjax.alexnet_sgd):
        tx = make(1e-2)
        with pytest.raises(ValueError, match=r"the weight decay of adamw, alexnet_sgd, lars and"):
            tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
        tx = make(1e-2, weight_decay=None)
        updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
        assert updates["w"].shape == (2,)


@pytest.mark.parametrize(
    "owner, make",
    [
        ("trace", lambda v: optim.trace(0.9, nesterov=v)),
        ("scale_by_adagrad", lambda v: optim.scale_by_adagrad(eps_in_sqrt=v)),
        ("scale_by_rms", lambda v: optim.scale_by_rms(eps_in_sqrt=v)),
        ("scale_by_stddev", lambda v: optim.scale_by_stddev(eps_in_sqrt=v)),
        ("sgd", lambda v: gdjax.sgd(0.1, momentum=0.9, nesterov=v)),
        ("momentum", lambda v: gdjax.momentum(0.1, 0.9, nesterov=v)),
        ("adagrad", lambda v: gdjax.adagrad(0.1, eps_in_sqrt=v)),
        ("rmsprop", lambda v: gdjax.rmsprop(0.1, centered=v)),
        ("rmsprop", lambda v: gdjax.rmsprop(0.1, eps_in_sqrt=v)),
        ("adam", lambda v: gdjax.adam(0.1, amsgrad=v)),
        ("adamw", lambda v: gdjax.adamw(0.1, amsgrad=v)),
        ("lars", lambda v: gdjax.lars(0.1, nesterov=v)),
    ],
)
def test_every_switch_takes_only_true_or_false(owner, make):
    """A string is truthy: scale_by_rms(eps_in_sqrt="no") put eps under the root."""
    for value in ("no", 0, None):
        with pytest.raises(TypeError, match=rf"^{owner}: \w+ must be True or False, got"):
            make(value)
    make(True), make(False)


def test_complex_hyperparameter_with_an_imaginary_part_is_refused():
    with pytest.raises(ValueError, match=r"adam: learning_rate must be real, got 0\.1\+0\.5j$"):
        gdjax.adam(jnp.asarray(0.1 + 0.5j, jnp.complex64))
    gdjax.adam(jnp.asarray(0.1 + 0j, jnp.complex64))  # a real value in a complex dtype is fine
