"""Smoke test of the optimizer benchmark, and proof that each timed pair computes one update."""

import json

import bench_optim
import jax
import jax.numpy as jnp
import optax
import pytest
from optim_testing import max_rel_diff


def test_full_tree_is_alexnet_sized():
    shapes = bench_optim.ALEXNET_SHAPES
    n = sum(
        int(jnp.prod(jnp.asarray(s)))
        for s in jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    )
    assert n == 61_100_840  # torchvision's AlexNet


@pytest.mark.parametrize("name", sorted(bench_optim.PAIRS))
def test_each_pair_computes_the_same_update(name):
    ours, theirs = (f() for f in bench_optim.PAIRS[name])
    params = bench_optim.alexnet_tree(scale=1e-4)
    params = {k: params[k] for k in ("conv1", "fc8")}
    grads = jax.tree.map(lambda p: p * 0.1 + 0.01, params)
    s1, s2 = ours.init(params), theirs.init(params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        assert max_rel_diff(u1, u2) < 1e-6
        params = optax.apply_updates(params, u1)


def test_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = bench_optim.main(
        [
            "--scale",
            "0.001",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--only",
            "sgd",
            "adam",
            "--json",
            str(out),
        ]
    )
    assert [r["optimizer"] for r in rows] == ["sgd", "adam"]
    for r in rows:
        assert r["gdjax_ms"] > 0 and r["optax_ms"] > 0
        assert r["ratio"] == pytest.approx(r["gdjax_ms"] / r["optax_ms"])
    assert json.loads(out.read_text())["rows"] == rows
    assert "worst ratio gdjax/optax" in capsys.readouterr().out


def test_bad_scale_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bench_optim.main(["--scale", "0"])
    assert "argument --scale: expected a number > 0, got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(bench_optim.PAIRS))
def test_each_pair_moves_the_same_bytes_as_optax(name):
    """XLA's cost analysis of the compiled update: gdjax's reads and writes no more bytes than
    optax's, give or take a few scalars (its int32 step counters), whatever the model size —
    the deterministic side of 'as fast as optax' (timings on this machine are noisy). Equal
    for the element-wise optimizers; LARS and LAMB move about a third less (one pass fewer)."""
    params = bench_optim.alexnet_tree(scale=1e-3)
    grads = jax.tree.map(lambda p: p * 0.1, params)
    ours, theirs = (bench_optim.Contender(f(), params, grads) for f in bench_optim.PAIRS[name])
    assert ours.xla_bytes > 1e7
    assert ours.xla_bytes <= theirs.xla_bytes + 64
    if name not in ("lars", "lamb"):
        assert ours.xla_bytes >= theirs.xla_bytes - 64
