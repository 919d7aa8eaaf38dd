"""Optimizer states through ``jax.export``: a step that takes and returns a gdjax state
serialises, comes back with gdjax's state classes (here and in a fresh process) and runs as the
live step does."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_testing import all_optimizers, gradient, max_rel_diff, mixed_tree, noises

import gdjax

OPTIMIZERS = all_optimizers()
NAMES = sorted(OPTIMIZERS)


def make(name, lr=0.05):
    factory, kwargs = OPTIMIZERS[name]
    return factory(lr, **kwargs)


def step_of(tx):
    @jax.jit
    def step(params, state, noise):
        updates, state = tx.update(gradient(params, noise), state, params)
        return optax.apply_updates(params, updates), state

    return step


def holds_optax_states(tx):
    """Whether ``tx``'s state has a node of one of optax's classes (lars: ``optax.masked``)."""
    todo, seen = [jax.eval_shape(tx.init, jax.tree.map(jnp.asarray, mixed_tree(0)))], set()
    while todo:
        node = todo.pop()
        seen.add(type(node).__module__.split(".")[0])
        todo.extend(node.values() if isinstance(node, dict) else [])
        todo.extend(node if isinstance(node, tuple) else [])
    return "optax" in seen


def alternate(tx, exported_step, steps=6):
    """Params and state after ``steps`` steps taken in turn by the deserialised artefact and by
    the live step (each feeding the other's state), and after the live step alone."""
    live = step_of(tx)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    mixed, alone = (params, tx.init(params)), (params, tx.init(params))
    for t, noise in enumerate(noises(steps)):
        mixed = (exported_step if t % 2 == 0 else live)(*mixed, noise)
        alone = live(*alone, noise)
    return mixed, alone


@pytest.mark.parametrize("name", [*NAMES, "adam_cosine_schedule"])
def test_an_update_step_with_its_state_exports_and_runs_as_the_live_one(name):
    if name == "adam_cosine_schedule":
        lr, b1 = optax.cosine_decay_schedule(0.05, 10), optax.linear_schedule(0.5, 0.9, 4)
        tx = gdjax.adam(lr, b1=b1)
    else:
        tx = make(name)
    if holds_optax_states(tx):
        gdjax.optim.register_optax_states()
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    state = tx.init(params)
    exported = jax.export.export(step_of(tx))(params, state, noises(1)[0])
    again = jax.export.deserialize(exported.serialize())
    # The artefact's output tree holds gdjax's own state classes, not bare tuples.
    assert again.out_tree == jax.tree.structure((params, state))
    (p_mixed, s_mixed), (p_alone, s_alone) = alternate(tx, again.call)
    assert jax.tree.structure(s_mixed) == jax.tree.structure(s_alone)
    assert max_rel_diff(p_mixed, p_alone) < 1e-6
    assert max_rel_diff(jax.tree.leaves(s_mixed), jax.tree.leaves(s_alone)) < 1e-6


def test_a_fresh_process_that_imports_gdjax_reads_the_artefact(tmp_path):
    tx = gdjax.lamb(0.05, weight_decay=1e-2)  # trust ratio, Adam's moments, decayed weights
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    args = (params, tx.init(params), noises(1)[0])
    (tmp_path / "step.bin").write_bytes(jax.export.export(step_of(tx))(*args).serialize())
    np.savez(tmp_path / "args.npz", *jax.tree.leaves(args))
    reader = (
        "import json, sys, jax, numpy as np\n"
        "if sys.argv[2] == 'gdjax':\n"
        "    import gdjax.optim\n"
        "try:\n"
        "    exported = jax.export.deserialize(open(sys.argv[1] + '/step.bin', 'rb').read())\n"
        "except Exception as err:\n"
        "    print(json.dumps({'error': str(err)})); sys.exit()\n"
        "leaves = list(np.load(sys.argv[1] + '/args.npz').values())\n"
        "args, _ = jax.tree.unflatten(exported.in_tree, leaves)\n"
        "params, state = exported.call(*args)\n"
        "np.savez(sys.argv[1] + '/out.npz', *jax.tree.leaves((params, state)))\n"
        "print(json.dumps({'state': [type(s).__module__ + '.' + type(s).__name__ "
        "for s in state]}))\n"
    )

    def run(imports):
        out = subprocess.run(
            [sys.executable, "-c", reader, str(tmp_path), imports],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    got = run("gdjax")
    assert got["state"] == [f"gdjax.optim.transforms.{type(s).__name__}" for s in args[1]]
    want = jax.tree.leaves(step_of(tx)(*args))
    out = list(np.load(tmp_path / "out.npz").values())
    assert max_rel_diff(out, want) < 1e-6
    # Without gdjax's registrations JAX names the state class it cannot rebuild.
    assert "gdjax.optim.ScaleBy" in run("bare")["error"]


WRAPPED = {
    "inject_hyperparams(adam)": lambda: optax.inject_hyperparams(gdjax.adam)(learning_rate=0.05),
    "MultiSteps(lars, 2)": lambda: optax.MultiSteps(gdjax.lars(0.05), 2),
    "masked(adamw)": lambda: optax.masked(
        gdjax.adamw(0.05), {"conv": True, "dense": False, "scalar": True}
    ),
    "chain(clip_by_global_norm, momentum)": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), gdjax.momentum(0.05, 0.9)
    ),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_optax_wrappers_around_ours_export_once_optax_states_are_registered(name):
    gdjax.optim.register_optax_states()
    tx = WRAPPED[name]()
    assert holds_optax_states(tx)
    params = jax.tree.map(jnp.asarray, mixed_tree(0))
    exported = jax.export.export(step_of(tx))(params, tx.init(params), noises(1)[0])
    again = jax.export.deserialize(exported.serialize())
    (p_mixed, s_mixed), (p_alone, s_alone) = alternate(tx, again.call)
    assert jax.tree.structure(s_mixed) == jax.tree.structure(s_alone)
    assert max_rel_diff(p_mixed, p_alone) < 1e-6


def test_register_optax_states_names_what_it_registered_once():
    """In a fresh process: gdjax's states serialise on import alone, lars's optax.masked needs
    the call, which registers optax's classes once and then nothing more."""
    probe = (
        "import json, jax, jax.numpy as jnp, gdjax\n"
        "params = {'w': jnp.ones((3, 2)), 'b': jnp.zeros(2)}\n"
        "def exports(tx):\n"
        "    step = jax.jit(lambda p, s: tx.update(p, s, p))\n"
        "    try:\n"
        "        jax.export.export(step)(params, tx.init(params)).serialize()\n"
        "    except ValueError as err:\n"
        "        return str(err)\n"
        "    return 'ok'\n"
        "out = {'adam': exports(gdjax.adam(0.1)), 'lars': exports(gdjax.lars(0.1))}\n"
        "out['first'] = gdjax.optim.register_optax_states()\n"
        "out['second'] = gdjax.optim.register_optax_states()\n"
        "out['lars after'] = exports(gdjax.lars(0.1))\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["adam"] == "ok"
    assert "MaskedState" in out["lars"], out["lars"]
    assert {"optax.MaskedState", "optax.MaskedNode", "optax.MultiStepsState"} <= set(out["first"])
    assert {"optax.InjectStatefulHyperparamsState", "optax.contrib.ScheduleFreeState"} <= set(
        out["first"]
    )
    assert out["second"] == []
    assert out["lars after"] == "ok"
