"""Convergence on known problems: each optimizer reaches the minimum within a stated budget.

The budgets (learning rate, steps) were chosen once by hand; a failure here means an update
rule changed its behaviour, not that the budget should grow.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import gdjax


def quadratic(p):
    """Condition number 20; minimum 0 at the origin."""
    return 0.5 * (p[0] ** 2 + 20.0 * p[1] ** 2)


def rosenbrock(p):
    """The banana valley; minimum 0 at (1, 1)."""
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def minimise(tx, f, x0, steps):
    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(f)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    p0 = jnp.asarray(x0, jnp.float32)
    (p, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((p0, tx.init(p0)))
    return p


QUADRATIC = {
    "sgd": (gdjax.sgd(0.05), 500),
    "momentum": (gdjax.momentum(0.02), 500),
    "nesterov": (gdjax.momentum(0.02, nesterov=True), 500),
    "alexnet_sgd": (gdjax.alexnet_sgd(0.02, weight_decay=0.0), 500),
    "adagrad": (gdjax.adagrad(0.5), 500),
    "rmsprop": (gdjax.rmsprop(optax.cosine_decay_schedule(0.05, 1000)), 1000),
    "adam": (gdjax.adam(0.05), 500),
    "adamw": (gdjax.adamw(0.05, weight_decay=0.0), 500),
    "lars": (gdjax.lars(0.05, trust_coefficient=0.1), 500),
    "lamb": (gdjax.lamb(optax.cosine_decay_schedule(0.05, 2000)), 2000),
}

ROSENBROCK = {
    "sgd": (gdjax.sgd(2e-3), 5000),
    "momentum": (gdjax.momentum(5e-4), 5000),
    "nesterov": (gdjax.momentum(5e-4, nesterov=True), 5000),
    "alexnet_sgd": (gdjax.alexnet_sgd(5e-4, weight_decay=0.0), 5000),
    "adagrad": (gdjax.adagrad(0.5), 20000),
    "rmsprop": (gdjax.rmsprop(optax.cosine_decay_schedule(0.01, 5000)), 5000),
    "rmsprop_centered": (
        gdjax.rmsprop(optax.cosine_decay_schedule(0.01, 5000), centered=True, momentum=0.5),
        5000,
    ),
    "adam": (gdjax.adam(0.05), 5000),
    "adamw": (gdjax.adamw(0.05, weight_decay=0.0), 5000),
    "lars": (gdjax.lars(optax.cosine_decay_schedule(0.005, 5000), trust_coefficient=1.0), 5000),
    "lamb": (gdjax.lamb(optax.cosine_decay_schedule(0.025, 5000)), 5000),
}


@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_ill_conditioned_quadratic(name):
    tx, steps = QUADRATIC[name]
    p = minimise(tx, quadratic, [3.0, 2.0], steps)
    assert float(quadratic(p)) < 1e-10


@pytest.mark.parametrize("name", sorted(ROSENBROCK))
def test_rosenbrock(name):
    tx, steps = ROSENBROCK[name]
    p = minimise(tx, rosenbrock, [-1.2, 1.0], steps)
    assert float(rosenbrock(p)) < 1e-4
    assert float(jnp.max(jnp.abs(p - 1.0))) < 2e-2
